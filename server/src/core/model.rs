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

    /// Every state, in the order of [`ProcState::index`].
    pub const ALL: [ProcState; 6] = [
        ProcState::Queued,
        ProcState::Launching,
        ProcState::Started,
        ProcState::Stopped,
        ProcState::Failed,
        ProcState::Lost,
    ];

    /// Its place in [`ProcState::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its name as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            ProcState::Queued => "queued",
            ProcState::Launching => "launching",
            ProcState::Started => "started",
            ProcState::Stopped => "stopped",
            ProcState::Failed => "failed",
            ProcState::Lost => "lost",
        }
    }
}

/// How a process settled, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0.
    ExitOk,
    /// A positive exit code.
    ExitError,
    /// Killed by a signal (CPython's negative exit code).
    Signal,
    /// It could not be started.
    StartError,
    /// Its node was lost (it may still come back and settle again).
    Lost,
}

impl Outcome {
    /// Every outcome, in the order of [`Outcome::index`].
    pub const ALL: [Outcome; 5] = [
        Outcome::ExitOk,
        Outcome::ExitError,
        Outcome::Signal,
        Outcome::StartError,
        Outcome::Lost,
    ];

    /// How `p` settled, if it has.
    pub fn of(p: &Proc) -> Option<Outcome> {
        match (p.state, p.exitcode) {
            (ProcState::Stopped, Some(0)) => Some(Outcome::ExitOk),
            (ProcState::Stopped, Some(c)) if c > 0 => Some(Outcome::ExitError),
            (ProcState::Stopped, _) => Some(Outcome::Signal),
            (ProcState::Failed, _) => Some(Outcome::StartError),
            (ProcState::Lost, _) => Some(Outcome::Lost),
            _ => None,
        }
    }

    /// Its place in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its name as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::ExitOk => "exit_ok",
            Outcome::ExitError => "exit_error",
            Outcome::Signal => "signal",
            Outcome::StartError => "start_error",
            Outcome::Lost => "lost",
        }
    }
}

/// Counts the table keeps as it changes (under its lock, so keeping them
/// costs an add): processes in each state now, and every start and
/// settlement since this coordinator started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// By [`ProcState::index`], restored processes included.
    pub by_state: [u64; 6],
    /// New processes recorded (a retried request id is not one).
    pub starts: u64,
    /// Settlements by [`Outcome::index`]; a lost process that comes back
    /// and exits is counted again at its exit.
    pub outcomes: [u64; 5],
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
    /// Damaged records in its exit journal, as it last reported them: the
    /// node is degraded while there are any.
    pub journal_damage: Option<JournalDamage>,
    /// Processes placed on it and not yet stopped (launching or started);
    /// kept by [`crate::core::table::Table`].
    pub(crate) running: HashSet<String>,
}

/// Damaged records in a node's exit journal (their exits are not believed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalDamage {
    pub count: u32,
    pub first_offset: u64,
    /// What is wrong with the first damaged record.
    pub first: String,
    /// The damaged journal as the node keeps it.
    pub kept_file: String,
    /// Process ids the records seem to name (hints only).
    pub suspect_ids: Vec<String>,
}

impl JournalDamage {
    /// Why the node is degraded, for `mpctl agents`.
    pub fn reason(&self) -> String {
        let records = if self.count == 1 { "record" } else { "records" };
        let mut s = format!(
            "exit journal damaged: {} {records}, the first at byte {} of {}: {}; exits in it are not believed (their processes end lost)",
            self.count, self.first_offset, self.kept_file, self.first
        );
        if !self.suspect_ids.is_empty() {
            s.push_str(&format!(
                "; it seems to name {}",
                self.suspect_ids.join(", ")
            ));
        }
        s.push_str("; remove the kept file and restart the agent once dealt with");
        s
    }
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
    /// Damage in its exit journal (`None`: none).
    pub journal_damage: Option<JournalDamage>,
}

/// A node's answer to a Signal.
#[derive(Clone, Debug)]
pub struct SignalAnswer {
    pub request_id: u64,
    pub delivered: bool,
    /// Empty: the signal was sent.
    pub error: String,
}
