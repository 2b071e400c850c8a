//! The launcher: the long-lived, single-threaded process that is the real
//! parent of every managed process on a node (like containerd's shim). It
//! runs as `mpctl launcher --dir DIR` (or `mpctl-launcher --dir DIR`),
//! started by the agent in its own session, and outlives agent restarts,
//! even SIGKILL, so processes keep running and no exit code is lost; it
//! exits by itself once it has no agent, no child and no open output pipe.
//!
//! No async runtime: one `poll` loop ([`server`]) hands each kind of
//! descriptor to the handler that owns it and its state, and routes what
//! the handlers report between them:
//! - [`agent`]: `DIR/launcher.sock` and the one agent connection
//!   ([`protocol`]: length-prefixed JSON; [`conn`]: buffered I/O);
//! - [`children`]: the running managed processes, their pidfds and their
//!   output and result pipes ([`output`]), started by [`spawn`];
//! - [`forkservers`]: one server per (program, preload list) and the
//!   starts sent to it;
//! - [`adoption`]: `DIR/adopt.sock`, children forked by managed processes;
//! - [`signals`]: the signalfd (SIGCHLD → reap; SIGTERM/SIGINT → stop when
//!   idle);
//! - [`journal`]: every exit, fsynced, until the agent acknowledges it.
//!
//! [`setup`] prepares the process (lock, signals, subreaper, stdio). The
//! child side of the node contract (descriptors, preparation data, the
//! forkserver and adoption messages, exit codes, the OS calls) is
//! `mpctl_node`. The agent's async client is `mpctl_agent::launcher::client`.

#![forbid(unsafe_code)]

pub mod adoption;
pub mod agent;
pub mod children;
pub mod conn;
pub mod error;
pub mod forkservers;
pub mod journal;
pub mod output;
pub mod protocol;
pub mod server;
pub mod setup;
pub mod signals;
pub mod spawn;

pub use error::{LaunchError, LauncherError, ProtocolError};
pub use mpctl_node::adoption::SOCKET_FILE as ADOPT_SOCKET_FILE;
pub use mpctl_node::peer::PeerPolicy;
pub use output::truncation_marker;
pub use protocol::{
    Bootstrap, ExitRecord, FromLauncher, Hello, JournalDamage, LaunchSpec, Launched, RunAs,
    RunningRecord, ToLauncher,
};
pub use server::{run, run_persistent, run_with, Options};
pub use setup::{create_private_dir, LOCK_FILE, LOG_FILE, SOCKET_FILE};

/// Writes one timestamped line to the launcher's log (its stderr, which is
/// `DIR/launcher.log` once it is ready). Never fails.
fn log(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // One write per line: stderr is unbuffered and usually a file.
    let line = format!("{ms} mpctl-launcher: {args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Milliseconds since the Unix epoch, as the protocol reports times.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
