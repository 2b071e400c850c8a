//! `mpctl map`: a command pool. Reads inputs one per line from stdin, runs
//! one command per input on the cluster's pool workers, prints each output
//! as it completes (or in input order with `--keep-order`), and exits
//! non-zero if any input failed, with a summary of which. `--joblog`
//! records each finished input ([`super::joblog`]) so a later run can
//! `--resume` or `--resume-failed`; `--retries` reruns failed inputs and
//! `--halt` stops early, as GNU parallel's options of those names do.
//!
//! The workers are the agents' own `mpctl` executable: started as a pool
//! worker it serves [`COMMAND_FUNCTION`] ([`run_command`]), registered in
//! `main`.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mpctl::{Pool, PoolError};
use serde::{Deserialize, Serialize};

use super::joblog::{self, Entry, Joblog};
use super::run::Method;
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
    /// Rerun an input whose command failed or whose worker died, up to N
    /// more times (default: only a lost worker's input, once)
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// Write one line per finished input to FILE (GNU parallel's joblog:
    /// Seq, Host, Starttime, JobRuntime, Exitval, Signal, Input)
    #[arg(long, value_name = "FILE")]
    joblog: Option<PathBuf>,
    /// With --joblog: skip the inputs the joblog says already ran
    #[arg(long, requires = "joblog", conflicts_with = "resume_failed")]
    resume: bool,
    /// With --joblog: skip the inputs the joblog says succeeded; run the
    /// failed ones and those not run yet
    #[arg(long, requires = "joblog")]
    resume_failed: bool,
    /// Stop early, killing the inputs still running: now,fail=N (N
    /// failures), now,fail=P% (P percent of the inputs), now,success=N
    #[arg(long, value_parser = parse_halt, value_name = "now,fail=N")]
    halt: Option<Halt>,
    /// Run on this agent only
    #[arg(long)]
    node: Option<String>,
    /// Run on agents with this label KEY=VALUE (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// How workers start: spawn, or forkserver (faster worker replacement)
    #[arg(long, value_enum, default_value_t = Method::Spawn)]
    start_method: Method,
    /// The same as --start-method forkserver
    #[arg(long, hide = true)]
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
    /// Where and when it ran, for the joblog.
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub started_unix_ms: u64,
    #[serde(default)]
    pub runtime_ms: u64,
}

/// `--halt`: when to stop early.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Halt {
    Failures(usize),
    FailedPercent(f64),
    Successes(usize),
}

fn parse_halt(s: &str) -> Result<Halt, String> {
    let usage = || {
        format!("--halt {s:?}: give now,fail=N, now,fail=P% or now,success=N (soon is not offered: inputs are all handed to the pool at the start)")
    };
    let rest = s.strip_prefix("now,").ok_or_else(usage)?;
    let (what, n) = rest.split_once('=').ok_or_else(usage)?;
    match (what, n.strip_suffix('%')) {
        ("fail", Some(p)) => p
            .parse::<f64>()
            .ok()
            .filter(|p| *p > 0.0 && *p <= 100.0)
            .map(Halt::FailedPercent)
            .ok_or_else(usage),
        ("fail", None) => n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .map(Halt::Failures)
            .ok_or_else(usage),
        ("success", None) => n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .map(Halt::Successes)
            .ok_or_else(usage),
        _ => Err(usage()),
    }
}

