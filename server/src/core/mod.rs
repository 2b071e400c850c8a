//! The coordinator's state machine.
//!
//! - [`model`]: the domain types (`Proc`, `ProcState`, `Agent`, …);
//! - [`table`]: the process table and agent registry, fields private, with
//!   methods that keep its indices;
//! - [`procs`] and [`agents`]: the transitions, plain functions of (table,
//!   input) that change the table and return [`effects::Effects`];
//! - [`placement`]: which agent runs a process;
//! - [`outbox`]: the one way effects leave (store batch, agent messages
//!   after the commit);
//! - [`retention`]: which finished processes go, and when;
//! - [`settle`]: per-process notification for join, wait, start, signal;
//! - [`logs`]: output routing, under its own lock;
//! - [`error`]: what operations refuse, as [`CoreError`];
//! - `ops/`: the async operations the services call, by concern
//!   (processes, agents and leases, logs, pools).
//!
//! [`Core`] is the async shell around them: it takes the table lock, runs a
//! transition, hands its effects to the outbox and wakes the waiters of the
//! processes it changed, all under the lock (so batches keep the order of
//! the changes), then waits, outside the lock, for what the caller needs
//! (durability, a launch's confirmation, a node's answer).
//!
//! Commit before effect: each batch carries the table's record of what it
//! replaced ([`table::Undo`]). Readers (join, wait, get, list) see a
//! process as last committed; its waiters wake when the store reports the
//! commit ([`crate::store::Sink`]). A failed commit rolls back that batch
//! and every later one (the table is as before them), their callers get the
//! store's error, and no message that depended on them leaves; once a
//! commit succeeds again every connected agent is asked to report its
//! processes and unacknowledged exits again (`ResendReports`).

pub mod agents;
pub mod effects;
pub mod error;
pub mod identity;
pub mod logs;
pub mod model;
mod ops;
pub mod outbox;
pub mod placement;
pub mod procs;
pub mod retention;
pub mod settle;
pub mod table;
pub mod trace;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, StreamExt};
use mpctl_proto::v1::{coordinator_message::Msg as ToAgent, CoordinatorMessage};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use effects::{Effects, ToNode};
pub use error::CoreError;
use logs::{Chunk, Delivery, LogReader, LogRoutes, Offsets, Output};
use model::{
    Agent, ExitReport, Method, Proc, ProcState, ProcTrace, Registration, SignalAnswer, StartSpec,
};
use outbox::Outbox;
use procs::SignalPlan;
use settle::Waiters;
use table::{Table, Undo};

use crate::metrics::{AgentLoad, ServerMetrics, Snapshot};
use crate::store::{Op, Pending, Rollback, Sink, Store, WriteFailure};
use crate::validate;

/// Timings of the agent protocol.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// An agent silent this long is lost, and so are its processes.
    pub lease: Duration,
    /// How often agents must send a heartbeat.
    pub heartbeat: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
        }
    }
}

/// How long Start waits for the agent to confirm a launch before returning
/// the process as `LAUNCHING`.
const START_CONFIRM: Duration = Duration::from_secs(30);
/// How long Terminate/Kill wait for the node to confirm the signal.
const SIGNAL_CONFIRM: Duration = Duration::from_secs(10);

/// The wall clock in ms, for displayed times only.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A process or pool id: 8 random bytes in hex.
pub fn new_id() -> String {
    mpctl_transport::random_hex(8)
}

/// What the lock guards: the table and who waits on its processes.
struct State {
    table: Table,
    waiters: Waiters,
    /// The number of the last batch submitted.
    seq: u64,
    /// Batches submitted and not yet committed, oldest first: their number,
    /// what they replaced, and the processes they changed.
    uncommitted: VecDeque<(u64, Vec<Undo>, Vec<String>)>,
    /// Processes with an uncommitted change: the number of its last batch.
    dirty: HashMap<String, u64>,
    /// When each start not yet launched was recorded (for the
    /// start→launched latency); dropped when the process settles.
    start_clock: HashMap<String, Instant>,
}

impl State {
    /// Process `id` as last committed (a change not yet durable is not
    /// shown; a process whose start is not yet durable does not exist).
    fn durable(&self, id: &str) -> Option<&Proc> {
        if !self.dirty.contains_key(id) {
            return self.table.get(id);
        }
        for (_, undo, _) in &self.uncommitted {
            for u in undo {
                if let Undo::Proc { id: uid, prior } = u {
                    if uid == id {
                        return prior.as_ref();
                    }
                }
            }
        }
        self.table.get(id)
    }
}

/// The committed view a waiter's check reads.
pub(crate) struct Durable<'a>(&'a State);

impl Durable<'_> {
    pub fn get(&self, id: &str) -> Option<&Proc> {
        self.0.durable(id)
    }

    /// Whether retention removed `id` and the removal is committed.
    pub fn was_removed(&self, id: &str) -> bool {
        self.0.table.was_removed(id) && self.0.durable(id).is_none()
    }
}

