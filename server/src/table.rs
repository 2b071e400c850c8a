//! The in-memory process table and agent registry, mirrored to the store.
//!
//! Only [`crate::core`] mutates it, under one lock that is never held across
//! an `.await`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use mpctl_proto::v1::{
    AgentInfo, CoordinatorMessage, LogChunk, ProcessInfo, ProcessState, StartRequest,
};
use tokio::sync::mpsc;

use crate::store::{Loaded, Op};

pub struct ProcRecord {
    pub info: ProcessInfo,
    pub request: StartRequest,
}

impl ProcRecord {
    pub fn state(&self) -> ProcessState {
        ProcessState::try_from(self.info.state).unwrap_or(ProcessState::Unspecified)
    }

    pub fn op(&self) -> Op {
        Op::Process(Box::new((self.info.clone(), self.request.clone())))
    }
}

/// The stream to a connected agent.
#[derive(Clone)]
pub struct Session {
    pub generation: u64,
    pub tx: mpsc::UnboundedSender<CoordinatorMessage>,
}

pub struct AgentEntry {
    pub info: AgentInfo,
    pub session: Option<Session>,
    /// Processes placed on this agent and not yet stopped (launching or started).
    pub running: HashSet<String>,
}

/// Output chunks on their way to one `Logs` caller.
pub type LogSender = mpsc::UnboundedSender<Result<LogChunk, tonic::Status>>;
pub type LogReceiver = mpsc::UnboundedReceiver<Result<LogChunk, tonic::Status>>;

/// Where the coordinator forwards a log stream coming back from an agent.
pub struct LogRoute {
    pub node: String,
    pub tx: LogSender,
}

/// A Terminate/Kill waiting for its node to confirm the signal was sent.
pub struct PendingSignal {
    pub node: String,
    pub tx: tokio::sync::oneshot::Sender<Result<bool, String>>,
}

pub struct Table {
    pub procs: HashMap<String, ProcRecord>,
    pub by_request: HashMap<String, String>,
    pub agents: BTreeMap<String, AgentEntry>,
    pub queue: VecDeque<String>,
    pub next_number: u64,
    pub next_generation: u64,
    pub log_routes: HashMap<u64, LogRoute>,
    pub pending_signals: HashMap<u64, PendingSignal>,
    /// How many children each process has started (CPython's `_counter`).
    pub children_started: HashMap<String, u32>,
    /// The daemonic children of each process, so an exit finds the ones to
    /// terminate without scanning the whole table.
    pub daemon_children: HashMap<String, Vec<String>>,
    /// Ids of requests to agents (log reads, signals).
    pub next_request: u64,
    /// Pools with a driver in this coordinator (see `Core::set_pool_live`).
    pub live_pools: HashSet<String>,
}

impl Table {
    /// Records `info` under its parent if it is a daemonic child.
    pub fn index_child(&mut self, info: &ProcessInfo) {
        if info.daemon && !info.parent_id.is_empty() {
            self.daemon_children
                .entry(info.parent_id.clone())
                .or_default()
                .push(info.id.clone());
        }
    }
}

/// Sentinel ready: the process will not change any more by itself.
pub fn is_settled(state: ProcessState) -> bool {
    matches!(
        state,
        ProcessState::Stopped | ProcessState::Failed | ProcessState::Lost
    )
}

/// Occupies a slot on its node.
pub fn is_active(state: ProcessState) -> bool {
    matches!(state, ProcessState::Launching | ProcessState::Started)
}

impl Table {
    pub fn from_loaded(loaded: Loaded) -> Table {
        let mut table = Table {
            procs: HashMap::new(),
            by_request: HashMap::new(),
            agents: BTreeMap::new(),
            queue: VecDeque::new(),
            next_number: loaded.next_number,
            next_generation: 1,
            log_routes: HashMap::new(),
            pending_signals: HashMap::new(),
            children_started: HashMap::new(),
            daemon_children: HashMap::new(),
            next_request: 1,
            live_pools: HashSet::new(),
        };
        for mut info in loaded.agents {
            // Nobody is connected yet; the lease clock restarts with us.
            info.state = mpctl_proto::v1::AgentState::Disconnected as i32;
            table.agents.insert(
                info.name.clone(),
                AgentEntry {
                    info,
                    session: None,
                    running: HashSet::new(),
                },
            );
        }
        let mut queued: Vec<(i64, String)> = Vec::new();
        for (info, request) in loaded.processes {
            let rec = ProcRecord { info, request };
            let id = rec.info.id.clone();
            if !rec.info.parent_id.is_empty() {
                *table
                    .children_started
                    .entry(rec.info.parent_id.clone())
                    .or_default() += 1;
            }
            table.index_child(&rec.info);
            if !rec.info.request_id.is_empty() {
                table
                    .by_request
                    .insert(rec.info.request_id.clone(), id.clone());
            }
            match rec.state() {
                ProcessState::Queued => queued.push((rec.info.created_unix_ms, id.clone())),
                s if is_active(s) => {
                    if let Some(agent) = table.agents.get_mut(&rec.info.node) {
                        agent.running.insert(id.clone());
                    }
                }
                _ => {}
            }
            table.procs.insert(id, rec);
        }
        queued.sort();
        table.queue = queued.into_iter().map(|(_, id)| id).collect();
        table
    }
}
