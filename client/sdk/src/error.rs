//! The SDK's error type. Misuse errors carry CPython's wording.

use mpctl_transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start a process twice")]
    AlreadyStarted,
    #[error("can only {op} a started process")]
    NotStarted { op: &'static str },
    #[error("process object is closed")]
    Closed,
    #[error(
        "cannot close process {id} while it is still running; join, terminate or kill it first"
    )]
    StillRunning { id: String },
    /// The command could not be executed (no such file, not executable,
    /// missing working directory); the message has the node and OS reason.
    #[error("{message}")]
    Start { message: String },
    #[error("no process with id {id:?} (see `mpctl ps -a`)")]
    NotFound { id: String },
    /// It had finished and the coordinator's retention removed it.
    #[error("process {id:?} had finished and was removed by retention (the coordinator's --retain / --retain-for)")]
    Removed { id: String },
    #[error("{op} {target}: {message}")]
    Rpc {
        op: &'static str,
        target: String,
        code: tonic::Code,
        message: String,
    },
    #[error("cannot encode {what} as JSON: {message}")]
    Encode { what: String, message: String },
    #[error("cannot decode {what}: {message}")]
    Decode { what: String, message: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("embedded cluster: {0}")]
    Embedded(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Maps a gRPC status from call `op` about `target` (a process id, or "").
    pub fn rpc(op: &'static str, target: &str, status: tonic::Status) -> Error {
        match status.code() {
            tonic::Code::NotFound
                if !target.is_empty() && status.message().contains("removed by retention") =>
            {
                Error::Removed {
                    id: target.to_owned(),
                }
            }
            tonic::Code::NotFound if !target.is_empty() => Error::NotFound {
                id: target.to_owned(),
            },
            code => Error::Rpc {
                op,
                target: target.to_owned(),
                code,
                message: status.message().to_owned(),
            },
        }
    }
}
