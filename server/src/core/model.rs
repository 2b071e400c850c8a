//! The coordinator's domain: processes, agents and what they report, as
//! plain Rust types. The gRPC services and the store convert to and from
//! the protobuf messages at the edge ([`crate::wire`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use mpctl_proto::v1::{CommandTarget, FunctionTarget, Limits};

pub use super::trace::ProcTrace;
use tokio::time::Instant;

/// A process's life (docs/design.md §4): `Queued` → `Launching` → `Started` →
/// `Stopped`, or `Failed` when it could not start, or `Lost` with its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProcState {
    /// Accepted, waiting for a free slot on a matching agent.
    Queued,
    /// Sent to an agent, launch not yet confirmed.
    Launching,
    /// Running: pid known, no exit code yet.
    Started,
    /// Exit code known.
    Stopped,
    /// The target could not be started; `start_error` says why.
    Failed,
    /// Its node went silent past its lease; it may come back.
    Lost,
}

impl ProcState {
    /// Sentinel ready: the process will not change any more by itself.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            ProcState::Stopped | ProcState::Failed | ProcState::Lost
        )
    }

    /// Occupies a slot on its node.
    pub fn is_active(self) -> bool {
        matches!(self, ProcState::Launching | ProcState::Started)
    }

    /// Nothing, not even a returning node, changes it again.
    pub fn is_final(self) -> bool {
        matches!(self, ProcState::Stopped | ProcState::Failed)
    }
}

/// CPython's start methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Method {
    #[default]
    Spawn,
    Forkserver,
    /// The caller (a managed process) forks itself; the node adopts the child.
    Fork,
}

/// Where a process may run: a node by name and labels it must carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub node: String,
    pub labels: BTreeMap<String, String>,
}

/// What the node needs to launch a process and the coordinator never
/// interprets: the target as the client sent it (bounded at the edge by
/// [`crate::validate`]), forwarded in `Launch`. Shared, so copies of a
/// process are cheap.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LaunchSpec {
    pub command: Option<CommandTarget>,
    pub function: Option<FunctionTarget>,
    pub log_limit_bytes: u64,
    pub limits: Option<Limits>,
}

/// A start as the coordinator sees it.
#[derive(Clone, Debug, Default)]
pub struct StartSpec {
    /// The client's idempotency key: a retried start is the same process.
    pub request_id: String,
    /// Empty: CPython's `Process-N:M` from the identity.
    pub name: String,
    pub placement: Placement,
    pub daemon: bool,
    pub parent_id: String,
    /// The parent's number for this child, given when it made the Process
    /// object (CPython's `_identity`); 0: counted here at start.
    pub child_number: u32,
    pub method: Method,
    pub launch: LaunchSpec,
    /// The process span, made by `Core` when the start is new.
    pub trace: ProcTrace,
}

impl StartSpec {
    /// The pool a worker start belongs to (empty for other starts).
    pub fn pool_id(&self) -> &str {
        self.launch
            .function
            .as_ref()
            .and_then(|f| f.pool_worker.as_ref())
            .map_or("", |w| w.pool_id.as_str())
    }
}

/// One managed process.
#[derive(Clone, Debug, PartialEq)]
pub struct Proc {
    pub id: String,
    pub name: String,
    /// CPython's `_identity`: `[N]` for a top-level process, the parent's
    /// plus its child count for a child.
    pub identity: Vec<u32>,
    pub state: ProcState,
    pub daemon: bool,
    pub parent_id: String,
    pub node: String,
    pub pid: i32,
    pub exitcode: Option<i32>,
    pub start_error: String,
    /// The program and its arguments (for a function target: the program
    /// that registers the function).
    pub argv: Vec<String>,
    pub cwd: String,
    /// A function target's registered name.
    pub function: String,
    pub pool_id: String,
    pub request_id: String,
    pub method: Method,
    /// A function target's result (JSON), once stopped.
    pub result: Option<Vec<u8>>,
    /// Wall-clock times, for display only.
    pub created_unix_ms: i64,
    pub started_unix_ms: i64,
    pub stopped_unix_ms: i64,
    /// The name the client asked for (empty: the generated one).
    pub requested_name: String,
    pub placement: Placement,
    pub launch: Arc<LaunchSpec>,
    /// Its span (issue 14): W3C context, and the live span until it settles.
    pub trace: ProcTrace,
}

/// An agent's state in the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentState {
    Ready,
    /// Stream closed, lease not yet expired.
    Disconnected,
    /// Silent past its lease.
    Lost,
}

/// One node agent.
#[derive(Clone, Debug)]
pub struct Agent {
    pub name: String,
    pub state: AgentState,
    pub slots: u32,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub hostname: String,
    /// Wall clock of the last message, for display only.
    pub last_seen_unix_ms: i64,
    /// Monotonic time of the last message: the lease runs on this, so a
    /// wall-clock step cannot make a healthy node lost.
    pub last_seen: Instant,
    /// The generation of its open session, if connected.
    pub session: Option<u64>,
    /// Processes placed on it and not yet stopped (launching or started);
    /// kept by [`crate::core::table::Table`].
    pub(crate) running: HashSet<String>,
}

impl Agent {
    /// Slots in use.
    pub fn used(&self) -> u32 {
        self.running.len() as u32
    }
}

/// A node's report of an exit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExitReport {
    pub process_id: String,
    /// 0: unknown (keep the launch's pid).
    pub pid: i32,
    pub exitcode: i32,
    /// 0: unknown (the coordinator's clock is used).
    pub at_unix_ms: i64,
    pub result: Option<Vec<u8>>,
}

/// What an agent says when it (re)connects.
#[derive(Clone, Debug, Default)]
pub struct Registration {
    pub name: String,
    pub slots: u32,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub hostname: String,
    /// `(process id, pid)` of what its launcher runs.
    pub running: Vec<(String, i32)>,
    /// Exits it has not had acknowledged.
    pub exited: Vec<ExitReport>,
}

/// A node's answer to a Signal.
#[derive(Clone, Debug)]
pub struct SignalAnswer {
    pub request_id: u64,
    pub delivered: bool,
    /// Empty: the signal was sent.
    pub error: String,
}
