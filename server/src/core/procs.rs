//! Transitions of processes: start (dedupe, place or queue), launched,
//! launch failed, exit, signal, and the queue. Each is a plain function of
//! the table and its input that changes the table and returns the
//! [`Effects`] to carry out; the wall clock (`now_ms`, for displayed times
//! only) and new ids are inputs too, so tests are deterministic.

use std::sync::Arc;

use super::effects::{Effects, ToNode};
use super::error::CoreError;
use super::model::{ExitReport, Method, Proc, ProcState, StartSpec};
use super::placement::{self, Decision};
use super::table::Table;
use crate::validate::MAX_RESULT;

/// What a start did.
#[derive(Debug)]
pub struct Started {
    pub id: String,
    /// False: a retried request id found its process; nothing changed.
    pub created: bool,
    pub effects: Effects,
}

/// Records a start: the same process again for a known request id;
/// otherwise a new process, placed on an agent with room (its `Launch`
/// follows the commit), queued when matching agents are all full, refused
/// when no agent matches. A fork's child is recorded on its parent's node
/// as launching and is never launched: the node adopts it.
pub fn start(
    t: &mut Table,
    spec: StartSpec,
    mut new_id: impl FnMut() -> String,
    now_ms: i64,
) -> Result<Started, CoreError> {
    if let Some(id) = (!spec.request_id.is_empty())
        .then(|| t.by_request(&spec.request_id))
        .flatten()
    {
        return Ok(Started {
            id: id.to_owned(),
            created: false,
            effects: Effects::new(),
        });
    }
    if let Some(id) = (!spec.request_id.is_empty())
        .then(|| t.removed_request(&spec.request_id))
        .flatten()
    {
        // Never launched twice: the process it started is gone, not unknown.
        return Err(CoreError::RemovedRequest {
            request_id: spec.request_id.clone(),
            id: id.to_owned(),
        });
    }
    let mut fx = Effects::new();
    let id = loop {
        let id = new_id();
        if !t.contains(&id) {
            break id;
        }
    };
    // As before placement: a start refused for want of an agent has used
    // its number (CPython numbers a process when it is made, not started).
    let identity = if spec.parent_id.is_empty() {
        let number = t.take_number();
        fx.next_number(t.next_number());
        vec![number as u32]
    } else {
        let parent = t
            .get(&spec.parent_id)
            .ok_or_else(|| CoreError::UnknownParent(spec.parent_id.clone()))?;
        if parent.daemon {
            return Err(CoreError::DaemonicParent(parent.name.clone()));
        }
        let mut identity = parent.identity.clone();
        identity.push(t.count_child(&spec.parent_id, spec.child_number));
        identity
    };
    let fork = spec.method == Method::Fork;
    let decision = if fork {
        // The child already exists (or is about to) on the parent's node:
        // no placement, no slot check, no launch.
        match t.session(&spec.placement.node) {
            Some(_) => Decision::Assign(spec.placement.node.clone()),
            None => Decision::NoMatch(format!(
                "node {} of the forking parent is not connected",
                spec.placement.node
            )),
        }
    } else {
        placement::decide(t.agents(), &spec.placement)
    };
    if let Decision::NoMatch(why) = decision {
        return Err(CoreError::CannotPlace(why));
    }
    let (argv, cwd, function) = match (&spec.launch.command, &spec.launch.function) {
        (Some(c), _) => (c.argv.clone(), c.cwd.clone(), String::new()),
        (None, Some(f)) => {
            let mut argv = vec![f.program.clone()];
            argv.extend(f.program_args.iter().cloned());
            (argv, f.cwd.clone(), f.function.clone())
        }
        // Validated at the edge: a start has a target. An empty argv fails
        // its launch on the node with a clear reason.
        (None, None) => (Vec::new(), String::new(), String::new()),
    };
    let name = if spec.name.is_empty() {
        let parts: Vec<String> = identity.iter().map(u32::to_string).collect();
        format!("Process-{}", parts.join(":"))
    } else {
        spec.name.clone()
    };
    let proc = Proc {
        id: id.clone(),
        name,
        identity,
        state: ProcState::Queued,
        daemon: spec.daemon,
        parent_id: spec.parent_id.clone(),
        node: String::new(),
        pid: 0,
        exitcode: None,
        start_error: String::new(),
        argv,
        cwd,
        function,
        pool_id: spec.pool_id().to_owned(),
        request_id: spec.request_id.clone(),
        method: spec.method,
        result: None,
        created_unix_ms: now_ms,
        started_unix_ms: 0,
        stopped_unix_ms: 0,
        requested_name: spec.name,
        placement: spec.placement,
        launch: Arc::new(spec.launch),
        trace: spec.trace,
    };
    t.insert(proc);
    match decision {
        Decision::Assign(node) if fork => {
            let p = t
                .update(&id, |p| {
                    p.node = node;
                    p.state = ProcState::Launching;
                })
                .expect("inserted above");
            fx.put(p);
        }
        Decision::Assign(node) => assign(t, &id, &node, &mut fx),
        _ => fx.put(t.get(&id).expect("inserted above")),
    }
    Ok(Started {
        id,
        created: true,
        effects: fx,
    })
}

