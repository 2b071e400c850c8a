//! `mpctl map`: a command pool. Reads inputs one per line from stdin, runs
//! one command per input on the cluster's pool workers, prints each output
//! as it completes (or in input order with `--keep-order`), and exits
//! non-zero if any input failed, with a summary of which.
//!
//! The workers are the agents' own `mpctl` executable: started as a pool
//! worker it serves [`COMMAND_FUNCTION`] ([`run_command`]), registered in
//! `main`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mpctl::{Pool, StartMethod};
use serde::{Deserialize, Serialize};

use super::Global;

/// The built-in function a command pool's workers run.
pub const COMMAND_FUNCTION: &str = "mpctl.command";
/// Output kept per stream of one command; the rest is cut with a note.
const MAX_OUTPUT: usize = 4 << 20;
/// Inputs listed by name in the failure summary.
const SUMMARY_LINES: usize = 20;
/// Exit status when any input failed.
pub const EXIT_SOME_FAILED: i32 = 1;

#[derive(Args)]
pub struct MapArgs {
    /// Number of workers (commands running at once)
    #[arg(short = 'j', long = "jobs", default_value_t = default_jobs())]
    jobs: usize,
    /// A worker exits after this many inputs and is replaced
    #[arg(long, value_name = "K")]
    maxtasksperchild: Option<u32>,
    /// Print outputs in input order (default: as they complete)
    #[arg(long)]
    keep_order: bool,
    /// Rerun an input whose worker died this many times (default 1)
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// Run on this agent only
    #[arg(long)]
    node: Option<String>,
    /// Run on agents with this label KEY=VALUE (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Start workers through a forkserver (faster worker replacement)
    #[arg(long)]
    forkserver: bool,
    /// No progress bar, even on a terminal
    #[arg(long)]
    no_progress: bool,
    /// The command; `{}` in it is replaced by the input (with no `{}`, the
    /// input is appended as the last argument)
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What a worker runs for one input.
#[derive(Serialize, Deserialize)]
pub struct CommandTask {
    pub argv: Vec<String>,
}

/// How one input's command ended.
#[derive(Serialize, Deserialize)]
pub struct CommandOutcome {
    /// CPython's rules: n for exit(n), −N for signal N; `None` if it could
    /// not be started (then `error` says why).
    pub exitcode: Option<i32>,
    pub error: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

fn cut(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() > MAX_OUTPUT {
        let dropped = bytes.len() - MAX_OUTPUT;
        bytes.truncate(MAX_OUTPUT);
        bytes.extend_from_slice(
            format!("\n[mpctl map: {dropped} more bytes of output dropped]\n").as_bytes(),
        );
    }
    bytes
}

/// The worker side: runs one command to completion, capturing its output.
pub fn run_command(task: CommandTask) -> CommandOutcome {
    use std::os::unix::process::ExitStatusExt;
    let Some((program, args)) = task.argv.split_first() else {
        return CommandOutcome {
            exitcode: None,
            error: "empty command".into(),
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
    };
    match std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => CommandOutcome {
            exitcode: out
                .status
                .code()
                .or_else(|| out.status.signal().map(|s| -s)),
            error: String::new(),
            stdout: cut(out.stdout),
            stderr: cut(out.stderr),
        },
        Err(e) => CommandOutcome {
            exitcode: None,
            error: format!("cannot run {program:?}: {e}"),
            stdout: Vec::new(),
            stderr: Vec::new(),
        },
    }
}

/// The command for one input: `{}` replaced, or the input appended.
fn argv_for(command: &[String], input: &str) -> Vec<String> {
    if command.iter().any(|a| a.contains("{}")) {
        command.iter().map(|a| a.replace("{}", input)).collect()
    } else {
        let mut argv = command.to_vec();
        argv.push(input.to_owned());
        argv
    }
}

struct Failure {
    line: usize,
    input: String,
    why: String,
}

pub async fn map(g: &Global, a: MapArgs) -> anyhow::Result<i32> {
    if a.jobs == 0 {
        anyhow::bail!("-j must be at least 1");
    }
    let inputs: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .collect::<Result<_, _>>()
        .context("reading inputs from stdin (one per line)")?;
    let cluster = g.cluster().await?;
    let outcome = map_inputs(&cluster, &a, &inputs).await;
    cluster.close().await;
    outcome
}

async fn map_inputs(
    cluster: &mpctl::Cluster,
    a: &MapArgs,
    inputs: &[String],
) -> anyhow::Result<i32> {
    let mut builder = Pool::builder(cluster)
        .processes(a.jobs.min(inputs.len().max(1)))
        .agent_program();
    if let Some(k) = a.maxtasksperchild {
        builder = builder.maxtasksperchild(k);
    }
    if let Some(r) = a.retries {
        builder = builder.max_retries(r);
    }
    if let Some(n) = &a.node {
        builder = builder.node(n);
    }
    for l in &a.labels {
        let (k, v) = super::run::key_value(l, "--label")?;
        builder = builder.label(&k, &v);
    }
    if a.forkserver {
        builder = builder.start_method(StartMethod::Forkserver);
    }
    let pool = builder
        .create()
        .await
        .context("creating the command pool")?;

    let bar = if a.no_progress || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let bar =
            ProgressBar::with_draw_target(Some(inputs.len() as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} inputs  {rate}  ETA {eta}  {msg}")
                .expect("a valid template")
                .with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0}/s", state.per_sec());
                    },
                ),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    };

    let tasks = inputs.iter().map(|i| CommandTask {
        argv: argv_for(&a.command, i),
    });
    let mut results = if a.keep_order {
        pool.imap::<_, CommandOutcome, _>(COMMAND_FUNCTION, tasks, 1)
    } else {
        pool.imap_unordered::<_, CommandOutcome, _>(COMMAND_FUNCTION, tasks, 1)
    }
    .context("submitting the inputs")?;

    let mut failures: Vec<Failure> = Vec::new();
    let mut done = 0usize;
    while let Some((index, outcome)) = results.next_indexed().await {
        done += 1;
        let why = match outcome {
            Ok(o) => {
                bar.suspend(|| {
                    let _ = std::io::stdout().write_all(&o.stdout);
                    let _ = std::io::stdout().flush();
                    let _ = std::io::stderr().write_all(&o.stderr);
                });
                match o.exitcode {
                    Some(0) => None,
                    Some(c) if c < 0 => Some(format!("killed by signal {}", -c)),
                    Some(c) => Some(format!("exit code {c}")),
                    None => Some(o.error),
                }
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            failures.push(Failure {
                line: index + 1,
                input: inputs.get(index).cloned().unwrap_or_default(),
                why,
            });
        }
        bar.set_position(done as u64);
        if !failures.is_empty() {
            bar.set_message(format!("{} failed", failures.len()));
        }
    }
    bar.finish_and_clear();
    pool.close()?;
    let _ = pool.join().await;

    if failures.is_empty() {
        return Ok(0);
    }
    failures.sort_by_key(|f| f.line);
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "mpctl map: {} of {} inputs failed:",
        failures.len(),
        inputs.len()
    );
    for f in failures.iter().take(SUMMARY_LINES) {
        let _ = writeln!(err, "  line {} {:?}: {}", f.line, f.input, f.why);
    }
    if failures.len() > SUMMARY_LINES {
        let _ = writeln!(err, "  ... and {} more", failures.len() - SUMMARY_LINES);
    }
    Ok(EXIT_SOME_FAILED)
}
