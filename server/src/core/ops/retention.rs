//! The retention sweeper: a task that runs [`super::super::retention::sweep`]
//! in batches of [`BATCH`], each under its own short hold of the table
//! lock, so starts are never held up behind a large removal.

use super::*;
use crate::core::retention::{self, Retention};

/// Processes removed per lock hold (and per store batch).
pub const BATCH: usize = 1_000;
/// How often the sweeper looks when nothing was due.
const INTERVAL: Duration = Duration::from_millis(500);

impl Core {
    /// Starts the sweeper; it stops when the last `Arc<Core>` but its own
    /// is gone.
    pub fn start_retention(self: &Arc<Self>, policy: Retention) {
        let core = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(c) = core.upgrade() else { return };
                let more = c.sweep_once(&policy).await;
                drop(c);
                if more {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(INTERVAL).await;
                }
            }
        });
    }

    /// One batch: removed rows are committed before the nodes are told.
    /// True when more are due.
    pub async fn sweep_once(&self, policy: &Retention) -> bool {
        let (pending, swept) = {
            let mut st = self.lock();
            let swept = retention::sweep(&mut st.table, policy, Instant::now(), BATCH);
            if swept.removed == 0 {
                return false;
            }
            let more = swept.more;
            let removed = swept.removed;
            (self.outbox.submit(swept.effects), (removed, more))
        };
        if let Err(e) = pending.committed().await {
            tracing::error!(error = %e, "retention: removed processes not deleted from the store");
        }
        let total = self
            .removed_total
            .fetch_add(swept.0 as u64, Ordering::Relaxed)
            + swept.0 as u64;
        tracing::debug!(
            removed = swept.0,
            total,
            "retention removed finished processes"
        );
        swept.1
    }
}
