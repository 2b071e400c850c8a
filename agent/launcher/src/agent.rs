//! The agent side: `DIR/launcher.sock` and the one agent connection
//! ([`Conn`]). Owns [`Token::AgentListener`] and [`Token::Agent`]. Only a
//! peer whose uid the agent policy allows (the launcher's own uid) is
//! accepted (`SO_PEERCRED`); any other is closed at once and counted, and
//! never touches the current connection. An allowed new connection
//! replaces the old one (after what the old one sent is handled): the
//! newest agent connection from the right uid wins, as an agent restart
//! needs. While no agent has come yet, a grace period keeps an otherwise
//! idle launcher alive.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use mpctl_node::peer::{PeerPolicy, RefusalLog};
use nix::poll::PollFlags;

use crate::conn::Conn;
pub use crate::conn::Incoming;
use crate::log;
use crate::protocol::FromLauncher;
use crate::server::{Interest, Token};

/// How long a freshly started launcher waits for its first agent before it
/// exits for lack of anything to do.
const FIRST_CONNECTION_GRACE: Duration = Duration::from_secs(30);

pub struct AgentLink {
    listener: UnixListener,
    policy: PeerPolicy,
    refused: RefusalLog,
    conn: Option<Conn>,
    seen_agent: bool,
    started: Instant,
}

impl AgentLink {
    pub fn new(listener: UnixListener, policy: PeerPolicy) -> AgentLink {
        AgentLink {
            listener,
            policy,
            refused: RefusalLog::new(crate::setup::SOCKET_FILE),
            conn: None,
            seen_agent: false,
            started: Instant::now(),
        }
    }

    pub fn interest<'a>(&'a self, set: &mut Interest<'a>) {
        set.add(
            self.listener.as_fd(),
            PollFlags::POLLIN,
            Token::AgentListener,
        );
        if let Some(conn) = &self.conn {
            let mut ev = PollFlags::POLLIN;
            if conn.wants_write() {
                ev |= PollFlags::POLLOUT;
            }
            set.add(conn.fd(), ev, Token::Agent);
        }
    }

    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Until the first agent came (or the grace passed): how long it may
    /// still take. `None` once that no longer keeps the launcher up.
    pub fn grace_left(&self) -> Option<Duration> {
        (!self.seen_agent).then(|| FIRST_CONNECTION_GRACE.saturating_sub(self.started.elapsed()))
    }

    /// No agent, and the first one had its chance to come.
    pub fn is_idle(&self) -> bool {
        self.conn.is_none() && self.grace_left().is_none_or(|left| left.is_zero())
    }

    /// The next waiting connection from an allowed peer, if any; others
    /// are closed (and counted) on the way.
    pub fn accept(&mut self) -> Option<UnixStream> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => match self.policy.check(&stream) {
                    Ok(_) => return Some(stream),
                    Err(refusal) => {
                        if let Some(line) = self.refused.record(&refusal) {
                            log(format_args!("{line}"));
                        }
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log(format_args!("accept: {e}"));
                    return None;
                }
            }
        }
    }

    /// Makes `stream` the agent connection (dropping the old one, whose
    /// messages the caller has handled). False if it could not be set up.
    pub fn install(&mut self, stream: UnixStream) -> bool {
        if self.conn.take().is_some() {
            log(format_args!("new agent connection replaces the old one"));
        }
        match Conn::new(stream) {
            Ok(conn) => {
                self.conn = Some(conn);
                self.seen_agent = true;
                true
            }
            Err(e) => {
                log(format_args!("setting up agent connection: {e}"));
                false
            }
        }
    }

    /// Sends to the agent if one is connected; a failed send drops it.
    pub fn send(&mut self, msg: &FromLauncher) {
        if let Some(conn) = &mut self.conn {
            if let Err(e) = conn.send(msg) {
                self.close(&e);
            }
        }
    }

    /// Drops the connection, saying why.
    pub fn close(&mut self, reason: &str) {
        log(format_args!("agent connection closed: {reason}"));
        self.conn = None;
    }

    /// The connection is ready: flushes queued output, reads what the agent
    /// sent. When `closed` is set, the caller handles `messages` (answers
    /// still go out) and then [`AgentLink::close`]s the connection.
    pub fn on_ready(&mut self, revents: PollFlags) -> Incoming {
        let Some(conn) = &mut self.conn else {
            return Incoming::default();
        };
        if revents.contains(PollFlags::POLLOUT) {
            if let Err(e) = conn.flush() {
                self.close(&e);
                return Incoming::default();
            }
        }
        if !revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return Incoming::default();
        }
        conn.read()
    }
}
