//! The adoption socket (the fork start method, `docs/node-contract.md`
//! §8): a managed process on this node that forked a child hands the
//! launcher the child's pidfd and result pipe, so the child is tracked,
//! signalled and journaled like any other. The forking parent is the
//! child's real parent and reports its exit when it reaps it; if the parent
//! dies first, the child is re-parented to the launcher (a subreaper),
//! which reaps it itself. Owns [`Token::AdoptListener`] and every
//! [`Token::Adopt`] connection.
//!
//! `DIR/adopt.sock`, mode 0600, SOCK_SEQPACKET: one JSON message per
//! datagram ([`ToAdopt`] / [`FromAdopt`]), descriptors by SCM_RIGHTS.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mpctl_node::adoption::{FromAdopt, ToAdopt, SOCKET_FILE};
use mpctl_node::seqpacket::{self, Received};
use mpctl_node::sys::fds::own;
use nix::poll::PollFlags;
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use crate::error::LauncherError;
use crate::server::{Interest, Token};

/// One message from a forking parent.
pub enum Incoming {
    Adopt {
        id: String,
        pid: i32,
        fds: Vec<OwnedFd>,
    },
    Exited {
        pid: i32,
        exitcode: i32,
    },
}

pub struct Adoption {
    listener: OwnedFd,
    conns: HashMap<u64, OwnedFd>,
    next: u64,
}

impl Adoption {
    pub fn listen(dir: &Path) -> Result<Adoption, LauncherError> {
        let path = dir.join(SOCKET_FILE);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LauncherError::path("remove stale socket", &path, e)),
        }
        let err = |what: &'static str, e: nix::Error| LauncherError::path(what, &path, e.into());
        let listener = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| err("socket", e))?;
        let addr = UnixAddr::new(&path).map_err(|e| err("address", e))?;
        bind(listener.as_raw_fd(), &addr).map_err(|e| err("bind", e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|e| LauncherError::path("chmod", &path, e))?;
        listen(&listener, Backlog::new(64).map_err(|e| err("listen", e))?)
            .map_err(|e| err("listen", e))?;
        Ok(Adoption {
            listener,
            conns: HashMap::new(),
            next: 0,
        })
    }

    pub fn interest<'a>(&'a self, set: &mut Interest<'a>) {
        set.add(
            self.listener.as_fd(),
            PollFlags::POLLIN,
            Token::AdoptListener,
        );
        for (k, conn) in &self.conns {
            set.add(conn.as_fd(), PollFlags::POLLIN, Token::Adopt(*k));
        }
    }

    /// Accepts every waiting connection.
    pub fn accept_all(&mut self) {
        loop {
            match accept4(
                self.listener.as_raw_fd(),
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                Ok(fd) => {
                    self.next += 1;
                    self.conns.insert(self.next, own(fd));
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Reads every waiting message of connection `k`; a connection that
    /// closed (or sent something malformed) is dropped after what it sent
    /// before.
    pub fn on_ready(&mut self, k: u64) -> Vec<Incoming> {
        let mut out = Vec::new();
        let Some(conn) = self.conns.get(&k) else {
            return out;
        };
        loop {
            match seqpacket::recv::<ToAdopt>(conn.as_fd(), false) {
                Ok(Received::Message(ToAdopt::Adopt { id, pid }, fds)) => {
                    out.push(Incoming::Adopt { id, pid, fds });
                }
                Ok(Received::Message(ToAdopt::Exited { pid, exitcode }, _)) => {
                    out.push(Incoming::Exited { pid, exitcode });
                }
                Ok(Received::WouldBlock) => return out,
                Ok(Received::Closed) | Err(_) => {
                    self.conns.remove(&k);
                    return out;
                }
            }
        }
    }

    /// Answers an adoption on connection `k` (if it is still open).
    pub fn reply(&self, k: u64, msg: &FromAdopt) {
        if let Some(conn) = self.conns.get(&k) {
            let _ = seqpacket::send(conn.as_fd(), msg, &[]);
        }
    }
}
