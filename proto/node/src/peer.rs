//! Who is on the other end of a node-local Unix socket, and who may be
//! (`docs/node-contract.md` §12). Every accept on `launcher.sock`,
//! `adopt.sock` and `pool.sock` reads the peer's credentials
//! (`SO_PEERCRED`: pid, effective uid and gid at `connect()` time, set by
//! the kernel, not by the peer) and checks the uid against a
//! [`PeerPolicy`]; a refused connection is closed at once and counted in a
//! [`RefusalLog`] (one log line per interval, not one per connection).

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// The kernel's record of who connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} uid {} gid {}", self.pid, self.uid, self.gid)
    }
}

/// `getsockopt(SO_PEERCRED)` on a connected Unix socket (or one end of a
/// socketpair, where it names the process that made the pair).
pub fn peer_of(sock: impl AsFd) -> io::Result<Peer> {
    let c = getsockopt(&sock, PeerCredentials).map_err(io::Error::from)?;
    Ok(Peer {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
    })
}

/// The uids allowed to connect to one socket. The default is the serving
/// process's own effective uid; jobs that run as another user (`--run-as`)
/// need theirs added for the sockets a job uses (`adopt.sock`,
/// `pool.sock`), never for `launcher.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    uids: Vec<u32>,
}

impl PeerPolicy {
    /// Only this process's effective uid.
    pub fn own_uid() -> PeerPolicy {
        PeerPolicy {
            uids: vec![nix::unistd::geteuid().as_raw()],
        }
    }

    /// This process's effective uid and the uids jobs run as.
    pub fn with_job_uids(job_uids: impl IntoIterator<Item = u32>) -> PeerPolicy {
        let mut policy = PeerPolicy::own_uid();
        for uid in job_uids {
            if !policy.uids.contains(&uid) {
                policy.uids.push(uid);
            }
        }
        policy
    }

    pub fn uids(&self) -> &[u32] {
        &self.uids
    }

    pub fn allows(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }

    /// The peer of `sock` if its uid is allowed.
    pub fn check(&self, sock: impl AsFd) -> Result<Peer, Refusal> {
        let peer = peer_of(sock).map_err(Refusal::NoCredentials)?;
        if self.allows(peer.uid) {
            Ok(peer)
        } else {
            Err(Refusal::Uid {
                peer,
                allowed: self.uids.clone(),
            })
        }
    }
}

impl Default for PeerPolicy {
    fn default() -> Self {
        PeerPolicy::own_uid()
    }
}

/// Why a connection was refused.
#[derive(Debug)]
pub enum Refusal {
    /// `SO_PEERCRED` failed: the peer cannot be named, so it is refused.
    NoCredentials(io::Error),
    Uid {
        peer: Peer,
        allowed: Vec<u32>,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoCredentials(e) => write!(f, "peer credentials unavailable: {e}"),
            Refusal::Uid { peer, allowed } => {
                write!(f, "peer {peer}: uid not allowed (allowed: {allowed:?})")
            }
        }
    }
}

/// One line per interval for refused connections, whatever their number:
/// the first refusal is logged at once, later ones are counted and the
/// count goes out with the next refusal after the interval.
#[derive(Debug)]
pub struct RefusalLog {
    what: &'static str,
    interval: Duration,
    last: Option<Instant>,
    since_last: u64,
    total: u64,
}

/// Refusals of one socket are logged at most this often.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl RefusalLog {
    /// `what` names the socket in the log line (`"adopt.sock"`).
    pub fn new(what: &'static str) -> RefusalLog {
        RefusalLog::with_interval(what, REFUSAL_LOG_INTERVAL)
    }

    pub fn with_interval(what: &'static str, interval: Duration) -> RefusalLog {
        RefusalLog {
            what,
            interval,
            last: None,
            since_last: 0,
            total: 0,
        }
    }

    /// Counts one refusal; returns the line to log, if one is due.
    pub fn record(&mut self, reason: &dyn fmt::Display) -> Option<String> {
        self.record_at(reason, Instant::now())
    }

    fn record_at(&mut self, reason: &dyn fmt::Display, now: Instant) -> Option<String> {
        self.total += 1;
        self.since_last += 1;
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            return None;
        }
        let n = std::mem::take(&mut self.since_last);
        self.last = Some(now);
        Some(format!(
            "{}: refused {n} connection{} or message{} since the last report ({} in all); latest: {reason}",
            self.what,
            if n == 1 { "" } else { "s" },
            if n == 1 { "" } else { "s" },
            self.total
        ))
    }

    /// Every refusal counted so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_socketpair_names_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = peer_of(&a).unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(peer.gid, nix::unistd::getegid().as_raw());
        assert_eq!(PeerPolicy::own_uid().check(&a).unwrap(), peer);
    }

    #[test]
    fn policy_with_job_uids_keeps_its_own_first_and_no_duplicates() {
        let own = nix::unistd::geteuid().as_raw();
        let p = PeerPolicy::with_job_uids([65534, own, 65534]);
        let want: Vec<u32> = if own == 65534 {
            vec![own]
        } else {
            vec![own, 65534]
        };
        assert_eq!(p.uids(), want.as_slice());
        assert!(p.allows(65534));
        assert!(!p.allows(12345));
        assert_eq!(PeerPolicy::default(), PeerPolicy::own_uid());
    }

    #[test]
    fn a_uid_outside_the_policy_is_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        let policy = PeerPolicy {
            uids: vec![u32::MAX - 7],
        };
        let e = policy.check(&a).unwrap_err();
        assert!(matches!(e, Refusal::Uid { .. }), "{e}");
        assert!(e.to_string().contains("uid not allowed"), "{e}");
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_their_count() {
        let mut log = RefusalLog::with_interval("adopt.sock", Duration::from_secs(10));
        let t0 = Instant::now();
        let first = log.record_at(&"uid 5", t0).unwrap();
        assert_eq!(
            first,
            "adopt.sock: refused 1 connection or message since the last report (1 in all); latest: uid 5"
        );
        for i in 1..=99u64 {
            assert_eq!(log.record_at(&"uid 5", t0 + Duration::from_millis(i)), None);
        }
        let later = log
            .record_at(&"uid 6", t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            later,
            "adopt.sock: refused 100 connections or messages since the last report (101 in all); latest: uid 6"
        );
        assert_eq!(log.total(), 101);
    }
}
