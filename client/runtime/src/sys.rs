//! The only `unsafe` in the SDK: taking ownership of inherited descriptors,
//! and `fork` in the forkserver.

// This module is where the crate's `unsafe` lives (see the workspace lints).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::stat::{fstat, SFlag};
use nix::unistd::ForkResult;

/// Checks that the inherited `fd` is open and of `kind` (`what` names it
/// in the error).
///
/// The check turns a stray `MPCTL_BOOTSTRAP` or `MPCTL_FORKSERVER` in a
/// normal program's environment into an error instead of taking over a
/// descriptor something else owns.
fn check_kind(fd: RawFd, kind: SFlag, what: &str) -> io::Result<()> {
    // SAFETY: borrowing only for fstat; if `fd` is not open, fstat fails with
    // EBADF and we return before anything else uses it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = fstat(borrowed).map_err(|e| io::Error::other(format!("fd {fd}: {e}")))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != kind {
        return Err(io::Error::other(format!("fd {fd} is not {what}")));
    }
    Ok(())
}

/// The inherited pipe end `fd`, as a `File`, after checking that it is one.
pub fn adopt_pipe(fd: RawFd) -> io::Result<File> {
    check_kind(fd, SFlag::S_IFIFO, "the bootstrap pipe")?;
    // SAFETY: `fd` is an open pipe that the launcher placed here for this
    // process's bootstrap alone (it `dup2`ed it into place just before exec);
    // `init` adopts each of the two descriptors once, before any other code
    // of the program can have used them.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The inherited socket `fd` (the forkserver's line to its launcher), after
/// checking that it is one.
pub fn adopt_socket(fd: RawFd) -> io::Result<OwnedFd> {
    check_kind(fd, SFlag::S_IFSOCK, "the forkserver socket")?;
    // SAFETY: the launcher placed this socket at `fd` for the forkserver
    // alone; `init` adopts it once, before anything else can use it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Forks. The child continues in the returned `Child` arm.
pub fn fork() -> io::Result<ForkResult> {
    // SAFETY: two callers. The forkserver is single-threaded by contract
    // (`Runtime::init` runs first in `main`, and its loop starts no thread),
    // so its child inherits no lock held by another thread. The fork start
    // method forks a managed process that may have other threads (a tokio
    // runtime): its child then runs only the registered function and the
    // bootstrap, whose allocations go through glibc malloc (fork-safe through
    // its atfork handlers) and which take no lock of the parent's runtime.
    // That is CPython's fork contract too, and why fork is opt-in.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Puts `fd` at `target` in this (freshly forked) process: `dup2`, which
/// leaves the copy inheritable.
pub fn place(fd: &OwnedFd, target: RawFd) -> io::Result<()> {
    // SAFETY: `target` is one of the bootstrap's fixed numbers (0 to 4) in a
    // child that holds no other meaning for them: the forkserver moved every
    // received descriptor above 9 first (see `forkserver.rs`), so dup2 closes
    // nothing anyone still uses.
    let ret = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A close-on-exec duplicate of `fd` numbered 10 or above.
pub fn dup_above(fd: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor returns a new one that
    // nothing else owns, which OwnedFd takes over.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is fresh and owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Owns a descriptor that `recvmsg` just created for this process.
pub fn adopt_received(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process while receiving an
    // SCM_RIGHTS message; nothing else knows of it yet.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Closes, in a forked child, its copy of a descriptor of the forkserver.
pub fn close_inherited(fd: RawFd) {
    // SAFETY: in the child `fd` is a copy of the server's socket or signalfd,
    // owned by the server's `OwnedFd`s, which the child never uses or drops
    // (it ends in `exit` without returning into the server loop).
    unsafe {
        libc::close(fd);
    }
}

/// `pidfd_open(pid, 0)`: names the child for the launcher, immune to pid reuse.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Leaves a forked child at once: no exit handlers of the parent, no
/// destructors (the caller flushed stdout and stderr).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) ends the process; it has no preconditions.
    unsafe { libc::_exit(code) }
}

/// In a child forked by a managed process: its own process group (so a
/// tree signal reaches only it and its descendants), stdin on /dev/null, an
/// empty signal mask. stdout and stderr stay the parent's, as in CPython.
pub fn forked_child_setup() -> io::Result<()> {
    let null = OwnedFd::from(File::open("/dev/null")?);
    place(&null, 0)?;
    drop(null);
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )?;
    nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
    Ok(())
}
