//! One connection to the coordinator: register, then serve its commands and
//! send heartbeats until the stream ends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mpctl_node::{descriptors, env as node_env, Preparation, Security};
use mpctl_proto::v1::{
    agent_message::Msg, agent_service_client::AgentServiceClient, agent_to_worker,
    coordinator_message::Msg as FromCoordinator, AgentMessage, Heartbeat, Launch, LaunchFailed,
    Launched, LogStream, Register, Signaled, StartMethod,
};
use mpctl_transport::Role;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::launcher::{Bootstrap, LaunchError, LaunchSpec, Launcher};
use crate::logs;
use crate::output_watch::OutputWatcher;
use crate::outputs::Outputs;
use crate::pool_relay::PoolRelay;
use crate::state::NodeState;
use mpctl_transport::trace::W3c;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

/// Environment variables a process gets from the node (everything else it
/// gets is in its start request). The authkey is never among them.
const BASE_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct Ctx {
    pub config: Arc<AgentConfig>,
    pub state: Arc<NodeState>,
    pub launcher: Launcher,
    pub watcher: Arc<OutputWatcher>,
    pub outputs: Arc<Outputs>,
    pub procs_dir: PathBuf,
    pub relay: Arc<PoolRelay>,
}

/// Runs one session to its end. Returns Ok when the coordinator closed it.
pub async fn run(ctx: &Ctx) -> Result<(), AgentError> {
    let cfg = &ctx.config;
    let channel = mpctl_transport::connect(&cfg.server, &cfg.authkey, Role::Agent, cfg.security)
        .await
        .map_err(|e| AgentError::Connect {
            server: cfg.server.clone(),
            source: e,
        })?;
    // Pool tasks and results travel in batches; see the coordinator's limit.
    let mut client = AgentServiceClient::new(mpctl_transport::trace::Traced::new(channel))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::unbounded_channel::<AgentMessage>();
    let node_credential =
        crate::identity::load(&cfg.data_dir).map_err(|source| AgentError::Credential {
            path: crate::identity::path(&cfg.data_dir),
            source,
        })?;
    let (running, exited, journal_damage) = ctx.state.open_session(tx.clone());
    let register = Register {
        node_credential,
        name: cfg.name.clone(),
        slots: cfg.slots,
        labels: cfg.labels.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        hostname: crate::config::hostname(),
        running,
        exited,
        journal_damage,
    };
    let _ = tx.send(AgentMessage {
        msg: Some(Msg::Register(register)),
    });
    // However the session ends (including this future being dropped at
    // shutdown), no sender may keep the stream to the coordinator open.
    let _closed = CloseOnDrop(&ctx.state);
    serve(ctx, &mut client, tx, rx).await
}

struct CloseOnDrop<'a>(&'a NodeState);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close_session();
    }
}

/// Tasks that belong to one session: aborted when it ends.
#[derive(Default)]
struct SessionTasks {
    heartbeat: Option<AbortHandle>,
    readers: HashMap<u64, AbortHandle>,
}

impl Drop for SessionTasks {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        for h in self.readers.values() {
            h.abort();
        }
    }
}

