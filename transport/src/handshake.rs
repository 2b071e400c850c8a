//! The mutual HMAC-SHA256 challenge-response, bound to the TLS session.
//!
//! Runs over any byte stream once TLS is up (or directly on loopback TCP in
//! plaintext mode). Both sides know the role key; neither sends it. Every
//! message has a fixed size, so reads are bounded.
//!
//! ```text
//! C -> S  hello   "MPCTL1" (6) | role (1: 1 = client, 2 = agent, 3 = job) | nonce_c (32)
//! C -> S  (role job only) id_len (1: 1..=64) | process id (id_len, [0-9A-Za-z_-])
//! S -> C  nonce_s (32)
//! C -> S  mac_c   (32) = HMAC-SHA256(role_key, "mpctl-client" | role | binding | nonce_s | nonce_c)
//! S -> C  status  (1):  0x01 OK, then mac_s (32)
//!                                 = HMAC-SHA256(role_key, "mpctl-server" | role | binding | nonce_c | nonce_s)
//!                       0x00 FAIL (mac_c did not verify), then close
//!                       0x02 ROLE REFUSED (mac_c verified, role not accepted here), then close
//! ```
//!
//! `binding` is 32 bytes: the TLS exporter
//! ([`crate::tls::EXPORTER_LABEL`], no context) of this connection, computed
//! independently by both ends, or [`PLAINTEXT_BINDING`] in plaintext loopback
//! mode. Because the exporter is unique to one TLS session, a MAC captured on
//! one connection (or relayed by a man in the middle, who has two different
//! TLS sessions) never verifies on another. Fresh 32-byte nonces from both
//! sides prevent replay as well. MACs are checked in constant time
//! (`Mac::verify_slice`). The role byte is inside both MACs and picks the key,
//! so a key for one role cannot authenticate as the other. The server only
//! reveals "role refused" to a client that has proven the key. For role job
//! the key is the job key of the named process (derived by the server from
//! the authkey and the id), so a job key proves exactly one process id; the
//! server then answers with its own MAC under that key, so the job knows it
//! talks to the real coordinator.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::authkey::AuthKey;
use crate::credentials::JobKey;
use crate::error::TransportError;
use crate::keys::{Role, RoleKey};

/// Channel-binding value mixed into both MACs.
pub type Binding = [u8; 32];

/// First bytes the client sends.
pub const MAGIC: &[u8; 6] = b"MPCTL1";
/// Length of each nonce.
pub const NONCE_LEN: usize = 32;
/// Length of each MAC.
pub const MAC_LEN: usize = 32;
/// Length of the client's first message.
pub const HELLO_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;
/// Status byte: the client's proof verified; `mac_s` follows.
pub const STATUS_OK: u8 = 0x01;
/// Status byte: the client's proof did not verify.
pub const STATUS_FAIL: u8 = 0x00;
/// Status byte: the proof verified but this server does not accept the role.
pub const STATUS_ROLE_REFUSED: u8 = 0x02;
/// Binding used in plaintext loopback mode (there is no TLS session).
pub const PLAINTEXT_BINDING: Binding = *b"mpctl-plaintext-loopback-binding";
/// Longest process id a job may name.
pub const MAX_JOB_ID: usize = 64;
/// Deadline for TCP connect + TLS + this handshake, on both sides.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const CLIENT_LABEL: &[u8; 12] = b"mpctl-client";
const SERVER_LABEL: &[u8; 12] = b"mpctl-server";

fn hmac(
    key: &RoleKey,
    label: &[u8; 12],
    role: Role,
    binding: &Binding,
    a: &[u8; 32],
    b: &[u8; 32],
) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(label);
    mac.update(&[role.wire_byte()]);
    mac.update(binding);
    mac.update(a);
    mac.update(b);
    mac
}

/// The client's proof: `HMAC(role_key, "mpctl-client" | role | binding | nonce_s | nonce_c)`.
pub fn client_mac(
    key: &RoleKey,
    role: Role,
    binding: &Binding,
    nonce_s: &[u8; NONCE_LEN],
    nonce_c: &[u8; NONCE_LEN],
) -> [u8; MAC_LEN] {
    hmac(key, CLIENT_LABEL, role, binding, nonce_s, nonce_c)
        .finalize()
        .into_bytes()
        .into()
}

