//! Retention: finished (stopped or failed) processes are kept up to a count
//! and an age, then removed from the table and the store, and their output
//! from their node. A plain transition like the others; [`Core`]'s sweeper
//! (`ops/retention.rs`) runs it in batches off the hot path.
//!
//! [`Core`]: super::Core

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::effects::{Effects, Row, ToNode};
use super::table::Table;

/// How many finished processes to keep, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Beyond this many finished processes, the oldest-finished go.
    pub keep: usize,
    /// A process finished longer ago than this goes (monotonic time within a
    /// run; for one that finished before a restart, its recorded wall-clock
    /// stop time).
    pub max_age: Duration,
}

/// `mpctl server`'s defaults: 100,000 finished processes, 7 days.
impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: 100_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What one sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    pub effects: Effects,
    pub removed: usize,
    /// More are due than the batch allowed: sweep again soon.
    pub more: bool,
}

/// Removes up to `batch` finished processes that `policy` no longer keeps,
/// oldest-finished first. Each one's row is deleted; each node with a live
/// session is told (after the commit) to delete their output. A node not
/// connected keeps the files of its removed processes.
pub fn sweep(t: &mut Table, policy: &Retention, now: Instant, batch: usize) -> Swept {
    let mut swept = Swept::default();
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some((at, _)) = t.oldest_finished() {
        let due =
            t.finished_len() > policy.keep || now.saturating_duration_since(at) >= policy.max_age;
        if !due {
            break;
        }
        if swept.removed == batch {
            swept.more = true;
            break;
        }
        let Some((at, id)) = t.pop_finished() else {
            break;
        };
        let Some(p) = t.remove(&id, at) else { continue };
        swept.removed += 1;
        swept.effects.rows.push(Row::Removed(p.id.clone()));
        if !p.node.is_empty() {
            by_node.entry(p.node).or_default().push(p.id);
        }
    }
    for (node, ids) in by_node {
        if let Some(generation) = t.session(&node) {
            swept
                .effects
                .send(&node, generation, ToNode::RemoveOutputs(ids));
        }
    }
    swept
}
