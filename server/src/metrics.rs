//! The coordinator's metrics: the registry's families and the typed
//! methods the domain code calls.
//!
//! Two kinds of numbers:
//! - kept as they happen, in atomics ([`ServerMetrics`]): launch failures
//!   by reason, start→launched latency, store commit latency, pool tasks,
//!   retries and tasks failed with `WORKER_LOST`;
//! - read at scrape time ([`Snapshot`], under the table lock for a moment):
//!   processes by state, starts and settlements by outcome (counted by the
//!   table itself as it changes), the queue, agents by state, slots and
//!   running processes per agent (the same numbers `mpctl agents` shows),
//!   and failed handshakes by reason (counted by the transport).
//!
//! Labels are bounded: states, outcomes and reasons are fixed sets; `node`
//! is an agent's name (bounded by the cluster); no process ids.

use std::sync::Arc;
use std::time::Duration;

use mpctl_metrics::reasons::{launch_failure_index, LAUNCH_FAILURES};
use mpctl_metrics::{Registry, Seconds};
use mpctl_transport::HandshakeFailures;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::core::model::{AgentState, Counts, Outcome, ProcState};
use crate::core::Core;

/// Counters and histograms kept as things happen. Clones of the counters
/// are registered; every method is a relaxed atomic add.
#[derive(Debug)]
pub struct ServerMetrics {
    launch_failures: Family<Vec<(&'static str, &'static str)>, Counter>,
    launch_failure_by_reason: Vec<Counter>,
    start_to_launched: Seconds,
    store_commit: Seconds,
    pool_tasks: Counter,
    pool_retries: Counter,
    pool_worker_lost: Counter,
}

impl ServerMetrics {
    /// `store_commit` is the store's own histogram ([`crate::store::Store::commit_seconds`]).
    pub fn new(store_commit: Seconds) -> ServerMetrics {
        let launch_failures = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        // Every label made once, here: the hot path touches the atomic only.
        let launch_failure_by_reason = LAUNCH_FAILURES
            .iter()
            .map(|r| launch_failures.get_or_create(&vec![("reason", *r)]).clone())
            .collect();
        ServerMetrics {
            launch_failures,
            launch_failure_by_reason,
            start_to_launched: Seconds::default(),
            store_commit,
            pool_tasks: Counter::default(),
            pool_retries: Counter::default(),
            pool_worker_lost: Counter::default(),
        }
    }

    /// A node could not start a process; `error` is its reason as text.
    pub fn launch_failed(&self, error: &str) {
        self.launch_failure_by_reason[launch_failure_index(error)].inc();
    }

    /// A process was confirmed launched `d` after its start was recorded.
    pub fn launched_after(&self, d: Duration) {
        self.start_to_launched.observe(d);
    }

    /// A pool accepted `n` tasks.
    pub fn pool_tasks(&self, n: u64) {
        self.pool_tasks.inc_by(n);
    }

    /// `n` pool tasks were queued again after their worker died.
    pub fn pool_retries(&self, n: u64) {
        self.pool_retries.inc_by(n);
    }

    /// `n` pool tasks failed with `WORKER_LOST` (out of retries).
    pub fn pool_worker_lost(&self, n: u64) {
        self.pool_worker_lost.inc_by(n);
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "mpctl_launch_failures",
            "Processes a node could not start, by reason",
            self.launch_failures.clone(),
        );
        r.register(
            "mpctl_start_to_launched_seconds",
            "Time from a start recorded to its launch confirmed by the node (queueing included)",
            self.start_to_launched.clone(),
        );
        r.register(
            "mpctl_store_commit_seconds",
            "Time of one state database commit (one transaction and its sync, for a group of batches)",
            self.store_commit.clone(),
        );
        r.register(
            "mpctl_pool_tasks",
            "Tasks accepted by pools",
            self.pool_tasks.clone(),
        );
        r.register(
            "mpctl_pool_task_retries",
            "Pool tasks run again because their worker died while running them",
            self.pool_retries.clone(),
        );
        r.register(
            "mpctl_pool_tasks_worker_lost",
            "Pool tasks failed with WORKER_LOST: their worker died and no retry was left",
            self.pool_worker_lost.clone(),
        );
    }
}

