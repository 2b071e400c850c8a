//! Roles, per-role keys (HKDF-SHA256 from the authkey) and the security mode.
//!
//! The authkey is never used directly on the wire. Each role gets its own
//! 32-byte key: `HKDF-SHA256(salt = "mpctl authkey v1", ikm = authkey,
//! info = "mpctl role client" | "mpctl role agent")`, so a proof made for one
//! role never verifies for the other. A managed process's key (role
//! [`Role::Job`]) is per process: `info = "mpctl role job\0" | process id`
//! ([`crate::credentials::JobKey`]); the coordinator derives it from the id
//! the job names in its hello.

use std::fmt;
use std::net::SocketAddr;

use hkdf::Hkdf;
use sha2::Sha256;

use crate::error::TransportError;

/// HKDF salt for role keys.
pub const HKDF_SALT: &[u8] = b"mpctl authkey v1";

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A user-facing client (CLI, library) talking to the coordinator.
    Client,
    /// An agent daemon talking to the coordinator.
    Agent,
    /// A managed process (function target) acting as a client for its own
    /// subtree only, with its per-process job key.
    Job,
}

impl Role {
    /// Every role whose key is derived from the authkey alone, in wire order
    /// ([`Role::Job`] keys also take a process id).
    pub const ALL: [Role; 2] = [Role::Client, Role::Agent];

    /// The byte that identifies the role in the handshake.
    pub fn wire_byte(self) -> u8 {
        match self {
            Role::Client => 1,
            Role::Agent => 2,
            Role::Job => 3,
        }
    }

    /// Inverse of [`Role::wire_byte`]; `None` for an unknown byte.
    pub fn from_wire_byte(b: u8) -> Option<Role> {
        match b {
            1 => Some(Role::Client),
            2 => Some(Role::Agent),
            3 => Some(Role::Job),
            _ => None,
        }
    }

    fn hkdf_info(self) -> &'static [u8] {
        match self {
            Role::Client => b"mpctl role client",
            Role::Agent => b"mpctl role agent",
            Role::Job => JOB_INFO,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Agent => "agent",
            Role::Job => "job",
        })
    }
}

/// HKDF info prefix of a job key; the process id follows.
pub(crate) const JOB_INFO: &[u8] = b"mpctl role job\0";

/// The job key of process `id`: `HKDF-SHA256(salt, authkey, "mpctl role job\0" | id)`.
pub(crate) fn derive_job_key(authkey: &[u8; 32], id: &str) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), authkey);
    let mut okm = [0u8; 32];
    hk.expand_multi_info(&[JOB_INFO, id.as_bytes()], &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// A 32-byte key for one role, derived from the authkey. `Debug` is redacted.
#[derive(Clone)]
pub struct RoleKey([u8; 32]);

impl RoleKey {
    pub(crate) fn derive(authkey: &[u8; 32], role: Role) -> RoleKey {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), authkey);
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 255 * 32 limit: cannot fail.
        hk.expand(role.hkdf_info(), &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        RoleKey(okm)
    }

    /// A job key used as the HMAC key of the handshake.
    pub(crate) fn from_job_key(k: &crate::credentials::JobKey) -> RoleKey {
        RoleKey(k.0)
    }

    /// The raw key bytes (for the HMAC; never log them).
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality (for tests and diagnostics that must not leak).
    pub fn ct_eq(&self, other: &RoleKey) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for RoleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoleKey(<redacted>)")
    }
}

/// How a connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// TLS 1.3 with an ephemeral server certificate, then the HMAC handshake
    /// bound to the TLS session. The default for everything.
    Tls,
    /// Plain TCP, then the HMAC handshake with a fixed binding value. Only
    /// allowed when both ends are loopback, and only when asked for explicitly.
    PlaintextLoopback,
}

/// Checks that `addr` may be used (as a listen address, or as the resolved
/// address of a server to connect to) with `security`: with
/// [`Security::PlaintextLoopback`] it must be a loopback address.
pub fn check_listen_addr(addr: SocketAddr, security: Security) -> Result<(), TransportError> {
    match security {
        Security::Tls => Ok(()),
        Security::PlaintextLoopback if addr.ip().is_loopback() => Ok(()),
        Security::PlaintextLoopback => Err(TransportError::PlaintextNotLoopback {
            addr: addr.to_string(),
        }),
    }
}

/// Same rule as [`check_listen_addr`], for the address a client connects to.
pub fn check_connect_addr(addr: SocketAddr, security: Security) -> Result<(), TransportError> {
    check_listen_addr(addr, security)
}
