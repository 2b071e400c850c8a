//! What the agent knows about its node's processes, shared by the launcher
//! event loop, the coordinator session and the log readers.
//!
//! One lock covers the process sets and the current session sender, so an
//! exit is either in the snapshot sent with `Register` or sent on the session
//! after it, never neither.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use mpctl_proto::v1::{
    agent_message::Msg, AgentMessage, Exited, JournalDamage, Resync, RunningProcess,
};
use tokio::sync::{mpsc, watch};

use crate::launcher::{ExitRecord, RunningRecord};
use crate::metrics::AgentMetrics;

pub type SessionTx = mpsc::UnboundedSender<AgentMessage>;

#[derive(Default)]
struct Inner {
    running: HashMap<String, i32>,
    launching: HashSet<String>,
    exited_while_launching: HashSet<String>,
    unacked: BTreeMap<String, Exited>,
    /// When each unacknowledged exit reached this agent (for the metrics).
    unacked_since: HashMap<String, Instant>,
    session: Option<SessionTx>,
    /// What the launcher last said about damage in its exit journal.
    journal_damage: Option<JournalDamage>,
    /// The coordinator answered this session's `Register` (for readiness).
    registered: bool,
}

impl Inner {
    fn report(&self) -> (Vec<RunningProcess>, Vec<Exited>) {
        let running = self
            .running
            .iter()
            .map(|(id, pid)| RunningProcess {
                process_id: id.clone(),
                pid: *pid,
            })
            .collect();
        (running, self.unacked.values().cloned().collect())
    }

    /// To the coordinator, if a session is open (otherwise the next
    /// `Register` carries what matters: running processes and unacked exits).
    fn send(&self, msg: Msg) {
        if let Some(tx) = &self.session {
            let _ = tx.send(AgentMessage { msg: Some(msg) });
        }
    }
}

/// The node's gauges at one moment, for a scrape.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub running: usize,
    pub launching: usize,
    pub unacked: usize,
    pub registered: bool,
}

pub struct NodeState {
    inner: Mutex<Inner>,
    metrics: Arc<AgentMetrics>,
    exits: watch::Sender<u64>,
    /// Changes whenever an ack removes an exit from `unacked`.
    acks: watch::Sender<()>,
}

/// An exit as reported to the coordinator; `result` is what a function
/// target returned.
pub fn exited_message(e: &ExitRecord, result: Option<Vec<u8>>) -> Exited {
    Exited {
        process_id: e.id.clone(),
        pid: e.pid,
        exitcode: e.exitcode,
        at_unix_ms: e.at_unix_ms,
        result,
    }
}

