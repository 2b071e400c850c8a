//! Removing the output of processes the coordinator's retention removed
//! (`RemoveOutputs`): their directories under `procs/`. A directory being
//! read (a `logs` or `logs -f` reader is open on that process) is removed
//! when its last reader ends, never under it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub struct Outputs {
    procs_dir: PathBuf,
    /// Directories removed since start-up (for the log line).
    removed: Arc<AtomicU64>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Open readers per process.
    reading: HashMap<String, usize>,
    /// Removed while read: removed when the last reader ends.
    doomed: HashSet<String>,
}

/// Held by a reader of one process's output for as long as it reads.
pub struct Reading {
    outputs: Arc<Outputs>,
    id: String,
}

/// A process id from the coordinator names one directory under `procs/`.
fn plain_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Outputs {
    pub fn new(procs_dir: PathBuf) -> Arc<Outputs> {
        Arc::new(Outputs {
            procs_dir,
            removed: Arc::new(AtomicU64::new(0)),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reader of `id` starts.
    pub fn reading(self: &Arc<Self>, id: &str) -> Reading {
        *self.inner().reading.entry(id.to_owned()).or_default() += 1;
        Reading {
            outputs: Arc::clone(self),
            id: id.to_owned(),
        }
    }

    /// Removes the output of `ids` (now, or after their readers end).
    pub fn remove(&self, ids: Vec<String>) {
        let mut now = Vec::new();
        {
            let mut inner = self.inner();
            for id in ids {
                if !plain_name(&id) {
                    tracing::warn!(process = %id.escape_debug(), "RemoveOutputs names no process directory; ignored");
                } else if inner.reading.contains_key(&id) {
                    inner.doomed.insert(id);
                } else {
                    now.push(id);
                }
            }
        }
        self.delete(now);
    }

    fn delete(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let dirs: Vec<PathBuf> = ids.iter().map(|id| self.procs_dir.join(id)).collect();
        let removed = Arc::clone(&self.removed);
        tokio::task::spawn_blocking(move || {
            let n = dirs.len() as u64;
            for dir in dirs {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    // A process that never wrote has no directory.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a removed process's output")
                    }
                }
            }
            let total = removed.fetch_add(n, Ordering::Relaxed) + n;
            tracing::debug!(processes = n, total, "output of removed processes deleted");
        });
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        let last = {
            let mut inner = self.outputs.inner();
            let n = inner.reading.get_mut(&self.id).map(|n| {
                *n -= 1;
                *n
            });
            if n == Some(0) {
                inner.reading.remove(&self.id);
                inner.doomed.remove(&self.id)
            } else {
                false
            }
        };
        if last {
            self.outputs.delete(vec![self.id.clone()]);
        }
    }
}
