//! The harness of the fault suite across containers.
//!
//! An [`Env`] is one cluster made of Docker containers on its own network:
//! a coordinator (image `mpctl-coordinator`) and N nodes, each node two
//! containers sharing a volume like the compose file and the Kubernetes pod
//! (`launcher-i` runs the launcher, the managed processes' parent;
//! `agent-i` runs the agent). Every name starts with a prefix unique to the
//! test run, every resource carries the label `mpctl-test=1`, and dropping
//! the `Env` removes its containers, volumes and network (also when the
//! test panics). The test talks to the coordinator through the SDK on a
//! loopback port; faults are made with the docker CLI.
//!
//! The suite runs only with `MPCTL_CONTAINER_TESTS=1` (after
//! `deploy/build-images.sh`); otherwise, or without Docker, each test
//! prints why it is skipped and passes.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mpctl::{AgentState, ProcessInfo};
use mpctl::{AuthKey, Cluster, Security};

/// The label every container, volume and network of the suite carries.
pub const LABEL: &str = "mpctl-test=1";
/// The label naming the test process that made a resource: what
/// [`sweep_stale`] removes when that process is gone.
pub const PID_LABEL: &str = "mpctl-test-pid";

fn pid_label() -> String {
    format!("{PID_LABEL}={}", std::process::id())
}

/// Removes what test processes killed before their cleanup ran (a signal
/// skips `Drop`) left behind: resources labelled with the pid of a process
/// that no longer exists. Runs before each `Env` starts.
pub fn sweep_stale() {
    let dead =
        |pid: &str| !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists();
    // The labelled resources of one kind whose test process is gone, by
    // the field that names them.
    let stale = |list: &[&str], key: &str| -> Vec<String> {
        let format = format!("{{{{.{key}}}}} {{{{.Label \"{PID_LABEL}\"}}}}");
        let mut args = list.to_vec();
        args.extend(["--filter", "label=mpctl-test=1", "--format", &format]);
        docker(&args)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, pid)| dead(pid.trim()))
            .map(|(name, _)| name.to_owned())
            .collect()
    };
    // Containers first: a volume or network in use cannot be removed.
    for id in stale(&["ps", "-a"], "ID") {
        let _ = docker(&["unpause", &id]);
        let _ = docker(&["rm", "-f", "-v", &id]);
    }
    for name in stale(&["volume", "ls"], "Name") {
        let _ = docker(&["volume", "rm", "-f", &name]);
    }
    for id in stale(&["network", "ls"], "ID") {
        let _ = docker(&["network", "rm", &id]);
    }
}

fn image(part: &str) -> String {
    let tag = std::env::var("MPCTL_IMAGE_TAG").unwrap_or_else(|_| "dev".to_owned());
    format!("mpctl-{part}:{tag}")
}

/// Runs `docker ARGS`; its stdout, trimmed, or an error with its stderr.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .with_context(|| format!("cannot run docker {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Why the suite cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    if std::env::var("MPCTL_CONTAINER_TESTS").as_deref() != Ok("1") {
        return Some(
            "container suite off: run deploy/build-images.sh, then set MPCTL_CONTAINER_TESTS=1"
                .to_owned(),
        );
    }
    if let Err(e) = docker(&["version", "--format", "{{.Server.Version}}"]) {
        return Some(format!("Docker is not available: {e}"));
    }
    for part in ["coordinator", "agent"] {
        if docker(&["image", "inspect", &image(part)]).is_err() {
            return Some(format!(
                "image {} is missing: run deploy/build-images.sh",
                image(part)
            ));
        }
    }
    None
}

/// A free loopback port (bound and released; Docker publishes it next).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
    Ok(l.local_addr()?.port())
}

#[derive(Default)]
struct Resources {
    containers: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
}

/// One containerized cluster; see the module docs.
pub struct Env {
    pub prefix: String,
    pub nodes: usize,
    pub lease: Duration,
    pub port: u16,
    pub health_port: u16,
    key_path: PathBuf,
    _dir: tempfile::TempDir,
    res: Mutex<Resources>,
}

