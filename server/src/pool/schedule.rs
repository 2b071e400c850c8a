//! Which task runs on which worker: the pool's queue, each worker's prefetch
//! window, and what happens to a worker's tasks when it dies. Pure state, no
//! I/O: the [`super::driver`] feeds it events and carries out its answers.
//!
//! A worker runs its tasks in the order it received them and reports each
//! result before it starts the next, so when a worker dies with tasks
//! outstanding, the first of them is the one it was running: that task is
//! charged an attempt (retried, or failed with `WORKER_LOST` past the
//! limit); the ones behind it go back to the front of the queue uncharged.
//!
//! The prefetch window adapts to the tasks unless the pool fixed it: it
//! holds about [`PREFETCH_TARGET`] of work per worker (estimated from how
//! fast busy workers answer), at least 2 tasks and at most
//! [`MAX_ADAPTIVE_WINDOW`]. Tiny tasks then travel many per round trip, and
//! long ones leave at most one task waiting behind the running one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use mpctl_proto::v1::{PoolErrorKind, PoolTask, PoolTaskError, PoolTaskResult};

pub struct Task {
    pub task: PoolTask,
    /// How many times it was handed to a worker that then died running it.
    pub lost: u32,
}

/// Work queued ahead per worker when the window adapts.
pub const PREFETCH_TARGET: Duration = Duration::from_millis(2);
pub const MAX_ADAPTIVE_WINDOW: usize = 256;
const MIN_WINDOW: usize = 2;

#[derive(Default)]
pub struct Worker {
    pub name: String,
    pub node: String,
    /// Connected and initialized: takes tasks.
    pub ready: bool,
    /// Tasks sent to it, in order, not yet answered.
    pub inflight: VecDeque<u64>,
    /// Tasks ever sent to it (for maxtasksperchild).
    pub assigned: u32,
    /// When it last answered while busy (for the service-time estimate).
    last_answer: Option<Instant>,
}

pub struct Limits {
    /// Tasks outstanding per worker; 0: adaptive.
    pub window: usize,
    /// Tasks per worker before it exits; 0: unlimited.
    pub maxtasksperchild: u32,
    /// Reruns of a task whose worker died.
    pub max_retries: u32,
}

pub struct Schedule {
    limits: Limits,
    queue: VecDeque<Task>,
    running: HashMap<u64, Task>,
    pub workers: BTreeMap<String, Worker>,
    /// Moving average of the time a busy worker takes per task.
    service: Option<Duration>,
    /// Tasks queued again after their worker died, since the pool began.
    pub retried: u64,
}

/// The answer that fails task `id`.
pub fn failure(id: u64, kind: PoolErrorKind, message: String) -> PoolTaskResult {
    PoolTaskResult {
        id,
        values: Vec::new(),
        error: Some(PoolTaskError {
            kind: kind as i32,
            message,
            ..Default::default()
        }),
    }
}

impl Schedule {
    pub fn new(limits: Limits) -> Schedule {
        Schedule {
            limits,
            queue: VecDeque::new(),
            running: HashMap::new(),
            workers: BTreeMap::new(),
            service: None,
            retried: 0,
        }
    }

    pub fn submit(&mut self, tasks: impl IntoIterator<Item = PoolTask>) {
        self.queue
            .extend(tasks.into_iter().map(|task| Task { task, lost: 0 }));
    }

