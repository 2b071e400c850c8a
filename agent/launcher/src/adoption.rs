//! The adoption socket (the fork start method, `docs/node-contract.md`
//! §8, §12): a managed process on this node that forked a child hands the
//! launcher the child's pidfd and result pipe, so the child is tracked,
//! signalled and journaled like any other. The forking parent is the
//! child's real parent and reports its exit when it reaps it; if the parent
//! dies first, the child is re-parented to the launcher (a subreaper),
//! which reaps it itself. Owns [`Token::AdoptListener`] and every
//! [`Token::Adopt`] connection.
//!
//! `DIR/adopt.sock`, mode 0600 in the 0700 launcher directory,
//! SOCK_SEQPACKET: one JSON message per datagram ([`ToAdopt`] /
//! [`FromAdopt`]), descriptors by SCM_RIGHTS.
//!
//! Who may say what: a connection is accepted only from a uid the policy
//! allows (`SO_PEERCRED`), and the peer's pidfd is opened at once, so the
//! peer pid keeps naming the process that connected. An adoption is
//! believed only when the pidfd it carries names the claimed pid and that
//! process's parent is the peer ([`Adoption::check_adopt`]; the server
//! also requires the peer to be a managed process). An exit is believed
//! only from the connection that adopted that pid, and only once the
//! child's pidfd says it has ended ([`Adoption::owns`]); anything else is
//! refused, counted and logged (throttled), and the child stays running.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mpctl_node::adoption::{FromAdopt, ToAdopt, SOCKET_FILE};
use mpctl_node::peer::{Peer, PeerPolicy, RefusalLog};
use mpctl_node::procfs;
use mpctl_node::seqpacket::{self, Received};
use mpctl_node::sys::fds::own;
use mpctl_node::sys::pidfd;
use nix::poll::PollFlags;
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use crate::error::LauncherError;
use crate::log;
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

/// One forking parent's connection.
struct Conn {
    sock: OwnedFd,
    peer: Peer,
    /// Opened at accept: while it has not ended, `peer.pid` is this peer.
    peer_pidfd: OwnedFd,
    /// The pids this connection adopted and has not reported yet.
    adopted: HashSet<i32>,
}

pub struct Adoption {
    listener: OwnedFd,
    policy: PeerPolicy,
    refused: RefusalLog,
    conns: HashMap<u64, Conn>,
    next: u64,
}