impl Halt {
    fn reached(self, failed: usize, succeeded: usize, inputs: usize) -> bool {
        match self {
            Halt::Failures(n) => failed >= n,
            Halt::FailedPercent(p) => failed as f64 * 100.0 >= p * inputs as f64 && failed > 0,
            Halt::Successes(n) => succeeded >= n,
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    let node = mpctl::runtime::current_process().map_or_else(String::new, |p| p.node);
    let started = SystemTime::now();
    let clock = Instant::now();
    let outcome = |exitcode, error, stdout, stderr| CommandOutcome {
        exitcode,
        error,
        stdout,
        stderr,
        node: node.clone(),
        started_unix_ms: unix_ms(started),
        runtime_ms: clock.elapsed().as_millis() as u64,
    };
    let Some((program, args)) = task.argv.split_first() else {
        return outcome(None, "empty command".into(), Vec::new(), Vec::new());
    };
    match std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => outcome(
            out.status
                .code()
                .or_else(|| out.status.signal().map(|s| -s)),
            String::new(),
            cut(out.stdout),
            cut(out.stderr),
        ),
        Err(e) => outcome(
            None,
            format!("cannot run {program:?}: {e}"),
            Vec::new(),
            Vec::new(),
        ),
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
    input: String,
    why: String,
}

/// What the earlier joblog says, for `--resume` / `--resume-failed`: the
/// indices of the inputs still to run.
fn inputs_to_run(a: &MapArgs, inputs: &[String]) -> anyhow::Result<Vec<usize>> {
    let (Some(path), true) = (&a.joblog, a.resume || a.resume_failed) else {
        return Ok((0..inputs.len()).collect());
    };
    let prior = joblog::read(path)?;
    for (seq, e) in &prior {
        match inputs.get(seq.wrapping_sub(1)) {
            Some(input) if *input == e.input => {}
            found => anyhow::bail!(
                "{}: input {seq} was {:?} but is now {}: resume with the same inputs, or start a new joblog",
                path.display(),
                e.input,
                found.map_or_else(|| "missing (fewer inputs)".to_owned(), |f| format!("{f:?}"))
            ),
        }
    }
    Ok((0..inputs.len())
        .filter(|i| match prior.get(&(i + 1)) {
            None => true,
            Some(e) => a.resume_failed && !e.succeeded(),
        })
        .collect())
}

pub async fn map(g: &Global, a: MapArgs) -> anyhow::Result<i32> {
    if a.jobs == 0 {
        anyhow::bail!("-j must be at least 1");
    }
    let method = if a.forkserver {
        Method::Forkserver
    } else {
        a.start_method
    };
    let method = method.checked()?;
    let inputs: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .collect::<Result<_, _>>()
        .context("reading inputs from stdin (one per line)")?;
    let todo = inputs_to_run(&a, &inputs)?;
    let mut log = match &a.joblog {
        Some(path) => Some(Joblog::open(path, a.resume || a.resume_failed)?),
        None => None,
    };
    if todo.is_empty() {
        eprintln!("mpctl map: the joblog says every input is done; nothing to run");
        return Ok(0);
    }
    let cluster = g.cluster().await?;
    let outcome = map_inputs(&cluster, &a, method, &inputs, todo, log.as_mut()).await;
    cluster.close().await;
    outcome
}

fn progress_bar(hidden: bool, len: usize) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
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
}

/// The joblog entry for input `index` and why it failed, if it did.
fn settle(
    index: usize,
    input: &str,
    outcome: Result<CommandOutcome, PoolError>,
    bar: &ProgressBar,
) -> (Entry, Option<String>) {
    let mut entry = Entry {
        seq: index + 1,
        host: String::new(),
        start_unix: 0.0,
        runtime: 0.0,
        exitval: -1,
        signal: 0,
        input: input.to_owned(),
    };
    let why = match outcome {
        Ok(o) => {
            bar.suspend(|| {
                let _ = std::io::stdout().write_all(&o.stdout);
                let _ = std::io::stdout().flush();
                let _ = std::io::stderr().write_all(&o.stderr);
            });
            entry.host = o.node;
            entry.start_unix = o.started_unix_ms as f64 / 1000.0;
            entry.runtime = o.runtime_ms as f64 / 1000.0;
            match o.exitcode {
                Some(0) => {
                    entry.exitval = 0;
                    None
                }
                Some(c) if c < 0 => {
                    entry.signal = -c;
                    Some(format!("killed by signal {}", -c))
                }
                Some(c) => {
                    entry.exitval = c;
                    Some(format!("exit code {c}"))
                }
                None => {
                    entry.exitval = 127;
                    Some(o.error)
                }
            }
        }
        Err(e) => Some(e.to_string()),
    };
    (entry, why)
}

async fn map_inputs(
    cluster: &mpctl::Cluster,
    a: &MapArgs,
    method: mpctl::StartMethod,
    inputs: &[String],
    todo: Vec<usize>,
    mut log: Option<&mut Joblog>,
) -> anyhow::Result<i32> {
    let mut builder = Pool::builder(cluster)
        .processes(a.jobs.min(todo.len().max(1)))
        .agent_program()
        .start_method(method);
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
    let pool = builder
        .create()
        .await
        .context("creating the command pool")?;
    let bar = progress_bar(a.no_progress, todo.len());
    let total = todo.len();

    // Round 0 runs every input to do; each further round (--retries) reruns
    // the ones that failed in the one before.
    let mut failures: BTreeMap<usize, Failure> = BTreeMap::new();
    let mut succeeded = 0usize;
    let mut pending = todo;
    let mut halted = None;
    for round in 0..=a.retries.unwrap_or(0) {
        let last_round = round == a.retries.unwrap_or(0);
        let tasks: Vec<CommandTask> = pending
            .iter()
            .map(|&i| CommandTask {
                argv: argv_for(&a.command, &inputs[i]),
            })
            .collect();
        let mut results = if a.keep_order {
            pool.imap::<_, CommandOutcome, _>(COMMAND_FUNCTION, tasks, 1)
        } else {
            pool.imap_unordered::<_, CommandOutcome, _>(COMMAND_FUNCTION, tasks, 1)
        }
        .context("submitting the inputs")?;
        let mut again = Vec::new();
        // A failure is final once its input has no attempt left: not
        // waiting for this round's attempt, and not going to get another.
        let mut unsettled: HashSet<usize> = pending.iter().copied().collect();
        while let Some((k, outcome)) = results.next_indexed().await {
            let Some(&index) = pending.get(k) else {
                continue;
            };
            unsettled.remove(&index);
            let (entry, why) = settle(index, &inputs[index], outcome, &bar);
            if let Some(log) = log.as_deref_mut() {
                log.write(&entry)?;
            }
            // The bar counts inputs, not attempts: reruns do not move it.
            if round == 0 {
                bar.inc(1);
            }
            match why {
                None => {
                    failures.remove(&index);
                    succeeded += 1;
                }
                Some(why) => {
                    failures.insert(
                        index,
                        Failure {
                            input: inputs[index].clone(),
                            why,
                        },
                    );
                    if !last_round {
                        again.push(index);
                    }
                }
            }
            let final_failures = failures
                .keys()
                .filter(|i| !unsettled.contains(i) && !again.contains(i))
                .count();
            if let Some(h) = a
                .halt
                .filter(|h| h.reached(final_failures, succeeded, total))
            {
                halted = Some(h);
                break;
            }
            if !failures.is_empty() {
                bar.set_message(format!("{} failed", failures.len()));
            }
        }
        if halted.is_some() {
            break;
        }
        again.sort_unstable();
        pending = again;
        if pending.is_empty() {
            break;
        }
    }
    bar.finish_and_clear();
    if halted.is_some() {
        pool.terminate().await?;
    } else {
        pool.close()?;
    }
    let _ = pool.join().await;

    let mut err = std::io::stderr().lock();
    if let Some(h) = halted {
        let _ = writeln!(
            err,
            "mpctl map: halted ({h:?} reached, --halt); the inputs still running were killed and the rest not started"
        );
    }
    if failures.is_empty() {
        return Ok(if halted.is_some() {
            EXIT_SOME_FAILED
        } else {
            0
        });
    }
    let _ = writeln!(
        err,
        "mpctl map: {} of {} inputs failed:",
        failures.len(),
        total
    );
    for (index, f) in failures.iter().take(SUMMARY_LINES) {
        let _ = writeln!(err, "  line {} {:?}: {}", index + 1, f.input, f.why);
    }
    if failures.len() > SUMMARY_LINES {
        let _ = writeln!(err, "  ... and {} more", failures.len() - SUMMARY_LINES);
    }
    Ok(EXIT_SOME_FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halt_conditions_parse_and_trigger() {
        assert_eq!(parse_halt("now,fail=1"), Ok(Halt::Failures(1)));
        assert_eq!(parse_halt("now,fail=10%"), Ok(Halt::FailedPercent(10.0)));
        assert_eq!(parse_halt("now,success=3"), Ok(Halt::Successes(3)));
        assert!(parse_halt("soon,fail=1")
            .unwrap_err()
            .contains("soon is not offered"));
        assert!(parse_halt("now,fail=0").is_err());
        assert!(Halt::FailedPercent(10.0).reached(10, 0, 100));
        assert!(!Halt::FailedPercent(10.0).reached(9, 0, 100));
        assert!(Halt::Failures(2).reached(2, 0, 5));
    }
}
