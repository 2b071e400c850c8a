//! The agent's side of the node launcher: the launcher itself is its own
//! process and crate (`mpctl_launcher`, re-exported here), and [`client`]
//! is the agent's tokio client for it.

pub mod client;

pub use client::{LauncherClient, LauncherEvent};
pub use mpctl_launcher::{
    journal, protocol, run, run_persistent, setup::create_private_dir, truncation_marker,
    Bootstrap, ExitRecord, FromLauncher, Hello, JournalDamage, LaunchError, LaunchSpec, Launched,
    LauncherError, ProtocolError, RunningRecord, ToLauncher, ADOPT_SOCKET_FILE, LOCK_FILE,
    LOG_FILE, SOCKET_FILE,
};

use std::sync::Arc;

use tokio::sync::RwLock;

/// The current launcher connection, shared by the agent's tasks; replaced
/// when the launcher restarts.
#[derive(Clone)]
pub struct Launcher {
    inner: Arc<RwLock<LauncherClient>>,
}

impl Launcher {
    pub fn new(client: LauncherClient) -> Launcher {
        Launcher {
            inner: Arc::new(RwLock::new(client)),
        }
    }

    pub async fn get(&self) -> LauncherClient {
        self.inner.read().await.clone()
    }

    pub async fn replace(&self, client: LauncherClient) {
        *self.inner.write().await = client;
    }
}
