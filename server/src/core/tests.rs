//! The transitions on their own: a table, an input, and the effects that
//! come back. No daemon, socket or SQLite.

use std::time::Duration;

use mpctl_proto::v1::{CommandTarget, FunctionTarget};
use tokio::time::Instant;

use super::agents;
use super::effects::{Effects, Row, ToNode};
use super::error::CoreError;
use super::model::{AgentState, ExitReport, Method, Proc, ProcState, Registration, StartSpec};
use super::procs::{self, SignalPlan};
use super::table::Table;

const LEASE: Duration = Duration::from_secs(10);
const T0_MS: i64 = 1_700_000_000_000;

fn reg(name: &str, slots: u32) -> Registration {
    Registration {
        name: name.into(),
        slots,
        version: "test".into(),
        ..Registration::default()
    }
}

/// A table with agent `n1` (`slots` slots) connected on session 1.
fn cluster(slots: u32) -> (Table, Instant) {
    let mut t = Table::new(1);
    let g = t.take_generation();
    assert_eq!(g, 1);
    let now = Instant::now();
    agents::register(&mut t, reg("n1", slots), g, now, T0_MS);
    (t, now)
}

fn cmd(argv: &[&str]) -> StartSpec {
    let mut s = StartSpec::default();
    s.launch.command = Some(CommandTarget {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    });
    s
}

/// Ids p1, p2, … in order.
fn ids() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("p{n}")
    }
}

fn start(t: &mut Table, spec: StartSpec, id: &str) -> Effects {
    let s = procs::start(t, spec, || id.to_owned(), T0_MS).expect("start accepted");
    assert_eq!(s.id, id);
    s.effects
}

fn state(t: &Table, id: &str) -> ProcState {
    t.get(id).expect("known").state
}

fn exit(id: &str, code: i32) -> ExitReport {
    ExitReport {
        process_id: id.into(),
        exitcode: code,
        ..ExitReport::default()
    }
}

fn launches(fx: &Effects) -> Vec<(String, String)> {
    fx.sends()
        .iter()
        .filter_map(|s| match &s.msg {
            ToNode::Launch(p) => Some((s.node.clone(), p.id.clone())),
            _ => None,
        })
        .collect()
}

