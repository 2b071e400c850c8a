//! Processes started from inside managed processes (docs/design.md §2): CPython's
//! `Process-N1:N2` names, `parent_process()`, `active_children()`, and the
//! daemon rules.

use std::time::Duration;

use mpctl::{Process, ProcessState};
use mpctl_tests::TestCluster;
use serde_json::Value;

const WORKER: &str = env!("CARGO_BIN_EXE_mpctl-test-worker");

async fn run(c: &mpctl::Cluster, function: &str, daemon: bool) -> Process {
    let mut p = Process::function(c, function, &())
        .unwrap()
        .program(WORKER)
        .daemon(daemon);
    if function == "spawn_children" {
        p = Process::function(c, function, &3u32)
            .unwrap()
            .program(WORKER);
    }
    p.start().await.expect("start");
    p.join(Some(Duration::from_secs(60))).await.expect("join");
    assert_eq!(p.state(), Some(ProcessState::Stopped));
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn children_are_named_after_their_parent_and_know_it() {
    let tc = TestCluster::with_agent(8);
    let c = tc.client().await;
    // Two top-level processes first, so the parent is Process-3.
    run(&c, "noop", false).await;
    run(&c, "noop", false).await;
    let parent = run(&c, "spawn_children", false).await;
    assert_eq!(parent.name(), "Process-3");
    assert_eq!(parent.exitcode(), Some(0));
    let (active, children): (usize, Vec<Value>) = parent.result().unwrap().unwrap();
    assert_eq!(active, 3, "active_children() saw the three sleepers");
    // The sleepers were Process-3:1..3; these are its 4th to 6th children.
    for (k, child) in children.iter().enumerate() {
        assert_eq!(child["name"], format!("Process-3:{}", k + 4));
        assert_eq!(child["parent_id"], parent.id().unwrap());
        assert_eq!(child["exitcode"], 0);
        assert_eq!(child["parent_name"], "Process-3");
    }
    let all = c.list(true).await.unwrap();
    assert_eq!(
        all.iter()
            .filter(|p| p.parent_id == parent.id().unwrap())
            .count(),
        6
    );
    let child = all.iter().find(|p| p.name == "Process-3:2").unwrap();
    assert_eq!(child.identity, vec![3, 2]);
    assert_eq!(child.exitcode, Some(-15));
}

#[tokio::test(flavor = "multi_thread")]
async fn daemonic_processes_may_not_have_children() {
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;
    let p = run(&c, "try_child", true).await;
    let error: Option<String> = p.result().unwrap().unwrap();
    let error = error.expect("refused");
    assert!(
        error.contains("daemonic processes are not allowed to have children"),
        "{error}"
    );
    // A non-daemonic parent may.
    let p = run(&c, "try_child", false).await;
    assert_eq!(p.result::<Option<String>>().unwrap().unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn daemonic_children_are_terminated_when_their_parent_stops() {
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;
    let parent = run(&c, "start_daemon_child", false).await;
    let child_id: String = parent.result().unwrap().unwrap();
    let mut child = Process::attach(&c, &child_id).await.unwrap();
    child.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(child.exitcode(), Some(-15));
    assert!(child.info().unwrap().daemon);
}
