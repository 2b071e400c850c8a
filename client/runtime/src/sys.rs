//! The child runtime's OS layer: the node contract's calls
//! (`mpctl_node::sys`, where mpctl's `unsafe` lives) as this runtime uses
//! them. No `unsafe` here.

use std::fs::File;
use std::io;
use std::os::fd::{OwnedFd, RawFd};

pub use mpctl_node::sys::fds::{close_inherited, dup_above};
pub use mpctl_node::sys::pidfd::pidfd_open;
pub use mpctl_node::sys::process::{exit_now, fork, fork_from_fresh_thread, set_up_forked_child};
pub use mpctl_node::sys::wait::{reap, reap_any};

use mpctl_node::sys::fds::{adopt_inherited, adopt_pipe, Kind};

/// The inherited bootstrap pipe end `fd`, after checking that it is one.
pub fn bootstrap_pipe(fd: RawFd) -> io::Result<File> {
    adopt_pipe(fd, "the bootstrap pipe")
}

/// The inherited forkserver socket at `fd`, after checking that it is one.
pub fn forkserver_socket(fd: RawFd) -> io::Result<OwnedFd> {
    adopt_inherited(fd, Kind::Socket, "the forkserver socket")
}
