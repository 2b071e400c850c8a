//! Environment variables of the node contract (`docs/node-contract.md`
//! §3). A child's environment is exactly what its start request gave plus
//! a few of the node's (`PATH`, `HOME`, ...) and these; nothing else is
//! inherited. The authkey is never in it.

/// Set to `"3,4"` ([`crate::descriptors::bootstrap_value`]) in a function
/// target's environment: run in bootstrap mode. The runtime removes it
/// before the function runs, so the function's own children do not inherit
/// it.
pub const BOOTSTRAP: &str = "MPCTL_BOOTSTRAP";
/// Set to `"3"` ([`crate::descriptors::FORKSERVER_FD`]) when a program is
/// started as a forkserver.
pub const FORKSERVER: &str = "MPCTL_FORKSERVER";
/// A forkserver's preload hooks, comma-separated (possibly empty).
pub const PRELOAD: &str = "MPCTL_PRELOAD";
/// Every managed process: its cluster-unique id, its name, its node.
pub const PROCESS_ID: &str = "MPCTL_PROCESS_ID";
pub const PROCESS_NAME: &str = "MPCTL_PROCESS_NAME";
pub const NODE: &str = "MPCTL_NODE";
/// The W3C trace context of the process's span, when the coordinator
/// exports traces (the OpenTelemetry environment carrier).
pub const TRACEPARENT: &str = "TRACEPARENT";
pub const TRACESTATE: &str = "TRACESTATE";
/// Variables that describe one process and so never reach a forkserver
/// (which serves many): those starting with this prefix, [`BOOTSTRAP`],
/// and the trace context ([`TRACEPARENT`], [`TRACESTATE`]: a forkserver's
/// children get theirs in the preparation data).
pub const PER_PROCESS_PREFIX: &str = "MPCTL_PROCESS_";

/// Whether `name` describes one process (and is kept from a forkserver).
pub fn is_per_process(name: &str) -> bool {
    name.starts_with(PER_PROCESS_PREFIX)
        || name == BOOTSTRAP
        || name == TRACEPARENT
        || name == TRACESTATE
}