/// A Terminate/Kill waiting for its node to confirm the signal was sent.
struct PendingSignal {
    node: String,
    tx: oneshot::Sender<SignalAnswer>,
}

pub struct Core {
    me: std::sync::Weak<Core>,
    state: Mutex<State>,
    outbox: Outbox,
    store: Store,
    /// For work the store's writer thread starts (it has no runtime).
    runtime: Option<tokio::runtime::Handle>,
    logs: LogRoutes,
    signals: Mutex<HashMap<u64, PendingSignal>>,
    /// Ids of requests to agents (log reads, signals).
    next_request: AtomicU64,
    /// Bumped when the agent registry changes (registered, disconnected, lost).
    agents_changed: watch::Sender<u64>,
    /// Node credentials (docs/design.md §10); see [`identity`].
    identities: Mutex<identity::NodeIdentities>,
    metrics: ServerMetrics,
    pub timings: Timings,
    /// Processes removed by retention since start-up.
    removed_total: AtomicU64,
}

impl Core {
    pub fn new(table: Table, store: Store, timings: Timings) -> Arc<Core> {
        let metrics = ServerMetrics::new(store.commit_seconds());
        let mut table = table;
        table.take_undo();
        let core = Arc::new_cyclic(|me| Core {
            me: me.clone(),
            state: Mutex::new(State {
                table,
                waiters: Waiters::default(),
                seq: 0,
                uncommitted: VecDeque::new(),
                dirty: HashMap::new(),
                start_clock: HashMap::new(),
            }),
            outbox: Outbox::new(store.clone()),
            store: store.clone(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            logs: LogRoutes::default(),
            signals: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            agents_changed: watch::channel(0).0,
            identities: Mutex::new(identity::NodeIdentities::default()),
            metrics,
            timings,
            removed_total: AtomicU64::new(0),
        });
        let sink: Arc<dyn Sink> = core.clone();
        store.attach(Arc::downgrade(&sink));
        core
    }

    /// Why the store cannot commit, while it cannot (for readiness).
    pub fn store_failing(&self) -> Option<WriteFailure> {
        self.store.failing()
    }

    /// The counters kept as things happen.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    /// The table's numbers at this moment, for a scrape and `ListAgents`.
    pub fn snapshot(&self) -> Snapshot {
        let mut st = self.lock();
        let t = &mut st.table;
        let oldest_queued = t.oldest_queued().map(|p| {
            Duration::from_millis(u64::try_from(now_ms() - p.created_unix_ms).unwrap_or(0))
        });
        let agents = t
            .agents()
            .values()
            .map(|a| AgentLoad {
                name: a.name.clone(),
                state: a.state,
                slots: a.slots,
                used: a.used(),
                running: t.started_on(&a.name),
            })
            .collect();
        Snapshot {
            counts: t.counts(),
            oldest_queued,
            agents,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the table is still the best
        // state we have, so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn signals(&self) -> MutexGuard<'_, HashMap<u64, PendingSignal>> {
        self.signals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Carries out a transition's effects, under the lock that made them:
    /// the batch takes the table's record of what it replaced; the
    /// processes it changed wake their waiters once it is committed.
    fn apply(&self, st: &mut State, fx: Effects) -> Pending {
        if !st.start_clock.is_empty() {
            for p in fx.procs() {
                // Launched: confirmed, or proven by an exit that overtook
                // the confirmation (the node reports both on one stream,
                // from two tasks). A queued process stopped by a signal
                // never ran (no pid).
                let ran =
                    p.state == ProcState::Started || (p.state == ProcState::Stopped && p.pid != 0);
                if ran || p.state.is_settled() {
                    if let Some(t0) = st.start_clock.remove(&p.id) {
                        if ran {
                            self.metrics.launched_after(t0.elapsed());
                        }
                    }
                }
            }
        }
        // Settled processes end their spans (once: the table's copy drops it).
        for p in fx.procs() {
            if p.state.is_settled() && p.trace.is_live() {
                st.table.update(&p.id, |t| t.trace.end(p));
            }
        }
        if fx.agents_changed {
            self.agents_changed.send_modify(|g| *g = g.wrapping_add(1));
        }
        st.seq += 1;
        let seq = st.seq;
        let undo = st.table.take_undo();
        let mut touched = fx.touched.clone();
        touched.extend(undo.iter().filter_map(Undo::proc_id).map(str::to_owned));
        touched.sort_unstable();
        touched.dedup();
        for id in &touched {
            st.dirty.insert(id.clone(), seq);
        }
        st.uncommitted.push_back((seq, undo, touched));
        self.outbox.submit(seq, fx)
    }

    async fn durable(pending: Pending) -> Result<(), CoreError> {
        Ok(pending.durable().await?)
    }

    fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Waits until `check` returns something, or the deadline passes; wakes
    /// only when one of `ids` changes.
    async fn wait_until<T>(
        &self,
        ids: &[String],
        deadline: Option<Instant>,
        mut check: impl FnMut(&Durable) -> Option<T>,
    ) -> Option<T> {
        let found = loop {
            let mut rxs: Vec<watch::Receiver<()>> = {
                let mut st = self.lock();
                if let Some(v) = check(&Durable(&st)) {
                    break Some(v);
                }
                if ids.iter().any(|id| st.dirty.contains_key(id)) {
                    // Someone waits for it: do not hold it for a group commit.
                    self.store.flush();
                }
                ids.iter().map(|id| st.waiters.subscribe(id)).collect()
            };
            let mut any: FuturesUnordered<_> = rxs.iter_mut().map(|rx| rx.changed()).collect();
            let woken = match deadline {
                Some(d) => tokio::time::timeout_at(d, any.next()).await.is_ok(),
                None => {
                    any.next().await;
                    true
                }
            };
            if !woken {
                break None;
            }
        };
        self.lock().waiters.prune(ids.iter().map(String::as_str));
        found
    }
}

impl Sink for Core {
    fn committed(&self, seq: u64) {
        let mut st = self.lock();
        while st.uncommitted.front().is_some_and(|(s, ..)| *s <= seq) {
            let (s, _, touched) = st.uncommitted.pop_front().expect("checked");
            for id in touched {
                if st.dirty.get(&id).is_some_and(|d| *d <= s) {
                    st.dirty.remove(&id);
                }
                st.waiters.wake(&id);
            }
        }
    }

    fn failed(&self, first: u64, why: &WriteFailure) -> Rollback {
        let mut st = self.lock();
        let mut undo = Vec::new();
        let mut woken = Vec::new();
        while st.uncommitted.back().is_some_and(|(s, ..)| *s >= first) {
            let (_, u, touched) = st.uncommitted.pop_back().expect("checked");
            // Newest first: prepend, so `revert` (which goes backwards) undoes
            // the newest batch first.
            undo.splice(0..0, u);
            woken.extend(touched);
        }
        let mut procs: Vec<String> = Vec::new();
        let mut agents: Vec<String> = Vec::new();
        let mut number = false;
        for u in &undo {
            match u {
                Undo::Proc { id, .. } => procs.push(id.clone()),
                Undo::Agent { name, .. } => agents.push(name.clone()),
                Undo::NextNumber(_) => number = true,
                Undo::ChildCount { .. } | Undo::Removed(_) => {}
            }
        }
        let batches = woken.len();
        st.table.revert(undo);
        procs.sort_unstable();
        procs.dedup();
        agents.sort_unstable();
        agents.dedup();
        let mut repair = Vec::new();
        for id in &procs {
            repair.push(match st.table.get(id) {
                Some(p) => Op::Process(Box::new((
                    crate::wire::process_info(p),
                    crate::wire::start_row(p),
                ))),
                None => Op::DeleteProcess(id.clone()),
            });
        }
        for name in &agents {
            repair.push(match st.table.agent(name) {
                Some(a) => Op::Agent(Box::new(crate::wire::agent_info(a))),
                None => Op::DeleteAgent(name.clone()),
            });
        }
        if number {
            repair.push(Op::NextNumber(st.table.next_number()));
        }
        for id in woken {
            st.dirty.remove(&id);
            st.waiters.wake(&id);
        }
        // A rolled-back registration's outbox session, and agent changes.
        for name in &agents {
            if st.table.session(name).is_none() {
                self.outbox.close_any(name);
            }
        }
        if !agents.is_empty() {
            self.agents_changed.send_modify(|g| *g = g.wrapping_add(1));
        }
        tracing::warn!(cause = %why, first_batch = first, through = st.seq, processes = procs.len(), touched = batches,
            "rolled back the changes whose commit failed");
        Rollback {
            through: st.seq,
            repair,
        }
    }

    fn recovered(&self) {
        let (connected, waiting): (Vec<String>, Vec<String>) = {
            let st = self.lock();
            let connected = st
                .table
                .agents()
                .values()
                .filter(|a| a.session.is_some())
                .map(|a| a.name.clone())
                .collect();
            let waiting = st
                .table
                .agents()
                .values()
                .filter(|a| a.session.is_none() && a.state != model::AgentState::Lost)
                .map(|a| a.name.clone())
                .collect();
            (connected, waiting)
        };
        tracing::info!(
            agents = connected.len(),
            "the store commits again: asking every connected agent to report again what was rolled back"
        );
        for name in connected {
            self.outbox.send_now(&name, ToNode::ResendReports);
        }
        // A lease expiry that was rolled back is checked again.
        if let (Some(rt), Some(core)) = (&self.runtime, self.me.upgrade()) {
            rt.spawn(async move {
                for name in waiting {
                    core.recheck_lease(name);
                }
            });
        }
    }
}

/// An agent's report is in the table (and joiners are awake); its row
/// reaches the disk in the writer's next group commit. The agent's session
/// does not wait for that disk write before its next message: what must
/// follow durability (an `AckExit`) is sent by the writer after the commit.
/// Nobody waits for this batch: the writer may group it with later ones.
fn in_background(pending: Pending) {
    tokio::spawn(async move {
        // A failed write is logged by `committed`.
        let _ = pending.committed().await;
    });
}
