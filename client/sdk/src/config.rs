//! Which cluster a client talks to.
//!
//! In order: flags, then a context named by `--context` / `MPCTL_CONTEXT`
//! (see [`crate::contexts`]), then `MPCTL_ADDR` / `MPCTL_AUTHKEY_FILE` /
//! `MPCTL_PLAINTEXT`, then the current context (`mpctl context use`), then
//! the config file written by `mpctl dev` (`MPCTL_CONFIG`, else
//! `$XDG_CONFIG_HOME/mpctl/config.json`, else `~/.config/mpctl/config.json`),
//! and with nothing configured an embedded coordinator and agent whose state
//! lives in `MPCTL_DATA_DIR`, else `$XDG_DATA_HOME/mpctl/embedded`, else
//! `~/.local/share/mpctl/embedded`.

use std::path::{Path, PathBuf};

use mpctl_transport::Security;
use serde::{Deserialize, Serialize};

use crate::contexts::{Context, Contexts};
use crate::error::{Error, Result};

/// What flags may override.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// A context by name (`--context`).
    pub context: Option<String>,
    pub addr: Option<String>,
    pub authkey_file: Option<PathBuf>,
    pub plaintext: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ClusterConfig {
    Remote {
        addr: String,
        authkey_file: PathBuf,
        security: Security,
    },
    Embedded {
        data_dir: PathBuf,
    },
}

/// The client config file (written by `mpctl dev`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigFile {
    pub addr: String,
    pub authkey_file: PathBuf,
    #[serde(default)]
    pub plaintext: bool,
    /// Set by `mpctl dev`: the file is stale once this process is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_pid: Option<u32>,
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> PathBuf {
    env_path("HOME").unwrap_or_else(|| PathBuf::from("/"))
}

pub fn config_dir() -> PathBuf {
    env_path("XDG_CONFIG_HOME")
        .unwrap_or_else(|| home().join(".config"))
        .join("mpctl")
}

pub fn config_path() -> PathBuf {
    env_path("MPCTL_CONFIG").unwrap_or_else(|| config_dir().join("config.json"))
}

pub fn data_home() -> PathBuf {
    env_path("XDG_DATA_HOME")
        .unwrap_or_else(|| home().join(".local/share"))
        .join("mpctl")
}

pub fn embedded_data_dir() -> PathBuf {
    env_path("MPCTL_DATA_DIR").unwrap_or_else(|| data_home().join("embedded"))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub fn read_config_file(path: &Path) -> Result<Option<ConfigFile>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Config(format!(
                "{} is not a valid mpctl client config ({e}); fix or delete it",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Config(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

impl ClusterConfig {
    pub fn resolve(o: &Overrides) -> Result<ClusterConfig> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(c) = Self::context(o, &env)? {
            // Flags still override a context's fields, as kubectl's do.
            return Ok(ClusterConfig::Remote {
                addr: o.addr.clone().unwrap_or(c.addr),
                authkey_file: o.authkey_file.clone().unwrap_or(c.authkey_file),
                security: if o.plaintext || c.plaintext {
                    Security::PlaintextLoopback
                } else {
                    Security::Tls
                },
            });
        }
        let addr = o.addr.clone().or_else(|| env("MPCTL_ADDR"));
        let key = o
            .authkey_file
            .clone()
            .or_else(|| env("MPCTL_AUTHKEY_FILE").map(PathBuf::from));
        let plaintext = o.plaintext || env("MPCTL_PLAINTEXT").is_some_and(|v| v != "0");
        let security = |plain| {
            if plain {
                Security::PlaintextLoopback
            } else {
                Security::Tls
            }
        };
        if let Some(addr) = addr {
            let authkey_file = key.ok_or_else(|| {
                Error::Config(format!(
                    "a cluster address ({addr}) is set but no authkey: set MPCTL_AUTHKEY_FILE or pass --authkey-file"
                ))
            })?;
            return Ok(ClusterConfig::Remote {
                addr,
                authkey_file,
                security: security(plaintext),
            });
        }
        let path = config_path();
        if let Some(file) = read_config_file(&path)? {
            match file.dev_pid {
                Some(pid) if !pid_alive(pid) => {
                    tracing::warn!(
                        "ignoring {}: the `mpctl dev` (pid {pid}) that wrote it has stopped",
                        path.display()
                    );
                }
                _ => {
                    return Ok(ClusterConfig::Remote {
                        addr: file.addr,
                        authkey_file: key.unwrap_or(file.authkey_file),
                        security: security(plaintext || file.plaintext),
                    })
                }
            }
        }
        if key.is_some() {
            return Err(Error::Config(
                "an authkey file is set but no cluster address: set MPCTL_ADDR or pass --addr"
                    .into(),
            ));
        }
        Ok(ClusterConfig::Embedded {
            data_dir: embedded_data_dir(),
        })
    }

    /// The context that applies: the one named by `--context` or
    /// `MPCTL_CONTEXT`; else, unless an address is given by flag or
    /// `MPCTL_ADDR`, the current one.
    fn context(o: &Overrides, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Context>> {
        let named = o.context.clone().or_else(|| env("MPCTL_CONTEXT"));
        if named.is_none() && (o.addr.is_some() || env("MPCTL_ADDR").is_some()) {
            return Ok(None);
        }
        let contexts = Contexts::load()?;
        match named {
            Some(name) => contexts.get(&name).map(|c| Some(c.clone())),
            None => Ok(contexts.current_context()?.cloned()),
        }
    }
}
