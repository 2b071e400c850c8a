//! Placement, the queue and leases against a real coordinator and agents
//! (docs/design.md §6): selectors, queued processes, a node lost past its lease
//! and coming back with the real exit codes.

use std::time::{Duration, Instant};

use mpctl::{Cluster, Error, Process, ProcessState};
use mpctl_tests::{fifo, release, Options, TestCluster};

/// Deadline for anything that should happen promptly.
const SOON: Duration = Duration::from_secs(20);

/// A process that blocks until `gate` is released, then exits with `code`.
fn gated(c: &Cluster, gate: &std::path::Path, code: i32) -> Process {
    let script = format!("read _ < {}; exit {code}", gate.display());
    Process::new(c, ["sh", "-c", &script])
}

/// Joins with `SOON` as a deadline and fails if the process is not settled.
async fn join_soon(p: &mut Process) {
    let before = Instant::now();
    p.join(Some(SOON)).await.unwrap();
    assert!(
        before.elapsed() < SOON,
        "{:?} did not settle within {SOON:?}: {:?}",
        p.id(),
        p.info()
    );
}

fn used(agents: &[mpctl::AgentInfo], name: &str) -> u32 {
    agents
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no agent {name}"))
        .used
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_agent_queues_then_runs_in_order() {
    let tc = TestCluster::with_agent(1);
    let c = tc.client().await;
    let gate = fifo(tc.path(), "gate-a");

    let mut a = gated(&c, &gate, 4);
    a.start().await.unwrap();
    assert_eq!(a.state(), Some(ProcessState::Started));
    assert!(a.pid().is_some());
    assert_eq!(a.info().unwrap().node, "node-a");

    let mut b = Process::new(&c, ["sh", "-c", "exit 5"]);
    b.start().await.unwrap();
    assert_eq!(b.state(), Some(ProcessState::Queued));
    assert_eq!(b.pid(), None);
    assert_eq!(b.info().unwrap().node, "");
    assert_eq!(b.exitcode(), None);
    assert_eq!(used(&c.agents().await.unwrap(), "node-a"), 1);

    // It stays queued while A holds the slot.
    b.join(Some(Duration::from_millis(300))).await.unwrap();
    assert_eq!(b.state(), Some(ProcessState::Queued));
    assert_eq!(b.exitcode(), None);
    let fresh = c.get(b.id().unwrap()).await.unwrap();
    assert_eq!(fresh.state, ProcessState::Queued);

    release(&gate);
    join_soon(&mut a).await;
    assert_eq!(a.state(), Some(ProcessState::Stopped));
    assert_eq!(a.exitcode(), Some(4));

    join_soon(&mut b).await;
    assert_eq!(b.state(), Some(ProcessState::Stopped));
    assert_eq!(b.exitcode(), Some(5));
    assert_eq!(b.info().unwrap().node, "node-a");
    assert!(b.pid().is_some());
    assert_ne!(b.pid(), a.pid());
    // (That B ran only after A is shown above by B staying queued while A held
    // the slot; wall-clock stamps are not compared, the clock may step.)
    assert_eq!(used(&c.agents().await.unwrap(), "node-a"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_process_can_be_terminated_without_ever_running() {
    let tc = TestCluster::with_agent(1);
    let c = tc.client().await;
    let gate = fifo(tc.path(), "gate-a");
    let marker = tc.path().join("queued-ran");

    let mut a = gated(&c, &gate, 0);
    a.start().await.unwrap();
    assert_eq!(a.state(), Some(ProcessState::Started));

    let touch = format!("touch {}", marker.display());
    let mut b = Process::new(&c, ["sh", "-c", &touch]);
    b.start().await.unwrap();
    assert_eq!(b.state(), Some(ProcessState::Queued));
    let mut k = Process::new(&c, ["sh", "-c", &touch]);
    k.start().await.unwrap();
    assert_eq!(k.state(), Some(ProcessState::Queued));

    b.terminate().await.unwrap();
    assert_eq!(b.state(), Some(ProcessState::Stopped));
    assert_eq!(b.exitcode(), Some(-15));
    assert_eq!(b.pid(), None);
    assert!(!b.is_alive().await.unwrap());
    k.kill().await.unwrap();
    assert_eq!(k.exitcode(), Some(-9));
    assert_eq!(k.pid(), None);
    // The sentinels are ready at once.
    let ready = mpctl::wait_all(&[b.sentinel().unwrap(), k.sentinel().unwrap()], Some(SOON))
        .await
        .unwrap();
    assert_eq!(ready.len(), 2);

    // A later process queued behind them runs once A is done; they never do.
    let mut after = Process::new(&c, ["sh", "-c", "exit 6"]);
    after.start().await.unwrap();
    assert_eq!(after.state(), Some(ProcessState::Queued));
    release(&gate);
    join_soon(&mut a).await;
    assert_eq!(a.exitcode(), Some(0));
    join_soon(&mut after).await;
    assert_eq!(after.exitcode(), Some(6));

    for p in [&mut b, &mut k] {
        p.join(None).await.unwrap();
        let info = p.info().unwrap();
        assert_eq!(info.state, ProcessState::Stopped);
        assert_eq!(info.pid, None);
        assert_eq!(info.node, "");
        assert_eq!(info.started, None);
    }
    assert_eq!(b.exitcode(), Some(-15));
    assert_eq!(k.exitcode(), Some(-9));
    assert!(!marker.exists(), "a terminated queued process ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn selectors_pick_the_node_and_an_impossible_one_is_refused() {
    let mut tc = TestCluster::with_agent(2);
    tc.start_agent("node-b", 2, &["gpu=yes"]);
    let c = tc.client().await;

    let mut p = Process::new(&c, ["sh", "-c", "exit 0"]).node("node-b");
    p.start().await.unwrap();
    assert_eq!(p.info().unwrap().node, "node-b");
    join_soon(&mut p).await;
    assert_eq!(p.exitcode(), Some(0));

    let mut p = Process::new(&c, ["sh", "-c", "exit 2"]).label("gpu", "yes");
    p.start().await.unwrap();
    assert_eq!(p.info().unwrap().node, "node-b");
    join_soon(&mut p).await;
    assert_eq!(p.exitcode(), Some(2));

    let mut p = Process::new(&c, ["true"]).node("node-a");
    p.start().await.unwrap();
    assert_eq!(p.info().unwrap().node, "node-a");
    join_soon(&mut p).await;

    // No selector, equal free slots: the tie goes to the first name.
    let mut p = Process::new(&c, ["true"]);
    p.start().await.unwrap();
    assert_eq!(p.info().unwrap().node, "node-a");
    join_soon(&mut p).await;

    // A selector that only a full agent matches queues (it does not spill
    // over to the free node-a).
    let gates: Vec<_> = (0..2)
        .map(|i| fifo(tc.path(), &format!("gate-b{i}")))
        .collect();
    let mut blockers = Vec::new();
    for (i, g) in gates.iter().enumerate() {
        let mut b = gated(&c, g, 10 + i as i32).label("gpu", "yes");
        b.start().await.unwrap();
        assert_eq!(b.info().unwrap().node, "node-b");
        blockers.push(b);
    }
    let mut waiting = Process::new(&c, ["sh", "-c", "exit 9"]).label("gpu", "yes");
    waiting.start().await.unwrap();
    assert_eq!(waiting.state(), Some(ProcessState::Queued));
    release(&gates[0]);
    join_soon(&mut waiting).await;
    assert_eq!(waiting.exitcode(), Some(9));
    assert_eq!(waiting.info().unwrap().node, "node-b");
    release(&gates[1]);
    for (i, b) in blockers.iter_mut().enumerate() {
        join_soon(b).await;
        assert_eq!(b.exitcode(), Some(10 + i as i32));
    }

    // No agent can ever match: refused at start, naming what was asked and
    // what exists.
    let mut p = Process::new(&c, ["true"]).node("nosuch");
    match p.start().await {
        Err(Error::Start { message }) => assert_eq!(
            message,
            "cannot place process: no agent matches node=nosuch; known agents: node-a, node-b (see `mpctl agents`)"
        ),
        other => panic!("expected Error::Start, got {:?}", other.err()),
    }
    assert_eq!(p.state(), None);
    let mut p = Process::new(&c, ["true"]).label("gpu", "no");
    match p.start().await {
        Err(Error::Start { message }) => assert_eq!(
            message,
            "cannot place process: no agent matches label gpu=no; known agents: node-a, node-b (see `mpctl agents`)"
        ),
        other => panic!("expected Error::Start, got {:?}", other.err()),
    }
    // Nothing was recorded for the refused starts.
    let all = c.list(true).await.unwrap();
    assert_eq!(all.len(), 7, "{all:?}");
    assert!(all.iter().all(|p| p.state == ProcessState::Stopped));

    let out = tc.cli(&["run", "--node", "nosuch", "--", "true"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "mpctl: start error: cannot place process: no agent matches node=nosuch; known agents: node-a, node-b (see `mpctl agents`)\n"
    );
}

fn agent_state_via_cli(tc: &TestCluster, name: &str) -> String {
    let out = tc.cli(&["agents", "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let agent = v
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no agent {name} in {v}"));
    agent["state"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_past_its_lease_is_lost_and_its_real_codes_come_back() {
    let mut tc = TestCluster::start(Options {
        lease_ms: 1500,
        heartbeat_ms: 300,
        ..Default::default()
    });
    tc.start_agent("node-a", 4, &[]);
    let c = tc.client().await;
    let gate = fifo(tc.path(), "gate-1");

    let mut p1 = gated(&c, &gate, 7);
    p1.start().await.unwrap();
    let mut p2 = Process::new(&c, ["sleep", "60"]);
    p2.start().await.unwrap();
    assert_eq!(p1.state(), Some(ProcessState::Started));
    assert_eq!(p2.state(), Some(ProcessState::Started));
    let p2_pid = p2.pid().expect("started with a pid");
    assert_eq!(agent_state_via_cli(&tc, "node-a"), "ready");

    // The agent daemon dies; its launcher and the processes live on.
    let killed_at = Instant::now();
    tc.kill_agent("node-a");
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p2_pid), None).is_ok(),
        "the process must survive its agent"
    );

    // Join returns for a lost process: settled, with no exit code.
    join_soon(&mut p1).await;
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1000),
        "lost before the lease ran out: {:?}",
        killed_at.elapsed()
    );
    assert_eq!(p1.state(), Some(ProcessState::Lost));
    assert_eq!(p1.exitcode(), None);
    assert_eq!(p1.info().unwrap().exitcode, None);
    join_soon(&mut p2).await;
    assert_eq!(p2.state(), Some(ProcessState::Lost));
    assert_eq!(p2.exitcode(), None);
    assert!(!p2.is_alive().await.unwrap());
    assert_eq!(agent_state_via_cli(&tc, "node-a"), "lost");
    let agents = c.agents().await.unwrap();
    assert_eq!(used(&agents, "node-a"), 0);

    // A lost process cannot be signalled.
    match p2.kill().await {
        Err(Error::Rpc { code, message, .. }) => {
            assert_eq!(code, tonic::Code::Unavailable);
            assert_eq!(
                message,
                format!(
                    "process {} is lost with its node node-a; it cannot be signalled until the node comes back",
                    p2.id().unwrap()
                )
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // P1 finishes while nobody is listening; then the agent comes back.
    release(&gate);
    tc.start_agent("node-a", 4, &[]);
    join_soon(&mut p1).await;
    assert_eq!(p1.state(), Some(ProcessState::Stopped));
    assert_eq!(p1.exitcode(), Some(7));

    let info = c.get(p2.id().unwrap()).await.unwrap();
    assert_eq!(info.state, ProcessState::Started);
    assert_eq!(
        info.pid,
        Some(p2_pid),
        "the same process, re-attached, not rerun"
    );
    assert_eq!(info.exitcode, None);
    // The old handle saw it lost; it asks again (see also the test below).
    assert!(p2.is_alive().await.unwrap());
    let mut fresh = Process::attach(&c, p2.id().unwrap()).await.unwrap();
    assert!(fresh.is_alive().await.unwrap());
    assert_eq!(agent_state_via_cli(&tc, "node-a"), "ready");
    assert_eq!(used(&c.agents().await.unwrap(), "node-a"), 1);

    p2.kill().await.unwrap();
    join_soon(&mut p2).await;
    assert_eq!(p2.state(), Some(ProcessState::Stopped));
    assert_eq!(p2.exitcode(), Some(-9));
    assert_eq!(p2.pid(), Some(p2_pid));
    assert_eq!(c.list(false).await.unwrap().len(), 0);
}

/// Regression: `Process::is_alive` used to answer from the handle's cached
/// state once it was `Lost`, but a lost process comes back as `Started` with
/// its node (docs/design.md §6).
#[tokio::test(flavor = "multi_thread")]
async fn is_alive_after_a_lost_node_comes_back() {
    let mut tc = TestCluster::start(Options {
        lease_ms: 1500,
        heartbeat_ms: 300,
        ..Default::default()
    });
    tc.start_agent("node-a", 1, &[]);
    let c = tc.client().await;
    let mut p = Process::new(&c, ["sleep", "60"]);
    p.start().await.unwrap();
    tc.kill_agent("node-a");
    join_soon(&mut p).await;
    assert_eq!(p.state(), Some(ProcessState::Lost));
    tc.start_agent("node-a", 1, &[]);
    let info = c.get(p.id().unwrap()).await.unwrap();
    assert_eq!(info.state, ProcessState::Started);

    let alive = p.is_alive().await.unwrap();
    // Clean up before asserting.
    p.kill().await.unwrap();
    join_soon(&mut p).await;
    assert_eq!(p.exitcode(), Some(-9));
    assert!(alive, "is_alive() is false for a running process");
}