/// The server's proof: `HMAC(role_key, "mpctl-server" | role | binding | nonce_c | nonce_s)`.
pub fn server_mac(
    key: &RoleKey,
    role: Role,
    binding: &Binding,
    nonce_c: &[u8; NONCE_LEN],
    nonce_s: &[u8; NONCE_LEN],
) -> [u8; MAC_LEN] {
    hmac(key, SERVER_LABEL, role, binding, nonce_c, nonce_s)
        .finalize()
        .into_bytes()
        .into()
}

fn nonce() -> Result<[u8; NONCE_LEN], TransportError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| TransportError::Random(e.to_string()))?;
    Ok(n)
}

/// Client half. `peer` is only used in error messages. On success both sides
/// have proven knowledge of `role_key` on this very session.
pub async fn client_handshake<S>(
    io: &mut S,
    role_key: &RoleKey,
    role: Role,
    binding: &Binding,
    peer: &str,
) -> Result<(), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    client_handshake_as(io, role_key, role, None, binding, peer).await
}

/// Client half for a managed process: role job, proving `job_key` for
/// process `id`.
pub async fn client_handshake_job<S>(
    io: &mut S,
    job_key: &JobKey,
    id: &str,
    binding: &Binding,
    peer: &str,
) -> Result<(), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let key = RoleKey::from_job_key(job_key);
    client_handshake_as(io, &key, Role::Job, Some(id), binding, peer).await
}

pub(crate) async fn client_handshake_as<S>(
    io: &mut S,
    role_key: &RoleKey,
    role: Role,
    job_id: Option<&str>,
    binding: &Binding,
    peer: &str,
) -> Result<(), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let io_err = |source| TransportError::HandshakeIo {
        addr: peer.to_string(),
        source,
    };
    let nonce_c = nonce()?;
    let mut hello = [0u8; HELLO_LEN];
    hello[..MAGIC.len()].copy_from_slice(MAGIC);
    hello[MAGIC.len()] = role.wire_byte();
    hello[MAGIC.len() + 1..].copy_from_slice(&nonce_c);
    io.write_all(&hello).await.map_err(io_err)?;
    if role == Role::Job {
        let id = job_id
            .filter(|id| valid_job_id(id.as_bytes()))
            .ok_or_else(|| TransportError::Protocol {
                addr: peer.to_string(),
                reason: "a job connection needs its process id (1 to 64 of [0-9A-Za-z_-])"
                    .to_string(),
            })?;
        io.write_all(&[id.len() as u8]).await.map_err(io_err)?;
        io.write_all(id.as_bytes()).await.map_err(io_err)?;
    }
    io.flush().await.map_err(io_err)?;

    let mut nonce_s = [0u8; NONCE_LEN];
    io.read_exact(&mut nonce_s).await.map_err(io_err)?;

    let mac_c = client_mac(role_key, role, binding, &nonce_s, &nonce_c);
    io.write_all(&mac_c).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;

    let mut status = [0u8; 1];
    io.read_exact(&mut status).await.map_err(io_err)?;
    match status[0] {
        STATUS_OK => {}
        STATUS_FAIL => {
            return Err(TransportError::Rejected {
                addr: peer.to_string(),
                role,
            })
        }
        STATUS_ROLE_REFUSED => {
            return Err(TransportError::RoleRefused {
                addr: peer.to_string(),
                role,
            })
        }
        other => {
            return Err(TransportError::Protocol {
                addr: peer.to_string(),
                reason: format!("unexpected handshake status byte 0x{other:02x}"),
            })
        }
    }
    let mut mac_s = [0u8; MAC_LEN];
    io.read_exact(&mut mac_s)
        .await
        .map_err(|_| TransportError::ServerNotAuthenticated {
            addr: peer.to_string(),
        })?;
    hmac(role_key, SERVER_LABEL, role, binding, &nonce_c, &nonce_s)
        .verify_slice(&mac_s)
        .map_err(|_| TransportError::ServerNotAuthenticated {
            addr: peer.to_string(),
        })?;
    Ok(())
}

