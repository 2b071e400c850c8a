//! The operations of `ProcessManager` on processes: start, get, list,
//! join, wait, signal. Each takes the lock, runs a transition of
//! [`super::super::procs`], applies its effects, and waits outside the lock
//! for what its caller needs.

use super::*;

impl Core {
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

    async fn start_checked(&self, mut spec: StartSpec) -> Result<Proc, CoreError> {
        let fork = spec.method == Method::Fork;
        let (id, pending) = {
            let mut st = self.lock();
            // A new process gets its span; a retried request keeps its own.
            if spec.request_id.is_empty() || st.table.by_request(&spec.request_id).is_none() {
                spec.trace = ProcTrace::start();
            }
            let started = match procs::start(&mut st.table, spec, new_id, now_ms()) {
                Ok(s) => s,
                Err(e) => {
                    // Refused: what it counted stays, with nothing to commit.
                    st.table.take_undo();
                    return Err(e);
                }
            };
            if started.created {
                st.start_clock.insert(started.id.clone(), Instant::now());
            }
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

    /// Whether process `id` is running (launching or started): a job
    /// credential is only honoured while its process is.
    pub fn is_alive(&self, id: &str) -> bool {
        self.lock()
            .table
            .get(id)
            .is_some_and(|p| p.state.is_active())
    }

    /// Longest parent chain [`Core::descends_from`] walks.
    const MAX_DEPTH: usize = 10_000;

    /// Whether `id` is a strict descendant of `ancestor` (its child, its
    /// child's child, ...).
    pub fn descends_from(&self, id: &str, ancestor: &str) -> bool {
        let st = self.lock();
        let mut cur = st.table.get(id);
        // Bounded: no real tree is this deep, and a cycle must not hang us.
        for _ in 0..Self::MAX_DEPTH {
            let Some(p) = cur else { return false };
            if p.parent_id.is_empty() {
                return false;
            }
            if p.parent_id == ancestor {
                return true;
            }
            cur = st.table.get(&p.parent_id);
        }
        false
    }

    /// The process as last committed.
    pub fn get(&self, id: &str) -> Result<Proc, CoreError> {
        self.lock()
            .durable(id)
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
            .filter_map(|p| st.durable(&p.id))
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
        let ready = |t: &Durable| -> Vec<Proc> {
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
        Ok(found.unwrap_or_else(|| ready(&Durable(&self.lock()))))
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
}
