//! The mpctl node agent.
//!
//! Two processes cooperate on every node:
//! - the **launcher** ([`launcher`]): small, single-threaded, long-lived; the real
//!   parent of every managed process. It spawns, signals through pidfds, reaps,
//!   copies output into size-capped files and journals every exit on disk
//!   before it can be acknowledged. It outlives agent restarts.
//! - the **agent daemon** ([`daemon`]): keeps one authenticated gRPC stream to the
//!   coordinator ([`session`]), turns its commands into launcher requests, reports
//!   launches and exits (re-sending unacknowledged exits after any reconnect), and
//!   serves process output ([`logs`], woken by one shared inotify instance in
//!   `output_watch`), and relays pool workers' tasks and results over a
//!   node-local socket ([`pool_relay`]). With a health address it serves
//!   `grpc.health.v1` there, ready once registered with its launcher
//!   connected (`health`).

pub mod config;
pub mod daemon;
mod health;
pub mod launcher;
pub mod logs;
mod output_watch;
pub mod pool_relay;
mod session;
mod state;

pub use config::AgentConfig;
pub use daemon::{run, run_with_health, AgentError};
