//! mpctl's client SDK: Python `multiprocessing`'s process API over a cluster.
//!
//! - [`Cluster`] ([`cluster`]) is a connection to a coordinator, chosen by
//!   [`config`] from flags, environment and the `mpctl dev` config file, or an
//!   [`embedded`] coordinator and agent when nothing is configured.
//! - [`Process`] ([`process`]) mirrors `multiprocessing.Process`: `start`,
//!   `join(timeout)`, `is_alive`, `exitcode`, `pid`, `name`, `terminate`,
//!   `kill`, `sentinel`, `close`; [`wait`] mirrors
//!   `multiprocessing.connection.wait` across nodes.
//! - [`Pool`] ([`pool`]) mirrors `multiprocessing.Pool`: `apply`, `map`,
//!   `imap`, `starmap` and their async forms over workers on the nodes.
//! - [`runtime`] lets a program serve function targets: register functions,
//!   call `Runtime::init()` early in `main`.
//! - [`Error`] ([`error`]) carries CPython's misuse errors and the cluster's.
//!
//! The `mpctl` binary (src/main.rs, src/cli/) is built on this API.

pub mod cluster;
pub mod config;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod error;
pub mod pool;
pub mod process;
pub mod runtime;

pub use cluster::Cluster;
pub use config::{ClusterConfig, Overrides};
pub use error::{Error, Result};
pub use mpctl_proto::v1 as proto;
pub use mpctl_proto::v1::{LogStream, ProcessInfo, ProcessState, StartMethod};
pub use mpctl_transport::{AuthKey, Security};
pub use pool::{AsyncResult, Imap, Pool, PoolBuilder, PoolError};
pub use process::{active_children, parent_process, wait, wait_all, Process, Sentinel};
