//! What mpctl's daemons export to Prometheus, and how.
//!
//! Each daemon crate keeps its own registry and metric families
//! (`mpctl_server::metrics`, `mpctl_agent::metrics`); the domain code calls
//! small typed methods there. This crate holds what they share:
//! - [`http`]: the one `--metrics-listen` listener, plain HTTP/1.1 serving
//!   `GET /metrics` (OpenMetrics text) and nothing else, unauthenticated
//!   like the health listener;
//! - [`histogram`]: a latency histogram of atomics, so an observation on a
//!   hot path takes no lock.
//!
//! Dependencies point one way: the server and the agent depend on this
//! crate; it depends on neither.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod histogram;
pub mod http;
pub mod reasons;

pub use histogram::Seconds;
pub use http::{serve, MetricsError, MetricsListener};
pub use prometheus_client::registry::Registry;
