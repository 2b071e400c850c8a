//! Commands on existing processes and agents: ps, inspect, join, wait,
//! terminate, kill, logs, agents.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use mpctl::{AgentState, Error, LogStream, Process, ProcessInfo, ProcessState};
use serde_json::Value;

use super::output::{
    age, agent_json, command_text, exitcode_text, print_json, process_json, table,
};
use super::{exit_status, start_error_status, Format, Global, EXIT_MPCTL, EXIT_TIMEOUT};

#[derive(Args)]
pub struct FormatArgs {
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Format,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentsArgs {
    #[command(subcommand)]
    command: Option<AgentsCommand>,
    #[command(flatten)]
    format: FormatArgs,
}

#[derive(clap::Subcommand)]
enum AgentsCommand {
    /// Clear the node credential of an agent that is not connected, so the
    /// next agent registering with that name is issued a new one (when a
    /// node lost its data directory)
    Forget {
        /// The agent's name
        name: String,
    },
}

#[derive(Args)]
pub struct PsArgs {
    /// Show all processes, stopped ones too
    #[arg(short, long)]
    all: bool,
    /// Only processes on this agent
    #[arg(long)]
    node: Option<String>,
    /// At most N rows (the oldest first)
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    #[command(flatten)]
    format: FormatArgs,
}

#[derive(Args)]
pub struct IdsArgs {
    #[arg(required = true, value_name = "ID")]
    ids: Vec<String>,
    #[command(flatten)]
    format: FormatArgs,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s} is not a timeout in seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Args)]
pub struct JoinArgs {
    id: String,
    /// Give up after this many seconds (exit status 124)
    #[arg(long, value_parser = parse_secs, value_name = "SECONDS")]
    timeout: Option<Duration>,
    #[command(flatten)]
    format: FormatArgs,
}

#[derive(Args)]
pub struct WaitArgs {
    #[arg(required = true, value_name = "ID")]
    ids: Vec<String>,
    /// Wait for all of them instead of any
    #[arg(long)]
    all: bool,
    /// Give up after this many seconds (exit status 124)
    #[arg(long, value_parser = parse_secs, value_name = "SECONDS")]
    timeout: Option<Duration>,
    #[command(flatten)]
    format: FormatArgs,
}

#[derive(Args)]
pub struct SignalArgs {
    #[arg(required = true, value_name = "ID")]
    ids: Vec<String>,
    /// Signal the whole process tree (its process group), not only the process
    #[arg(long)]
    tree: bool,
}

#[derive(Args)]
pub struct LogsArgs {
    id: String,
    /// Keep streaming until the process stops
    #[arg(short, long)]
    follow: bool,
    /// Only stdout
    #[arg(long, conflicts_with = "stderr")]
    stdout: bool,
    /// Only stderr
    #[arg(long)]
    stderr: bool,
}

fn process_row(p: &ProcessInfo) -> Vec<String> {
    vec![
        p.id.clone(),
        p.name.clone(),
        if p.node.is_empty() {
            "-".into()
        } else {
            p.node.clone()
        },
        p.pid.map_or_else(|| "-".into(), |pid| pid.to_string()),
        p.state.as_str().into(),
        exitcode_text(p),
        age(p.created),
        command_text(&p.argv, p.argv_omitted_bytes),
    ]
}

pub async fn ps(g: &Global, a: PsArgs) -> anyhow::Result<i32> {
    let cluster = g.cluster().await?;
    // Every page, oldest first, up to --limit.
    let list = cluster
        .list_all(a.node.as_deref().unwrap_or_default(), a.all, a.limit)
        .await;
    cluster.close().await;
    let list = list?;
    match a.format.output {
        Format::Json => print_json(&Value::Array(list.iter().map(process_json).collect())),
        Format::Table => table(
            &[
                "ID", "NAME", "NODE", "PID", "STATE", "EXITCODE", "AGE", "COMMAND",
            ],
            &list.iter().map(process_row).collect::<Vec<_>>(),
        ),
    }
    Ok(0)
}

