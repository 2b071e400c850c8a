//! What the coordinator's operations refuse, and why. Each variant's text is
//! the message the client sees; [`crate::wire::status`] picks its gRPC code.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("no process with id {0:?} (see `mpctl ps -a` for the known ones)")]
    UnknownProcess(String),
    #[error("process {0:?} had finished and was removed by retention (the coordinator's --retain / --retain-for)")]
    Removed(String),
    #[error("request id {request_id:?} started process {id}, which has finished and was removed by retention; use a new request id to start another")]
    RemovedRequest { request_id: String, id: String },
    #[error("page_token {0:?} is not one this server gave out (pass next_page_token from the previous page, with the same filters)")]
    BadPageToken(String),
    #[error("parent process {0:?} is unknown")]
    UnknownParent(String),
    #[error("daemonic processes are not allowed to have children ({0} is daemonic)")]
    DaemonicParent(String),
    #[error("cannot place process: {0}")]
    CannotPlace(String),
    /// The node could not start the target; the text is the process's
    /// `start_error`.
    #[error("{0}")]
    StartFailed(String),
    #[error("pool workers are started by the coordinator's PoolManager; create a pool instead")]
    PoolWorkerStart,
    #[error("wait needs at least one process id")]
    WaitNoIds,
    #[error("wait takes at most {max} processes, got {got}")]
    WaitTooMany { max: usize, got: usize },
    #[error("process {id} runs on node {node}, which is not connected; the signal was not sent (retry when `mpctl agents` shows {node} ready)")]
    SignalNodeDown { id: String, node: String },
    #[error("process {id} is lost with its node {node}; it cannot be signalled until the node comes back")]
    SignalLost { id: String, node: String },
    #[error("node {node} could not signal process {id}: {error}")]
    SignalFailed {
        id: String,
        node: String,
        error: String,
    },
    #[error("node {node} disconnected before confirming the signal to process {id}")]
    SignalDisconnected { id: String, node: String },
    #[error("node {node} did not confirm the signal to process {id} within {secs} s")]
    SignalTimeout { id: String, node: String, secs: u64 },
    #[error("the output of {id} is on node {node}, which is not connected")]
    LogsNodeDown { id: String, node: String },
    /// The node's reader of the output failed.
    #[error("{0}")]
    LogsNode(String),
    #[error("node {node} disconnected while sending output")]
    LogsNodeGone { node: String },
    #[error("the Logs caller fell {chunks} chunks (up to 64 MiB) behind its node and was cut off; read the output again")]
    LogsTooSlow { chunks: usize },
    #[error("{0}")]
    Node(#[from] crate::core::identity::Refused),
    #[error("the coordinator could not save its state: {0}")]
    Store(#[from] StoreError),
}