/// Server half. Returns the role the client authenticated as. On a bad proof
/// it writes [`STATUS_FAIL`] and returns an error; the caller closes the
/// connection. `peer` is only used in error messages.
pub async fn server_handshake<S>(
    io: &mut S,
    authkey: &AuthKey,
    accept_roles: &[Role],
    binding: &Binding,
    peer: &str,
) -> Result<Role, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    server_handshake_identified(io, authkey, accept_roles, binding, peer)
        .await
        .map(|(role, _)| role)
}

fn valid_job_id(id: &[u8]) -> bool {
    (1..=MAX_JOB_ID).contains(&id.len())
        && id
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// [`server_handshake`], also returning the process id a job proved.
pub async fn server_handshake_identified<S>(
    io: &mut S,
    authkey: &AuthKey,
    accept_roles: &[Role],
    binding: &Binding,
    peer: &str,
) -> Result<(Role, Option<String>), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let io_err = |source| TransportError::HandshakeIo {
        addr: peer.to_string(),
        source,
    };
    let mut hello = [0u8; HELLO_LEN];
    io.read_exact(&mut hello).await.map_err(io_err)?;
    if &hello[..MAGIC.len()] != MAGIC {
        return Err(TransportError::Protocol {
            addr: peer.to_string(),
            reason: "the connection did not start with the mpctl handshake magic".to_string(),
        });
    }
    let role_byte = hello[MAGIC.len()];
    let role = Role::from_wire_byte(role_byte).ok_or_else(|| TransportError::Protocol {
        addr: peer.to_string(),
        reason: format!("unknown role byte 0x{role_byte:02x}"),
    })?;
    let mut nonce_c = [0u8; NONCE_LEN];
    nonce_c.copy_from_slice(&hello[MAGIC.len() + 1..]);
    let job_id = if role == Role::Job {
        let mut len = [0u8; 1];
        io.read_exact(&mut len).await.map_err(io_err)?;
        let mut id = vec![0u8; usize::from(len[0])];
        io.read_exact(&mut id).await.map_err(io_err)?;
        if !valid_job_id(&id) {
            return Err(TransportError::Protocol {
                addr: peer.to_string(),
                reason: format!(
                    "a job named a process id of {} bytes that is not 1 to {MAX_JOB_ID} of [0-9A-Za-z_-]",
                    id.len()
                ),
            });
        }
        Some(String::from_utf8(id).expect("checked ASCII above"))
    } else {
        None
    };

    let nonce_s = nonce()?;
    io.write_all(&nonce_s).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;

    let mut mac_c = [0u8; MAC_LEN];
    io.read_exact(&mut mac_c).await.map_err(io_err)?;

    let key = match &job_id {
        Some(id) => RoleKey::from_job_key(&authkey.job_key(id)),
        None => authkey.role_key(role),
    };
    let proof_ok = hmac(&key, CLIENT_LABEL, role, binding, &nonce_s, &nonce_c)
        .verify_slice(&mac_c)
        .is_ok();
    if !proof_ok {
        // Best effort: the client gets one clear answer, then the connection closes.
        let _ = io.write_all(&[STATUS_FAIL]).await;
        let _ = io.flush().await;
        return Err(TransportError::ClientNotAuthenticated {
            addr: peer.to_string(),
            role,
        });
    }
    if !accept_roles.contains(&role) {
        let _ = io.write_all(&[STATUS_ROLE_REFUSED]).await;
        let _ = io.flush().await;
        return Err(TransportError::RoleNotAccepted {
            addr: peer.to_string(),
            role,
        });
    }
    let mac_s = server_mac(&key, role, binding, &nonce_c, &nonce_s);
    let mut reply = [0u8; 1 + MAC_LEN];
    reply[0] = STATUS_OK;
    reply[1..].copy_from_slice(&mac_s);
    io.write_all(&reply).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;
    Ok((role, job_id))
}
