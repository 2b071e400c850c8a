//! Harness for the integration tests: a real coordinator and real agents,
//! each an `mpctl` process, talking gRPC over loopback TLS with a real SQLite
//! file, in a temporary directory that also serves as `HOME`.
//!
//! Readiness is read from the daemons' own log lines (an event), never
//! guessed with sleeps. Dropping a [`TestCluster`] stops the daemons and then
//! kills every process left in each node launcher's session, so no test leaves
//! a process behind.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub use mpctl;

/// How long a test waits for a daemon to come up before failing.
pub const READY: Duration = Duration::from_secs(20);

/// The `mpctl` binary cargo built next to this test binary.
pub fn mpctl_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let mut dir = exe.parent().expect("test binary directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("mpctl");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p mpctl-cli` (cargo nextest/test --workspace builds it)",
        bin.display()
    );
    bin
}

/// A daemon process with its stderr captured line by line.
pub struct Daemon {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn spawn(mut cmd: Command) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mpctl daemon");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Daemon { child, lines, log }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no log line containing {needle:?} within {timeout:?}; log so far:\n{}",
                    self.log.lock().unwrap().join("\n")
                ),
            }
        }
    }

    /// Waits for the process to exit and returns its status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        // The stderr reader ends when the process closes its stderr: block on
        // it (an event) rather than polling try_wait.
        while Instant::now() < deadline {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
            }
        }
        self.child.wait().ok().and_then(|s| s.code())
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A daemon a test forgot, or left behind by panicking, does not outlive it.
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options for a test cluster.
#[derive(Clone)]
pub struct Options {
    pub lease_ms: u64,
    pub heartbeat_ms: u64,
    pub log_filter: String,
    /// More arguments for `mpctl server` (e.g. `--retain 3`).
    pub server_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lease_ms: 10_000,
            heartbeat_ms: 500,
            log_filter: "info".into(),
            server_args: Vec::new(),
        }
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub key_path: PathBuf,
    pub addr: String,
    pub options: Options,
    pub server: Option<Daemon>,
    pub agents: HashMap<String, Daemon>,
}

impl TestCluster {
    /// A coordinator with a fresh authkey, and no agents yet.
    pub fn start(options: Options) -> TestCluster {
        let mut cluster = TestCluster::without_server(options);
        cluster.start_server();
        cluster
    }

