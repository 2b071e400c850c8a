//! Named clusters, as kubectl's contexts: `mpctl context add prod --addr
//! HOST:PORT --authkey-file F`, then `mpctl context use prod` (or
//! `--context prod` / `MPCTL_CONTEXT=prod` for one command). They live in
//! `contexts.json` in the config directory ([`contexts_path`]), written
//! whole through a temporary file and a rename, mode 0600.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::config_dir;
use crate::error::{Error, Result};

/// One named cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub addr: String,
    /// Absolute: the file is read from wherever the command runs.
    pub authkey_file: PathBuf,
    #[serde(default)]
    pub plaintext: bool,
}

/// All the named clusters, and the one used when none is named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contexts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// `MPCTL_CONTEXTS`, else `contexts.json` in the config directory.
pub fn contexts_path() -> PathBuf {
    std::env::var_os("MPCTL_CONTEXTS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| config_dir().join("contexts.json"))
}

/// A name a context may have: 1-64 of letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{name:?} is not a context name: use 1 to 64 letters, digits, '.', '_' or '-'"
        )))
    }
}

impl Contexts {
    /// The saved contexts; none saved yet is an empty set.
    pub fn load() -> Result<Contexts> {
        Self::load_from(&contexts_path())
    }

    pub fn load_from(path: &Path) -> Result<Contexts> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Config(format!(
                    "{} is not a valid mpctl contexts file ({e}); fix or delete it",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(e) => Err(Error::Config(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    pub fn save(&self) -> Result<()> {
        self.save_to(&contexts_path())
    }

    pub fn save_to(&self, path: &Path) -> Result<()> {
        let fail =
            |e: std::io::Error| Error::Config(format!("cannot write {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("contexts serialize");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }

    /// The context called `name`, or an error listing what there is.
    pub fn get(&self, name: &str) -> Result<&Context> {
        self.contexts.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
            Error::Config(if known.is_empty() {
                format!("no context named {name:?}: none is defined; add one with `mpctl context add {name} --addr HOST:PORT --authkey-file FILE`")
            } else {
                format!(
                    "no context named {name:?} (there are: {}); add it with `mpctl context add`",
                    known.join(", ")
                )
            })
        })
    }

    /// The current context, if one is set.
    pub fn current_context(&self) -> Result<Option<&Context>> {
        match &self.current {
            None => Ok(None),
            Some(name) => self.get(name).map(Some).map_err(|_| {
                Error::Config(format!(
                    "the current context {name:?} is not defined in {}: `mpctl context use NAME` another, or `mpctl context unset`",
                    contexts_path().display()
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip_through_their_file_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mpctl-contexts-{}", std::process::id()));
        let path = dir.join("contexts.json");
        let mut c = Contexts::default();
        c.contexts.insert(
            "prod".into(),
            Context {
                addr: "10.0.0.1:7000".into(),
                authkey_file: "/etc/mpctl/key".into(),
                plaintext: false,
            },
        );
        c.current = Some("prod".into());
        c.save_to(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let back = Contexts::load_from(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, 0o600);
        assert_eq!(back, c);
        assert_eq!(
            back.current_context().unwrap().unwrap().addr,
            "10.0.0.1:7000"
        );
    }

    #[test]
    fn a_missing_context_names_the_ones_there_are() {
        let mut c = Contexts::default();
        c.contexts.insert(
            "a".into(),
            Context {
                addr: "x:1".into(),
                authkey_file: "/k".into(),
                plaintext: false,
            },
        );
        let e = c.get("b").unwrap_err().to_string();
        assert!(e.contains("no context named \"b\" (there are: a)"), "{e}");
        assert!(check_name("prod-1.eu").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
    }
}
