//! The forkserver start method for function targets (docs/design.md §3).

use std::time::Duration;

use mpctl::{Error, Process, ProcessState, StartMethod};
use mpctl_tests::{output, TestCluster};

const WORKER: &str = env!("CARGO_BIN_EXE_mpctl-test-worker");

fn forkserver<A: serde::Serialize>(
    c: &mpctl::Cluster,
    name: &str,
    args: &A,
    log: &std::path::Path,
) -> Process {
    Process::function(c, name, args)
        .unwrap()
        .program(WORKER)
        .start_method(StartMethod::Forkserver)
        .preload(["set_flag"])
        .env("MPCTL_TEST_PRELOAD_LOG", log.to_str().unwrap())
}

async fn finish(mut p: Process) -> Process {
    p.start().await.expect("start");
    p.join(Some(Duration::from_secs(30))).await.expect("join");
    assert_eq!(p.state(), Some(ProcessState::Stopped));
    if p.exitcode() != Some(0) {
        eprintln!(
            "stderr of {}: {}",
            p.name(),
            output(&p, mpctl::LogStream::Stderr).await
        );
    }
    p
}

fn preload_runs(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// From outside the cluster: spawn sees the flag's initial value, forkserver
/// what its preload set. (The full seed test, with fork, is in fork.rs.)
#[tokio::test(flavor = "multi_thread")]
async fn spawn_sees_the_initial_value_forkserver_the_preloaded_one() {
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;
    let log = tc.path().join("preload.log");

    let spawned = finish(
        Process::function(&c, "read_flag", &())
            .unwrap()
            .program(WORKER),
    )
    .await;
    assert_eq!(
        spawned.result::<u32>().unwrap().unwrap(),
        0,
        "spawn: initial value"
    );

    let forked = finish(forkserver(&c, "read_flag", &(), &log)).await;
    assert_eq!(forked.exitcode(), Some(0));
    assert_eq!(
        forked.result::<u32>().unwrap().unwrap(),
        2,
        "forkserver: preloaded value"
    );
    assert_eq!(
        c.get(forked.id().unwrap()).await.unwrap().start_method,
        StartMethod::Forkserver
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_code_matrix_under_forkserver() {
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;
    let log = tc.path().join("preload.log");

    let p = finish(forkserver(&c, "add", &(20, 22), &log)).await;
    assert_eq!(
        (p.exitcode(), p.result::<i64>().unwrap().unwrap()),
        (Some(0), 42)
    );
    let p = finish(forkserver(&c, "exit_with", &9, &log)).await;
    assert_eq!(p.exitcode(), Some(9));
    let p = finish(forkserver(&c, "panic_with", &"boom", &log)).await;
    assert_eq!(p.exitcode(), Some(1));
    let err = output(&p, mpctl::LogStream::Stderr).await;
    assert!(
        err.starts_with(&format!("Process {}:\n", p.name())),
        "{err}"
    );
    assert!(err.contains("\nboom\n"), "{err}");
    let p = finish(forkserver(&c, "fail_with", &"bad", &log)).await;
    assert_eq!(p.exitcode(), Some(1));

    for kill in [false, true] {
        let mut p = forkserver(&c, "sleep_ms", &30_000u64, &log);
        p.start().await.unwrap();
        if kill {
            p.kill().await.unwrap();
        } else {
            p.terminate().await.unwrap();
        }
        p.join(Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!(p.exitcode(), Some(if kill { -9 } else { -15 }));
    }
    assert_eq!(preload_runs(&log), 1, "one server served every start");
}

/// Preload runs once per server however many children it forks; a server
/// killed with SIGKILL is replaced on the next start, and the exit of a child
/// it was running is still reported.
#[tokio::test(flavor = "multi_thread")]
async fn preload_once_and_a_killed_server_is_replaced() {
    let tc = TestCluster::with_agent(8);
    let c = tc.client().await;
    let log = tc.path().join("preload.log");

    let mut servers = Vec::new();
    for _ in 0..5 {
        let p = finish(forkserver(&c, "parent_pid", &(), &log)).await;
        servers.push(p.result::<i32>().unwrap().unwrap());
    }
    assert_eq!(preload_runs(&log), 1);
    servers.dedup();
    assert_eq!(servers.len(), 1, "all five forked by one server");
    let server = servers[0];

    let mut sleeper = forkserver(&c, "sleep_ms", &30_000u64, &log);
    sleeper.start().await.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // The next start gets a new server (the first start may race the old
    // server's death and fail clearly; it must not hang).
    let mut replaced = None;
    for _ in 0..2 {
        let mut p = forkserver(&c, "parent_pid", &(), &log);
        match p.start().await {
            Ok(()) => {
                p.join(Some(Duration::from_secs(20))).await.unwrap();
                replaced = Some(p.result::<i32>().unwrap().unwrap());
                break;
            }
            Err(Error::Start { message }) => assert!(message.contains("forkserver"), "{message}"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let replaced = replaced.expect("a new server served the next start");
    assert_ne!(replaced, server);
    assert_eq!(preload_runs(&log), 2);

    // The orphaned child still runs and its exit is still collected.
    assert!(sleeper.is_alive().await.unwrap());
    sleeper.terminate().await.unwrap();
    sleeper.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(sleeper.exitcode(), Some(-15));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_preload_fails_the_start_clearly() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;
    for hook in ["panic", "no_such_hook"] {
        let mut p = Process::function(&c, "noop", &())
            .unwrap()
            .program(WORKER)
            .start_method(StartMethod::Forkserver)
            .preload([hook]);
        match p.start().await {
            Err(Error::Start { message }) => assert!(message.contains("forkserver"), "{message}"),
            other => panic!("expected a start error for {hook}, got {:?}", other.err()),
        }
    }
}