impl Adoption {
    pub fn listen(dir: &Path, policy: PeerPolicy) -> Result<Adoption, LauncherError> {
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
            policy,
            refused: RefusalLog::new(SOCKET_FILE),
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
            set.add(conn.sock.as_fd(), PollFlags::POLLIN, Token::Adopt(*k));
        }
    }

    /// Accepts every waiting connection from an allowed peer; closes (and
    /// counts) the others.
    pub fn accept_all(&mut self) {
        loop {
            match accept4(
                self.listener.as_raw_fd(),
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                Ok(fd) => {
                    let sock = own(fd);
                    let checked = self.policy.check(&sock).map_err(|r| r.to_string());
                    let opened = checked.and_then(|peer| {
                        pidfd::pidfd_open(peer.pid)
                            .map(|fd| (peer, fd))
                            .map_err(|e| format!("peer {peer}: pidfd_open: {e}"))
                    });
                    match opened {
                        Ok((peer, peer_pidfd)) => {
                            self.next += 1;
                            self.conns.insert(
                                self.next,
                                Conn {
                                    sock,
                                    peer,
                                    peer_pidfd,
                                    adopted: HashSet::new(),
                                },
                            );
                        }
                        Err(reason) => self.refuse(&reason),
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Reads every waiting message of connection `k`. The flag is set when
    /// the connection closed (or sent something malformed): the caller
    /// handles what it sent before (a parent's last `exited` comes just
    /// before its close) and then [`Adoption::close`]s it.
    pub fn on_ready(&mut self, k: u64) -> (Vec<Incoming>, bool) {
        let mut out = Vec::new();
        let Some(conn) = self.conns.get(&k) else {
            return (out, false);
        };
        loop {
            match seqpacket::recv::<ToAdopt>(conn.sock.as_fd(), false) {
                Ok(Received::Message(ToAdopt::Adopt { id, pid }, fds)) => {
                    out.push(Incoming::Adopt { id, pid, fds });
                }
                Ok(Received::Message(ToAdopt::Exited { pid, exitcode }, _)) => {
                    out.push(Incoming::Exited { pid, exitcode });
                }
                Ok(Received::WouldBlock) => return (out, false),
                Ok(Received::Closed) | Err(_) => return (out, true),
            }
        }
    }

    /// Drops connection `k` (its children stay tracked; if their parent is
    /// gone, the launcher reaps them as a subreaper).
    pub fn close(&mut self, k: u64) {
        self.conns.remove(&k);
    }

    /// Answers an adoption on connection `k` (if it is still open).
    pub fn reply(&self, k: u64, msg: &FromAdopt) {
        if let Some(conn) = self.conns.get(&k) {
            let _ = seqpacket::send(conn.sock.as_fd(), msg, &[]);
        }
    }

    /// Counts a refused connection or message, logging when due.
    pub fn refuse(&mut self, reason: &dyn std::fmt::Display) {
        if let Some(line) = self.refused.record(reason) {
            log(format_args!("{line}"));
        }
    }

    /// Whether connection `k` may hand over child `pid` with `fds`: the
    /// first descriptor is a pidfd naming `pid`, whose parent is the peer
    /// (still the process that connected). Returns the peer's pid.
    pub fn check_adopt(&self, k: u64, pid: i32, fds: &[OwnedFd]) -> Result<i32, String> {
        let conn = self.conns.get(&k).ok_or("the connection is gone")?;
        let [child_pidfd, _result] = fds else {
            return Err("an adoption carries exactly a pidfd and a result pipe".into());
        };
        let names = |fd: &OwnedFd| procfs::pidfd_pid(fd.as_fd()).map_err(|e| e.to_string());
        let named = names(child_pidfd)?;
        if named != pid {
            return Err(format!(
                "the pidfd names pid {named}, not {pid} (-1: already reaped)"
            ));
        }
        let ppid = procfs::ppid_of(pid).map_err(|e| format!("parent of pid {pid}: {e}"))?;
        // Not reaped in between, so /proc/PID was that process; and the
        // peer still alive, so its pid was not recycled.
        let still = names(child_pidfd)?;
        let peer_alive = !procfs::pidfd_exited(&conn.peer_pidfd).map_err(|e| e.to_string())?;
        if still != pid || !peer_alive {
            return Err(format!("pid {pid} or its parent ended during the check"));
        }
        if ppid != conn.peer.pid {
            return Err(format!(
                "pid {pid} is not a child of the sender ({}): its parent is {ppid}",
                conn.peer
            ));
        }
        Ok(conn.peer.pid)
    }

    /// Connection `k` adopted `pid`: only it may report that exit.
    pub fn adopted(&mut self, k: u64, pid: i32) {
        if let Some(conn) = self.conns.get_mut(&k) {
            conn.adopted.insert(pid);
        }
    }

    /// Whether connection `k` adopted `pid` (and has not reported it yet);
    /// `Err` names the sender for the refusal.
    pub fn owns(&self, k: u64, pid: i32) -> Result<(), String> {
        match self.conns.get(&k) {
            Some(conn) if conn.adopted.contains(&pid) => Ok(()),
            Some(conn) => Err(format!(
                "an exit for pid {pid} from {}, which did not adopt it",
                conn.peer
            )),
            None => Err(format!("an exit for pid {pid} from a closed connection")),
        }
    }

    /// The exit of `pid` was reported on `k` and believed.
    pub fn reported(&mut self, k: u64, pid: i32) {
        if let Some(conn) = self.conns.get_mut(&k) {
            conn.adopted.remove(&pid);
        }
    }
}
