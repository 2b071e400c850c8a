//! Descriptors: owning what the kernel or a parent handed us, moving
//! descriptors above the contract's fixed numbers, placing them there.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::stat::{fstat, SFlag};

use crate::descriptors::FIRST_FREE_FD;

/// Owns a descriptor that `accept4` or `recvmsg` (SCM_RIGHTS) just
/// installed in this process.
pub fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process in the call that
    // returned it; nothing else knows of it yet.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// What kind of inherited descriptor is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pipe,
    Socket,
}

/// Takes ownership of the inherited descriptor `fd` after checking that it
/// is open and of `kind` (`what` names it in the error). The check turns a
/// stray `MPCTL_BOOTSTRAP` or `MPCTL_FORKSERVER` in a normal program's
/// environment into an error instead of taking over a descriptor
/// something else owns. Call it once per descriptor, before anything else
/// in the program can use it.
pub fn adopt_inherited(fd: RawFd, kind: Kind, what: &str) -> io::Result<OwnedFd> {
    // SAFETY: borrowed only for fstat; if `fd` is not open, fstat fails
    // with EBADF and we return before anything else uses it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = fstat(borrowed).map_err(|e| io::Error::other(format!("fd {fd}: {e}")))?;
    let want = match kind {
        Kind::Pipe => SFlag::S_IFIFO,
        Kind::Socket => SFlag::S_IFSOCK,
    };
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != want {
        return Err(io::Error::other(format!("fd {fd} is not {what}")));
    }
    // SAFETY: `fd` is open and of the expected kind; by the contract it was
    // placed here for this process alone, and the caller adopts it once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// [`adopt_inherited`] for a pipe, as a `File`.
pub fn adopt_pipe(fd: RawFd, what: &str) -> io::Result<File> {
    adopt_inherited(fd, Kind::Pipe, what).map(File::from)
}

/// A close-on-exec duplicate of `fd` numbered [`FIRST_FREE_FD`] or above.
pub fn dup_above(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid borrowed descriptor returns a new
    // descriptor (or -1) and touches no memory.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_FREE_FD) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(own(new))
}

/// Puts a copy of `fd` at `target` (`dup2`, which leaves the copy
/// inheritable), in a process where `target` holds nothing anyone still
/// uses: a freshly forked child placing its contract descriptors, whose
/// sources were moved above [`FIRST_FREE_FD`] first.
pub fn place(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 touches no memory; the caller guarantees `target` is
    // free for this use (see above), so closing what was there breaks no
    // owner.
    let ret = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes, in a forked child, its copy of a descriptor its parent owns
/// (close-on-exec does not help a child that never execs).
pub fn close_inherited(fd: RawFd) {
    // SAFETY: the caller is a forked child that will never use or drop the
    // parent's `OwnedFd` for `fd` (it leaves with `_exit` without returning
    // into the parent's code), so nothing closes it twice or uses it after.
    unsafe {
        libc::close(fd);
    }
}

/// Marks every descriptor from 3 up close-on-exec, so whatever a process
/// inherited from the program that started it never reaches a child. Uses
/// `close_range(CLOSE_RANGE_CLOEXEC)` (Linux 5.11), falling back to
/// `fcntl` on each open descriptor.
pub fn cloexec_inherited() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on
    // descriptors; it closes nothing and touches no memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if fd < 3 {
            continue;
        }
        // SAFETY: F_GETFD/F_SETFD only read and set the descriptor flag; on
        // a descriptor that was closed meanwhile (the read_dir handle
        // itself) they fail with EBADF, which is ignored.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}
