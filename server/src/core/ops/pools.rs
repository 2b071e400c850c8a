//! What the pool drivers need from the core: messages to nodes without the
//! table lock, and which pools are live.

use super::*;

impl Core {
    /// Sends a pool message to a connected node at once (not after a
    /// commit: pool tasks are not part of the durable state), without the
    /// table lock. False when the node is not connected.
    pub fn send_to_node(&self, node: &str, msg: ToAgent) -> bool {
        self.outbox
            .forward(node, CoordinatorMessage { msg: Some(msg) })
    }

    /// Pools whose driver runs in this coordinator; a node's running worker
    /// of any other pool (its pool ended with a coordinator restart) is
    /// terminated when the node registers.
    pub fn set_pool_live(&self, pool_id: &str, live: bool) {
        self.lock().table.set_pool_live(pool_id, live);
    }

    /// How many processes have a waiter (for tests and diagnostics).
    pub fn waited_on(&self) -> usize {
        self.lock().waiters.len()
    }
}
