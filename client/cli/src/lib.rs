//! `mpctl-cli`: the `mpctl` command-line tool (the binary is `src/main.rs`),
//! built on the SDK. It runs on the user's machine, or as the daemons it
//! starts: `mpctl dev`, `server`, `agent`, and the node `launcher`.
//!
//! Command-line parsing and dispatch live here; each group of commands has
//! its module: [`run`] (run, submit), [`attach`], [`follow`] (what run and
//! attach share: output to the end, the exit status), [`query`] (ps,
//! inspect, join, wait, terminate, kill, logs, agents), [`map`] (command
//! pools, with [`joblog`]), [`context`] (named clusters), [`daemons`] (dev,
//! server, agent, keygen, launcher, health), with [`output`] for tables and
//! JSON, `logging` for the daemons' log lines (text or JSON) and `telemetry`
//! for trace export. This crate alone holds clap, indicatif, anyhow and
//! tracing-subscriber; the embedded cluster (`mpctl-embedded`) and the
//! daemons (`mpctl-server`, `mpctl-agent`) are linked here and, for the
//! embedded cluster, through the SDK's `embedded` feature.

#![forbid(unsafe_code)]

mod attach;
mod context;
mod daemons;
mod follow;
mod joblog;
mod logging;
pub mod map;
mod output;
mod query;
mod run;
mod telemetry;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mpctl::{Cluster, ClusterConfig, Overrides};

// The exit statuses (README, "Exit statuses"): 0 and a process's own code
// (run, attach, join), 128+N for its signal N, and these for mpctl's own
// outcomes, the same for every command.

/// mpctl itself could not do what was asked: bad flags, an unreachable or
/// unauthenticated cluster, an unknown id, a signal not delivered, a lost
/// process. Kept apart from processes' codes, as `docker run` does.
pub const EXIT_MPCTL: i32 = 125;
/// The process could not be started for another reason than a missing
/// program (permission denied, no such working directory, no slot can fit).
pub const EXIT_CANNOT_INVOKE: i32 = 126;
/// The process could not be started: its program was not found.
pub const EXIT_START_ERROR: i32 = 127;
/// `join` / `wait`: the timeout passed first.
pub const EXIT_TIMEOUT: i32 = 124;

/// 127 when a start error says the program does not exist (the node's
/// `No such file or directory (os error 2)`), 126 for any other.
pub fn start_error_status(message: &str) -> i32 {
    if message.ends_with("(os error 2)") {
        EXIT_START_ERROR
    } else {
        EXIT_CANNOT_INVOKE
    }
}

#[derive(Parser)]
#[command(
    name = "mpctl",
    version,
    about = "Python multiprocessing's process model across a cluster",
    long_about = "Start, join, signal and wait on processes anywhere in a cluster.\n\nWith nothing configured, commands use an embedded coordinator and agent on this machine; `mpctl dev` runs a shared local cluster; MPCTL_ADDR and MPCTL_AUTHKEY_FILE (or --addr and --authkey-file) name a remote one."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// Use this named cluster (`mpctl context list`) [env: MPCTL_CONTEXT]
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Coordinator address HOST:PORT [env: MPCTL_ADDR]
    #[arg(long, global = true)]
    pub addr: Option<String>,
    /// File holding the cluster's authkey [env: MPCTL_AUTHKEY_FILE]
    #[arg(long, global = true)]
    pub authkey_file: Option<PathBuf>,
    /// Plain TCP without TLS (loopback addresses only) [env: MPCTL_PLAINTEXT]
    #[arg(long, global = true)]
    pub plaintext: bool,
}

#[derive(Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start a process, stream its output, exit with its exit code (128+N for signal N)
    Run(run::RunArgs),
    /// Start a process and print its id
    Submit(run::RunArgs),
    /// List processes (running ones; -a for all)
    Ps(query::PsArgs),
    /// Show processes in detail
    Inspect(query::IdsArgs),
    /// Wait for a process to stop; exit with its exit code (124 on timeout)
    Join(query::JoinArgs),
    /// Wait until any (or --all) of the processes stop; print the ready ones
    Wait(query::WaitArgs),
    /// Send SIGTERM to processes
    Terminate(query::SignalArgs),
    /// Send SIGKILL to processes
    Kill(query::SignalArgs),
    /// Print the output of a process
    Logs(query::LogsArgs),
    /// Stream a process's output from the start, then exit with its exit status, as `run` would have
    Attach(attach::AttachArgs),
    /// Run one command per input line on a pool of workers (a command pool)
    Map(map::MapArgs),
    /// List the cluster's agents (or `agents forget NAME`)
    Agents(query::AgentsArgs),
    /// Named clusters: add, use, unset, list, remove
    #[command(subcommand)]
    Context(context::ContextCommand),
    /// Print a shell completion script: `mpctl completions bash > /etc/bash_completion.d/mpctl`
    Completions(CompletionsArgs),
    /// Run a coordinator and an agent in the foreground for this machine
    Dev(daemons::DevArgs),
    /// Run a coordinator
    Server(daemons::ServerArgs),
    /// Run a node agent
    Agent(daemons::AgentArgs),
    /// Write a new authkey file (mode 0600)
    Keygen(daemons::KeygenArgs),
    /// Ask a daemon's health listener whether it is ready (exit 0 when SERVING)
    Health(daemons::HealthArgs),
    /// The node launcher (started by the agent; not for direct use)
    #[command(hide = true)]
    Launcher(daemons::LauncherArgs),
}

