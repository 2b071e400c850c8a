//! The adoption socket (the fork start method, DESIGN §3): a managed process
//! on this node that forked a child hands the launcher the child's pidfd and
//! result pipe, so the child is tracked, signalled and journaled like any
//! other. The forking parent is the child's real parent and reports its exit
//! when it reaps it; if the parent dies first, the child is re-parented to
//! the launcher (a subreaper), which reaps it itself.
//!
//! `DIR/adopt.sock`, mode 0600, SOCK_SEQPACKET: one JSON message per
//! datagram ([`ToAdopt`] / [`FromAdopt`]), descriptors by SCM_RIGHTS.

use std::collections::HashMap;
use std::fs;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mpctl_proto::bootstrap::{FromAdopt, ToAdopt, MAX_FORKSERVER_MESSAGE};
use nix::sys::socket::{
    accept4, bind, listen, recvmsg, send, socket, AddressFamily, Backlog, ControlMessageOwned,
    MsgFlags, SockFlag, SockType, UnixAddr,
};

use super::error::LauncherError;
use super::sys;

pub const ADOPT_SOCKET_FILE: &str = "adopt.sock";

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
    pub listener: OwnedFd,
    pub conns: HashMap<u64, OwnedFd>,
    next: u64,
}

impl Adoption {
    pub fn listen(dir: &Path) -> Result<Adoption, LauncherError> {
        let path = dir.join(ADOPT_SOCKET_FILE);
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

    /// Accepts every waiting connection.
    pub fn accept_all(&mut self) {
        loop {
            match accept4(
                self.listener.as_raw_fd(),
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                Ok(fd) => {
                    self.next += 1;
                    self.conns.insert(self.next, sys::own(fd));
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}

/// Reads every waiting message of one connection; `None` once it closed (or
/// sent something malformed, which closes it).
pub fn receive(conn: &OwnedFd) -> Option<Vec<Incoming>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_FORKSERVER_MESSAGE];
    loop {
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (len, fds) = match recvmsg::<UnixAddr>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            fds.extend(raw.into_iter().map(sys::own));
                        }
                    }
                }
                (msg.bytes, fds)
            }
            Err(nix::errno::Errno::EAGAIN) => return Some(out),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        };
        if len == 0 {
            return if out.is_empty() { None } else { Some(out) };
        }
        match serde_json::from_slice::<ToAdopt>(&buf[..len]) {
            Ok(ToAdopt::Adopt { id, pid }) => out.push(Incoming::Adopt { id, pid, fds }),
            Ok(ToAdopt::Exited { pid, exitcode }) => out.push(Incoming::Exited { pid, exitcode }),
            Err(_) => return None,
        }
    }
}

pub fn reply(conn: &OwnedFd, msg: &FromAdopt) {
    if let Ok(bytes) = serde_json::to_vec(msg) {
        let _ = send(conn.as_fd().as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL);
    }
}
