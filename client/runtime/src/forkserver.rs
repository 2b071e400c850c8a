//! The forkserver (DESIGN §3): a program started once per (program, preload)
//! by its node's launcher runs the requested preload hooks, then forks one
//! child per start. Each child puts the descriptors it was sent in place and
//! runs the same bootstrap as spawn, so it sees the preloaded state and
//! never the caller's.
//!
//! The server is single-threaded: one `poll` over its socket to the launcher
//! and a signalfd for SIGCHLD. It answers each start with the child's pid and
//! reports each exit; if it dies, its children are re-parented to the
//! launcher (a subreaper), which still collects their exit codes.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};

use mpctl_proto::bootstrap::{
    FromForkserver, ToForkserver, ENV_FORKSERVER, ENV_PRELOAD, FORKSERVER_FD,
    MAX_FORKSERVER_MESSAGE, PREP_FD, RESULT_FD,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{recvmsg, send, ControlMessageOwned, MsgFlags, UnixAddr};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::ForkResult;

use super::{bootstrap, sys, Runtime};

fn die(message: &str) -> ! {
    eprintln!("mpctl forkserver: {message}");
    std::process::exit(1)
}

fn tell(sock: &OwnedFd, msg: &FromForkserver) {
    let bytes = serde_json::to_vec(msg).expect("forkserver messages serialize");
    if let Err(e) = send(
        std::os::fd::AsRawFd::as_raw_fd(sock),
        &bytes,
        MsgFlags::MSG_NOSIGNAL,
    ) {
        die(&format!("the launcher's socket failed: {e}"));
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
    let sock = sys::adopt_socket(FORKSERVER_FD).unwrap_or_else(|e| die(&e.to_string()));

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
        let (pid, exitcode) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, -(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
            Ok(_) => continue,
            Err(e) => die(&format!("waitpid: {e}")),
        };
        tell(
            sock,
            &FromForkserver::Exited {
                pid: pid.as_raw(),
                exitcode,
            },
        );
    }
}

/// Receives one start and forks its child.
fn serve_one(runtime: &Runtime, sock: &OwnedFd, sigfd: &SignalFd) {
    let mut buf = vec![0u8; MAX_FORKSERVER_MESSAGE];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let (len, received) = {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<UnixAddr>(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => return,
            Err(e) => die(&format!("receiving a start: {e}")),
        };
        let mut received: Vec<OwnedFd> = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    received.extend(fds.into_iter().map(sys::adopt_received));
                }
            }
        }
        (msg.bytes, received)
    };
    if len == 0 {
        // The launcher is gone: so is our reason to exist.
        std::process::exit(0);
    }
    let (id, limits) = match serde_json::from_slice::<ToForkserver>(&buf[..len]) {
        Ok(ToForkserver::Start {
            id,
            memory_bytes,
            cpu_seconds,
        }) => (id, (memory_bytes, cpu_seconds)),
        Err(e) => die(&format!("malformed start: {e}")),
    };
    if received.len() != 4 {
        tell(
            sock,
            &FromForkserver::StartFailed {
                id,
                error: format!(
                    "the start carried {} descriptors, expected 4",
                    received.len()
                ),
            },
        );
        return;
    }
    // Above 9, so placing them at 1..4 in the child clobbers none of them.
    let moved: io::Result<Vec<OwnedFd>> = received.iter().map(sys::dup_above).collect();
    drop(received);
    let fds = match moved {
        Ok(f) => f,
        Err(e) => {
            let error = format!("dup: {e}");
            tell(sock, &FromForkserver::StartFailed { id, error });
            return;
        }
    };
    let server_fds = [
        std::os::fd::AsRawFd::as_raw_fd(sock),
        std::os::fd::AsRawFd::as_raw_fd(sigfd),
    ];
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
    (memory_bytes, cpu_seconds): (u64, u64),
) -> ! {
    // The server's socket and signalfd are not the child's (close-on-exec
    // does not help: it never execs). Closed first: the socket sits on fd 3,
    // where the preparation pipe goes.
    for fd in server_fds {
        sys::close_inherited(fd);
    }
    let setup = || -> io::Result<()> {
        let null = OwnedFd::from(File::open("/dev/null")?);
        sys::place(&null, 0)?;
        // Now, not later: it may have been given fd 3 or 4, where the
        // bootstrap pipes go next.
        drop(null);
        for (fd, target) in fds.iter().zip([1, 2, PREP_FD, RESULT_FD]) {
            sys::place(fd, target)?;
        }
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
        mpctl_proto::bootstrap::apply_limits(memory_bytes, cpu_seconds)?;
        Ok(())
    };
    if let Err(e) = setup() {
        eprintln!("mpctl forkserver child: setting up: {e}");
        std::process::exit(1);
    }
    // The copies above 9 go too; what the preload opened stays, as in CPython.
    drop(fds);
    bootstrap::run_prepared(runtime)
}
