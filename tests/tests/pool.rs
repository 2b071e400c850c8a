//! Pools through a real coordinator and two agents: order, initializer,
//! maxtasksperchild, timeouts, lost workers, terminate, failures, misuse.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use mpctl::{Pool, PoolError, Process, ProcessInfo, ProcessState, StartMethod};
use mpctl_tests::{fifo, Options, TestCluster};

const WORKER: &str = env!("CARGO_BIN_EXE_mpctl-test-worker");

fn two_agents(slots: u32) -> TestCluster {
    let mut tc = TestCluster::start(Options::default());
    tc.start_agent("node-a", slots, &[]);
    tc.start_agent("node-b", slots, &[]);
    tc
}

async fn workers(c: &mpctl::Cluster, pool: &str) -> Vec<ProcessInfo> {
    c.list(true)
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.pool_id == pool)
        .collect()
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn map_imap_and_the_initializer_across_two_agents() {
    let tc = two_agents(4);
    let c = tc.client().await;
    let init_log = tc.path().join("init.log");
    let pool = Pool::builder(&c)
        .processes(4)
        .program(WORKER)
        .initializer("pool_init", &init_log)
        .create()
        .await
        .unwrap();

    let squares: Vec<i64> = pool.map("square", 0..10_000i64, None).await.unwrap();
    assert_eq!(squares, (0..10_000i64).map(|x| x * x).collect::<Vec<_>>());

    let mut unordered: Vec<i64> = pool
        .imap_unordered::<_, i64, _>("square", 0..1000i64, 7)
        .unwrap()
        .collect()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, (0..1000i64).map(|x| x * x).collect::<Vec<_>>());

    let mut ordered = pool.imap::<_, i64, _>("square", 0..500i64, 1).unwrap();
    let mut expect = 0i64;
    while let Some(r) = ordered.next().await {
        assert_eq!(r.unwrap(), expect * expect);
        expect += 1;
    }
    assert_eq!(expect, 500);

    let products: Vec<i64> = pool
        .starmap("mul", vec![(2i64, 3i64), (4, 5), (6, 7)], None)
        .await
        .unwrap();
    assert_eq!(products, vec![6, 20, 42]);
    let empty: Vec<i64> = pool.map("square", Vec::<i64>::new(), None).await.unwrap();
    assert!(empty.is_empty());

    // Every worker ran the initializer once, in its own process.
    let task_pids: BTreeSet<u32> = pool
        .map::<_, u32, _>("worker_pid", 0..200u64, Some(1))
        .await
        .unwrap()
        .into_iter()
        .collect();
    pool.close().unwrap();
    pool.join().await.unwrap();
    let inits = lines(&init_log);
    let init_pids: BTreeSet<String> = inits.iter().cloned().collect();
    assert_eq!(inits.len(), 4, "{inits:?}");
    assert_eq!(init_pids.len(), 4, "{inits:?}");
    let task_pids: BTreeSet<String> = task_pids.iter().map(u32::to_string).collect();
    assert!(
        task_pids.is_subset(&init_pids),
        "{task_pids:?} {init_pids:?}"
    );

    // Workers spread over both agents, and all exited with 0 after close.
    let ws = workers(&c, pool.id()).await;
    assert_eq!(ws.len(), 4);
    let nodes: BTreeSet<&str> = ws.iter().map(|w| w.node.as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["node-a", "node-b"]));
    for w in &ws {
        assert_eq!(w.state, ProcessState::Stopped, "{w:?}");
        assert_eq!(w.exitcode, Some(0), "{w:?}");
        assert!(w.daemon && w.name.starts_with("SpawnPoolWorker-"), "{w:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn maxtasksperchild_replaces_workers() {
    let tc = two_agents(2);
    let c = tc.client().await;
    let init_log = tc.path().join("init.log");
    let pool = Pool::builder(&c)
        .processes(2)
        .program(WORKER)
        .maxtasksperchild(3)
        .initializer("pool_init", &init_log)
        .create()
        .await
        .unwrap();
    let pids: Vec<u32> = pool.map("worker_pid", 0..30u64, Some(1)).await.unwrap();
    pool.close().unwrap();
    pool.join().await.unwrap();
    let mut per_pid: HashMap<u32, usize> = HashMap::new();
    for p in &pids {
        *per_pid.entry(*p).or_default() += 1;
    }
    assert!(per_pid.values().all(|n| *n <= 3), "{per_pid:?}");
    assert!(per_pid.len() >= 10, "{per_pid:?}");
    // One initializer per worker process, and only those.
    let inits = lines(&init_log);
    let distinct: BTreeSet<&String> = inits.iter().collect();
    assert_eq!(inits.len(), distinct.len());
    let ws = workers(&c, pool.id()).await;
    assert_eq!(inits.len(), ws.len(), "{inits:?}");
    assert!(ws.iter().all(|w| w.exitcode == Some(0)), "{ws:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_async_times_out_then_answers() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;
    let pool = Pool::builder(&c)
        .processes(1)
        .program(WORKER)
        .start_method(StartMethod::Forkserver)
        .create()
        .await
        .unwrap();
    let r = pool
        .apply_async::<_, i64>("slow_echo", &(1500u64, 5i64))
        .unwrap();
    assert!(!r.ready());
    assert_eq!(r.successful(), Err(PoolError::NotReady));
    assert_eq!(
        r.get(Some(Duration::from_millis(200))).await,
        Err(PoolError::Timeout)
    );
    assert_eq!(r.get(Some(Duration::from_secs(30))).await, Ok(5));
    assert!(r.ready());
    assert_eq!(r.successful(), Ok(true));
    // Callbacks run when the result arrives.
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool.apply_async_with::<_, i64, _, _>(
        "square",
        &9i64,
        move |v| {
            let _ = tx.send(v);
        },
        |e| panic!("{e}"),
    )
    .unwrap();
    assert_eq!(rx.await.unwrap(), 81);
    let ws = workers(&c, pool.id()).await;
    assert!(ws[0].name.starts_with("ForkServerPoolWorker-"), "{ws:?}");
    pool.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_kills_its_worker_fails_with_worker_lost_and_the_rest_complete() {
    let tc = two_agents(2);
    let c = tc.client().await;
    let pool = Pool::builder(&c)
        .processes(2)
        .program(WORKER)
        .max_retries(0)
        .create()
        .await
        .unwrap();
    let others = pool
        .map_async::<_, i64, _>("square", 0..200i64, Some(1))
        .unwrap();
    let began = Instant::now();
    let lost = pool.apply_async::<_, u32>("kill_self", &0u64).unwrap();
    match lost.get(Some(Duration::from_secs(2))).await {
        Err(PoolError::WorkerLost {
            exitcode,
            attempts,
            node,
            worker,
            worker_name,
            ..
        }) => {
            assert_eq!(exitcode, Some(-9));
            assert_eq!(attempts, 1);
            assert!(node == "node-a" || node == "node-b", "{node}");
            let dead = c.get(&worker).await.unwrap();
            assert_eq!(dead.exitcode, Some(-9));
            assert_eq!(dead.name, worker_name);
        }
        other => panic!("expected WorkerLost, got {other:?}"),
    }
    assert!(began.elapsed() < Duration::from_secs(2));
    assert_eq!(
        others.get(Some(Duration::from_secs(30))).await.unwrap(),
        (0..200i64).map(|x| x * x).collect::<Vec<_>>()
    );
    pool.terminate().await.unwrap();

    // With a retry, the task lands on a healthy worker and succeeds.
    let pool = Pool::builder(&c)
        .processes(2)
        .program(WORKER)
        .max_retries(1)
        .create()
        .await
        .unwrap();
    let marker = tc.path().join("died-once");
    let pid: u32 = pool.apply("die_once", &marker).await.unwrap();
    assert!(marker.exists());
    let ws = workers(&c, pool.id()).await;
    let killed: Vec<&ProcessInfo> = ws.iter().filter(|w| w.exitcode == Some(-9)).collect();
    assert_eq!(killed.len(), 1, "{ws:?}");
    assert_ne!(killed[0].pid.unwrap() as u32, pid);
    // The pool replaced the dead worker and goes on.
    let v: Vec<i64> = pool.map("square", 0..10i64, None).await.unwrap();
    assert_eq!(v.len(), 10);
    pool.close().unwrap();
    pool.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn terminate_stops_every_worker_within_two_seconds() {
    let tc = two_agents(4);
    let c = tc.client().await;
    let pool = Pool::builder(&c)
        .processes(4)
        .program(WORKER)
        .create()
        .await
        .unwrap();
    // Every worker busy with a long task, more queued behind them; each
    // running task announces itself with one byte on the gate FIFO.
    let gate = fifo(tc.path(), "gate");
    let gate_arg = gate.to_string_lossy().into_owned();
    let busy = pool
        .map_async::<_, (), _>(
            "announce_then_sleep",
            (0..8).map(|_| (gate_arg.clone(), 60_000u64)),
            Some(1),
        )
        .unwrap();
    let started = pool.apply_async::<_, i64>("square", &2i64).unwrap();
    let announced = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut buf = [0u8; 4];
        std::fs::File::open(&gate)?
            .read_exact(&mut buf)
            .map(|()| buf)
    });
    let announced = tokio::time::timeout(Duration::from_secs(30), announced)
        .await
        .expect("4 tasks running within 30 s")
        .unwrap();
    assert_eq!(announced.unwrap(), *b"xxxx");
    let began = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), pool.terminate())
        .await
        .expect("terminate within 2 s")
        .unwrap();
    assert!(began.elapsed() < Duration::from_secs(2));
    assert!(matches!(
        busy.get(Some(Duration::from_secs(1))).await,
        Err(PoolError::Terminated { .. })
    ));
    assert!(started.ready());
    let ws = workers(&c, pool.id()).await;
    assert_eq!(ws.len(), 4);
    for w in &ws {
        assert_eq!(w.state, ProcessState::Stopped, "{w:?}");
        assert_eq!(w.exitcode, Some(-15), "{w:?}");
        // Reaped by the node's launcher: nothing is left of it.
        assert!(
            !std::path::Path::new(&format!("/proc/{}", w.pid.unwrap())).exists()
                || std::fs::read_to_string(format!("/proc/{}/cmdline", w.pid.unwrap()))
                    .map(|c| !c.contains(WORKER))
                    .unwrap_or(true),
            "worker {} still exists",
            w.pid.unwrap()
        );
    }
    assert!(matches!(
        pool.apply::<_, i64>("square", &1i64).await,
        Err(PoolError::NotRunning)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_tasks_report_their_message_and_the_pool_goes_on() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;
    let pool = Pool::builder(&c)
        .processes(2)
        .program(WORKER)
        .create()
        .await
        .unwrap();
    match pool.map::<_, i64, _>("fail_on", 0..20i64, Some(1)).await {
        Err(PoolError::Task { message }) => assert!(message.contains("unlucky 13"), "{message}"),
        other => panic!("{other:?}"),
    }
    match pool.apply::<_, ()>("panic_with", &"boom").await {
        Err(PoolError::Task { message }) => {
            assert!(
                message.contains("panicked at") && message.ends_with("boom"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    match pool.apply::<_, i64>("no_such_function", &1).await {
        Err(PoolError::Task { message }) => {
            assert!(
                message.contains("no function named \"no_such_function\""),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Each failed chunk yields one error in its place.
    let got: Vec<Result<i64, PoolError>> =
        pool.imap("fail_on", 10..16i64, 1).unwrap().collect().await;
    assert_eq!(got.len(), 6);
    assert!(matches!(got[3], Err(PoolError::Task { .. })));
    assert_eq!(got[4], Ok(14));
    assert_eq!(pool.apply::<_, i64>("square", &12i64).await, Ok(144));
    // No worker died for any of this.
    let ws = workers(&c, pool.id()).await;
    assert_eq!(ws.len(), 2, "{ws:?}");
    pool.close().unwrap();
    pool.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_initializer_that_fails_breaks_the_pool_instead_of_respawning() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;
    let pool = Pool::builder(&c)
        .processes(2)
        .program(WORKER)
        .initializer("init_fails", &())
        .create()
        .await
        .unwrap();
    match pool.map::<_, i64, _>("square", 0..10i64, None).await {
        Err(PoolError::Broken { message }) => {
            assert!(
                message.contains("init_fails") && message.contains("no database"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    pool.close().unwrap();
    assert!(matches!(pool.join().await, Err(PoolError::Broken { .. })));
    // Not respawned endlessly: at most the two first workers ran.
    let ws = workers(&c, pool.id()).await;
    assert!(ws.len() <= 2, "{ws:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn misuse_is_refused_with_cpythons_errors() {
    let tc = TestCluster::with_agent(2);
    let c = tc.client().await;
    let zero = Pool::builder(&c)
        .processes(0)
        .program(WORKER)
        .create()
        .await;
    assert!(matches!(zero, Err(PoolError::Invalid(m)) if m.contains("at least 1")));
    let fork = Pool::builder(&c)
        .program(WORKER)
        .start_method(StartMethod::Fork)
        .create()
        .await;
    assert!(matches!(fork, Err(PoolError::Invalid(m)) if m.contains("spawn or forkserver")));

    let pool = Pool::builder(&c)
        .processes(1)
        .program(WORKER)
        .create()
        .await
        .unwrap();
    assert_eq!(pool.join().await, Err(PoolError::StillRunning));
    assert!(matches!(
        pool.imap::<_, i64, _>("square", 0..3i64, 0),
        Err(PoolError::Invalid(_))
    ));
    pool.close().unwrap();
    assert!(matches!(
        pool.apply::<_, i64>("square", &1i64).await,
        Err(PoolError::NotRunning)
    ));
    pool.join().await.unwrap();

    // Dropping a pool terminates its workers.
    let pool = Pool::builder(&c)
        .processes(2)
        .program(WORKER)
        .create()
        .await
        .unwrap();
    assert_eq!(pool.apply::<_, i64>("square", &3i64).await, Ok(9));
    let id = pool.id().to_owned();
    drop(pool);
    for w in workers(&c, &id).await {
        let mut p = Process::attach(&c, &w.id).await.unwrap();
        p.join(Some(Duration::from_secs(10))).await.unwrap();
        assert_eq!(p.exitcode(), Some(-15), "{}", w.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_of_a_lost_node_run_again_on_another() {
    let mut tc = TestCluster::start(Options {
        lease_ms: 1000,
        heartbeat_ms: 200,
        ..Options::default()
    });
    tc.start_agent("node-a", 2, &[]);
    tc.start_agent("node-b", 2, &[]);
    let c = tc.client().await;
    let pool = Pool::builder(&c)
        .processes(2)
        .program(WORKER)
        .max_retries(1)
        .create()
        .await
        .unwrap();
    // One worker per node (most free slots wins). Both must be serving
    // before node-b goes: a worker that is ready first can answer a whole
    // map alone, so map again (tasks of 20 ms, never more than a few per
    // worker at once) until both have answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut pids = BTreeSet::new();
    while pids.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {pids:?} answered within 30 s"
        );
        pids.extend(
            pool.map::<_, u32, _>("worker_pid_after_ms", vec![20u64; 20], Some(1))
                .await
                .unwrap(),
        );
    }
    assert_eq!(pids.len(), 2);
    let work = pool
        .map_async::<_, i64, _>("slow_echo", (0..6).map(|i| (300u64, i as i64)), Some(1))
        .unwrap();
    // node-b's agent dies; past its lease its worker is lost and the task
    // it was running (and those queued behind it) run on node-a.
    tc.kill_agent("node-b");
    assert_eq!(
        work.get(Some(Duration::from_secs(30))).await.unwrap(),
        (0..6i64).collect::<Vec<_>>()
    );
    let ws = workers(&c, pool.id()).await;
    let lost: Vec<&ProcessInfo> = ws.iter().filter(|w| w.node == "node-b").collect();
    assert_eq!(lost.len(), 1, "{ws:?}");
    assert_eq!(lost[0].state, ProcessState::Lost);
    pool.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_coordinator_terminates_the_workers_of_pools_it_lost() {
    let mut tc = TestCluster::with_agent(4);
    let ids: Vec<String> = {
        let c = tc.client().await;
        let pool = Pool::builder(&c)
            .processes(2)
            .program(WORKER)
            .create()
            .await
            .unwrap();
        assert_eq!(pool.apply::<_, i64>("square", &4i64).await, Ok(16));
        let ws = workers(&c, pool.id()).await;
        assert_eq!(ws.len(), 2);
        tc.kill_server();
        // The pool's stream is gone with its coordinator: calls fail, never hang.
        assert!(matches!(
            pool.apply::<_, i64>("square", &5i64).await,
            Err(PoolError::Cluster(_) | PoolError::NotRunning)
        ));
        ws.into_iter().map(|w| w.id).collect()
    };
    tc.start_server();
    let c = tc.client().await;
    for id in ids {
        let mut p = Process::attach(&c, &id).await.unwrap();
        p.join(Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!(p.exitcode(), Some(-15), "worker {id}");
    }
}
