//! Client side: TCP connect, TLS, handshake, and a tonic `Channel` on top.
//!
//! [`connect`] authenticates one connection itself before building the
//! channel, so a wrong authkey, a refused role or an unreachable server is
//! reported right away as a [`TransportError`] with its own message (not a
//! generic "transport error"). That first connection is then handed to the
//! channel; later reconnections by tonic go through the same connector.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::authkey::AuthKey;
use crate::credentials::JobKey;
use crate::error::TransportError;
use crate::handshake::{self, HANDSHAKE_TIMEOUT, PLAINTEXT_BINDING};
use crate::io::Conn;
use crate::keys::{check_connect_addr, Role, RoleKey, Security};
use crate::tls;

/// Connects to the mpctl server at `addr` ("host:port") as `role`, and returns
/// a gRPC channel over the authenticated connection.
pub async fn connect(
    addr: &str,
    authkey: &AuthKey,
    role: Role,
    security: Security,
) -> Result<Channel, TransportError> {
    channel(addr, Connector::new(addr, authkey, role, security)?).await
}

/// Connects as managed process `process_id` with its job key (role
/// [`Role::Job`]): what a function target uses instead of the authkey.
pub async fn connect_job(
    addr: &str,
    job_key: &JobKey,
    process_id: &str,
    security: Security,
) -> Result<Channel, TransportError> {
    let mut connector =
        Connector::with_key(addr, RoleKey::from_job_key(job_key), Role::Job, security)?;
    connector.job_id = Some(Arc::from(process_id));
    channel(addr, connector).await
}

/// A channel whose connections `connector` makes; the first is made now,
/// so a wrong key or an unreachable server is an error here.
async fn channel(addr: &str, connector: Connector) -> Result<Channel, TransportError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
        TransportError::InvalidAddress {
            addr: addr.to_string(),
            reason: e.to_string(),
        }
    })?;
    let first = connector.establish().await?;
    connector.put_first(first);
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| TransportError::Channel {
            addr: addr.to_string(),
            source,
        })
}

/// Makes authenticated connections to one server.
#[derive(Clone)]
struct Connector {
    addr: Arc<str>,
    role: Role,
    role_key: Arc<RoleKey>,
    /// For role job: the process id the key belongs to.
    job_id: Option<Arc<str>>,
    security: Security,
    tls: Option<TlsConnector>,
    /// A connection already authenticated by [`connect`], used for the
    /// channel's first connection.
    first: Arc<Mutex<Option<Conn>>>,
}

impl Connector {
    fn new(
        addr: &str,
        authkey: &AuthKey,
        role: Role,
        security: Security,
    ) -> Result<Connector, TransportError> {
        Connector::with_key(addr, authkey.role_key(role), role, security)
    }

    fn with_key(
        addr: &str,
        role_key: RoleKey,
        role: Role,
        security: Security,
    ) -> Result<Connector, TransportError> {
        let tls = match security {
            Security::Tls => Some(TlsConnector::from(tls::client_config()?)),
            Security::PlaintextLoopback => None,
        };
        Ok(Connector {
            addr: Arc::from(addr),
            role,
            role_key: Arc::new(role_key),
            job_id: None,
            security,
            tls,
            first: Arc::new(Mutex::new(None)),
        })
    }

    fn put_first(&self, conn: Conn) {
        *self.first.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
    }

    fn take_first(&self) -> Option<Conn> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    async fn establish(&self) -> Result<Conn, TransportError> {
        let addr = &*self.addr;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.establish_inner()).await {
            Ok(res) => res,
            Err(_) => Err(TransportError::HandshakeTimeout {
                addr: addr.to_string(),
                timeout: HANDSHAKE_TIMEOUT,
            }),
        }
    }

    async fn establish_inner(&self) -> Result<Conn, TransportError> {
        let addr = &*self.addr;
        let candidates: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| TransportError::InvalidAddress {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
            .collect();
        for sa in &candidates {
            check_connect_addr(*sa, self.security)?;
        }
        let mut last_err = None;
        let mut tcp = None;
        for sa in candidates {
            match TcpStream::connect(sa).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| TransportError::Connect {
            addr: addr.to_string(),
            source: last_err.unwrap_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the name resolved to no address",
                )
            }),
        })?;
        let _ = tcp.set_nodelay(true);

        let (mut conn, binding) = match &self.tls {
            Some(connector) => {
                let tls_err = |source| TransportError::Tls {
                    addr: addr.to_string(),
                    source,
                };
                let stream = connector
                    .connect(tls::server_name(), tcp)
                    .await
                    .map_err(tls_err)?;
                let binding = tls::exporter_binding(stream.get_ref().1).map_err(tls_err)?;
                (Conn::Tls(Box::new(stream.into())), binding)
            }
            None => (Conn::Plain(tcp), PLAINTEXT_BINDING),
        };
        handshake::client_handshake_as(
            &mut conn,
            &self.role_key,
            self.role,
            self.job_id.as_deref(),
            &binding,
            addr,
        )
        .await?;
        tracing::debug!(server = addr, role = %self.role, "connection authenticated");
        Ok(conn)
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Conn>, TransportError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let first = self.take_first();
        let this = self.clone();
        Box::pin(async move {
            let conn = match first {
                Some(conn) => conn,
                None => this.establish().await?,
            };
            Ok(TokioIo::new(conn))
        })
    }
}
