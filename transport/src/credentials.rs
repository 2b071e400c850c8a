//! Secrets derived from or checked against the authkey, other than role keys:
//! node credentials (issued by the coordinator at a node's first
//! registration, stored there only as a hash) and per-process job keys
//! (`HKDF-SHA256(authkey, "mpctl role job" | process id)`, given to a
//! function target instead of the authkey).

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::TransportError;

/// Length of a node credential and of a job key.
pub const SECRET_LEN: usize = 32;

/// A fresh node credential from the OS random source.
pub fn new_node_credential() -> Result<[u8; SECRET_LEN], TransportError> {
    let mut b = [0u8; SECRET_LEN];
    getrandom::fill(&mut b).map_err(|e| TransportError::Random(e.to_string()))?;
    Ok(b)
}

/// What the coordinator stores of a node credential: its SHA-256 under a
/// domain label (the credential is 32 random bytes, so no slow hash is needed).
pub fn credential_hash(secret: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"mpctl node credential v1\0");
    h.update(secret);
    h.finalize().into()
}

/// Whether `presented` is the credential whose hash is `stored`, compared in
/// constant time.
pub fn credential_matches(stored: &[u8; 32], presented: &[u8]) -> bool {
    if presented.len() != SECRET_LEN {
        return false;
    }
    credential_hash(presented).ct_eq(stored).into()
}

/// A managed process's own key: it proves "I am process `id`" to the
/// coordinator (role [`crate::keys::Role::Job`]) and nothing else. `Debug` is
/// redacted.
#[derive(Clone)]
pub struct JobKey(pub(crate) [u8; SECRET_LEN]);

impl JobKey {
    /// Wraps key bytes (as received in the preparation data or a start answer).
    pub fn from_bytes(b: [u8; SECRET_LEN]) -> JobKey {
        JobKey(b)
    }

    /// The key from 64 hex characters; `None` otherwise.
    pub fn from_hex(text: &str) -> Option<JobKey> {
        if text.len() != 2 * SECRET_LEN {
            return None;
        }
        let mut b = [0u8; SECRET_LEN];
        for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
            let s = std::str::from_utf8(pair).ok()?;
            b[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(JobKey(b))
    }

    /// The key as hex, for the child's preparation data only. Never log it.
    pub fn expose_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The raw bytes, for a fork child's preparation data. Never log them.
    pub fn expose_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_matches_its_hash_only() {
        let c = new_node_credential().unwrap();
        let h = credential_hash(&c);
        assert!(credential_matches(&h, &c));
        let mut other = c;
        other[0] ^= 1;
        assert!(!credential_matches(&h, &other));
        assert!(!credential_matches(&h, &c[..31]));
        assert!(!credential_matches(&h, &[]));
    }

    #[test]
    fn job_key_hex_round_trip() {
        let k = JobKey::from_bytes([0x5a; 32]);
        assert_eq!(JobKey::from_hex(&k.expose_hex()).unwrap().0, [0x5a; 32]);
        assert!(JobKey::from_hex("zz").is_none());
    }
}
