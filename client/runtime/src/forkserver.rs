//! The forkserver (docs/design.md §3): a program started once per (program, preload)
//! by its node's launcher runs the requested preload hooks, then forks one
//! child per start. Each child puts the descriptors it was sent in place and
//! runs the same bootstrap as spawn, so it sees the preloaded state and
//! never the caller's.
//!
//! The server is single-threaded: one `poll` over its socket to the launcher
//! and a signalfd for SIGCHLD. It answers each start with the child's pid and
//! reports each exit; if it dies, its children are re-parented to the
//! launcher (a subreaper), which still collects their exit codes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};

use mpctl_node::descriptors::FORKSERVER_FD;
use mpctl_node::env::{FORKSERVER as ENV_FORKSERVER, PRELOAD as ENV_PRELOAD};
use mpctl_node::forkserver::{FromForkserver, ToForkserver, START_FDS};
use mpctl_node::seqpacket::{self, Received};
use mpctl_node::Limits;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::ForkResult;

use super::{bootstrap, sys, Runtime};

fn die(message: &str) -> ! {
    eprintln!("mpctl forkserver: {message}");
    std::process::exit(1)
}

fn tell(sock: &OwnedFd, msg: &FromForkserver) {
    if let Err(e) = seqpacket::send(sock.as_fd(), msg, &[]) {
        die(&format!("the launcher's socket failed: {e}"));
    }
}

/// The socket on fd 3 is one end of a socketpair made by the launcher
/// that started this server (`docs/node-contract.md` §12): its
/// `SO_PEERCRED` names the pair's maker, which must be this process's
/// parent. Anything else (a stray `MPCTL_FORKSERVER` over some other
/// socket) is refused before a preload hook runs.
fn check_launcher(sock: &OwnedFd) {
    let parent = nix::unistd::getppid().as_raw();
    match mpctl_node::peer::peer_of(sock) {
        Ok(peer) if peer.pid == parent => {}
        Ok(peer) => die(&format!(
            "fd {FORKSERVER_FD} is not a socket from this process's launcher (its peer is {peer}, the parent is pid {parent})"
        )),
        Err(e) => die(&format!("fd {FORKSERVER_FD}: peer credentials: {e}")),
    }
}

pub fn serve(runtime: &Runtime, fd: &str) -> ! {
    if fd != FORKSERVER_FD.to_string() {
        die(&format!("{ENV_FORKSERVER} is {fd:?}, expected {FORKSERVER_FD}; was this program started by an mpctl launcher?"));
    }
    // A forkserver is single-threaded and this runs before its preload hooks.
    #[allow(clippy::disallowed_methods)]
    std::env::remove_var(ENV_FORKSERVER);
    let preload = std::env::var(ENV_PRELOAD).unwrap_or_default();
    #[allow(clippy::disallowed_methods)]
    std::env::remove_var(ENV_PRELOAD);
    let sock = sys::forkserver_socket(FORKSERVER_FD).unwrap_or_else(|e| die(&e.to_string()));
    check_launcher(&sock);

    for name in preload.split(',').filter(|n| !n.is_empty()) {
        let Some(hook) = runtime.preloads.get(name) else {
            let known: Vec<&str> = runtime.preloads.keys().map(String::as_str).collect();
            let error = format!(
                "no preload hook named {name:?} is registered in this program (registered: {})",
                known.join(", ")
            );
            tell(
                &sock,
                &FromForkserver::PreloadFailed {
                    error: error.clone(),
                },
            );
            die(&error);
        };
        if panic::catch_unwind(AssertUnwindSafe(hook)).is_err() {
            let error = format!("the preload hook {name:?} panicked (see the forkserver's log)");
            tell(
                &sock,
                &FromForkserver::PreloadFailed {
                    error: error.clone(),
                },
            );
            die(&error);
        }
    }

    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    if let Err(e) = chld.thread_block() {
        die(&format!("blocking SIGCHLD: {e}"));
    }
    let sigfd = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .unwrap_or_else(|e| die(&format!("signalfd: {e}")));
    tell(
        &sock,
        &FromForkserver::Ready {
            pid: std::process::id() as i32,
        },
    );

    loop {
        let mut fds = [
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => die(&format!("poll: {e}")),
        }
        let sock_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let sig_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        if sig_ready {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            reap(&sock);
        }
        if sock_ready {
            serve_one(runtime, &sock, &sigfd);
        }
    }
}

