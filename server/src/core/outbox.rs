//! The one way effects leave the core: [`Outbox::submit`] turns an
//! [`Effects`] into a store batch (rows, then the agent messages that must
//! follow their commit) and resolves each message's session. It also holds
//! the agents' open sessions, so messages that need no commit (log reads,
//! pool tasks) go out without the table lock.
//!
//! The session channels to agents are unbounded: the store's writer thread
//! sends on them after each commit and must never block on one node, and
//! what they carry is bounded by the coordinator's own work (a launch or
//! signal per process, an ack per exit, pool tasks within each worker's
//! window), not by a client.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use mpctl_proto::v1::CoordinatorMessage;
use tokio::sync::mpsc;

use super::effects::{Effects, Row, ToNode};
use crate::store::{Batch, Op, Pending, Store};
use crate::wire;

struct Session {
    generation: u64,
    tx: mpsc::UnboundedSender<CoordinatorMessage>,
}

pub struct Outbox {
    store: Store,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Outbox {
    pub fn new(store: Store) -> Outbox {
        Outbox {
            store,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store, for rows outside the table (node credentials).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Queues `fx` with the store. Called under the table lock, so batches
    /// keep the order of the changes they record.
    pub fn submit(&self, seq: u64, fx: Effects) -> Pending {
        let mut batch = Batch::default();
        for row in fx.rows {
            batch.ops.push(match row {
                Row::Proc(p) => {
                    Op::Process(Box::new((wire::process_info(&p), wire::start_row(&p))))
                }
                Row::Agent(a) => Op::Agent(Box::new(wire::agent_info(&a))),
                Row::NextNumber(n) => Op::NextNumber(n),
                Row::NodeCredential { name, hash } => Op::NodeCredential { name, hash },
                Row::Removed(id) => Op::DeleteProcess(id),
            });
        }
        if !fx.sends.is_empty() {
            let sessions = self.sessions();
            for s in fx.sends {
                // A session that has ended since misses it: the node is
                // reconciled from the table when it registers again.
                if let Some(session) = sessions
                    .get(&s.node)
                    .filter(|x| x.generation == s.generation)
                {
                    batch
                        .after_commit
                        .push((session.tx.clone(), wire::to_node(s.msg)));
                }
            }
        }
        self.store.submit(seq, batch)
    }

    /// Session `generation` of `node` is open on `tx`.
    pub fn open(&self, node: &str, generation: u64, tx: mpsc::UnboundedSender<CoordinatorMessage>) {
        self.sessions()
            .insert(node.to_owned(), Session { generation, tx });
    }

    /// Session `generation` of `node` ended.
    pub fn close(&self, node: &str, generation: u64) {
        let mut sessions = self.sessions();
        if sessions
            .get(node)
            .is_some_and(|s| s.generation == generation)
        {
            sessions.remove(node);
        }
    }

    /// The session of `node`, whichever it is, ended (its registration was
    /// rolled back).
    pub fn close_any(&self, node: &str) {
        self.sessions().remove(node);
    }

    /// Sends at once, with no commit to wait for. False when `node` is not
    /// connected.
    pub fn send_now(&self, node: &str, msg: ToNode) -> bool {
        self.forward(node, wire::to_node(msg))
    }

    /// Sends a message made at another edge (a pool driver's) unchanged.
    pub fn forward(&self, node: &str, msg: CoordinatorMessage) -> bool {
        match self.sessions().get(node) {
            Some(s) => s.tx.send(msg).is_ok(),
            None => false,
        }
    }
}
