//! The one error type of the crate.
//!
//! Every variant names what it is about (a file path, a peer address, a role)
//! and, where there is one, the action that fixes it. No variant ever carries
//! key material, nonces or MACs.

use std::io;
use std::path::PathBuf;

use crate::keys::Role;

/// Everything that can go wrong while loading keys or establishing an
/// authenticated connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // fields are self-describing: path, addr, role, reason, source
pub enum TransportError {
    /// The authkey file could not be read.
    #[error("cannot read the authkey file {}: {source}", path.display())]
    AuthKeyRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The authkey file is accessible by group or others.
    #[error(
        "the authkey file {} is accessible by group or others (mode {mode:04o}); it must be private to its owner: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    AuthKeyPermissions { path: PathBuf, mode: u32 },

    /// The authkey file does not hold 64 hex characters.
    #[error(
        "the authkey file {} is not a valid mpctl authkey ({reason}); it must hold 64 hex characters: create one with `mpctl keygen`",
        path.display()
    )]
    AuthKeyMalformed { path: PathBuf, reason: String },

    /// `write_new` was asked to create a file that already exists.
    #[error(
        "refusing to overwrite the existing authkey file {}: every process of the cluster uses it; remove it yourself or ask for overwrite explicitly",
        path.display()
    )]
    AuthKeyExists { path: PathBuf },

    /// The authkey file (or its directory) could not be written.
    #[error("cannot write the authkey file {}: {source}", path.display())]
    AuthKeyWrite {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),

    /// Plaintext mode was requested for an address that is not loopback.
    #[error(
        "plaintext (no TLS) connections are only allowed on loopback addresses, and {addr} is not one; use TLS for this address"
    )]
    PlaintextNotLoopback { addr: String },

    /// The TLS configuration or ephemeral certificate could not be built.
    #[error("cannot set up TLS: {0}")]
    TlsSetup(String),

    /// The address given to `connect` is not usable.
    #[error("invalid server address {addr:?}: {reason} (expected HOST:PORT)")]
    InvalidAddress { addr: String, reason: String },

    /// TCP connection failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },

    /// The TLS handshake failed.
    #[error(
        "TLS handshake with {addr} failed: {source} (is it an mpctl endpoint, and do both sides use the same security mode, TLS or plaintext?)"
    )]
    Tls {
        addr: String,
        #[source]
        source: io::Error,
    },

    /// Reading or writing during the mpctl handshake failed (including the peer
    /// closing the connection).
    #[error(
        "the connection with {addr} failed during the mpctl authentication handshake: {source} (is it an mpctl endpoint, and do both sides use the same security mode, TLS or plaintext?)"
    )]
    HandshakeIo {
        addr: String,
        #[source]
        source: io::Error,
    },

    /// TLS + handshake did not finish in time.
    #[error("the mpctl authentication handshake with {addr} did not complete within {timeout:?}")]
    HandshakeTimeout {
        addr: String,
        timeout: std::time::Duration,
    },

    /// Server side: the peer sent nothing within the first-bytes deadline.
    #[error("{addr} sent nothing within {timeout:?} of connecting (an idle connection, not an mpctl client)")]
    NoHandshakeBytes {
        addr: String,
        timeout: std::time::Duration,
    },

    /// Server side: an unauthenticated connection was dropped to make room
    /// for a newer one (see `PendingLimits`).
    #[error("{addr} had not authenticated when {reason}; it was dropped to make room for a newer connection")]
    Crowded { addr: String, reason: String },

    /// The peer sent bytes that are not the mpctl handshake.
    #[error("{addr} does not speak the mpctl handshake: {reason}")]
    Protocol { addr: String, reason: String },

    /// Client side: the server rejected this connection's proof.
    #[error(
        "authentication failed: {addr} rejected this connection's proof for role {role}; the authkey file does not match the cluster's (check MPCTL_AUTHKEY_FILE / --authkey-file)"
    )]
    Rejected { addr: String, role: Role },

    /// Client side: the server's proof did not verify.
    #[error(
        "the server at {addr} did not prove knowledge of the authkey (wrong authkey on one side, or not an mpctl server)"
    )]
    ServerNotAuthenticated { addr: String },

    /// Client side: the key was right but the server does not take this role.
    #[error(
        "{addr} does not accept {role} connections (an agent key cannot be used by a client, and vice versa)"
    )]
    RoleRefused { addr: String, role: Role },

    /// Server side: the client's proof did not verify.
    #[error("authentication failed: {addr} (role {role}) did not prove knowledge of the authkey")]
    ClientNotAuthenticated { addr: String, role: Role },

    /// Server side: the client proved the key, but its role is not accepted
    /// by this endpoint.
    #[error(
        "{addr} authenticated as {role}, but this endpoint does not accept {role} connections"
    )]
    RoleNotAccepted { addr: String, role: Role },

    /// The gRPC channel could not be set up over the authenticated connection.
    #[error("cannot open a gRPC channel to {addr}: {source}")]
    Channel {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}
