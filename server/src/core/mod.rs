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
//! - [`settle`]: per-process notification for join, wait, start, signal;
//! - [`logs`]: output routing, under its own lock;
//! - [`error`]: what operations refuse, as [`CoreError`].
//!
//! [`Core`] is the async shell around them: it takes the table lock, runs a
//! transition, hands its effects to the outbox and wakes the waiters of the
//! processes it changed, all under the lock (so batches keep the order of
//! the changes), then waits, outside the lock, for what the caller needs
//! (durability, a launch's confirmation, a node's answer).

pub mod agents;
pub mod effects;
pub mod error;
pub mod logs;
pub mod model;
pub mod outbox;
pub mod placement;
pub mod procs;
pub mod settle;
pub mod table;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, StreamExt};
use mpctl_proto::v1::{coordinator_message::Msg as ToAgent, CoordinatorMessage};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use effects::Effects;
pub use error::CoreError;
use logs::{Chunk, Delivery, LogReader, LogRoutes, Output};
use model::{Agent, ExitReport, Method, Proc, ProcState, Registration, SignalAnswer, StartSpec};
use outbox::Outbox;
use procs::SignalPlan;
use settle::Waiters;
use table::Table;

use crate::store::{Pending, Store};
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
}

/// A Terminate/Kill waiting for its node to confirm the signal was sent.
struct PendingSignal {
    node: String,
    tx: oneshot::Sender<SignalAnswer>,
}

pub struct Core {
    state: Mutex<State>,
    outbox: Outbox,
    logs: LogRoutes,
    signals: Mutex<HashMap<u64, PendingSignal>>,
    /// Ids of requests to agents (log reads, signals).
    next_request: AtomicU64,
    /// Bumped when the agent registry changes (registered, disconnected, lost).
    agents_changed: watch::Sender<u64>,
    pub timings: Timings,
}

