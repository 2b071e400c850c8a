//! Metrics as an operator sees them: a real Prometheus server (Debian's
//! `prometheus` package) scrapes a real coordinator and agent over
//! loopback during a known workload, and its HTTP API must then give
//! exactly the workload's counts; `promtool check metrics` must accept
//! both endpoints' pages; `mpctl agents` shows the per-agent load the
//! metrics export.
//!
//! Without `prometheus`/`promtool` on PATH the test fails under CI
//! (`CI=true`, where `.ci/run` installs them) and is skipped with the
//! reason printed elsewhere.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mpctl_tests::{fifo, release, Options, TestCluster};
use serde_json::Value;

/// How long Prometheus may take to show the workload's numbers.
const SCRAPED: Duration = Duration::from_secs(90);

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// The two binaries, or None (and why) when they are not installed.
fn prometheus_tools() -> Option<(PathBuf, PathBuf)> {
    match (which("prometheus"), which("promtool")) {
        (Some(p), Some(t)) => Some((p, t)),
        _ => {
            let why =
                "prometheus and promtool are not on PATH (Debian: apt-get install -y prometheus)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{why}: .ci/run installs them, so under CI this is a failure");
            }
            eprintln!("SKIPPED metrics_reach_prometheus_exactly: {why}");
            None
        }
    }
}

