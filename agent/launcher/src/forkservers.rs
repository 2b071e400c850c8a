//! Forkservers (`docs/node-contract.md` §7): one per (program, preload
//! list), started by this launcher like any child, talking to it over a
//! SOCK_SEQPACKET socket on the server's fd 3. Owns every
//! [`Token::Forkserver`] descriptor and the starts sent and not answered.
//!
//! A start sends the child's stdout and stderr write ends and its bootstrap
//! pipes by SCM_RIGHTS; the server forks and answers with the pid, later
//! with the exit code. If a server dies, the launcher (a subreaper) inherits
//! its running children and reaps them itself, so their exits are still
//! journaled; the next start for that key starts a new server.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mpctl_node::descriptors::FORKSERVER_FD;
use mpctl_node::env;
use mpctl_node::forkserver::{FromForkserver, ToForkserver};
use mpctl_node::seqpacket::{self, Received};
use mpctl_node::sys::{fds, spawn as pre_exec};
use nix::poll::PollFlags;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::log;
use crate::output::OutPipe;
use crate::protocol::LaunchSpec;
use crate::server::{Interest, Token};
use crate::spawn;

/// Which server: the program, the preload hooks it ran, and the user it
/// runs as (its children are forked from it, so they run as that user too).
pub type Key = (String, Vec<String>, Option<crate::protocol::RunAs>);

/// What a server's messages (or its end) mean for the rest of the launcher.
pub enum Event {
    /// A start's child is running: track it.
    Started {
        id: String,
        pid: i32,
        pipes: Vec<OutPipe>,
    },
    StartFailed {
        id: String,
        error: String,
    },
    /// A child it forked has exited.
    Exited {
        pid: i32,
        exitcode: i32,
    },
}

struct Server {
    key: Key,
    pid: i32,
    sock: OwnedFd,
    log_path: PathBuf,
    /// Starts sent and not answered: the launcher's ends of each child's
    /// pipes.
    pending: HashMap<String, Vec<OutPipe>>,
}

pub struct Forkservers {
    /// Where the servers' logs go.
    dir: PathBuf,
    servers: HashMap<u64, Server>,
    next: u64,
}

impl Forkservers {
    pub fn new(dir: &Path) -> Forkservers {
        Forkservers {
            dir: dir.to_owned(),
            servers: HashMap::new(),
            next: 0,
        }
    }

    pub fn interest<'a>(&'a self, set: &mut Interest<'a>) {
        for (token, server) in &self.servers {
            set.add(
                server.sock.as_fd(),
                PollFlags::POLLIN,
                Token::Forkserver(*token),
            );
        }
    }

    /// Sends the start to the server for (program, preload), starting that
    /// server first if there is none; the answer comes as an [`Event`].
    pub fn start(&mut self, spec: &LaunchSpec, preload: Vec<String>) -> Result<(), String> {
        let program = spec.argv.first().cloned().ok_or("empty argv")?;
        let (child_fds, pipes) = spawn::forkserver_child(spec)?;
        let key = (program, preload, spec.run_as);
        let token = match self.servers.iter().find(|(_, s)| s.key == key) {
            Some((t, _)) => *t,
            None => self.start_server(key, spec)?,
        };
        let server = self.servers.get_mut(&token).expect("found or started");
        let msg = ToForkserver::Start {
            id: spec.id.clone(),
            limits: spawn::limits(spec),
        };
        let borrowed = child_fds.each_ref().map(AsFd::as_fd);
        seqpacket::send(server.sock.as_fd(), &msg, &borrowed)
            .map_err(|e| format!("sending the start to the forkserver: {e}"))?;
        server.pending.insert(spec.id.clone(), pipes);
        Ok(())
    }

    /// Starts the server for `key` with the environment and directory of
    /// the first start that needs it.
    fn start_server(&mut self, key: Key, spec: &LaunchSpec) -> Result<u64, String> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        let theirs = fds::dup_above(theirs.as_fd()).map_err(|e| format!("dup: {e}"))?;
        self.next += 1;
        let token = self.next;
        let log_path = self.dir.join(format!("forkserver-{token}.log"));
        let log_file = OpenOptions::new()
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
                    .filter(|(k, _)| !env::is_per_process(k))
                    .map(|(k, v)| (k, v)),
            )
            .env(env::FORKSERVER, FORKSERVER_FD.to_string())
            .env(env::PRELOAD, key.1.join(","))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .process_group(0);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        spawn::run_as(&mut cmd, key.2);
        pre_exec::clean_signals(&mut cmd);
        pre_exec::fds_at(&mut cmd, vec![(theirs.as_raw_fd(), FORKSERVER_FD)]);
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start the forkserver {:?}: {}",
                key.0,
                spawn::run_as_error(key.2, e)
            )
        })?;
        drop(theirs);
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        nix::fcntl::fcntl(
            &ours,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| format!("forkserver socket: {e}"))?;
        log(format_args!(
            "forkserver {pid} for {:?} preload {:?} started",
            key.0, key.1
        ));
        self.servers.insert(
            token,
            Server {
                key,
                pid,
                sock: ours,
                log_path,
                pending: HashMap::new(),
            },
        );
        Ok(token)
    }

    /// The server's socket is ready: what it said, or the end of it.
    pub fn on_ready(&mut self, token: u64) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let Some(server) = self.servers.get_mut(&token) else {
                return events;
            };
            let msg = match seqpacket::recv::<FromForkserver>(server.sock.as_fd(), false) {
                Ok(Received::Message(msg, _)) => msg,
                Ok(Received::WouldBlock) => return events,
                Ok(Received::Closed) => {
                    events.extend(self.gone(token, "it closed its socket"));
                    return events;
                }
                Err(e) => {
                    events.extend(self.gone(token, &e.to_string()));
                    return events;
                }
            };
            match msg {
                FromForkserver::Ready { pid } => log(format_args!("forkserver {pid} ready")),
                FromForkserver::PreloadFailed { error } => {
                    events.extend(self.gone(token, &error));
                    return events;
                }
                FromForkserver::Started { id, pid } => {
                    if let Some(pipes) = server.pending.remove(&id) {
                        events.push(Event::Started { id, pid, pipes });
                    }
                }
                FromForkserver::StartFailed { id, error } => {
                    server.pending.remove(&id);
                    events.push(Event::StartFailed { id, error });
                }
                FromForkserver::Exited { pid, exitcode } => {
                    events.push(Event::Exited { pid, exitcode });
                }
            }
        }
    }

    /// A reaped process: if it was a server, the end of it (`Some`, with
    /// the starts that fail with it); `None` for any other pid.
    pub fn reaped(&mut self, pid: i32, exitcode: i32) -> Option<Vec<Event>> {
        let token = self
            .servers
            .iter()
            .find(|(_, s)| s.pid == pid)
            .map(|(t, _)| *t)?;
        Some(self.gone(token, &format!("exited with {exitcode}")))
    }

    /// A server stopped: the starts it had not answered fail; its running
    /// children are the launcher's now (subreaper) and are reaped like any
    /// child.
    fn gone(&mut self, token: u64, reason: &str) -> Vec<Event> {
        let Some(server) = self.servers.remove(&token) else {
            return Vec::new();
        };
        let program = &server.key.0;
        log(format_args!(
            "forkserver {} for {program:?} gone: {reason}",
            server.pid
        ));
        server
            .pending
            .into_keys()
            .map(|id| Event::StartFailed {
                id,
                error: format!(
                    "the forkserver for {program} stopped ({reason}); its log is {}",
                    server.log_path.display()
                ),
            })
            .collect()
    }
}
