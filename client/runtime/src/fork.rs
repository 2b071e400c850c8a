//! The fork start method (docs/design.md §3, `docs/node-contract.md` §8): a
//! managed process forks itself; the child runs a registered function in a
//! copy of the parent's memory, so it sees the parent's state as it was at
//! `start()`. The parent hands the child's pidfd and result pipe to its
//! node's launcher (the adoption socket), which tracks the child like any
//! other; the parent reaps it and reports its exit code, and if the parent
//! dies first the launcher (a subreaper) reaps the orphan itself.
//!
//! The fork happens on a fresh plain thread, so the child's only thread
//! carries nothing of the caller's (an async runtime's worker, say): it can
//! start and join children of its own on its main thread.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use mpctl_node::adoption::{FromAdopt, ToAdopt};
use mpctl_node::seqpacket::{self, Received};
use mpctl_node::{Limits, Preparation};

use super::{bootstrap, sys, ADOPT_SOCKET, RUNTIME};

/// Why a fork cannot happen here, for the caller's error.
pub const NOT_ON_A_NODE: &str = "start method fork needs the parent on the target node (the child is a copy of its parent): this program is not a managed process on a node; use spawn or forkserver";

/// The adoption socket of this process's node, if it is a managed process.
pub fn adopt_socket() -> Option<&'static str> {
    ADOPT_SOCKET.get().map(String::as_str)
}

/// Forks this process for `prep` and has the node adopt the child; returns
/// the child's pid.
pub fn start(prep: Preparation, limits: Limits) -> Result<i32, String> {
    let runtime = RUNTIME
        .get()
        .ok_or("fork runs a registered function: call Runtime::init() first in main")?;
    let adopt_socket = adopt_socket().ok_or(NOT_ON_A_NODE)?;
    let sock = seqpacket::connect_to(Path::new(adopt_socket))
        .map_err(|e| format!("cannot reach the node's launcher at {adopt_socket}: {e}"))?;
    let (result_read, result_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let id = prep.id.clone();
    // The child's copies of the parent's ends: closed in the child before
    // it runs (it never returns into the parent's code to drop them).
    let parent_fds = [
        std::os::fd::AsRawFd::as_raw_fd(&result_read),
        std::os::fd::AsRawFd::as_raw_fd(&sock),
    ];
    let result_write = std::fs::File::from(result_write);
    // The closure runs only in the child; in the parent it is dropped once
    // the child exists, closing the parent's copy of the write end.
    let pid = sys::fork_from_fresh_thread(move || {
        for fd in parent_fds {
            sys::close_inherited(fd);
        }
        bootstrap::run_forked(runtime, prep, result_write, limits)
    })
    .map_err(|e| format!("fork: {e}"))?;
    match adopt(&sock, &id, pid, result_read) {
        Ok(()) => {
            // The parent is the child's real parent: reap it and report.
            std::thread::Builder::new()
                .name(format!("mpctl-reap-{pid}"))
                .spawn(move || reap_and_report(sock, pid))
                .map_err(|e| format!("reaper thread: {e}"))?;
            Ok(pid)
        }
        Err(e) => {
            let _ = mpctl_node::sys::pidfd::kill(pid, libc::SIGKILL);
            let _ = sys::reap(pid);
            Err(format!("the node's launcher did not adopt the child: {e}"))
        }
    }
}

fn adopt(sock: &OwnedFd, id: &str, pid: i32, result_read: OwnedFd) -> Result<(), String> {
    let pidfd = sys::pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
    let msg = ToAdopt::Adopt {
        id: id.to_owned(),
        pid,
    };
    seqpacket::send(sock.as_fd(), &msg, &[pidfd.as_fd(), result_read.as_fd()])
        .map_err(|e| e.to_string())?;
    match seqpacket::recv::<FromAdopt>(sock.as_fd(), true) {
        Ok(Received::Message(FromAdopt::Adopted, _)) => Ok(()),
        Ok(Received::Message(FromAdopt::Refused { error }, _)) => Err(error),
        Ok(Received::Closed | Received::WouldBlock) => {
            Err("the launcher closed the connection".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Waits for the child and reports its exit code (CPython's rules, every
/// signal included). If this process dies first, the launcher reaps the
/// orphan instead.
fn reap_and_report(sock: OwnedFd, pid: i32) {
    let Ok(exitcode) = sys::reap(pid) else {
        return;
    };
    let _ = seqpacket::send(sock.as_fd(), &ToAdopt::Exited { pid, exitcode }, &[]);
}
