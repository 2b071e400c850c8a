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

pub mod agents;
pub mod effects;
pub mod error;
pub mod logs;
pub mod model;
mod ops;
pub mod outbox;
pub mod placement;
pub mod procs;
pub mod retention;
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

use effects::{Effects, ToNode};
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
    /// Processes removed by retention since start-up.
    removed_total: AtomicU64,
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
            removed_total: AtomicU64::new(0),
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