impl Env {
    /// The environment for `test` when the suite can run here; `None`
    /// (after printing why) when it cannot.
    pub fn start_or_skip(test: &str, nodes: usize, lease: Duration) -> Option<Env> {
        if let Some(reason) = skip_reason() {
            println!("SKIPPED {test}: {reason}");
            return None;
        }
        Some(Env::start(test, nodes, lease).expect("the container cluster starts"))
    }

    /// Creates the network, the key, the coordinator and `nodes` nodes.
    pub fn start(test: &str, nodes: usize, lease: Duration) -> Result<Env> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let prefix = format!(
            "mpctl-ft-{test}-{}-{:05}",
            std::process::id(),
            nanos % 100_000
        );
        let dir = tempfile::Builder::new().prefix("mpctl-ft-").tempdir()?;
        let key_path = dir.path().join("authkey");
        AuthKey::write_new(&key_path, false)?;
        let env = Env {
            prefix,
            nodes,
            lease,
            port: free_port()?,
            health_port: free_port()?,
            key_path,
            _dir: dir,
            res: Mutex::new(Resources::default()),
        };
        let net = env.name("net");
        sweep_stale();
        let pid = pid_label();
        docker(&["network", "create", "--label", LABEL, "--label", &pid, &net])?;
        env.res().networks.push(net);
        let keys = env.volume("keys")?;
        // As the compose file does: the key, 0400, owned by the images' user.
        let secret = format!("{}:/secret:ro", env.key_path.display());
        let keys_mount = format!("{keys}:/keys");
        docker(&[
            "run",
            "--rm",
            "--label",
            LABEL,
            "--user",
            "0:0",
            "--network",
            "none",
            "-v",
            &secret,
            "-v",
            &keys_mount,
            "--entrypoint",
            "/usr/bin/install",
            &image("agent"),
            "-m0400",
            "-o10001",
            "-g10001",
            "/secret",
            "/keys/authkey",
        ])?;
        env.volume("coordinator")?;
        env.run_coordinator()?;
        for i in 1..=nodes {
            env.volume(&format!("node-{i}"))?;
            env.run_launcher(i)?;
            env.run_agent(i)?;
        }
        Ok(env)
    }

    fn res(&self) -> std::sync::MutexGuard<'_, Resources> {
        self.res.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The full name of a resource of this environment.
    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    fn volume(&self, what: &str) -> Result<String> {
        let v = self.name(what);
        docker(&[
            "volume",
            "create",
            "--label",
            LABEL,
            "--label",
            &pid_label(),
            &v,
        ])?;
        self.res().volumes.push(v.clone());
        Ok(v)
    }

    fn run(&self, container: &str, args: &[&str]) -> Result<()> {
        let name = self.name(container);
        let net = self.name("net");
        let pid = pid_label();
        let mut all = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            LABEL,
            "--label",
            &pid,
            "--network",
            &net,
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
        ];
        all.extend_from_slice(args);
        self.res().containers.push(name.clone());
        docker(&all)?;
        Ok(())
    }

    fn run_coordinator(&self) -> Result<()> {
        let data = format!("{}:/var/lib/mpctl", self.name("coordinator"));
        let keys = format!("{}:/keys:ro", self.name("keys"));
        let port = format!("127.0.0.1:{}:7325", self.port);
        let health = format!("127.0.0.1:{}:7326", self.health_port);
        let lease = format!("--lease-ms={}", self.lease.as_millis());
        let beat = format!("--heartbeat-ms={}", (self.lease.as_millis() / 6).max(10));
        self.run(
            "coordinator",
            &[
                "--hostname",
                "coordinator",
                "--network-alias",
                "coordinator",
                "-v",
                &data,
                "-v",
                &keys,
                "-p",
                &port,
                "-p",
                &health,
                "--read-only",
                "--tmpfs",
                "/tmp",
                &image("coordinator"),
                "server",
                "--listen=0.0.0.0:7325",
                "--data-dir=/var/lib/mpctl",
                "--authkey-file=/keys/authkey",
                "--health-listen=0.0.0.0:7326",
                &lease,
                &beat,
            ],
        )
    }

    /// The node's name (its agent's name and its containers' hostname).
    pub fn node(i: usize) -> String {
        format!("node-{i}")
    }

    fn run_launcher(&self, i: usize) -> Result<()> {
        let data = format!("{}:/var/lib/mpctl-agent", self.name(&Env::node(i)));
        let host = Env::node(i);
        self.run(
            &format!("launcher-{i}"),
            &["--hostname", &host, "-v", &data, &image("agent")],
        )
    }

    fn run_agent(&self, i: usize) -> Result<()> {
        let data = format!("{}:/var/lib/mpctl-agent", self.name(&Env::node(i)));
        let keys = format!("{}:/keys:ro", self.name("keys"));
        let host = Env::node(i);
        let name = format!("--name={host}");
        self.run(
            &format!("agent-{i}"),
            &[
                "--hostname",
                &host,
                "-v",
                &data,
                "-v",
                &keys,
                "-p",
                "127.0.0.1::7326",
                "-e",
                "MPCTL_LAUNCHER=/usr/local/bin/mpctl-launcher-wait",
                "--read-only",
                "--tmpfs",
                "/tmp",
                &image("agent"),
                "agent",
                "--server=coordinator:7325",
                "--data-dir=/var/lib/mpctl-agent",
                "--authkey-file=/keys/authkey",
                "--health-listen=0.0.0.0:7326",
                &name,
                "--slots=8",
            ],
        )
    }

    /// `docker ARGS...` with the container's full name last.
    pub fn docker_on(&self, args: &[&str], container: &str) -> Result<String> {
        let name = self.name(container);
        let mut all = args.to_vec();
        all.push(&name);
        docker(&all)
    }

    /// Cuts a container off the cluster network.
    pub fn disconnect(&self, container: &str) -> Result<()> {
        docker(&[
            "network",
            "disconnect",
            &self.name("net"),
            &self.name(container),
        ])
        .map(drop)
    }

    /// Joins a container to the cluster network again.
    pub fn connect(&self, container: &str) -> Result<()> {
        docker(&[
            "network",
            "connect",
            &self.name("net"),
            &self.name(container),
        ])
        .map(drop)
    }

    /// The coordinator's address on the host.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// An SDK connection to the coordinator (TLS and the authkey, as a
    /// laptop would connect).
    /// Waits for the coordinator's health port to say SERVING first.
    pub async fn cluster(&self) -> Result<Cluster> {
        self.wait_serving("coordinator", Duration::from_secs(60))
            .await?;
        let key = AuthKey::load(&self.key_path)?;
        Ok(Cluster::connect(&self.addr(), &key, Security::Tls).await?)
    }

    /// The health listener's answer for a container (`coordinator` or
    /// `agent-i`), asked from the host with `mpctl health`'s client.
    pub async fn health(&self, container: &str) -> Result<(bool, String)> {
        let addr = if container == "coordinator" {
            format!("127.0.0.1:{}", self.health_port)
        } else {
            self.docker_on(&["port"], container).and_then(|ports| {
                ports
                    .lines()
                    .find(|l| l.starts_with("7326/tcp"))
                    .and_then(|l| l.rsplit(' ').next())
                    .map(str::to_owned)
                    .context("no published health port")
            })?
        };
        Ok(mpctl_transport::health::check(&addr, Duration::from_secs(3)).await?)
    }

    /// Waits until a container's health listener says SERVING.
    pub async fn wait_serving(&self, container: &str, timeout: Duration) -> Result<Duration> {
        let began = Instant::now();
        loop {
            match self.health(container).await {
                Ok((true, _)) => return Ok(began.elapsed()),
                other if began.elapsed() > timeout => {
                    bail!("{container} not SERVING within {timeout:?}: {other:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until a container's health listener says NOT_SERVING; returns
    /// how long that took and the reason it gave.
    pub async fn wait_not_serving(
        &self,
        container: &str,
        timeout: Duration,
    ) -> Result<(Duration, String)> {
        let began = Instant::now();
        loop {
            match self.health(container).await? {
                (false, reason) => return Ok((began.elapsed(), reason)),
                _ if began.elapsed() > timeout => {
                    bail!("{container} still SERVING after {timeout:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until every named agent is ready, as the coordinator sees it.
    pub async fn wait_agents(
        &self,
        cluster: &Cluster,
        names: &[String],
        timeout: Duration,
    ) -> Result<Duration> {
        wait_agents(cluster, names, timeout).await
    }

    /// Waits until `pred` holds for the coordinator's record of `id`.
    pub async fn wait_process(
        &self,
        cluster: &Cluster,
        id: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ProcessInfo) -> bool,
    ) -> Result<ProcessInfo> {
        let began = Instant::now();
        loop {
            if let Ok(p) = cluster.get(id).await {
                if pred(&p) {
                    return Ok(p);
                }
                if began.elapsed() > timeout {
                    bail!(
                        "process {id}: not {what} within {timeout:?} (state {:?}, exitcode {:?})",
                        p.state,
                        p.exitcode
                    );
                }
            } else if began.elapsed() > timeout {
                bail!("process {id}: coordinator unreachable for {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Launch markers on node `i`: for each token, how many times its
    /// command started and how many times it reached its end.
    pub fn markers(&self, i: usize) -> Result<HashMap<String, (usize, usize)>> {
        let name = self.name(&format!("launcher-{i}"));
        // Only sh and coreutils on the node: list, parse here.
        let listing = docker(&[
            "exec",
            &name,
            "sh",
            "-c",
            "cd /tmp/m 2>/dev/null || exit 0; for f in *; do [ -f \"$f\" ] && echo \"== $f\" && cat \"$f\"; done; true",
        ])?;
        let mut m: HashMap<String, (usize, usize)> = HashMap::new();
        let mut current: Option<String> = None;
        for line in listing.lines() {
            if let Some(token) = line.strip_prefix("== ") {
                m.entry(token.to_owned()).or_default();
                current = Some(token.to_owned());
            } else if let Some(entry) = current.as_ref().and_then(|t| m.get_mut(t)) {
                match line {
                    "start" => entry.0 += 1,
                    "end" => entry.1 += 1,
                    _ => {}
                }
            }
        }
        Ok(m)
    }

    /// Markers of every node, merged (a token started on two nodes counts
    /// both launches).
    pub fn all_markers(&self) -> Result<HashMap<String, (usize, usize)>> {
        let mut all: HashMap<String, (usize, usize)> = HashMap::new();
        for i in 1..=self.nodes {
            // A node whose launcher container is gone has no markers left.
            let Ok(m) = self.markers(i) else { continue };
            for (k, (s, e)) in m {
                let entry = all.entry(k).or_default();
                entry.0 += s;
                entry.1 += e;
            }
        }
        Ok(all)
    }
}

/// Waits until every named agent is ready, as the coordinator sees it
/// (clients have no event for that: this asks every 50 ms).
pub async fn wait_agents(
    cluster: &Cluster,
    names: &[String],
    timeout: Duration,
) -> Result<Duration> {
    let began = Instant::now();
    loop {
        if let Ok(agents) = cluster.agents().await {
            let ready = names.iter().all(|n| {
                agents
                    .iter()
                    .any(|a| &a.name == n && a.state == AgentState::Ready)
            });
            if ready {
                return Ok(began.elapsed());
            }
        }
        if began.elapsed() > timeout {
            bail!("agents {names:?} not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A shell command that records its start and end under /tmp/m/TOKEN on
/// its node, sleeps `sleep` seconds and exits with `code`.
pub fn marked(token: &str, sleep: f64, code: i32) -> Vec<String> {
    vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!(
            "mkdir -p /tmp/m; echo start >> /tmp/m/{token}; sleep {sleep}; echo end >> /tmp/m/{token}; exit {code}"
        ),
    ]
}

impl Drop for Env {
    fn drop(&mut self) {
        let res = std::mem::take(&mut *self.res());
        for c in res.containers.iter().rev() {
            // Paused containers cannot be removed until unpaused.
            let _ = docker(&["unpause", c]);
            let _ = docker(&["rm", "-f", "-v", c]);
        }
        for v in &res.volumes {
            if let Err(e) = docker(&["volume", "rm", "-f", v]) {
                eprintln!("cleanup: {e}");
            }
        }
        for n in &res.networks {
            if let Err(e) = docker(&["network", "rm", n]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// `docker compose` (v2) or `docker-compose` (v1), whichever is installed.
pub struct Compose {
    program: Vec<&'static str>,
}

impl Compose {
    pub fn find() -> Option<Compose> {
        for program in [vec!["docker", "compose"], vec!["docker-compose"]] {
            let ok = Command::new(program[0])
                .args(&program[1..])
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Some(Compose { program });
            }
        }
        None
    }

    /// `up -d` of deploy/compose.yaml as a project of its own, on a free
    /// loopback port, with a fresh key.
    pub fn up(self) -> Result<ComposeProject> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let name = format!("mpctlft{}x{:05}", std::process::id(), nanos % 100_000);
        let dir = tempfile::Builder::new().prefix("mpctl-ft-").tempdir()?;
        let key_path = dir.path().join("authkey");
        AuthKey::write_new(&key_path, false)?;
        let project = ComposeProject {
            compose: self,
            name,
            port: free_port()?,
            key_path,
            _dir: dir,
            up: true,
        };
        project.sweep_stale();
        project.run(&["up", "-d"])?;
        Ok(project)
    }
}

/// A running compose project; dropping it runs `down -v`.
pub struct ComposeProject {
    compose: Compose,
    pub name: String,
    pub port: u16,
    key_path: PathBuf,
    _dir: tempfile::TempDir,
    up: bool,
}

impl ComposeProject {
    fn run(&self, args: &[&str]) -> Result<String> {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose.yaml");
        let out = Command::new(self.compose.program[0])
            .args(&self.compose.program[1..])
            .args(["-p", &self.name, "-f", file])
            .args(args)
            .env("MPCTL_PORT", self.port.to_string())
            .env("MPCTL_AUTHKEY_FILE", &self.key_path)
            .output()
            .context("cannot run compose")?;
        if !out.status.success() {
            bail!(
                "compose {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub async fn cluster(&self) -> Result<Cluster> {
        let key = AuthKey::load(&self.key_path)?;
        Ok(Cluster::connect(&format!("127.0.0.1:{}", self.port), &key, Security::Tls).await?)
    }

    pub async fn wait_agents(
        &self,
        cluster: &Cluster,
        names: &[String],
        timeout: Duration,
    ) -> Result<Duration> {
        wait_agents(cluster, names, timeout).await
    }

    /// `down -v` of the suite's compose projects whose test process is gone
    /// (their names carry its pid: `mpctlft<pid>x...`).
    fn sweep_stale(&self) {
        let Ok(listing) = docker(&[
            "ps",
            "-a",
            "--filter",
            "label=com.docker.compose.project",
            "--format",
            "{{.Label \"com.docker.compose.project\"}}",
        ]) else {
            return;
        };
        let mut stale: Vec<&str> = listing
            .lines()
            .filter(|name| {
                name.strip_prefix("mpctlft")
                    .and_then(|rest| rest.split_once('x'))
                    .is_some_and(|(pid, _)| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            })
            .collect();
        stale.sort_unstable();
        stale.dedup();
        for name in stale {
            let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose.yaml");
            let _ = Command::new(self.compose.program[0])
                .args(&self.compose.program[1..])
                .args(["-p", name, "-f", file, "down", "-v", "--remove-orphans"])
                .env("MPCTL_AUTHKEY_FILE", &self.key_path)
                .output();
        }
    }

    /// Docker's health status of a service's container (`healthy`, ...).
    pub fn health_status(&self, service: &str) -> Result<String> {
        let project = format!("label=com.docker.compose.project={}", self.name);
        let svc = format!("label=com.docker.compose.service={service}");
        let id = docker(&["ps", "-q", "--filter", &project, "--filter", &svc])?;
        docker(&["inspect", "--format", "{{.State.Health.Status}}", &id])
    }

    /// `down -v`; returns whatever of the project is left (empty: nothing).
    pub fn down(mut self) -> Result<String> {
        self.up = false;
        self.run(&["down", "-v", "--remove-orphans"])?;
        let filter = format!("label=com.docker.compose.project={}", self.name);
        let mut left = Vec::new();
        for kind in [["ps", "-a"], ["volume", "ls"], ["network", "ls"]] {
            let out = docker(&[kind[0], kind[1], "-q", "--filter", &filter])?;
            if !out.is_empty() {
                left.push(format!("{} {}: {out}", kind[0], kind[1]));
            }
        }
        Ok(left.join("; "))
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        if self.up {
            let _ = self.run(&["down", "-v", "--remove-orphans"]);
        }
    }
}
