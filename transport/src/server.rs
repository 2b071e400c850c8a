//! Server side: turn a TCP listener into a stream of authenticated
//! connections for `tonic::transport::Server::serve_with_incoming`.
//!
//! An accept loop (spawned on the first poll) hands every TCP connection to
//! its own task, which runs TLS and the handshake under
//! [`HANDSHAKE_TIMEOUT`](crate::handshake::HANDSHAKE_TIMEOUT); only
//! connections that passed are yielded, so a slow or hostile peer never blocks
//! another and never stops the server. Failures are logged once at warn level
//! (peer address, role if known, reason) and the connection is dropped.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::authkey::AuthKey;
use crate::error::TransportError;
use crate::handshake::{self, HANDSHAKE_TIMEOUT, PLAINTEXT_BINDING};
use crate::io::Conn;
use crate::keys::{check_listen_addr, Role, Security};
use crate::tls;

/// At most this many connections may be in the middle of their handshake;
/// further ones wait in the kernel's accept queue.
const MAX_PENDING_HANDSHAKES: usize = 512;

/// Identity of an authenticated peer. tonic puts it in every request's
/// extensions: `req.extensions().get::<PeerIdentity>()`.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    /// The role the peer proved.
    pub role: Role,
    /// The peer's TCP address.
    pub remote_addr: SocketAddr,
}

/// Everything the server needs to authenticate connections.
#[derive(Clone)]
pub struct ServerAuth {
    authkey: AuthKey,
    security: Security,
    accept_roles: Vec<Role>,
    acceptor: Option<TlsAcceptor>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerAuth")
            .field("security", &self.security)
            .field("accept_roles", &self.accept_roles)
            .finish_non_exhaustive()
    }
}

impl ServerAuth {
    /// Prepares the server side; with [`Security::Tls`] this generates the
    /// ephemeral certificate.
    pub fn new(
        authkey: &AuthKey,
        security: Security,
        accept_roles: &[Role],
    ) -> Result<ServerAuth, TransportError> {
        let acceptor = match security {
            Security::Tls => Some(TlsAcceptor::from(tls::server_config()?)),
            Security::PlaintextLoopback => None,
        };
        Ok(ServerAuth {
            authkey: authkey.clone(),
            security,
            accept_roles: accept_roles.to_vec(),
            acceptor,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// Overrides the handshake deadline (default 10 s).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> ServerAuth {
        self.handshake_timeout = timeout;
        self
    }

    /// The security mode.
    pub fn security(&self) -> Security {
        self.security
    }

    /// Runs TLS (if enabled) and the handshake on one accepted connection.
    pub async fn authenticate(
        &self,
        tcp: TcpStream,
        remote_addr: SocketAddr,
    ) -> Result<AuthenticatedStream, TransportError> {
        let peer = remote_addr.to_string();
        let fut = async {
            let _ = tcp.set_nodelay(true);
            let (mut inner, binding) = match &self.acceptor {
                Some(acceptor) => {
                    let tls = acceptor
                        .accept(tcp)
                        .await
                        .map_err(|source| TransportError::Tls {
                            addr: peer.clone(),
                            source,
                        })?;
                    let binding = tls::exporter_binding(tls.get_ref().1).map_err(|source| {
                        TransportError::Tls {
                            addr: peer.clone(),
                            source,
                        }
                    })?;
                    (Conn::Tls(Box::new(tls.into())), binding)
                }
                None => (Conn::Plain(tcp), PLAINTEXT_BINDING),
            };
            match handshake::server_handshake(
                &mut inner,
                &self.authkey,
                &self.accept_roles,
                &binding,
                &peer,
            )
            .await
            {
                Ok(role) => Ok(AuthenticatedStream {
                    inner,
                    identity: PeerIdentity { role, remote_addr },
                }),
                Err(e) => {
                    let _ = inner.shutdown().await;
                    Err(e)
                }
            }
        };
        match tokio::time::timeout(self.handshake_timeout, fut).await {
            Ok(res) => res,
            Err(_) => Err(TransportError::HandshakeTimeout {
                addr: peer,
                timeout: self.handshake_timeout,
            }),
        }
    }
}

/// The stream of authenticated connections from `listener`, for
/// `tonic::transport::Server::serve_with_incoming`.
///
/// Never yields an `Err` (that would stop tonic's server): failed handshakes
/// are logged and dropped. If `auth` is plaintext and the listener is not on a
/// loopback address, logs an error and yields nothing. Dropping the stream
/// stops accepting.
pub fn incoming(
    listener: TcpListener,
    auth: ServerAuth,
) -> impl Stream<Item = Result<AuthenticatedStream, io::Error>> + Send + 'static {
    futures::stream::once(async move {
        let (tx, rx) = mpsc::channel::<AuthenticatedStream>(64);
        match listener.local_addr() {
            Ok(local) => match check_listen_addr(local, auth.security) {
                Ok(()) => {
                    tokio::spawn(accept_loop(listener, Arc::new(auth), tx));
                }
                Err(e) => tracing::error!("not accepting connections on {local}: {e}"),
            },
            Err(e) => tracing::error!("not accepting connections: listener has no address: {e}"),
        }
        ReceiverStream::new(rx).map(Ok)
    })
    .flatten()
}

async fn accept_loop(
    listener: TcpListener,
    auth: Arc<ServerAuth>,
    tx: mpsc::Sender<AuthenticatedStream>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            _ = tx.closed() => return,
            p = pending.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            a = listener.accept() => a,
        };
        let (tcp, remote_addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let auth = auth.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = auth.authenticate(tcp, remote_addr).await;
            drop(permit);
            match result {
                Ok(stream) => {
                    tracing::debug!(
                        peer = %remote_addr,
                        role = %stream.identity.role,
                        "connection authenticated"
                    );
                    // If the server is gone the connection is simply dropped.
                    let _ = tx.send(stream).await;
                }
                Err(e) => log_failure(remote_addr, &e),
            }
        });
    }
}

