//! Reaping children, decoded with [`crate::exitcode`] (correct for every
//! signal, real-time ones included).

#![allow(unsafe_code)]

use std::io;

use crate::exitcode;

/// A child that terminated, and its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: i32,
    pub exitcode: i32,
}

fn waitpid(pid: i32, flags: libc::c_int) -> io::Result<(i32, libc::c_int)> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a live, writable c_int for the whole call.
        let ret = unsafe { libc::waitpid(pid, &mut status, flags) };
        if ret >= 0 {
            return Ok((ret, status));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Reaps one terminated child without blocking; `None` when none has
/// terminated (or there are no children).
pub fn reap_any() -> io::Result<Option<Reaped>> {
    loop {
        match waitpid(-1, libc::WNOHANG) {
            Ok((0, _)) => return Ok(None),
            Ok((pid, status)) => {
                if let Some(exitcode) = exitcode(status) {
                    return Ok(Some(Reaped { pid, exitcode }));
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Waits for the child `pid` to terminate and reaps it.
pub fn reap(pid: i32) -> io::Result<i32> {
    loop {
        let (_, status) = waitpid(pid, 0)?;
        if let Some(code) = exitcode(status) {
            return Ok(code);
        }
    }
}
