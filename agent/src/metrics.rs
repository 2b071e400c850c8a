//! The agent daemon's metrics: the registry's families and the typed
//! methods the session and the node state call. Names start with
//! `mpctl_node_` (this node's own view), so they never clash with the
//! coordinator's per-agent families (`mpctl_agent_*{node}`) when one
//! Prometheus scrapes both, or when `mpctl dev` serves both on one page.
//!
//! Counters and the histogram are atomics, touched on the launch and exit
//! paths; the gauges (running, launching, unacknowledged, connected) are
//! read from the node state at scrape time.
//!
//! Not exported here: the launcher's journal fsync latency and its live
//! forkservers. The launcher has no metrics endpoint and its protocol with
//! the agent does not report them yet.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mpctl_metrics::reasons::{launch_failure_index, LAUNCH_FAILURES};
use mpctl_metrics::{Registry, Seconds};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::state::NodeState;

type Labels = Vec<(&'static str, &'static str)>;

/// The outcomes of an exit a node sees (a start error is a launch failure).
pub const EXIT_OUTCOMES: [&str; 3] = ["exit_ok", "exit_error", "signal"];

/// The agent daemon's counters; share it (`Arc`) between the daemon and the
/// registry.
pub struct AgentMetrics {
    launches: Counter,
    launch_failures: Family<Labels, Counter>,
    launch_failure_by_reason: Vec<Counter>,
    exits: Family<Labels, Counter>,
    exit_by_outcome: Vec<Counter>,
    exit_to_ack: Seconds,
    state: OnceLock<Arc<NodeState>>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let launch_failures = Family::<Labels, Counter>::default();
        let exits = Family::<Labels, Counter>::default();
        // Every label made once, here: the hot path touches the atomic only.
        let launch_failure_by_reason = LAUNCH_FAILURES
            .iter()
            .map(|r| launch_failures.get_or_create(&vec![("reason", *r)]).clone())
            .collect();
        let exit_by_outcome = EXIT_OUTCOMES
            .iter()
            .map(|o| exits.get_or_create(&vec![("outcome", *o)]).clone())
            .collect();
        AgentMetrics {
            launches: Counter::default(),
            launch_failures,
            launch_failure_by_reason,
            exits,
            exit_by_outcome,
            exit_to_ack: Seconds::default(),
            state: OnceLock::new(),
        }
    }

    /// The launcher started a process (or adopted a forked child).
    pub(crate) fn launched(&self) {
        self.launches.inc();
    }

    /// A launch failed; `error` is its reason as text.
    pub(crate) fn launch_failed(&self, error: &str) {
        self.launch_failure_by_reason[launch_failure_index(error)].inc();
    }

    /// A process exited with CPython's `exitcode` (negative: a signal).
    pub(crate) fn exited(&self, exitcode: i32) {
        let i = match exitcode {
            0 => 0,
            c if c > 0 => 1,
            _ => 2,
        };
        self.exit_by_outcome[i].inc();
    }

    /// The coordinator acknowledged an exit `d` after the launcher reported it.
    pub(crate) fn acknowledged_after(&self, d: Duration) {
        self.exit_to_ack.observe(d);
    }

    /// The node state the gauges read (set once by the daemon).
    pub(crate) fn attach(&self, state: Arc<NodeState>) {
        let _ = self.state.set(state);
    }

    /// Adds the agent's families to `registry`.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "mpctl_node_launches",
            "Processes this node's launcher started or adopted",
            self.launches.clone(),
        );
        registry.register(
            "mpctl_node_launch_failures",
            "Processes this node could not start, by reason",
            self.launch_failures.clone(),
        );
        registry.register(
            "mpctl_node_exits",
            "Exits of this node's processes, by outcome (exit_ok: code 0, exit_error: code > 0, signal: killed)",
            self.exits.clone(),
        );
        registry.register(
            "mpctl_node_exit_to_ack_seconds",
            "Time from an exit reported by the launcher to the coordinator's acknowledgement (after its commit)",
            self.exit_to_ack.clone(),
        );
        registry.register_collector(Box::new(Gauges(Arc::clone(self))));
    }
}

#[derive(Debug)]
struct Gauges(Arc<AgentMetrics>);

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Gauges {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(state) = self.0.state.get() else {
            return Ok(());
        };
        let g = state.gauges();
        gauge(
            &mut e,
            "mpctl_node_processes_running",
            "Processes running on this node",
            g.running as i64,
        )?;
        gauge(
            &mut e,
            "mpctl_node_processes_launching",
            "Launches this node has begun and not finished",
            g.launching as i64,
        )?;
        gauge(
            &mut e,
            "mpctl_node_unacknowledged_exits",
            "Exits not yet acknowledged by the coordinator",
            g.unacked as i64,
        )?;
        gauge(
            &mut e,
            "mpctl_node_registered",
            "1 while registered with the coordinator, else 0",
            i64::from(g.registered),
        )
    }
}