    /// Nothing queued and nothing outstanding.
    pub fn is_drained(&self) -> bool {
        self.queue.is_empty() && self.running.is_empty()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// How many more tasks `w` may be sent now.
    fn room(&self, w: &Worker) -> usize {
        if !w.ready {
            return 0;
        }
        let window = self.window().saturating_sub(w.inflight.len());
        match self.limits.maxtasksperchild {
            0 => window,
            max => window.min(max.saturating_sub(w.assigned) as usize),
        }
    }

    /// The current window: fixed, or about [`PREFETCH_TARGET`] of work.
    pub fn window(&self) -> usize {
        if self.limits.window > 0 {
            return self.limits.window;
        }
        match self.service {
            None => MIN_WINDOW,
            Some(s) => {
                let per = s.as_nanos().max(1);
                let n = PREFETCH_TARGET.as_nanos().div_ceil(per) as usize + 1;
                n.clamp(MIN_WINDOW, MAX_ADAPTIVE_WINDOW)
            }
        }
    }

    /// `n` answers from `worker` arrived at `now`: if it stayed busy since its
    /// previous answer, that stretch over `n` is a sample of the service time.
    pub fn answered(&mut self, worker: &str, n: usize, now: Instant) {
        let Some(w) = self.workers.get_mut(worker) else {
            return;
        };
        let busy = w.inflight.len() >= n && n > 0;
        let sample = match (w.last_answer, busy) {
            (Some(prev), true) => Some(now.saturating_duration_since(prev) / n as u32),
            _ => None,
        };
        // Still busy after these answers: the next stretch starts now.
        w.last_answer = (w.inflight.len() > n).then_some(now);
        if let Some(s) = sample {
            self.service = Some(match self.service {
                None => s,
                Some(avg) => (avg * 4 + s) / 5,
            });
        }
    }

    /// Hands queued tasks to ready workers with room, one at a time to the
    /// least loaded, so the load stays even. Returns each worker's batch.
    pub fn assign(&mut self) -> Vec<(String, String, Vec<PoolTask>)> {
        let mut batches: BTreeMap<String, Vec<PoolTask>> = BTreeMap::new();
        while !self.queue.is_empty() {
            let pick = self
                .workers
                .iter()
                .filter(|(_, w)| self.room(w) > 0)
                .min_by_key(|(_, w)| w.inflight.len())
                .map(|(id, _)| id.clone());
            let Some(id) = pick else { break };
            let task = self.queue.pop_front().expect("checked non-empty");
            let w = self.workers.get_mut(&id).expect("picked above");
            w.inflight.push_back(task.task.id);
            w.assigned += 1;
            batches.entry(id).or_default().push(task.task.clone());
            self.running.insert(task.task.id, task);
        }
        batches
            .into_iter()
            .map(|(id, tasks)| {
                let node = self.workers[&id].node.clone();
                (id, node, tasks)
            })
            .collect()
    }

    /// A worker's answer for one task; `None` if the task is not its (stale).
    pub fn completed(&mut self, worker: &str, result: PoolTaskResult) -> Option<PoolTaskResult> {
        let w = self.workers.get_mut(worker)?;
        let at = w.inflight.iter().position(|id| *id == result.id)?;
        w.inflight.remove(at);
        let task = self.running.remove(&result.id)?;
        let mut result = result;
        if let Some(e) = result.error.as_mut() {
            e.attempts = task.lost + 1;
        }
        Some(result)
    }

    /// The worker has exited (`exitcode` None: its node was lost). Returns the
    /// tasks that failed for good; the others are queued again.
    pub fn worker_exited(&mut self, worker: &str, exitcode: Option<i32>) -> Vec<PoolTaskResult> {
        let Some(w) = self.workers.remove(worker) else {
            return Vec::new();
        };
        let mut failed = Vec::new();
        let mut back = Vec::new();
        for (i, id) in w.inflight.iter().enumerate() {
            let Some(mut task) = self.running.remove(id) else {
                continue;
            };
            if i == 0 {
                task.lost += 1;
                if task.lost <= self.limits.max_retries {
                    self.retried += 1;
                }
                if task.lost > self.limits.max_retries {
                    let how = match exitcode {
                        Some(c) if c < 0 => format!("was killed by signal {}", -c),
                        Some(c) => format!("exited with code {c}"),
                        None => format!("was lost with node {}", w.node),
                    };
                    let mut r = failure(
                        *id,
                        PoolErrorKind::WorkerLost,
                        format!(
                            "worker {} ({worker}) on node {} {how} while running this task (attempt {} of {})",
                            w.name,
                            w.node,
                            task.lost,
                            self.limits.max_retries + 1
                        ),
                    );
                    let e = r.error.as_mut().expect("set above");
                    e.worker = worker.to_owned();
                    e.worker_name = w.name.clone();
                    e.node = w.node.clone();
                    e.exitcode = exitcode;
                    e.attempts = task.lost;
                    failed.push(r);
                    continue;
                }
            }
            back.push(task);
        }
        for task in back.into_iter().rev() {
            self.queue.push_front(task);
        }
        failed
    }

    /// Fails everything queued and outstanding (terminate, broken pool).
    pub fn fail_all(&mut self, kind: PoolErrorKind, message: &str) -> Vec<PoolTaskResult> {
        let mut ids: Vec<u64> = self.queue.drain(..).map(|t| t.task.id).collect();
        ids.extend(self.running.drain().map(|(id, _)| id));
        for w in self.workers.values_mut() {
            w.inflight.clear();
        }
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| failure(id, kind, message.to_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64) -> PoolTask {
        PoolTask {
            id,
            function: "f".into(),
            items: b"[1]".to_vec(),
            count: 1,
        }
    }

    fn ok(id: u64) -> PoolTaskResult {
        PoolTaskResult {
            id,
            values: b"[1]".to_vec(),
            error: None,
        }
    }

    fn schedule(window: usize, maxtasks: u32, retries: u32) -> Schedule {
        let mut s = Schedule::new(Limits {
            window,
            maxtasksperchild: maxtasks,
            max_retries: retries,
        });
        for w in ["a", "b"] {
            let worker = Worker {
                name: w.into(),
                node: "n1".into(),
                ready: true,
                ..Default::default()
            };
            s.workers.insert(w.into(), worker);
        }
        s
    }

    fn ids(batches: &[(String, String, Vec<PoolTask>)], worker: &str) -> Vec<u64> {
        batches
            .iter()
            .filter(|(w, _, _)| w == worker)
            .flat_map(|(_, _, t)| t.iter().map(|t| t.id))
            .collect()
    }

    #[test]
    fn tasks_spread_evenly_within_the_window() {
        let mut s = schedule(2, 0, 0);
        s.submit((1..=5).map(task));
        let b = s.assign();
        assert_eq!(ids(&b, "a"), vec![1, 3]);
        assert_eq!(ids(&b, "b"), vec![2, 4]);
        assert_eq!(s.queued(), 1);
        assert!(s.completed("a", ok(1)).is_some());
        let b = s.assign();
        assert_eq!(ids(&b, "a"), vec![5]);
        // A result for a task the worker does not hold is stale.
        assert!(s.completed("b", ok(1)).is_none());
    }

    #[test]
    fn maxtasksperchild_caps_what_a_worker_is_sent() {
        let mut s = schedule(10, 3, 0);
        s.submit((1..=10).map(task));
        let b = s.assign();
        assert_eq!(ids(&b, "a").len(), 3);
        assert_eq!(ids(&b, "b").len(), 3);
        assert_eq!(s.queued(), 4);
    }

    #[test]
    fn a_dead_workers_running_task_is_retried_then_lost_and_the_rest_requeued() {
        let mut s = schedule(3, 0, 1);
        s.submit((1..=3).map(task));
        s.workers.get_mut("b").unwrap().ready = false;
        assert_eq!(ids(&s.assign(), "a"), vec![1, 2, 3]);
        // First death: task 1 is charged and retried; 2 and 3 go back uncharged.
        assert!(s.worker_exited("a", Some(-9)).is_empty());
        assert_eq!(s.queued(), 3);
        s.workers.get_mut("b").unwrap().ready = true;
        assert_eq!(ids(&s.assign(), "b"), vec![1, 2, 3]);
        let failed = s.worker_exited("b", Some(-9));
        assert_eq!(failed.len(), 1);
        let e = failed[0].error.as_ref().unwrap();
        assert_eq!(failed[0].id, 1);
        assert_eq!(e.kind, PoolErrorKind::WorkerLost as i32);
        assert_eq!(
            (e.exitcode, e.attempts, e.node.as_str()),
            (Some(-9), 2, "n1")
        );
        assert_eq!(e.worker, "b");
        assert_eq!(s.queued(), 2);
    }

    #[test]
    fn the_window_adapts_to_the_service_time() {
        let mut s = schedule(0, 0, 0);
        assert_eq!(s.window(), 2, "no estimate yet");
        s.submit((1..=4).map(task));
        s.assign();
        let t0 = Instant::now();
        // Worker a answers one task and is still busy: the clock starts.
        s.answered("a", 1, t0);
        assert!(s.completed("a", ok(1)).is_some());
        // Its next answer 10 µs later: ~10 µs per task → ~200 tasks of 2 ms.
        s.answered("a", 1, t0 + Duration::from_micros(10));
        let w = s.window();
        assert!((150..=MAX_ADAPTIVE_WINDOW).contains(&w), "{w}");
        // Slow tasks (10 ms each) bring it back down to the minimum.
        for i in 1..=20 {
            s.workers
                .get_mut("b")
                .unwrap()
                .inflight
                .extend([100 + i, 200 + i]);
            s.answered("b", 1, t0 + Duration::from_millis(10 * i));
        }
        assert_eq!(s.window(), 2);
    }

    #[test]
    fn fail_all_answers_every_task_once() {
        let mut s = schedule(1, 0, 0);
        s.submit((1..=4).map(task));
        s.assign();
        let failed = s.fail_all(PoolErrorKind::Terminated, "terminated");
        assert_eq!(
            failed.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(s.is_drained());
    }
}
