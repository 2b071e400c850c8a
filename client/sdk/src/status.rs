//! The SDK's own view of processes, agents and output: what
//! [`crate::Process::info`], [`crate::Cluster::get`], `list` and `agents`
//! hand out. Plain Rust types with typed fields; the protobuf messages they
//! come from are converted at the SDK's edge (`wire.rs`) and never
//! reach a caller.
//!
//! Identifiers (`node`, `parent_id`, `pool_id`, ...) are strings, empty when
//! there is none (a queued process has no node yet); what becomes known at
//! an event (pid, exit code, start error, times, result) is an `Option`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

/// Where a process is in its life: CPython's initial / started / stopped,
/// plus the cluster's own states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProcessState {
    /// Accepted, waiting for a free slot on a matching agent.
    Queued,
    /// Sent to an agent; the launch is not yet confirmed.
    Launching,
    /// Running: its pid is known, its exit code not yet (CPython "started").
    Started,
    /// Its exit code is known (CPython "stopped").
    Stopped,
    /// The command could not be executed; `start_error` says why. No exit code.
    Failed,
    /// Its node is past its lease; the real exit code replaces this if the
    /// node comes back.
    Lost,
}

impl ProcessState {
    /// Final for a sentinel: stopped, failed to start, or lost with its node.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            ProcessState::Stopped | ProcessState::Failed | ProcessState::Lost
        )
    }

    /// The lower-case name the CLI prints (`queued`, `started`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Queued => "queued",
            ProcessState::Launching => "launching",
            ProcessState::Started => "started",
            ProcessState::Stopped => "stopped",
            ProcessState::Failed => "failed",
            ProcessState::Lost => "lost",
        }
    }
}

impl fmt::Display for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a node starts a process (CPython's start methods).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StartMethod {
    /// The program runs afresh; the child sees only what it is given.
    #[default]
    Spawn,
    /// A per-(program, preload) server on the node forks each child.
    Forkserver,
    /// The calling managed process forks itself on its own node.
    Fork,
}

impl StartMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Spawn => "spawn",
            StartMethod::Forkserver => "forkserver",
            StartMethod::Fork => "fork",
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which output of a process to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
    Both,
}

/// A piece of a process's output, from `stream` (stdout or stderr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogChunk {
    pub stream: LogStream,
    pub data: Vec<u8>,
}

/// The rlimits a process runs under; 0 is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_AS, in bytes.
    pub memory_bytes: u64,
    /// RLIMIT_CPU, in seconds.
    pub cpu_seconds: u64,
}

/// A process as the coordinator last reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Cluster-unique id (16 hex digits).
    pub id: String,
    /// The name given, or `Process-N1:N2:...` assigned at start.
    pub name: String,
    /// The agent it was placed on; empty while queued.
    pub node: String,
    /// Its pid on its node, once launched.
    pub pid: Option<i32>,
    pub state: ProcessState,
    /// CPython's rules: n for `exit(n)`, −N for signal N. Set only when
    /// stopped.
    pub exitcode: Option<i32>,
    /// Why it could not be started (state `Failed`), with the node's OS reason.
    pub start_error: Option<String>,
    pub daemon: bool,
    /// The managed process that started it; empty when started from outside.
    pub parent_id: String,
    /// The command (for a function target, the program it runs). In a
    /// listing (`list`, `wait`) a bounded prefix: see `argv_omitted_bytes`.
    pub argv: Vec<String>,
    /// How many bytes of argv a listing row left out (0: whole; `get` and
    /// `join` always carry the whole).
    pub argv_omitted_bytes: u64,
    /// Working directory on the node; empty: the agent's.
    pub cwd: String,
    pub start_method: StartMethod,
    /// For a function target: the function's registered name; else empty.
    pub function: String,
    /// For a function target that returned: its JSON result. Only `get` and
    /// `join` carry it (`list` leaves it out).
    pub result: Option<Vec<u8>>,
    /// CPython's `_identity`: `[N]` for the N-th process started from outside
    /// the cluster, the parent's identity plus `[k]` for its k-th child.
    pub identity: Vec<u32>,
    pub limits: Option<Limits>,
    /// For a pool's workers: the pool's id; else empty.
    pub pool_id: String,
    /// The trace id of the process's span (32 hex digits), when the
    /// coordinator exports traces; else empty.
    pub trace_id: String,
    /// The process span's id (16 hex digits), or empty.
    pub span_id: String,
    /// The idempotency key it was started with.
    pub request_id: String,
    pub created: Option<SystemTime>,
    pub started: Option<SystemTime>,
    pub stopped: Option<SystemTime>,
}

/// How an agent stands with the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AgentState {
    Ready,
    /// Its stream closed; its lease has not yet expired.
    Disconnected,
    /// Silent past its lease.
    Lost,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Ready => "ready",
            AgentState::Disconnected => "disconnected",
            AgentState::Lost => "lost",
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node agent as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    pub name: String,
    pub state: AgentState,
    /// Processes it may run at once, and how many it holds (launching or
    /// started).
    pub slots: u32,
    pub used: u32,
    /// Of those, how many are started (the coordinator's
    /// `mpctl_agent_processes_running`).
    pub running: u32,
    pub labels: BTreeMap<String, String>,
    /// The agent's mpctl version.
    pub version: String,
    pub hostname: String,
    pub last_seen: Option<SystemTime>,
    /// Why the node is degraded (its exit journal has damaged records,
    /// whose exits are not believed); `None`: it is not.
    pub degraded: Option<String>,
}
