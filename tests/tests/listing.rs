//! Bounded listings and retention, on a real coordinator (and agent where a
//! process runs): `ps -a` with 1 MB argvs and with 50,000 finished
//! processes (written into a real SQLite file with the coordinator's own
//! store before it starts), `--limit`, and retention by count and by age
//! from SQLite and from the node's `procs/` directory.

use std::path::Path;

use mpctl_proto::v1::{CommandTarget, ProcessInfo, ProcessState, StartRequest};
use mpctl_server::store::{Batch, Op, Store};
use mpctl_tests::{Daemon, Options, TestCluster, READY};

fn stdout(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "mpctl failed ({:?}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn rows_in_sqlite(server_dir: &Path) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        server_dir.join("coordinator.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the coordinator's database");
    db.query_row("SELECT COUNT(*) FROM processes", [], |r| r.get(0))
        .expect("count rows")
}

/// Waits for the daemon's log line `what` whose `total=` field reaches `total`.
fn wait_total(d: &Daemon, what: &str, total: u64) {
    let needle = format!(" total={total}");
    loop {
        let line = d.wait_line(what, READY);
        if line.contains(&needle) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ps_lists_five_starts_of_a_megabyte_of_argv_each_and_inspect_shows_it_whole() {
    let c = TestCluster::with_agent(5);
    let cluster = c.client().await;
    // A single argument may not pass 128 KiB (the kernel's MAX_ARG_STRLEN):
    // ten of 96,000 bytes each.
    let big: Vec<String> = (0..10).map(|i| format!("{i}").repeat(96_000)).collect();
    let mut argv = vec!["sh".to_owned(), "-c".into(), "exit 0".into(), "sh".into()];
    argv.extend(big);
    let total: usize = argv.iter().map(String::len).sum();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut p = mpctl::Process::new(&cluster, argv.clone());
        p.start().await.expect("start with a 960 KB argv");
        p.join(None).await.expect("join");
        assert_eq!(p.exitcode(), Some(0));
        ids.push(p.id().unwrap().to_owned());
    }
    let table = stdout(&c.cli(&["ps", "-a"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "a header and five rows:\n{table}");
    let marker = format!("…(+{} KB)", (total - 1024) >> 10);
    for id in &ids {
        let row = lines
            .iter()
            .find(|l| l.starts_with(id.as_str()))
            .expect("listed");
        assert!(row.ends_with(&marker), "{row:?} ends with {marker:?}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&c.cli(&["ps", "-a", "-o", "json"]))).unwrap();
    for row in json.as_array().unwrap() {
        assert_eq!(row["argv_omitted_bytes"], (total - 1024) as u64);
        let kept: usize = row["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().len())
            .sum();
        assert_eq!(kept, 1024);
    }
    let whole: serde_json::Value =
        serde_json::from_str(&stdout(&c.cli(&["inspect", &ids[0], "-o", "json"]))).unwrap();
    let shown: Vec<String> = serde_json::from_value(whole[0]["argv"].clone()).unwrap();
    assert_eq!(shown, argv);
    assert_eq!(whole[0]["argv_omitted_bytes"], 0);
    cluster.close().await;
}

const SEEDED: usize = 50_000;

/// Finished processes as the coordinator itself stores them.
fn seed(server_dir: &Path, n: usize, now_ms: i64) -> Vec<String> {
    std::fs::create_dir_all(server_dir).unwrap();
    let (store, _) = Store::open(&server_dir.join("coordinator.sqlite")).expect("open store");
    let mut ids = Vec::with_capacity(n);
    let mut batch = Batch::default();
    for i in 0..n {
        let id = format!("{i:016x}");
        let argv = vec!["sh".to_owned(), "-c".into(), format!("exit {}", i % 7)];
        let info = ProcessInfo {
            id: id.clone(),
            name: format!("Process-{}", i + 1),
            node: "node-a".into(),
            pid: 1000 + i as i32,
            state: ProcessState::Stopped as i32,
            exitcode: Some((i % 7) as i32),
            argv: argv.clone(),
            created_unix_ms: now_ms - (n - i) as i64,
            started_unix_ms: now_ms - (n - i) as i64,
            stopped_unix_ms: now_ms - (n - i) as i64,
            request_id: format!("seed-{i}"),
            identity: vec![i as u32 + 1],
            ..ProcessInfo::default()
        };
        let request = StartRequest {
            request_id: format!("seed-{i}"),
            command: Some(CommandTarget {
                argv,
                ..CommandTarget::default()
            }),
            ..StartRequest::default()
        };
        batch.ops.push(Op::Process(Box::new((info, request))));
        ids.push(id);
    }
    batch.ops.push(Op::NextNumber(n as u64 + 1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(store.submit(1, batch).durable())
        .expect("seeded");
    ids
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn ps_walks_fifty_thousand_finished_processes_and_limit_cuts_it() {
    let mut c = TestCluster::without_server(Options::default());
    let seeded = tokio::task::block_in_place(|| seed(&c.server_dir(), SEEDED, now_ms()));
    c.start_server();
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&c.cli(&["ps", "-a", "-o", "json"]))).unwrap();
    let listed: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), SEEDED);
    assert_eq!(listed, seeded, "every row once, oldest first");
    assert_eq!(json[49_999]["exitcode"], 49_999 % 7);

    let table = stdout(&c.cli(&["ps", "-a", "--limit", "7"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 8, "a header and seven rows:\n{table}");
    for (line, id) in lines[1..].iter().zip(&seeded) {
        assert!(line.starts_with(id.as_str()), "{line:?} is {id}");
    }
    let running = stdout(&c.cli(&["ps"]));
    assert_eq!(running.lines().count(), 1, "none running:\n{running}");

    // The SDK's pages: the server's default size, no row twice.
    let cluster = c.client().await;
    let first = cluster.list_page("", true, 0, "").await.unwrap();
    assert_eq!(first.processes.len(), mpctl_server::page::DEFAULT_PAGE);
    let token = first.next_page_token.expect("more pages");
    let second = cluster.list_page("", true, 100_000, &token).await.unwrap();
    assert_eq!(second.processes.len(), mpctl_server::page::MAX_PAGE);
    assert_eq!(
        second.processes[0].id,
        seeded[mpctl_server::page::DEFAULT_PAGE]
    );
    let bad = cluster
        .list_page("", true, 0, "not-a-token")
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("page_token"), "{bad}");
    let limited = cluster.list_all("", true, Some(2_500)).await.unwrap();
    assert_eq!(limited.len(), 2_500);
    assert_eq!(limited[2_499].id, seeded[2_499]);
}

fn retention_cluster(retain: &str, retain_for: &str) -> TestCluster {
    let mut c = TestCluster::start(Options {
        log_filter: "info,mpctl_server::core::ops::retention=debug,mpctl_agent::outputs=debug"
            .into(),
        server_args: vec![
            "--retain".into(),
            retain.into(),
            "--retain-for".into(),
            retain_for.into(),
        ],
        ..Options::default()
    });
    c.start_agent("node-a", 2, &[]);
    c
}

/// Runs `echo N` processes one after another (so they finish in order).
async fn run_echoes(c: &TestCluster, n: usize) -> Vec<String> {
    let cluster = c.client().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let mut p = mpctl::Process::new(&cluster, ["sh", "-c", &format!("echo out-{i}")]);
        p.start().await.unwrap();
        p.join(None).await.unwrap();
        assert_eq!(p.exitcode(), Some(0));
        ids.push(p.id().unwrap().to_owned());
    }
    ids
}

fn procs_dir(c: &TestCluster) -> std::path::PathBuf {
    c.agent_dir("node-a").join("procs")
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_the_oldest_beyond_retain_from_sqlite_and_the_node() {
    let c = retention_cluster("3", "1h");
    let ids = run_echoes(&c, 5).await;
    wait_total(c.server.as_ref().unwrap(), "retention removed", 2);
    wait_total(c.agent("node-a"), "output of removed processes deleted", 2);
    assert_eq!(rows_in_sqlite(&c.server_dir()), 3);
    for (i, id) in ids.iter().enumerate() {
        let kept = i >= 2;
        assert_eq!(
            procs_dir(&c).join(id).join("stdout").exists(),
            kept,
            "output of process {i} ({id})"
        );
    }
    // An id retention removed is, like an unknown one, status 125 (the
    // CLI's exit-status table), with its own message.
    let gone = c.cli(&["inspect", &ids[0]]);
    assert_eq!(gone.status.code(), Some(125));
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(err.contains("removed by retention"), "{err}");
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&c.cli(&["ps", "-a", "-o", "json"]))).unwrap();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        ids[2..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    // `logs` of a kept one still reads its file.
    let out = stdout(&c.cli(&["logs", &ids[4]]));
    assert_eq!(out, "out-4\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_processes_finished_longer_ago_than_retain_for() {
    let c = retention_cluster("1000", "2s");
    let ids = run_echoes(&c, 2).await;
    assert!(procs_dir(&c).join(&ids[1]).join("stdout").exists());
    wait_total(c.server.as_ref().unwrap(), "retention removed", 2);
    wait_total(c.agent("node-a"), "output of removed processes deleted", 2);
    assert_eq!(rows_in_sqlite(&c.server_dir()), 0);
    for id in &ids {
        assert!(!procs_dir(&c).join(id).exists(), "{id}'s output is gone");
    }
    let listed = stdout(&c.cli(&["ps", "-a"]));
    assert_eq!(listed.lines().count(), 1, "{listed}");
}
