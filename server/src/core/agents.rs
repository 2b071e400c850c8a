//! Transitions of agents and their leases: register (reconcile what the node
//! runs and reports with the table), disconnect, lease expiry. Leases run on
//! the monotonic clock (`now: Instant` is an input); the wall clock only
//! stamps `last_seen_unix_ms` for display.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use super::effects::{Effects, ToNode};
use super::model::{Agent, AgentState, ExitReport, JournalDamage, Method, ProcState, Registration};
use super::procs::{apply_exit, dispatch_queue};
use super::table::Table;

/// A (re)connecting agent on session `generation`: recorded as ready, its
/// unacknowledged exits applied, what it runs marked started (a worker of a
/// pool that no longer exists is terminated), launches it never confirmed
/// sent again, started processes it no longer knows lost; then the queue
/// is offered its slots.
pub fn register(
    t: &mut Table,
    reg: Registration,
    generation: u64,
    now: Instant,
    now_ms: i64,
) -> Effects {
    let mut fx = Effects::new();
    let name = reg.name.clone();
    if let Some(d) = &reg.journal_damage {
        tracing::warn!(agent = %name, reason = %d.reason(), "node registered degraded");
    }
    let agent = t.put_agent(Agent {
        name: name.clone(),
        state: AgentState::Ready,
        slots: reg.slots,
        labels: reg.labels,
        version: reg.version,
        hostname: reg.hostname,
        last_seen_unix_ms: now_ms,
        last_seen: now,
        session: Some(generation),
        journal_damage: reg.journal_damage,
        running: HashSet::new(),
    });
    fx.put_agent(agent);
    reconcile(
        t,
        &name,
        generation,
        reg.running,
        reg.exited,
        now_ms,
        &mut fx,
    );
    fx
}

/// The node's report of what it runs and which exits are unacknowledged
/// (on `Register`, or again on `Resync` after a rolled-back commit):
/// exits applied, what it runs marked started (a worker of a pool that no
/// longer exists is terminated), launches it never confirmed sent again,
/// started processes it no longer knows lost (a damaged journal record
/// gives none of them a code); then the queue is offered its slots.
pub fn reconcile(
    t: &mut Table,
    name: &str,
    generation: u64,
    running: Vec<(String, i32)>,
    exited: Vec<ExitReport>,
    now_ms: i64,
    fx: &mut Effects,
) {
    let name = name.to_owned();
    let mut known: HashSet<String> = HashSet::new();
    for ex in exited {
        known.insert(ex.process_id.clone());
        apply_exit(t, &name, generation, ex, now_ms, fx);
    }
    for (id, pid) in running {
        known.insert(id.clone());
        let ours = t
            .get(&id)
            .is_some_and(|p| p.node == name && !p.state.is_final());
        if !ours {
            tracing::warn!(
                agent = %name, process = %id, pid,
                "agent runs a process the coordinator does not know; leaving it alone"
            );
            continue;
        }
        let p = t
            .update(&id, |p| {
                p.state = ProcState::Started;
                p.pid = pid;
            })
            .expect("checked above");
        fx.put(p);
        let pool = p.pool_id.clone();
        if !pool.is_empty() && !t.pool_live(&pool) {
            tracing::info!(agent = %name, process = %id, pool = %pool,
                "terminating a worker of a pool that no longer exists");
            fx.send(
                &name,
                generation,
                ToNode::Signal {
                    process_id: id.clone(),
                    signo: libc::SIGTERM,
                    tree: false,
                    request_id: 0,
                },
            );
        }
    }
    // Launches the agent never confirmed are sent again (the launcher
    // deduplicates by id); started processes it no longer knows are lost.
    let mine: Vec<String> = t
        .procs()
        .filter(|p| p.node == name && !known.contains(&p.id) && p.state.is_active())
        // A fork's child is adopted, never launched by the node.
        .filter(|p| p.method != Method::Fork)
        .map(|p| p.id.clone())
        .collect();
    for id in mine {
        let p = t.get(&id).expect("listed above");
        if p.state == ProcState::Launching {
            fx.send(&name, generation, ToNode::Launch(Box::new(p.clone())));
        } else {
            let p = t
                .update(&id, |p| p.state = ProcState::Lost)
                .expect("listed above");
            fx.put(p);
        }
    }
    dispatch_queue(t, fx);
}

/// A `Resync` on session `generation` of `agent` (ignored from an ended
/// session: the node registers again).
pub fn resync(
    t: &mut Table,
    agent: &str,
    generation: u64,
    running: Vec<(String, i32)>,
    exited: Vec<ExitReport>,
    now_ms: i64,
) -> Effects {
    let mut fx = Effects::new();
    if t.session(agent) == Some(generation) {
        reconcile(t, agent, generation, running, exited, now_ms, &mut fx);
    }
    fx
}

/// The node's journal damage changed while connected.
pub fn journal_damage(t: &mut Table, agent: &str, damage: Option<JournalDamage>) -> Effects {
    let mut fx = Effects::new();
    if t.agent(agent).is_some_and(|a| a.journal_damage == damage) {
        return fx;
    }
    match &damage {
        Some(d) => tracing::warn!(agent, reason = %d.reason(), "node degraded"),
        None => tracing::info!(agent, "node's journal damage cleared"),
    }
    if let Some(a) = t.update_agent(agent, |a| a.journal_damage = damage) {
        fx.put_agent(a);
    }
    fx
}

/// Any message from the agent renews its lease.
pub fn seen(t: &mut Table, agent: &str, now: Instant, now_ms: i64) {
    t.update_agent_live(agent, |a| {
        a.last_seen = now;
        a.last_seen_unix_ms = now_ms;
    });
}

/// Session `generation` of `agent` ended. The agent stays `Disconnected`
/// (its processes keep their state) until its lease runs out; returns how
/// long that is from `now`, or `None` if that session was not the current one.
pub fn disconnected(
    t: &mut Table,
    agent: &str,
    generation: u64,
    lease: Duration,
    now: Instant,
) -> Option<Duration> {
    if t.session(agent) != Some(generation) {
        return None;
    }
    let a = t.update_agent_live(agent, |a| {
        a.session = None;
        a.state = AgentState::Disconnected;
    })?;
    Some(lease.saturating_sub(now.saturating_duration_since(a.last_seen)))
}

/// The lease check of `agent` at `now`: if it is not connected and fresh,
/// it and the processes it ran are `lost` (until it returns with their
/// real codes).
pub fn lease_expired(t: &mut Table, agent: &str, lease: Duration, now: Instant) -> Effects {
    let mut fx = Effects::new();
    let Some(a) = t.agent(agent) else {
        return fx;
    };
    let silent = now.saturating_duration_since(a.last_seen);
    if (a.session.is_some() && silent < lease) || a.state == AgentState::Lost {
        return fx;
    }
    let a = t
        .update_agent(agent, |a| {
            a.session = None;
            a.state = AgentState::Lost;
        })
        .expect("checked above");
    fx.put_agent(a);
    for id in t.running_on(agent) {
        let p = t
            .update(&id, |p| p.state = ProcState::Lost)
            .expect("a running id is in the table");
        fx.put(p);
    }
    tracing::warn!(
        agent,
        silent_ms = silent.as_millis() as u64,
        "agent lost: silent past its lease"
    );
    fx
}
