//! Readiness for the health listener (`mpctl agent --health-listen`): the
//! agent is ready when the coordinator accepted its `Register` on the current
//! session and its connection to the node's launcher is up.

use std::sync::Arc;

use mpctl_transport::health::ReadyFn;

use crate::launcher::Launcher;
use crate::state::NodeState;

pub fn readiness(state: Arc<NodeState>, launcher: Launcher, server: String) -> ReadyFn {
    Arc::new(move || {
        let state = Arc::clone(&state);
        let launcher = launcher.clone();
        let server = server.clone();
        Box::pin(async move {
            if !state.is_registered() {
                return Err(format!("not registered with the coordinator at {server}"));
            }
            match launcher.get().await.closed_reason() {
                None => Ok(()),
                Some(reason) => Err(format!("no connection to the node's launcher: {reason}")),
            }
        })
    })
}
