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
    /// The removal is recorded like any change: if its commit fails the
    /// table puts the processes back with their indices (and the store's
    /// repair rows rewrite them), so nothing is lost; the next sweep tries
    /// again. True when more are due.
    pub async fn sweep_once(&self, policy: &Retention) -> bool {
        let (pending, removed, more) = {
            let mut st = self.lock();
            let swept = retention::sweep(&mut st.table, policy, Instant::now(), BATCH);
            if swept.removed == 0 {
                // Nothing removed: nothing recorded to keep.
                return false;
            }
            let (removed, more) = (swept.removed, swept.more);
            (self.apply(&mut st, swept.effects), removed, more)
        };
        if let Err(e) = pending.committed().await {
            tracing::error!(error = %e, "retention: removal not committed; the processes were put back");
            return false;
        }
        let total = self
            .removed_total
            .fetch_add(removed as u64, Ordering::Relaxed)
            + removed as u64;
        tracing::debug!(removed, total, "retention removed finished processes");
        more
    }
}
