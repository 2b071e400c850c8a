//! The in-memory process table and agent registry, mirrored to the store.
//!
//! Its fields are private: every change goes through a method that keeps
//! the indices true.
//! - `by_request`: each request id names one process (a retried start
//!   finds it);
//! - `daemon_children`: each process's daemonic children (CPython
//!   terminates them when it exits);
//! - an agent's `running` set: exactly its processes that are launching or
//!   started ([`Table::update`] moves ids in and out on every state change);
//! - `queue`: every queued process once, oldest first (entries that left
//!   the queued state are dropped when [`Table::queued`] next reads it);
//! - `order`: every process once by (creation time, id), the order of
//!   listings and their page tokens;
//! - `finished`: every stopped or failed process once, in the order they
//!   finished, with the monotonic time they did (retention removes from its
//!   front, [`Table::remove`]);
//! - `removed`: the most recent [`TOMBSTONES`] processes retention removed,
//!   so `inspect` and a retried start can say so.
//!
//! Every change a transition makes is also recorded with the value it
//! replaced ([`Undo`]): the core takes that record with each store batch,
//! and if the batch's commit fails it hands it back to [`Table::revert`],
//! which leaves the table as it was before (commit before effect), the
//! listing indices (`order`, `finished`, `removed`) included: a retention
//! removal is recorded too ([`Undo::Removed`]) and a failed commit puts the
//! process back with its index entries.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Bound;

use tokio::time::Instant;

use super::model::{Agent, Counts, Outcome, Proc, ProcState};

/// The value a change replaced, to put back if its commit fails.
#[derive(Clone, Debug)]
pub enum Undo {
    Proc {
        id: String,
        prior: Option<Proc>,
    },
    Agent {
        name: String,
        prior: Option<Agent>,
    },
    NextNumber(u64),
    ChildCount {
        parent: String,
        prior: Option<u32>,
    },
    /// Retention removed this process: the index entries to put back (the
    /// process itself is restored by the [`Undo::Proc`] recorded after it).
    Removed(Box<RemovedIndices>),
}

