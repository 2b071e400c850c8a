//! The health listener: `grpc.health.v1` alone, in plaintext and without the
//! authkey handshake, for probes that cannot authenticate (the kubelet's gRPC
//! probe, `mpctl health` in a container's health check). Nothing else is
//! served on it, so it reveals one bit per service name: ready or not.
//!
//! Each `Check` asks the part's readiness function at that moment (the
//! coordinator: its store is writable; an agent: registered and its launcher
//! connected), so the answer is never stale. The reason for `NOT_SERVING`
//! travels in the `mpctl-health-reason` response header for humans;
//! `Watch` is not offered (probes use `Check`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// What a readiness check returns: `Err(reason)` when not ready.
pub type Readiness = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// Asked on every `Check`.
pub type ReadyFn = Arc<dyn Fn() -> Readiness + Send + Sync>;

/// The response header carrying why a part is not ready.
pub const REASON_HEADER: &str = "mpctl-health-reason";

/// How long one readiness check may take before the answer is `NOT_SERVING`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors of the health listener and of [`check`].
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The listener could not bind.
    #[error("cannot listen for health checks on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS reason.
        #[source]
        source: std::io::Error,
    },
    /// [`check`] could not reach the listener.
    #[error("cannot reach the health listener at {addr}: {reason}")]
    Unreachable {
        /// The address asked for.
        addr: String,
        /// What failed.
        reason: String,
    },
}

struct Service {
    services: Vec<String>,
    ready: ReadyFn,
}

#[tonic::async_trait]
impl Health for Service {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let name = &request.get_ref().service;
        if !name.is_empty() && !self.services.iter().any(|s| s == name) {
            return Err(Status::not_found(format!("unknown service {name:?}")));
        }
        let verdict = match tokio::time::timeout(CHECK_TIMEOUT, (self.ready)()).await {
            Ok(v) => v,
            Err(_) => Err(format!("readiness check took over {CHECK_TIMEOUT:?}")),
        };
        let (status, reason) = match verdict {
            Ok(()) => (ServingStatus::Serving, None),
            Err(reason) => (ServingStatus::NotServing, Some(reason)),
        };
        let mut response = Response::new(HealthCheckResponse {
            status: status as i32,
        });
        if let Some(reason) = reason {
            tracing::debug!(%reason, "health check: not serving");
            // Header values are visible ASCII; anything else becomes '?'.
            let clean: String = reason
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .collect();
            if let Ok(v) = clean.parse() {
                response.metadata_mut().insert(REASON_HEADER, v);
            }
        }
        Ok(response)
    }

    type WatchStream = futures::stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented(
            "Watch is not offered on the mpctl health listener; use Check",
        ))
    }
}

/// A running health listener; dropping it stops it.
pub struct HealthListener {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HealthListener {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for HealthListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves `grpc.health.v1` on it: the overall status (an
/// empty service name) and each of `services`, all answered by `ready`.
pub async fn serve(
    addr: SocketAddr,
    services: &[&str],
    ready: ReadyFn,
) -> Result<HealthListener, HealthError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| HealthError::Bind { addr, source })?;
    let service = HealthServer::new(Service {
        services: services.iter().map(|s| (*s).to_owned()).collect(),
        ready,
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .timeout(CHECK_TIMEOUT * 2)
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!(%local_addr, error = %e, "health listener stopped");
        }
    });
    tracing::info!(%local_addr, "health listener (grpc.health.v1 only, plaintext)");
    Ok(HealthListener { local_addr, task })
}

/// Asks the health listener at `addr` (HOST:PORT) for the overall status.
/// Returns whether it is `SERVING`, and the reason it gave when it is not.
pub async fn check(addr: &str, timeout: Duration) -> Result<(bool, String), HealthError> {
    let unreachable = |reason: String| HealthError::Unreachable {
        addr: addr.to_owned(),
        reason,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| unreachable(format!("not a HOST:PORT address: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| unreachable(format!("no connection within {timeout:?}")))?
        .map_err(|e| unreachable(error_chain(&e)))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| unreachable(format!("{}: {}", s.code(), s.message())))?;
    let reason = response
        .metadata()
        .get(REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let serving = response.get_ref().status == ServingStatus::Serving as i32;
    let reason = if serving || !reason.is_empty() {
        reason
    } else {
        format!(
            "status {}",
            ServingStatus::try_from(response.get_ref().status)
                .map_or("unknown", |s| s.as_str_name())
        )
    };
    Ok((serving, reason))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