/// Places `id` on `node` and sends the launch once the row is durable.
fn assign(t: &mut Table, id: &str, node: &str, fx: &mut Effects) {
    let Some(generation) = t.session(node) else {
        return;
    };
    let Some(p) = t.update(id, |p| {
        p.node = node.to_owned();
        p.state = ProcState::Launching;
    }) else {
        return;
    };
    fx.put(p);
    fx.send(node, generation, ToNode::Launch(Box::new(p.clone())));
}

/// Launches what the queue holds wherever it now fits, oldest first;
/// entries that still do not fit keep their place.
pub fn dispatch_queue(t: &mut Table, fx: &mut Effects) {
    for id in t.queued() {
        let Some(p) = t.get(&id) else { continue };
        if let Decision::Assign(node) = placement::decide(t.agents(), &p.placement) {
            assign(t, &id, &node, fx);
        }
    }
}

/// The node confirmed a launch (or adopted a fork's child; or a lost
/// process's node came back and says it runs).
pub fn launched(t: &mut Table, agent: &str, id: &str, pid: i32, at_ms: i64) -> Effects {
    let mut fx = Effects::new();
    let ours = t.get(id).is_some_and(|p| {
        p.node == agent && matches!(p.state, ProcState::Launching | ProcState::Lost)
    });
    if ours {
        let p = t
            .update(id, |p| {
                p.state = ProcState::Started;
                p.pid = pid;
                p.started_unix_ms = at_ms;
            })
            .expect("checked above");
        fx.put(p);
    }
    fx
}

/// The node could not start the target: the process failed (no exit code)
/// and its slot goes to the queue.
pub fn launch_failed(t: &mut Table, agent: &str, id: &str, error: &str, now_ms: i64) -> Effects {
    let mut fx = Effects::new();
    let ours = t
        .get(id)
        .is_some_and(|p| p.node == agent && !p.state.is_final());
    if ours {
        let p = t
            .update(id, |p| {
                let program = p.argv.first().cloned().unwrap_or_default();
                p.state = ProcState::Failed;
                p.start_error = format!("cannot start {program:?} on node {agent}: {error}");
                p.stopped_unix_ms = now_ms;
            })
            .expect("checked above");
        fx.put(p);
        dispatch_queue(t, &mut fx);
    }
    fx
}

/// An exit reported on session `generation` of `agent`: recorded, its
/// daemonic children terminated, acknowledged after the commit, and the
/// freed slot given to the queue. A report from an ended session is
/// ignored (the node reports it again when it registers).
pub fn exited(t: &mut Table, agent: &str, generation: u64, ex: ExitReport, now_ms: i64) -> Effects {
    let mut fx = Effects::new();
    if t.session(agent) != Some(generation) {
        return fx;
    }
    apply_exit(t, agent, generation, ex, now_ms, &mut fx);
    dispatch_queue(t, &mut fx);
    fx
}

