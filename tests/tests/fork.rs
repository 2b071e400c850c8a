//! The fork start method (docs/design.md §3) and the seed test of all three methods.

use std::time::Duration;

use mpctl::{Error, LogStream, Process, ProcessState, StartMethod};
use mpctl_tests::{fifo, output, release, TestCluster};

const WORKER: &str = env!("CARGO_BIN_EXE_mpctl-test-worker");

async fn run<A: serde::Serialize>(c: &mpctl::Cluster, function: &str, arg: &A) -> Process {
    let mut p = Process::function(c, function, arg).unwrap().program(WORKER);
    p.start().await.expect("start");
    p.join(Some(Duration::from_secs(60))).await.expect("join");
    assert_eq!(p.state(), Some(ProcessState::Stopped));
    p
}

/// The seed test of docs/design.md §3 through the cluster: a parent sets a module-level flag
/// and starts a child with each method. fork sees it set (1), spawn its
/// initial value (0), forkserver what its preload set (2).
#[tokio::test(flavor = "multi_thread")]
async fn seed_test_of_the_three_start_methods() {
    let tc = TestCluster::with_agent(8);
    let c = tc.client().await;
    let parent = run(&c, "seed_test", &()).await;
    assert_eq!(parent.exitcode(), Some(0));
    let seen: Vec<u32> = parent.result().unwrap().unwrap();
    assert_eq!(seen, vec![0, 2, 1], "[spawn, forkserver, fork]");
    // The forked child is a process of the cluster like the others.
    let children: Vec<_> = c
        .list(true)
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.parent_id == parent.id().unwrap())
        .collect();
    assert_eq!(children.len(), 3);
    let forked = children
        .iter()
        .find(|p| p.start_method == StartMethod::Fork)
        .unwrap();
    assert_eq!(forked.exitcode, Some(0));
    assert_eq!(forked.node, "node-a");
    assert!(forked.pid.is_some_and(|pid| pid > 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_of_forked_children() {
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;
    for (function, arg, code) in [
        ("add", serde_json::json!([1, 2]), 0),
        ("exit_with", serde_json::json!(6), 6),
        ("panic_with", serde_json::json!("boom"), 1),
    ] {
        let p = run(&c, "fork_and_join", &(function, arg)).await;
        assert_eq!(
            p.result::<Option<i32>>().unwrap().unwrap(),
            Some(code),
            "{function}"
        );
        if function == "panic_with" {
            // A forked child keeps its parent's stderr, as in CPython: the
            // header names the child, Process-N:1.
            let err = output(&p, LogStream::Stderr).await;
            let header = format!("Process {}:1:\n", p.name());
            assert!(err.contains(&header) && err.contains("boom"), "{err}");
        }
    }
    for (kill, code) in [(false, -15), (true, -9)] {
        let p = run(&c, "fork_and_signal", &kill).await;
        assert_eq!(p.result::<Option<i32>>().unwrap().unwrap(), Some(code));
    }
}

/// A managed parent forks a child and dies; the child's exit code still
/// reaches `mpctl inspect` (the launcher is a subreaper).
#[tokio::test(flavor = "multi_thread")]
async fn an_orphans_exit_code_is_still_collected() {
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;
    let gate = fifo(tc.path(), "gate");
    let parent = run(&c, "fork_orphan", &gate.to_str().unwrap()).await;
    assert_eq!(parent.exitcode(), Some(0));
    let child_id: String = parent.result().unwrap().unwrap();
    let mut child = Process::attach(&c, &child_id).await.unwrap();
    assert!(child.is_alive().await.unwrap(), "outlives its parent");
    release(&gate);
    child.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(child.exitcode(), Some(5));
    let o = tc.cli(&["inspect", "-o", "json", &child_id]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["exitcode"], 5);
    assert_eq!(v[0]["parent_id"], parent.id().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_from_outside_a_node_fails_naming_spawn_and_forkserver() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;
    let mut p = Process::function(&c, "noop", &())
        .unwrap()
        .program(WORKER)
        .start_method(StartMethod::Fork);
    match p.start().await {
        Err(Error::Start { message }) => {
            assert!(
                message.contains("spawn") && message.contains("forkserver"),
                "{message}"
            )
        }
        other => panic!("expected a start error, got {:?}", other.err()),
    }
    assert!(c.list(true).await.unwrap().is_empty(), "nothing recorded");
}
