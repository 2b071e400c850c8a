//! One pool's driver: a task that owns the pool's [`Schedule`] and reacts to
//! its events: tasks and commands from the client's stream, and what the
//! pool's workers do (started, ready, results, exits) as the agents and the
//! process table report it.
//!
//! After each burst of events it sends every worker its new tasks in one
//! message and the client every new result in one message, so small tasks
//! travel in batches on every hop.
//!
//! Channels: the client's commands arrive on a bounded channel (a client
//! that submits faster than the pool takes tasks is held back by its own
//! stream's flow control); what workers and the process table report
//! arrives unbounded, as it is bounded by the pool itself (each worker holds
//! at most its window of tasks). Results go to the client on a bounded
//! channel ([`super::OUT_MESSAGES`]); when the client does not read, they
//! wait in the driver (at most one per task it submitted) and are sent as
//! it reads, so a slow client never blocks the driver's other work.

use std::collections::HashSet;
use std::sync::Arc;

use mpctl_proto::v1::{
    coordinator_message::Msg as ToAgent, pool_event, CreatePool, FunctionTarget, PoolErrorKind,
    PoolEvent, PoolFinished, PoolResults, PoolTask, PoolTaskResult, PoolTasks, PoolWorkerStop,
    PoolWorkerTarget, StartMethod, StartRequest,
};
use tokio::sync::mpsc::{self, error::TrySendError, Receiver, UnboundedReceiver, UnboundedSender};
use tonic::Status;

use super::schedule::{self, Limits, Schedule, Worker};
use super::Pools;
use crate::core::model::{Proc, ProcState};
use crate::core::Core;
use crate::wire;

/// The largest number of tasks a pool holds queued.
pub const MAX_QUEUED: usize = 1_000_000;
/// Workers in a row that die before they are ready break the pool.
const EARLY_DEATHS: u32 = 3;
pub const DEFAULT_RETRIES: u32 = 1;
const RESULT_BATCH_BYTES: usize = 1 << 20;

pub enum Event {
    Submit(Vec<PoolTask>),
    Close,
    Terminate,
    /// The client's request stream ended: a pool still running is terminated.
    ClientEof,
    WorkerStarted(Proc),
    WorkerStartFailed(String),
    WorkerReady {
        node: String,
        process_id: String,
    },
    WorkerResults {
        process_id: String,
        results: Vec<PoolTaskResult>,
    },
    WorkerInitFailed {
        process_id: String,
        message: String,
    },
    WorkerExited(Proc),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Running,
    /// No new tasks; workers stop once the queue has drained.
    Closing,
    /// Workers are being stopped; every task is answered.
    Terminating,
}

pub struct Driver {
    pool_id: String,
    spec: CreatePool,
    core: Arc<Core>,
    pools: Arc<Pools>,
    events: UnboundedSender<Event>,
    out: mpsc::Sender<Result<PoolEvent, Status>>,
    schedule: Schedule,
    phase: Phase,
    broken: Option<String>,
    /// Start requests in flight.
    starting: usize,
    /// Workers started and not yet exited.
    live: HashSet<String>,
    stop_sent: HashSet<String>,
    next_worker: u32,
    early_deaths: u32,
    results: Vec<PoolTaskResult>,
}

impl Driver {
    pub fn new(
        pool_id: String,
        spec: CreatePool,
        core: Arc<Core>,
        pools: Arc<Pools>,
        events: UnboundedSender<Event>,
        out: mpsc::Sender<Result<PoolEvent, Status>>,
    ) -> Driver {
        let limits = Limits {
            // 0: adaptive (see `schedule`).
            window: spec.prefetch as usize,
            maxtasksperchild: spec.maxtasksperchild,
            max_retries: spec.max_retries.unwrap_or(DEFAULT_RETRIES),
        };
        Driver {
            pool_id,
            spec,
            core,
            pools,
            events,
            out,
            schedule: Schedule::new(limits),
            phase: Phase::Running,
            broken: None,
            starting: 0,
            live: HashSet::new(),
            stop_sent: HashSet::new(),
            next_worker: 0,
            early_deaths: 0,
            results: Vec::new(),
        }
    }

