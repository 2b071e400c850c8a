//! `mpctl-embedded`: the embedded cluster, a coordinator and one agent
//! (`local`) inside this process, used when no cluster is configured, so
//! `mpctl run -- echo hi` and `Cluster::from_env()` work on a fresh machine.
//!
//! Its own crate so that only what embeds a cluster compiles the coordinator
//! (and its SQLite) and the agent: the SDK pulls it in with its default
//! feature `embedded`, the CLI always. It depends on neither of them; the
//! node launcher it needs is the `mpctl` binary ([`launcher_command`]).
//!
//! State lives in one data directory and outlives the process: processes
//! started by `mpctl submit` keep running under the node's launcher, and the
//! next command's embedded coordinator finds them (and their exits) again.
//! One command at a time uses a data directory (a lock file guards it); for
//! several at once, run `mpctl dev`.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mpctl_agent::AgentConfig;
use mpctl_server::{Coordinator, CoordinatorConfig, Timings};
use mpctl_transport::{AuthKey, Security};
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Why the embedded cluster could not start; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EmbeddedError(pub String);

type Result<T, E = EmbeddedError> = std::result::Result<T, E>;

/// The embedded parts talk over loopback with the full handshake; the key is
/// made fresh for each command and never leaves this process.
pub const SECURITY: Security = Security::Tls;
pub const AGENT_NAME: &str = "local";

pub struct Embedded {
    coordinator: Coordinator,
    agent: JoinHandle<Result<(), mpctl_agent::AgentError>>,
    stop_agent: oneshot::Sender<()>,
    _lock: Flock<File>,
}

/// The program that serves `launcher --dir DIR`: `MPCTL_LAUNCHER`, else this
/// program if it is `mpctl`, else an `mpctl` next to it (or one directory up,
/// for test binaries in `target/*/deps`), else `mpctl` on PATH.
pub fn launcher_command() -> Result<Vec<std::ffi::OsString>> {
    if let Some(p) = std::env::var_os("MPCTL_LAUNCHER").filter(|p| !p.is_empty()) {
        return Ok(vec![p, "launcher".into()]);
    }
    let exe = std::env::current_exe()
        .map_err(|e| EmbeddedError(format!("cannot find this program's path: {e}")))?;
    let mut candidates: Vec<PathBuf> = Vec::new();
    if exe.file_name().is_some_and(|n| n == "mpctl") {
        candidates.push(exe.clone());
    }
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("mpctl"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("mpctl"));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("mpctl")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .map(|p| vec![p.into_os_string(), "launcher".into()])
        .ok_or_else(|| {
            EmbeddedError(
                "cannot find the `mpctl` program to run the node launcher; put it on PATH or set MPCTL_LAUNCHER".into(),
            )
        })
}

fn lock(data_dir: &Path) -> Result<Flock<File>> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| EmbeddedError(format!("cannot create {}: {e}", data_dir.display())))?;
    let path = data_dir.join("embedded.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| EmbeddedError(format!("cannot open {}: {e}", path.display())))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let _ = lock.set_len(0);
            let _ = writeln!(*lock, "{}", std::process::id());
            Ok(lock)
        }
        Err((_, _)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            Err(EmbeddedError(format!(
                "the embedded cluster in {} is in use by another mpctl command (pid {}); embedded commands run one at a time. To use several at once, start `mpctl dev` in another terminal",
                data_dir.display(),
                holder.trim()
            )))
        }
    }
}

impl Embedded {
    /// Starts the coordinator and the agent and waits for the agent to register.
    pub async fn start(data_dir: &Path) -> Result<(Embedded, SocketAddr, AuthKey)> {
        let lock = lock(data_dir)?;
        let key_bytes = {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).map_err(|e| EmbeddedError(format!("no OS randomness: {e}")))?;
            b
        };
        let coordinator = Coordinator::start(CoordinatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.join("coordinator"),
            authkey: AuthKey::from_bytes(key_bytes),
            security: SECURITY,
            timings: Timings::default(),
            retention: mpctl_server::Retention::default(),
        })
        .await
        .map_err(|e| EmbeddedError(e.to_string()))?;
        let addr = coordinator.local_addr();
        let config = AgentConfig {
            server: addr.to_string(),
            authkey: AuthKey::from_bytes(key_bytes),
            security: SECURITY,
            name: AGENT_NAME.into(),
            data_dir: data_dir.join("agent"),
            slots: mpctl_agent::config::default_slots(),
            labels: Default::default(),
            launcher_cmd: launcher_command()?,
            default_log_limit: mpctl_agent::config::DEFAULT_LOG_LIMIT,
            work_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            peers: mpctl_agent::config::PeerPolicy::own_uid(),
            run_as: None,
        };
        let (stop_agent, stopped) = oneshot::channel::<()>();
        let agent = tokio::spawn(mpctl_agent::run(config, async {
            let _ = stopped.await;
        }));
        if !coordinator
            .wait_for_agent(AGENT_NAME, Duration::from_secs(10))
            .await
        {
            let why = if agent.is_finished() {
                match agent.await {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the agent stopped".into(),
                }
            } else {
                "the agent did not register within 10 s".into()
            };
            let _ = coordinator.shutdown().await;
            return Err(EmbeddedError(why));
        }
        Ok((
            Embedded {
                coordinator,
                agent,
                stop_agent,
                _lock: lock,
            },
            addr,
            AuthKey::from_bytes(key_bytes),
        ))
    }

    /// Stops the agent, then the coordinator.
    pub async fn stop(self) {
        let _ = self.stop_agent.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.agent).await;
        let _ = self.coordinator.shutdown().await;
    }
}
