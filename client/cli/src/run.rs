//! `mpctl run` and `mpctl submit`.

use anyhow::Context;
use clap::{Args, ValueEnum};
use mpctl::{Error, LogOffsets, Process, ProcessState, StartMethod};

use super::output::{print_json, process_json};
use super::{follow, start_error_status, Format, Global};

#[derive(Args)]
pub struct RunArgs {
    /// Process name (default Process-N)
    #[arg(long)]
    name: Option<String>,
    /// Environment variable KEY=VALUE, or KEY to pass this shell's value (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Working directory on the node (default: the agent's)
    #[arg(long)]
    cwd: Option<String>,
    /// Run on this agent only
    #[arg(long)]
    node: Option<String>,
    /// Run on an agent with this label KEY=VALUE (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Cap for each of stdout and stderr on the node, in bytes
    #[arg(long, value_name = "BYTES")]
    log_limit: Option<u64>,
    /// Memory limit (address space), e.g. 512M or 2G
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// CPU-time limit in seconds (then SIGXCPU, exit code -24)
    #[arg(long, value_name = "SECONDS")]
    cpu_seconds: Option<u64>,
    /// Idempotency key: a start retried with the same key never runs twice
    #[arg(long)]
    request_id: Option<String>,
    /// How the node starts it (CPython's start methods); fork needs the
    /// parent on the node, so from here it is spawn or forkserver
    #[arg(long, value_enum, default_value_t = Method::Spawn)]
    start_method: Method,
    /// `run` only: start it, print its id and return (as `submit` does)
    #[arg(short = 'd', long)]
    detach: bool,
    /// Output format of the final process record
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Format,
    /// Run the function NAME registered in the program COMMAND (a function
    /// target) instead of running COMMAND itself
    #[arg(long, value_name = "NAME")]
    function: Option<String>,
    /// The function's argument, as JSON (with --function)
    #[arg(
        long,
        value_name = "JSON",
        default_value = "null",
        requires = "function"
    )]
    args: String,
    /// The command and its arguments (with --function: the program)
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// `--start-method` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    Spawn,
    Forkserver,
    Fork,
}

impl Method {
    /// The SDK's method; fork is refused here, before anything is sent: a
    /// forked child is a copy of its parent, which is not on a node.
    pub fn checked(self) -> anyhow::Result<StartMethod> {
        match self {
            Method::Spawn => Ok(StartMethod::Spawn),
            Method::Forkserver => Ok(StartMethod::Forkserver),
            Method::Fork => anyhow::bail!(
                "--start-method fork: a forked child is a copy of its parent, and this mpctl is not a process on a node; use --start-method spawn or forkserver"
            ),
        }
    }
}

/// `512M`, `2G`, `1048576`: bytes with an optional K/M/G suffix (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size: give bytes, or a number with K, M or G"))
}

pub(super) fn key_value(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => anyhow::bail!("{what} {s:?} must be KEY=VALUE"),
    }
}

fn build(cluster: &mpctl::Cluster, a: &RunArgs) -> anyhow::Result<Process> {
    let mut p = match &a.function {
        None => Process::new(cluster, a.command.iter().cloned()),
        Some(f) => {
            if a.command.len() != 1 {
                anyhow::bail!("--function {f}: give the program alone after --, without arguments");
            }
            let args: serde_json::Value = serde_json::from_str(&a.args)
                .with_context(|| format!("--args {:?} is not JSON", a.args))?;
            Process::function(cluster, f, &args)?.program(&a.command[0])
        }
    };
    p = p.start_method(a.start_method.checked()?);
    if let Some(n) = &a.name {
        p = p.with_name(n);
    }
    for e in &a.env {
        let (k, v) = match e.split_once('=') {
            Some(kv) => (kv.0.to_owned(), kv.1.to_owned()),
            None => (
                e.clone(),
                std::env::var(e).with_context(|| {
                    format!("-e {e}: no such variable in this shell (use -e {e}=VALUE)")
                })?,
            ),
        };
        p = p.env(k, v);
    }
    if let Some(c) = &a.cwd {
        p = p.cwd(c);
    }
    if let Some(n) = &a.node {
        p = p.node(n);
    }
    for l in &a.labels {
        let (k, v) = key_value(l, "--label")?;
        p = p.label(k, v);
    }
    if let Some(l) = a.log_limit {
        p = p.log_limit(l);
    }
    if let Some(m) = a.memory {
        p = p.memory_limit(m);
    }
    if let Some(c) = a.cpu_seconds {
        p = p.cpu_limit(c);
    }
    if let Some(r) = &a.request_id {
        p = p.request_id(r);
    }
    Ok(p)
}

/// Starts; on a start error prints it and returns the exit status to use.
async fn start(p: &mut Process) -> anyhow::Result<Option<i32>> {
    match p.start().await {
        Ok(()) => Ok(None),
        Err(Error::Start { message }) => {
            eprintln!("mpctl: start error: {message}");
            Ok(Some(start_error_status(&message)))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn submit(g: &Global, a: RunArgs) -> anyhow::Result<i32> {
    a.start_method.checked()?;
    let cluster = g.cluster().await?;
    let mut p = build(&cluster, &a)?;
    let result = start(&mut p).await;
    cluster.close().await;
    if let Some(code) = result? {
        return Ok(code);
    }
    match a.output {
        Format::Json => print_json(&process_json(p.info().expect("started"))),
        Format::Table => println!("{}", p.id().unwrap_or_default()),
    }
    Ok(0)
}

pub async fn run(g: &Global, a: RunArgs) -> anyhow::Result<i32> {
    if a.detach {
        return submit(g, a).await;
    }
    a.start_method.checked()?;
    let cluster = g.cluster().await?;
    let result = run_on(&cluster, &a).await;
    cluster.close().await;
    result
}

async fn run_on(cluster: &mpctl::Cluster, a: &RunArgs) -> anyhow::Result<i32> {
    let mut p = build(cluster, a)?;
    if let Some(code) = start(&mut p).await? {
        return Ok(code);
    }
    if p.state() == Some(ProcessState::Queued) {
        eprintln!(
            "mpctl: {} is queued until a matching agent has a free slot",
            p.id().unwrap_or_default()
        );
    }
    follow::to_the_end(&mut p, LogOffsets::default(), a.output).await
}
