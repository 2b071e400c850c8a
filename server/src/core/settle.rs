//! Per-process settle notification: a waiter (join, wait, start, signal)
//! subscribes to the processes it waits for, and a change to a process
//! wakes only that process's waiters. A process's channel is made by its
//! first waiter and removed when it fires, so a table of many processes
//! with few waiters holds few channels, and an exit wakes only the joiners
//! of that process.
//!
//! Subscribing happens under the table lock, after the waiter found the
//! process not ready; the wake happens under the same lock, after the
//! change. So a waiter either sees the change or is woken by it.

use std::collections::HashMap;

use tokio::sync::watch;

#[derive(Default)]
pub struct Waiters {
    by_id: HashMap<String, watch::Sender<()>>,
}

impl Waiters {
    /// A receiver that fires at the next change of process `id`.
    pub fn subscribe(&mut self, id: &str) -> watch::Receiver<()> {
        match self.by_id.get(id) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(());
                self.by_id.insert(id.to_owned(), tx);
                rx
            }
        }
    }

    /// Process `id` changed: wake its waiters (they look again, and
    /// subscribe again if they still wait).
    pub fn wake(&mut self, id: &str) {
        if let Some(tx) = self.by_id.remove(id) {
            tx.send_replace(());
        }
    }

    /// Forgets the channels of `ids` that nobody waits on any more (a
    /// waiter that timed out).
    pub fn prune<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            if self
                .by_id
                .get(id)
                .is_some_and(|tx| tx.receiver_count() == 0)
            {
                self.by_id.remove(id);
            }
        }
    }

    /// How many processes have a waiter.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_fires_only_that_process_and_removes_its_channel() {
        let mut w = Waiters::default();
        let mut a = w.subscribe("a");
        let b = w.subscribe("b");
        assert_eq!(w.len(), 2);
        w.wake("a");
        a.changed().await.expect("a fired");
        assert!(!b.has_changed().unwrap());
        assert_eq!(w.len(), 1);
        drop(b);
        w.prune(["b"]);
        assert!(w.is_empty());
    }
}
