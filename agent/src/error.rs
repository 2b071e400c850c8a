//! The agent daemon's error.

use std::path::PathBuf;

use mpctl_launcher::LauncherError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start or reach the node's launcher: {0}")]
    Launcher(#[from] LauncherError),
    #[error("cannot connect to the coordinator at {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: mpctl_transport::TransportError,
    },
    #[error("node credential {path}: {source}")]
    Credential {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Health(#[from] mpctl_transport::health::HealthError),
    #[error("session with the coordinator at {server} ended: {status}")]
    Session {
        server: String,
        status: tonic::Status,
    },
}

impl AgentError {
    /// Retrying cannot help: the coordinator refused our credentials.
    pub(crate) fn is_fatal(&self) -> bool {
        match self {
            AgentError::Connect { source, .. } => matches!(
                source,
                mpctl_transport::TransportError::Rejected { .. }
                    | mpctl_transport::TransportError::ServerNotAuthenticated { .. }
                    | mpctl_transport::TransportError::RoleRefused { .. }
            ),
            AgentError::Credential { .. } => true,
            AgentError::Session { status, .. } => {
                matches!(
                    status.code(),
                    tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                        | tonic::Code::InvalidArgument
                )
            }
            _ => false,
        }
    }
}