/// Reports every child that has exited.
fn reap(sock: &OwnedFd) {
    loop {
        match sys::reap_any() {
            Ok(Some(r)) => tell(
                sock,
                &FromForkserver::Exited {
                    pid: r.pid,
                    exitcode: r.exitcode,
                },
            ),
            Ok(None) => return,
            Err(e) => die(&format!("waitpid: {e}")),
        }
    }
}

/// Receives one start and forks its child.
fn serve_one(runtime: &Runtime, sock: &OwnedFd, sigfd: &SignalFd) {
    let (msg, received) = match seqpacket::recv::<ToForkserver>(sock.as_fd(), true) {
        Ok(Received::Message(msg, fds)) => (msg, fds),
        Ok(Received::WouldBlock) => return,
        // The launcher is gone: so is our reason to exist.
        Ok(Received::Closed) => std::process::exit(0),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => die(&format!("malformed start: {e}")),
        Err(e) => die(&format!("receiving a start: {e}")),
    };
    let ToForkserver::Start { id, limits } = msg;
    if received.len() != START_FDS.len() {
        tell(
            sock,
            &FromForkserver::StartFailed {
                id,
                error: format!(
                    "the start carried {} descriptors, expected {}",
                    received.len(),
                    START_FDS.len()
                ),
            },
        );
        return;
    }
    // Above 9, so placing them at 1..4 in the child clobbers none of them.
    let moved: io::Result<Vec<OwnedFd>> = received
        .iter()
        .map(|fd| sys::dup_above(fd.as_fd()))
        .collect();
    drop(received);
    let fds = match moved {
        Ok(f) => f,
        Err(e) => {
            let error = format!("dup: {e}");
            tell(sock, &FromForkserver::StartFailed { id, error });
            return;
        }
    };
    let server_fds = [sock.as_raw_fd(), sigfd.as_raw_fd()];
    match sys::fork() {
        Ok(ForkResult::Child) => child(runtime, fds, server_fds, limits),
        Ok(ForkResult::Parent { child }) => {
            // Closed here, so no later child inherits a sibling's pipes.
            drop(fds);
            tell(
                sock,
                &FromForkserver::Started {
                    id,
                    pid: child.as_raw(),
                },
            );
        }
        Err(e) => tell(
            sock,
            &FromForkserver::StartFailed {
                id,
                error: format!("fork: {e}"),
            },
        ),
    }
}

/// In the forked child: stdio and the bootstrap pipes in place, a clean
/// signal mask, its own process group, then the bootstrap.
fn child(
    runtime: &Runtime,
    fds: Vec<OwnedFd>,
    server_fds: [std::os::fd::RawFd; 2],
    limits: Limits,
) -> ! {
    // The server's socket and signalfd are not the child's (close-on-exec
    // does not help: it never execs). Closed first: the socket sits on fd 3,
    // where the preparation pipe goes.
    for fd in server_fds {
        sys::close_inherited(fd);
    }
    let placed: Vec<_> = fds.iter().map(AsFd::as_fd).zip(START_FDS).collect();
    if let Err(e) = sys::set_up_forked_child(&placed, limits) {
        eprintln!("mpctl forkserver child: setting up: {e}");
        std::process::exit(1);
    }
    // The copies above 9 go too; what the preload opened stays, as in CPython.
    drop(placed);
    drop(fds);
    bootstrap::run_prepared(runtime)
}
