//! The agent daemon's main loop: attach to (or start) the node's launcher,
//! then keep a session with the coordinator, reconnecting with backoff.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpctl_proto::bootstrap::MAX_RESULT;
use mpctl_proto::v1::Exited;
use tokio::sync::{mpsc, RwLock};

use crate::config::AgentConfig;
use crate::launcher::{ExitRecord, LauncherClient, LauncherError, LauncherEvent};
use crate::output_watch::OutputWatcher;
use crate::pool_relay::PoolRelay;
use crate::session::{self, Ctx};
use crate::state::{exited_message, NodeState};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start or reach the node's launcher: {0}")]
    Launcher(#[from] LauncherError),
    #[error("cannot connect to the coordinator at {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: mpctl_transport::TransportError,
    },
    #[error(transparent)]
    Health(#[from] mpctl_transport::health::HealthError),
    #[error("session with the coordinator at {server} ended: {status}")]
    Session {
        server: String,
        status: tonic::Status,
    },
}

impl AgentError {
    /// Retrying cannot help: the coordinator refused our credentials.
    fn is_fatal(&self) -> bool {
        match self {
            AgentError::Connect { source, .. } => matches!(
                source,
                mpctl_transport::TransportError::Rejected { .. }
                    | mpctl_transport::TransportError::ServerNotAuthenticated { .. }
                    | mpctl_transport::TransportError::RoleRefused { .. }
            ),
            AgentError::Session { status, .. } => {
                matches!(
                    status.code(),
                    tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                        | tonic::Code::InvalidArgument
                )
            }
            _ => false,
        }
    }
}

/// The current launcher connection; replaced when the launcher restarts.
#[derive(Clone)]
pub struct Launcher {
    inner: Arc<RwLock<LauncherClient>>,
}

impl Launcher {
    pub async fn get(&self) -> LauncherClient {
        self.inner.read().await.clone()
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Runs the agent until `shutdown` resolves. Managed processes keep running
/// under the launcher after the agent stops.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    run_with_health(config, None, shutdown).await
}

/// [`run`], also serving `grpc.health.v1` in plaintext on `health` (if
/// given): SERVING while registered with the launcher connected.
pub async fn run_with_health(
    config: AgentConfig,
    health: Option<std::net::SocketAddr>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let config = Arc::new(config);
    let launcher_dir = config.data_dir.join("launcher");
    let procs_dir = config.data_dir.join("procs");
    for dir in [&config.data_dir, &procs_dir] {
        std::fs::create_dir_all(dir).map_err(|source| AgentError::DataDir {
            path: dir.clone(),
            source,
        })?;
    }
    let (client, hello, events) =
        LauncherClient::connect_or_start(&launcher_dir, &config.launcher_cmd).await?;
    let state = Arc::new(NodeState::new());
    state.adopt(&hello.running, exit_reports(hello.exited));
    let launcher = Launcher {
        inner: Arc::new(RwLock::new(client)),
    };
    let relay = PoolRelay::start(&config.data_dir, Arc::clone(&state)).map_err(|source| {
        AgentError::DataDir {
            path: config.data_dir.join(crate::pool_relay::POOL_SOCKET_FILE),
            source,
        }
    })?;
    let watcher = tokio::spawn(watch_launcher(
        events,
        Arc::clone(&state),
        Arc::clone(&relay),
        launcher.clone(),
        launcher_dir,
        config.launcher_cmd.clone(),
    ));
    let output_watcher = OutputWatcher::start().map_err(|source| AgentError::DataDir {
        path: procs_dir.clone(),
        source,
    })?;
    let _health = match health {
        Some(addr) => Some(
            mpctl_transport::health::serve(
                addr,
                &["mpctl.v1.AgentService"],
                crate::health::readiness(
                    Arc::clone(&state),
                    launcher.clone(),
                    config.server.clone(),
                ),
            )
            .await?,
        ),
        None => None,
    };
    let ctx = Ctx {
        config: Arc::clone(&config),
        state,
        launcher,
        watcher: output_watcher,
        procs_dir,
        relay,
    };
    tokio::pin!(shutdown);
    let mut backoff = BACKOFF_MIN;
    let result = loop {
        let began = Instant::now();
        let session = session::run(&ctx);
        tokio::pin!(session);
        let outcome = tokio::select! {
            _ = &mut shutdown => {
                drain(&ctx, session).await;
                break Ok(());
            }
            r = &mut session => r,
        };
        match outcome {
            Ok(()) => {
                tracing::info!(server = %config.server, "coordinator closed the session; reconnecting")
            }
            Err(e) if e.is_fatal() => break Err(e),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "no session with the coordinator")
            }
        }
        if began.elapsed() > Duration::from_secs(5) {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    };
    watcher.abort();
    // Acks queued for the launcher reach it before the connection closes.
    let _ = tokio::time::timeout(DRAIN, ctx.launcher.get().await.flush()).await;
    result
}

