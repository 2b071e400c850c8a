//! The authenticated transport every mpctl connection uses
//! (coordinator <-> agent, client <-> coordinator).
//!
//! One 32-byte authkey ([`AuthKey`], loaded from a 0600 file) is the root of
//! trust and never leaves the process. Per-role keys are derived from it with
//! HKDF ([`keys`]). Each connection runs TLS 1.3 with an ephemeral
//! certificate ([`tls`]), then a mutual HMAC challenge-response bound to that
//! TLS session ([`handshake`], which documents the wire format). The server
//! side ([`server`]) turns a listener into a stream of authenticated
//! connections for tonic, tagging each request with a [`PeerIdentity`], and
//! keeps unauthenticated connections from crowding out real ones
//! ([`PendingLimits`]); the
//! client side ([`client`]) returns a tonic `Channel`. The one plaintext,
//! unauthenticated listener is [`health`]: `grpc.health.v1` and nothing else. Errors ([`error`]) say
//! what failed and what to do, and never contain key material. [`trace`]
//! carries W3C trace context across each hop when tracing is on.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admission;
pub mod authkey;
pub mod client;
pub mod credentials;
pub mod error;
mod failure_log;
pub mod handshake;
pub mod health;
mod io;
pub mod keys;
pub mod server;
pub mod tls;
pub mod trace;

pub use authkey::AuthKey;

/// `bytes` random bytes from the OS as lowercase hex: ids and per-process
/// keys. Panics only if the OS random source is unavailable.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("the OS random source is unavailable");
    b.iter().map(|x| format!("{x:02x}")).collect()
}
pub use client::{connect, connect_job};
pub use credentials::JobKey;
pub use error::TransportError;
pub use keys::{check_connect_addr, check_listen_addr, Role, RoleKey, Security};
pub use server::{
    incoming, require_role, AuthenticatedStream, HandshakeFailures, PeerIdentity, PendingLimits,
    ServerAuth,
};