/// Records an exit reported by `agent` and acknowledges it after commit.
/// An exit the table has already (or of a process on another node) is
/// acknowledged and changes nothing: the code first recorded stands.
pub(super) fn apply_exit(
    t: &mut Table,
    agent: &str,
    generation: u64,
    ex: ExitReport,
    now_ms: i64,
    fx: &mut Effects,
) {
    let id = ex.process_id.clone();
    match t.get(&id) {
        Some(p) if p.node == agent && p.state != ProcState::Stopped => {
            let p = t
                .update(&id, |p| {
                    p.state = ProcState::Stopped;
                    p.exitcode = Some(ex.exitcode);
                    p.result = ex.result.filter(|r| r.len() <= MAX_RESULT);
                    if ex.pid != 0 {
                        p.pid = ex.pid;
                    }
                    p.stopped_unix_ms = if ex.at_unix_ms > 0 {
                        ex.at_unix_ms
                    } else {
                        now_ms
                    };
                })
                .expect("checked above");
            fx.put(p);
            terminate_daemon_children(t, &id, now_ms, fx);
        }
        Some(_) => {}
        None => tracing::warn!(agent, process = %id, "exit of an unknown process; acknowledged"),
    }
    fx.send(agent, generation, ToNode::AckExit(id));
}

/// CPython terminates a process's daemonic children when it exits; the
/// coordinator does it for the cluster: SIGTERM to the running ones, and the
/// queued ones stop at once with -15.
pub fn terminate_daemon_children(t: &mut Table, parent: &str, now_ms: i64, fx: &mut Effects) {
    let children: Vec<String> = t
        .daemon_children(parent)
        .iter()
        .filter(|id| t.get(id).is_some_and(|p| !p.state.is_settled()))
        .cloned()
        .collect();
    for id in children {
        let p = t.get(&id).expect("listed above");
        match p.state {
            ProcState::Queued => {
                let p = t
                    .update(&id, |p| stop_unlaunched(p, libc::SIGTERM, now_ms))
                    .expect("listed above");
                fx.put(p);
            }
            _ => {
                let node = p.node.clone();
                if let Some(generation) = t.session(&node) {
                    fx.send(
                        &node,
                        generation,
                        ToNode::Signal {
                            process_id: id,
                            signo: libc::SIGTERM,
                            tree: false,
                            request_id: 0,
                        },
                    );
                }
            }
        }
    }
}

/// A queued process signalled before it ran: stopped as if it had died of
/// the signal at once (CPython's `-N`).
fn stop_unlaunched(p: &mut Proc, signo: i32, now_ms: i64) {
    p.state = ProcState::Stopped;
    p.exitcode = Some(-signo);
    p.stopped_unix_ms = now_ms;
}

/// What a terminate()/kill() does.
#[derive(Debug)]
pub enum SignalPlan {
    /// The process had already stopped or failed: nothing to do.
    Nothing,
    /// A queued process stopped at once with `-signo`.
    Stopped(Effects),
    /// The signal goes to `node` (after the commit of `effects`, which holds
    /// it); its answer carries `request_id`.
    Sent {
        node: String,
        request_id: u64,
        effects: Effects,
    },
}

/// Plans a signal to `id` (not in `Launching`: the caller waits for the
/// launch to be confirmed first, so the signal cannot overtake it).
/// `request_id` is the id the node's answer will carry.
pub fn signal(
    t: &mut Table,
    id: &str,
    signo: i32,
    tree: bool,
    request_id: u64,
    now_ms: i64,
) -> Result<SignalPlan, CoreError> {
    let p = t
        .get(id)
        .ok_or_else(|| CoreError::UnknownProcess(id.to_owned()))?;
    match p.state {
        ProcState::Queued => {
            let mut fx = Effects::new();
            let p = t
                .update(id, |p| stop_unlaunched(p, signo, now_ms))
                .expect("checked above");
            fx.put(p);
            Ok(SignalPlan::Stopped(fx))
        }
        ProcState::Launching | ProcState::Started => {
            let node = p.node.clone();
            let Some(generation) = t.session(&node) else {
                return Err(CoreError::SignalNodeDown {
                    id: id.to_owned(),
                    node,
                });
            };
            let mut fx = Effects::new();
            fx.send(
                &node,
                generation,
                ToNode::Signal {
                    process_id: id.to_owned(),
                    signo,
                    tree,
                    request_id,
                },
            );
            Ok(SignalPlan::Sent {
                node,
                request_id,
                effects: fx,
            })
        }
        ProcState::Lost => Err(CoreError::SignalLost {
            id: id.to_owned(),
            node: p.node.clone(),
        }),
        ProcState::Stopped | ProcState::Failed => Ok(SignalPlan::Nothing),
    }
}
