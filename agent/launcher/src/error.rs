//! Error types of the launcher and of its agent-side client.
//!
//! Every variant carries what a reader of a log line needs: the path, the
//! process id or the reason reported by the OS.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// A malformed or oversized frame on the launcher socket.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The length prefix announced a frame larger than [`crate::protocol::MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    FrameTooLarge { len: u64, max: usize },
    /// The frame body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// A failure of the launcher process itself or of the connection to it.
#[derive(Debug, Error)]
pub enum LauncherError {
    /// Creating or opening something in the launcher directory failed.
    #[error("launcher: {what} {}: {source}", path.display())]
    Path {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A process-wide setup step (signal mask, subreaper, stdio) failed.
    #[error("launcher setup ({what}): {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The exit journal could not be read or written.
    #[error("exit journal {}: {reason}", path.display())]
    Journal { path: PathBuf, reason: String },
    /// The launcher program could not be started or did not become ready.
    #[error("starting launcher {program}: {reason}")]
    Start { program: String, reason: String },
    /// No launcher could be reached on the socket.
    #[error("connecting to launcher at {}: {reason}", path.display())]
    Connect { path: PathBuf, reason: String },
    /// The peer sent something that is not a valid frame.
    #[error("launcher protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The connection to the launcher is gone; pending calls fail with this.
    #[error("launcher connection lost: {reason}")]
    Disconnected { reason: String },
}

impl LauncherError {
    pub(crate) fn path(what: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        LauncherError::Path {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn setup(what: &'static str, source: impl Into<io::Error>) -> Self {
        LauncherError::Setup {
            what,
            source: source.into(),
        }
    }
}

/// Why a launch request did not produce a running process.
#[derive(Debug, Error)]
pub enum LaunchError {
    /// The OS refused to start the program (the reason is the OS error text,
    /// e.g. "No such file or directory (os error 2)").
    #[error("cannot start process {id}: {error}")]
    Failed { id: String, error: String },
    /// The launcher could not be asked.
    #[error(transparent)]
    Launcher(#[from] LauncherError),
}
