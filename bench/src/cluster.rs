//! Starting and stopping what the benchmark measures: `mpctl dev` (one
//! process: coordinator + agent), a split `mpctl server` + `mpctl agent` for
//! the scale case, and a bare HOME for the embedded default. Each has a
//! temporary HOME; dropping it stops its daemons (SIGTERM, then SIGKILL) and
//! kills every process left in its node launcher's session, so the benchmark
//! leaves nothing behind, on error paths too. (The pattern is the one of
//! `tests/src/lib.rs`.)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

const READY: Duration = Duration::from_secs(30);

/// A daemon with its stderr read line by line.
pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    what: &'static str,
}

impl Daemon {
    fn spawn(what: &'static str, mut cmd: Command) -> Result<Daemon> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let stderr = child.stderr.take().context("piped stderr")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok(Daemon { child, lines, what })
    }

    /// Waits for a stderr line containing `needle` (an event, not a sleep).
    fn wait_line(&self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + READY;
        let mut seen = Vec::new();
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(line) => seen.push(line),
                Err(_) => bail!(
                    "{} printed no line containing {needle:?} within {READY:?}; its stderr:\n{}",
                    self.what,
                    seen.join("\n")
                ),
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        // Its stderr closes when it exits: wait for that, then reap it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    break;
                }
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn temp_home(prefix: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("cannot create a temporary directory")
}

/// `mpctl` with nothing from the caller's environment but PATH.
pub fn mpctl_command(mpctl: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(mpctl);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .current_dir(home);
    cmd
}

/// `mpctl dev` on loopback; its HOME holds the client config it writes.
pub struct Dev {
    daemon: Option<Daemon>,
    pub addr: String,
    pub key: PathBuf,
    home: TempDir,
}

impl Dev {
    pub fn start(mpctl: &Path) -> Result<Dev> {
        let home = temp_home("mpctl-bench-dev-")?;
        let mut cmd = mpctl_command(mpctl, home.path());
        cmd.env("RUST_LOG", "info").args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--slots",
            "1100",
            "--name",
            "bench",
        ]);
        let daemon = Daemon::spawn("mpctl dev", cmd)?;
        let mut dev = Dev {
            daemon: Some(daemon),
            addr: String::new(),
            key: PathBuf::new(),
            home,
        };
        dev.daemon
            .as_ref()
            .expect("just set")
            .wait_line("client config written")?;
        let path = dev.home.path().join(".config/mpctl/config.json");
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
        )?;
        dev.addr = config["addr"].as_str().context("addr in config")?.into();
        dev.key = config["authkey_file"]
            .as_str()
            .context("authkey_file in config")?
            .into();
        Ok(dev)
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        drop(self.daemon.take());
        kill_launcher_sessions(self.home.path());
    }
}

/// A HOME with nothing configured: `mpctl` runs its embedded cluster.
pub struct Bare {
    home: TempDir,
}

impl Bare {
    pub fn new() -> Result<Bare> {
        Ok(Bare {
            home: temp_home("mpctl-bench-embedded-")?,
        })
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        kill_launcher_sessions(self.home.path());
    }
}

/// `mpctl server` and one `mpctl agent` as separate processes.
pub struct Split {
    agent: Option<Daemon>,
    server: Option<Daemon>,
    pub addr: String,
    pub key: PathBuf,
    dir: TempDir,
}

impl Split {
    pub fn start(mpctl: &Path, slots: u32) -> Result<Split> {
        Split::start_with(mpctl, slots, &[])
    }

    /// [`Split::start`] with more arguments for `mpctl server`.
    pub fn start_with(mpctl: &Path, slots: u32, server_args: &[&str]) -> Result<Split> {
        let dir = temp_home("mpctl-bench-split-")?;
        let key = dir.path().join("authkey");
        mpctl::AuthKey::write_new(&key, false)?;
        let mut cmd = mpctl_command(mpctl, dir.path());
        cmd.env("RUST_LOG", "info")
            .env("MPCTL_AUTHKEY_FILE", &key)
            .arg("server")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("server"))
            .args(server_args);
        let server = Daemon::spawn("mpctl server", cmd)?;
        let mut split = Split {
            agent: None,
            server: Some(server),
            addr: String::new(),
            key,
            dir,
        };
        let line = split
            .server
            .as_ref()
            .expect("just set")
            .wait_line("listening on")?;
        split.addr = line
            .rsplit(' ')
            .next()
            .context("address at the end of the line")?
            .trim()
            .to_owned();
        let mut cmd = mpctl_command(mpctl, split.dir.path());
        cmd.env("RUST_LOG", "info")
            .env("MPCTL_AUTHKEY_FILE", &split.key)
            .args(["agent", "--server", &split.addr, "--name", "scale"])
            .args(["--slots", &slots.to_string(), "--data-dir"])
            .arg(split.agent_dir())
            .arg("--work-dir")
            .arg(split.dir.path());
        split.agent = Some(Daemon::spawn("mpctl agent", cmd)?);
        split
            .agent
            .as_ref()
            .expect("just set")
            .wait_line("registered with the coordinator")?;
        Ok(split)
    }

    fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    pub fn server_pid(&self) -> i32 {
        self.server.as_ref().map_or(0, Daemon::pid)
    }

    pub fn agent_pid(&self) -> i32 {
        self.agent.as_ref().map_or(0, Daemon::pid)
    }

    /// The agent's node launcher (`mpctl launcher --dir <agent data>/...`).
    pub fn launcher_pid(&self) -> Option<i32> {
        let needle = format!("launcher --dir {}", self.agent_dir().display());
        pids_with_cmdline(&needle).into_iter().next()
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        drop(self.agent.take());
        drop(self.server.take());
        kill_launcher_sessions(self.dir.path());
    }
}

/// VmRSS of a process, in MiB.
pub fn rss_mib(pid: i32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS line")?
        .parse()?;
    Ok(kb / 1024.0)
}

fn proc_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    proc_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp session ...
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// Kills every process in the session of each launcher serving a directory
/// under `root` (a launcher runs in its own session; its children stay in it).
pub fn kill_launcher_sessions(root: &Path) {
    let needle = format!("launcher --dir {}", root.display());
    for launcher in pids_with_cmdline(&needle) {
        for pid in proc_pids() {
            if session_of(pid) == Some(launcher) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}
