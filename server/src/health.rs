//! Readiness for the health listener (`mpctl server --health-listen`): the
//! coordinator is ready when its data directory, where the SQLite store
//! lives, takes a write that reaches the disk (a full, read-only or vanished
//! volume answers NOT_SERVING with the OS reason), and, with the store's
//! own view ([`readiness_with`]), while its last commit failed (a full disk
//! can still take the probe's one rewritten block). It is asked only once the
//! store is open and the authenticated listener is bound.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use mpctl_transport::health::ReadyFn;

/// The file each check rewrites and syncs.
pub const PROBE_FILE: &str = "health.probe";

/// Why the store cannot commit now, if it cannot.
pub type StoreFailing = Arc<dyn Fn() -> Option<String> + Send + Sync>;

pub fn readiness(data_dir: PathBuf) -> ReadyFn {
    readiness_with(data_dir, Arc::new(|| None))
}

/// [`readiness`], NOT_SERVING also while `failing` says why commits fail.
pub fn readiness_with(data_dir: PathBuf, failing: StoreFailing) -> ReadyFn {
    let path = Arc::new(data_dir.join(PROBE_FILE));
    Arc::new(move || {
        let path = Arc::clone(&path);
        let failing = failing();
        Box::pin(async move {
            if let Some(why) = failing {
                return Err(why);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_when_the_directory_takes_a_write_with_the_reason_when_not() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(readiness(dir.path().to_owned())().await, Ok(()));
        assert!(dir.path().join(PROBE_FILE).exists());
        // A data directory that is not there (a volume gone).
        let gone = dir.path().join("gone");
        let reason = readiness(gone.clone())().await.unwrap_err();
        assert!(
            reason.starts_with(&format!(
                "store directory not writable ({}): ",
                gone.join(PROBE_FILE).display()
            )),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn not_serving_while_the_store_says_commits_fail_serving_after() {
        let dir = tempfile::tempdir().unwrap();
        let failing = Arc::new(std::sync::Mutex::new(Some("disk full".to_owned())));
        let f = Arc::clone(&failing);
        let ready = readiness_with(
            dir.path().to_owned(),
            Arc::new(move || f.lock().unwrap().clone()),
        );
        assert_eq!(ready().await, Err("disk full".to_owned()));
        *failing.lock().unwrap() = None;
        assert_eq!(ready().await, Ok(()));
    }
}