impl NodeState {
    pub fn new(metrics: Arc<AgentMetrics>) -> NodeState {
        NodeState {
            inner: Mutex::new(Inner::default()),
            metrics,
            exits: watch::channel(0).0,
            acks: watch::channel(()).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the launcher's view after (re)connecting to it; exits not seen
    /// before are reported on the current session.
    pub fn adopt(&self, running: &[RunningRecord], exited: Vec<Exited>) {
        let mut g = self.lock();
        g.running = running.iter().map(|r| (r.id.clone(), r.pid)).collect();
        for e in exited {
            if !g.unacked.contains_key(&e.process_id) {
                g.send(Msg::Exited(e.clone()));
                self.metrics.exited(e.exitcode);
                g.unacked_since.insert(e.process_id.clone(), Instant::now());
                g.unacked.insert(e.process_id.clone(), e);
            }
        }
        drop(g);
        self.exits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Installs a new session and returns what `Register` must carry.
    pub fn open_session(
        &self,
        tx: SessionTx,
    ) -> (Vec<RunningProcess>, Vec<Exited>, Option<JournalDamage>) {
        let mut g = self.lock();
        g.session = Some(tx);
        g.registered = false;
        let (running, exited) = g.report();
        (running, exited, g.journal_damage.clone())
    }

    /// The coordinator rolled back what was reported (its store could not
    /// commit) and asks again: what it runs and every unacknowledged exit,
    /// on the current session, under the lock (so an exit is in it or sent
    /// after it, as with `Register`).
    pub fn resync(&self) {
        let g = self.lock();
        let (running, exited) = g.report();
        tracing::info!(
            running = running.len(),
            unacked = exited.len(),
            "the coordinator asked for a resend; reporting again"
        );
        g.send(Msg::Resync(Resync { running, exited }));
    }

    /// The launcher's journal damage (`None`: none); sent up at once when
    /// it changes while a session is open (else with the next `Register`).
    pub fn set_journal_damage(&self, damage: Option<JournalDamage>) {
        let mut g = self.lock();
        if g.journal_damage == damage {
            return;
        }
        g.journal_damage = damage.clone();
        g.send(Msg::JournalDamage(damage.unwrap_or_default()));
    }

    pub fn close_session(&self) {
        let mut g = self.lock();
        g.session = None;
        g.registered = false;
    }

    /// The coordinator accepted this session's `Register`.
    pub fn registered(&self) {
        self.lock().registered = true;
    }

    pub fn is_registered(&self) -> bool {
        self.lock().registered
    }

    pub fn send(&self, msg: Msg) {
        self.lock().send(msg);
    }

    pub fn launching(&self, id: &str) {
        self.lock().launching.insert(id.to_owned());
    }

    /// The launch finished (`pid` is None if it failed). A process that
    /// already exited meanwhile is not listed as running.
    pub fn launch_done(&self, id: &str, pid: Option<i32>) {
        let mut g = self.lock();
        g.launching.remove(id);
        let exited = g.exited_while_launching.remove(id);
        if let (Some(pid), false) = (pid, exited) {
            g.running.insert(id.to_owned(), pid);
        }
    }

    /// A child forked by a managed process was adopted by the launcher: it
    /// runs here from now on.
    pub fn adopted(&self, l: crate::launcher::Launched) {
        let mut g = self.lock();
        g.running.insert(l.id.clone(), l.pid);
        self.metrics.launched();
        g.send(Msg::Launched(mpctl_proto::v1::Launched {
            process_id: l.id,
            pid: l.pid,
            at_unix_ms: l.at_unix_ms,
        }));
    }

    /// An exit from the launcher: remember it until acknowledged and report it.
    pub fn exited(&self, e: Exited) {
        let mut g = self.lock();
        g.running.remove(&e.process_id);
        if g.launching.contains(&e.process_id) {
            g.exited_while_launching.insert(e.process_id.clone());
        }
        g.send(Msg::Exited(e.clone()));
        if !g.unacked.contains_key(&e.process_id) {
            self.metrics.exited(e.exitcode);
            g.unacked_since.insert(e.process_id.clone(), Instant::now());
        }
        g.unacked.insert(e.process_id.clone(), e);
        drop(g);
        self.exits.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn acked(&self, id: &str) {
        let mut g = self.lock();
        g.unacked.remove(id);
        if let Some(t0) = g.unacked_since.remove(id) {
            self.metrics.acknowledged_after(t0.elapsed());
        }
        drop(g);
        self.acks.send_replace(());
    }

    /// The counters of this node (launches are counted by the session).
    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }

    /// What the metrics' gauges show now.
    pub fn gauges(&self) -> Gauges {
        let g = self.lock();
        Gauges {
            running: g.running.len(),
            launching: g.launching.len(),
            unacked: g.unacked.len(),
            registered: g.registered,
        }
    }

    /// Resolves when no exit waits for the coordinator's ack.
    pub async fn all_acked(&self) {
        // Subscribed before the check, so an ack in between is not missed.
        let mut acks = self.acks.subscribe();
        while !self.lock().unacked.is_empty() {
            if acks.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn running_count(&self) -> u32 {
        self.lock().running.len() as u32
    }

    /// Still running or being launched here.
    pub fn is_live(&self, id: &str) -> bool {
        let g = self.lock();
        g.running.contains_key(id) || g.launching.contains(id)
    }

    /// Changes whenever a process on this node exits.
    pub fn exit_events(&self) -> watch::Receiver<u64> {
        self.exits.subscribe()
    }
}