#[derive(Args)]
pub struct CompletionsArgs {
    shell: clap_complete::Shell,
}

impl Global {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            context: self.context.clone(),
            addr: self.addr.clone(),
            authkey_file: self.authkey_file.clone(),
            plaintext: self.plaintext,
        }
    }

    pub async fn cluster(&self) -> anyhow::Result<Cluster> {
        let config = ClusterConfig::resolve(&self.overrides())?;
        Ok(Cluster::open(config).await?)
    }
}

/// Parses, runs, and returns the process exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and --version print and succeed; a usage error is
            // mpctl's own failure (125), never a process's exit code 2.
            let _ = e.print();
            return if e.use_stderr() { EXIT_MPCTL } else { 0 };
        }
    };
    if let Command::Launcher(args) = &cli.command {
        // Single-threaded by design: no runtime, no other threads.
        return daemons::launcher(args);
    }
    let (daemon, log_format) = match &cli.command {
        Command::Dev(daemons::DevArgs { observe, .. })
        | Command::Server(daemons::ServerArgs { observe, .. })
        | Command::Agent(daemons::AgentArgs { observe, .. }) => (true, observe.log_format),
        _ => (false, logging::LogFormat::Text),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mpctl: cannot start the async runtime: {e}");
            return EXIT_MPCTL;
        }
    };
    // The trace exporter's connection lives on this runtime.
    let traces = {
        let _enter = runtime.enter();
        telemetry::init(
            log_format,
            if daemon { "info" } else { "warn" },
            telemetry::service_name(&cli.command),
        )
    };
    let cx = if daemon {
        opentelemetry::Context::new()
    } else {
        telemetry::command_context(command_name(&cli.command))
    };
    let code = runtime.block_on(opentelemetry::context::FutureExt::with_context(
        async move {
            match dispatch(cli).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("mpctl: {}", report(&e));
                    EXIT_MPCTL
                }
            }
        },
        cx,
    ));
    traces.shutdown();
    code
}

/// The subcommand's name, for its root span.
fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Run(_) => "run",
        Command::Submit(_) => "submit",
        Command::Ps(_) => "ps",
        Command::Inspect(_) => "inspect",
        Command::Join(_) => "join",
        Command::Wait(_) => "wait",
        Command::Terminate(_) => "terminate",
        Command::Kill(_) => "kill",
        Command::Logs(_) => "logs",
        Command::Attach(_) => "attach",
        Command::Context(_) => "context",
        Command::Completions(_) => "completions",
        Command::Map(_) => "map",
        Command::Agents(_) => "agents",
        Command::Dev(_) => "dev",
        Command::Server(_) => "server",
        Command::Agent(_) => "agent",
        Command::Keygen(_) => "keygen",
        Command::Health(_) => "health",
        Command::Launcher(_) => "launcher",
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let g = cli.global;
    match cli.command {
        Command::Run(a) => run::run(&g, a).await,
        Command::Submit(a) => run::submit(&g, a).await,
        Command::Ps(a) => query::ps(&g, a).await,
        Command::Inspect(a) => query::inspect(&g, a).await,
        Command::Join(a) => query::join(&g, a).await,
        Command::Wait(a) => query::wait(&g, a).await,
        Command::Terminate(a) => query::signal(&g, a, false).await,
        Command::Kill(a) => query::signal(&g, a, true).await,
        Command::Logs(a) => query::logs(&g, a).await,
        Command::Attach(a) => attach::attach(&g, a).await,
        Command::Context(c) => context::context(&g, c),
        Command::Completions(a) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(a.shell, &mut cmd, "mpctl", &mut std::io::stdout());
            Ok(0)
        }
        Command::Map(a) => map::map(&g, a).await,
        Command::Agents(a) => query::agents(&g, a).await,
        Command::Dev(a) => daemons::dev(&g, a).await,
        Command::Server(a) => daemons::server(&g, a).await,
        Command::Agent(a) => daemons::agent(&g, a).await,
        Command::Keygen(a) => daemons::keygen(a),
        Command::Health(a) => daemons::health(a).await,
        Command::Launcher(_) => unreachable!("handled before the runtime starts"),
    }
}

/// The error and its causes on one line, each cause once: many of our errors
/// already name their cause in their own message.
fn report(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// The exit status a shell expects for a process's exit code.
pub fn exit_status(exitcode: i32) -> i32 {
    if exitcode < 0 {
        128 + (-exitcode).min(127)
    } else {
        exitcode & 0xff
    }
}
