//! The mpctl node agent.
//!
//! Two processes cooperate on every node:
//! - the **launcher** (the `mpctl-launcher` crate, re-exported with the
//!   agent's tokio client for it in [`launcher`]): small, single-threaded,
//!   long-lived; the real parent of every managed process. It spawns,
//!   signals through pidfds, reaps, copies output into size-capped files
//!   and journals every exit on disk before it can be acknowledged. It
//!   outlives agent restarts.
//! - the **agent daemon** ([`daemon`]): keeps one authenticated gRPC stream to the
//!   coordinator ([`session`]), turns its commands into launcher requests, reports
//!   launches and exits (re-sending unacknowledged exits after any reconnect), and
//!   serves process output ([`logs`], woken by one shared inotify instance in
//!   `output_watch`), and relays pool workers' tasks and results over a
//!   node-local socket ([`pool_relay`]), and removes the output of
//!   processes the coordinator's retention removed (`outputs`). With a health address it serves
//!   `grpc.health.v1` there, ready once registered with its launcher
//!   connected (`health`); its counters for Prometheus are in [`metrics`].
//!
//! Modules only import downwards: [`daemon`] runs sessions ([`session`]),
//! which use [`launcher`], `state`, [`logs`] and [`pool_relay`]; the error
//! type is its own module.

#![forbid(unsafe_code)]

pub mod config;
pub mod daemon;
mod error;
mod health;
pub mod identity;
pub mod launcher;
pub mod logs;
pub mod metrics;
mod output_watch;
mod outputs;
pub mod pool_relay;
mod session;
mod state;

pub use config::AgentConfig;
pub use daemon::{run, run_observed, run_with_health, AgentError};
pub use metrics::AgentMetrics;
