//! The Process API through the SDK against a real coordinator and agent.

use std::time::{Duration, Instant};

use futures::StreamExt;
use mpctl::{Error, LogStream, Process, ProcessState};
use mpctl_tests::{fifo, release, TestCluster};

async fn run(cluster: &mpctl::Cluster, argv: &[&str]) -> Process {
    let mut p = Process::new(cluster, argv.iter().copied());
    p.start().await.expect("start");
    p.join(None).await.expect("join");
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_code_matrix() {
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;

    let p = run(&c, &["true"]).await;
    assert_eq!(p.exitcode(), Some(0));
    assert_eq!(p.state(), Some(ProcessState::Stopped));

    let p = run(&c, &["sh", "-c", "exit 3"]).await;
    assert_eq!(p.exitcode(), Some(3));

    let p = run(&c, &["sh", "-c", "kill -TERM $$"]).await;
    assert_eq!(p.exitcode(), Some(-15));

    let p = run(&c, &["sh", "-c", "kill -KILL $$"]).await;
    assert_eq!(p.exitcode(), Some(-9));

    // exit(256) is 0 as the OS keeps it, like CPython.
    let p = run(&c, &["sh", "-c", "exit 256"]).await;
    assert_eq!(p.exitcode(), Some(0));

    let mut p = Process::new(&c, ["/no/such/binary"]);
    match p.start().await {
        Err(Error::Start { message }) => {
            assert!(message.contains("/no/such/binary"), "{message}");
            assert!(message.contains("No such file or directory"), "{message}");
            assert!(message.contains("node-a"), "{message}");
        }
        other => panic!("expected a start error, got {:?}", other.err()),
    }
    assert_eq!(p.exitcode(), None);

    let exe = tc.path().join("not-executable");
    std::fs::write(&exe, "#!/bin/sh\n").unwrap();
    let mut p = Process::new(&c, [exe.to_str().unwrap()]);
    match p.start().await {
        Err(Error::Start { message }) => {
            assert!(message.contains("Permission denied"), "{message}")
        }
        other => panic!("expected a start error, got {:?}", other.err()),
    }

    let mut p = Process::new(&c, ["true"]).cwd("/no/such/dir");
    match p.start().await {
        Err(Error::Start { message }) => {
            assert!(message.contains("/no/such/dir"), "{message}")
        }
        other => panic!("expected a start error, got {:?}", other.err()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn join_timeout_terminate_kill() {
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;

    let mut p = Process::new(&c, ["sleep", "30"]);
    assert!(!p.is_alive().await.unwrap());
    p.start().await.unwrap();
    assert!(p.pid().is_some());
    assert!(p.name().starts_with("Process-"), "{}", p.name());
    assert!(p.is_alive().await.unwrap());

    let before = Instant::now();
    p.join(Some(Duration::from_millis(200))).await.unwrap();
    assert!(before.elapsed() >= Duration::from_millis(200));
    assert_eq!(p.exitcode(), None, "join timed out: exitcode stays None");
    assert!(p.is_alive().await.unwrap());

    p.terminate().await.unwrap();
    p.join(None).await.unwrap();
    assert_eq!(p.exitcode(), Some(-15));
    assert!(!p.is_alive().await.unwrap());
    // Signalling a stopped process is not an error.
    p.terminate().await.unwrap();
    p.kill().await.unwrap();
    assert_eq!(p.exitcode(), Some(-15));

    let mut p = Process::new(&c, ["sh", "-c", "trap '' TERM; sleep 30"]);
    p.start().await.unwrap();
    p.kill().await.unwrap();
    p.join(None).await.unwrap();
    assert_eq!(p.exitcode(), Some(-9));
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_any_returns_exactly_the_stopped_one() {
    let tc = TestCluster::with_agent(4);
    let c = tc.client().await;
    let gates: Vec<_> = (0..3)
        .map(|i| fifo(tc.path(), &format!("gate{i}")))
        .collect();
    let mut procs = Vec::new();
    for (i, g) in gates.iter().enumerate() {
        let script = format!("read _ < {}; exit {}", g.display(), 10 + i);
        let mut p = Process::new(&c, ["sh", "-c", &script]);
        p.start().await.unwrap();
        procs.push(p);
    }
    let sentinels: Vec<_> = procs.iter().map(|p| p.sentinel().unwrap()).collect();

    let none = mpctl::wait(&sentinels, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(none.is_empty(), "nothing stopped yet: {none:?}");

    release(&gates[1]);
    let ready = mpctl::wait(&sentinels, None).await.unwrap();
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].id(), procs[1].id().unwrap());
    procs[1].join(None).await.unwrap();
    assert_eq!(procs[1].exitcode(), Some(11));

    release(&gates[0]);
    release(&gates[2]);
    let all = mpctl::wait_all(&sentinels, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    for (i, p) in procs.iter_mut().enumerate() {
        p.join(None).await.unwrap();
        assert_eq!(p.exitcode(), Some(10 + i as i32));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_and_environment() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;
    let mut p = Process::new(
        &c,
        ["sh", "-c", "echo out-$GREETING; echo err-line >&2; pwd"],
    )
    .env("GREETING", "hello")
    .cwd("/tmp");
    p.start().await.unwrap();
    p.join(None).await.unwrap();
    assert_eq!(p.exitcode(), Some(0));
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut stream = p.logs(LogStream::Both, false).await.unwrap();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if chunk.stream == LogStream::Stderr {
            err.extend(chunk.data);
        } else {
            out.extend(chunk.data);
        }
    }
    assert_eq!(String::from_utf8(out).unwrap(), "out-hello\n/tmp\n");
    assert_eq!(String::from_utf8(err).unwrap(), "err-line\n");

    // Follow streams output as it is written and ends when the process stops.
    let gate = fifo(tc.path(), "gate");
    let script = format!("echo first; read _ < {}; echo second", gate.display());
    let mut p = Process::new(&c, ["sh", "-c", &script]);
    p.start().await.unwrap();
    let mut stream = p.logs(LogStream::Stdout, true).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.data, b"first\n");
    release(&gate);
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend(chunk.unwrap().data);
    }
    assert_eq!(rest, b"second\n");
    p.join(None).await.unwrap();
    assert_eq!(p.exitcode(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn misuse_errors_and_idempotent_start() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;

    let mut p = Process::new(&c, ["true"]);
    assert!(matches!(p.join(None).await, Err(Error::NotStarted { .. })));
    assert!(matches!(p.sentinel(), Err(Error::NotStarted { .. })));
    p.start().await.unwrap();
    assert!(matches!(p.start().await, Err(Error::AlreadyStarted)));
    p.join(None).await.unwrap();
    p.close().await.unwrap();
    assert!(matches!(p.join(None).await, Err(Error::Closed)));
    p.close().await.unwrap();

    let mut running = Process::new(&c, ["sleep", "30"]);
    running.start().await.unwrap();
    assert!(matches!(
        running.close().await,
        Err(Error::StillRunning { .. })
    ));
    running.kill().await.unwrap();
    running.join(None).await.unwrap();

    // The same request id twice: one process, started once.
    let mut a = Process::new(&c, ["sh", "-c", "exit 5"]).request_id("retry-me");
    let mut b = Process::new(&c, ["sh", "-c", "exit 6"]).request_id("retry-me");
    a.start().await.unwrap();
    b.start().await.unwrap();
    assert_eq!(a.id(), b.id());
    b.join(None).await.unwrap();
    assert_eq!(b.exitcode(), Some(5));
    let all = c.list(true).await.unwrap();
    assert_eq!(all.iter().filter(|p| p.request_id == "retry-me").count(), 1);

    match c.get("0000000000000000").await {
        Err(Error::NotFound { id }) => assert_eq!(id, "0000000000000000"),
        other => panic!(
            "expected NotFound, got {other:?}",
            other = other.map(|p| p.id)
        ),
    }
}