fn log_failure(peer: SocketAddr, e: &TransportError) {
    match e {
        TransportError::ClientNotAuthenticated { role, .. } => {
            tracing::warn!(peer = %peer, role = %role, "{e}")
        }
        TransportError::RoleNotAccepted { role, .. } => {
            tracing::warn!(peer = %peer, role = %role, "connection refused: {e}")
        }
        _ => tracing::warn!(peer = %peer, "connection dropped before authentication: {e}"),
    }
}

/// A server-side connection that passed TLS and the handshake.
/// Implements tokio's `AsyncRead`/`AsyncWrite` and tonic's `Connected`
/// (with [`PeerIdentity`] as connect info).
pub struct AuthenticatedStream {
    inner: Conn,
    identity: PeerIdentity,
}

impl AuthenticatedStream {
    /// Who is on the other end.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }
}

impl std::fmt::Debug for AuthenticatedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticatedStream")
            .field("identity", &self.identity)
            .field("tls", &&self.inner.is_tls())
            .finish()
    }
}

impl Connected for AuthenticatedStream {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.identity.clone()
    }
}

impl AsyncRead for AuthenticatedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthenticatedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// For handlers: `Ok` with the peer's identity if the request came over a
/// connection authenticated as `role`, else `PERMISSION_DENIED`.
#[allow(clippy::result_large_err)]
pub fn require_role<T>(req: &tonic::Request<T>, role: Role) -> Result<PeerIdentity, tonic::Status> {
    match req.extensions().get::<PeerIdentity>() {
        Some(id) if id.role == role => Ok(id.clone()),
        Some(id) => Err(tonic::Status::permission_denied(format!(
            "this endpoint is for {role} connections; this connection authenticated as {} (an agent key cannot be used by a client, and vice versa)",
            id.role
        ))),
        None => Err(tonic::Status::permission_denied(format!(
            "this endpoint is for {role} connections; this connection was not authenticated by mpctl"
        ))),
    }
}
