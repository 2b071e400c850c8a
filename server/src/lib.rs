//! The mpctl coordinator.
//!
//! It owns the cluster's process table and talks to two kinds of peers over
//! one authenticated listener ([`daemon`]):
//! - clients call `ProcessManager` ([`process_service`]) to start, join, wait
//!   on, signal and read the output of processes;
//! - agents keep one `AgentService` stream each ([`agent_service`]) over which
//!   they register, receive launches and signals, and report launches and exits;
//! - clients open one `PoolManager` stream per pool ([`pool`]): its driver
//!   starts workers as managed processes and feeds them tasks through their
//!   agents.
//!
//! These services are the edge: they check the input ([`validate`]),
//! convert protobuf to the domain and back ([`wire`], also where a
//! [`core::CoreError`] becomes a gRPC status), and call [`core::Core`].
//! The [`core`] holds the domain types, the table, and the transitions:
//! plain functions of (table, input) that return the effects (rows and
//! agent messages), which its outbox hands to the [`store`] (SQLite, one
//! writer thread; an edge too, storing rows as protobuf) so that no agent
//! message leaves before the rows it depends on are durable. Waiters (join,
//! wait, start, signal) sleep on per-process notifications; output is
//! routed apart from the table.
//! [`page`] cuts List and Wait answers into pages that fit a message.
//! [`health`] says when the coordinator is ready, for the plaintext health
//! listener; [`metrics`] holds what it exports to Prometheus.

#![forbid(unsafe_code)]

pub mod agent_service;
pub mod core;
pub mod daemon;
pub mod health;
pub mod metrics;
pub mod page;
pub mod pool;
pub mod process_service;
pub mod scope;
pub mod store;
pub mod validate;
pub mod wire;

pub use crate::core::retention::Retention;
pub use crate::core::Timings;
pub use daemon::{Coordinator, CoordinatorConfig, ServerError};
