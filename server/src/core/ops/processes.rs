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
            .wait_until(&ids, Some(deadline), |t| match t.get(id) {
                None => Some(None),
                Some(p) => (p.state != ProcState::Launching).then(|| Some(p.clone())),
            })
            .await
            .flatten();
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
        Self::descends(&self.lock().table, id, ancestor)
    }

    fn descends(t: &Table, id: &str, ancestor: &str) -> bool {
        let mut cur = t.get(id);
        // Bounded: no real tree is this deep, and a cycle must not hang us.
        for _ in 0..Self::MAX_DEPTH {
            let Some(p) = cur else { return false };
            if p.parent_id.is_empty() {
                return false;
            }
            if p.parent_id == ancestor {
                return true;
            }
            cur = t.get(&p.parent_id);
        }
        false
    }

    /// The process as last committed; `Removed` once retention's removal
    /// of it is committed.
    pub fn get(&self, id: &str) -> Result<Proc, CoreError> {
        let st = self.lock();
        match st.durable(id) {
            Some(p) => Ok(p.clone()),
            None if Durable(&st).was_removed(id) => Err(CoreError::Removed(id.to_owned())),
            None => Err(CoreError::UnknownProcess(id.to_owned())),
        }
    }

    /// One page of the processes (all, or not stopped/failed), optionally
    /// of one node, of the descendants of `within` if given, oldest first (by creation, then id), each as `view`
    /// shows it (under the lock, so nothing is copied that the caller does
    /// not need): up to `limit` rows after `after`, and whether more follow.
    pub fn list_page<T>(
        &self,
        all: bool,
        node: &str,
        within: Option<&str>,
        after: Option<&table::Cursor>,
        limit: usize,
        view: impl Fn(&Proc) -> T,
    ) -> (Vec<(table::Cursor, T)>, bool) {
        let st = self.lock();
        // The listing order holds every process in the table; each is shown
        // as last committed (a start not yet durable is skipped). A removal
        // not yet committed has already left the order: for that moment the
        // row is missing from listings, while get/wait still show it.
        let (rows, more) = st.table.page(after, limit, |id| {
            st.durable(id)
                .filter(|p| (all || !p.state.is_final()) && (node.is_empty() || p.node == node))
                .filter(|p| within.is_none_or(|me| Self::descends(&st.table, &p.id, me)))
        });
        let rows = rows
            .into_iter()
            .map(|p| ((p.created_unix_ms, p.id.clone()), view(p)))
            .collect();
        (rows, more)
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
            .wait_until(&ids, deadline, |t| match t.get(id) {
                // Removed by retention meanwhile: it had finished.
                None => Some(None),
                Some(p) => p.state.is_settled().then(|| Some(p.clone())),
            })
            .await;
        match settled {
            Some(Some(p)) => Ok((p, false)),
            Some(None) => Err(CoreError::Removed(id.to_owned())),
            None => Ok((self.get(id)?, true)),
        }
    }

    /// Sentinel wait: the settled subset (any), or all of them (all), each
    /// as `view` shows it with its index in `ids`, from index `from` on.
    /// `wait` false (a later page): no waiting, the subset as it is now. A
    /// process removed by retention (it had finished) is ready; `view` gets
    /// `None` for it.
    pub async fn wait<T>(
        &self,
        ids: &[String],
        timeout: Option<Duration>,
        all: bool,
        from: usize,
        wait: bool,
        view: impl Fn(&str, Option<&Proc>) -> T,
    ) -> Result<Vec<(usize, T)>, CoreError> {
        if ids.is_empty() {
            return Err(CoreError::WaitNoIds);
        }
        if ids.len() > validate::MAX_WAIT_IDS {
            return Err(CoreError::WaitTooMany {
                max: validate::MAX_WAIT_IDS,
                got: ids.len(),
            });
        }
        if wait {
            for id in ids {
                self.get(id)?;
            }
        }
        let is_ready = |t: &Durable, id: &str| t.get(id).is_none_or(|p| p.state.is_settled());
        let ready = |t: &Durable| -> Vec<(usize, T)> {
            ids.iter()
                .enumerate()
                .skip(from)
                .filter(|(_, id)| is_ready(t, id))
                .map(|(i, id)| (i, view(id, t.get(id))))
                .collect()
        };
        if !wait {
            return Ok(ready(&Durable(&self.lock())));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        self.wait_until(ids, deadline, |t| {
            let n = ids.iter().filter(|id| is_ready(t, id)).count();
            let done = if all { n == ids.len() } else { n > 0 };
            done.then_some(())
        })
        .await;
        Ok(ready(&Durable(&self.lock())))
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