    /// Runs the pool until it is finished: `events` from its workers and
    /// the table, `commands` from its client.
    pub async fn run(
        mut self,
        mut events: UnboundedReceiver<Event>,
        mut commands: Receiver<Event>,
    ) {
        for _ in 0..self.spec.processes {
            self.start_worker();
        }
        tracing::info!(pool = %self.pool_id, processes = self.spec.processes, "pool created");
        let out = self.out.clone();
        let mut client_open = true;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.handle(ev),
                    None => break,
                },
                ev = commands.recv(), if client_open => match ev {
                    Some(ev) => self.handle(ev),
                    None => client_open = false,
                },
                permit = out.reserve(), if !self.results.is_empty() => match permit {
                    Ok(permit) => permit.send(Ok(self.next_results())),
                    Err(_) => self.client_gone(),
                },
            }
            while let Ok(ev) = events.try_recv() {
                self.handle(ev);
            }
            while let Ok(ev) = commands.try_recv() {
                self.handle(ev);
            }
            self.dispatch();
            if self.finished() {
                break;
            }
        }
        self.pools.remove(&self.pool_id);
        // Every answer before the end, as the client reads them.
        while !self.results.is_empty() {
            let results = self.next_results();
            if out.send(Ok(results)).await.is_err() {
                break;
            }
        }
        let _ = out
            .send(Ok(PoolEvent {
                msg: Some(pool_event::Msg::Finished(PoolFinished {
                    error: self.broken.clone().unwrap_or_default(),
                })),
            }))
            .await;
        tracing::info!(pool = %self.pool_id, broken = ?self.broken, "pool finished");
    }

    /// The next message of results: everything new, or about 1 MiB of it.
    fn next_results(&mut self) -> PoolEvent {
        let mut bytes = 0;
        let n = self
            .results
            .iter()
            .take_while(|r| {
                bytes += prost::Message::encoded_len(*r);
                bytes < RESULT_BATCH_BYTES
            })
            .count()
            .max(1);
        let results: Vec<PoolTaskResult> = self.results.drain(..n).collect();
        PoolEvent {
            msg: Some(pool_event::Msg::Results(PoolResults { results })),
        }
    }

    fn client_gone(&mut self) {
        self.terminate(
            PoolErrorKind::Terminated,
            "the pool's client went away; the pool was terminated",
        );
        self.results.clear();
    }

    /// The pool's record of worker `id`, made on whichever of its start and
    /// its ready comes first.
    fn worker(&mut self, id: &str) -> &mut Worker {
        self.schedule.workers.entry(id.to_owned()).or_default()
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Submit(tasks) => self.submit(tasks),
            Event::Close => {
                if self.phase == Phase::Running {
                    self.phase = Phase::Closing;
                }
            }
            Event::Terminate => {
                self.terminate(PoolErrorKind::Terminated, "the pool was terminated")
            }
            Event::ClientEof => {
                if self.phase == Phase::Running {
                    self.terminate(
                        PoolErrorKind::Terminated,
                        "the pool's client went away; the pool was terminated",
                    )
                }
            }
            Event::WorkerStarted(info) => {
                self.starting -= 1;
                let w = self.worker(&info.id);
                w.name = info.name.clone();
                if w.node.is_empty() {
                    w.node = info.node.clone();
                }
                self.live.insert(info.id.clone());
                if self.phase == Phase::Terminating {
                    self.signal(&info.id);
                }
            }
            Event::WorkerStartFailed(message) => {
                self.starting -= 1;
                self.break_pool(format!("cannot start pool workers: {message}"));
            }
            Event::WorkerReady { node, process_id } => {
                self.early_deaths = 0;
                let w = self.worker(&process_id);
                w.ready = true;
                w.node = node;
            }
            Event::WorkerResults {
                process_id,
                results,
            } => {
                self.schedule
                    .answered(&process_id, results.len(), std::time::Instant::now());
                for r in results {
                    if let Some(r) = self.schedule.completed(&process_id, r) {
                        self.results.push(r);
                    }
                }
            }
            Event::WorkerInitFailed {
                process_id,
                message,
            } => {
                let (name, node) = self
                    .schedule
                    .workers
                    .get(&process_id)
                    .map(|w| (w.name.clone(), w.node.clone()))
                    .unwrap_or_default();
                self.break_pool(format!(
                    "the initializer {:?} failed in worker {name} ({process_id}) on node {node}: {message}",
                    self.spec.initializer
                ));
            }
            Event::WorkerExited(info) => self.worker_exited(info),
        }
    }

    fn submit(&mut self, tasks: Vec<PoolTask>) {
        let refuse = match (&self.broken, self.phase) {
            (Some(why), _) => Some((PoolErrorKind::PoolBroken, why.clone())),
            (None, Phase::Running) if self.schedule.queued() + tasks.len() > MAX_QUEUED => Some((
                PoolErrorKind::PoolBroken,
                format!("the pool already holds {MAX_QUEUED} queued tasks; submit more as results come back"),
            )),
            (None, Phase::Running) => None,
            (None, _) => Some((PoolErrorKind::PoolBroken, "Pool not running".to_owned())),
        };
        match refuse {
            None => {
                self.core.metrics().pool_tasks(tasks.len() as u64);
                self.schedule.submit(tasks)
            }
            Some((kind, message)) => self.results.extend(
                tasks
                    .iter()
                    .map(|t| schedule::failure(t.id, kind, message.clone())),
            ),
        }
    }

    fn terminate(&mut self, kind: PoolErrorKind, message: &str) {
        if self.phase == Phase::Terminating {
            return;
        }
        self.phase = Phase::Terminating;
        self.results.extend(self.schedule.fail_all(kind, message));
        let live: Vec<String> = self.live.iter().cloned().collect();
        for id in live {
            self.signal(&id);
        }
    }

    fn break_pool(&mut self, why: String) {
        if self.broken.is_some() {
            return;
        }
        tracing::warn!(pool = %self.pool_id, reason = %why, "pool broken");
        self.broken = Some(why.clone());
        self.terminate(PoolErrorKind::PoolBroken, &why);
    }

    fn worker_exited(&mut self, info: Proc) {
        self.live.remove(&info.id);
        let was_ready = self.schedule.workers.get(&info.id).is_some_and(|w| w.ready);
        let exitcode = info.exitcode;
        let retried = self.schedule.retried;
        let failed = self.schedule.worker_exited(&info.id, exitcode);
        let metrics = self.core.metrics();
        metrics.pool_retries(self.schedule.retried - retried);
        metrics.pool_worker_lost(
            failed
                .iter()
                .filter(|r| {
                    r.error
                        .as_ref()
                        .is_some_and(|e| e.kind == PoolErrorKind::WorkerLost as i32)
                })
                .count() as u64,
        );
        self.results.extend(failed);
        if info.state == ProcState::Failed {
            self.break_pool(format!(
                "cannot start pool worker {}: {}",
                info.name, info.start_error
            ));
        } else if !was_ready && self.phase != Phase::Terminating && exitcode != Some(0) {
            self.early_deaths += 1;
            if self.early_deaths >= EARLY_DEATHS {
                let how = match exitcode {
                    Some(c) => format!("exited with {c}"),
                    None => "was lost".to_owned(),
                };
                self.break_pool(format!(
                    "{EARLY_DEATHS} pool workers in a row exited before they were ready; the last, {} on node {}, {how} (see `mpctl logs {}`)",
                    info.name, info.node, info.id
                ));
            }
        }
        let wanted = match self.phase {
            Phase::Running => true,
            Phase::Closing => !self.schedule.is_drained(),
            Phase::Terminating => false,
        };
        if wanted && self.broken.is_none() {
            self.start_worker();
        }
    }

    /// Sends new tasks, stops workers of a drained closed pool, and flushes
    /// results to the client.
    fn dispatch(&mut self) {
        if self.phase != Phase::Terminating {
            for (worker, node, tasks) in self.schedule.assign() {
                // A node that is not connected keeps the tasks outstanding;
                // they are rerun when its worker is declared lost.
                self.core.send_to_node(
                    &node,
                    ToAgent::PoolTasks(PoolTasks {
                        process_id: worker,
                        tasks,
                    }),
                );
            }
        }
        if self.phase == Phase::Closing && self.schedule.is_drained() {
            let ready: Vec<(String, String)> = self
                .schedule
                .workers
                .iter()
                .filter(|(id, w)| w.ready && !self.stop_sent.contains(*id))
                .map(|(id, w)| (id.clone(), w.node.clone()))
                .collect();
            for (id, node) in ready {
                self.core.send_to_node(
                    &node,
                    ToAgent::PoolWorkerStop(PoolWorkerStop {
                        process_id: id.clone(),
                    }),
                );
                self.stop_sent.insert(id);
            }
        }
        // As much as the client's channel takes now; the rest when it reads.
        let out = self.out.clone();
        while !self.results.is_empty() {
            match out.try_reserve() {
                Ok(permit) => permit.send(Ok(self.next_results())),
                Err(TrySendError::Full(())) => break,
                Err(TrySendError::Closed(())) => {
                    self.client_gone();
                    break;
                }
            }
        }
    }

    fn finished(&self) -> bool {
        let quiet = self.live.is_empty() && self.starting == 0;
        match self.phase {
            Phase::Running => false,
            Phase::Closing => quiet && self.schedule.is_drained(),
            Phase::Terminating => quiet,
        }
    }

    fn signal(&self, id: &str) {
        let core = Arc::clone(&self.core);
        let id = id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = core.signal(&id, libc::SIGTERM, false).await {
                tracing::warn!(process = %id, error = %e, "cannot terminate pool worker");
            }
        });
    }

    fn start_worker(&mut self) {
        self.next_worker += 1;
        self.starting += 1;
        let req = worker_request(&self.spec, &self.pool_id, self.next_worker);
        let core = Arc::clone(&self.core);
        let events = self.events.clone();
        tokio::spawn(async move {
            let info = match core.start_pool_worker(wire::start_spec(req)).await {
                Ok(info) => info,
                Err(e) => {
                    let _ = events.send(Event::WorkerStartFailed(e.to_string()));
                    return;
                }
            };
            let id = info.id.clone();
            let _ = events.send(Event::WorkerStarted(info));
            match core.join(&id, None).await {
                Ok((info, _)) => {
                    let _ = events.send(Event::WorkerExited(info));
                }
                Err(e) => {
                    tracing::error!(process = %id, error = %e, "pool worker vanished from the table");
                }
            }
        });
    }
}

/// The start request of a pool's `n`-th worker: a daemonic function target
/// (as CPython's pool workers are) whose function is the pool's initializer,
/// marked as a worker of `pool_id`.
pub(super) fn worker_request(spec: &CreatePool, pool_id: &str, n: u32) -> StartRequest {
    let forkserver = spec.start_method == StartMethod::Forkserver as i32;
    let (prefix, method) = if forkserver {
        ("ForkServer", StartMethod::Forkserver)
    } else {
        ("Spawn", StartMethod::Spawn)
    };
    StartRequest {
        name: format!("{prefix}PoolWorker-{n}"),
        placement: spec.placement.clone(),
        daemon: true,
        start_method: method as i32,
        function: Some(FunctionTarget {
            program: spec.program.clone(),
            program_args: spec.program_args.clone(),
            function: spec.initializer.clone(),
            args: spec.initargs.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            preload: spec.preload.clone(),
            pool_worker: Some(PoolWorkerTarget {
                pool_id: pool_id.to_owned(),
                maxtasksperchild: spec.maxtasksperchild,
            }),
        }),
        limits: spec.limits,
        ..Default::default()
    }
}
