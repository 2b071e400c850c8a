//! What a transition leaves to do: rows to make durable, messages to agents
//! that may only leave once those rows are committed, and which processes
//! changed (their waiters are woken). A transition only fills an
//! [`Effects`]; [`super::outbox::Outbox`] is the one place that carries
//! them out, so every transition is tested by looking at what it returned.

use super::logs::{Offsets, Output};
use super::model::{Agent, Proc};

/// One row to upsert.
#[derive(Clone, Debug)]
pub enum Row {
    Proc(Box<Proc>),
    Agent(Box<Agent>),
    /// The next top-level process number (CPython's `_process_counter`).
    NextNumber(u64),
    /// A node credential's hash and when it was issued; `None` forgets it.
    NodeCredential {
        name: String,
        hash: Option<([u8; 32], i64)>,
    },
    /// Delete this process's row (retention).
    Removed(String),
}

/// A message to a node, sent after the rows before it are durable.
#[derive(Clone, Debug, PartialEq)]
pub enum ToNode {
    Launch(Box<Proc>),
    /// `request_id` 0: nobody waits for the node's answer.
    Signal {
        process_id: String,
        signo: i32,
        tree: bool,
        request_id: u64,
    },
    AckExit(String),
    /// Start a reader of a process's output for a `Logs` caller.
    ReadLogs {
        request_id: u64,
        process_id: String,
        stream: Output,
        follow: bool,
        from: Offsets,
    },
    /// Stop that reader.
    CancelLogs(u64),
    /// Report running processes and unacknowledged exits again (what was
    /// reported while commits failed was rolled back).
    ResendReports,
    /// Delete these processes' output (they were removed by retention).
    RemoveOutputs(Vec<String>),
}

/// A message for one session of one node: a session that has ended since
/// does not get it (the node is reconciled when it registers again).
#[derive(Clone, Debug)]
pub struct Send {
    pub node: String,
    pub generation: u64,
    pub msg: ToNode,
}

#[derive(Debug, Default)]
pub struct Effects {
    pub(crate) rows: Vec<Row>,
    pub(crate) sends: Vec<Send>,
    /// Processes whose state changed: their waiters wake.
    pub(crate) touched: Vec<String>,
    /// The agent registry changed (registered, disconnected, lost).
    pub(crate) agents_changed: bool,
}

impl Effects {
    pub fn new() -> Effects {
        Effects::default()
    }

    /// Saves `proc` and wakes its waiters.
    pub fn put(&mut self, proc: &Proc) {
        self.touched.push(proc.id.clone());
        self.rows.push(Row::Proc(Box::new(proc.clone())));
    }

    pub fn put_agent(&mut self, agent: &Agent) {
        self.agents_changed = true;
        self.rows.push(Row::Agent(Box::new(agent.clone())));
    }

    pub fn node_credential(&mut self, name: &str, hash: Option<([u8; 32], i64)>) {
        self.rows.push(Row::NodeCredential {
            name: name.to_owned(),
            hash,
        });
    }

    pub fn next_number(&mut self, n: u64) {
        self.rows.push(Row::NextNumber(n));
    }

    pub fn send(&mut self, node: &str, generation: u64, msg: ToNode) {
        self.sends.push(Send {
            node: node.to_owned(),
            generation,
            msg,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.sends.is_empty()
    }

    /// The rows, in order (for tests and the outbox).
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The messages, in order.
    pub fn sends(&self) -> &[Send] {
        &self.sends
    }

    /// The saved processes, in order.
    pub fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.rows.iter().filter_map(|r| match r {
            Row::Proc(p) => Some(&**p),
            _ => None,
        })
    }
}
