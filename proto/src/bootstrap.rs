//! The node-local contract between an agent and a function target's child
//! (DESIGN §4): the child finds its preparation data on fd [`PREP_FD`] (JSON,
//! then EOF) and writes its result on fd [`RESULT_FD`]; [`ENV_BOOTSTRAP`] in
//! its environment tells the SDK runtime it was started in bootstrap mode.

use serde::{Deserialize, Serialize};

/// Set to `"3,4"` (the two descriptors) in a function target's environment.
pub const ENV_BOOTSTRAP: &str = "MPCTL_BOOTSTRAP";
pub const PREP_FD: i32 = 3;
pub const RESULT_FD: i32 = 4;
/// Largest result a function target may write (JSON bytes).
pub const MAX_RESULT: usize = 1 << 20;
/// Largest serialized argument of a function target: the preparation data
/// travels through the launcher's 1 MiB frames and a pipe.
pub const MAX_ARGS: usize = 256 << 10;
pub const VERSION: u32 = 1;

/// What a function target's child is told before it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preparation {
    pub version: u32,
    /// Cluster-unique process id.
    pub id: String,
    /// `Process-N` or the name given.
    pub name: String,
    /// The agent it runs on.
    pub node: String,
    /// The managed process that started it, if any.
    #[serde(default)]
    pub parent_id: String,
    /// The registered function to run.
    pub function: String,
    /// Its argument, JSON text.
    pub args: String,
    /// `spawn` or `forkserver`.
    pub start_method: String,
    /// The coordinator, so the child can start processes of its own.
    #[serde(default)]
    pub coordinator: String,
    /// `tls` or `plaintext`.
    #[serde(default)]
    pub security: String,
    /// The cluster's authkey (hex), inherited as in CPython; it only ever
    /// travels in this pipe and is never logged.
    #[serde(default)]
    pub authkey: String,
    /// The node launcher's adoption socket, for the fork start method.
    #[serde(default)]
    pub adopt_socket: String,
    /// Set for a pool worker: the agent's pool socket ([`crate::worker_frame`])
    /// and the key the worker presents on it. `function` and `args` are then
    /// the pool's initializer (possibly empty) and its arguments.
    #[serde(default)]
    pub pool_socket: String,
    #[serde(default)]
    pub pool_key: String,
    /// A pool worker exits after this many tasks (0: never).
    #[serde(default)]
    pub pool_maxtasks: u32,
}

/// Set to the descriptor of the forkserver's socket to its launcher (always
/// [`FORKSERVER_FD`]) when a program is started as a forkserver.
pub const ENV_FORKSERVER: &str = "MPCTL_FORKSERVER";
/// Comma-separated names of the preload hooks a forkserver runs once.
pub const ENV_PRELOAD: &str = "MPCTL_PRELOAD";
pub const FORKSERVER_FD: i32 = 3;
/// Largest message on the forkserver socket (SOCK_SEQPACKET).
pub const MAX_FORKSERVER_MESSAGE: usize = 64 << 10;

/// Launcher → forkserver: one datagram per start, carrying by SCM_RIGHTS the
/// child's stdout and stderr write ends, the preparation pipe's read end and
/// the result pipe's write end, in that order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToForkserver {
    Start {
        id: String,
        /// RLIMIT_AS and RLIMIT_CPU for the child (0: none).
        #[serde(default)]
        memory_bytes: u64,
        #[serde(default)]
        cpu_seconds: u64,
    },
}

/// Forkserver → launcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromForkserver {
    /// Preload hooks done; starts are served from now on.
    Ready {
        pid: i32,
    },
    /// A preload hook is unknown or panicked; the server exits.
    PreloadFailed {
        error: String,
    },
    Started {
        id: String,
        pid: i32,
    },
    StartFailed {
        id: String,
        error: String,
    },
    /// A child it forked has exited (CPython's exit-code rules).
    Exited {
        pid: i32,
        exitcode: i32,
    },
}

/// A managed process → its node's launcher, on the adoption socket
/// (SOCK_SEQPACKET, `Preparation::adopt_socket`): the fork start method.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToAdopt {
    /// "I forked `pid` for process `id`": carries by SCM_RIGHTS the child's
    /// pidfd and the read end of its result pipe, in that order.
    Adopt { id: String, pid: i32 },
    /// The forking parent reaped its child (while it lives, the parent is the
    /// child's real parent; after it dies the launcher, a subreaper, is).
    Exited { pid: i32, exitcode: i32 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromAdopt {
    Adopted,
    Refused { error: String },
}

/// Applies per-process limits as rlimits (0: no limit) to the calling
/// process: used by the launcher between fork and exec, and by forkserver and
/// fork children before they run. setrlimit(2) is async-signal-safe.
pub fn apply_limits(memory_bytes: u64, cpu_seconds: u64) -> nix::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    if memory_bytes > 0 {
        setrlimit(Resource::RLIMIT_AS, memory_bytes, memory_bytes)?;
    }
    if cpu_seconds > 0 {
        // Soft at the limit (SIGXCPU, exit code -24), hard one second later
        // (SIGKILL) for a process that ignores SIGXCPU.
        setrlimit(Resource::RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)?;
    }
    Ok(())
}
