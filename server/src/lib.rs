//! The mpctl coordinator.
//!
//! It owns the cluster's process table and talks to two kinds of peers over
//! one authenticated listener ([`daemon`]):
//! - clients call `ProcessManager` ([`process_service`]) to start, join, wait
//!   on, signal and read the output of processes;
//! - agents keep one `AgentService` stream each ([`agent_service`]) over which
//!   they register, receive launches and signals, and report launches and exits.
//!
//! - clients open one `PoolManager` stream per pool ([`pool`]): its driver
//!   starts workers as managed processes and feeds them tasks through their
//!   agents.
//!
//! Both translate into operations on [`core::Core`], the state machine. It keeps
//! the [`table`] in memory, decides where processes run ([`placement`]), and
//! persists every change through the [`store`] (SQLite, one writer thread)
//! before the agent messages that depend on it leave. Input from the wire is
//! bounded in [`validate`]. [`health`] says when the coordinator is ready,
//! for the plaintext health listener.

#![forbid(unsafe_code)]

pub mod agent_service;
pub mod core;
pub mod daemon;
pub mod health;
pub mod placement;
pub mod pool;
pub mod process_service;
pub mod store;
pub mod table;
pub mod validate;

pub use crate::core::Timings;
pub use daemon::{Coordinator, CoordinatorConfig, ServerError};
