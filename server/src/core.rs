//! The coordinator's state machine: every change to processes and agents.
//!
//! Each operation takes the table lock, changes the table, queues a store
//! [`Batch`] (rows plus the agent messages that must follow them), releases
//! the lock, then wakes waiters. Join and Wait sleep on a watch channel that is
//! bumped on every change, so they answer the moment an exit is known.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mpctl_proto::v1::{
    coordinator_message::Msg as ToAgent, AckExit, AgentInfo, AgentState, CoordinatorMessage,
    Exited, Launch, LogChunk, LogData, LogStream, ProcessInfo, ProcessState, ReadLogs, Register,
    Registered, Signal, Signaled, StartMethod, StartRequest,
};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::placement::{self, Decision};
use crate::store::{Batch, Op, Pending, Store};
use crate::table::{
    is_active, is_settled, AgentEntry, LogReceiver, LogRoute, PendingSignal, ProcRecord, Session,
    Table,
};
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

pub struct Core {
    table: Mutex<Table>,
    store: Store,
    changed: watch::Sender<u64>,
    pub timings: Timings,
}

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

fn not_found(id: &str) -> Status {
    Status::not_found(format!(
        "no process with id {id:?} (see `mpctl ps -a` for the known ones)"
    ))
}

fn state_of(info: &ProcessInfo) -> ProcessState {
    ProcessState::try_from(info.state).unwrap_or(ProcessState::Unspecified)
}

/// What an operation leaves to do once the lock is released.
struct Effects {
    batch: Batch,
    changed: bool,
}

impl Effects {
    fn new() -> Self {
        Effects {
            batch: Batch::default(),
            changed: false,
        }
    }
    fn put(&mut self, rec: &ProcRecord) {
        self.batch.ops.push(rec.op());
        self.changed = true;
    }
    fn send(&mut self, session: &Session, msg: ToAgent) {
        self.batch
            .after_commit
            .push((session.tx.clone(), CoordinatorMessage { msg: Some(msg) }));
    }
}

