//! What a pool call can fail with. Cloneable: an [`super::AsyncResult`]
//! answers `get` as often as it is asked.

use mpctl_proto::v1::{PoolErrorKind, PoolTaskError};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The function returned an error or panicked (CPython re-raises the
    /// task's exception).
    #[error("task failed: {message}")]
    Task { message: String },
    /// The worker running the task died, and so did every retry.
    #[error("{message}")]
    WorkerLost {
        /// Process id and name of the worker that died last.
        worker: String,
        worker_name: String,
        node: String,
        /// Its exit code (−N for signal N); `None` when its node was lost.
        exitcode: Option<i32>,
        /// How many times the task was started.
        attempts: u32,
        message: String,
    },
    /// The pool cannot run tasks: its initializer failed, or its workers
    /// cannot be started.
    #[error("pool broken: {message}")]
    Broken { message: String },
    #[error("{message}")]
    Terminated { message: String },
    /// `get(timeout)` passed its timeout (`multiprocessing.TimeoutError`).
    #[error("timed out waiting for the result")]
    Timeout,
    /// The pool was closed or terminated (CPython's `ValueError`).
    #[error("Pool not running")]
    NotRunning,
    /// `join` before `close` or `terminate`.
    #[error("Pool is still running (call close() or terminate() before join())")]
    StillRunning,
    /// `successful()` before the result is ready.
    #[error("result is not ready")]
    NotReady,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("cannot encode {what} as JSON: {message}")]
    Encode { what: String, message: String },
    #[error("cannot decode {what}: {message}")]
    Decode { what: String, message: String },
    /// The connection to the coordinator failed.
    #[error("{0}")]
    Cluster(String),
}

impl PoolError {
    pub(crate) fn from_wire(e: PoolTaskError) -> PoolError {
        match PoolErrorKind::try_from(e.kind).unwrap_or(PoolErrorKind::Unspecified) {
            PoolErrorKind::TaskFailed => PoolError::Task { message: e.message },
            PoolErrorKind::WorkerLost => PoolError::WorkerLost {
                worker: e.worker,
                worker_name: e.worker_name,
                node: e.node,
                exitcode: e.exitcode,
                attempts: e.attempts,
                message: e.message,
            },
            PoolErrorKind::PoolBroken => PoolError::Broken { message: e.message },
            PoolErrorKind::Terminated => PoolError::Terminated { message: e.message },
            PoolErrorKind::Unspecified => PoolError::Cluster(e.message),
        }
    }
}

impl From<crate::Error> for PoolError {
    fn from(e: crate::Error) -> PoolError {
        PoolError::Cluster(e.to_string())
    }
}