impl Core {
    pub fn new(table: Table, store: Store, timings: Timings) -> Arc<Core> {
        Arc::new(Core {
            state: Mutex::new(State {
                table,
                waiters: Waiters::default(),
            }),
            outbox: Outbox::new(store),
            logs: LogRoutes::default(),
            signals: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            agents_changed: watch::channel(0).0,
            timings,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the table is still the best
        // state we have, so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn signals(&self) -> MutexGuard<'_, HashMap<u64, PendingSignal>> {
        self.signals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Carries out a transition's effects, under the lock that made them.
    fn apply(&self, st: &mut State, fx: Effects) -> Pending {
        for id in &fx.touched {
            st.waiters.wake(id);
        }
        if fx.agents_changed {
            self.agents_changed.send_modify(|g| *g = g.wrapping_add(1));
        }
        self.outbox.submit(fx)
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
        mut check: impl FnMut(&Table) -> Option<T>,
    ) -> Option<T> {
        let found = loop {
            let mut rxs: Vec<watch::Receiver<()>> = {
                let mut st = self.lock();
                if let Some(v) = check(&st.table) {
                    break Some(v);
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

    // ----- processes (ProcessManager) -------------------------------------

    /// A client's start (not a pool worker: those come from the pool driver).
    pub async fn start(&self, spec: StartSpec) -> Result<Proc, CoreError> {
        if !spec.pool_id().is_empty() {
            return Err(CoreError::PoolWorkerStart);
        }
        self.start_checked(spec).await
    }

    /// Starts one worker of a pool (see [`crate::pool`]).
    pub async fn start_pool_worker(&self, spec: StartSpec) -> Result<Proc, CoreError> {
        self.start_checked(spec).await
    }

    async fn start_checked(&self, spec: StartSpec) -> Result<Proc, CoreError> {
        let fork = spec.method == Method::Fork;
        let (id, pending) = {
            let mut st = self.lock();
            let started = procs::start(&mut st.table, spec, new_id, now_ms())?;
            let pending = self.apply(&mut st, started.effects);
            (started.id, pending)
        };
        Self::durable(pending).await?;
        let fork = fork || self.get(&id)?.method == Method::Fork;
        if fork {
            // The caller forks now; the node's Launched arrives with the adoption.
            return self.get(&id);
        }
        self.start_outcome(&id).await
    }

    /// The answer to a Start: once the launch is confirmed or refused.
    async fn start_outcome(&self, id: &str) -> Result<Proc, CoreError> {
        let deadline = Instant::now() + START_CONFIRM;
        let ids = [id.to_owned()];
        let found = self
            .wait_until(&ids, Some(deadline), |t| {
                let p = t.get(id)?;
                (p.state != ProcState::Launching).then(|| p.clone())
            })
            .await;
        let p = match found {
            Some(p) => p,
            None => self.get(id)?,
        };
        if p.state == ProcState::Failed {
            return Err(CoreError::StartFailed(p.start_error));
        }
        Ok(p)
    }

    pub fn get(&self, id: &str) -> Result<Proc, CoreError> {
        self.lock()
            .table
            .get(id)
            .cloned()
            .ok_or_else(|| CoreError::UnknownProcess(id.to_owned()))
    }

    /// The processes (all, or not stopped/failed), optionally of one node,
    /// oldest first, without their results.
    pub fn list(&self, all: bool, node: &str) -> Vec<Proc> {
        let st = self.lock();
        let mut out: Vec<Proc> = st
            .table
            .procs()
            .filter(|p| all || !p.state.is_final())
            .filter(|p| node.is_empty() || p.node == node)
            .map(|p| Proc {
                result: None,
                ..p.clone()
            })
            .collect();
        drop(st);
        out.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        out
    }

    /// Like `Process.join(timeout)`: the process once settled, and whether
    /// the timeout passed first.
    pub async fn join(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<(Proc, bool), CoreError> {
        self.get(id)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let ids = [id.to_owned()];
        let settled = self
            .wait_until(&ids, deadline, |t| {
                let p = t.get(id)?;
                p.state.is_settled().then(|| p.clone())
            })
            .await;
        match settled {
            Some(p) => Ok((p, false)),
            None => Ok((self.get(id)?, true)),
        }
    }

    /// Sentinel wait: the settled subset (any), or all of them (all).
    pub async fn wait(
        &self,
        ids: &[String],
        timeout: Option<Duration>,
        all: bool,
    ) -> Result<Vec<Proc>, CoreError> {
        if ids.is_empty() {
            return Err(CoreError::WaitNoIds);
        }
        if ids.len() > validate::MAX_WAIT_IDS {
            return Err(CoreError::WaitTooMany {
                max: validate::MAX_WAIT_IDS,
                got: ids.len(),
            });
        }
        for id in ids {
            self.get(id)?;
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let ready = |t: &Table| -> Vec<Proc> {
            ids.iter()
                .filter_map(|id| t.get(id))
                .filter(|p| p.state.is_settled())
                .cloned()
                .collect()
        };
        let found = self
            .wait_until(ids, deadline, |t| {
                let r = ready(t);
                let done = if all {
                    r.len() == ids.len()
                } else {
                    !r.is_empty()
                };
                done.then_some(r)
            })
            .await;
        Ok(found.unwrap_or_else(|| ready(&self.lock().table)))
    }

    /// terminate()/kill(): the process only, or its tree; returns once the
    /// node has sent the signal, as CPython's do. A stopped process is left
    /// alone (not an error); a queued one is dropped from the queue and
    /// stopped with `-signo` as if it had died at once; a launch in flight is
    /// confirmed first, so the signal cannot overtake it.
    pub async fn signal(&self, id: &str, signo: i32, tree: bool) -> Result<Proc, CoreError> {
        self.get(id)?;
        let ids = [id.to_owned()];
        self.wait_until(&ids, Some(Instant::now() + START_CONFIRM), |t| {
            t.get(id)
                .filter(|p| p.state != ProcState::Launching)
                .map(|_| ())
        })
        .await;
        let request_id = self.request_id();
        let (pending, confirm) = {
            let mut st = self.lock();
            let plan = procs::signal(&mut st.table, id, signo, tree, request_id, now_ms())?;
            match plan {
                SignalPlan::Nothing => (self.apply(&mut st, Effects::new()), None),
                SignalPlan::Stopped(fx) => (self.apply(&mut st, fx), None),
                SignalPlan::Sent {
                    node,
                    request_id,
                    effects,
                } => {
                    let (tx, rx) = oneshot::channel();
                    self.signals().insert(
                        request_id,
                        PendingSignal {
                            node: node.clone(),
                            tx,
                        },
                    );
                    (self.apply(&mut st, effects), Some((request_id, node, rx)))
                }
            }
        };
        Self::durable(pending).await?;
        if let Some((request_id, node, rx)) = confirm {
            let id = id.to_owned();
            match tokio::time::timeout(SIGNAL_CONFIRM, rx).await {
                Ok(Ok(answer)) if answer.error.is_empty() => {}
                Ok(Ok(answer)) => {
                    return Err(CoreError::SignalFailed {
                        id,
                        node,
                        error: answer.error,
                    })
                }
                Ok(Err(_)) => return Err(CoreError::SignalDisconnected { id, node }),
                Err(_) => {
                    self.signals().remove(&request_id);
                    return Err(CoreError::SignalTimeout {
                        id,
                        node,
                        secs: SIGNAL_CONFIRM.as_secs(),
                    });
                }
            }
        }
        self.get(id)
    }

    /// The node's answer to a Signal.
    pub fn signaled(&self, agent: &str, answer: SignalAnswer) {
        let mut signals = self.signals();
        if signals
            .get(&answer.request_id)
            .is_some_and(|p| p.node == agent)
        {
            let pending = signals.remove(&answer.request_id).expect("checked");
            let _ = pending.tx.send(answer);
        }
    }

    pub fn agents(&self) -> Vec<Agent> {
        self.lock().table.agents().values().cloned().collect()
    }

    // ----- logs -----------------------------------------------------------

    /// Asks the process's agent for its output. `None`: the process never ran.
    pub fn open_logs(
        &self,
        id: &str,
        which: Output,
        follow: bool,
    ) -> Result<Option<LogReader>, CoreError> {
        let node = {
            let st = self.lock();
            let p = st
                .table
                .get(id)
                .ok_or_else(|| CoreError::UnknownProcess(id.to_owned()))?;
            if p.node.is_empty() || p.state == ProcState::Failed {
                return Ok(None);
            }
            let node = p.node.clone();
            if st.table.session(&node).is_none() {
                return Err(CoreError::LogsNodeDown {
                    id: id.to_owned(),
                    node,
                });
            }
            node
        };
        let request_id = self.request_id();
        let reader = self.logs.open(request_id, &node);
        let read = CoordinatorMessage {
            msg: Some(ToAgent::ReadLogs(mpctl_proto::v1::ReadLogs {
                request_id,
                process_id: id.to_owned(),
                stream: crate::wire::log_stream(which) as i32,
                follow,
            })),
        };
        if !self.outbox.send_now(&node, read) {
            self.logs.remove(request_id);
            return Err(CoreError::LogsNodeDown {
                id: id.to_owned(),
                node,
            });
        }
        Ok(Some(reader))
    }

    /// The client went away: stop the agent's reader.
    pub fn cancel_logs(&self, request_id: u64) {
        if let Some(node) = self.logs.remove(request_id) {
            self.send_cancel(&node, request_id);
        }
    }

    fn send_cancel(&self, node: &str, request_id: u64) {
        self.outbox.send_now(
            node,
            CoordinatorMessage {
                msg: Some(ToAgent::CancelLogs(mpctl_proto::v1::CancelLogs {
                    request_id,
                })),
            },
        );
    }

    /// Output (or its end) from a node's reader; never takes the table lock.
    pub fn log_data(
        &self,
        request_id: u64,
        chunk: Option<Chunk>,
        error: Option<String>,
        eof: bool,
    ) {
        if let Delivery::Cancel { node } = self.logs.deliver(request_id, chunk, error, eof) {
            self.send_cancel(&node, request_id);
        }
    }

    // ----- agents and leases (AgentService) -------------------------------

    /// A (re)connecting agent (validated at the edge): record it, reconcile
    /// its processes with the table, and hand it the queue; messages to it
    /// go on `tx`. Returns the session generation.
    pub async fn register(
        &self,
        reg: Registration,
        tx: mpsc::UnboundedSender<CoordinatorMessage>,
    ) -> Result<u64, CoreError> {
        let name = reg.name.clone();
        let (generation, pending) = {
            let mut st = self.lock();
            let generation = st.table.take_generation();
            self.outbox.open(&name, generation, tx);
            let fx = agents::register(&mut st.table, reg, generation, Instant::now(), now_ms());
            (generation, self.apply(&mut st, fx))
        };
        Self::durable(pending).await?;
        tracing::info!(agent = %name, generation, "agent registered");
        Ok(generation)
    }

    /// Any message from the agent renews its lease.
    pub fn seen(&self, name: &str) {
        agents::seen(&mut self.lock().table, name, Instant::now(), now_ms());
    }

    pub fn launched(&self, agent: &str, id: &str, pid: i32, at_ms: i64) {
        let pending = {
            let mut st = self.lock();
            let fx = procs::launched(&mut st.table, agent, id, pid, at_ms);
            self.apply(&mut st, fx)
        };
        in_background(pending);
    }

    pub fn launch_failed(&self, agent: &str, id: &str, error: &str) {
        let pending = {
            let mut st = self.lock();
            let fx = procs::launch_failed(&mut st.table, agent, id, error, now_ms());
            self.apply(&mut st, fx)
        };
        in_background(pending);
    }

    pub fn exited(&self, agent: &str, generation: u64, ex: ExitReport) {
        let pending = {
            let mut st = self.lock();
            let fx = procs::exited(&mut st.table, agent, generation, ex, now_ms());
            if fx.is_empty() {
                return;
            }
            self.apply(&mut st, fx)
        };
        in_background(pending);
    }

    /// The agent's stream ended. It stays `disconnected` (its processes keep
    /// their state) until its lease runs out.
    pub fn disconnected(self: &Arc<Self>, agent: &str, generation: u64) {
        let remaining = {
            let mut st = self.lock();
            let Some(remaining) = agents::disconnected(
                &mut st.table,
                agent,
                generation,
                self.timings.lease,
                Instant::now(),
            ) else {
                return;
            };
            self.outbox.close(agent, generation);
            self.agents_changed.send_modify(|g| *g = g.wrapping_add(1));
            remaining
        };
        self.logs.node_gone(agent);
        // Dropping their senders answers the waiting signals: disconnected.
        self.signals().retain(|_, p| p.node != agent);
        self.schedule_lease_check(agent.to_owned(), remaining);
    }

    /// After `delay`, an agent that is still not connected is lost.
    pub fn schedule_lease_check(self: &Arc<Self>, agent: String, delay: Duration) {
        let core = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            core.lease_expired(&agent);
        });
    }

    /// The agent is past its lease: it and its processes are `lost`.
    pub fn lease_expired(&self, agent: &str) {
        let pending = {
            let mut st = self.lock();
            let generation = st.table.session(agent);
            let fx =
                agents::lease_expired(&mut st.table, agent, self.timings.lease, Instant::now());
            if fx.is_empty() {
                return;
            }
            if let Some(g) = generation {
                self.outbox.close(agent, g);
            }
            self.apply(&mut st, fx)
        };
        in_background(pending);
    }

    /// Agents known from the store get one lease from start-up to reconnect.
    pub fn start_lease_clocks(self: &Arc<Self>) {
        let names: Vec<String> = self.lock().table.agents().keys().cloned().collect();
        for name in names {
            self.schedule_lease_check(name, self.timings.lease);
        }
    }

    /// A receiver that sees every later change of the agent registry.
    pub fn agents_changed(&self) -> watch::Receiver<u64> {
        self.agents_changed.subscribe()
    }

    // ----- pools ----------------------------------------------------------

    /// Sends a pool message to a connected node at once (not after a
    /// commit: pool tasks are not part of the durable state), without the
    /// table lock. False when the node is not connected.
    pub fn send_to_node(&self, node: &str, msg: ToAgent) -> bool {
        self.outbox
            .send_now(node, CoordinatorMessage { msg: Some(msg) })
    }

    /// Pools whose driver runs in this coordinator; a node's running worker
    /// of any other pool (its pool ended with a coordinator restart) is
    /// terminated when the node registers.
    pub fn set_pool_live(&self, pool_id: &str, live: bool) {
        self.lock().table.set_pool_live(pool_id, live);
    }

    /// How many processes have a waiter (for tests and diagnostics).
    pub fn waited_on(&self) -> usize {
        self.lock().waiters.len()
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
