//! One inotify instance for the whole agent, shared by every `logs -f`
//! reader.
//!
//! Closing an inotify instance waits for a kernel grace period (about 16 ms
//! measured here), while adding and removing a watch on a live instance takes
//! microseconds. So the agent keeps one instance; each follower subscribes to
//! its process's output directory and is woken through a `Notify` when that
//! directory changes. Two followers of one process share the kernel watch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::Notify;

type Subscribers = HashMap<WatchDescriptor, Vec<(u64, Arc<Notify>)>>;

struct Inner {
    watches: Watches,
    subscribers: Subscribers,
    next_key: u64,
}

pub struct OutputWatcher {
    inner: Mutex<Inner>,
}

/// Woken when the watched directory changes; unsubscribes on drop.
pub struct Subscription {
    owner: Arc<OutputWatcher>,
    wd: WatchDescriptor,
    key: u64,
    pub changed: Arc<Notify>,
}

impl OutputWatcher {
    /// Creates the instance and the task that dispatches its events. Needs a
    /// tokio runtime.
    pub fn start() -> std::io::Result<Arc<OutputWatcher>> {
        let inotify = Inotify::init()?;
        let mut events = inotify.into_event_stream([0u8; 4096])?;
        let watcher = Arc::new(OutputWatcher {
            inner: Mutex::new(Inner {
                watches: events.watches(),
                subscribers: HashMap::new(),
                next_key: 0,
            }),
        });
        let weak = Arc::downgrade(&watcher);
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let Some(watcher) = weak.upgrade() else {
                    return;
                };
                let g = watcher.lock();
                match event {
                    Ok(e) => {
                        if let Some(subs) = g.subscribers.get(&e.wd) {
                            subs.iter().for_each(|(_, n)| n.notify_one());
                        }
                    }
                    // Queue overflow or a read error: wake everyone; they re-read.
                    Err(_) => g
                        .subscribers
                        .values()
                        .flatten()
                        .for_each(|(_, n)| n.notify_one()),
                }
            }
        });
        Ok(watcher)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to changes of the files in `dir` (which must exist).
    pub fn subscribe(self: &Arc<Self>, dir: &Path) -> std::io::Result<Subscription> {
        let mut g = self.lock();
        let wd = g.watches.add(
            dir,
            WatchMask::MODIFY | WatchMask::CREATE | WatchMask::CLOSE_WRITE,
        )?;
        let key = g.next_key;
        g.next_key += 1;
        let changed = Arc::new(Notify::new());
        g.subscribers
            .entry(wd.clone())
            .or_default()
            .push((key, Arc::clone(&changed)));
        Ok(Subscription {
            owner: Arc::clone(self),
            wd,
            key,
            changed,
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut g = self.owner.lock();
        let last = match g.subscribers.get_mut(&self.wd) {
            Some(subs) => {
                subs.retain(|(k, _)| *k != self.key);
                subs.is_empty()
            }
            None => false,
        };
        if last {
            g.subscribers.remove(&self.wd);
            // The directory may be gone already; the kernel then dropped the watch.
            let _ = g.watches.remove(self.wd.clone());
        }
    }
}
