//! The agent daemon's main loop: attach to (or start) the node's launcher,
//! then keep a session with the coordinator, reconnecting with backoff.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpctl_node::MAX_RESULT;
use mpctl_proto::v1::Exited;
use tokio::sync::mpsc;

use crate::config::AgentConfig;
pub use crate::error::AgentError;
use crate::launcher::{ExitRecord, Hello, Launcher, LauncherClient, LauncherEvent};
use crate::metrics::AgentMetrics;
use crate::output_watch::OutputWatcher;
use crate::pool_relay::PoolRelay;
use crate::session::{self, Ctx};
use crate::state::{exited_message, NodeState};

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
    run_observed(config, health, Arc::default(), shutdown).await
}

/// [`run_with_health`], counting into `metrics` (registered by the caller
/// with a metrics listener, see [`crate::metrics`]).
pub async fn run_observed(
    config: AgentConfig,
    health: Option<std::net::SocketAddr>,
    metrics: Arc<AgentMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let config = Arc::new(config);
    let launcher_dir = config.data_dir.join("launcher");
    let procs_dir = config.data_dir.join("procs");
    let procs_were_open = procs_dir_is_open(&procs_dir);
    for dir in [&config.data_dir, &procs_dir] {
        // 0700, and made so if it existed: output and sockets are private.
        crate::launcher::create_private_dir(dir).map_err(|source| AgentError::DataDir {
            path: dir.clone(),
            source,
        })?;
    }
    if procs_were_open {
        make_outputs_private(&procs_dir);
    }
    let (client, hello, events) =
        LauncherClient::connect_or_start(&launcher_dir, &config.launcher_cmd).await?;
    let state = Arc::new(NodeState::new(Arc::clone(&metrics)));
    metrics.attach(Arc::clone(&state));
    report_journal_damage(&hello);
    state.set_journal_damage(damage_summary(&hello));
    state.adopt(&hello.running, exit_reports(hello.exited));
    let launcher = Launcher::new(client);
    let relay = PoolRelay::start(&config.data_dir, Arc::clone(&state), config.peers.clone())
        .map_err(|source| AgentError::DataDir {
            path: config.data_dir.join(crate::pool_relay::POOL_SOCKET_FILE),
            source,
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
        outputs: crate::outputs::Outputs::new(procs_dir.clone()),
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
                    launcher.replace(client).await;
                    report_journal_damage(&hello);
                    state.set_journal_damage(damage_summary(&hello));
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

/// Whether `procs/` exists with a mode other than 0700 (an older version's).
fn procs_dir_is_open(procs_dir: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(procs_dir).is_ok_and(|m| m.permissions().mode() & 0o777 != 0o700)
}

/// Output left world-readable by an older version: each process directory
/// 0700, each file in it 0600. Done once, when `procs/` itself was open.
fn make_outputs_private(procs_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let set = |path: &std::path::Path, mode: u32| {
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot make output private");
        }
    };
    let Ok(entries) = std::fs::read_dir(procs_dir) else {
        return;
    };
    for dir in entries.filter_map(Result::ok) {
        if !dir.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        set(&dir.path(), 0o700);
        for file in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            if file.file_type().is_ok_and(|t| t.is_file()) {
                set(&file.path(), 0o600);
            }
        }
    }
    tracing::info!(dir = %procs_dir.display(), "output directories made private (0700, files 0600)");
}

/// The launcher found damaged records in its exit journal: said at ERROR
/// each time the agent attaches, until an operator removes the kept file.
/// Their exits are not believed (they are not among the Hello's exits), so
/// those processes get no made-up code: the coordinator keeps them lost.
fn report_journal_damage(hello: &Hello) {
    for d in &hello.journal_damage {
        tracing::error!(
            preserved = %d.preserved.display(),
            line = d.line,
            suspect = %d.suspect_id.as_deref().unwrap_or("unknown"),
            "the node's exit journal is damaged: {d}; that exit is not reported (the process gets no exit code from this node) and the process is not launched again; remove the kept file once dealt with"
        );
    }
}

/// The launcher's damage report as the coordinator gets it (it shows the
/// node as degraded): how many records, the first one, the kept file.
fn damage_summary(hello: &Hello) -> Option<mpctl_proto::v1::JournalDamage> {
    let records: Vec<_> = hello.journal_damage.iter().filter(|d| d.line > 0).collect();
    let first = records.first()?;
    let mut suspect_ids: Vec<String> = records
        .iter()
        .filter_map(|d| d.suspect_id.clone())
        .collect();
    suspect_ids.dedup();
    Some(mpctl_proto::v1::JournalDamage {
        count: records.len() as u32,
        first_offset: first.offset,
        first: format!("line {}: {}", first.line, first.reason),
        kept_file: first.preserved.display().to_string(),
        suspect_ids,
    })
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
