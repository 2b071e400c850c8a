//! The OS calls of the node contract that need `unsafe`, one small module
//! per concern; every `unsafe` block says why it is sound (`// SAFETY:`).
//! The rest of mpctl denies `unsafe_code` and calls these.
//!
//! Signals and wait statuses are plain integers here on purpose: an enum of
//! named signals cannot express real-time signals.
//!
//! - [`pidfd`]: pidfds and signals by raw number.
//! - [`fds`]: taking ownership of inherited or received descriptors,
//!   moving them above [`crate::descriptors::FIRST_FREE_FD`], placing them,
//!   close-on-exec for everything inherited.
//! - [`wait`]: reaping, decoded with [`crate::exitcode`].
//! - [`process`]: `fork`, `_exit`, the forked child's clean start.
//! - [`spawn`]: what runs between fork and exec of `std::process::Command`.
//! - [`signals`]: the launcher's own signal dispositions.

pub mod fds;
pub mod pidfd;
pub mod process;
pub mod signals;
pub mod spawn;
pub mod wait;

use std::io;

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
