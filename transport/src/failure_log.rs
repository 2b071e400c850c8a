//! Throttled logging of connections that failed before authentication.
//!
//! The first [`FULL_LINES_PER_KIND`] failures of each kind in an interval
//! are logged at warn level with their peer and reason, so a misconfigured
//! client is seen at once; the others of the interval are only counted, and
//! one warn line at its end gives the counts by kind and the busiest
//! addresses. A flood of thousands of connections costs a few lines per
//! interval, not one each.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::TransportError;

/// Default length of one counting interval.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Failures of one kind logged one by one in an interval.
pub const FULL_LINES_PER_KIND: u32 = 5;

/// How many addresses the summary line names.
const TOP_ADDRS: usize = 3;

/// The kind of a failure, as the summary names it.
fn kind(e: &TransportError) -> &'static str {
    match e {
        TransportError::ClientNotAuthenticated { .. } => "bad proof",
        TransportError::RoleNotAccepted { .. } => "role refused",
        TransportError::NoHandshakeBytes { .. } => "silent",
        TransportError::HandshakeTimeout { .. } => "too slow",
        TransportError::Crowded { .. } => "dropped for room",
        TransportError::Tls { .. } => "TLS failed",
        TransportError::Protocol { .. } => "not mpctl",
        TransportError::HandshakeIo { .. } => "closed",
        _ => "other",
    }
}

/// The reasons a connection can fail before authentication, as metric
/// labels: snake case, a fixed set.
pub const REASONS: [&str; 9] = [
    "bad_proof",
    "role_refused",
    "silent",
    "too_slow",
    "dropped_for_room",
    "tls_failed",
    "not_mpctl",
    "closed",
    "other",
];

/// The label of `e` among [`REASONS`].
fn reason(e: &TransportError) -> usize {
    match e {
        TransportError::ClientNotAuthenticated { .. } => 0,
        TransportError::RoleNotAccepted { .. } => 1,
        TransportError::NoHandshakeBytes { .. } => 2,
        TransportError::HandshakeTimeout { .. } => 3,
        TransportError::Crowded { .. } => 4,
        TransportError::Tls { .. } => 5,
        TransportError::Protocol { .. } => 6,
        TransportError::HandshakeIo { .. } => 7,
        _ => 8,
    }
}

/// Every failed handshake of a listener since it started, by reason: the
/// numbers a metrics endpoint exports (atomic, so counting takes no lock
/// beyond the log's own).
#[derive(Debug, Default)]
pub struct HandshakeFailures {
    counts: [AtomicU64; REASONS.len()],
}

impl HandshakeFailures {
    /// `(reason, count)` for each of [`REASONS`], in that order.
    pub fn snapshot(&self) -> [(&'static str, u64); REASONS.len()] {
        std::array::from_fn(|i| (REASONS[i], self.counts[i].load(Ordering::Relaxed)))
    }
}

#[derive(Debug, Default)]
struct Window {
    /// Failures logged in full in this interval, by kind.
    logged: BTreeMap<&'static str, u32>,
    /// Failures not logged one by one, by kind and by address.
    suppressed: BTreeMap<&'static str, u64>,
    by_ip: HashMap<IpAddr, u64>,
}

/// The failure counts of one listener.
#[derive(Debug)]
pub(crate) struct FailureLog {
    interval: Duration,
    window: Mutex<Window>,
    totals: Arc<HandshakeFailures>,
}

impl FailureLog {
    pub(crate) fn new(interval: Duration, totals: Arc<HandshakeFailures>) -> FailureLog {
        FailureLog {
            interval,
            window: Mutex::new(Window::default()),
            totals,
        }
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// Logs `e` for `peer`, or counts it if [`FULL_LINES_PER_KIND`] of its
    /// kind were logged in this interval.
    pub(crate) fn record(&self, peer: SocketAddr, e: &TransportError) {
        self.totals.counts[reason(e)].fetch_add(1, Ordering::Relaxed);
        let kind = kind(e);
        let last = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            let logged = w.logged.entry(kind).or_default();
            if *logged >= FULL_LINES_PER_KIND {
                *w.suppressed.entry(kind).or_default() += 1;
                *w.by_ip.entry(peer.ip()).or_default() += 1;
                return;
            }
            *logged += 1;
            *logged == FULL_LINES_PER_KIND
        };
        let more = if last {
            format!(
                "; further failures of this kind are counted and logged as a total every {} s",
                self.interval.as_secs_f64()
            )
        } else {
            String::new()
        };
        match e {
            TransportError::ClientNotAuthenticated { role, .. } => {
                tracing::warn!(peer = %peer, role = %role, "{e}{more}")
            }
            TransportError::RoleNotAccepted { role, .. } => {
                tracing::warn!(peer = %peer, role = %role, "connection refused: {e}{more}")
            }
            _ => tracing::warn!(
                peer = %peer,
                "connection dropped before authentication: {e}{more}"
            ),
        }
    }

    /// Ends the interval: one line with what was counted, if anything.
    pub(crate) fn flush(&self) {
        let w = std::mem::take(&mut *self.window.lock().unwrap_or_else(|p| p.into_inner()));
        let total: u64 = w.suppressed.values().sum();
        if total == 0 {
            return;
        }
        let mut kinds = String::new();
        for (kind, n) in &w.suppressed {
            let sep = if kinds.is_empty() { "" } else { ", " };
            let _ = write!(kinds, "{sep}{n} {kind}");
        }
        let mut addrs: Vec<_> = w.by_ip.iter().collect();
        addrs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut top = String::new();
        for (ip, n) in addrs.iter().take(TOP_ADDRS) {
            let sep = if top.is_empty() { "" } else { ", " };
            let _ = write!(top, "{sep}{ip} ({n})");
        }
        if addrs.len() > TOP_ADDRS {
            let _ = write!(top, " and {} more addresses", addrs.len() - TOP_ADDRS);
        }
        tracing::warn!(
            failed = total,
            "{total} more connections failed before authentication in the last {} s ({kinds}); from {top}",
            self.interval.as_secs_f64()
        );
    }
}
