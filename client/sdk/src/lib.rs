//! `mpctl`, the client SDK: Python `multiprocessing`'s process API over a
//! cluster. It runs in the caller's process (a program, the `mpctl` CLI, or
//! a managed process starting its own children).
//!
//! - [`Cluster`] ([`cluster`]) is a connection to a coordinator, chosen by
//!   [`config`] from flags, environment and the `mpctl dev` config file, or
//!   (feature `embedded`, on by default) a coordinator and agent inside this
//!   process when nothing is configured (the `mpctl-embedded` crate).
//! - [`Process`] ([`process`]) mirrors `multiprocessing.Process`: `start`,
//!   `join(timeout)`, `is_alive`, `exitcode`, `pid`, `name`, `terminate`,
//!   `kill`, `sentinel`, `close`; [`wait`] mirrors
//!   `multiprocessing.connection.wait` across nodes; [`Logs`] ([`logs`]) is
//!   a process's output.
//! - [`Pool`] ([`pool`]) mirrors `multiprocessing.Pool`: `apply`, `map`,
//!   `imap`, `starmap` and their async forms over workers on the nodes.
//! - [`status`] holds the SDK's own types ([`ProcessInfo`], [`ProcessState`],
//!   [`AgentInfo`], [`StartMethod`], [`LogChunk`]); `wire` converts the
//!   coordinator's protobuf messages to them at the edge.
//! - [`runtime`] is the `mpctl-runtime` crate, re-exported: how a program
//!   serves function targets (register functions, call `Runtime::init()`
//!   early in `main`).
//! - [`Error`] ([`error`]) carries CPython's misuse errors and the cluster's.
//!
//! Dependencies: the SDK depends on the runtime, not the reverse. The
//! runtime is the child's side of the node contract and needs no gRPC
//! client; the SDK uses it to fork the caller (start method fork) and to
//! know whether this process is managed (its parent id and the credentials
//! of its cluster). Without the `embedded` feature the SDK compiles neither
//! the coordinator (SQLite) nor the agent, nor any of the CLI's crates.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod config;
pub mod contexts;
pub mod error;
pub mod logs;
pub mod pool;
pub mod process;
pub mod status;
mod wire;

pub use mpctl_runtime as runtime;

pub use cluster::{Cluster, ListPage};
pub use config::{ClusterConfig, Overrides};
pub use error::{Error, Result};
pub use logs::{LogOffsets, Logs};
/// The raw protobuf contract, for calls the SDK does not wrap
/// ([`Cluster::api`]); the SDK's own API never hands these out.
pub use mpctl_proto::v1 as proto;
pub use mpctl_transport::{AuthKey, Security};
pub use pool::{AsyncResult, Imap, Pool, PoolBuilder, PoolError};
pub use process::{active_children, parent_process, wait, wait_all, Process, Sentinel};
pub use status::{
    AgentInfo, AgentState, Limits, LogChunk, LogStream, ProcessInfo, ProcessState, StartMethod,
};
