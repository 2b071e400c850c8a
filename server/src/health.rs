//! Readiness for the health listener (`mpctl server --health-listen`): the
//! coordinator is ready when its data directory, where the SQLite store
//! lives, takes a write that reaches the disk (a full, read-only or vanished
//! volume answers NOT_SERVING with the OS reason). It is asked only once the
//! store is open and the authenticated listener is bound.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use mpctl_transport::health::ReadyFn;

/// The file each check rewrites and syncs.
pub const PROBE_FILE: &str = "health.probe";

pub fn readiness(data_dir: PathBuf) -> ReadyFn {
    let path = Arc::new(data_dir.join(PROBE_FILE));
    Arc::new(move || {
        let path = Arc::clone(&path);
        Box::pin(async move {
            let probe = Arc::clone(&path);
            let written = tokio::task::spawn_blocking(move || {
                let mut f = std::fs::File::create(&*probe)?;
                writeln!(f, "{}", crate::core::now_ms())?;
                f.sync_data()
            })
            .await;
            match written {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!(
                    "store directory not writable ({}): {e}",
                    path.display()
                )),
                Err(e) => Err(format!("store check failed: {e}")),
            }
        })
    })
}