/// One agent's load, as `mpctl agents` and the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentLoad {
    pub name: String,
    pub state: AgentState,
    pub slots: u32,
    /// Launching or started.
    pub used: u32,
    /// Started.
    pub running: u32,
}

/// What a scrape reads from the table, in one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub counts: Counts,
    /// Age of the oldest queued process (wall clock).
    pub oldest_queued: Option<Duration>,
    pub agents: Vec<AgentLoad>,
}

fn agent_state_label(s: AgentState) -> &'static str {
    match s {
        AgentState::Ready => "ready",
        AgentState::Disconnected => "disconnected",
        AgentState::Lost => "lost",
    }
}

/// Registers the coordinator's families, reading from `core`, and the
/// failed handshakes of its listener, in `registry`.
pub fn register(registry: &mut Registry, core: Arc<Core>, handshakes: Arc<HandshakeFailures>) {
    core.metrics().register(registry);
    registry.register_collector(Box::new(Scrape { core, handshakes }));
}

struct Scrape {
    core: Arc<Core>,
    handshakes: Arc<HandshakeFailures>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

/// Writes one family of constant values.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn one<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: M,
) -> Result<(), std::fmt::Error> {
    value.encode(encoder.encode_descriptor(name, help, None, kind)?)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.core.snapshot();
        let c = &s.counts;
        one(
            &mut e,
            "mpctl_process_starts",
            "New processes recorded by this coordinator since it started",
            MetricType::Counter,
            ConstCounter::new(c.starts),
        )?;
        family(
            &mut e,
            "mpctl_process_exits",
            "Processes settled since this coordinator started, by outcome (exit_ok: code 0, exit_error: code > 0, signal: killed, start_error: could not start, lost: with its node)",
            MetricType::Counter,
            Outcome::ALL.map(|o| {
                (
                    vec![("outcome", o.label().to_owned())],
                    ConstCounter::new(c.outcomes[o.index()]),
                )
            }),
        )?;
        family(
            &mut e,
            "mpctl_processes",
            "Processes in the table, by state",
            MetricType::Gauge,
            ProcState::ALL.map(|st| {
                (
                    vec![("state", st.label().to_owned())],
                    ConstGauge::new(c.by_state[st.index()] as i64),
                )
            }),
        )?;
        one(
            &mut e,
            "mpctl_queue_depth",
            "Processes waiting for a free slot",
            MetricType::Gauge,
            ConstGauge::new(c.by_state[ProcState::Queued.index()] as i64),
        )?;
        one(
            &mut e,
            "mpctl_queue_oldest_age_seconds",
            "How long the oldest queued process has waited (0 with an empty queue)",
            MetricType::Gauge,
            ConstGauge::new(s.oldest_queued.unwrap_or_default().as_secs_f64()),
        )?;
        let states = [
            AgentState::Ready,
            AgentState::Disconnected,
            AgentState::Lost,
        ];
        family(
            &mut e,
            "mpctl_agents",
            "Agents known to the coordinator, by state",
            MetricType::Gauge,
            states.map(|st| {
                let n = s.agents.iter().filter(|a| a.state == st).count();
                (
                    vec![("state", agent_state_label(st).to_owned())],
                    ConstGauge::new(n as i64),
                )
            }),
        )?;
        let per_agent = |f: fn(&AgentLoad) -> u32| {
            s.agents
                .iter()
                .map(move |a| (vec![("node", a.name.clone())], ConstGauge::new(f(a) as i64)))
                .collect::<Vec<_>>()
        };
        family(
            &mut e,
            "mpctl_agent_slots",
            "Processes an agent may run at once",
            MetricType::Gauge,
            per_agent(|a| a.slots),
        )?;
        family(
            &mut e,
            "mpctl_agent_slots_used",
            "Slots in use on an agent (processes launching or started)",
            MetricType::Gauge,
            per_agent(|a| a.used),
        )?;
        family(
            &mut e,
            "mpctl_agent_processes_running",
            "Processes started and not yet exited on an agent",
            MetricType::Gauge,
            per_agent(|a| a.running),
        )?;
        family(
            &mut e,
            "mpctl_handshake_failures",
            "Connections to the coordinator that failed before authentication, by reason",
            MetricType::Counter,
            self.handshakes
                .snapshot()
                .map(|(reason, n)| (vec![("reason", reason.to_owned())], ConstCounter::new(n))),
        )?;
        Ok(())
    }
}
