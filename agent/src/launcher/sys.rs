//! The few OS calls that need `unsafe`: pidfds, raw-number signals, the raw
//! wait status, signal dispositions, fd flags, and what runs in the child
//! before exec (`setsid`, the bootstrap pipes' `dup2`).
//!
//! Everything else in the launcher uses safe `nix` / `std` wrappers. Signals
//! are plain `i32` here on purpose: `nix::sys::signal::Signal` cannot express
//! real-time signals, and an exit status must never be lost to a decoding
//! error.

// This module is where the crate's `unsafe` lives (see the workspace lints).
#![allow(unsafe_code)]

use std::io;

use mpctl_proto::bootstrap::{PREP_FD, RESULT_FD};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `pidfd_open(pid, 0)`: a descriptor that names this process for as long as
/// the descriptor lives, so a signal can never hit a recycled pid. The kernel
/// always sets `O_CLOEXEC` on it.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integer arguments and touches no memory of
    // ours; on success it returns a new descriptor that nothing else owns, so
    // wrapping it in an OwnedFd (which closes it once) is sound.
    unsafe {
        let fd = cvt(libc::syscall(libc::SYS_pidfd_open, pid, 0))?;
        let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// `pidfd_send_signal(pidfd, signo, NULL, 0)`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signo: i32) -> io::Result<()> {
    // SAFETY: the descriptor is borrowed and therefore open for the duration
    // of the call; a NULL siginfo pointer is documented as "behave like
    // kill(2)", so the kernel reads no memory of ours.
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

/// `kill(pid, signo)`, for the rare child whose pidfd could not be opened.
/// Only sound against pid reuse while the child is unreaped (we are its only
/// reaper, so that is the case for every child we still call running).
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

/// Reaps one terminated child without blocking: `Some((pid, raw_status))`,
/// or `None` when no child has terminated (or there are no children).
pub fn wait_any_nohang() -> io::Result<Option<(i32, i32)>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a live, writable c_int for the whole call.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 => return Ok(None),
            p if p > 0 => return Ok(Some((p, status))),
            _ => {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ECHILD) => return Ok(None),
                    _ => return Err(err),
                }
            }
        }
    }
}

/// Marks every descriptor from 3 up close-on-exec, so that whatever the
/// launcher inherited from the program that started it never reaches a
/// managed process. Uses `close_range(CLOSE_RANGE_CLOEXEC)` (Linux 5.11),
/// falling back to `fcntl` on each open descriptor.
pub fn cloexec_inherited_fds() -> io::Result<()> {
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
        // SAFETY: F_GETFD/F_SETFD only read and set the descriptor flag; on a
        // descriptor that was closed meanwhile (the read_dir handle itself)
        // they fail with EBADF, which is ignored.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// The launcher's own dispositions: SIGPIPE ignored (a vanished agent must
/// show up as EPIPE, not kill us); the signals read through the signalfd at
/// their default, since an ignored signal is discarded before it can be read
/// (and an inherited SIG_IGN for SIGCHLD would make the kernel reap our
/// children and lose their exit codes).
pub fn set_signal_dispositions() -> io::Result<()> {
    let defaults = [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    for (signo, handler) in defaults
        .iter()
        .map(|s| (*s, libc::SIG_DFL))
        .chain([(libc::SIGPIPE, libc::SIG_IGN)])
    {
        // SAFETY: installing SIG_DFL or SIG_IGN registers no code of ours.
        if unsafe { libc::signal(signo, handler) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes the child of `cmd` start with a clean signal state: an empty
/// signal mask (the launcher blocks SIGCHLD, SIGTERM, SIGINT and SIGHUP for
/// its signalfd, and a blocked mask survives both posix_spawn as used by
/// std and exec) and every disposition at its default (ignored signals
/// survive exec too). Setting `pre_exec` makes std fork instead of
/// posix_spawn, which is fine from this single-threaded process.
pub fn clean_signals_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and makes
    // only raw rt_sigaction / rt_sigprocmask system calls, which are
    // async-signal-safe, allocate nothing and take no lock. The buffers are
    // live locals; a zeroed kernel `struct sigaction` (at most 32 bytes on
    // Linux: handler, flags, restorer, mask) means SIG_DFL with no flags.
    unsafe {
        cmd.pre_exec(|| {
            let dfl = [0u64; 4];
            for signo in 1..=64i64 {
                if signo == i64::from(libc::SIGKILL) || signo == i64::from(libc::SIGSTOP) {
                    continue;
                }
                // Reserved or invalid numbers fail harmlessly with EINVAL.
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signo,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
            let empty = 0u64;
            let ret = libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &empty as *const u64,
                std::ptr::null_mut::<u64>(),
                8usize,
            );
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes `cmd` call `setsid()` in the child before exec, so the launcher
/// gets its own session and process group and no terminal signal or group
/// kill aimed at the agent reaches it.
pub fn new_session_on_spawn(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only
    // setsid(2), which is async-signal-safe, allocates nothing and takes no
    // lock.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes the child of `cmd` find `prep` on fd 3 and `result` on fd 4 (the
/// bootstrap's pipes, `mpctl_proto::bootstrap::{PREP_FD, RESULT_FD}`). Both sources are close-on-exec descriptors numbered
/// above 4 (see [`dup_above`]), so neither is clobbered by the other's
/// `dup2`, and the originals vanish at exec while the copies, which `dup2`
/// leaves inheritable, stay.
pub fn bootstrap_fds_on_spawn(cmd: &mut std::process::Command, prep: RawFd, result: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // dup2(2), which is async-signal-safe, allocates nothing and takes no
    // lock; `prep` and `result` are open in the child (inherited across fork)
    // until exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(prep, PREP_FD) < 0 || libc::dup2(result, RESULT_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A close-on-exec duplicate of `fd` numbered 10 or above.
pub fn dup_above(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid borrowed descriptor returns a new
    // descriptor that nothing else owns, which OwnedFd then takes over.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Makes the child of `cmd` find `fd` at `target` (the forkserver's socket).
/// `fd` is close-on-exec and numbered above `target`'s neighbours (see
/// [`dup_above`]), so the original vanishes at exec and only the copy stays.
pub fn fd_at_on_spawn(cmd: &mut std::process::Command, fd: RawFd, target: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // dup2(2), which is async-signal-safe, allocates nothing and takes no
    // lock; `fd` is open in the child until exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, target) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Owns a descriptor that `accept4` or `recvmsg` just created.
pub fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process in the call that
    // returned it; nothing else knows of it yet.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Makes the child of `cmd` run under the process's rlimits
/// (`mpctl_proto::bootstrap::apply_limits`).
pub fn limits_on_spawn(cmd: &mut std::process::Command, memory_bytes: u64, cpu_seconds: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // setrlimit(2) (through nix, which allocates nothing for it): async-
    // signal-safe, no lock taken.
    unsafe {
        cmd.pre_exec(move || {
            mpctl_proto::bootstrap::apply_limits(memory_bytes, cpu_seconds).map_err(io::Error::from)
        });
    }
}
