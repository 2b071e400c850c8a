//! The node credential (docs/design.md §10): issued by the coordinator at
//! this node's first registration, kept in `<data dir>/node.credential`
//! (64 hex characters, mode 0600, owned by the agent's user, so a job run
//! as another user cannot read it) and presented on every registration.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The credential's file name in the agent's data directory.
pub const CREDENTIAL_FILE: &str = "node.credential";

/// Where `data_dir` keeps the credential.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(CREDENTIAL_FILE)
}

/// The stored credential; empty when there is none yet (first registration).
/// A file that is not 64 hex characters is an error naming it.
pub fn load(data_dir: &Path) -> std::io::Result<Vec<u8>> {
    let path = path(data_dir);
    let mut text = String::new();
    match fs::File::open(&path) {
        Ok(f) => {
            f.take(130).read_to_string(&mut text)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let text = text.trim_end();
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is not a node credential (64 hex characters); if it is damaged, remove it and run `mpctl agents forget NAME`",
                path.display()
            ),
        )
    };
    if text.len() != 64 {
        return Err(bad());
    }
    (0..32)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// Keeps a newly issued credential: written to a 0600 temporary file,
/// synced, renamed over, and the directory synced.
pub fn store(data_dir: &Path, secret: &[u8]) -> std::io::Result<()> {
    let path = path(data_dir);
    let tmp = data_dir.join(format!("{CREDENTIAL_FILE}.tmp"));
    let mut text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    text.push('\n');
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_stored_credential_loads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(super::load(dir.path()).unwrap(), Vec::<u8>::new());
        super::store(dir.path(), &[0xab; 32]).unwrap();
        assert_eq!(super::load(dir.path()).unwrap(), vec![0xab; 32]);
        let mode = std::fs::metadata(super::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(super::path(dir.path()), "xyz").unwrap();
        assert!(super::load(dir.path()).is_err());
    }
}
