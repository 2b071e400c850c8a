//! The launcher: the long-lived, single-threaded process that is the real
//! parent of every managed process on a node (like containerd's shim).
//!
//! The agent daemon talks to it over `DIR/launcher.sock`
//! ([`protocol`]: length-prefixed JSON). The launcher spawns processes,
//! signals them through pidfds, reaps them (it is a child subreaper, so
//! orphaned descendants are reaped too), copies their output into
//! size-capped files, and writes every exit to an fsynced [`journal`] before
//! reporting it; an exit stays there until the agent acknowledges it. The
//! launcher outlives agent restarts, even SIGKILL, so processes keep running
//! and no exit code is lost; it exits by itself once it has no agent, no
//! child and no open output pipe. It uses no async runtime: one `poll` loop
//! ([`server`]). The agent side is the tokio [`client`].

mod adopt;
mod children;
pub mod client;
mod conn;
pub mod error;
mod forkservers;
pub mod journal;
mod output;
pub mod protocol;
pub mod server;
mod setup;
mod sys;

pub use adopt::ADOPT_SOCKET_FILE;
pub use client::{LauncherClient, LauncherEvent};
pub use error::{LaunchError, LauncherError, ProtocolError};
pub use output::truncation_marker;
pub use protocol::{
    Bootstrap, ExitRecord, FromLauncher, Hello, LaunchSpec, Launched, RunningRecord, ToLauncher,
};
pub use server::{run, run_persistent};
pub use setup::{LOCK_FILE, LOG_FILE, SOCKET_FILE};

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
