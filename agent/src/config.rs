//! What an agent needs to run.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

pub use mpctl_node::peer::PeerPolicy;
use mpctl_transport::{AuthKey, Security};

pub struct AgentConfig {
    /// Coordinator address, `host:port`.
    pub server: String,
    pub authkey: AuthKey,
    pub security: Security,
    /// Cluster-unique agent name (default: the hostname).
    pub name: String,
    /// Launcher state, exit journal and process output live here.
    pub data_dir: PathBuf,
    /// How many processes may run at once (default: the node's cores).
    pub slots: u32,
    pub labels: HashMap<String, String>,
    /// Program and leading arguments that run the launcher; `--dir DIR` is
    /// appended. The `mpctl` binary serves it as `mpctl launcher`.
    pub launcher_cmd: Vec<OsString>,
    /// Cap for each of stdout and stderr of a process when the start gives none.
    pub default_log_limit: u64,
    /// Working directory of processes whose start gives none.
    pub work_dir: PathBuf,
    /// The uids that may connect to `pool.sock` (default
    /// [`PeerPolicy::own_uid`]; add the uids jobs run as).
    pub peers: PeerPolicy,
    /// `--run-as USER`: every job (and forkserver) runs as this user, so
    /// the authkey file and the node credential (0600, the agent's user)
    /// are unreadable to it. `None`: jobs run as the agent's user.
    pub run_as: Option<RunAsUser>,
}

/// A user jobs run as, resolved from the user database at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunAsUser {
    /// Looks `name` up (a user name, or a numeric uid). Switching to it is
    /// the launcher's (which may run in another container): it needs root
    /// or CAP_SETUID + CAP_SETGID, else each launch fails saying so.
    pub fn resolve(name: &str) -> Result<RunAsUser, String> {
        let user = match name.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(name),
        }
        .map_err(|e| format!("--run-as {name}: cannot read the user database: {e}"))?
        .ok_or_else(|| {
            format!(
                "--run-as {name}: no such user on this node (add it to /etc/passwd, or give a uid)"
            )
        })?;
        Ok(RunAsUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

pub const DEFAULT_LOG_LIMIT: u64 = 64 << 20;

/// The node's defaults: hostname and core count.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub fn default_slots() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}
