//! The long-running commands: `dev`, `server`, `agent`, the hidden
//! `launcher`, and `keygen`; `health` probes a daemon's health listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use mpctl::config::{config_dir, config_path, data_home, read_config_file, ConfigFile};
use mpctl::{AuthKey, Security};
use mpctl_agent::AgentConfig;
use mpctl_server::{Coordinator, CoordinatorConfig, Timings};

use super::Global;

#[derive(Args)]
pub struct LeaseArgs {
    /// An agent silent this long (ms) is lost, and so are its processes
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    lease_ms: u64,
    /// How often agents send heartbeats (ms)
    #[arg(long, default_value_t = 2_000, value_name = "MS")]
    heartbeat_ms: u64,
}

impl LeaseArgs {
    fn timings(&self) -> anyhow::Result<Timings> {
        anyhow::ensure!(
            self.heartbeat_ms >= 10 && self.heartbeat_ms * 2 <= self.lease_ms,
            "--heartbeat-ms ({}) must be at least 10 and at most half of --lease-ms ({})",
            self.heartbeat_ms,
            self.lease_ms
        );
        Ok(Timings {
            lease: Duration::from_millis(self.lease_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
        })
    }
}

#[derive(Args)]
pub struct NodeArgs {
    /// Agent name, unique in the cluster (default: the hostname)
    #[arg(long)]
    name: Option<String>,
    /// How many processes may run at once (default: the node's cores)
    #[arg(long)]
    slots: Option<u32>,
    /// A label KEY=VALUE that placement selectors can match (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Working directory of processes that name none (default: this directory)
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Default cap for each of stdout and stderr of a process, in bytes
    #[arg(long, default_value_t = mpctl_agent::config::DEFAULT_LOG_LIMIT, value_name = "BYTES")]
    log_limit: u64,
    /// Run every job as this user (a name or a uid; e.g. `nobody`), so the
    /// authkey file and the node credential are unreadable to jobs (the
    /// agent must run as root)
    #[arg(long, value_name = "USER", env = "MPCTL_RUN_AS")]
    run_as: Option<String>,
}

#[derive(Args)]
pub struct DevArgs {
    /// Coordinator address (a loopback address keeps it private to this machine)
    #[arg(long, default_value = "127.0.0.1:7325")]
    listen: SocketAddr,
    /// State directory (default: ~/.local/share/mpctl/dev)
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    lease: LeaseArgs,
    #[command(flatten)]
    pub observe: ObserveArgs,
    #[command(flatten)]
    retention: RetentionArgs,
}

#[derive(Args)]
pub struct ServerArgs {
    /// Address to listen on
    #[arg(long, default_value = "0.0.0.0:7325")]
    listen: SocketAddr,
    /// State directory (the SQLite process table lives here)
    #[arg(long, env = "MPCTL_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    lease: LeaseArgs,
    #[command(flatten)]
    retention: RetentionArgs,
    #[command(flatten)]
    health: HealthListenArgs,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

#[derive(Args)]
pub struct RetentionArgs {
    /// Keep at most N finished (stopped or failed) processes; the
    /// oldest-finished beyond it are removed, with their output on the node
    #[arg(long, default_value_t = mpctl_server::Retention::default().keep, value_name = "N")]
    retain: usize,
    /// Remove finished processes this long after they finished (e.g. 7d,
    /// 12h, 30m, 90s, 500ms)
    #[arg(long, default_value = "7d", value_parser = parse_duration, value_name = "DURATION")]
    retain_for: Duration,
}

impl RetentionArgs {
    fn retention(&self) -> mpctl_server::Retention {
        mpctl_server::Retention {
            keep: self.retain,
            max_age: self.retain_for,
        }
    }
}

/// `7d`, `12h`, `30m`, `90s`, `500ms` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| {
        format!("{s:?} is not a duration: give a number and a unit, e.g. 7d, 12h, 30m, 90s, 500ms")
    })?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[derive(Args)]
pub struct HealthListenArgs {
    /// Also serve grpc.health.v1 alone on ADDR, plaintext and unauthenticated,
    /// for probes (the kubelet's gRPC probe, `mpctl health`); nothing else is
    /// served there
    #[arg(long, env = "MPCTL_HEALTH_LISTEN", value_name = "ADDR")]
    health_listen: Option<SocketAddr>,
}

/// How a daemon shows itself to operators: metrics and log lines.
#[derive(Args)]
pub struct ObserveArgs {
    /// Also serve Prometheus metrics (OpenMetrics text) on ADDR at GET
    /// /metrics, plaintext and unauthenticated; nothing else is served there
    #[arg(long, env = "MPCTL_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines as text or as one JSON object per line
    #[arg(long, env = "MPCTL_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: crate::logging::LogFormat,
}