/// How long a clean stop waits for the coordinator to acknowledge the exits
/// already reported (its group commit takes a few ms).
const DRAIN: Duration = Duration::from_millis(500);

/// On a clean stop with a session up: keeps the session running until every
/// reported exit is acknowledged (or `DRAIN` passes, or the session ends),
/// so that the launcher does not keep them for the next agent to report
/// again. Nothing is lost either way.
async fn drain(ctx: &Ctx, session: std::pin::Pin<&mut impl Future>) {
    let acked = async {
        tokio::select! {
            _ = ctx.state.all_acked() => {}
            _ = session => {}
        }
    };
    let _ = tokio::time::timeout(DRAIN, acked).await;
}

/// Forwards the launcher's exits; if the launcher goes away, starts or
/// reaches a new one and adopts what it knows.
async fn watch_launcher(
    mut events: mpsc::UnboundedReceiver<LauncherEvent>,
    state: Arc<NodeState>,
    relay: Arc<PoolRelay>,
    launcher: Launcher,
    dir: PathBuf,
    cmd: Vec<OsString>,
) {
    loop {
        while let Some(event) = events.recv().await {
            match event {
                LauncherEvent::Exited(e) => {
                    let report = exit_report(e);
                    match relay.drained(&report.process_id) {
                        // A pool worker's results go up before its exit.
                        Some(drained) => {
                            let state = Arc::clone(&state);
                            tokio::spawn(async move {
                                drained.await;
                                state.exited(report);
                            });
                        }
                        None => state.exited(report),
                    }
                }
                LauncherEvent::Adopted(l) => state.adopted(l),
                LauncherEvent::Disconnected(reason) => {
                    tracing::error!(%reason, "lost the connection to the node's launcher; reattaching");
                    break;
                }
            }
        }
        let mut backoff = BACKOFF_MIN;
        loop {
            match LauncherClient::connect_or_start(&dir, &cmd).await {
                Ok((client, hello, new_events)) => {
                    *launcher.inner.write().await = client;
                    state.adopt(&hello.running, exit_reports(hello.exited));
                    events = new_events;
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?backoff, "cannot reach the node's launcher");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// An exit as the coordinator gets it: with the function target's result,
/// which the launcher kept in memory and journaled with the exit.
fn exit_report(mut e: ExitRecord) -> Exited {
    let result = match e.result.take() {
        // Empty: the function did not return (a return writes at least `null`).
        Some(json) if json.is_empty() => None,
        Some(json) if json.len() <= MAX_RESULT => Some(json.into_bytes()),
        Some(json) => {
            tracing::warn!(process = %e.id, len = json.len(), "result over the limit; dropped");
            None
        }
        None => None,
    };
    exited_message(&e, result)
}

fn exit_reports(exits: Vec<ExitRecord>) -> Vec<Exited> {
    exits.into_iter().map(exit_report).collect()
}
