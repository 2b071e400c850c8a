//! Server side: turn a TCP listener into a stream of authenticated
//! connections for `tonic::transport::Server::serve_with_incoming`.
//!
//! An accept loop (spawned on the first poll) hands every TCP connection to
//! its own task, which runs TLS and the handshake under
//! [`HANDSHAKE_TIMEOUT`](crate::handshake::HANDSHAKE_TIMEOUT), and under the
//! shorter [`FIRST_BYTES_TIMEOUT`] for the peer's first byte; only
//! connections that passed are yielded, so a slow or hostile peer never blocks
//! another and never stops the server. The loop never stops accepting:
//! unauthenticated connections are capped per address and in all
//! ([`PendingLimits`]), and a newcomer makes room by dropping the oldest idle
//! one ([`crate::admission`]), so a flood of idle connections cannot starve
//! a real client, even from the same address. Failures are logged throttled
//! ([`crate::failure_log`]): the first of each kind per interval in full,
//! the rest as counts.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

pub use crate::admission::PendingLimits;
use crate::admission::{Admission, Crowded, Ticket};
use crate::authkey::AuthKey;
use crate::error::TransportError;
use crate::failure_log::FailureLog;
pub use crate::failure_log::{
    HandshakeFailures, FAILURE_LOG_INTERVAL, REASONS as HANDSHAKE_FAILURE_REASONS,
};
use crate::handshake::{self, HANDSHAKE_TIMEOUT, PLAINTEXT_BINDING};
use crate::io::Conn;
use crate::keys::{check_listen_addr, Role, Security};
use crate::tls;

/// Deadline for a new connection's first byte (a TLS or mpctl hello, which
/// a real client sends as soon as TCP is up). Shorter than the whole
/// handshake's, so idle connections do not hold their place for long.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(3);

/// Identity of an authenticated peer. tonic puts it in every request's
/// extensions: `req.extensions().get::<PeerIdentity>()`.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    /// The role the peer proved.
    pub role: Role,
    /// The peer's TCP address.
    pub remote_addr: SocketAddr,
    /// For role [`Role::Job`]: the managed process whose job key it proved.
    pub process_id: Option<String>,
}

/// Everything the server needs to authenticate connections.
#[derive(Clone)]
pub struct ServerAuth {
    authkey: AuthKey,
    security: Security,
    accept_roles: Vec<Role>,
    acceptor: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    first_bytes_timeout: Duration,
    limits: PendingLimits,
    failure_log_interval: Duration,
    failures: Arc<HandshakeFailures>,
}

impl std::fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerAuth")
            .field("security", &self.security)
            .field("accept_roles", &self.accept_roles)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("first_bytes_timeout", &self.first_bytes_timeout)
            .field("limits", &self.limits)
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
            first_bytes_timeout: FIRST_BYTES_TIMEOUT,
            limits: PendingLimits::default(),
            failure_log_interval: FAILURE_LOG_INTERVAL,
            failures: Arc::default(),
        })
    }

    /// Overrides the handshake deadline (default 10 s).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> ServerAuth {
        self.handshake_timeout = timeout;
        self
    }

    /// Overrides the deadline for a connection's first byte (default
    /// [`FIRST_BYTES_TIMEOUT`]; never longer than the handshake's).
    pub fn with_first_bytes_timeout(mut self, timeout: Duration) -> ServerAuth {
        self.first_bytes_timeout = timeout;
        self
    }

    /// Overrides the caps on unauthenticated connections (default
    /// [`PendingLimits::default`]: 128 per address, 256 in all; each pending
    /// connection holds two descriptors).
    pub fn with_pending_limits(mut self, limits: PendingLimits) -> ServerAuth {
        self.limits = limits;
        self
    }

    /// Overrides the interval of the failure counts (default
    /// [`FAILURE_LOG_INTERVAL`]).
    pub fn with_failure_log_interval(mut self, interval: Duration) -> ServerAuth {
        self.failure_log_interval = interval;
        self
    }

    /// The failed handshakes of every listener using this `ServerAuth`
    /// (and its clones), by reason, for the metrics endpoint.
    pub fn handshake_failures(&self) -> Arc<HandshakeFailures> {
        Arc::clone(&self.failures)
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
        self.authenticate_admitted(tcp, remote_addr, None).await
    }

    async fn authenticate_admitted(
        &self,
        tcp: TcpStream,
        remote_addr: SocketAddr,
        ticket: Option<&Ticket>,
    ) -> Result<AuthenticatedStream, TransportError> {
        let peer = remote_addr.to_string();
        let first_bytes = self.first_bytes_timeout.min(self.handshake_timeout);
        let fut = async {
            let _ = tcp.set_nodelay(true);
            first_byte(&tcp, &peer, first_bytes).await?;
            if let Some(ticket) = ticket {
                ticket.started();
            }
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
            match handshake::server_handshake_identified(
                &mut inner,
                &self.authkey,
                &self.accept_roles,
                &binding,
                &peer,
            )
            .await
            {
                Ok((role, process_id)) => Ok(AuthenticatedStream {
                    inner,
                    identity: PeerIdentity {
                        role,
                        remote_addr,
                        process_id,
                    },
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

/// Waits for the peer's first byte (without reading it).
async fn first_byte(tcp: &TcpStream, peer: &str, timeout: Duration) -> Result<(), TransportError> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(timeout, tcp.peek(&mut byte)).await {
        Ok(Ok(0)) => Err(TransportError::HandshakeIo {
            addr: peer.to_string(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection before sending anything",
            ),
        }),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(TransportError::HandshakeIo {
            addr: peer.to_string(),
            source,
        }),
        Err(_) => Err(TransportError::NoHandshakeBytes {
            addr: peer.to_string(),
            timeout,
        }),
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
    let admission = Admission::new(auth.limits);
    let failures = Arc::new(FailureLog::new(
        auth.failure_log_interval,
        Arc::clone(&auth.failures),
    ));
    let every = failures.interval();
    let mut counts = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    counts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => break,
            _ = counts.tick() => {
                failures.flush();
                continue;
            }
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
        // A duplicate of the socket lets the admission ask the kernel
        // whether the peer has sent anything (one more descriptor while
        // the connection is pending; without it, only the task can tell).
        let probe = std::os::fd::AsFd::as_fd(&tcp).try_clone_to_owned().ok();
        let (ticket, crowded) = admission.admit(remote_addr.ip(), probe);
        let auth = auth.clone();
        let tx = tx.clone();
        let failures = Arc::clone(&failures);
        tokio::spawn(async move {
            let result = tokio::select! {
                r = auth.authenticate_admitted(tcp, remote_addr, Some(&ticket)) => r,
                Ok(why) = crowded => Err(crowded_error(remote_addr, why)),
            };
            drop(ticket);
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
                Err(e) => failures.record(remote_addr, &e),
            }
        });
    }
    failures.flush();
}

fn crowded_error(peer: SocketAddr, why: Crowded) -> TransportError {
    let reason = match why {
        Crowded::Address(n) => format!("its address had {n} unauthenticated connections"),
        Crowded::Server(n) => format!("the server had {n} unauthenticated connections"),
    };
    TransportError::Crowded {
        addr: peer.to_string(),
        reason,
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