impl ObserveArgs {
    /// Starts the metrics listener, if asked for, on what `register` adds.
    async fn serve_metrics(
        &self,
        register: impl FnOnce(&mut mpctl_metrics::Registry),
    ) -> anyhow::Result<Option<mpctl_metrics::MetricsListener>> {
        let Some(addr) = self.metrics_listen else {
            return Ok(None);
        };
        let mut registry = mpctl_metrics::Registry::default();
        register(&mut registry);
        let listener = mpctl_metrics::serve(addr, std::sync::Arc::new(registry)).await?;
        eprintln!("mpctl: metrics on http://{}/metrics", listener.local_addr());
        Ok(Some(listener))
    }
}

#[derive(Args)]
pub struct HealthArgs {
    /// The health listener's address HOST:PORT (see --health-listen)
    addr: String,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    timeout: f64,
}

#[derive(Args)]
pub struct AgentArgs {
    /// Coordinator address HOST:PORT
    #[arg(long, env = "MPCTL_SERVER")]
    server: String,
    /// State directory (launcher, exit journal, process output)
    #[arg(long, env = "MPCTL_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    health: HealthListenArgs,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Where to write the key (default: ~/.config/mpctl/authkey)
    #[arg(long, short = 'f')]
    out: Option<PathBuf>,
    /// Replace an existing key file
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct LauncherArgs {
    #[arg(long)]
    dir: PathBuf,
    /// Do not exit when idle (a launcher that is its container's main
    /// process, outliving agent container restarts)
    #[arg(long)]
    persistent: bool,
}

fn security(g: &Global) -> Security {
    if g.plaintext || std::env::var("MPCTL_PLAINTEXT").is_ok_and(|v| !v.is_empty() && v != "0") {
        Security::PlaintextLoopback
    } else {
        Security::Tls
    }
}

fn authkey_path(g: &Global) -> anyhow::Result<PathBuf> {
    g.authkey_file
        .clone()
        .or_else(|| std::env::var_os("MPCTL_AUTHKEY_FILE").map(PathBuf::from))
        .context("no authkey: pass --authkey-file FILE or set MPCTL_AUTHKEY_FILE (create one with `mpctl keygen`)")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn agent_config(
    node: NodeArgs,
    server: String,
    authkey: AuthKey,
    security: Security,
    data_dir: PathBuf,
) -> anyhow::Result<AgentConfig> {
    let mut labels = std::collections::HashMap::new();
    for l in &node.labels {
        let (k, v) = l
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .with_context(|| format!("--label {l:?} must be KEY=VALUE"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let slots = node
        .slots
        .unwrap_or_else(mpctl_agent::config::default_slots);
    anyhow::ensure!(slots > 0, "--slots must be at least 1");
    let run_as = node
        .run_as
        .as_deref()
        .map(mpctl_agent::config::RunAsUser::resolve)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // Jobs running as another user may reach pool.sock as that uid.
    let peers = mpctl_agent::config::PeerPolicy::with_job_uids(run_as.iter().map(|u| u.uid));
    Ok(AgentConfig {
        server,
        authkey,
        security,
        name: node.name.unwrap_or_else(mpctl_agent::config::hostname),
        data_dir,
        slots,
        labels,
        launcher_cmd: mpctl_embedded::launcher_command()?,
        default_log_limit: node.log_limit,
        work_dir: match node.work_dir {
            Some(d) => d,
            None => std::env::current_dir().context("cannot read the current directory")?,
        },
        peers,
        run_as,
    })
}

pub async fn server(g: &Global, a: ServerArgs) -> anyhow::Result<i32> {
    let key_path = authkey_path(g)?;
    let coordinator = Coordinator::start(CoordinatorConfig {
        listen: a.listen,
        data_dir: a.data_dir.clone(),
        authkey: AuthKey::load(&key_path)?,
        security: security(g),
        timings: a.lease.timings()?,
        retention: a.retention.retention(),
    })
    .await?;
    eprintln!("mpctl server: listening on {}", coordinator.local_addr());
    let _metrics = a
        .observe
        .serve_metrics(|r| coordinator.register_metrics(r))
        .await?;
    let _health = match a.health.health_listen {
        Some(addr) => Some(
            mpctl_transport::health::serve(
                addr,
                &[
                    "mpctl.v1.ProcessManager",
                    "mpctl.v1.AgentService",
                    "mpctl.v1.PoolManager",
                ],
                coordinator.readiness(a.data_dir),
            )
            .await?,
        ),
        None => None,
    };
    coordinator.run_until(shutdown_signal()).await?;
    Ok(0)
}

pub async fn agent(g: &Global, a: AgentArgs) -> anyhow::Result<i32> {
    let key = AuthKey::load(&authkey_path(g)?)?;
    let config = agent_config(a.node, a.server, key, security(g), a.data_dir)?;
    eprintln!(
        "mpctl agent: {} with {} slots, coordinator {}",
        config.name, config.slots, config.server
    );
    let metrics = std::sync::Arc::new(mpctl_agent::AgentMetrics::new());
    let _metrics = a.observe.serve_metrics(|r| metrics.register(r)).await?;
    mpctl_agent::run_observed(config, a.health.health_listen, metrics, shutdown_signal()).await?;
    Ok(0)
}

/// `mpctl health ADDR`: 0 and `SERVING` when the part is ready; 1 and the
/// reason otherwise (for container health checks and exec probes).
pub async fn health(a: HealthArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(
        a.timeout.is_finite() && a.timeout > 0.0,
        "--timeout must be a positive number of seconds, not {}",
        a.timeout
    );
    let timeout = Duration::from_secs_f64(a.timeout);
    match mpctl_transport::health::check(&a.addr, timeout).await {
        Ok((true, _)) => {
            println!("SERVING");
            Ok(0)
        }
        Ok((false, reason)) => {
            println!("NOT_SERVING: {reason}");
            Ok(1)
        }
        Err(e) => {
            println!("UNREACHABLE: {e}");
            Ok(1)
        }
    }
}

pub async fn dev(g: &Global, a: DevArgs) -> anyhow::Result<i32> {
    let key_path = match authkey_path(g) {
        Ok(p) => p,
        Err(_) => config_dir().join("dev.authkey"),
    };
    let authkey = if key_path.exists() {
        AuthKey::load(&key_path)?
    } else {
        AuthKey::write_new(&key_path, false)?
    };
    let data_dir = a.data_dir.unwrap_or_else(|| data_home().join("dev"));
    let sec = security(g);
    let coordinator = Coordinator::start(CoordinatorConfig {
        listen: a.listen,
        data_dir: data_dir.join("coordinator"),
        authkey: authkey.clone(),
        security: sec,
        timings: a.lease.timings()?,
        retention: a.retention.retention(),
    })
    .await
    .with_context(|| format!("cannot start the coordinator (is another `mpctl dev` using {}? pick another with --listen)", a.listen))?;
    let addr = coordinator.local_addr();
    let config = agent_config(
        a.node,
        addr.to_string(),
        authkey,
        sec,
        data_dir.join("agent"),
    )?;
    let agent_name = config.name.clone();
    let slots = config.slots;
    // One page for both: the coordinator's families and the node's
    // (`mpctl_node_*`) never share a name.
    let agent_metrics = std::sync::Arc::new(mpctl_agent::AgentMetrics::new());
    let _metrics = a
        .observe
        .serve_metrics(|r| {
            coordinator.register_metrics(r);
            agent_metrics.register(r);
        })
        .await?;
    let (stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut agent = tokio::spawn(mpctl_agent::run_observed(
        config,
        None,
        agent_metrics,
        async {
            let _ = stopped.await;
        },
    ));
    if !coordinator
        .wait_for_agent(&agent_name, Duration::from_secs(10))
        .await
    {
        let _ = coordinator.shutdown().await;
        anyhow::bail!("the dev agent did not register within 10 s");
    }
    let cfg_path = config_path();
    let file = ConfigFile {
        addr: addr.to_string(),
        authkey_file: key_path.clone(),
        plaintext: sec == Security::PlaintextLoopback,
        dev_pid: Some(std::process::id()),
    };
    if let Some(dir) = cfg_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("cannot write {}", cfg_path.display()))?;
    eprintln!(
        "mpctl dev: coordinator on {addr}, agent {agent_name} with {slots} slots, state in {}\nmpctl dev: client config written to {} (authkey {}); other terminals' mpctl commands use this cluster. Ctrl-C stops it.",
        data_dir.display(),
        cfg_path.display(),
        key_path.display()
    );
    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        r = &mut agent => match r {
            Ok(Err(e)) => Err(anyhow::Error::from(e).context("the dev agent stopped")),
            _ => Err(anyhow::anyhow!("the dev agent stopped")),
        },
    };
    // Remove the config only if it is still ours.
    if let Ok(Some(f)) = read_config_file(&cfg_path) {
        if f.dev_pid == Some(std::process::id()) {
            let _ = std::fs::remove_file(&cfg_path);
        }
    }
    let _ = stop_agent.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
    coordinator.shutdown().await?;
    outcome.map(|()| 0)
}

pub fn keygen(a: KeygenArgs) -> anyhow::Result<i32> {
    let path = a.out.unwrap_or_else(|| config_dir().join("authkey"));
    match AuthKey::write_new(&path, a.force) {
        Ok(_) => {}
        Err(e @ mpctl_transport::TransportError::AuthKeyExists { .. }) => {
            anyhow::bail!("{e} (pass --force to replace it)")
        }
        Err(e) => return Err(e.into()),
    }
    println!("{}", path.display());
    Ok(0)
}

pub fn launcher(a: &LauncherArgs) -> i32 {
    let serve = if a.persistent {
        mpctl_agent::launcher::run_persistent
    } else {
        mpctl_agent::launcher::run
    };
    match serve(&a.dir) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mpctl launcher: {e}");
            1
        }
    }
}