fn acks(fx: &Effects) -> Vec<String> {
    fx.sends()
        .iter()
        .filter_map(|s| match &s.msg {
            ToNode::AckExit(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

fn saved(fx: &Effects) -> Vec<(String, ProcState)> {
    fx.procs().map(|p| (p.id.clone(), p.state)).collect()
}

fn used(t: &Table, node: &str) -> u32 {
    t.agent(node).expect("known agent").used()
}

#[test]
fn a_start_is_placed_saved_and_launched_after_the_commit() {
    let (mut t, _) = cluster(2);
    let fx = start(&mut t, cmd(&["echo", "hi"]), "p1");
    assert!(matches!(fx.rows()[0], Row::NextNumber(2)));
    assert_eq!(saved(&fx), [("p1".into(), ProcState::Launching)]);
    assert_eq!(launches(&fx), [("n1".into(), "p1".into())]);
    assert_eq!(fx.sends()[0].generation, 1);
    let p = t.get("p1").unwrap();
    assert_eq!(
        (p.name.as_str(), &p.identity[..], p.node.as_str()),
        ("Process-1", &[1][..], "n1")
    );
    assert_eq!(p.argv, ["echo", "hi"]);
    assert_eq!(used(&t, "n1"), 1);
}

#[test]
fn a_child_keeps_the_number_its_parent_gave_it_when_it_made_the_process() {
    // CPython: a parent that made Process objects 1 and 2 and starts only
    // the second gets Process-N:2; a child with no number given counts on.
    let (mut t, _) = cluster(4);
    start(&mut t, cmd(&["parent"]), "p1");
    procs::launched(&mut t, "n1", "p1", 10, T0_MS);
    let child = |number| StartSpec {
        parent_id: "p1".into(),
        child_number: number,
        ..cmd(&["child"])
    };
    start(&mut t, child(2), "c2");
    start(&mut t, child(0), "c3");
    let names: Vec<_> = ["c2", "c3"]
        .iter()
        .map(|id| t.get(id).unwrap().name.clone())
        .collect();
    assert_eq!(names, ["Process-1:2", "Process-1:3"]);
}

#[test]
fn a_retried_request_id_is_the_same_process_and_launches_nothing() {
    let (mut t, _) = cluster(2);
    let mut spec = cmd(&["true"]);
    spec.request_id = "r-1".into();
    start(&mut t, spec.clone(), "p1");
    let again = procs::start(&mut t, spec, || "p2".into(), T0_MS).unwrap();
    assert_eq!(again.id, "p1");
    assert!(!again.created);
    assert!(again.effects.is_empty());
    assert!(t.get("p2").is_none());
    assert_eq!(used(&t, "n1"), 1);
}

#[test]
fn a_full_cluster_queues_and_an_exit_hands_the_slot_on_oldest_first() {
    let (mut t, _) = cluster(1);
    start(&mut t, cmd(&["a"]), "p1");
    let fx = start(&mut t, cmd(&["b"]), "p2");
    assert_eq!(saved(&fx), [("p2".into(), ProcState::Queued)]);
    assert!(fx.sends().is_empty());
    start(&mut t, cmd(&["c"]), "p3");
    procs::launched(&mut t, "n1", "p1", 100, T0_MS);
    let fx = procs::exited(&mut t, "n1", 1, exit("p1", 3), T0_MS);
    assert_eq!(
        saved(&fx),
        [
            ("p1".into(), ProcState::Stopped),
            ("p2".into(), ProcState::Launching)
        ]
    );
    assert_eq!(acks(&fx), ["p1"]);
    assert_eq!(launches(&fx), [("n1".into(), "p2".into())]);
    assert_eq!(t.get("p1").unwrap().exitcode, Some(3));
    assert_eq!(state(&t, "p3"), ProcState::Queued);
    assert_eq!(used(&t, "n1"), 1);
}

#[test]
fn a_start_no_agent_matches_is_refused_naming_the_known_agents() {
    let (mut t, _) = cluster(1);
    let mut spec = cmd(&["x"]);
    spec.placement.node = "elsewhere".into();
    let e = procs::start(&mut t, spec, ids(), T0_MS).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot place process: no agent matches node=elsewhere; known agents: n1 (see `mpctl agents`)"
    );
    assert_eq!(t.procs().count(), 0);
    let mut empty = Table::new(1);
    let e = procs::start(&mut empty, cmd(&["x"]), ids(), T0_MS).unwrap_err();
    assert!(e.to_string().contains("no agent has registered"), "{e}");
}

#[test]
fn launched_records_the_pid_only_from_the_node_it_was_sent_to() {
    let (mut t, _) = cluster(1);
    start(&mut t, cmd(&["x"]), "p1");
    assert!(procs::launched(&mut t, "n2", "p1", 9, T0_MS).is_empty());
    assert_eq!(state(&t, "p1"), ProcState::Launching);
    let fx = procs::launched(&mut t, "n1", "p1", 42, T0_MS + 5);
    assert_eq!(saved(&fx), [("p1".into(), ProcState::Started)]);
    let p = t.get("p1").unwrap();
    assert_eq!((p.pid, p.started_unix_ms), (42, T0_MS + 5));
}

#[test]
fn a_launch_failure_fails_the_process_and_frees_its_slot() {
    let (mut t, _) = cluster(1);
    start(&mut t, cmd(&["/no/such"]), "p1");
    start(&mut t, cmd(&["next"]), "p2");
    let fx = procs::launch_failed(&mut t, "n1", "p1", "No such file or directory", T0_MS);
    assert_eq!(
        saved(&fx),
        [
            ("p1".into(), ProcState::Failed),
            ("p2".into(), ProcState::Launching)
        ]
    );
    let p = t.get("p1").unwrap();
    assert_eq!(
        p.start_error,
        "cannot start \"/no/such\" on node n1: No such file or directory"
    );
    assert_eq!(p.exitcode, None);
    assert_eq!(used(&t, "n1"), 1);
}

#[test]
fn an_exit_reported_twice_keeps_the_first_code_and_is_acked_again() {
    let (mut t, _) = cluster(1);
    start(&mut t, cmd(&["x"]), "p1");
    procs::launched(&mut t, "n1", "p1", 42, T0_MS);
    procs::exited(&mut t, "n1", 1, exit("p1", 7), T0_MS);
    let fx = procs::exited(&mut t, "n1", 1, exit("p1", 9), T0_MS);
    assert!(saved(&fx).is_empty());
    assert_eq!(acks(&fx), ["p1"]);
    assert_eq!(t.get("p1").unwrap().exitcode, Some(7));
    // An exit of a process nobody knows is acknowledged, so it leaves the
    // node's journal.
    let fx = procs::exited(&mut t, "n1", 1, exit("ghost", 1), T0_MS);
    assert_eq!(acks(&fx), ["ghost"]);
}

#[test]
fn an_exit_from_an_ended_session_is_ignored() {
    let (mut t, _) = cluster(1);
    start(&mut t, cmd(&["x"]), "p1");
    procs::launched(&mut t, "n1", "p1", 42, T0_MS);
    assert!(procs::exited(&mut t, "n1", 99, exit("p1", 7), T0_MS).is_empty());
    assert_eq!(state(&t, "p1"), ProcState::Started);
}

#[test]
fn a_function_result_is_kept_with_the_exit() {
    let (mut t, _) = cluster(1);
    let mut spec = StartSpec::default();
    spec.launch.function = Some(FunctionTarget {
        program: "/bin/prog".into(),
        function: "square".into(),
        ..Default::default()
    });
    start(&mut t, spec, "p1");
    procs::launched(&mut t, "n1", "p1", 42, T0_MS);
    let mut ex = exit("p1", 0);
    ex.result = Some(b"49".to_vec());
    ex.at_unix_ms = T0_MS + 9;
    procs::exited(&mut t, "n1", 1, ex, T0_MS);
    let p = t.get("p1").unwrap();
    assert_eq!(p.function, "square");
    assert_eq!(p.result.as_deref(), Some(&b"49"[..]));
    assert_eq!(p.stopped_unix_ms, T0_MS + 9);
}

#[test]
fn a_lease_runs_on_the_monotonic_clock_and_loses_the_nodes_processes() {
    let (mut t, t0) = cluster(2);
    start(&mut t, cmd(&["a"]), "p1");
    start(&mut t, cmd(&["b"]), "p2");
    procs::launched(&mut t, "n1", "p1", 10, T0_MS);
    // Connected and fresh: nothing happens, whatever the wall clock says.
    assert!(agents::lease_expired(&mut t, "n1", LEASE, t0 + LEASE / 2).is_empty());
    let remaining = agents::disconnected(&mut t, "n1", 1, LEASE, t0 + Duration::from_secs(4));
    assert_eq!(remaining, Some(Duration::from_secs(6)));
    assert_eq!(t.agent("n1").unwrap().state, AgentState::Disconnected);
    // A stale session's end changes nothing.
    assert_eq!(agents::disconnected(&mut t, "n1", 1, LEASE, t0), None);
    let fx = agents::lease_expired(&mut t, "n1", LEASE, t0 + LEASE);
    assert!(matches!(&fx.rows()[0], Row::Agent(a) if a.state == AgentState::Lost));
    let mut lost = saved(&fx);
    lost.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        lost,
        [
            ("p1".into(), ProcState::Lost),
            ("p2".into(), ProcState::Lost)
        ]
    );
    assert_eq!(used(&t, "n1"), 0);
    // Lost once: a second check does nothing.
    assert!(agents::lease_expired(&mut t, "n1", LEASE, t0 + LEASE * 2).is_empty());
}

#[test]
fn a_node_that_returns_gives_the_real_codes_and_what_it_still_runs() {
    let (mut t, t0) = cluster(4);
    for id in ["p1", "p2", "p3"] {
        start(&mut t, cmd(&[id]), id);
    }
    for (id, pid) in [("p1", 11), ("p2", 12), ("p3", 13)] {
        procs::launched(&mut t, "n1", id, pid, T0_MS);
    }
    agents::disconnected(&mut t, "n1", 1, LEASE, t0);
    agents::lease_expired(&mut t, "n1", LEASE, t0 + LEASE);
    assert_eq!(state(&t, "p1"), ProcState::Lost);
    // The node comes back: p1 exited with 7 meanwhile, p2 still runs, p3 is
    // gone from it.
    let g = t.take_generation();
    let mut back = reg("n1", 4);
    back.exited = vec![exit("p1", 7)];
    back.running = vec![("p2".into(), 12)];
    let fx = agents::register(&mut t, back, g, t0 + LEASE * 2, T0_MS);
    let p1 = t.get("p1").unwrap();
    assert_eq!((p1.state, p1.exitcode), (ProcState::Stopped, Some(7)));
    assert_eq!(state(&t, "p2"), ProcState::Started);
    assert_eq!(state(&t, "p3"), ProcState::Lost);
    assert_eq!(acks(&fx), ["p1"]);
    assert!(launches(&fx).is_empty());
    assert!(fx.sends().iter().all(|s| s.generation == g));
    let a = t.agent("n1").unwrap();
    assert_eq!((a.state, a.session), (AgentState::Ready, Some(g)));
    assert_eq!(used(&t, "n1"), 1);
}

#[test]
fn a_worker_of_a_pool_that_is_gone_is_terminated_when_its_node_returns() {
    let (mut t, _) = cluster(2);
    let mut spec = StartSpec {
        daemon: true,
        ..StartSpec::default()
    };
    spec.launch.function = Some(FunctionTarget {
        program: "/bin/prog".into(),
        pool_worker: Some(mpctl_proto::v1::PoolWorkerTarget {
            pool_id: "pool-a".into(),
            maxtasksperchild: 0,
        }),
        ..Default::default()
    });
    start(&mut t, spec, "w1");
    assert_eq!(t.get("w1").unwrap().pool_id, "pool-a");
    let g = t.take_generation();
    let mut back = reg("n1", 2);
    back.running = vec![("w1".into(), 77)];
    let fx = agents::register(&mut t, back, g, Instant::now(), T0_MS);
    assert!(fx.sends().iter().any(|s| s.msg
        == ToNode::Signal {
            process_id: "w1".into(),
            signo: libc::SIGTERM,
            tree: false,
            request_id: 0
        }));
}

#[test]
fn a_queued_process_signalled_stops_with_minus_the_signal_and_never_runs() {
    let (mut t, _) = cluster(1);
    start(&mut t, cmd(&["a"]), "p1");
    start(&mut t, cmd(&["b"]), "p2");
    let SignalPlan::Stopped(fx) = procs::signal(&mut t, "p2", libc::SIGKILL, false, 5, T0_MS)
        .expect("a queued process can be signalled")
    else {
        panic!("a queued process stops at once");
    };
    assert_eq!(saved(&fx), [("p2".into(), ProcState::Stopped)]);
    assert!(fx.sends().is_empty());
    assert_eq!(t.get("p2").unwrap().exitcode, Some(-9));
    procs::launched(&mut t, "n1", "p1", 10, T0_MS);
    let fx = procs::exited(&mut t, "n1", 1, exit("p1", 0), T0_MS);
    assert!(
        launches(&fx).is_empty(),
        "the signalled process stays stopped"
    );
    assert!(t.queued().is_empty());
}

#[test]
fn a_signal_to_a_running_process_goes_to_its_node_and_a_stopped_one_is_left_alone() {
    let (mut t, t0) = cluster(1);
    start(&mut t, cmd(&["a"]), "p1");
    procs::launched(&mut t, "n1", "p1", 10, T0_MS);
    let SignalPlan::Sent {
        node,
        request_id,
        effects,
    } = procs::signal(&mut t, "p1", libc::SIGTERM, true, 5, T0_MS).unwrap()
    else {
        panic!("a running process is signalled through its node");
    };
    assert_eq!((node.as_str(), request_id), ("n1", 5));
    assert_eq!(
        effects.sends()[0].msg,
        ToNode::Signal {
            process_id: "p1".into(),
            signo: libc::SIGTERM,
            tree: true,
            request_id: 5
        }
    );
    agents::disconnected(&mut t, "n1", 1, LEASE, t0);
    let e = procs::signal(&mut t, "p1", libc::SIGTERM, false, 6, T0_MS).unwrap_err();
    assert!(matches!(e, CoreError::SignalNodeDown { .. }), "{e}");
    agents::lease_expired(&mut t, "n1", LEASE, t0 + LEASE);
    let e = procs::signal(&mut t, "p1", libc::SIGTERM, false, 7, T0_MS).unwrap_err();
    assert_eq!(
        e.to_string(),
        "process p1 is lost with its node n1; it cannot be signalled until the node comes back"
    );
    let e = procs::signal(&mut t, "nope", libc::SIGTERM, false, 8, T0_MS).unwrap_err();
    assert!(matches!(e, CoreError::UnknownProcess(_)));
}

#[test]
fn a_parents_exit_terminates_its_running_daemonic_children_and_stops_queued_ones() {
    let (mut t, _) = cluster(2);
    start(&mut t, cmd(&["parent"]), "p1");
    procs::launched(&mut t, "n1", "p1", 10, T0_MS);
    let child = |daemon: bool| {
        let mut s = cmd(&["child"]);
        s.parent_id = "p1".into();
        s.daemon = daemon;
        s
    };
    start(&mut t, child(true), "c1");
    procs::launched(&mut t, "n1", "c1", 11, T0_MS);
    start(&mut t, child(true), "c2"); // queued: both slots are taken
    start(&mut t, child(false), "c3"); // not daemonic: left alone
    assert_eq!(t.get("c1").unwrap().name, "Process-1:1");
    assert_eq!(t.get("c3").unwrap().name, "Process-1:3");
    assert_eq!(state(&t, "c2"), ProcState::Queued);
    let fx = procs::exited(&mut t, "n1", 1, exit("p1", 0), T0_MS);
    let c2 = t.get("c2").unwrap();
    assert_eq!((c2.state, c2.exitcode), (ProcState::Stopped, Some(-15)));
    let signals: Vec<&ToNode> = fx
        .sends()
        .iter()
        .map(|s| &s.msg)
        .filter(|m| matches!(m, ToNode::Signal { .. }))
        .collect();
    assert_eq!(
        signals,
        [&ToNode::Signal {
            process_id: "c1".into(),
            signo: libc::SIGTERM,
            tree: false,
            request_id: 0
        }]
    );
    // The freed slot goes to the non-daemonic child, not the stopped one.
    assert_eq!(launches(&fx), [("n1".into(), "c3".into())]);
}

#[test]
fn a_daemonic_process_may_not_have_children_and_an_unknown_parent_is_refused() {
    let (mut t, _) = cluster(2);
    let mut d = cmd(&["d"]);
    d.daemon = true;
    start(&mut t, d, "p1");
    let mut c = cmd(&["c"]);
    c.parent_id = "p1".into();
    let e = procs::start(&mut t, c.clone(), ids(), T0_MS).unwrap_err();
    assert_eq!(
        e.to_string(),
        "daemonic processes are not allowed to have children (Process-1 is daemonic)"
    );
    c.parent_id = "nobody".into();
    let e = procs::start(&mut t, c, ids(), T0_MS).unwrap_err();
    assert_eq!(e.to_string(), "parent process \"nobody\" is unknown");
}

#[test]
fn a_forks_child_is_recorded_on_its_parents_node_and_never_launched() {
    let (mut t, _) = cluster(1);
    start(&mut t, cmd(&["parent"]), "p1");
    procs::launched(&mut t, "n1", "p1", 10, T0_MS);
    let mut spec = StartSpec {
        parent_id: "p1".into(),
        method: Method::Fork,
        ..StartSpec::default()
    };
    spec.placement.node = "n1".into();
    spec.launch.function = Some(FunctionTarget {
        program: "/bin/prog".into(),
        function: "f".into(),
        ..Default::default()
    });
    // No slot check: the child exists already.
    let fx = start(&mut t, spec, "c1");
    assert_eq!(saved(&fx), [("c1".into(), ProcState::Launching)]);
    assert!(fx.sends().is_empty());
    assert_eq!(used(&t, "n1"), 2);
    procs::launched(&mut t, "n1", "c1", 20, T0_MS);
    assert_eq!(state(&t, "c1"), ProcState::Started);
}

#[test]
fn a_restored_table_keeps_its_indices() {
    let (mut t, t0) = cluster(1);
    let mut spec = cmd(&["a"]);
    spec.request_id = "r".into();
    start(&mut t, spec, "p1");
    start(&mut t, cmd(&["b"]), "p2");
    let procs: Vec<Proc> = t.procs().cloned().collect();
    let agents = t.agents().values().cloned().collect();
    let mut r = Table::restore(procs, agents, t.next_number());
    assert_eq!(r.by_request("r"), Some("p1"));
    assert_eq!(r.queued(), ["p2"]);
    assert_eq!(r.agent("n1").unwrap().state, AgentState::Disconnected);
    assert_eq!(r.session("n1"), None);
    // The launch in flight holds its slot once the node is back.
    let g = r.take_generation();
    let fx = agents::register(&mut r, reg("n1", 1), g, t0, T0_MS);
    assert_eq!(launches(&fx), [("n1".into(), "p1".into())]);
    assert_eq!(r.agent("n1").unwrap().used(), 1);
    assert_eq!(state(&r, "p2"), ProcState::Queued);
}

/// The shell around the transitions: a join wakes on its own process's
/// change only. (This one has a store, in a temporary directory.)
#[tokio::test(flavor = "current_thread")]
async fn an_exit_wakes_only_the_joiners_of_that_process() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = crate::store::Store::open(&dir.path().join("state.db")).unwrap();
    let core = super::Core::new(Table::new(1), store, super::Timings::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let g = core.register(reg("n1", 2), tx).await.unwrap();
    let mut launched = Vec::new();
    for _ in 0..2 {
        let core2 = Arc::clone(&core);
        let start = tokio::spawn(async move { core2.start(cmd(&["sleep", "9"])).await });
        let msg = rx.recv().await.expect("a Launch after the commit");
        let Some(mpctl_proto::v1::coordinator_message::Msg::Launch(l)) = msg.msg else {
            panic!("expected a Launch, got {msg:?}");
        };
        core.launched("n1", &l.process_id, 100, T0_MS);
        let p = start.await.unwrap().unwrap();
        assert_eq!((p.state, p.pid), (ProcState::Started, 100));
        launched.push(p.id);
    }
    let join = |id: String| {
        let core = Arc::clone(&core);
        tokio::spawn(async move { core.join(&id, None).await })
    };
    let (j1, j2) = (join(launched[0].clone()), join(launched[1].clone()));
    while core.waited_on() < 2 {
        tokio::task::yield_now().await;
    }
    core.exited("n1", g, exit(&launched[0], 5));
    let (p, timed_out) = j1.await.unwrap().unwrap();
    assert_eq!((p.exitcode, timed_out), (Some(5), false));
    tokio::task::yield_now().await;
    assert!(!j2.is_finished());
    assert_eq!(core.waited_on(), 1, "only the other process is waited on");
    core.exited("n1", g, exit(&launched[1], 6));
    assert_eq!(j2.await.unwrap().unwrap().0.exitcode, Some(6));
    assert_eq!(core.waited_on(), 0);
}

/// Commit before effect, through the store's test seam (every commit fails
/// as on a full disk): an exit is neither acknowledged nor answered to
/// `join`, a start is refused naming ENOSPC and the database path and
/// leaves nothing behind; once commits work again the node is asked to
/// resend, its exit is recorded and acknowledged, and the start's retry
/// with the same request id launches exactly once.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_commit_rolls_back_acknowledges_nothing_and_recovers_without_a_restart() {
    use mpctl_proto::v1::coordinator_message::Msg as ToAgent;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let (store, _) = crate::store::Store::open(&db).unwrap();
    let core = super::Core::new(Table::new(1), store.clone(), super::Timings::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let g = core.register(reg("n1", 2), tx).await.unwrap();
    let first = {
        let core2 = Arc::clone(&core);
        let start = tokio::spawn(async move { core2.start(cmd(&["sleep", "9"])).await });
        let Some(ToAgent::Launch(l)) = rx.recv().await.unwrap().msg else {
            panic!("expected a Launch");
        };
        core.launched("n1", &l.process_id, 100, T0_MS);
        start.await.unwrap().unwrap().id
    };
    let join = {
        let core = Arc::clone(&core);
        let id = first.clone();
        tokio::spawn(async move { core.join(&id, None).await })
    };
    while core.waited_on() < 1 {
        tokio::task::yield_now().await;
    }

    store.inject_disk_full(true);
    core.exited("n1", g, exit(&first, 7));
    let mut spec = cmd(&["true"]);
    spec.request_id = "r1".into();
    let err = core.start(spec.clone()).await.unwrap_err();
    // The start was submitted after the exit, so both are rolled back now.
    let text = err.to_string();
    assert!(
        text.contains(&format!("cannot write the state database {}", db.display()))
            && text.contains("no space left on device (ENOSPC)"),
        "{text}"
    );
    assert_eq!(crate::wire::status(err).code(), tonic::Code::Unavailable);
    let p = core.get(&first).unwrap();
    assert_eq!((p.state, p.exitcode), (ProcState::Started, None));
    assert_eq!(
        core.list_page(true, "", None, None, usize::MAX, |_| ())
            .0
            .len(),
        1,
        "the refused start left no process"
    );
    assert!(!join.is_finished(), "join answered from memory");
    assert!(
        rx.try_recv().is_err(),
        "nothing was sent: no AckExit, no Launch"
    );
    assert!(core.store_failing().is_some());

    store.inject_disk_full(false);
    // The writer retries on its own; then the node is asked to resend.
    let msg = rx.recv().await.unwrap();
    assert!(
        matches!(msg.msg, Some(ToAgent::ResendReports(_))),
        "{msg:?}"
    );
    assert!(core.store_failing().is_none());
    core.resync("n1", g, vec![], vec![exit(&first, 7)]);
    let (p, timed_out) = join.await.unwrap().unwrap();
    assert_eq!(
        (p.state, p.exitcode, timed_out),
        (ProcState::Stopped, Some(7), false)
    );
    let Some(ToAgent::AckExit(a)) = rx.recv().await.unwrap().msg else {
        panic!("expected the AckExit after the commit");
    };
    assert_eq!(a.process_id, first);

    let retry = {
        let core = Arc::clone(&core);
        tokio::spawn(async move { core.start(spec).await })
    };
    let Some(ToAgent::Launch(l)) = rx.recv().await.unwrap().msg else {
        panic!("expected the retry's Launch");
    };
    core.launched("n1", &l.process_id, 101, T0_MS);
    let p = retry.await.unwrap().unwrap();
    assert_eq!(
        (p.id.as_str(), p.state),
        (l.process_id.as_str(), ProcState::Started)
    );
    assert_eq!(
        core.list_page(true, "", None, None, usize::MAX, |_| ())
            .0
            .len(),
        2
    );
    assert!(rx.try_recv().is_err(), "launched exactly once");
}

/// The table's undo record puts a start, a placement and the counters
/// back exactly (indices included).
#[test]
fn revert_leaves_the_table_as_before_the_changes() {
    let (mut t, _) = cluster(1);
    t.take_undo();
    let mut spec = cmd(&["a"]);
    spec.request_id = "r1".into();
    start(&mut t, spec, "p1");
    start(&mut t, cmd(&["b"]), "p2");
    assert_eq!(state(&t, "p2"), ProcState::Queued);
    let before_exit = t.take_undo();
    let fx = procs::exited(&mut t, "n1", 1, exit("p1", 3), T0_MS);
    assert_eq!(launches(&fx), [("n1".into(), "p2".into())]);
    let exit_undo = t.take_undo();
    t.revert(exit_undo);
    assert_eq!(state(&t, "p1"), ProcState::Launching);
    assert_eq!(state(&t, "p2"), ProcState::Queued);
    assert_eq!(used(&t, "n1"), 1);
    assert_eq!(t.queued(), ["p2"]);
    t.revert(before_exit);
    assert!(t.get("p1").is_none() && t.get("p2").is_none());
    assert_eq!(t.by_request("r1"), None);
    assert_eq!((used(&t, "n1"), t.next_number()), (0, 1));
    assert!(t.queued().is_empty());
}

#[test]
fn the_table_counts_starts_states_and_each_outcome_once() {
    let (mut t, _) = cluster(4);
    for id in ["p1", "p2", "p3", "p4"] {
        start(&mut t, cmd(&["x"]), id);
    }
    start(&mut t, cmd(&["queued"]), "p5");
    let c = t.counts();
    assert_eq!(c.starts, 5);
    assert_eq!(c.by_state[ProcState::Launching.index()], 4);
    assert_eq!(c.by_state[ProcState::Queued.index()], 1);
    for (id, pid) in [("p1", 1), ("p2", 2), ("p3", 3)] {
        procs::launched(&mut t, "n1", id, pid, T0_MS);
    }
    procs::exited(&mut t, "n1", 1, exit("p1", 0), T0_MS);
    procs::exited(&mut t, "n1", 1, exit("p2", 3), T0_MS);
    // Reported twice: counted once.
    procs::exited(&mut t, "n1", 1, exit("p2", 3), T0_MS);
    procs::exited(&mut t, "n1", 1, exit("p3", -15), T0_MS);
    procs::launch_failed(&mut t, "n1", "p4", "No such file or directory", T0_MS);
    let c = t.counts();
    assert_eq!(c.starts, 5);
    assert_eq!(c.outcomes.map(|n| n as i64), [1, 1, 1, 1, 0]);
    assert_eq!(c.by_state[ProcState::Stopped.index()], 3);
    assert_eq!(c.by_state[ProcState::Failed.index()], 1);
    // p5 left the queue for the freed slots.
    assert_eq!(c.by_state[ProcState::Queued.index()], 0);
    assert_eq!(c.by_state[ProcState::Launching.index()], 1);
    assert_eq!(c.by_state.iter().sum::<u64>(), 5);
    assert!(t.oldest_queued().is_none());
    assert_eq!(t.started_on("n1"), 0);
}

#[test]
fn retention_removes_the_oldest_finished_beyond_the_count_and_tells_their_node() {
    use super::retention::{sweep, Retention};
    let (mut t, now) = cluster(8);
    let mut next = ids();
    for _ in 0..5 {
        let s = procs::start(&mut t, cmd(&["true"]), &mut next, T0_MS).unwrap();
        procs::launched(&mut t, "n1", &s.id, 10, T0_MS);
    }
    // p4 first, then p1, p2, p3; p5 still runs.
    for id in ["p4", "p1", "p2", "p3"] {
        procs::exited(&mut t, "n1", 1, exit(id, 0), T0_MS);
    }
    let policy = Retention {
        keep: 2,
        max_age: Duration::from_secs(3600),
    };
    let swept = sweep(&mut t, &policy, Instant::now(), 1);
    assert_eq!((swept.removed, swept.more), (1, true), "one per batch");
    let swept2 = sweep(&mut t, &policy, Instant::now(), 10);
    assert_eq!((swept2.removed, swept2.more), (1, false));
    assert!(!t.contains("p4") && !t.contains("p1"));
    assert!(t.contains("p2") && t.contains("p3") && t.contains("p5"));
    assert!(t.was_removed("p4"));
    let rows: Vec<_> = swept2
        .effects
        .rows()
        .iter()
        .filter_map(|r| match r {
            Row::Removed(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(rows, ["p1"]);
    assert_eq!(
        swept2.effects.sends()[0].msg,
        ToNode::RemoveOutputs(vec!["p1".into()])
    );
    let _ = now;
    // By age: everything finished longer ago than max_age goes; p5 runs on.
    let old = Retention {
        keep: 100,
        max_age: Duration::ZERO,
    };
    sweep(&mut t, &old, Instant::now(), 10);
    assert!(!t.contains("p2") && !t.contains("p3") && t.contains("p5"));
}

#[test]
fn a_retried_start_of_a_removed_process_is_refused_not_launched_again() {
    use super::retention::{sweep, Retention};
    let (mut t, _) = cluster(2);
    let mut spec = cmd(&["true"]);
    spec.request_id = "r1".into();
    start(&mut t, spec.clone(), "p1");
    procs::launched(&mut t, "n1", "p1", 10, T0_MS);
    procs::exited(&mut t, "n1", 1, exit("p1", 0), T0_MS);
    let none = Retention {
        keep: 0,
        max_age: Duration::from_secs(3600),
    };
    assert_eq!(sweep(&mut t, &none, Instant::now(), 10).removed, 1);
    let err = procs::start(&mut t, spec, || "p2".into(), T0_MS).unwrap_err();
    assert!(
        matches!(err, CoreError::RemovedRequest { ref id, .. } if id == "p1"),
        "{err}"
    );
}

#[test]
fn pages_follow_creation_order_and_rows_created_meanwhile_come_later_once() {
    let (mut t, _) = cluster(100);
    let mut next = ids();
    for i in 0..5 {
        procs::start(&mut t, cmd(&["true"]), &mut next, T0_MS + i).unwrap();
    }
    let (first, more) = t.page(None, 2, |id| t.get(id));
    let first: Vec<String> = first.iter().map(|p| p.id.clone()).collect();
    assert_eq!(
        (first.as_slice(), more),
        (&["p1".to_owned(), "p2".into()][..], true)
    );
    let cursor = {
        let p = t.get("p2").unwrap();
        (p.created_unix_ms, p.id.clone())
    };
    // One more, created after the first page.
    procs::start(&mut t, cmd(&["true"]), &mut next, T0_MS + 10).unwrap();
    let (rest, more) = t.page(Some(&cursor), 100, |id| t.get(id));
    let rest: Vec<&str> = rest.iter().map(|p| p.id.as_str()).collect();
    assert_eq!((rest, more), (vec!["p3", "p4", "p5", "p6"], false));
}

/// The listing indices follow `Table::revert`: a reverted start leaves the
/// listing order, a reverted exit leaves the finished queue, and a reverted
/// retention removal comes back with its order entry, its place in the
/// finished queue, its request id and no tombstone.
#[test]
fn revert_keeps_the_listing_and_retention_indices_true() {
    use super::retention::{sweep, Retention};
    let (mut t, _) = cluster(8);
    let mut next = ids();
    let listed = |t: &Table| -> Vec<String> {
        t.page(None, 100, |id| t.get(id))
            .0
            .iter()
            .map(|p| p.id.clone())
            .collect()
    };
    let mut spec = cmd(&["a"]);
    spec.request_id = "r1".into();
    let s1 = procs::start(&mut t, spec, &mut next, T0_MS).unwrap();
    procs::launched(&mut t, "n1", &s1.id, 10, T0_MS);
    t.take_undo();
    // A start whose commit fails is not listed.
    procs::start(&mut t, cmd(&["b"]), &mut next, T0_MS + 1).unwrap();
    assert_eq!(listed(&t), ["p1", "p2"]);
    let u = t.take_undo();
    t.revert(u);
    assert_eq!(listed(&t), ["p1"]);
    // An exit whose commit fails is not finished.
    procs::exited(&mut t, "n1", 1, exit("p1", 0), T0_MS);
    assert_eq!(t.finished_len(), 1);
    let u = t.take_undo();
    t.revert(u);
    assert_eq!((state(&t, "p1"), t.finished_len()), (ProcState::Started, 0));
    // A removal whose commit fails: everything back.
    procs::exited(&mut t, "n1", 1, exit("p1", 0), T0_MS);
    t.take_undo();
    let (at, _) = t.oldest_finished().unwrap();
    let everything = Retention {
        keep: 0,
        max_age: Duration::ZERO,
    };
    assert_eq!(sweep(&mut t, &everything, Instant::now(), 10).removed, 1);
    assert!(t.get("p1").is_none() && t.was_removed("p1"));
    assert_eq!(t.removed_request("r1"), Some("p1"));
    let u = t.take_undo();
    t.revert(u);
    assert_eq!(listed(&t), ["p1"]);
    assert_eq!(t.oldest_finished(), Some((at, "p1")));
    assert_eq!(t.by_request("r1"), Some("p1"));
    assert!(!t.was_removed("p1") && t.removed_request("r1").is_none());
    // And the next sweep removes it for good.
    assert_eq!(sweep(&mut t, &everything, Instant::now(), 10).removed, 1);
    assert!(t.get("p1").is_none() && listed(&t).is_empty());
}

/// A retention removal whose commit fails loses nothing: the process is
/// still there (get, listing), no RemoveOutputs is sent,
/// and once commits work again a later sweep removes it for good.
#[tokio::test]
async fn a_retention_removal_whose_commit_fails_is_put_back() {
    use super::retention::Retention;
    use mpctl_proto::v1::coordinator_message::Msg as ToAgent;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let (store, _) = crate::store::Store::open(&db).unwrap();
    let core = super::Core::new(Table::new(1), store.clone(), super::Timings::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let g = core.register(reg("n1", 2), tx).await.unwrap();
    let id = {
        let core2 = Arc::clone(&core);
        let start = tokio::spawn(async move { core2.start(cmd(&["true"])).await });
        let Some(ToAgent::Launch(l)) = rx.recv().await.unwrap().msg else {
            panic!("expected a Launch");
        };
        core.launched("n1", &l.process_id, 100, T0_MS);
        start.await.unwrap().unwrap().id
    };
    core.exited("n1", g, exit(&id, 0));
    let (p, _) = core.join(&id, None).await.unwrap();
    assert_eq!(p.exitcode, Some(0));
    while let Ok(m) = rx.try_recv() {
        assert!(matches!(m.msg, Some(ToAgent::AckExit(_))), "{m:?}");
    }
    let everything = Retention {
        keep: 0,
        max_age: Duration::ZERO,
    };
    let listed = |core: &super::Core| {
        core.list_page(true, "", None, None, usize::MAX, |p| p.id.clone())
            .0
    };

    store.inject_disk_full(true);
    assert!(!core.sweep_once(&everything).await);
    assert_eq!(core.get(&id).unwrap().exitcode, Some(0), "put back");
    assert_eq!(listed(&core).len(), 1);
    while let Ok(m) = rx.try_recv() {
        assert!(
            !matches!(m.msg, Some(ToAgent::RemoveOutputs(_))),
            "no RemoveOutputs for an uncommitted removal: {m:?}"
        );
    }

    store.inject_disk_full(false);
    while core.store_failing().is_some() {
        tokio::task::yield_now().await;
    }
    // Drain what recovery sends (ResendReports), then remove for good.
    while rx.try_recv().is_ok() {}
    core.sweep_once(&everything).await;
    assert!(matches!(core.get(&id), Err(CoreError::Removed(ref r)) if *r == id));
    assert!(listed(&core).is_empty());
    // Recovery's ResendReports may come after the drain above: skip it.
    let r = loop {
        match rx.recv().await.unwrap().msg {
            Some(ToAgent::RemoveOutputs(r)) => break r,
            Some(ToAgent::ResendReports(_)) => continue,
            other => panic!("expected RemoveOutputs, got {other:?}"),
        }
    };
    assert_eq!(r.process_ids, [id]);
}