async fn serve(
    ctx: &Ctx,
    client: &mut AgentServiceClient<mpctl_transport::trace::Traced<tonic::transport::Channel>>,
    tx: mpsc::UnboundedSender<AgentMessage>,
    rx: mpsc::UnboundedReceiver<AgentMessage>,
) -> Result<(), AgentError> {
    let server = ctx.config.server.clone();
    let mut inbound = client
        .session(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|status| AgentError::Session {
            server: server.clone(),
            status,
        })?
        .into_inner();
    let mut tasks = SessionTasks::default();
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(status) => {
                return Err(AgentError::Session {
                    server: server.clone(),
                    status,
                })
            }
        };
        match msg.msg {
            Some(FromCoordinator::Registered(r)) => {
                if !r.node_credential.is_empty() {
                    // Kept before anything else: the next registration needs it.
                    let dir = &ctx.config.data_dir;
                    crate::identity::store(dir, &r.node_credential).map_err(|source| {
                        AgentError::Credential {
                            path: crate::identity::path(dir),
                            source,
                        }
                    })?;
                    tracing::info!(agent = %ctx.config.name, "issued a node credential; kept in {}", crate::identity::path(dir).display());
                }
                tracing::info!(agent = %ctx.config.name, %server, "registered with the coordinator");
                ctx.state.registered();
                let every = Duration::from_millis(r.heartbeat_interval_ms.clamp(100, 60_000));
                let tx = tx.clone();
                let state = Arc::clone(&ctx.state);
                let beats = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    loop {
                        tick.tick().await;
                        let beat = Heartbeat {
                            running: state.running_count(),
                        };
                        if tx
                            .send(AgentMessage {
                                msg: Some(Msg::Heartbeat(beat)),
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                if let Some(h) = tasks.heartbeat.replace(beats.abort_handle()) {
                    h.abort();
                }
            }
            Some(FromCoordinator::Launch(l)) => {
                tokio::spawn(launch(
                    Arc::clone(&ctx.config),
                    Arc::clone(&ctx.state),
                    ctx.launcher.clone(),
                    ctx.procs_dir.clone(),
                    Arc::clone(&ctx.relay),
                    l,
                ));
            }
            Some(FromCoordinator::Signal(s)) => {
                let launcher = ctx.launcher.clone();
                let state = Arc::clone(&ctx.state);
                tokio::spawn(async move {
                    let client = launcher.get().await;
                    let (delivered, error) = match client
                        .signal(&s.process_id, s.signo, s.tree)
                        .await
                    {
                        Ok(delivered) => (delivered, String::new()),
                        Err(e) => {
                            tracing::warn!(process = %s.process_id, signo = s.signo, error = %e, "signal not delivered");
                            (false, e.to_string())
                        }
                    };
                    state.send(Msg::Signaled(Signaled {
                        request_id: s.request_id,
                        process_id: s.process_id,
                        delivered,
                        error,
                    }));
                });
            }
            Some(FromCoordinator::AckExit(a)) => {
                ctx.state.acked(&a.process_id);
                let client = ctx.launcher.get().await;
                if let Err(e) = client.ack(&a.process_id).await {
                    tracing::warn!(process = %a.process_id, error = %e, "exit ack not journaled; it will be re-sent");
                }
            }
            Some(FromCoordinator::ReadLogs(r)) => {
                let which = LogStream::try_from(r.stream).unwrap_or(LogStream::Both);
                let request = logs::Request {
                    id: r.process_id,
                    request_id: r.request_id,
                    which,
                    follow: r.follow,
                    stdout_offset: r.stdout_offset,
                    stderr_offset: r.stderr_offset,
                };
                // Its output is not removed while it is read.
                let reading = ctx.outputs.reading(&request.id);
                let serve = logs::serve(
                    Arc::clone(&ctx.state),
                    Arc::clone(&ctx.watcher),
                    ctx.procs_dir.clone(),
                    request,
                );
                let task = tokio::spawn(async move {
                    let _reading = reading;
                    serve.await
                });
                tasks.readers.retain(|_, h| !h.is_finished());
                tasks.readers.insert(r.request_id, task.abort_handle());
            }
            Some(FromCoordinator::PoolTasks(mut t)) => {
                let id = std::mem::take(&mut t.process_id);
                ctx.relay.deliver(&id, agent_to_worker::Msg::Tasks(t));
            }
            Some(FromCoordinator::PoolWorkerStop(s)) => {
                ctx.relay
                    .deliver(&s.process_id.clone(), agent_to_worker::Msg::Stop(s));
            }
            Some(FromCoordinator::ResendReports(_)) => ctx.state.resync(),
            Some(FromCoordinator::RemoveOutputs(r)) => ctx.outputs.remove(r.process_ids),
            Some(FromCoordinator::CancelLogs(c)) => {
                if let Some(h) = tasks.readers.remove(&c.request_id) {
                    h.abort();
                }
            }
            None => {}
        }
    }
}

fn child_env(
    config: &AgentConfig,
    id: &str,
    name: &str,
    extra: &HashMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = BASE_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    for (k, v) in [
        (node_env::PROCESS_ID, id),
        (node_env::PROCESS_NAME, name),
        (node_env::NODE, config.name.as_str()),
    ] {
        env.retain(|(ek, _)| ek != k);
        env.push((k.into(), v.into()));
    }
    env
}

/// The process span's context in the child's environment (`TRACEPARENT`,
/// `TRACESTATE`: docs/node-contract.md), in place of any the caller set.
fn with_trace(mut env: Vec<(String, String)>, l: &Launch) -> Vec<(String, String)> {
    if l.traceparent.is_empty() {
        return env;
    }
    env.retain(|(k, _)| k != node_env::TRACEPARENT && k != node_env::TRACESTATE);
    env.push((node_env::TRACEPARENT.into(), l.traceparent.clone()));
    if !l.tracestate.is_empty() {
        env.push((node_env::TRACESTATE.into(), l.tracestate.clone()));
    }
    env
}

async fn launch(
    config: Arc<AgentConfig>,
    state: Arc<NodeState>,
    launcher: Launcher,
    procs_dir: PathBuf,
    relay: Arc<PoolRelay>,
    l: Launch,
) {
    let id = l.process_id.clone();
    state.launching(&id);
    let cx = launch_span(&config, &l);
    let outcome = launch_inner(&config, &launcher, &procs_dir, &relay, &l)
        .with_context(cx.clone())
        .await;
    if mpctl_transport::trace::enabled() {
        let span = cx.span();
        match &outcome {
            Ok(launched) => {
                span.set_attribute(KeyValue::new("process.pid", i64::from(launched.pid)))
            }
            Err(error) => span.set_status(Status::error(error.clone())),
        }
        span.end();
    }
    match outcome {
        Ok(launched) => {
            state.metrics().launched();
            state.launch_done(&id, Some(launched.pid));
            state.send(Msg::Launched(Launched {
                process_id: id,
                pid: launched.pid,
                at_unix_ms: launched.at_unix_ms,
            }));
        }
        Err(error) => {
            relay.forget(&id);
            state.launch_done(&id, None);
            tracing::info!(process = %id, %error, "launch failed");
            state.metrics().launch_failed(&error);
            state.send(Msg::LaunchFailed(LaunchFailed {
                process_id: id,
                error,
            }));
        }
    }
}

/// The agent's span for one launch, a child of the process span the
/// coordinator sent (empty context when tracing is off).
fn launch_span(config: &AgentConfig, l: &Launch) -> Context {
    if !mpctl_transport::trace::enabled() {
        return Context::new();
    }
    let parent = W3c {
        traceparent: l.traceparent.clone(),
        tracestate: l.tracestate.clone(),
    }
    .context();
    let tracer = opentelemetry::global::tracer("mpctl");
    let span = tracer
        .span_builder("launch")
        .with_attributes([
            KeyValue::new("mpctl.process.id", l.process_id.clone()),
            KeyValue::new("mpctl.process.name", l.name.clone()),
            KeyValue::new("mpctl.node", config.name.clone()),
        ])
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

/// What to run: the command, or the function target's program in bootstrap
/// mode with its preparation data.
struct Target {
    argv: Vec<String>,
    env: HashMap<String, String>,
    cwd: String,
    bootstrap: Option<String>,
    /// Start through the forkserver with these preload hooks.
    forkserver: Option<Vec<String>>,
}

fn target(config: &AgentConfig, relay: &PoolRelay, l: &Launch) -> Result<Target, String> {
    match (&l.command, &l.function) {
        // For commands the launcher itself plays the forkserver (docs/design.md §3):
        // it is small and single-threaded, and forks every child.
        (Some(c), _) => Ok(Target {
            argv: c.argv.clone(),
            env: c.env.clone(),
            cwd: c.cwd.clone(),
            bootstrap: None,
            forkserver: None,
        }),
        (None, Some(f)) => {
            let args = String::from_utf8(f.args.clone())
                .map_err(|_| "the function's arguments are not UTF-8 JSON".to_owned())?;
            let forkserver = l.start_method == StartMethod::Forkserver as i32;
            let start_method = if forkserver {
                mpctl_node::StartMethod::Forkserver
            } else {
                mpctl_node::StartMethod::Spawn
            };
            let security = match config.security {
                mpctl_transport::Security::Tls => Security::Tls,
                mpctl_transport::Security::PlaintextLoopback => Security::Plaintext,
            };
            let adopt_socket = config
                .data_dir
                .join("launcher")
                .join(crate::launcher::ADOPT_SOCKET_FILE);
            let mut prep = Preparation::new(
                &l.process_id,
                &l.name,
                &config.name,
                start_method,
                &f.function,
                args,
            )
            .parent(&l.parent_id)
            // The job's own key, never the authkey (docs/design.md §2).
            .coordinator(
                &config.server,
                security,
                config.authkey.job_key(&l.process_id).expose_hex(),
            )
            .adopt_socket(adopt_socket.to_string_lossy())
            .trace(&l.traceparent, &l.tracestate);
            if let Some(w) = &f.pool_worker {
                prep = prep.pool_worker(
                    relay.socket().to_string_lossy(),
                    relay.register(&l.process_id, &w.pool_id),
                    w.maxtasksperchild,
                );
            }
            // An empty program: this agent's own executable (`mpctl`), whose
            // built-in functions run commands for command pools.
            let program = if f.program.is_empty() {
                std::env::current_exe()
                    .map_err(|e| format!("cannot find the agent's own executable: {e}"))?
                    .to_string_lossy()
                    .into_owned()
            } else {
                f.program.clone()
            };
            let mut argv = vec![program];
            argv.extend(f.program_args.iter().cloned());
            let mut env = f.env.clone();
            env.insert(node_env::BOOTSTRAP.into(), descriptors::bootstrap_value());
            Ok(Target {
                argv,
                env,
                cwd: f.cwd.clone(),
                bootstrap: Some(prep.encode().map_err(|e| e.to_string())?),
                forkserver: forkserver.then(|| f.preload.clone()),
            })
        }
        (None, None) => Err("the launch names no command and no function".into()),
    }
}

async fn launch_inner(
    config: &AgentConfig,
    launcher: &Launcher,
    procs_dir: &Path,
    relay: &PoolRelay,
    l: &Launch,
) -> Result<crate::launcher::Launched, String> {
    let target = target(config, relay, l)?;
    let cwd = if target.cwd.is_empty() {
        config.work_dir.clone()
    } else {
        PathBuf::from(&target.cwd)
    };
    if !cwd.is_dir() {
        return Err(format!(
            "working directory {} does not exist on this node",
            cwd.display()
        ));
    }
    // The launcher creates the process's directory and files with its first
    // output (launcher/output.rs).
    let (stdout_path, stderr_path) = logs::output_paths(procs_dir, &l.process_id);
    let spec = LaunchSpec {
        id: l.process_id.clone(),
        argv: target.argv,
        env: with_trace(child_env(config, &l.process_id, &l.name, &target.env), l),
        cwd: Some(cwd),
        stdout_path,
        stderr_path,
        log_limit_bytes: if l.log_limit_bytes == 0 {
            config.default_log_limit
        } else {
            l.log_limit_bytes
        },
        bootstrap: target.bootstrap.map(|prep| Bootstrap {
            prep,
            // One byte over the limit shows a result that was too large.
            result_limit: mpctl_node::MAX_RESULT as u64 + 1,
        }),
        forkserver: target.forkserver,
        memory_limit: l.limits.map_or(0, |x| x.memory_bytes),
        cpu_limit: l.limits.map_or(0, |x| x.cpu_seconds),
        run_as: config.run_as.as_ref().map(|u| mpctl_launcher::RunAs {
            uid: u.uid,
            gid: u.gid,
        }),
    };
    let client = launcher.get().await;
    match client.launch(spec).await {
        Ok(launched) => Ok(launched),
        Err(LaunchError::Failed { error, .. }) => Err(error),
        Err(e @ LaunchError::Launcher(_)) => Err(format!("the node's launcher failed: {e}")),
    }
}