/// GET `path` from `addr` (HTTP/1.0, so the body ends with the connection);
/// returns the status code and the body.
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server of the test's own: temp config and storage, a
/// loopback port, killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(binary: &Path, targets: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("mpctl-test-prometheus-")
            .tempdir()
            .expect("temp dir");
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        // Prometheus cannot report the port it bound, so take a free one
        // from the kernel and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(&p.addr, "/-/ready") {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "prometheus exited ({status}) before it was ready:\n{}",
                    p.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 60 s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The value of an instant query with one series, if it has one now.
    fn query(&self, q: &str) -> Option<f64> {
        let (status, body) =
            http_get(&self.addr, &format!("/api/v1/query?query={}", urlencode(q))).ok()?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

/// The metrics address a daemon printed.
fn metrics_addr(log: &str) -> String {
    log.lines()
        .find_map(|l| l.split("metrics on http://").nth(1))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
        .to_owned()
}

fn scrape(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample line `series` (name and labels, as written).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn promtool_check(promtool: &Path, page: &str, what: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics rejects the {what} page: {}{}\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cli_ok(tc: &TestCluster, args: &[&str]) -> String {
    let o = tc.cli(args);
    assert!(
        o.status.success(),
        "mpctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn metrics_reach_prometheus_exactly() {
    let Some((prometheus, promtool)) = prometheus_tools() else {
        return;
    };
    let listen = vec!["--metrics-listen".to_owned(), "127.0.0.1:0".to_owned()];
    let mut tc = TestCluster::start(Options {
        server_args: listen.clone(),
        agent_args: listen,
        ..Options::default()
    });
    tc.start_agent("node-a", 4, &[]);
    let coordinator = metrics_addr(&tc.server.as_ref().expect("server").log_text());
    let agent = metrics_addr(&tc.agent("node-a").log_text());
    let prom = Prometheus::start(
        &prometheus,
        &[("coordinator", &coordinator), ("agent", &agent)],
    );

    // Two processes held running: the per-agent load, in `mpctl agents`
    // and on both pages.
    let gate = fifo(tc.path(), "gate");
    let held = cli_ok(&tc, &["submit", "--", "cat", gate.to_str().unwrap()]);
    let sleeper = cli_ok(&tc, &["submit", "--", "sleep", "600"]);
    let agents: Value = serde_json::from_str(&cli_ok(&tc, &["agents", "-o", "json"])).unwrap();
    assert_eq!(agents[0]["name"], "node-a");
    assert_eq!(agents[0]["slots"], 4);
    assert_eq!(agents[0]["used"], 2);
    assert_eq!(agents[0]["running"], 2);
    let page = scrape(&coordinator);
    assert_eq!(
        sample(&page, "mpctl_agent_slots{node=\"node-a\"}"),
        Some(4.0)
    );
    assert_eq!(
        sample(&page, "mpctl_agent_slots_used{node=\"node-a\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&page, "mpctl_agent_processes_running{node=\"node-a\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&page, "mpctl_processes{state=\"started\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&scrape(&agent), "mpctl_node_processes_running"),
        Some(2.0)
    );

    // The workload: 7 exit 0 (the held one among them), 2 exit 3, 1 SIGTERM,
    // 1 start error.
    release(&gate);
    assert_eq!(tc.cli(&["join", &held]).status.code(), Some(0));
    cli_ok(&tc, &["terminate", &sleeper]);
    assert_eq!(tc.cli(&["join", &sleeper]).status.code(), Some(143));
    for _ in 0..6 {
        assert_eq!(tc.cli(&["run", "--", "true"]).status.code(), Some(0));
    }
    for _ in 0..2 {
        assert_eq!(
            tc.cli(&["run", "--", "sh", "-c", "exit 3"]).status.code(),
            Some(3)
        );
    }
    assert_eq!(
        tc.cli(&["run", "--", "/no/such/binary"]).status.code(),
        Some(127)
    );

    let expected: &[(&str, f64)] = &[
        ("up{job=\"coordinator\"}", 1.0),
        ("up{job=\"agent\"}", 1.0),
        ("mpctl_process_starts_total", 11.0),
        ("mpctl_process_exits_total{outcome=\"exit_ok\"}", 7.0),
        ("mpctl_process_exits_total{outcome=\"exit_error\"}", 2.0),
        ("mpctl_process_exits_total{outcome=\"signal\"}", 1.0),
        ("mpctl_process_exits_total{outcome=\"start_error\"}", 1.0),
        ("mpctl_process_exits_total{outcome=\"lost\"}", 0.0),
        ("mpctl_launch_failures_total{reason=\"not_found\"}", 1.0),
        ("sum(mpctl_launch_failures_total)", 1.0),
        ("mpctl_start_to_launched_seconds_count", 10.0),
        ("mpctl_processes{state=\"stopped\"}", 10.0),
        ("mpctl_processes{state=\"failed\"}", 1.0),
        ("mpctl_queue_depth", 0.0),
        ("mpctl_agents{state=\"ready\"}", 1.0),
        ("mpctl_agent_slots{node=\"node-a\"}", 4.0),
        ("mpctl_agent_slots_used{node=\"node-a\"}", 0.0),
        ("mpctl_node_launches_total", 10.0),
        ("mpctl_node_exits_total{outcome=\"exit_ok\"}", 7.0),
        ("mpctl_node_exits_total{outcome=\"exit_error\"}", 2.0),
        ("mpctl_node_exits_total{outcome=\"signal\"}", 1.0),
        (
            "mpctl_node_launch_failures_total{reason=\"not_found\"}",
            1.0,
        ),
        ("mpctl_node_exit_to_ack_seconds_count", 10.0),
        ("mpctl_node_unacknowledged_exits", 0.0),
        ("mpctl_node_processes_running", 0.0),
        ("mpctl_node_registered", 1.0),
    ];
    let deadline = Instant::now() + SCRAPED;
    loop {
        let seen: Vec<(&str, f64, Option<f64>)> = expected
            .iter()
            .map(|(q, want)| (*q, *want, prom.query(q)))
            .collect();
        let wrong: Vec<_> = seen.iter().filter(|(_, w, got)| *got != Some(*w)).collect();
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not show the workload's numbers within {SCRAPED:?}; (query, expected, got): {wrong:#?}\nprometheus log:\n{}",
            prom.log()
        );
        // Prometheus scrapes every second: ask again shortly.
        std::thread::sleep(Duration::from_millis(250));
    }

    promtool_check(&promtool, &scrape(&coordinator), "coordinator");
    promtool_check(&promtool, &scrape(&agent), "agent");
}

/// `--log-format json`: every log line of the daemon is one JSON object.
#[test]
fn json_log_lines() {
    let tc = TestCluster::start(Options {
        server_args: vec!["--log-format".into(), "json".into()],
        ..Options::default()
    });
    // "coordinator serving" is logged before "listening on", which
    // `start_server` waited for.
    let log = tc.server.as_ref().expect("server").log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let serving = lines
        .iter()
        .find(|v| v["fields"]["message"] == "coordinator serving")
        .unwrap_or_else(|| panic!("no JSON line for the start:\n{log}"));
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["target"], "mpctl_server::daemon");
    assert!(serving["timestamp"].is_string());
    // No trace context without tracing: no trace id.
    assert!(serving.get("trace_id").is_none());
    // The only lines that are not JSON are the CLI's own (`mpctl server: …`).
    assert!(
        log.lines()
            .all(|l| l.starts_with('{') || l.starts_with("mpctl")),
        "{log}"
    );
}
