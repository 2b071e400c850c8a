//! Function targets under spawn: a program that links the SDK's worker
//! runtime runs a registered function on a node, with CPython's exit codes.

use std::time::Duration;

use mpctl::{Error, LogStream, Process, ProcessState};
use mpctl_tests::{output, TestCluster};
use serde_json::Value;

const WORKER: &str = env!("CARGO_BIN_EXE_mpctl-test-worker");

fn function<A: serde::Serialize>(c: &mpctl::Cluster, name: &str, args: &A) -> Process {
    Process::function(c, name, args).unwrap().program(WORKER)
}

async fn run<A: serde::Serialize>(c: &mpctl::Cluster, name: &str, args: &A) -> Process {
    let mut p = function(c, name, args);
    p.start().await.expect("start");
    p.join(Some(Duration::from_secs(30))).await.expect("join");
    assert_eq!(p.state(), Some(ProcessState::Stopped), "{name} stopped");
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_code_matrix_under_spawn() {
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;

    let p = run(&c, "noop", &()).await;
    assert_eq!(p.exitcode(), Some(0));
    assert!(matches!(p.result::<()>(), Some(Ok(()))));

    let p = run(&c, "add", &(2, 3)).await;
    assert_eq!(p.exitcode(), Some(0));
    assert_eq!(p.result::<i64>().unwrap().unwrap(), 5);

    let p = run(&c, "exit_with", &7).await;
    assert_eq!(p.exitcode(), Some(7));
    assert!(p.result::<()>().is_none(), "no result without a return");

    let p = run(&c, "panic_with", &"boom").await;
    assert_eq!(p.exitcode(), Some(1));
    let err = output(&p, LogStream::Stderr).await;
    let header = format!("Process {}:\n", p.name());
    assert!(err.starts_with(&header), "{err}");
    assert!(
        err.contains("panicked at") && err.contains("\nboom\n"),
        "{err}"
    );
    assert!(err.contains("stack backtrace:"), "{err}");

    let p = run(&c, "fail_with", &"bad input").await;
    assert_eq!(p.exitcode(), Some(1));
    assert_eq!(
        output(&p, LogStream::Stderr).await,
        format!("Process {}:\nbad input\n", p.name())
    );

    // Output written before returning is flushed, and the result comes back.
    let p = run(&c, "print_and_return", &"partial line").await;
    assert_eq!(p.exitcode(), Some(0));
    assert_eq!(output(&p, LogStream::Stdout).await, "partial line");
    assert_eq!(p.result::<usize>().unwrap().unwrap(), 12);

    let mut p = function(&c, "sleep_ms", &30_000u64);
    p.start().await.unwrap();
    p.terminate().await.unwrap();
    p.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(p.exitcode(), Some(-15));

    let mut p = function(&c, "sleep_ms", &30_000u64);
    p.start().await.unwrap();
    p.kill().await.unwrap();
    p.join(Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(p.exitcode(), Some(-9));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_targets_fail_clearly() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;

    let p = run(&c, "no_such_function", &()).await;
    assert_eq!(p.exitcode(), Some(1));
    let err = output(&p, LogStream::Stderr).await;
    assert!(
        err.contains("no function named \"no_such_function\""),
        "{err}"
    );
    // It lists the registered ones, in order.
    assert!(
        err.contains("(registered: add, ") && err.contains(", exit_with, fail_on, fail_with, "),
        "lists the registered ones: {err}"
    );

    let p = run(&c, "add", &"not a pair").await;
    assert_eq!(p.exitcode(), Some(1));
    let err = output(&p, LogStream::Stderr).await;
    assert!(err.contains("cannot decode the argument of add"), "{err}");

    let mut p = function(&c, "noop", &()).program("/no/such/worker");
    match p.start().await {
        Err(Error::Start { message }) => {
            assert!(message.contains("/no/such/worker"), "{message}")
        }
        other => panic!("expected a start error, got {:?}", other.err()),
    }

    // A worker started by hand is not in bootstrap mode: it says so and exits.
    let o = std::process::Command::new(WORKER).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_child_knows_who_it_is_and_holds_no_stray_fds() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;
    let p = run(&c, "whoami", &()).await;
    let me: Value = p.result().unwrap().unwrap();
    assert_eq!(me["id"], p.id().unwrap());
    assert_eq!(me["name"], p.name());
    assert_eq!(me["node"], "node-a");
    assert_eq!(me["bootstrap_env"], false, "removed from the environment");
    // stdio, the result pipe (4), and read_dir's own descriptor, which
    // reuses number 3: the preparation pipe is closed once read, else there
    // would be six.
    let fds: Vec<String> = me["open_fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fds.len(), 5, "{fds:?}");
    assert!(
        fds.starts_with(&["0".into(), "1".into(), "2".into()]),
        "{fds:?}"
    );
    assert!(fds.contains(&"4".to_owned()), "{fds:?}");

    // The result is stored with the process and survives in the table.
    let info = c.get(p.id().unwrap()).await.unwrap();
    assert!(info.result.is_some());
    assert_eq!(info.function, "whoami");
    // Listings leave results out.
    let listed = c.list(true).await.unwrap();
    assert!(listed.iter().all(|p| p.result.is_none()));
}
