//! The operations of `AgentService`: register, reports (launched, launch
//! failed, exited), the end of a session and the lease clock.

use super::*;

impl Core {
    /// The node credentials read back from the store (at start-up).
    pub fn restore_node_credentials(&self, rows: Vec<(String, [u8; 32], i64)>) {
        *self.identities() = identity::NodeIdentities::restore(rows);
    }

    fn identities(&self) -> std::sync::MutexGuard<'_, identity::NodeIdentities> {
        self.identities.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether agent `name` presenting `presented` may register (before
    /// anything of it touches the table). A first registration is issued a
    /// credential, durable before this returns it. A refusal leaves the
    /// live session of that name untouched.
    pub async fn admit_node(
        &self,
        name: &str,
        presented: &[u8],
        remote: std::net::SocketAddr,
    ) -> Result<Option<[u8; 32]>, CoreError> {
        let admitted = {
            let st = self.lock();
            let live = st.table.session(name).is_some();
            self.identities().admit(
                name,
                presented,
                live,
                remote,
                || mpctl_transport::credentials::new_node_credential().ok(),
                now_ms(),
            )
        };
        let (secret, hash, issued_ms) = match admitted {
            Err(refused) => {
                tracing::warn!(agent = %name, %remote, "registration refused: {refused}");
                return Err(refused.into());
            }
            Ok(identity::Admitted::Known) => return Ok(None),
            Ok(identity::Admitted::Issue {
                secret,
                hash,
                issued_ms,
            }) => (secret, hash, issued_ms),
        };
        let pending = {
            let mut fx = Effects::new();
            fx.node_credential(name, Some((hash, issued_ms)));
            self.apply(&mut self.lock(), fx)
        };
        if let Err(e) = pending.durable().await {
            self.identities().unissue(name, &hash);
            return Err(e.into());
        }
        tracing::info!(agent = %name, "issued a node credential");
        Ok(Some(secret))
    }

    /// `mpctl agents forget NAME`: clears the credential of a node no agent
    /// holds, durably. Returns whether there was one.
    pub async fn forget_agent(&self, name: &str) -> Result<bool, CoreError> {
        let had = {
            let st = self.lock();
            let live = st.table.session(name).is_some();
            self.identities().forget(name, live)?
        };
        let pending = {
            let mut fx = Effects::new();
            fx.node_credential(name, None);
            self.apply(&mut self.lock(), fx)
        };
        pending.durable().await?;
        tracing::info!(agent = %name, had_credential = had, "node credential forgotten");
        Ok(had)
    }

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
            let fx = crate::core::agents::register(
                &mut st.table,
                reg,
                generation,
                Instant::now(),
                now_ms(),
            );
            (generation, self.apply(&mut st, fx))
        };
        if let Err(e) = Self::durable(pending).await {
            // Rolled back: this session never was.
            self.outbox.close(&name, generation);
            tracing::warn!(agent = %name, error = %e, "agent registration not saved; it will register again");
            return Err(e);
        }
        tracing::info!(agent = %name, generation, "agent registered");
        Ok(generation)
    }

    /// Any message from the agent renews its lease.
    pub fn seen(&self, name: &str) {
        crate::core::agents::seen(&mut self.lock().table, name, Instant::now(), now_ms());
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
            if !fx.is_empty() {
                self.metrics.launch_failed(error);
            }
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

    /// The node reported again what it runs and which exits are
    /// unacknowledged (asked for after a rolled-back commit).
    pub fn resync(
        &self,
        agent: &str,
        generation: u64,
        running: Vec<(String, i32)>,
        exited: Vec<ExitReport>,
    ) {
        let pending = {
            let mut st = self.lock();
            let fx = crate::core::agents::resync(
                &mut st.table,
                agent,
                generation,
                running,
                exited,
                now_ms(),
            );
            self.apply(&mut st, fx)
        };
        in_background(pending);
    }

    /// The node's exit journal damage changed while connected.
    pub fn journal_damage(&self, agent: &str, damage: Option<model::JournalDamage>) {
        let pending = {
            let mut st = self.lock();
            let fx = crate::core::agents::journal_damage(&mut st.table, agent, damage);
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
            let Some(remaining) = crate::core::agents::disconnected(
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
            let fx = crate::core::agents::lease_expired(
                &mut st.table,
                agent,
                self.timings.lease,
                Instant::now(),
            );
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

    /// Schedules the lease check of a disconnected `agent` for when its
    /// lease runs out (again: after a rolled-back expiry or registration).
    pub fn recheck_lease(self: &Arc<Self>, agent: String) {
        let remaining = {
            let st = self.lock();
            let Some(a) = st.table.agent(&agent) else {
                return;
            };
            self.timings
                .lease
                .saturating_sub(Instant::now().saturating_duration_since(a.last_seen))
        };
        self.schedule_lease_check(agent, remaining);
    }

    /// Agents known from the store get one lease from start-up to reconnect.
    pub fn start_lease_clocks(self: &Arc<Self>) {
        let names: Vec<String> = self.lock().table.agents().keys().cloned().collect();
        for name in names {
            self.schedule_lease_check(name, self.timings.lease);
        }
    }

    /// Each agent, as `view` shows it (under the lock, so nothing is copied
    /// that the caller does not need).
    pub fn agents<T>(&self, view: impl Fn(&Agent) -> T) -> Vec<T> {
        self.lock().table.agents().values().map(view).collect()
    }

    /// Each agent with its started processes, as `view` shows them.
    pub fn agents_with_load<T>(&self, view: impl Fn(&Agent, u32) -> T) -> Vec<T> {
        let st = self.lock();
        st.table
            .agents()
            .values()
            .map(|a| view(a, st.table.started_on(&a.name)))
            .collect()
    }

    /// A receiver that sees every later change of the agent registry.
    pub fn agents_changed(&self) -> watch::Receiver<u64> {
        self.agents_changed.subscribe()
    }
}