    /// The directory and authkey, nothing running yet (to prepare the
    /// coordinator's data directory, [`TestCluster::server_dir`], first).
    pub fn without_server(options: Options) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("mpctl-test-")
            .tempdir()
            .expect("temp dir");
        let key_path = dir.path().join("authkey");
        mpctl::AuthKey::write_new(&key_path, false).expect("write authkey");
        TestCluster {
            dir,
            key_path,
            addr: "127.0.0.1:0".into(),
            options,
            server: None,
            agents: HashMap::new(),
        }
    }

    /// The coordinator's data directory.
    pub fn server_dir(&self) -> PathBuf {
        self.path().join("server")
    }

    /// A coordinator and one agent `node-a` with `slots` slots.
    pub fn with_agent(slots: u32) -> TestCluster {
        let mut c = TestCluster::start(Options::default());
        c.start_agent("node-a", slots, &[]);
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `Command` for `mpctl` with this cluster's environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(mpctl_bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.path())
            .env("RUST_LOG", &self.options.log_filter)
            .env("MPCTL_ADDR", &self.addr)
            .env("MPCTL_AUTHKEY_FILE", &self.key_path);
        cmd
    }

    /// (Re)starts the coordinator on the cluster's address and data dir.
    pub fn start_server(&mut self) {
        let mut cmd = self.command();
        cmd.env_remove("MPCTL_ADDR").args([
            "server",
            "--listen",
            &self.addr,
            "--data-dir",
            self.server_dir().to_str().unwrap(),
            "--lease-ms",
            &self.options.lease_ms.to_string(),
            "--heartbeat-ms",
            &self.options.heartbeat_ms.to_string(),
        ]);
        cmd.args(&self.options.server_args);
        let server = Daemon::spawn(cmd);
        let line = server.wait_line("listening on", READY);
        self.addr = line
            .rsplit(' ')
            .next()
            .expect("address at the end of the line")
            .trim()
            .to_owned();
        self.server = Some(server);
    }

    pub fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.child.kill();
            let _ = s.wait_exit(Duration::from_secs(10));
        }
    }

    /// Starts an agent and waits until it has registered.
    pub fn start_agent(&mut self, name: &str, slots: u32, labels: &[&str]) {
        let mut cmd = self.command();
        cmd.env_remove("MPCTL_ADDR").args([
            "agent",
            "--server",
            &self.addr,
            "--name",
            name,
            "--slots",
            &slots.to_string(),
            "--data-dir",
            self.agent_dir(name).to_str().unwrap(),
            "--work-dir",
            self.path().to_str().unwrap(),
        ]);
        for l in labels {
            cmd.args(["--label", l]);
        }
        let agent = Daemon::spawn(cmd);
        agent.wait_line("registered with the coordinator", READY);
        self.agents.insert(name.to_owned(), agent);
    }

    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.path().join("agents").join(name)
    }

    pub fn agent(&self, name: &str) -> &Daemon {
        &self.agents[name]
    }

    /// SIGKILLs an agent daemon (its launcher and processes live on).
    pub fn kill_agent(&mut self, name: &str) -> Daemon {
        let mut a = self.agents.remove(name).expect("known agent");
        let _ = a.child.kill();
        let _ = a.wait_exit(Duration::from_secs(10));
        a
    }

    /// An SDK handle on the cluster.
    pub async fn client(&self) -> mpctl::Cluster {
        let key = mpctl::AuthKey::load(&self.key_path).expect("authkey");
        mpctl::Cluster::connect(&self.addr, &key, mpctl::Security::Tls)
            .await
            .expect("connect to the test coordinator")
    }

    /// Runs `mpctl ARGS` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run mpctl")
    }

    /// Every daemon log so far, for secret checks.
    pub fn all_logs(&self) -> String {
        let mut s = String::new();
        for d in self.server.iter().chain(self.agents.values()) {
            s.push_str(&d.log_text());
            s.push('\n');
        }
        s
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for (_, mut a) in self.agents.drain() {
            a.stop();
        }
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
        kill_launcher_sessions(self.dir.path());
    }
}

/// Every pid on the machine.
fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Pids whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for pid in all_pids() {
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// (pid, session id, state) of every process.
pub fn process_table() -> Vec<(i32, i32, char, i32)> {
    let mut out = Vec::new();
    for pid in all_pids() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp session ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 3 {
            let state = f[0].chars().next().unwrap_or('?');
            let ppid = f[1].parse().unwrap_or(0);
            let sid = f[3].parse().unwrap_or(0);
            out.push((pid, sid, state, ppid));
        }
    }
    out
}

/// Kills every process in the session of each launcher serving a directory
/// under `root` (the launcher runs in its own session; its children stay in it).
pub fn kill_launcher_sessions(root: &Path) {
    let needle = format!("launcher --dir {}", root.display());
    for launcher in pids_with_cmdline(&needle) {
        let members: Vec<i32> = process_table()
            .into_iter()
            .filter(|(_, sid, _, _)| *sid == launcher)
            .map(|(pid, ..)| pid)
            .collect();
        for pid in members {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Everything a process wrote on `which` so far, as text.
pub async fn output(p: &mpctl::Process, which: mpctl::LogStream) -> String {
    use futures::StreamExt;
    let mut text = Vec::new();
    let mut stream = p.logs(which, false).await.expect("logs");
    while let Some(chunk) = stream.next().await {
        text.extend(chunk.expect("log chunk").data);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Creates a FIFO: a process that reads it blocks until the test writes it,
/// so the test decides exactly when the process exits.
pub fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    path
}

/// Opens the FIFO for writing and closes it: the reader sees EOF.
pub fn release(fifo: &Path) {
    let _ = std::fs::OpenOptions::new().write(true).open(fifo);
}
