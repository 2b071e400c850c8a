//! What runs in the child of a `std::process::Command` between fork and
//! exec. Each hook makes only async-signal-safe system calls, allocates
//! nothing and takes no lock. Setting any `pre_exec` makes std fork instead
//! of posix_spawn.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::Limits;

/// An empty signal mask (a mask blocked for a signalfd survives both
/// posix_spawn as std uses it and exec) and every disposition at its
/// default (ignored signals survive exec too).
pub fn clean_signals(cmd: &mut Command) {
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

/// `setsid()`: the child gets its own session and process group, so no
/// terminal signal or group kill aimed at its parent reaches it.
pub fn new_session(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and calls
    // only setsid(2), which is async-signal-safe, allocates nothing and
    // takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Each `(fd, target)`: the child finds `fd` at `target`. Every `fd` must
/// be close-on-exec and numbered above the targets
/// ([`super::fds::dup_above`]), so no `dup2` clobbers another source, and
/// the originals vanish at exec while the copies, which `dup2` leaves
/// inheritable, stay.
pub fn fds_at(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>) {
    // SAFETY: the closure runs in the forked child before exec and calls
    // only dup2(2), which is async-signal-safe and takes no lock; iterating
    // the captured Vec allocates nothing; every source is open in the child
    // (inherited across fork) until exec.
    unsafe {
        cmd.pre_exec(move || {
            for &(fd, target) in &fds {
                if libc::dup2(fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The child runs under `limits` ([`Limits::apply`]).
pub fn limits(cmd: &mut Command, limits: Limits) {
    // SAFETY: the closure runs in the forked child before exec and calls
    // only setrlimit(2) (through nix, which allocates nothing for it):
    // async-signal-safe, no lock taken.
    unsafe {
        cmd.pre_exec(move || limits.apply().map_err(io::Error::from));
    }
}