impl Undo {
    /// The process it restores, if any.
    pub fn proc_id(&self) -> Option<&str> {
        match self {
            Undo::Proc { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// What [`Table::remove`] took besides the process, to put back.
#[derive(Clone, Debug)]
pub struct RemovedIndices {
    id: String,
    finished_at: Instant,
    children_started: Option<u32>,
    daemon_children: Option<Vec<String>>,
    /// Its place among its parent's daemonic children.
    sibling_at: Option<usize>,
}

/// How many removed processes the table remembers (id and request id).
pub const TOMBSTONES: usize = 65_536;

/// Where a listing continues: after this (creation time, id).
pub type Cursor = (i64, String);

#[derive(Default)]
pub struct Table {
    procs: HashMap<String, Proc>,
    by_request: HashMap<String, String>,
    agents: BTreeMap<String, Agent>,
    queue: VecDeque<String>,
    next_number: u64,
    next_generation: u64,
    /// How many children each process has started (CPython's `_counter`).
    children_started: HashMap<String, u32>,
    daemon_children: HashMap<String, Vec<String>>,
    /// Pools with a driver in this coordinator.
    live_pools: HashSet<String>,
    /// Changes since the last [`Table::take_undo`], oldest first.
    undo: Vec<Undo>,
    counts: Counts,
    order: BTreeSet<Cursor>,
    finished: VecDeque<(Instant, String)>,
    /// Removed ids and request ids (the request's process id), oldest first.
    removed: VecDeque<(String, String)>,
    removed_ids: HashSet<String>,
    removed_requests: HashMap<String, String>,
}

impl Table {
    /// An empty table whose next top-level process is number `next_number`.
    pub fn new(next_number: u64) -> Table {
        Table {
            next_number: next_number.max(1),
            next_generation: 1,
            ..Table::default()
        }
    }

    /// The table as the store had it. Nobody is connected yet: every agent
    /// is `Disconnected`, its lease clock restarting with us. Queued
    /// processes keep their creation order (the only order that survives a
    /// restart is the recorded one).
    pub fn restore(procs: Vec<Proc>, agents: Vec<Agent>, next_number: u64) -> Table {
        let mut t = Table::new(next_number);
        for mut a in agents {
            a.state = super::model::AgentState::Disconnected;
            a.session = None;
            a.running.clear();
            t.agents.insert(a.name.clone(), a);
        }
        let mut procs = procs;
        procs.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        // Finished before this run: their age is all the wall clock can
        // tell; from here on it runs on the monotonic clock.
        let (mono, wall) = (Instant::now(), super::now_ms());
        let mut finished: Vec<(i64, String)> = procs
            .iter()
            .filter(|p| p.state.is_final())
            .map(|p| (p.stopped_unix_ms, p.id.clone()))
            .collect();
        finished.sort();
        for (stopped, id) in finished {
            let age = std::time::Duration::from_millis(wall.saturating_sub(stopped).max(0) as u64);
            let at = mono.checked_sub(age).unwrap_or(mono);
            t.finished.push_back((at, id));
        }
        for p in procs {
            if !p.parent_id.is_empty() {
                // The highest number used, not a count: a parent may have
                // made Process objects it never started.
                let k = t.children_started.entry(p.parent_id.clone()).or_default();
                *k = (*k).max(p.identity.last().copied().unwrap_or(0));
            }
            t.add(p);
        }
        t.undo.clear();
        t
    }

    // ----- rollback -------------------------------------------------------

    /// The changes recorded since the last call, oldest first.
    pub fn take_undo(&mut self) -> Vec<Undo> {
        std::mem::take(&mut self.undo)
    }

    /// Puts back what `undo` replaced, newest first, and keeps the indices
    /// true. Used when the commit of those changes failed.
    pub fn revert(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Proc { id, prior } => self.revert_proc(&id, prior),
                Undo::Agent { name, prior } => {
                    match prior {
                        Some(mut a) => {
                            // Liveness is not part of the change: keep the latest.
                            if let Some(now) = self.agents.get(&name) {
                                a.last_seen = a.last_seen.max(now.last_seen);
                                a.last_seen_unix_ms =
                                    a.last_seen_unix_ms.max(now.last_seen_unix_ms);
                            }
                            self.agents.insert(name, a);
                        }
                        None => {
                            self.agents.remove(&name);
                        }
                    }
                }
                Undo::NextNumber(n) => self.next_number = n,
                Undo::ChildCount { parent, prior } => match prior {
                    Some(k) => {
                        self.children_started.insert(parent, k);
                    }
                    None => {
                        self.children_started.remove(&parent);
                    }
                },
                Undo::Removed(r) => self.revert_removed(*r),
            }
        }
        // The running sets and the counts by state follow from the
        // processes. (The _total counters keep what they counted: a change
        // rolled back and made again counts twice.)
        self.counts.by_state = Default::default();
        for p in self.procs.values() {
            self.counts.by_state[p.state.index()] += 1;
        }
        for a in self.agents.values_mut() {
            a.running.clear();
        }
        for p in self.procs.values().filter(|p| p.state.is_active()) {
            if let Some(a) = self.agents.get_mut(&p.node) {
                a.running.insert(p.id.clone());
            }
        }
        self.undo.clear();
    }

    fn revert_proc(&mut self, id: &str, prior: Option<Proc>) {
        let Some(prior) = prior else {
            // It did not exist: remove it with its index entries.
            if let Some(p) = self.procs.remove(id) {
                if self.by_request.get(&p.request_id).is_some_and(|x| x == id) {
                    self.by_request.remove(&p.request_id);
                }
                self.order.remove(&(p.created_unix_ms, p.id.clone()));
                self.forget_finished(id);
                if let Some(kids) = self.daemon_children.get_mut(&p.parent_id) {
                    kids.retain(|k| k != id);
                }
                self.queue.retain(|q| q != id);
            }
            return;
        };
        if prior.state == ProcState::Queued && !self.queue.iter().any(|q| q == id) {
            // Back in its place by age (the queue is oldest first).
            let key = (prior.created_unix_ms, prior.id.clone());
            let procs = &self.procs;
            let at = self
                .queue
                .iter()
                .position(|q| {
                    procs
                        .get(q)
                        .is_some_and(|p| (p.created_unix_ms, p.id.clone()) > key)
                })
                .unwrap_or(self.queue.len());
            self.queue.insert(at, id.to_owned());
        }
        match self.procs.get(id) {
            // A reverted exit: it is not finished any more.
            Some(now) if now.state.is_final() && !prior.state.is_final() => {
                self.forget_finished(id);
            }
            Some(_) => {}
            // A reverted removal: back in the listing order and the request
            // index ([`Undo::Removed`], undone next, restores the rest).
            None => {
                self.order.insert((prior.created_unix_ms, prior.id.clone()));
                if !prior.request_id.is_empty() {
                    self.by_request
                        .insert(prior.request_id.clone(), prior.id.clone());
                }
            }
        }
        self.procs.insert(id.to_owned(), prior);
    }

    /// Drops `id`'s entry in the finished queue (newest first: a reverted
    /// exit is among the latest).
    fn forget_finished(&mut self, id: &str) {
        if let Some(at) = self.finished.iter().rposition(|(_, f)| f == id) {
            self.finished.remove(at);
        }
    }

    /// Puts back what [`Table::remove`] took besides the process: its place
    /// at the front of the finished queue (removals take from the front and
    /// are undone newest first, so the order comes back as it was), its
    /// child counter, its daemonic children, its place among its parent's,
    /// and forgets its tombstone.
    fn revert_removed(&mut self, r: RemovedIndices) {
        self.finished.push_front((r.finished_at, r.id.clone()));
        if let Some(k) = r.children_started {
            self.children_started.insert(r.id.clone(), k);
        }
        if let Some(kids) = r.daemon_children {
            self.daemon_children.insert(r.id.clone(), kids);
        }
        if let Some(at) = r.sibling_at {
            if let Some(parent) = self.procs.get(&r.id).map(|p| p.parent_id.clone()) {
                let siblings = self.daemon_children.entry(parent).or_default();
                let at = at.min(siblings.len());
                siblings.insert(at, r.id.clone());
            }
        }
        // Its tombstone is the newest one (undone newest first). A tombstone
        // it evicted (beyond TOMBSTONES) is not brought back.
        if self.removed.back().is_some_and(|(id, _)| *id == r.id) {
            let (id, request) = self.removed.pop_back().expect("checked");
            self.removed_ids.remove(&id);
            if self
                .removed_requests
                .get(&request)
                .is_some_and(|x| *x == id)
            {
                self.removed_requests.remove(&request);
            }
        }
    }

    // ----- processes ------------------------------------------------------

    pub fn get(&self, id: &str) -> Option<&Proc> {
        self.procs.get(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.procs.contains_key(id)
    }

    pub fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.procs.values()
    }

    /// The process a request id started.
    pub fn by_request(&self, request_id: &str) -> Option<&str> {
        self.by_request.get(request_id).map(String::as_str)
    }

    /// Adds a new process with its indices, and counts its start.
    pub fn insert(&mut self, p: Proc) {
        self.undo.push(Undo::Proc {
            id: p.id.clone(),
            prior: self.procs.get(&p.id).cloned(),
        });
        self.counts.starts += 1;
        self.add(p);
    }

    /// Adds a process (new, or restored) with its indices.
    fn add(&mut self, p: Proc) {
        self.counts.by_state[p.state.index()] += 1;
        if !p.request_id.is_empty() {
            self.by_request.insert(p.request_id.clone(), p.id.clone());
        }
        if p.daemon && !p.parent_id.is_empty() {
            self.daemon_children
                .entry(p.parent_id.clone())
                .or_default()
                .push(p.id.clone());
        }
        if p.state == ProcState::Queued {
            self.queue.push_back(p.id.clone());
        }
        if p.state.is_active() {
            if let Some(a) = self.agents.get_mut(&p.node) {
                a.running.insert(p.id.clone());
            }
        }
        self.order.insert((p.created_unix_ms, p.id.clone()));
        self.procs.insert(p.id.clone(), p);
    }

    /// Removes a finished process (taken off the finished queue by
    /// [`Table::pop_finished`], finished at `finished_at`) and every index
    /// entry of it (retention); it is remembered as removed. Recorded like
    /// any change, so a failed commit puts it all back ([`Table::revert`]).
    /// `None`: unknown or not finished.
    pub fn remove(&mut self, id: &str, finished_at: Instant) -> Option<Proc> {
        if !self.procs.get(id)?.state.is_final() {
            return None;
        }
        let p = self.procs.remove(id)?;
        // Gone from the processes-by-state gauge; its start and outcome stay counted.
        self.counts.by_state[p.state.index()] -= 1;
        if self.by_request.get(&p.request_id).is_some_and(|x| x == id) {
            self.by_request.remove(&p.request_id);
        }
        self.order.remove(&(p.created_unix_ms, p.id.clone()));
        let mut indices = RemovedIndices {
            id: id.to_owned(),
            finished_at,
            children_started: self.children_started.remove(id),
            daemon_children: self.daemon_children.remove(id),
            sibling_at: None,
        };
        if p.daemon && !p.parent_id.is_empty() {
            if let Some(siblings) = self.daemon_children.get_mut(&p.parent_id) {
                indices.sibling_at = siblings.iter().position(|c| c == id);
                siblings.retain(|c| c != id);
                if siblings.is_empty() {
                    self.daemon_children.remove(&p.parent_id);
                }
            }
        }
        self.remember_removed(&p);
        // Undone newest first: the process, then its indices.
        self.undo.push(Undo::Removed(Box::new(indices)));
        self.undo.push(Undo::Proc {
            id: id.to_owned(),
            prior: Some(p.clone()),
        });
        Some(p)
    }

    fn remember_removed(&mut self, p: &Proc) {
        if self.removed.len() >= TOMBSTONES {
            if let Some((id, request)) = self.removed.pop_front() {
                self.removed_ids.remove(&id);
                if self
                    .removed_requests
                    .get(&request)
                    .is_some_and(|x| *x == id)
                {
                    self.removed_requests.remove(&request);
                }
            }
        }
        self.removed_ids.insert(p.id.clone());
        if !p.request_id.is_empty() {
            self.removed_requests
                .insert(p.request_id.clone(), p.id.clone());
        }
        self.removed.push_back((p.id.clone(), p.request_id.clone()));
    }

    /// Whether retention removed `id` (among the last [`TOMBSTONES`]).
    pub fn was_removed(&self, id: &str) -> bool {
        self.removed_ids.contains(id)
    }

    /// The removed process a request id had started, if remembered.
    pub fn removed_request(&self, request_id: &str) -> Option<&str> {
        self.removed_requests.get(request_id).map(String::as_str)
    }

    /// How many processes are stopped or failed.
    pub fn finished_len(&self) -> usize {
        self.finished.len()
    }

    /// The process that finished first, and when (monotonic).
    pub fn oldest_finished(&self) -> Option<(Instant, &str)> {
        self.finished.front().map(|(at, id)| (*at, id.as_str()))
    }

    /// Takes the oldest finished process off the finished queue (to remove
    /// it), with when it finished.
    pub fn pop_finished(&mut self) -> Option<(Instant, String)> {
        self.finished.pop_front()
    }

    /// The processes after `after` (all: from the first) in creation order,
    /// as `keep` shows them (`None`: skipped): up to `limit` of them, and
    /// whether more follow.
    pub fn page<'a>(
        &'a self,
        after: Option<&Cursor>,
        limit: usize,
        keep: impl Fn(&str) -> Option<&'a Proc>,
    ) -> (Vec<&'a Proc>, bool) {
        let range = match after {
            Some(c) => self
                .order
                .range((Bound::Excluded(c.clone()), Bound::Unbounded)),
            None => self.order.range::<Cursor, _>(..),
        };
        let mut out = Vec::new();
        for (_, id) in range {
            let Some(p) = keep(id) else {
                continue;
            };
            if out.len() == limit {
                return (out, true);
            }
            out.push(p);
        }
        (out, false)
    }

    /// Changes one process and moves it between the running sets and the
    /// queue as its state and node require. `None`: no such process.
    pub fn update(&mut self, id: &str, f: impl FnOnce(&mut Proc)) -> Option<&Proc> {
        let p = self.procs.get_mut(id)?;
        self.undo.push(Undo::Proc {
            id: id.to_owned(),
            prior: Some(p.clone()),
        });
        let (was, old_node) = (p.state, p.node.clone());
        f(p);
        let (now, node) = (p.state, p.node.clone());
        if now != was {
            self.counts.by_state[was.index()] -= 1;
            self.counts.by_state[now.index()] += 1;
            if let Some(outcome) = Outcome::of(p) {
                self.counts.outcomes[outcome.index()] += 1;
            }
        }
        if now.is_final() && !was.is_final() {
            self.finished.push_back((Instant::now(), id.to_owned()));
        }
        if was.is_active() && (!now.is_active() || node != old_node) {
            if let Some(a) = self.agents.get_mut(&old_node) {
                a.running.remove(id);
            }
        }
        if now.is_active() {
            if let Some(a) = self.agents.get_mut(&node) {
                a.running.insert(id.to_owned());
            }
        }
        if now == ProcState::Queued && was != ProcState::Queued {
            self.queue.push_back(id.to_owned());
        }
        self.procs.get(id)
    }

    /// Numbers the next top-level process.
    pub fn take_number(&mut self) -> u64 {
        let n = self.next_number;
        self.undo.push(Undo::NextNumber(n));
        self.next_number += 1;
        n
    }

    pub fn next_number(&self) -> u64 {
        self.next_number
    }

    /// Counts a child of `parent` and returns its number among them: the
    /// one its parent gave it when it made the Process object, or else the
    /// next after every number used so far.
    pub fn count_child(&mut self, parent: &str, given: u32) -> u32 {
        self.undo.push(Undo::ChildCount {
            parent: parent.to_owned(),
            prior: self.children_started.get(parent).copied(),
        });
        let k = self.children_started.entry(parent.to_owned()).or_default();
        let number = if given > 0 { given } else { *k + 1 };
        *k = (*k).max(number);
        number
    }

    /// The daemonic children of `parent`, in start order.
    pub fn daemon_children(&self, parent: &str) -> &[String] {
        self.daemon_children.get(parent).map_or(&[], Vec::as_slice)
    }

    /// Processes by state now, and starts and settlements so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The oldest queued process.
    pub fn oldest_queued(&mut self) -> Option<&Proc> {
        while let Some(id) = self.queue.front() {
            match self.procs.get(id) {
                Some(p) if p.state == ProcState::Queued => break,
                _ => {
                    self.queue.pop_front();
                }
            }
        }
        self.queue.front().and_then(|id| self.procs.get(id))
    }

    /// How many of `node`'s processes are started (not still launching).
    pub fn started_on(&self, node: &str) -> u32 {
        self.agents.get(node).map_or(0, |a| {
            a.running
                .iter()
                .filter(|id| {
                    self.procs
                        .get(*id)
                        .is_some_and(|p| p.state == ProcState::Started)
                })
                .count() as u32
        })
    }

    /// The queued processes, oldest first.
    pub fn queued(&mut self) -> Vec<String> {
        let procs = &self.procs;
        self.queue
            .retain(|id| procs.get(id).is_some_and(|p| p.state == ProcState::Queued));
        self.queue.iter().cloned().collect()
    }

    // ----- agents ---------------------------------------------------------

    pub fn agent(&self, name: &str) -> Option<&Agent> {
        self.agents.get(name)
    }

    pub fn agents(&self) -> &BTreeMap<String, Agent> {
        &self.agents
    }

    /// The generation of `node`'s open session, if it is connected.
    pub fn session(&self, node: &str) -> Option<u64> {
        self.agents.get(node).and_then(|a| a.session)
    }

    /// Adds or replaces an agent; its running set is rebuilt from the table.
    pub fn put_agent(&mut self, mut a: Agent) -> &Agent {
        a.running = self
            .procs
            .values()
            .filter(|p| p.node == a.name && p.state.is_active())
            .map(|p| p.id.clone())
            .collect();
        let name = a.name.clone();
        let prior = self.agents.get(&name).cloned();
        self.undo.push(Undo::Agent {
            name: name.clone(),
            prior,
        });
        self.agents.insert(name.clone(), a);
        &self.agents[&name]
    }

    /// Changes an agent's own fields (not its running set).
    pub fn update_agent(&mut self, name: &str, f: impl FnOnce(&mut Agent)) -> Option<&Agent> {
        let a = self.agents.get_mut(name)?;
        self.undo.push(Undo::Agent {
            name: name.to_owned(),
            prior: Some(a.clone()),
        });
        self.update_agent_live(name, f)
    }

    /// Changes an agent's fields that are not stored and not rolled back
    /// (its lease clock, its open session).
    pub fn update_agent_live(&mut self, name: &str, f: impl FnOnce(&mut Agent)) -> Option<&Agent> {
        let a = self.agents.get_mut(name)?;
        let running = std::mem::take(&mut a.running);
        f(a);
        a.running = running;
        Some(a)
    }

    /// The processes running on `node`.
    pub fn running_on(&self, node: &str) -> Vec<String> {
        self.agents
            .get(node)
            .map(|a| a.running.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn take_generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    // ----- pools ----------------------------------------------------------

    pub fn set_pool_live(&mut self, pool_id: &str, live: bool) {
        if live {
            self.live_pools.insert(pool_id.to_owned());
        } else {
            self.live_pools.remove(pool_id);
        }
    }

    pub fn pool_live(&self, pool_id: &str) -> bool {
        self.live_pools.contains(pool_id)
    }
}
