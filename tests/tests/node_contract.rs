//! The node contract end to end (`docs/node-contract.md`): exit codes of
//! real-time signals under every start method, and a forked child that
//! uses the SDK on its main thread (with CPython's `Process-N:k` names,
//! numbered when a `Process` is made).

use std::time::Duration;

use mpctl::{Process, ProcessState, StartMethod};
use mpctl_tests::TestCluster;

const WORKER: &str = env!("CARGO_BIN_EXE_mpctl-test-worker");
const JOIN: Duration = Duration::from_secs(60);

async fn run<A: serde::Serialize>(
    c: &mpctl::Cluster,
    method: StartMethod,
    function: &str,
    arg: &A,
) -> Process {
    let mut p = Process::function(c, function, arg)
        .unwrap()
        .program(WORKER)
        .start_method(method);
    p.start().await.expect("start");
    p.join(Some(JOIN)).await.expect("join");
    assert_eq!(
        p.state(),
        Some(ProcessState::Stopped),
        "{function} by {method:?}"
    );
    p
}

/// SIGRTMIN (34) and SIGRTMIN+3 (37) give -34 and -37 under spawn,
/// forkserver and fork, and the forkserver serves the next start.
#[tokio::test(flavor = "multi_thread")]
async fn real_time_signals_give_their_exit_codes_under_every_start_method() {
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;
    // A forkserver's child has the server as its parent.
    let server = run(&c, StartMethod::Forkserver, "parent_pid", &())
        .await
        .result::<i32>()
        .unwrap()
        .unwrap();
    for signo in [34, 37] {
        for method in [StartMethod::Spawn, StartMethod::Forkserver] {
            let p = run(&c, method, "raise_signal", &signo).await;
            assert_eq!(p.exitcode(), Some(-signo), "signal {signo} by {method:?}");
        }
        let next = run(&c, StartMethod::Forkserver, "add", &(2, 3)).await;
        assert_eq!(
            next.exitcode(),
            Some(0),
            "the forkserver after signal {signo}"
        );
        assert_eq!(next.result::<i64>().unwrap().unwrap(), 5);
        let same = run(&c, StartMethod::Forkserver, "parent_pid", &()).await;
        assert_eq!(
            same.result::<i32>().unwrap().unwrap(),
            server,
            "the same forkserver serves after signal {signo}"
        );
        // Fork: a managed parent forks the child, reaps it and reports it.
        let parent = run(
            &c,
            StartMethod::Spawn,
            "fork_and_join",
            &("raise_signal", signo),
        )
        .await;
        assert_eq!(parent.exitcode(), Some(0));
        assert_eq!(
            parent.result::<Option<i32>>().unwrap().unwrap(),
            Some(-signo),
            "signal {signo} by fork"
        );
        let forked = c
            .list(true)
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.parent_id == parent.id().unwrap())
            .expect("the forked child is recorded");
        assert_eq!(forked.exitcode, Some(-signo));
    }
}

/// A forked child starts and joins its own child on its main thread (it
/// has an async runtime of its own), by each start method. Its parent is a
/// multi-threaded tokio program: the fork happens on a fresh thread, and no
/// process-wide table of parked threads is inherited (tokio without
/// parking_lot), so the child's runtime neither panics nor hangs.
#[tokio::test(flavor = "multi_thread")]
async fn a_forked_child_starts_and_joins_its_own_child() {
    let tc = TestCluster::with_agent(6);
    let c = tc.client().await;
    for method in ["spawn", "forkserver", "fork"] {
        let top = run(&c, StartMethod::Spawn, "fork_a_parent", &method).await;
        assert_eq!(top.exitcode(), Some(0), "{method}");
        let (forked_code, report): (Option<i32>, Option<serde_json::Value>) =
            top.result().unwrap().unwrap();
        assert_eq!(
            forked_code,
            Some(0),
            "the forked child, grandchild by {method}"
        );
        let report = report.expect("the forked child's report");
        assert_eq!(report["exitcode"], 7, "the grandchild by {method}");
        // CPython's names, counted when the Process object is made: the
        // forked child made one it never started, then the grandchild.
        assert_eq!(
            report["name"],
            format!("{}:1:2", top.name()),
            "the grandchild by {method}"
        );
    }
}
