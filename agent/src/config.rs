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
