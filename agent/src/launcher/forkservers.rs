//! Forkservers (DESIGN §3): one per (program, preload list), started by this
//! launcher like any child, talking to it over a SOCK_SEQPACKET socket on the
//! server's fd 3.
//!
//! A start sends the child's stdout and stderr write ends and its bootstrap
//! pipes by SCM_RIGHTS; the server forks and answers with the pid, later
//! with the exit code. If a server dies, the launcher (a subreaper) inherits
//! its running children and reaps them itself, so their exits are still
//! journaled; the next start for that key starts a new server.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mpctl_proto::bootstrap::{
    FromForkserver, ToForkserver, ENV_BOOTSTRAP, ENV_FORKSERVER, ENV_PRELOAD, FORKSERVER_FD,
    MAX_FORKSERVER_MESSAGE,
};
use nix::sys::socket::{
    recv, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
    UnixAddr,
};

use super::output::OutPipe;
use super::protocol::LaunchSpec;
use super::sys;

/// Which server: the program and the preload hooks it ran.
pub type Key = (String, Vec<String>);

/// A start sent to a server and not answered yet: the launcher's ends of the
/// child's pipes.
pub struct PendingStart {
    pub pipes: Vec<OutPipe>,
}

pub struct Server {
    pub pid: i32,
    pub sock: OwnedFd,
    pub log_path: PathBuf,
    pub pending: HashMap<String, PendingStart>,
}

#[derive(Default)]
pub struct Forkservers {
    pub servers: HashMap<u64, (Key, Server)>,
    next: u64,
}

impl Forkservers {
    /// The token of the server for `key`, if one is running.
    pub fn find(&self, key: &Key) -> Option<u64> {
        self.servers
            .iter()
            .find(|(_, (k, _))| k == key)
            .map(|(t, _)| *t)
    }

    /// Starts the server for `key` with the environment and directory of
    /// the first start that needs it.
    pub fn start(&mut self, key: Key, spec: &LaunchSpec, dir: &Path) -> Result<u64, String> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        let theirs = sys::dup_above(theirs.as_fd()).map_err(|e| format!("dup: {e}"))?;
        self.next += 1;
        let token = self.next;
        let log_path = dir.join(format!("forkserver-{token}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| format!("forkserver log {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&key.0);
        cmd.env_clear()
            .envs(
                spec.env
                    .iter()
                    .filter(|(k, _)| !k.starts_with("MPCTL_PROCESS_") && k != ENV_BOOTSTRAP)
                    .map(|(k, v)| (k, v)),
            )
            .env(ENV_FORKSERVER, FORKSERVER_FD.to_string())
            .env(ENV_PRELOAD, key.1.join(","))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        sys::clean_signals_on_spawn(&mut cmd);
        sys::fd_at_on_spawn(&mut cmd, theirs.as_raw_fd(), FORKSERVER_FD);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the forkserver {:?}: {e}", key.0))?;
        drop(theirs);
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        nix::fcntl::fcntl(
            &ours,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| format!("forkserver socket: {e}"))?;
        self.servers.insert(
            token,
            (
                key,
                Server {
                    pid,
                    sock: ours,
                    log_path,
                    pending: HashMap::new(),
                },
            ),
        );
        Ok(token)
    }
}

/// Sends one start with the child's four descriptors.
pub fn send_start(server: &Server, spec: &LaunchSpec, fds: &[OwnedFd; 4]) -> io::Result<()> {
    let body = serde_json::to_vec(&ToForkserver::Start {
        id: spec.id.clone(),
        memory_bytes: spec.memory_limit,
        cpu_seconds: spec.cpu_limit,
    })
    .map_err(io::Error::other)?;
    let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    sendmsg::<UnixAddr>(
        server.sock.as_raw_fd(),
        &[IoSlice::new(&body)],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(|_| ())
    .map_err(io::Error::from)
}

/// What the server said; `Err` when it is gone.
pub fn receive(server: &Server) -> Result<Vec<FromForkserver>, String> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_FORKSERVER_MESSAGE];
    loop {
        match recv(server.sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Err("it closed its socket".into()),
            Ok(n) => match serde_json::from_slice(&buf[..n]) {
                Ok(msg) => out.push(msg),
                Err(e) => return Err(format!("malformed message: {e}")),
            },
            Err(nix::errno::Errno::EAGAIN) => return Ok(out),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}
