//! The launcher's signalfd (SIGCHLD, SIGTERM, SIGINT, SIGHUP, blocked by
//! [`crate::setup::signals`]). Owns [`Token::Signals`].

use std::os::fd::AsFd;

use nix::poll::PollFlags;
use nix::sys::signalfd::SignalFd;

use crate::log;
use crate::server::{Interest, Token};

/// What the signals that arrived ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Arrived {
    /// SIGCHLD (or the signalfd failed): reap.
    pub reap: bool,
    /// SIGTERM or SIGINT: stop if idle.
    pub stop: Option<i32>,
}

pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    pub fn new(fd: SignalFd) -> Signals {
        Signals { fd }
    }

    pub fn interest<'a>(&'a self, set: &mut Interest<'a>) {
        set.add(self.fd.as_fd(), PollFlags::POLLIN, Token::Signals);
    }

    /// Reads every pending signal.
    pub fn on_ready(&mut self) -> Arrived {
        let mut arrived = Arrived::default();
        loop {
            match self.fd.read_signal() {
                Ok(Some(info)) => match i32::try_from(info.ssi_signo).unwrap_or(0) {
                    libc::SIGCHLD => arrived.reap = true,
                    libc::SIGHUP => log(format_args!("SIGHUP ignored")),
                    signo => arrived.stop = Some(signo),
                },
                Ok(None) => return arrived,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    log(format_args!("reading signalfd: {e}"));
                    arrived.reap = true;
                    return arrived;
                }
            }
        }
    }
}
