//! The authkey: 32 random bytes, the root of trust of a cluster.
//!
//! On disk it is 64 hex characters and an optional newline, in a file only
//! its owner may read or write (mode 0600). It never leaves the process: only
//! keys derived from it ([`crate::keys::RoleKey`]) are used, and only as HMAC
//! keys.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::TransportError;
use crate::keys::{Role, RoleKey};

/// Length of the authkey in bytes.
pub const AUTHKEY_LEN: usize = 32;

/// The cluster's shared secret. `Debug` is redacted; there is no `Display`
/// and no serialisation on purpose.
#[derive(Clone)]
pub struct AuthKey([u8; AUTHKEY_LEN]);

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

impl AuthKey {
    /// A fresh random key from the operating system.
    ///
    /// # Panics
    /// Only if the OS random number generator is unavailable; use
    /// [`AuthKey::try_generate`] to get an error instead.
    pub fn generate() -> AuthKey {
        AuthKey::try_generate().expect("the operating system's random number generator failed")
    }

    /// A fresh random key, or an error if the OS RNG fails.
    pub fn try_generate() -> Result<AuthKey, TransportError> {
        let mut b = [0u8; AUTHKEY_LEN];
        getrandom::fill(&mut b).map_err(|e| TransportError::Random(e.to_string()))?;
        Ok(AuthKey(b))
    }

    /// Wraps existing key bytes.
    pub fn from_bytes(b: [u8; 32]) -> AuthKey {
        AuthKey(b)
    }

    /// The key for `role` (HKDF-SHA256, see [`crate::keys`]).
    pub fn role_key(&self, role: Role) -> RoleKey {
        RoleKey::derive(&self.0, role)
    }

    /// The job key of managed process `process_id` (see [`crate::keys`]):
    /// what a function target gets instead of this key.
    pub fn job_key(&self, process_id: &str) -> crate::credentials::JobKey {
        crate::credentials::JobKey::from_bytes(crate::keys::derive_job_key(&self.0, process_id))
    }

    /// Reads an authkey file. Refuses files that group or others may read or
    /// write, and files that do not hold exactly 64 hex characters (plus an
    /// optional trailing newline).
    pub fn load(path: &Path) -> Result<AuthKey, TransportError> {
        let read_err = |source| TransportError::AuthKeyRead {
            path: path.to_path_buf(),
            source,
        };
        let file = fs::File::open(path).map_err(read_err)?;
        // Check the permissions of the file we opened, not of the path.
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(malformed(path, "not a regular file"));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o066 != 0 {
            return Err(TransportError::AuthKeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        // Bounded read: a valid file is at most 66 bytes.
        let mut buf = Vec::with_capacity(67);
        file.take(128).read_to_end(&mut buf).map_err(read_err)?;
        let text = buf
            .strip_suffix(b"\n")
            .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
            .unwrap_or(&buf);
        if text.len() != 2 * AUTHKEY_LEN {
            return Err(malformed(
                path,
                &format!(
                    "expected {} hex characters, found {} bytes",
                    2 * AUTHKEY_LEN,
                    text.len()
                ),
            ));
        }
        parse_hex(text)
            .map(AuthKey)
            .ok_or_else(|| malformed(path, "it contains non-hex characters"))
    }

    /// The key from 64 hex characters (the key file's text); `None` unless exactly 64 hex
    /// characters.
    pub fn from_hex(text: &str) -> Option<AuthKey> {
        (text.len() == 2 * AUTHKEY_LEN)
            .then(|| parse_hex(text.as_bytes()))
            .flatten()
            .map(AuthKey)
    }

    /// Generates a new key and writes it to `path` (creating the parent
    /// directory with mode 0700 if needed). The file is created with mode 0600
    /// from the start. An existing file is replaced only when `overwrite` is
    /// true, and then atomically (write a new 0600 file, rename over).
    pub fn write_new(path: &Path, overwrite: bool) -> Result<AuthKey, TransportError> {
        let key = AuthKey::try_generate()?;
        let write_err = |source| TransportError::AuthKeyWrite {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(write_err)?;
        }
        let mut contents = key.to_hex();
        contents.push('\n');

        if !overwrite {
            let mut f = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(TransportError::AuthKeyExists {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) => return Err(write_err(e)),
            };
            let res = f.write_all(contents.as_bytes()).and_then(|()| f.sync_all());
            if let Err(e) = res {
                let _ = fs::remove_file(path);
                return Err(write_err(e));
            }
            return Ok(key);
        }

        let tmp = tmp_path(path);
        let res = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(contents.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(write_err(e));
        }
        Ok(key)
    }

    fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(2 * AUTHKEY_LEN);
        for b in self.0 {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 0xf)] as char);
        }
        s
    }
}

fn malformed(path: &Path, reason: &str) -> TransportError {
    TransportError::AuthKeyMalformed {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn parse_hex(text: &[u8]) -> Option<[u8; AUTHKEY_LEN]> {
    let mut key = [0u8; AUTHKEY_LEN];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        key[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(key)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let k = AuthKey::from_bytes([0xab; 32]);
        assert_eq!(k.to_hex(), "ab".repeat(32));
    }
}
