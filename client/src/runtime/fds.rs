//! Taking ownership of the bootstrap's inherited descriptors: the only
//! `unsafe` in the SDK.

use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};

use nix::sys::stat::{fstat, SFlag};

/// The inherited pipe end `fd`, as a `File`, after checking that it is one.
///
/// The check turns a stray `MPCTL_BOOTSTRAP` in a normal program's
/// environment into an error instead of taking over a descriptor something
/// else owns.
pub fn adopt_pipe(fd: RawFd) -> io::Result<File> {
    // SAFETY: borrowing only for fstat; if `fd` is not open, fstat fails with
    // EBADF and we return before anything else uses it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = fstat(borrowed).map_err(|e| io::Error::other(format!("fd {fd}: {e}")))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
        return Err(io::Error::other(format!(
            "fd {fd} is not the bootstrap pipe"
        )));
    }
    // SAFETY: `fd` is an open pipe that the launcher placed here for this
    // process's bootstrap alone (it `dup2`ed it into place just before exec);
    // `init` adopts each of the two descriptors once, before any other code
    // of the program can have used them.
    Ok(unsafe { File::from_raw_fd(fd) })
}