pub async fn inspect(g: &Global, a: IdsArgs) -> anyhow::Result<i32> {
    let cluster = g.cluster().await?;
    let mut found = Vec::new();
    let mut missing = 0;
    for id in &a.ids {
        match cluster.get(id).await {
            Ok(p) => found.push(p),
            Err(e @ (Error::NotFound { .. } | Error::Removed { .. })) => {
                eprintln!("mpctl: {e}");
                missing += 1;
            }
            Err(e) => {
                cluster.close().await;
                return Err(e.into());
            }
        }
    }
    cluster.close().await;
    match a.format.output {
        Format::Json => print_json(&Value::Array(found.iter().map(process_json).collect())),
        Format::Table => {
            for p in &found {
                let v = process_json(p);
                for (k, v) in v.as_object().expect("process_json builds an object") {
                    let text = match v {
                        Value::Null => "-".to_owned(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    println!("{k:<16}{text}");
                }
                println!();
            }
        }
    }
    Ok(if missing > 0 { EXIT_MPCTL } else { 0 })
}

/// The exit status that reports a settled process the way `run` does.
fn settled_status(p: &ProcessInfo) -> i32 {
    match p.state {
        ProcessState::Stopped => exit_status(p.exitcode.unwrap_or(0)),
        ProcessState::Failed => start_error_status(p.start_error.as_deref().unwrap_or_default()),
        _ => EXIT_MPCTL,
    }
}

fn describe(p: &ProcessInfo) -> String {
    match p.state {
        ProcessState::Stopped => format!("{} stopped, exitcode {}", p.id, exitcode_text(p)),
        ProcessState::Failed => format!(
            "{} failed to start: {}",
            p.id,
            p.start_error.as_deref().unwrap_or_default()
        ),
        ProcessState::Lost => format!("{} lost with its node {}", p.id, p.node),
        _ => format!("{} {}", p.id, p.state),
    }
}

pub async fn join(g: &Global, a: JoinArgs) -> anyhow::Result<i32> {
    let cluster = g.cluster().await?;
    let result = async {
        let mut p = Process::attach(&cluster, &a.id).await?;
        p.join(a.timeout).await?;
        Ok::<_, Error>(p.info().expect("attached").clone())
    }
    .await;
    cluster.close().await;
    let info = result?;
    let settled = info.state.is_settled();
    match a.format.output {
        Format::Json => print_json(&process_json(&info)),
        Format::Table if settled => println!("{}", describe(&info)),
        Format::Table => println!("{} still {} after the timeout", info.id, info.state),
    }
    Ok(if settled {
        settled_status(&info)
    } else {
        EXIT_TIMEOUT
    })
}

pub async fn wait(g: &Global, a: WaitArgs) -> anyhow::Result<i32> {
    let cluster = g.cluster().await?;
    let result = async {
        let mut sentinels = Vec::new();
        for id in &a.ids {
            sentinels.push(Process::attach(&cluster, id).await?.sentinel()?);
        }
        let ready = if a.all {
            mpctl::wait_all(&sentinels, a.timeout).await?
        } else {
            mpctl::wait(&sentinels, a.timeout).await?
        };
        let mut infos = Vec::new();
        for s in &ready {
            infos.push(cluster.get(s.id()).await?);
        }
        Ok::<_, Error>(infos)
    }
    .await;
    cluster.close().await;
    let ready = result?;
    match a.format.output {
        Format::Json => print_json(&Value::Array(ready.iter().map(process_json).collect())),
        Format::Table => {
            for p in &ready {
                println!("{}", describe(p));
            }
        }
    }
    let done = if a.all {
        ready.len() == a.ids.len()
    } else {
        !ready.is_empty()
    };
    Ok(if done { 0 } else { EXIT_TIMEOUT })
}

pub async fn signal(g: &Global, a: SignalArgs, kill: bool) -> anyhow::Result<i32> {
    let cluster = g.cluster().await?;
    let mut failures = 0;
    for id in &a.ids {
        let outcome = async {
            let mut p = Process::attach(&cluster, id).await?;
            match (kill, a.tree) {
                (false, false) => p.terminate().await,
                (true, false) => p.kill().await,
                (k, true) => p.signal_tree(k).await,
            }
        }
        .await;
        match outcome {
            Ok(()) => println!("{id}"),
            Err(e) => {
                eprintln!("mpctl: {e}");
                failures += 1;
            }
        }
    }
    cluster.close().await;
    Ok(if failures > 0 { EXIT_MPCTL } else { 0 })
}

pub async fn logs(g: &Global, a: LogsArgs) -> anyhow::Result<i32> {
    let cluster = g.cluster().await?;
    let which = if a.stdout {
        LogStream::Stdout
    } else if a.stderr {
        LogStream::Stderr
    } else {
        LogStream::Both
    };
    let result = async {
        let p = Process::attach(&cluster, &a.id).await?;
        let mut stream = p.logs(which, a.follow).await?;
        while let Some(chunk) = stream.message().await? {
            let written = if chunk.stream == LogStream::Stderr {
                std::io::stderr().write_all(&chunk.data)
            } else {
                let mut out = std::io::stdout();
                out.write_all(&chunk.data).and_then(|_| out.flush())
            };
            if written.is_err() {
                break;
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    cluster.close().await;
    result?;
    Ok(0)
}

pub async fn agents(g: &Global, a: AgentsArgs) -> anyhow::Result<i32> {
    if let Some(AgentsCommand::Forget { name }) = a.command {
        let cluster = g.cluster().await?;
        let had = cluster.forget_agent(&name).await;
        cluster.close().await;
        if had? {
            println!("forgot the node credential of {name}; the next agent named {name} is issued a new one");
        } else {
            println!("{name} had no node credential; the next agent named {name} is issued one");
        }
        return Ok(0);
    }
    let a = a.format;
    let cluster = g.cluster().await?;
    let agents = cluster.agents().await;
    cluster.close().await;
    let agents = agents?;
    match a.output {
        Format::Json => print_json(&Value::Array(agents.iter().map(agent_json).collect())),
        Format::Table => table(
            &[
                "NAME",
                "STATE",
                "SLOTS",
                "USED",
                "RUNNING",
                "LABELS",
                "LAST SEEN",
                "HOST",
            ],
            &agents
                .iter()
                .map(|x| {
                    let mut labels: Vec<String> =
                        x.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    labels.sort();
                    vec![
                        x.name.clone(),
                        match (&x.degraded, x.state) {
                            (None, s) => s.as_str().into(),
                            (Some(_), AgentState::Ready) => "degraded".into(),
                            (Some(_), s) => format!("{s},degraded"),
                        },
                        x.slots.to_string(),
                        x.used.to_string(),
                        x.running.to_string(),
                        if labels.is_empty() {
                            "-".into()
                        } else {
                            labels.join(",")
                        },
                        age(x.last_seen),
                        x.hostname.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    if a.output == Format::Table {
        for x in &agents {
            if let Some(reason) = &x.degraded {
                println!("{} is degraded: {reason}", x.name);
            }
        }
    }
    Ok(0)
}