impl Core {
    pub fn new(table: Table, store: Store, timings: Timings) -> Arc<Core> {
        Arc::new(Core {
            table: Mutex::new(table),
            store,
            changed: watch::channel(0).0,
            timings,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock is a bug; the table is still the best
        // state we have, so keep serving.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the effects' batch (under the lock, keeping order) and wakes waiters.
    fn finish(&self, _guard: MutexGuard<'_, Table>, fx: Effects) -> Pending {
        self.submit(fx)
    }

    /// [`Core::finish`] for callers that keep holding the lock.
    fn submit(&self, fx: Effects) -> Pending {
        let pending = self.store.submit(fx.batch);
        if fx.changed {
            self.changed.send_modify(|g| *g = g.wrapping_add(1));
        }
        pending
    }

    async fn durable(pending: Pending) -> Result<(), Status> {
        pending
            .durable()
            .await
            .map_err(|e| Status::internal(format!("the coordinator could not save its state: {e}")))
    }

    /// Waits until `check` returns something, or the deadline passes.
    async fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut check: impl FnMut(&Table) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(v) = check(&self.lock()) {
                return Some(v);
            }
            let changed = rx.changed();
            match deadline {
                Some(d) => match tokio::time::timeout_at(d.into(), changed).await {
                    Ok(Ok(())) => {}
                    _ => return None,
                },
                None => {
                    if changed.await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    // ----- ProcessManager -------------------------------------------------

    pub async fn start(&self, req: StartRequest) -> Result<ProcessInfo, Status> {
        if req
            .function
            .as_ref()
            .is_some_and(|f| f.pool_worker.is_some())
        {
            return Err(Status::invalid_argument(
                "pool workers are started by the coordinator's PoolManager; create a pool instead",
            ));
        }
        self.start_checked(req).await
    }

    /// Starts one worker of a pool (see [`crate::pool`]).
    pub async fn start_pool_worker(&self, req: StartRequest) -> Result<ProcessInfo, Status> {
        self.start_checked(req).await
    }

    async fn start_checked(&self, req: StartRequest) -> Result<ProcessInfo, Status> {
        validate::start_request(&req)?;
        let (id, pending) = {
            let mut t = self.lock();
            if let Some(id) = t.by_request.get(&req.request_id) {
                // A retried start: the same process, never a second launch.
                (id.clone(), self.store.submit(Batch::default()))
            } else {
                self.create(&mut t, req)?
            }
        };
        Self::durable(pending).await?;
        let fork = self.get(&id)?.start_method == StartMethod::Fork as i32;
        if fork {
            // The caller forks now; the node's Launched arrives with the adoption.
            return self.get(&id);
        }
        self.start_outcome(&id).await
    }

    /// Records a new process and places or queues it.
    fn create(
        &self,
        t: &mut MutexGuard<'_, Table>,
        req: StartRequest,
    ) -> Result<(String, Pending), Status> {
        {
            let mut fx = Effects::new();
            let id = loop {
                let id = new_id();
                if !t.procs.contains_key(&id) {
                    break id;
                }
            };
            let identity = if req.parent_id.is_empty() {
                let number = t.next_number;
                t.next_number += 1;
                fx.batch.ops.push(Op::NextNumber(t.next_number));
                vec![number as u32]
            } else {
                let parent = t.procs.get(&req.parent_id).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "parent process {:?} is unknown",
                        req.parent_id
                    ))
                })?;
                if parent.info.daemon {
                    return Err(Status::failed_precondition(format!(
                        "daemonic processes are not allowed to have children ({} is daemonic)",
                        parent.info.name
                    )));
                }
                let mut identity = parent.info.identity.clone();
                let k = t.children_started.entry(req.parent_id.clone()).or_default();
                *k += 1;
                identity.push(*k);
                identity
            };
            let (argv, cwd, function, pool_id) = match (&req.command, &req.function) {
                (Some(c), _) => (c.argv.clone(), c.cwd.clone(), String::new(), String::new()),
                (None, Some(f)) => {
                    let mut argv = vec![f.program.clone()];
                    argv.extend(f.program_args.iter().cloned());
                    let pool = f.pool_worker.as_ref().map(|w| w.pool_id.clone());
                    (
                        argv,
                        f.cwd.clone(),
                        f.function.clone(),
                        pool.unwrap_or_default(),
                    )
                }
                (None, None) => unreachable!("validated: a start has a target"),
            };
            let info = ProcessInfo {
                id: id.clone(),
                name: if req.name.is_empty() {
                    let parts: Vec<String> = identity.iter().map(u32::to_string).collect();
                    format!("Process-{}", parts.join(":"))
                } else {
                    req.name.clone()
                },
                identity,
                state: ProcessState::Queued as i32,
                daemon: req.daemon,
                parent_id: req.parent_id.clone(),
                argv,
                cwd,
                function,
                pool_id,
                limits: req.limits,
                created_unix_ms: now_ms(),
                request_id: req.request_id.clone(),
                start_method: match StartMethod::try_from(req.start_method) {
                    Ok(m @ (StartMethod::Forkserver | StartMethod::Fork)) => m,
                    _ => StartMethod::Spawn,
                } as i32,
                ..Default::default()
            };
            let placement = req.placement.clone().unwrap_or_default();
            let fork = req.start_method == StartMethod::Fork as i32;
            let decision = if fork {
                // The child already exists (or is about to) on the parent's
                // node: no placement, no slot check, no launch.
                match t
                    .agents
                    .get(&placement.node)
                    .and_then(|a| a.session.as_ref())
                {
                    Some(_) => Decision::Assign(placement.node.clone()),
                    None => Decision::NoMatch(format!(
                        "node {} of the forking parent is not connected",
                        placement.node
                    )),
                }
            } else {
                placement::decide(&t.agents, &placement)
            };
            if let Decision::NoMatch(why) = decision {
                return Err(Status::failed_precondition(format!(
                    "cannot place process: {why}"
                )));
            }
            if !req.request_id.is_empty() {
                t.by_request.insert(req.request_id.clone(), id.clone());
            }
            t.index_child(&info);
            t.procs
                .insert(id.clone(), ProcRecord { info, request: req });
            match decision {
                Decision::Assign(node) if fork => adopt_placeholder(t, &id, &node, &mut fx),
                Decision::Assign(node) => assign(t, &id, &node, &mut fx),
                _ => {
                    t.queue.push_back(id.clone());
                    fx.put(&t.procs[&id]);
                }
            }
            Ok((id, self.submit(fx)))
        }
    }

    /// The answer to a Start: once the launch is confirmed or refused.
    async fn start_outcome(&self, id: &str) -> Result<ProcessInfo, Status> {
        let deadline = Instant::now() + START_CONFIRM;
        let info = self
            .wait_until(Some(deadline), |t| {
                let rec = t.procs.get(id)?;
                (rec.state() != ProcessState::Launching).then(|| rec.info.clone())
            })
            .await;
        let info = match info {
            Some(info) => info,
            None => self.get(id)?,
        };
        if state_of(&info) == ProcessState::Failed {
            return Err(Status::failed_precondition(info.start_error));
        }
        Ok(info)
    }

    pub fn get(&self, id: &str) -> Result<ProcessInfo, Status> {
        self.lock()
            .procs
            .get(id)
            .map(|r| r.info.clone())
            .ok_or_else(|| not_found(id))
    }

    pub fn list(&self, all: bool, node: &str) -> Vec<ProcessInfo> {
        let t = self.lock();
        let mut out: Vec<ProcessInfo> = t
            .procs
            .values()
            .filter(|r| all || !matches!(r.state(), ProcessState::Stopped | ProcessState::Failed))
            .filter(|r| node.is_empty() || r.info.node == node)
            .map(|r| ProcessInfo {
                result: None,
                ..r.info.clone()
            })
            .collect();
        out.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        out
    }

    /// Like `Process.join(timeout)`: the process once settled, or `None` on timeout.
    pub async fn join(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<(ProcessInfo, bool), Status> {
        self.get(id)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let settled = self
            .wait_until(deadline, |t| {
                let rec = t.procs.get(id)?;
                is_settled(rec.state()).then(|| rec.info.clone())
            })
            .await;
        match settled {
            Some(info) => Ok((info, false)),
            None => Ok((self.get(id)?, true)),
        }
    }

    /// Sentinel wait: the settled subset (any), or all of them (all).
    pub async fn wait(
        &self,
        ids: &[String],
        timeout: Option<Duration>,
        all: bool,
    ) -> Result<Vec<ProcessInfo>, Status> {
        if ids.is_empty() {
            return Err(Status::invalid_argument(
                "wait needs at least one process id",
            ));
        }
        if ids.len() > validate::MAX_WAIT_IDS {
            return Err(Status::invalid_argument(format!(
                "wait takes at most {} processes, got {}",
                validate::MAX_WAIT_IDS,
                ids.len()
            )));
        }
        for id in ids {
            self.get(id)?;
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let ready = |t: &Table| -> Vec<ProcessInfo> {
            ids.iter()
                .filter_map(|id| t.procs.get(id))
                .filter(|r| is_settled(r.state()))
                .map(|r| r.info.clone())
                .collect()
        };
        let found = self
            .wait_until(deadline, |t| {
                let r = ready(t);
                let done = if all {
                    r.len() == ids.len()
                } else {
                    !r.is_empty()
                };
                done.then_some(r)
            })
            .await;
        Ok(found.unwrap_or_else(|| ready(&self.lock())))
    }

    /// terminate()/kill(): the process only, or its tree; returns once the
    /// node has sent the signal, as CPython's do. A stopped process is left
    /// alone (not an error); a queued one is dropped from the queue and
    /// stopped with `-signo` as if it had died at once; a launch in flight is
    /// confirmed first, so the signal cannot overtake it.
    pub async fn signal(&self, id: &str, signo: i32, tree: bool) -> Result<ProcessInfo, Status> {
        self.get(id)?;
        let deadline = Instant::now() + START_CONFIRM;
        self.wait_until(Some(deadline), |t| {
            t.procs
                .get(id)
                .filter(|r| r.state() != ProcessState::Launching)
                .map(|_| ())
        })
        .await;
        let (pending, confirm) = {
            let mut t = self.lock();
            let rec = t.procs.get(id).ok_or_else(|| not_found(id))?;
            let mut fx = Effects::new();
            let mut confirm = None;
            match rec.state() {
                ProcessState::Queued => {
                    t.queue.retain(|q| q != id);
                    let rec = t.procs.get_mut(id).expect("checked above");
                    rec.info.state = ProcessState::Stopped as i32;
                    rec.info.exitcode = Some(-signo);
                    rec.info.stopped_unix_ms = now_ms();
                    fx.put(rec);
                }
                ProcessState::Launching | ProcessState::Started => {
                    let node = rec.info.node.clone();
                    let agent = t.agents.get(&node);
                    let Some(session) = agent.and_then(|a| a.session.clone()) else {
                        return Err(Status::unavailable(format!(
                            "process {id} runs on node {node}, which is not connected; the signal was not sent (retry when `mpctl agents` shows {node} ready)"
                        )));
                    };
                    let request_id = t.next_request;
                    t.next_request += 1;
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    t.pending_signals.insert(
                        request_id,
                        PendingSignal {
                            node: node.clone(),
                            tx,
                        },
                    );
                    confirm = Some((request_id, node, rx));
                    fx.send(
                        &session,
                        ToAgent::Signal(Signal {
                            process_id: id.to_owned(),
                            signo,
                            tree,
                            request_id,
                        }),
                    );
                }
                ProcessState::Lost => {
                    return Err(Status::unavailable(format!(
                        "process {id} is lost with its node {}; it cannot be signalled until the node comes back",
                        rec.info.node
                    )));
                }
                _ => {}
            }
            (self.finish(t, fx), confirm)
        };
        Self::durable(pending).await?;
        if let Some((request_id, node, rx)) = confirm {
            match tokio::time::timeout(SIGNAL_CONFIRM, rx).await {
                Ok(Ok(Ok(_delivered))) => {}
                Ok(Ok(Err(error))) => {
                    return Err(Status::unavailable(format!(
                        "node {node} could not signal process {id}: {error}"
                    )))
                }
                Ok(Err(_)) => {
                    return Err(Status::unavailable(format!(
                        "node {node} disconnected before confirming the signal to process {id}"
                    )))
                }
                Err(_) => {
                    self.lock().pending_signals.remove(&request_id);
                    return Err(Status::deadline_exceeded(format!(
                        "node {node} did not confirm the signal to process {id} within {} s",
                        SIGNAL_CONFIRM.as_secs()
                    )));
                }
            }
        }
        self.get(id)
    }

    /// The node's answer to a Signal.
    pub fn signaled(&self, agent: &str, s: Signaled) {
        let mut t = self.lock();
        if t.pending_signals
            .get(&s.request_id)
            .is_some_and(|p| p.node == agent)
        {
            let pending = t.pending_signals.remove(&s.request_id).expect("checked");
            let answer = if s.error.is_empty() {
                Ok(s.delivered)
            } else {
                Err(s.error)
            };
            let _ = pending.tx.send(answer);
        }
    }

    pub fn agents(&self) -> Vec<AgentInfo> {
        self.lock()
            .agents
            .values()
            .map(|a| {
                let mut info = a.info.clone();
                info.used = a.running.len() as u32;
                info
            })
            .collect()
    }

    // ----- Logs -----------------------------------------------------------

    /// Asks the process's agent for its output. `None`: the process never ran.
    pub fn open_logs(
        &self,
        id: &str,
        stream: LogStream,
        follow: bool,
    ) -> Result<Option<(u64, LogReceiver)>, Status> {
        let mut t = self.lock();
        let rec = t.procs.get(id).ok_or_else(|| not_found(id))?;
        if rec.info.node.is_empty() || rec.state() == ProcessState::Failed {
            return Ok(None);
        }
        let node = rec.info.node.clone();
        let session = t
            .agents
            .get(&node)
            .and_then(|a| a.session.clone())
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "the output of {id} is on node {node}, which is not connected"
                ))
            })?;
        let request_id = t.next_request;
        t.next_request += 1;
        // Unbounded: the agent caps each output file, so one request holds at
        // most that much, and a slow reader never stalls the agent's stream.
        let (tx, rx) = mpsc::unbounded_channel();
        t.log_routes.insert(request_id, LogRoute { node, tx });
        let _ = session.tx.send(CoordinatorMessage {
            msg: Some(ToAgent::ReadLogs(ReadLogs {
                request_id,
                process_id: id.to_owned(),
                stream: stream as i32,
                follow,
            })),
        });
        Ok(Some((request_id, rx)))
    }

    /// The client went away: stop the agent's reader.
    pub fn cancel_logs(&self, request_id: u64) {
        let mut t = self.lock();
        if let Some(route) = t.log_routes.remove(&request_id) {
            if let Some(session) = t.agents.get(&route.node).and_then(|a| a.session.as_ref()) {
                let _ = session.tx.send(CoordinatorMessage {
                    msg: Some(ToAgent::CancelLogs(mpctl_proto::v1::CancelLogs {
                        request_id,
                    })),
                });
            }
        }
    }

    fn log_data(&self, data: LogData) {
        let mut t = self.lock();
        let Some(route) = t.log_routes.get(&data.request_id) else {
            return;
        };
        let mut gone = false;
        if !data.data.is_empty() {
            gone |= route
                .tx
                .send(Ok(LogChunk {
                    stream: data.stream,
                    data: data.data,
                }))
                .is_err();
        }
        if !data.error.is_empty() {
            let _ = route.tx.send(Err(Status::unavailable(data.error)));
        }
        if data.eof {
            t.log_routes.remove(&data.request_id);
        } else if gone {
            drop(t);
            self.cancel_logs(data.request_id);
        }
    }

    // ----- AgentService ---------------------------------------------------

    /// A (re)connecting agent: record it, reconcile its processes with the
    /// table, and hand it the queue. Returns the session generation.
    pub async fn register(
        &self,
        reg: Register,
        tx: mpsc::UnboundedSender<CoordinatorMessage>,
    ) -> Result<u64, Status> {
        validate::register(&reg)?;
        let (generation, pending) = {
            let mut t = self.lock();
            let generation = t.next_generation;
            t.next_generation += 1;
            let session = Session { generation, tx };
            let _ = session.tx.send(CoordinatorMessage {
                msg: Some(ToAgent::Registered(Registered {
                    heartbeat_interval_ms: self.timings.heartbeat.as_millis() as u64,
                    lease_ms: self.timings.lease.as_millis() as u64,
                })),
            });
            let name = reg.name.clone();
            let info = AgentInfo {
                name: name.clone(),
                state: AgentState::Ready as i32,
                slots: reg.slots,
                used: 0,
                labels: reg.labels.clone(),
                version: reg.version.clone(),
                last_seen_unix_ms: now_ms(),
                hostname: reg.hostname.clone(),
            };
            let mut fx = Effects::new();
            fx.batch.ops.push(Op::Agent(info.clone()));
            t.agents.insert(
                name.clone(),
                AgentEntry {
                    info,
                    session: Some(session.clone()),
                    running: HashSet::new(),
                },
            );
            let mut known: HashSet<String> = HashSet::new();
            for ex in reg.exited {
                known.insert(ex.process_id.clone());
                apply_exit(&mut t, &name, &session, ex, &mut fx);
            }
            for r in reg.running {
                known.insert(r.process_id.clone());
                match t.procs.get_mut(&r.process_id) {
                    Some(rec) if rec.info.node == name && !is_final(rec.state()) => {
                        rec.info.state = ProcessState::Started as i32;
                        rec.info.pid = r.pid;
                        fx.put(rec);
                        let pool = rec.info.pool_id.clone();
                        if !pool.is_empty() && !t.live_pools.contains(&pool) {
                            tracing::info!(agent = %name, process = %r.process_id, pool = %pool,
                                "terminating a worker of a pool that no longer exists");
                            fx.send(
                                &session,
                                ToAgent::Signal(Signal {
                                    process_id: r.process_id.clone(),
                                    signo: libc::SIGTERM,
                                    tree: false,
                                    request_id: 0,
                                }),
                            );
                        }
                    }
                    _ => tracing::warn!(
                        agent = %name, process = %r.process_id, pid = r.pid,
                        "agent runs a process the coordinator does not know; leaving it alone"
                    ),
                }
            }
            // Launches the agent never confirmed are sent again (the launcher
            // deduplicates by id); started processes it no longer knows are lost.
            let mine: Vec<String> = t
                .procs
                .values()
                .filter(|r| r.info.node == name && !known.contains(&r.info.id))
                .filter(|r| matches!(r.state(), ProcessState::Launching | ProcessState::Started))
                // A fork's child is adopted, never launched by the node.
                .filter(|r| r.info.start_method != StartMethod::Fork as i32)
                .map(|r| r.info.id.clone())
                .collect();
            for id in mine {
                let rec = t.procs.get_mut(&id).expect("listed above");
                if rec.state() == ProcessState::Launching {
                    fx.send(&session, ToAgent::Launch(launch_message(rec)));
                } else {
                    rec.info.state = ProcessState::Lost as i32;
                    fx.put(rec);
                }
            }
            let running: HashSet<String> = t
                .procs
                .values()
                .filter(|r| r.info.node == name && is_active(r.state()))
                .map(|r| r.info.id.clone())
                .collect();
            t.agents.get_mut(&name).expect("inserted above").running = running;
            dispatch_queue(&mut t, &mut fx);
            fx.changed = true;
            (generation, self.finish(t, fx))
        };
        Self::durable(pending).await?;
        tracing::info!(agent = %reg.name, generation, "agent registered");
        Ok(generation)
    }

    /// Any message from the agent renews its lease.
    pub fn seen(&self, name: &str) {
        if let Some(a) = self.lock().agents.get_mut(name) {
            a.info.last_seen_unix_ms = now_ms();
        }
    }

    pub fn launched(&self, agent: &str, id: &str, pid: i32, at_ms: i64) {
        let pending = {
            let mut t = self.lock();
            let mut fx = Effects::new();
            if let Some(rec) = t.procs.get_mut(id) {
                if rec.info.node == agent
                    && matches!(rec.state(), ProcessState::Launching | ProcessState::Lost)
                {
                    rec.info.state = ProcessState::Started as i32;
                    rec.info.pid = pid;
                    rec.info.started_unix_ms = at_ms;
                    fx.put(rec);
                }
            }
            self.finish(t, fx)
        };
        in_background(pending);
    }

    pub fn launch_failed(&self, agent: &str, id: &str, error: &str) {
        let pending = {
            let mut t = self.lock();
            let mut fx = Effects::new();
            if let Some(rec) = t.procs.get_mut(id) {
                if rec.info.node == agent && !is_final(rec.state()) {
                    let program = rec.info.argv.first().cloned().unwrap_or_default();
                    rec.info.state = ProcessState::Failed as i32;
                    rec.info.start_error =
                        format!("cannot start {program:?} on node {agent}: {error}");
                    rec.info.stopped_unix_ms = now_ms();
                    fx.put(rec);
                    if let Some(a) = t.agents.get_mut(agent) {
                        a.running.remove(id);
                    }
                    dispatch_queue(&mut t, &mut fx);
                }
            }
            self.finish(t, fx)
        };
        in_background(pending);
    }

    pub fn exited(&self, agent: &str, generation: u64, ex: Exited) {
        let pending = {
            let mut t = self.lock();
            let Some(session) = t
                .agents
                .get(agent)
                .and_then(|a| a.session.clone())
                .filter(|s| s.generation == generation)
            else {
                return;
            };
            let mut fx = Effects::new();
            apply_exit(&mut t, agent, &session, ex, &mut fx);
            dispatch_queue(&mut t, &mut fx);
            self.finish(t, fx)
        };
        in_background(pending);
    }

    /// The agent's stream ended. It stays `disconnected` (its processes keep
    /// their state) until its lease runs out.
    pub fn disconnected(self: &Arc<Self>, agent: &str, generation: u64) {
        let mut t = self.lock();
        let Some(a) = t.agents.get_mut(agent) else {
            return;
        };
        if a.session.as_ref().map(|s| s.generation) != Some(generation) {
            return;
        }
        a.session = None;
        a.info.state = AgentState::Disconnected as i32;
        let since = now_ms() - a.info.last_seen_unix_ms;
        let remaining = self
            .timings
            .lease
            .saturating_sub(Duration::from_millis(since.max(0) as u64));
        let failed: Vec<u64> = t
            .log_routes
            .iter()
            .filter(|(_, r)| r.node == agent)
            .map(|(k, _)| *k)
            .collect();
        for k in failed {
            if let Some(route) = t.log_routes.remove(&k) {
                let _ = route.tx.send(Err(Status::unavailable(format!(
                    "node {agent} disconnected while sending output"
                ))));
            }
        }
        // Dropping their senders answers the waiting signals: disconnected.
        t.pending_signals.retain(|_, p| p.node != agent);
        drop(t);
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
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
            let mut t = self.lock();
            let Some(a) = t.agents.get_mut(agent) else {
                return;
            };
            let silent = now_ms() - a.info.last_seen_unix_ms;
            let connected_and_fresh =
                a.session.is_some() && silent < self.timings.lease.as_millis() as i64;
            if connected_and_fresh || a.info.state == AgentState::Lost as i32 {
                return;
            }
            a.session = None;
            a.info.state = AgentState::Lost as i32;
            let mut fx = Effects::new();
            fx.batch.ops.push(Op::Agent(a.info.clone()));
            let ids: Vec<String> = a.running.drain().collect();
            for id in ids {
                if let Some(rec) = t.procs.get_mut(&id) {
                    if is_active(rec.state()) {
                        rec.info.state = ProcessState::Lost as i32;
                        fx.put(rec);
                    }
                }
            }
            fx.changed = true;
            tracing::warn!(
                agent,
                silent_ms = silent,
                "agent lost: silent past its lease"
            );
            self.finish(t, fx)
        };
        in_background(pending);
    }

    pub fn handle_log_data(&self, data: LogData) {
        self.log_data(data);
    }

    /// Agents known from the store get one lease from start-up to reconnect.
    pub fn start_lease_clocks(self: &Arc<Self>) {
        let names: Vec<String> = self.lock().agents.keys().cloned().collect();
        for name in names {
            self.schedule_lease_check(name, self.timings.lease);
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

fn is_final(state: ProcessState) -> bool {
    matches!(state, ProcessState::Stopped | ProcessState::Failed)
}

fn launch_message(rec: &ProcRecord) -> Launch {
    Launch {
        process_id: rec.info.id.clone(),
        name: rec.info.name.clone(),
        command: rec.request.command.clone(),
        log_limit_bytes: rec.request.log_limit_bytes,
        start_method: rec.info.start_method,
        function: rec.request.function.clone(),
        parent_id: rec.info.parent_id.clone(),
        limits: rec.info.limits,
    }
}

/// Records a fork's child on its parent's node; the node reports it as
/// launched when its launcher adopts it.
fn adopt_placeholder(t: &mut Table, id: &str, node: &str, fx: &mut Effects) {
    if let Some(agent) = t.agents.get_mut(node) {
        agent.running.insert(id.to_owned());
    }
    let rec = t.procs.get_mut(id).expect("caller inserted the process");
    rec.info.node = node.to_owned();
    rec.info.state = ProcessState::Launching as i32;
    fx.put(rec);
}

/// Places `id` on `node` and sends the launch once the row is durable.
fn assign(t: &mut Table, id: &str, node: &str, fx: &mut Effects) {
    let Some(agent) = t.agents.get_mut(node) else {
        return;
    };
    let Some(session) = agent.session.clone() else {
        return;
    };
    agent.running.insert(id.to_owned());
    let rec = t.procs.get_mut(id).expect("caller inserted the process");
    rec.info.node = node.to_owned();
    rec.info.state = ProcessState::Launching as i32;
    fx.put(rec);
    fx.send(&session, ToAgent::Launch(launch_message(rec)));
}

/// Launches what the queue holds wherever it now fits, oldest first; entries
/// that still do not fit keep their place.
fn dispatch_queue(t: &mut Table, fx: &mut Effects) {
    let queued: Vec<String> = t.queue.iter().cloned().collect();
    let mut placed = HashSet::new();
    for id in queued {
        let Some(rec) = t.procs.get(&id) else {
            placed.insert(id);
            continue;
        };
        let placement = rec.request.placement.clone().unwrap_or_default();
        if let Decision::Assign(node) = placement::decide(&t.agents, &placement) {
            assign(t, &id, &node, fx);
            placed.insert(id);
        }
    }
    if !placed.is_empty() {
        t.queue.retain(|id| !placed.contains(id));
    }
}

/// CPython terminates a process's daemonic children when it exits; the
/// coordinator does it for the cluster: SIGTERM to the running ones, and the
/// queued ones stop at once with -15.
fn terminate_daemon_children(t: &mut Table, parent: &str, fx: &mut Effects) {
    let children: Vec<String> = t
        .daemon_children
        .get(parent)
        .into_iter()
        .flatten()
        .filter(|id| t.procs.get(*id).is_some_and(|r| !is_settled(r.state())))
        .cloned()
        .collect();
    for id in children {
        let rec = t.procs.get_mut(&id).expect("listed above");
        match rec.state() {
            ProcessState::Queued => {
                rec.info.state = ProcessState::Stopped as i32;
                rec.info.exitcode = Some(-libc::SIGTERM);
                rec.info.stopped_unix_ms = now_ms();
                fx.put(rec);
                t.queue.retain(|q| q != &id);
            }
            _ => {
                let node = rec.info.node.clone();
                if let Some(session) = t.agents.get(&node).and_then(|a| a.session.clone()) {
                    // Request id 0: nobody waits for the answer.
                    fx.send(
                        &session,
                        ToAgent::Signal(Signal {
                            process_id: id,
                            signo: libc::SIGTERM,
                            tree: false,
                            request_id: 0,
                        }),
                    );
                }
            }
        }
    }
}

/// Records an exit reported by `agent` and acknowledges it after commit.
fn apply_exit(t: &mut Table, agent: &str, session: &Session, ex: Exited, fx: &mut Effects) {
    let id = ex.process_id.clone();
    match t.procs.get_mut(&id) {
        Some(rec) if rec.info.node == agent && rec.state() != ProcessState::Stopped => {
            rec.info.state = ProcessState::Stopped as i32;
            rec.info.exitcode = Some(ex.exitcode);
            rec.info.result = ex.result.filter(|r| r.len() <= validate::MAX_RESULT);
            if ex.pid != 0 {
                rec.info.pid = ex.pid;
            }
            rec.info.stopped_unix_ms = if ex.at_unix_ms > 0 {
                ex.at_unix_ms
            } else {
                now_ms()
            };
            fx.put(rec);
            terminate_daemon_children(t, &id, fx);
        }
        Some(_) => {}
        None => tracing::warn!(agent, process = %id, "exit of an unknown process; acknowledged"),
    }
    if let Some(a) = t.agents.get_mut(agent) {
        a.running.remove(&id);
    }
    fx.send(session, ToAgent::AckExit(AckExit { process_id: id }));
}

impl Core {
    /// Sends a pool message to a connected node at once (not after a
    /// commit: pool tasks are not part of the durable state). False when
    /// the node is not connected.
    pub fn send_to_node(&self, node: &str, msg: ToAgent) -> bool {
        let t = self.lock();
        match t.agents.get(node).and_then(|a| a.session.as_ref()) {
            Some(s) => s.tx.send(CoordinatorMessage { msg: Some(msg) }).is_ok(),
            None => false,
        }
    }

    /// Pools whose driver runs in this coordinator; a node's running worker
    /// of any other pool (its pool ended with a coordinator restart) is
    /// terminated when the node registers.
    pub fn set_pool_live(&self, pool_id: &str, live: bool) {
        let mut t = self.lock();
        if live {
            t.live_pools.insert(pool_id.to_owned());
        } else {
            t.live_pools.remove(pool_id);
        }
    }

    /// A receiver that sees every later change of the table.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
