//! The descriptor numbers of the node contract (`docs/node-contract.md`
//! §2). A function target's child finds its preparation data on
//! [`PREP_FD`] and writes its result on [`RESULT_FD`]; a forkserver finds
//! its socket to the launcher on [`FORKSERVER_FD`]. Stdin is `/dev/null`,
//! stdout and stderr go to the process's output files.

use std::os::fd::RawFd;

/// Read end of the preparation pipe: the JSON [`crate::Preparation`], then EOF.
pub const PREP_FD: RawFd = 3;
/// Write end of the result pipe: the function's JSON result, at most
/// [`crate::MAX_RESULT`] bytes.
pub const RESULT_FD: RawFd = 4;
/// A forkserver's SOCK_SEQPACKET socket to its launcher.
pub const FORKSERVER_FD: RawFd = 3;
/// Descriptors the OS layer moves out of the way are numbered from here
/// ([`crate::sys::fds::dup_above`]), so placing one at 0–4 never clobbers
/// another.
pub const FIRST_FREE_FD: RawFd = 10;

/// The value of [`crate::env::BOOTSTRAP`]: the two descriptors, `"3,4"`.
pub fn bootstrap_value() -> String {
    format!("{PREP_FD},{RESULT_FD}")
}
