//! Room for connections that have not authenticated yet.
//!
//! Every accepted TCP connection holds a [`Ticket`] until its handshake ends.
//! There is room for [`PendingLimits::per_addr`] pending connections from one
//! IP address and [`PendingLimits::total`] in all. A newcomer never waits and
//! is never refused: when its address (or the server) is full, the oldest
//! pending connection that has not sent a byte yet is dropped to make room,
//! or, when every one has sent something, the oldest of them. A real client
//! sends its TLS hello as soon as TCP is up and finishes in milliseconds, so
//! idle connections (a flood, or a port scanner) are always the first to go,
//! even when they come from the same address as the client (on a laptop
//! everything is 127.0.0.1). "Has sent a byte" is asked of the kernel at the
//! moment a victim is chosen (a peek on a duplicate of the socket), not
//! left to the connection's task, which a busy server may not have run yet.

use std::collections::{BTreeMap, HashMap};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Caps on pending (unauthenticated) connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingLimits {
    /// Pending connections from one IP address.
    pub per_addr: usize,
    /// Pending connections in all.
    pub total: usize,
}

impl Default for PendingLimits {
    fn default() -> PendingLimits {
        PendingLimits {
            per_addr: 128,
            total: 256,
        }
    }
}

/// Why a pending connection was dropped to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Crowded {
    /// Its address had `per_addr` pending connections.
    Address(usize),
    /// The server had `total` pending connections.
    Server(usize),
}

#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    /// The peer has sent at least one byte.
    started: bool,
    /// A duplicate of the socket, to ask the kernel whether bytes came.
    probe: Option<OwnedFd>,
    evict: oneshot::Sender<Crowded>,
}

impl Entry {
    /// Started, or bytes (or the peer's close) are waiting in the kernel.
    fn has_started(&mut self) -> bool {
        if !self.started {
            if let Some(fd) = &self.probe {
                let mut byte = [MaybeUninit::<u8>::uninit(); 1];
                self.started = matches!(socket2::SockRef::from(fd).peek(&mut byte), Ok(n) if n > 0);
            }
        }
        self.started
    }
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// By admission order (ids only grow), so the first match is the oldest.
    entries: BTreeMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
}

impl State {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&entry.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&entry.ip);
            }
        }
        Some(entry)
    }

    /// The oldest idle entry matching `ip` (any address when `None`), else
    /// the oldest.
    fn victim(&mut self, ip: Option<IpAddr>) -> Option<u64> {
        let mut oldest = None;
        for (id, e) in &mut self.entries {
            if ip.is_some_and(|ip| ip != e.ip) {
                continue;
            }
            if !e.has_started() {
                return Some(*id);
            }
            oldest.get_or_insert(*id);
        }
        oldest
    }

    fn evict(&mut self, id: u64, why: Crowded) {
        if let Some(entry) = self.remove(id) {
            // The connection's task may have just finished; then nobody hears.
            let _ = entry.evict.send(why);
        }
    }
}

/// The pending connections of one listener.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: PendingLimits,
    state: Mutex<State>,
}

impl Admission {
    pub(crate) fn new(limits: PendingLimits) -> Arc<Admission> {
        Arc::new(Admission {
            limits: PendingLimits {
                per_addr: limits.per_addr.max(1),
                total: limits.total.max(1),
            },
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for a new connection from `ip` (`probe`: a duplicate of
    /// its socket, if one could be made) and registers it. The receiver
    /// fires if it is dropped later to make room for another.
    pub(crate) fn admit(
        self: &Arc<Admission>,
        ip: IpAddr,
        probe: Option<OwnedFd>,
    ) -> (Ticket, oneshot::Receiver<Crowded>) {
        let mut s = self.lock();
        if s.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.per_addr {
            if let Some(id) = s.victim(Some(ip)) {
                s.evict(id, Crowded::Address(self.limits.per_addr));
            }
        }
        if s.entries.len() >= self.limits.total {
            if let Some(id) = s.victim(None) {
                s.evict(id, Crowded::Server(self.limits.total));
            }
        }
        let (tx, rx) = oneshot::channel();
        s.next += 1;
        let id = s.next;
        s.entries.insert(
            id,
            Entry {
                ip,
                started: false,
                probe,
                evict: tx,
            },
        );
        *s.per_ip.entry(ip).or_default() += 1;
        let ticket = Ticket {
            admission: Arc::clone(self),
            id,
        };
        (ticket, rx)
    }

    /// Pending connections now (for tests and diagnostics).
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.lock().entries.len()
    }
}

/// A pending connection's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
}

impl Ticket {
    /// The peer sent its first bytes: from now on idle connections go first.
    pub(crate) fn started(&self) {
        if let Some(e) = self.admission.lock().entries.get_mut(&self.id) {
            e.started = true;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    /// A connection whose first bytes were seen.
    fn started(adm: &Arc<Admission>, ip: IpAddr) -> (Ticket, oneshot::Receiver<Crowded>) {
        let (t, rx) = adm.admit(ip, None);
        t.started();
        (t, rx)
    }

    fn limits(per_addr: usize, total: usize) -> Arc<Admission> {
        Admission::new(PendingLimits { per_addr, total })
    }

    #[test]
    fn a_full_address_drops_its_oldest_idle_connection_first() {
        let adm = limits(3, 100);
        let (busy, mut busy_rx) = started(&adm, A);
        let (_idle1, mut idle1_rx) = adm.admit(A, None);
        let (_idle2, mut idle2_rx) = adm.admit(A, None);
        let (_other, mut other_rx) = adm.admit(B, None);
        let (_new, _) = adm.admit(A, None);
        assert_eq!(idle1_rx.try_recv(), Ok(Crowded::Address(3)));
        assert!(idle2_rx.try_recv().is_err());
        assert!(busy_rx.try_recv().is_err(), "a started handshake is kept");
        assert!(other_rx.try_recv().is_err(), "another address is untouched");
        assert_eq!(adm.pending(), 4);
        drop(busy);
        assert_eq!(adm.pending(), 3);
    }

    #[test]
    fn when_every_one_has_started_the_oldest_goes() {
        let adm = limits(2, 100);
        let (_a, mut a_rx) = adm.admit(A, None);
        let (b, mut b_rx) = adm.admit(A, None);
        _a.started();
        b.started();
        let (_c, _) = adm.admit(A, None);
        assert_eq!(a_rx.try_recv(), Ok(Crowded::Address(2)));
        assert!(b_rx.try_recv().is_err());
    }

    #[test]
    fn a_full_server_drops_the_oldest_idle_connection_of_any_address() {
        let adm = limits(10, 3);
        let (_a, mut a_rx) = started(&adm, A);
        let (_b, mut b_rx) = adm.admit(B, None);
        let (_c, _) = adm.admit(A, None);
        let (_d, _) = started(&adm, A);
        assert_eq!(b_rx.try_recv(), Ok(Crowded::Server(3)));
        assert!(a_rx.try_recv().is_err());
        assert_eq!(adm.pending(), 3);
    }

    #[test]
    fn a_dropped_ticket_frees_its_place_and_an_evicted_one_is_not_counted_twice() {
        let adm = limits(1, 10);
        let (first, _) = adm.admit(A, None);
        let (second, _) = adm.admit(A, None);
        assert_eq!(adm.pending(), 1);
        drop(first);
        assert_eq!(adm.pending(), 1);
        drop(second);
        assert_eq!(adm.pending(), 0);
        assert!(adm.lock().per_ip.is_empty());
    }
}
