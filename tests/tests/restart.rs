//! A coordinator killed with SIGKILL and restarted loses nothing: finished
//! processes keep their exit codes, a process that exited while it was down
//! is joined with its real code once the agent reconnects, and running ones
//! stay running and signallable.

use std::time::Duration;

use mpctl::{Process, ProcessState};
use mpctl_tests::{fifo, release, TestCluster};

const WORKER: &str = env!("CARGO_BIN_EXE_mpctl-test-worker");

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_sigkill_and_restart() {
    let mut tc = TestCluster::with_agent(4);
    let gate = fifo(tc.path(), "gate");
    let (finished_id, pending_id, running_id) = {
        let c = tc.client().await;
        let mut finished = Process::new(&c, ["sh", "-c", "exit 4"]).request_id("finished-once");
        finished.start().await.unwrap();
        finished.join(None).await.unwrap();
        assert_eq!(finished.exitcode(), Some(4));

        let script = format!("read _ < {}; exit 7", gate.display());
        let mut pending = Process::new(&c, ["sh", "-c", &script]);
        pending.start().await.unwrap();

        let mut running = Process::new(&c, ["sleep", "60"]);
        running.start().await.unwrap();
        (
            finished.id().unwrap().to_owned(),
            pending.id().unwrap().to_owned(),
            running.id().unwrap().to_owned(),
        )
    };

    tc.kill_server();
    // Exits while the coordinator is down: the node journals it and reports
    // it after reconnecting.
    release(&gate);
    tc.start_server();
    tc.agent("node-a")
        .wait_line("registered with the coordinator", Duration::from_secs(20));

    let c = tc.client().await;
    let finished = c.get(&finished_id).await.unwrap();
    assert_eq!(finished.state, ProcessState::Stopped);
    assert_eq!(finished.exitcode, Some(4));

    let mut pending = Process::attach(&c, &pending_id).await.unwrap();
    pending.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(pending.exitcode(), Some(7));

    let mut running = Process::attach(&c, &running_id).await.unwrap();
    assert!(running.is_alive().await.unwrap());
    running.terminate().await.unwrap();
    running.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(running.exitcode(), Some(-15));

    // The idempotency key survived too: retrying the first start launches nothing.
    let mut retry = Process::new(&c, ["sh", "-c", "exit 4"]).request_id("finished-once");
    retry.start().await.unwrap();
    assert_eq!(retry.id(), Some(finished_id.as_str()));

    let all = c.list(true).await.unwrap();
    assert_eq!(all.len(), 3);
    // The CLI sees the same table.
    let o = tc.cli(&["ps", "-a"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&finished_id) && l.contains("stopped") && l.contains(" 4 ")),
        "{table}"
    );
}

/// terminate() returns once the node has sent the signal: killing the agent
/// daemon right after it cannot lose it, and the code comes back after the
/// agent restarts (the launcher journaled it meanwhile).
#[tokio::test(flavor = "multi_thread")]
async fn terminate_is_sent_before_it_returns() {
    let mut tc = TestCluster::with_agent(2);
    let c = tc.client().await;
    let mut p = Process::new(&c, ["sleep", "30"]);
    p.start().await.unwrap();
    p.terminate().await.unwrap();
    tc.kill_agent("node-a");
    tc.start_agent("node-a", 2, &[]);
    p.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(p.exitcode(), Some(-15));
}

/// A result travels and is journaled with its exit: functions that return
/// while the agent is down come back whole after it restarts, even when
/// their results together are too large for one message from the launcher.
#[tokio::test(flavor = "multi_thread")]
async fn results_returned_while_the_agent_is_down_come_back_whole() {
    let mut tc = TestCluster::with_agent(8);
    let c = tc.client().await;
    // 200,000 × `"\` is 800 kB of JSON, just under the 1 MiB result limit.
    let sizes = [200_000, 199_999, 150_000, 1];
    let mut ps = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let gate = fifo(tc.path(), &format!("result-gate{i}"));
        let args = (gate.display().to_string(), *n);
        let mut p = Process::function(&c, "gate_then_return", &args)
            .unwrap()
            .program(WORKER);
        p.start().await.unwrap();
        ps.push((p, gate));
    }
    tc.kill_agent("node-a");
    for (_, gate) in &ps {
        release(gate);
    }
    tc.start_agent("node-a", 8, &[]);
    for ((p, _), n) in ps.iter_mut().zip(sizes) {
        p.join(Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!(p.exitcode(), Some(0));
        let got: String = p.result().expect("a result").unwrap();
        assert_eq!(got.len(), 2 * n);
        assert_eq!(got, "\"\\".repeat(n));
    }
}

/// docs/design.md §6: managed processes do not depend on the agent daemon. 50 run;
/// the agent is SIGKILLed; 10 exit while it is down; the restarted agent
/// re-attaches to the launcher: all 50 are accounted for, the 10 with their
/// real codes, the 40 still running and killable.
#[tokio::test(flavor = "multi_thread")]
async fn agent_sigkill_with_50_processes() {
    let mut tc = TestCluster::with_agent(64);
    let c = tc.client().await;
    // One FIFO each: releasing one waits for its reader, so no exit races.
    let gates: Vec<_> = (0..10)
        .map(|i| fifo(tc.path(), &format!("gate{i}")))
        .collect();
    let mut early = Vec::new();
    for (i, gate) in gates.iter().enumerate() {
        let script = format!("read _ < {}; exit {}", gate.display(), 20 + i);
        let mut p = Process::new(&c, ["sh", "-c", &script]);
        p.start().await.unwrap();
        early.push(p);
    }
    let mut late = Vec::new();
    for _ in 0..40 {
        let mut p = Process::new(&c, ["sleep", "60"]);
        p.start().await.unwrap();
        late.push(p);
    }
    let pids: Vec<i32> = late.iter().map(|p| p.pid().unwrap()).collect();

    tc.kill_agent("node-a");
    for gate in &gates {
        release(gate);
    }
    tc.start_agent("node-a", 64, &[]);

    for (i, p) in early.iter_mut().enumerate() {
        p.join(Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!(
            p.exitcode(),
            Some(20 + i as i32),
            "real code of {}",
            p.name()
        );
    }
    for (p, pid) in late.iter_mut().zip(&pids) {
        assert!(p.is_alive().await.unwrap());
        assert_eq!(p.pid(), Some(*pid), "the same process, not a new one");
    }
    assert_eq!(c.list(false).await.unwrap().len(), 40);
    for p in &mut late {
        p.kill().await.unwrap();
    }
    for p in &mut late {
        p.join(Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!(p.exitcode(), Some(-9));
    }
    assert_eq!(c.list(false).await.unwrap().len(), 0);
    assert_eq!(c.list(true).await.unwrap().len(), 50);
}
