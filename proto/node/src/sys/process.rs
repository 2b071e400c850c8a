//! `fork`, `_exit`, and what a forked child does before it runs: the fork
//! and forkserver start methods.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::{setpgid, ForkResult, Pid};

use super::fds::place;
use crate::Limits;

/// Forks the calling process. The child continues in the returned `Child`
/// arm on the calling thread, which is its only thread.
///
/// Callers: the forkserver (single-threaded by contract: the runtime starts
/// it first thing in `main`, and its loop starts no thread), and
/// [`fork_from_fresh_thread`].
pub fn fork() -> io::Result<ForkResult> {
    // SAFETY: the child of a fork in a multi-threaded process may only rely
    // on state no other thread held at the fork. The forkserver has one
    // thread. The fork start method forks a managed process that may have
    // other threads (a tokio runtime), from a fresh thread that holds no
    // lock: its child then runs only the registered function and the
    // bootstrap, whose allocations go through glibc malloc (fork-safe
    // through its atfork handlers). That is CPython's fork contract too,
    // and why fork is opt-in.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Forks from a fresh plain thread and runs `child` in the child (it never
/// returns: it ends the process, e.g. with [`exit_now`]); returns the
/// child's pid in the parent.
///
/// The child's only thread is then a thread that never ran anything of the
/// parent's: no async runtime entered, no thread-local state of a worker
/// thread (a child forked from a tokio worker inherits "inside a runtime"
/// and cannot start one of its own). The thread is named `main` and has a
/// main thread's usual stack (8 MiB, reserved, not touched), since it is
/// the child's main thread.
pub fn fork_from_fresh_thread<F>(child: F) -> io::Result<i32>
where
    F: FnOnce() -> std::convert::Infallible + Send + 'static,
{
    let forker = std::thread::Builder::new()
        .name("main".into())
        .stack_size(8 << 20)
        .spawn(move || match fork()? {
            ForkResult::Child => match child() {},
            ForkResult::Parent { child } => Ok(child.as_raw()),
        })?;
    forker
        .join()
        .map_err(|_| io::Error::other("the forking thread panicked"))?
}

/// Leaves a forked child at once: no exit handlers of the parent, no
/// destructors (flush stdout and stderr first).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) ends the process; it has no preconditions.
    unsafe { libc::_exit(code) }
}

/// In a freshly forked child, before it runs: stdin on `/dev/null`, each
/// `(fd, target)` placed (sources must be above
/// [`crate::descriptors::FIRST_FREE_FD`], see
/// [`super::fds::dup_above`]), an empty signal mask, its own process group
/// (so a tree signal reaches only it and its descendants), and `limits`.
pub fn set_up_forked_child(fds: &[(BorrowedFd<'_>, RawFd)], limits: Limits) -> io::Result<()> {
    let null = OwnedFd::from(File::open("/dev/null")?);
    place(null.as_fd(), 0)?;
    // Now, not later: it may have been given 3 or 4, where the bootstrap
    // pipes go next.
    drop(null);
    for (fd, target) in fds {
        place(*fd, *target)?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    limits.apply()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{pidfd, wait};

    /// Every signal a process can die of gives `-N` from a real kernel
    /// status, real-time ones included.
    #[test]
    fn a_child_killed_by_any_signal_reports_minus_its_number() {
        // Default action "ignore", "stop" or "continue": they cannot kill.
        let harmless = [
            libc::SIGCHLD,
            libc::SIGCONT,
            libc::SIGSTOP,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGURG,
            libc::SIGWINCH,
        ];
        for sig in (1..=64).filter(|s| !harmless.contains(s)) {
            let pid = fork_from_fresh_thread(move || {
                // Only async-signal-safe calls here (the test harness has
                // threads): reset, unblock, raise; _exit if it survived.
                let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
                // The raw system call, because glibc refuses to touch 32
                // and 33 (its own), which the kernel still delivers.
                let dfl = [0u64; 4];
                // SAFETY: a zeroed kernel `struct sigaction` is SIG_DFL
                // with no flags; the buffer is a live local.
                unsafe {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        i64::from(sig),
                        dfl.as_ptr(),
                        std::ptr::null_mut::<u64>(),
                        8usize,
                    )
                };
                let _ = pidfd::kill(std::process::id() as i32, sig);
                exit_now(100)
            })
            .unwrap();
            assert_eq!(wait::reap(pid).unwrap(), -sig, "signal {sig}");
        }
        for code in [0, 1, 7, 255] {
            let pid = fork_from_fresh_thread(move || exit_now(code)).unwrap();
            assert_eq!(wait::reap(pid).unwrap(), code);
        }
    }
}
