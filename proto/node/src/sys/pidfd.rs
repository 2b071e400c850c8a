//! pidfds, and signals by raw number (real-time ones included).

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// `pidfd_open(pid, 0)`: a descriptor that names this process for as long
/// as the descriptor lives, so a signal can never hit a recycled pid. The
/// kernel always sets `O_CLOEXEC` on it.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integer arguments and touches no memory
    // of ours; on success it returns a new descriptor that nothing else
    // owns, so wrapping it in an OwnedFd (which closes it once) is sound.
    unsafe {
        let fd = cvt(libc::syscall(libc::SYS_pidfd_open, pid, 0))?;
        let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// `pidfd_send_signal(pidfd, signo, NULL, 0)`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signo: i32) -> io::Result<()> {
    // SAFETY: the descriptor is borrowed and therefore open for the
    // duration of the call; a NULL siginfo pointer is documented as "behave
    // like kill(2)", so the kernel reads no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signo,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    cvt(ret).map(drop)
}

/// `kill(pid, signo)`. Only sound against pid reuse while `pid` is an
/// unreaped child of the caller (or the caller itself).
pub fn kill(pid: i32, signo: i32) -> io::Result<()> {
    // SAFETY: kill takes two integers and touches no memory.
    let ret = unsafe { libc::kill(pid, signo) };
    cvt(ret.into()).map(drop)
}

/// `killpg(pgid, signo)`: signals a whole process group.
pub fn killpg(pgid: i32, signo: i32) -> io::Result<()> {
    // SAFETY: killpg takes two integers and touches no memory.
    let ret = unsafe { libc::killpg(pgid, signo) };
    cvt(ret.into()).map(drop)
}
