//! docs/design.md §6 across containers: each test builds its own cluster of Docker
//! containers (see the harness, `mpctl_deploy_tests::Env`), makes a fault
//! with Docker, and checks the promises: nothing lost that did not die,
//! no invented exit code, nothing run twice. Each prints its figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mpctl::Process;
use mpctl::ProcessState;
use mpctl_deploy_tests::{marked, Env};

const LEASE: Duration = Duration::from_millis(3000);

fn settled_with_code(p: &mpctl::ProcessInfo) -> bool {
    p.state == ProcessState::Stopped
}

fn is_lost(p: &mpctl::ProcessInfo) -> bool {
    p.state == ProcessState::Lost
}

fn nodes(n: usize) -> Vec<String> {
    (1..=n).map(Env::node).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_port_says_serving_only_when_ready() {
    let Some(env) = Env::start_or_skip("health", 1, LEASE) else {
        return;
    };
    let cluster = env.cluster().await.expect("connect");
    env.wait_agents(&cluster, &nodes(1), Duration::from_secs(60))
        .await
        .expect("agent ready");
    let coordinator = env.health("coordinator").await.expect("coordinator health");
    assert_eq!(coordinator, (true, String::new()));
    let agent = env.health("agent-1").await.expect("agent health");
    assert_eq!(agent, (true, String::new()));

    // The launcher gone: the agent is not ready, and says why.
    env.docker_on(&["stop", "-t", "1"], "launcher-1")
        .expect("stop launcher");
    let (after, reason) = env
        .wait_not_serving("agent-1", Duration::from_secs(20))
        .await
        .expect("agent NOT_SERVING without its launcher");
    assert!(reason.contains("launcher"), "reason {reason:?}");
    println!("health: launcher stopped -> agent NOT_SERVING after {after:?} ({reason})");

    // Launcher back: ready again.
    env.docker_on(&["start"], "launcher-1")
        .expect("start launcher");
    let back = env
        .wait_serving("agent-1", Duration::from_secs(30))
        .await
        .expect("agent SERVING again");
    println!("health: launcher restarted -> agent SERVING after {back:?}");

    // The coordinator gone: the agent is not registered.
    env.docker_on(&["stop", "-t", "1"], "coordinator")
        .expect("stop coordinator");
    let (after, reason) = env
        .wait_not_serving("agent-1", Duration::from_secs(30))
        .await
        .expect("agent NOT_SERVING without a coordinator");
    assert!(reason.contains("not registered"), "reason {reason:?}");
    println!("health: coordinator stopped -> agent NOT_SERVING after {after:?} ({reason})");
    let down = env.health("coordinator").await;
    assert!(
        down.is_err() || !down.as_ref().unwrap().0,
        "stopped coordinator answers {down:?}"
    );

    // And a command from the host runs on the node and prints its hostname.
    env.docker_on(&["start"], "coordinator")
        .expect("start coordinator");
    let back = env
        .wait_serving("coordinator", Duration::from_secs(30))
        .await
        .expect("coordinator SERVING again");
    println!("health: coordinator restarted -> SERVING after {back:?}");
    let cluster = env.cluster().await.expect("connect");
    env.wait_agents(&cluster, &nodes(1), Duration::from_secs(60))
        .await
        .expect("agent ready again");
    let mut p = Process::new(&cluster, ["hostname"]);
    p.start().await.expect("start hostname");
    p.join(None).await.expect("join");
    assert_eq!(p.exitcode(), Some(0));
    let id = p.id().expect("id").to_owned();
    let info = cluster.get(&id).await.expect("get");
    assert_eq!(info.node, "node-1");
    let mut out = Vec::new();
    let mut logs = p.logs(mpctl::LogStream::Stdout, false).await.expect("logs");
    while let Some(chunk) = logs.message().await.expect("log chunk") {
        out.extend(chunk.data);
    }
    assert_eq!(String::from_utf8_lossy(&out), "node-1\n");

    // Orphans (grandchildren whose parent exited) are reaped by the
    // launcher, PID 1 of its container: no <defunct> stays behind.
    let mut p = Process::new(
        &cluster,
        ["sh", "-c", "(sleep 0.3 &); (sleep 0.3 &); exit 0"],
    );
    p.start().await.expect("start");
    p.join(None).await.expect("join");
    let began = Instant::now();
    let table = loop {
        let table = env
            .docker_on(&["top"], "launcher-1")
            .map(|t| t + "\n")
            .expect("docker top");
        let sleeping = table.contains("sleep 0.3");
        if !sleeping || began.elapsed() > Duration::from_secs(10) {
            break env.docker_on(&["top"], "launcher-1").expect("docker top");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !table.contains("defunct") && !table.contains("sleep"),
        "{table}"
    );
    println!("reaping: two orphans exited, launcher container's process table has no <defunct>");
}

/// Partition one node past its lease while its processes run and some
/// exit: they keep running, become `lost`, and after the heal their real
/// exit codes replace `lost`; none ran twice.
#[tokio::test(flavor = "multi_thread")]
async fn partition_past_lease_then_heal() {
    let Some(env) = Env::start_or_skip("partition", 3, LEASE) else {
        return;
    };
    let cluster = env.cluster().await.expect("connect");
    env.wait_agents(&cluster, &nodes(3), Duration::from_secs(60))
        .await
        .expect("agents ready");
    // On node-1: six exit during the partition, two after the heal.
    let mut procs: Vec<(String, String, i32)> = Vec::new();
    let specs: Vec<(f64, i32)> = (0..6)
        .map(|k| (4.0 + f64::from(k), 10 + k))
        .chain([(25.0, 20), (26.0, 21)])
        .collect();
    for (k, (sleep, code)) in specs.iter().enumerate() {
        let token = format!("p{k}");
        let mut p = Process::new(&cluster, marked(&token, *sleep, *code)).node("node-1");
        p.start().await.expect("start");
        procs.push((p.id().expect("id").to_owned(), token, *code));
    }
    // And one on node-2, untouched by the partition.
    let mut other = Process::new(&cluster, marked("q", 1.0, 5)).node("node-2");
    other.start().await.expect("start");

    let cut = Instant::now();
    env.disconnect("agent-1").expect("disconnect");
    for (id, _, _) in &procs {
        env.wait_process(&cluster, id, "lost", LEASE * 4, is_lost)
            .await
            .expect("lost after the lease");
    }
    let lost_after = cut.elapsed();
    other.join(None).await.expect("join other");
    assert_eq!(other.exitcode(), Some(5));
    // Keep it cut until the six have exited on the node (they keep running).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = env.markers(1).expect("markers");
        let ended = (0..6)
            .filter(|k| m.get(&format!("p{k}")).is_some_and(|c| c.1 == 1))
            .count();
        if ended == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes did not keep running: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, _, _) in &procs {
        let p = cluster.get(id).await.expect("get");
        assert!(is_lost(&p) && p.exitcode.is_none(), "{id}: {p:?}");
    }
    let partitioned = cut.elapsed();
    let heal = Instant::now();
    env.connect("agent-1").expect("connect");
    for (id, _, code) in &procs[..6] {
        let p = env
            .wait_process(
                &cluster,
                id,
                "stopped",
                Duration::from_secs(30),
                settled_with_code,
            )
            .await
            .expect("real code after the heal");
        assert_eq!(p.exitcode, Some(*code), "{id}");
    }
    let reconciled = heal.elapsed();
    for (id, _, _) in &procs[6..] {
        let p = env
            .wait_process(&cluster, id, "running", Duration::from_secs(30), |p| {
                p.state == ProcessState::Started
            })
            .await
            .expect("running again after the heal");
        assert!(p.exitcode.is_none());
    }
    for (id, _, code) in &procs[6..] {
        let p = env
            .wait_process(
                &cluster,
                id,
                "stopped",
                Duration::from_secs(40),
                settled_with_code,
            )
            .await
            .expect("exit after the heal");
        assert_eq!(p.exitcode, Some(*code), "{id}");
    }
    let markers = env.all_markers().expect("markers");
    let twice: Vec<_> = markers.iter().filter(|(_, c)| c.0 != 1).collect();
    assert!(twice.is_empty(), "launched more than once: {twice:?}");
    assert_eq!(markers.len(), procs.len() + 1);
    println!(
        "partition: {} processes on the cut node ({} exited during the cut), lost after {:?}, cut for {:?}, real codes back {:?} after the heal; 0 lost, 0 duplicates",
        procs.len(),
        6,
        lost_after,
        partitioned,
        reconciled
    );
}

/// SIGKILL the coordinator while 20 clients keep starting and joining
/// short processes (retrying with their request ids); restart it.
#[tokio::test(flavor = "multi_thread")]
async fn coordinator_killed_under_load() {
    let Some(env) = Env::start_or_skip("coordkill", 3, LEASE) else {
        return;
    };
    let cluster = env.cluster().await.expect("connect");
    env.wait_agents(&cluster, &nodes(3), Duration::from_secs(60))
        .await
        .expect("agents ready");
    const CLIENTS: usize = 20;
    const EACH: usize = 10;
    let env = std::sync::Arc::new(env);
    let began = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let env = std::sync::Arc::clone(&env);
        tasks.push(tokio::spawn(async move {
            let cluster = env.cluster().await.expect("connect");
            let mut results = Vec::new();
            let mut retries = 0u32;
            for k in 0..EACH {
                let token = format!("c{c}k{k}");
                let code = i32::try_from((c * EACH + k) % 100).unwrap_or(0);
                let deadline = Instant::now() + Duration::from_secs(90);
                let id = loop {
                    let mut p =
                        Process::new(&cluster, marked(&token, 0.2, code)).request_id(&token);
                    match p.start().await {
                        Ok(()) => break p.id().expect("id").to_owned(),
                        Err(e) => {
                            assert!(
                                Instant::now() < deadline,
                                "{token}: start kept failing: {e}"
                            );
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                };
                let exit = loop {
                    match Process::attach(&cluster, &id).await {
                        Ok(mut p) => match p.join(None).await {
                            Ok(()) => break (p.state(), p.exitcode()),
                            Err(_) => retries += 1,
                        },
                        Err(_) => retries += 1,
                    }
                    assert!(Instant::now() < deadline, "{token}: join kept failing");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                };
                results.push((token, id, code, exit));
            }
            (results, retries)
        }));
    }
    // Kill it while the clients are busy, then bring it back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = Instant::now();
    env.docker_on(&["kill", "-s", "KILL"], "coordinator")
        .expect("kill");
    env.docker_on(&["start"], "coordinator").expect("restart");
    let restarted = killed.elapsed();
    let mut lost = 0;
    let mut wrong = 0;
    let mut retries = 0;
    let mut all = Vec::new();
    for t in tasks {
        let (results, r) = t.await.expect("client task");
        retries += r;
        all.extend(results);
    }
    for (token, id, code, (state, exitcode)) in &all {
        if state.is_some_and(|s| s == ProcessState::Lost) {
            lost += 1;
            eprintln!("{token} ({id}) lost");
        } else if *exitcode != Some(*code) {
            wrong += 1;
            eprintln!("{token} ({id}): exitcode {exitcode:?}, expected {code}, state {state:?}");
        }
    }
    let markers = env.all_markers().expect("markers");
    let duplicates = markers.values().filter(|c| c.0 > 1).count();
    let never = all
        .iter()
        .filter(|(t, ..)| !markers.contains_key(t))
        .count();
    println!(
        "coordinator SIGKILL: {CLIENTS} clients x {EACH} processes = {} started and joined in {:?}; coordinator back in {restarted:?}; {retries} client retries; {lost} lost, {wrong} wrong codes, {duplicates} duplicate launches, {never} never launched",
        all.len(),
        began.elapsed()
    );
    assert_eq!((lost, wrong, duplicates, never), (0, 0, 0, 0));
    let unique: HashMap<&String, ()> = all.iter().map(|(_, id, ..)| (id, ())).collect();
    assert_eq!(unique.len(), CLIENTS * EACH);
}

/// The agent container killed and started again while its launcher lives:
/// nothing lost, exits during the restart reported with their real codes.
/// Then the whole node (agent and launcher) killed: its processes are
/// `lost`, never given a code, also after the node comes back empty.
#[tokio::test(flavor = "multi_thread")]
async fn agent_restart_keeps_processes_node_loss_loses_them() {
    let Some(env) = Env::start_or_skip("agentrestart", 2, LEASE) else {
        return;
    };
    let cluster = env.cluster().await.expect("connect");
    env.wait_agents(&cluster, &nodes(2), Duration::from_secs(60))
        .await
        .expect("agents ready");
    let mut procs = Vec::new();
    for k in 0..10 {
        let token = format!("a{k}");
        let code = 30 + k;
        let mut p =
            Process::new(&cluster, marked(&token, 1.0 + 0.5 * f64::from(k), code)).node("node-1");
        p.start().await.expect("start");
        procs.push((p.id().expect("id").to_owned(), code));
    }
    let restart = Instant::now();
    env.docker_on(&["kill", "-s", "KILL"], "agent-1")
        .expect("kill agent");
    // Down for a while: some exits happen with no agent at all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.docker_on(&["start"], "agent-1").expect("start agent");
    env.wait_agents(&cluster, &nodes(1), Duration::from_secs(60))
        .await
        .expect("agent back");
    let back = restart.elapsed();
    for (id, code) in &procs {
        let p = env
            .wait_process(
                &cluster,
                id,
                "stopped",
                Duration::from_secs(40),
                settled_with_code,
            )
            .await
            .expect("real exit code");
        assert_eq!(p.exitcode, Some(*code), "{id}");
    }
    let markers = env.markers(1).expect("markers");
    let twice = markers.values().filter(|c| c.0 != 1).count();
    assert_eq!(twice, 0, "{markers:?}");
    println!(
        "agent restart: 10 processes on the node, agent SIGKILLed and back in {back:?}; 10 real exit codes, 0 lost, 0 duplicates"
    );

    // Whole node lost.
    let mut victims = Vec::new();
    for k in 0..5 {
        let token = format!("n{k}");
        let mut p = Process::new(&cluster, marked(&token, 60.0, 1)).node("node-2");
        p.start().await.expect("start");
        victims.push(p.id().expect("id").to_owned());
    }
    let killed = Instant::now();
    env.docker_on(&["kill", "-s", "KILL"], "agent-2")
        .expect("kill agent-2");
    env.docker_on(&["kill", "-s", "KILL"], "launcher-2")
        .expect("kill launcher-2");
    for id in &victims {
        let p = env
            .wait_process(&cluster, id, "lost", LEASE * 4, is_lost)
            .await
            .expect("lost");
        assert_eq!(p.exitcode, None);
    }
    let lost_after = killed.elapsed();
    // The node comes back with a fresh launcher: nothing to report for
    // them, and no code may be invented.
    env.docker_on(&["start"], "launcher-2")
        .expect("start launcher-2");
    env.docker_on(&["start"], "agent-2").expect("start agent-2");
    env.wait_agents(&cluster, &nodes(2), Duration::from_secs(60))
        .await
        .expect("node-2 back");
    for id in &victims {
        let p = cluster.get(id).await.expect("get");
        assert_eq!(
            (Some(p.state), p.exitcode),
            (Some(ProcessState::Lost), None),
            "{id} after the node came back"
        );
    }
    println!(
        "node lost: 5 processes, lost after {lost_after:?}, still lost with no exit code after the node returned"
    );
}

/// Freeze a node (agent and launcher: a VM stall) beyond its lease, then
/// thaw it: its processes were `lost`, then reconcile; nothing ran twice.
#[tokio::test(flavor = "multi_thread")]
async fn pause_past_lease_then_unpause() {
    let Some(env) = Env::start_or_skip("pause", 2, LEASE) else {
        return;
    };
    let cluster = env.cluster().await.expect("connect");
    env.wait_agents(&cluster, &nodes(2), Duration::from_secs(60))
        .await
        .expect("agents ready");
    let mut procs = Vec::new();
    for k in 0..6 {
        let token = format!("z{k}");
        let code = 40 + k;
        let mut p = Process::new(&cluster, marked(&token, 1.0 + f64::from(k), code)).node("node-1");
        p.start().await.expect("start");
        procs.push((p.id().expect("id").to_owned(), code));
    }
    let frozen = Instant::now();
    env.docker_on(&["pause"], "agent-1").expect("pause agent");
    env.docker_on(&["pause"], "launcher-1")
        .expect("pause launcher");
    for (id, _) in &procs {
        env.wait_process(&cluster, id, "lost", LEASE * 4, is_lost)
            .await
            .expect("lost while frozen");
    }
    let lost_after = frozen.elapsed();
    let thaw = Instant::now();
    env.docker_on(&["unpause"], "launcher-1")
        .expect("unpause launcher");
    env.docker_on(&["unpause"], "agent-1")
        .expect("unpause agent");
    for (id, code) in &procs {
        let p = env
            .wait_process(
                &cluster,
                id,
                "stopped",
                Duration::from_secs(40),
                settled_with_code,
            )
            .await
            .expect("real code after the thaw");
        assert_eq!(p.exitcode, Some(*code), "{id}");
    }
    let reconciled = thaw.elapsed();
    let markers = env.markers(1).expect("markers");
    assert_eq!(markers.len(), procs.len());
    assert!(markers.values().all(|c| *c == (1, 1)), "{markers:?}");
    println!(
        "pause: 6 processes on a node frozen past the lease (lost after {lost_after:?}), thawed: 6 real codes {reconciled:?} later, 0 lost, 0 duplicates"
    );
}

#[derive(serde::Serialize)]
struct CommandTask {
    argv: Vec<String>,
}

#[derive(serde::Deserialize)]
struct CommandOutcome {
    exitcode: Option<i32>,
    stdout: Vec<u8>,
}

/// Restart the three agents one at a time during a `Pool.map` of 10,000
/// tasks (the agents' own `mpctl.command`): every result right, in order.
#[tokio::test(flavor = "multi_thread")]
async fn rolling_agent_restart_during_pool_map() {
    let Some(env) = Env::start_or_skip("rolling", 3, LEASE) else {
        return;
    };
    let cluster = env.cluster().await.expect("connect");
    env.wait_agents(&cluster, &nodes(3), Duration::from_secs(60))
        .await
        .expect("agents ready");
    const TASKS: usize = 10_000;
    let pool = mpctl::Pool::builder(&cluster)
        .processes(6)
        .agent_program()
        .max_retries(5)
        .create()
        .await
        .expect("pool");
    let items = (0..TASKS).map(|i| CommandTask {
        argv: vec!["echo".to_owned(), i.to_string()],
    });
    let began = Instant::now();
    let call = pool
        .map_async::<_, CommandOutcome, _>("mpctl.command", items, None)
        .expect("map_async");
    let mut restarts = Vec::new();
    for i in 1..=3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t = Instant::now();
        env.docker_on(&["restart", "-t", "5"], &format!("agent-{i}"))
            .expect("restart agent");
        env.wait_agents(&cluster, &nodes(3), Duration::from_secs(60))
            .await
            .expect("agent back");
        restarts.push(t.elapsed());
    }
    let results = call
        .get(Some(Duration::from_secs(600)))
        .await
        .expect("map results");
    let took = began.elapsed();
    assert_eq!(results.len(), TASKS);
    let mut wrong = 0;
    for (i, r) in results.iter().enumerate() {
        if r.exitcode != Some(0) || r.stdout != format!("{i}\n").into_bytes() {
            wrong += 1;
        }
    }
    pool.close().expect("close");
    pool.join().await.expect("join");
    println!(
        "rolling restart: Pool.map of {TASKS} tasks on 6 workers over 3 nodes in {took:?}, agents restarted one at a time (each back in {restarts:?}); {wrong} wrong or out of order"
    );
    assert_eq!(wrong, 0);
}

/// The README's compose cluster: `up -d`, a command from the host prints a
/// node's hostname, `down -v` leaves nothing of the project.
#[tokio::test(flavor = "multi_thread")]
async fn compose_cluster_up_run_down() {
    if let Some(reason) = mpctl_deploy_tests::skip_reason() {
        println!("SKIPPED compose: {reason}");
        return;
    }
    let Some(compose) = mpctl_deploy_tests::Compose::find() else {
        println!("SKIPPED compose: neither `docker compose` nor `docker-compose` is installed");
        return;
    };
    let project = compose.up().expect("compose up");
    let cluster = project.cluster().await.expect("connect");
    let began = Instant::now();
    let names: Vec<String> = (1..=3).map(|i| format!("agent-{i}")).collect();
    project
        .wait_agents(&cluster, &names, Duration::from_secs(120))
        .await
        .expect("three agents ready");
    let ready = began.elapsed();
    let mut p = Process::new(&cluster, ["hostname"]);
    p.start().await.expect("start");
    p.join(None).await.expect("join");
    assert_eq!(p.exitcode(), Some(0));
    let mut out = Vec::new();
    let mut logs = p.logs(mpctl::LogStream::Stdout, false).await.expect("logs");
    while let Some(chunk) = logs.message().await.expect("log chunk") {
        out.extend(chunk.data);
    }
    let host = String::from_utf8_lossy(&out).trim().to_owned();
    assert!(names.contains(&host), "hostname {host:?}");
    // The compose health checks (`mpctl health` in each container) pass.
    let began = Instant::now();
    for service in ["coordinator", "agent-1", "agent-2", "agent-3"] {
        loop {
            let status = project.health_status(service).expect("health status");
            if status == "healthy" {
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "{service} is {status}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let healthy = began.elapsed();
    let left = project.down().expect("compose down");
    assert_eq!(left, "", "left behind by down -v");
    println!("compose: 3 agents ready {ready:?} after up; `hostname` ran on {host}; all healthy by Docker's checks {healthy:?} later; down -v left nothing");
}

/// A client's join in flight when the coordinator is SIGKILLed and started
/// again: the SDK reconnects and the same call returns the real code.
#[tokio::test(flavor = "multi_thread")]
async fn sdk_join_survives_coordinator_restart() {
    let Some(env) = Env::start_or_skip("reconnect", 1, LEASE) else {
        return;
    };
    let cluster = env.cluster().await.expect("connect");
    env.wait_agents(&cluster, &nodes(1), Duration::from_secs(60))
        .await
        .expect("agent ready");
    let mut p = Process::new(&cluster, marked("r", 4.0, 9));
    p.start().await.expect("start");
    let join = tokio::spawn(async move { p.join(None).await.map(|()| p.exitcode()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    env.docker_on(&["kill", "-s", "KILL"], "coordinator")
        .expect("kill");
    env.docker_on(&["start"], "coordinator").expect("start");
    let code = join
        .await
        .expect("join task")
        .expect("join across the restart");
    assert_eq!(code, Some(9));
    println!(
        "reconnect: a join in flight across a coordinator SIGKILL + start returned exit code 9, {:?} after the kill",
        killed.elapsed()
    );
}

/// `docker stop` (SIGTERM, then SIGKILL after the grace period) of the
/// agent while its processes exit, and of the coordinator: each stops
/// within the grace period, and every exit comes back with its real code.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_gracefully_and_loses_nothing() {
    let Some(env) = Env::start_or_skip("sigterm", 1, LEASE) else {
        return;
    };
    let cluster = env.cluster().await.expect("connect");
    env.wait_agents(&cluster, &nodes(1), Duration::from_secs(60))
        .await
        .expect("agent ready");
    let mut procs = Vec::new();
    for k in 0..20 {
        let token = format!("t{k}");
        let code = 50 + k;
        let mut p = Process::new(&cluster, marked(&token, 0.5 + 0.1 * f64::from(k), code));
        p.start().await.expect("start");
        procs.push((p.id().expect("id").to_owned(), code));
    }
    let t = Instant::now();
    env.docker_on(&["stop", "-t", "10"], "agent-1")
        .expect("stop agent");
    let agent_stop = t.elapsed();
    let t = Instant::now();
    env.docker_on(&["stop", "-t", "10"], "coordinator")
        .expect("stop coordinator");
    let coordinator_stop = t.elapsed();
    let exit_status = |c: &str| {
        env.docker_on(&["inspect", "--format", "{{.State.ExitCode}}"], c)
            .expect("inspect")
    };
    // 0: they handled SIGTERM and exited themselves (137 would be SIGKILL).
    assert_eq!(exit_status("agent-1"), "0");
    assert_eq!(exit_status("coordinator"), "0");
    env.docker_on(&["start"], "coordinator")
        .expect("start coordinator");
    env.docker_on(&["start"], "agent-1").expect("start agent");
    let cluster = env.cluster().await.expect("connect");
    env.wait_agents(&cluster, &nodes(1), Duration::from_secs(60))
        .await
        .expect("agent back");
    for (id, code) in &procs {
        let p = env
            .wait_process(
                &cluster,
                id,
                "stopped",
                Duration::from_secs(40),
                settled_with_code,
            )
            .await
            .expect("real exit code");
        assert_eq!(p.exitcode, Some(*code), "{id}");
    }
    let markers = env.markers(1).expect("markers");
    assert_eq!(markers.len(), procs.len());
    assert!(markers.values().all(|c| *c == (1, 1)), "{markers:?}");
    println!(
        "sigterm: agent stopped in {agent_stop:?}, coordinator in {coordinator_stop:?} (grace 10 s, both exit status 0); 20 processes exiting meanwhile: 20 real codes, 0 lost, 0 duplicates"
    );
}
