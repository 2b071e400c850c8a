//! Who may do what on `ProcessManager`: the operator's clients (role
//! client, the authkey) may do anything; a managed process (role job, its
//! own job key) acts only for its own subtree (and may look at its own
//! ancestors, for `parent_process()`), and only while it is alive
//! (docs/design.md §2, §5). Everything else is `PERMISSION_DENIED` naming
//! the reason.

use mpctl_transport::{PeerIdentity, Role};
use tonic::{Request, Status};

use crate::core::Core;

/// The caller of a `ProcessManager` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An operator's client: no limits.
    Client,
    /// Managed process `id`, with its job credential.
    Job(String),
}

/// The caller of `req`, if it authenticated as a client or as a live job.
#[allow(clippy::result_large_err)]
pub fn caller<T>(core: &Core, req: &Request<T>) -> Result<Caller, Status> {
    match req.extensions().get::<PeerIdentity>() {
        Some(PeerIdentity {
            role: Role::Client, ..
        }) => Ok(Caller::Client),
        Some(PeerIdentity {
            role: Role::Job,
            process_id: Some(id),
            ..
        }) => {
            if !core.is_alive(id) {
                return Err(Status::permission_denied(format!(
                    "the job credential of process {id} is revoked: that process is not running"
                )));
            }
            Ok(Caller::Job(id.clone()))
        }
        Some(id) => Err(Status::permission_denied(format!(
            "this endpoint is for client connections; this connection authenticated as {} (an agent key cannot be used by a client, and vice versa)",
            id.role
        ))),
        None => Err(Status::permission_denied(
            "this endpoint is for client connections; this connection was not authenticated by mpctl",
        )),
    }
}

/// Only the operator's clients (the authkey) may call this.
#[allow(clippy::result_large_err)]
pub fn client_only(caller: &Caller, what: &str) -> Result<(), Status> {
    match caller {
        Caller::Client => Ok(()),
        Caller::Job(id) => Err(Status::permission_denied(format!(
            "{what} is for the cluster's clients; process {id} holds a job credential, which only acts on its own children"
        ))),
    }
}

/// A job may act on `target` only if it descends from it.
#[allow(clippy::result_large_err)]
pub fn own_subtree(core: &Core, caller: &Caller, target: &str, what: &str) -> Result<(), Status> {
    match caller {
        Caller::Client => Ok(()),
        Caller::Job(me) if core.descends_from(target, me) => Ok(()),
        Caller::Job(me) => Err(Status::permission_denied(format!(
            "process {me} may {what} only its own descendants; {target} is not one of them"
        ))),
    }
}

/// For the read-only calls (get, join, wait): a job may also look at itself
/// and at its ancestors, as CPython's `parent_process()` can be asked
/// `is_alive()` and joined.
#[allow(clippy::result_large_err)]
pub fn own_lineage(core: &Core, caller: &Caller, target: &str, what: &str) -> Result<(), Status> {
    match caller {
        Caller::Client => Ok(()),
        Caller::Job(me)
            if target == me
                || core.descends_from(target, me)
                || core.descends_from(me, target) =>
        {
            Ok(())
        }
        Caller::Job(me) => Err(Status::permission_denied(format!(
            "process {me} may {what} only itself, its ancestors and its descendants; {target} is none of them"
        ))),
    }
}
