//! Placement: which agent runs a process.
//!
//! A process may run on an agent that matches its selectors (`node`, every
//! label) and is connected with a free slot; among those the one with the most
//! free slots wins (ties by name, so placement is deterministic). If matching
//! agents exist but none has room, the process waits in the queue. If no agent
//! known to the coordinator matches at all, the start is refused, since
//! queueing it would wait forever.

use std::collections::BTreeMap;

use super::model::{Agent, AgentState, Placement};

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Assign(String),
    Queue,
    NoMatch(String),
}

pub fn matches(agent: &Agent, placement: &Placement) -> bool {
    (placement.node.is_empty() || placement.node == agent.name)
        && placement
            .labels
            .iter()
            .all(|(k, v)| agent.labels.get(k) == Some(v))
}

pub fn has_room(agent: &Agent) -> bool {
    agent.state == AgentState::Ready && agent.session.is_some() && agent.used() < agent.slots
}

pub fn decide(agents: &BTreeMap<String, Agent>, placement: &Placement) -> Decision {
    let mut any_match = false;
    let mut best: Option<(&Agent, u32)> = None;
    for agent in agents.values().filter(|a| matches(a, placement)) {
        any_match = true;
        if !has_room(agent) {
            continue;
        }
        let free = agent.slots - agent.used();
        if best.is_none_or(|(_, f)| free > f) {
            best = Some((agent, free));
        }
    }
    match best {
        Some((agent, _)) => Decision::Assign(agent.name.clone()),
        None if any_match => Decision::Queue,
        None => Decision::NoMatch(describe_miss(agents, placement)),
    }
}

fn describe_miss(agents: &BTreeMap<String, Agent>, placement: &Placement) -> String {
    let mut want = Vec::new();
    if !placement.node.is_empty() {
        want.push(format!("node={}", placement.node));
    }
    for (k, v) in &placement.labels {
        want.push(format!("label {k}={v}"));
    }
    let known: Vec<&str> = agents.keys().map(String::as_str).collect();
    if known.is_empty() {
        "no agent has registered with the coordinator yet; start one with `mpctl agent --server ADDR ...`".into()
    } else {
        format!(
            "no agent matches {}; known agents: {} (see `mpctl agents`)",
            want.join(", "),
            known.join(", ")
        )
    }
}
