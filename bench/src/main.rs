//! `mpctl-bench`: measures mpctl against CPython's `multiprocessing` on the
//! same machine in the same run, interleaved over several rounds, next to
//! the native floor, and prints one table plus a JSON file (see README.md).
//!
//! `cargo build --release && cargo run --release -p mpctl-bench`

mod cluster;
mod compare;
mod cpython;
mod floor;
mod notify;
mod pool;
mod rate;
mod report;
mod retention;
mod scale;
mod startjoin;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use cluster::{Bare, Dev};
use cpython::Python;
use report::{Row, Samples, Side};

#[derive(Parser)]
#[command(
    name = "mpctl-bench",
    about = "Benchmark mpctl against CPython multiprocessing (build first: cargo build --release)"
)]
struct Cli {
    /// Rounds: each round runs mpctl's samples, then CPython's, for every case
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Where to write the JSON results
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// A fast smoke run: 2 rounds, few iterations, a small scale case
    #[arg(long)]
    quick: bool,
    /// Run only these cases (numbers 1–7, comma-separated); the floor always
    /// runs. Case 7 (retention: 200,000 processes) runs only when named here
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=7))]
    only: Vec<u8>,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// Compare two runs' JSON files row by row: each ratio in both, how far
    /// apart they are, and how much each side's median moved. Exits 0 when
    /// every ratio is within the tolerance, 1 when some are apart, 2 on error.
    Compare {
        /// The earlier run (a file from --out)
        a: PathBuf,
        /// The later run
        b: PathBuf,
        /// How far apart two ratios may be, in percent of the smaller
        #[arg(long, default_value_t = 15.0)]
        tolerance: f64,
    },
    /// (internal) Print the native floor as JSON, single-threaded
    #[command(hide = true)]
    Floor { n: usize },
    /// (internal) Block until FIFO is released, write CLOCK_MONOTONIC ns to OUT, exit
    #[command(hide = true)]
    Stamp { fifo: PathBuf, out: PathBuf },
}

/// Iteration counts per round.
pub struct Iterations {
    pub floor: usize,
    pub sdk: usize,
    pub cli: usize,
    pub fork: usize,
    pub forkserver: usize,
    pub spawn: usize,
    pub seq: usize,
    pub concurrent: usize,
    pub notify: usize,
    pub pool_items: usize,
    pub pool_chunk1: usize,
    pub pool_1ms: usize,
    pub pool_10ms: usize,
    pub sleepers: usize,
    pub finished: usize,
}

impl Iterations {
    fn new(quick: bool) -> Iterations {
        if quick {
            Iterations {
                floor: 100,
                sdk: 20,
                cli: 5,
                fork: 20,
                forkserver: 10,
                spawn: 5,
                seq: 20,
                concurrent: 100,
                notify: 8,
                pool_items: 100_000,
                pool_chunk1: 2_000,
                pool_1ms: 100,
                pool_10ms: 20,
                sleepers: 100,
                finished: 1_000,
            }
        } else {
            Iterations {
                floor: 500,
                sdk: 200,
                cli: 40,
                fork: 200,
                forkserver: 100,
                spawn: 32,
                seq: 100,
                concurrent: 100,
                notify: 200,
                pool_items: 1_000_000,
                pool_chunk1: 20_000,
                pool_1ms: 400,
                pool_10ms: 100,
                sleepers: 1_000,
                finished: 10_000,
            }
        }
    }
}

/// What every case needs.
pub struct Ctx {
    pub mpctl: PathBuf,
    pub bench: PathBuf,
    pub dev: Dev,
    pub bare: Bare,
    pub cluster: mpctl::Cluster,
    pub py: Python,
    pub n: Iterations,
    pub work: tempfile::TempDir,
}

/// CPython's start methods and how many samples each gets per round.
pub fn methods(n: &Iterations) -> [(&'static str, usize); 3] {
    [
        ("fork", n.fork),
        ("forkserver", n.forkserver),
        ("spawn", n.spawn),
    ]
}

pub fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// CLOCK_MONOTONIC in ns: system-wide on Linux, so comparable across processes.
pub fn monotonic_ns() -> i64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    t.tv_sec() * 1_000_000_000 + t.tv_nsec()
}

/// Starts `true` on the cluster and joins it; its exit code must be 0.
pub async fn run_true(cluster: &mpctl::Cluster) -> Result<()> {
    let mut p = mpctl::Process::new(cluster, ["true"]);
    p.start().await?;
    p.join(None).await?;
    anyhow::ensure!(p.exitcode() == Some(0), "true exited {:?}", p.exitcode());
    Ok(())
}

pub async fn connect(addr: &str, key: &Path) -> Result<mpctl::Cluster> {
    let key = mpctl::AuthKey::load(key)?;
    Ok(mpctl::Cluster::connect(addr, &key, mpctl::Security::Tls).await?)
}

fn main() -> ExitCode {
    // Started by an agent as a function target, this runs the function and
    // exits; otherwise it returns at once (and starts no thread).
    mpctl::runtime::Runtime::new()
        .function("noop", |(): ()| ())
        .function("square", |x: i64| x * x)
        .function("spin", pool::spin)
        .fallible("fork_bench", startjoin::fork_bench)
        .init();
    let cli = Cli::parse();
    let r = match cli.mode {
        Some(Mode::Floor { n }) => floor::measure(n).and_then(|(spawn, fork)| {
            let fsync = floor::fsync(n / 5)?;
            let exit_wait = floor::exit_wait(n / 10)?;
            println!(
                "{}",
                serde_json::json!({
                    "posix_spawn": spawn, "fork": fork, "fsync": fsync, "exit_wait": exit_wait
                })
            );
            Ok(())
        }),
        Some(Mode::Stamp { ref fifo, ref out }) => stamp(fifo, out),
        Some(Mode::Compare {
            ref a,
            ref b,
            tolerance,
        }) => {
            return match compare::compare(a, b, tolerance) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(_apart) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("mpctl-bench compare: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        None => run(&cli),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpctl-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The child of the notification case: waits for the harness, stamps, exits.
/// Its file is created before the wait: creating a file (an inode) after the
/// stamp would count in the window measured, for mpctl's side only (CPython's
/// child stamps into shared memory), and costs more the more files the
/// machine has just removed.
fn stamp(fifo: &Path, out: &Path) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(out)?;
    let mut buf = Vec::new();
    std::fs::File::open(fifo)?.read_to_end(&mut buf)?;
    let now = monotonic_ns();
    file.write_all(now.to_string().as_bytes())?;
    Ok(())
}

/// The `mpctl` that cargo built next to this binary (target/release/mpctl).
fn find_mpctl(bench: &Path) -> Result<PathBuf> {
    let bin = bench.with_file_name("mpctl");
    if !bin.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build --release` \
             (`cargo run -p mpctl-bench` builds only the harness). \
             The documented command is `cargo build --release && cargo run --release -p mpctl-bench`",
            bin.display()
        );
    }
    Ok(bin)
}

/// The floor, in its own single-threaded process (fork needs that), one per round.
fn floor_rounds(bench: &Path, rounds: usize, n: usize) -> Result<Samples> {
    let mut s = Samples::default();
    for r in 0..rounds {
        let out = std::process::Command::new(bench)
            .args(["floor", &n.to_string()])
            .output()
            .context("cannot run the floor")?;
        anyhow::ensure!(
            out.status.success(),
            "floor failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        for key in ["posix_spawn", "fork", "fsync", "exit_wait"] {
            let samples = v[key]
                .as_array()
                .context("floor output")?
                .iter()
                .filter_map(|x| x.as_f64())
                .collect();
            s.add(&format!("floor/{key}"), r, samples);
        }
    }
    Ok(s)
}

fn machine(cli: &Cli, rounds: usize, py: &str, busy: f64) -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if busy > 10.0 {
        eprintln!(
            "mpctl-bench: warning: the machine is not idle (CPUs {busy:.0}% busy before the \
             start); other work on it skews the ratios"
        );
    }
    vec![
        ("date", date),
        ("cores", cores.to_string()),
        ("cpu", model),
        ("kernel", kernel.trim().to_owned()),
        ("python", py.to_owned()),
        ("CPU busy before start", format!("{busy:.0}% (1 s sample)")),
        ("rounds", rounds.to_string()),
        ("quick", cli.quick.to_string()),
        (
            "cases",
            if cli.only.is_empty() {
                "all".to_owned()
            } else {
                format!("{:?}", cli.only)
            },
        ),
    ]
}

/// How busy the CPUs are before the harness starts anything: the share of
/// non-idle time over one second, from /proc/stat.
fn cpu_busy() -> f64 {
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = v.get(3)? + v.get(4)?;
        Some((v.iter().sum(), idle))
    }
    let Some((t0, i0)) = sample() else {
        return f64::NAN;
    };
    std::thread::sleep(std::time::Duration::from_secs(1));
    let Some((t1, i1)) = sample() else {
        return f64::NAN;
    };
    let total = (t1 - t0).max(1) as f64;
    100.0 * (1.0 - (i1 - i0) as f64 / total)
}

fn run(cli: &Cli) -> Result<()> {
    let started = Instant::now();
    let busy = cpu_busy();
    let bench = std::env::current_exe().context("cannot find this program's path")?;
    let mpctl = find_mpctl(&bench)?;
    let n = Iterations::new(cli.quick);
    let rounds = if cli.quick {
        cli.rounds.min(2)
    } else {
        cli.rounds
    }
    .max(1);
    eprintln!("mpctl-bench: native floor ({rounds} rounds of {})", n.floor);
    let floor = floor_rounds(&bench, rounds, n.floor)?;
    let py = Python::new()?;
    let machine = machine(cli, rounds, &py.version, busy);
    let rt = tokio::runtime::Runtime::new()?;
    let rows = rt.block_on(async {
        tokio::select! {
            r = bench_all(mpctl, bench, py, n, rounds, &cli.only) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; everything started was stopped"),
        }
    })?;
    let mut all = floor_rows(&floor);
    all.extend(rows);
    print!("{}", report::table(&machine, &all));
    let json = report::json(&machine, &all);
    std::fs::write(&cli.out, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("cannot write {}", cli.out.display()))?;
    eprintln!(
        "mpctl-bench: wrote {} in {:.0} s",
        cli.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn floor_rows(s: &Samples) -> Vec<Row> {
    vec![
        Row::new("0 native floor", "posix_spawn /bin/true + waitpid", "ms")
            .ours(s.get("floor/posix_spawn")),
        Row::new("0 native floor", "fork + _exit + waitpid", "ms").ours(s.get("floor/fork")),
        Row::new("0 native floor", "4 KiB write + fdatasync (disk)", "ms")
            .ours(s.get("floor/fsync")),
        Row::new(
            "0 native floor",
            "case 3's child: its stamp → waitpid in a plain parent",
            "ms",
        )
        .ours(s.get("floor/exit_wait")),
    ]
}

async fn bench_all(
    mpctl: PathBuf,
    bench: PathBuf,
    py: Python,
    n: Iterations,
    rounds: usize,
    only: &[u8],
) -> Result<Vec<Row>> {
    let case = |c: u8| (only.is_empty() && c != 7) || only.contains(&c);
    eprintln!("mpctl-bench: starting mpctl dev");
    let dev = Dev::start(&mpctl)?;
    let cluster = connect(&dev.addr, &dev.key).await?;
    let ctx = Ctx {
        mpctl,
        bench,
        cluster,
        dev,
        bare: Bare::new()?,
        py,
        n,
        work: tempfile::Builder::new().prefix("mpctl-bench-").tempdir()?,
    };
    let mut s = Samples::default();
    for r in 0..rounds {
        eprintln!("mpctl-bench: round {}/{rounds}", r + 1);
        if case(1) {
            canary(&mut s, r).await?;
            startjoin::round(&ctx, r, &mut s).await?;
        }
        if case(2) {
            canary(&mut s, r).await?;
            rate::round(&ctx, r, &mut s).await?;
        }
        if case(3) {
            canary(&mut s, r).await?;
            notify::round(&ctx, r, &mut s).await?;
        }
        if case(4) {
            canary(&mut s, r).await?;
            pool::round(&ctx, r, &mut s).await?;
        }
        if case(6) {
            canary(&mut s, r).await?;
            notify::crowd_round(&ctx, r, &mut s).await?;
        }
    }
    let mut rows: Vec<Row> = [
        ("canary", "fixed CPU work", "ms"),
        ("canary/wakeup", "thread wake-up round trip", "µs"),
        ("canary/memory", "dependent load over 64 MiB", "ns"),
    ]
    .into_iter()
    .map(|(key, what, unit)| {
        Row::new(
            "0 native floor",
            format!("{what} (canary, before each case)"),
            unit,
        )
        .ours(s.get(key))
    })
    .collect();
    if case(1) {
        rows.extend(startjoin::rows(&s));
    }
    if case(2) {
        rows.extend(rate::rows(&s));
    }
    if case(3) {
        rows.extend(notify::rows(&s));
    }
    if case(4) {
        rows.extend(pool::rows(&s));
    }
    if case(5) {
        eprintln!("mpctl-bench: scale (server + agent)");
        rows.extend(scale::run(&ctx).await?);
    }
    if case(6) {
        rows.extend(notify::crowd_rows(&s));
    }
    if case(7) {
        eprintln!("mpctl-bench: retention (server --retain 10000 + agent)");
        rows.extend(retention::run(&ctx).await?);
    }
    Ok(rows)
}

/// Times a fixed amount of CPU work (a xorshift loop: no memory traffic, no
/// system calls) a few times. On a steady machine it takes the same time
/// every round; its spread across rounds shows how much the machine itself
/// (other tenants of the host) moved during the run.
async fn canary(s: &mut Samples, round: usize) -> Result<()> {
    let v = tokio::task::spawn_blocking(|| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
                for _ in 0..2_000_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                }
                std::hint::black_box(x);
                ms(t)
            })
            .collect()
    })
    .await?;
    s.add("canary", round, v);
    let v = tokio::task::spawn_blocking(wakeup_round_trips).await??;
    s.add("canary/wakeup", round, v);
    let v = tokio::task::spawn_blocking(memory_loads).await?;
    s.add("canary/memory", round, v);
    Ok(())
}

/// What the CPU canary cannot see: memory. Starting a process (and most of
/// all a CPython interpreter) is page faults and cache misses, whose cost
/// moves with what other tenants of the host do to its caches and memory
/// bus while a register-only loop stays put. Five samples of 1M dependent
/// loads along a random cycle through 64 MiB, in ns per load.
fn memory_loads() -> Vec<f64> {
    static CYCLE: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let next = CYCLE.get_or_init(|| {
        // Sattolo's algorithm: a random permutation that is one cycle.
        let n = (64 << 20) / std::mem::size_of::<u32>();
        let mut v: Vec<u32> = (0..n as u32).collect();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for i in (1..n).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % i as u64) as usize);
        }
        v
    });
    const LOADS: usize = 1 << 20;
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let mut at = 0u32;
            for _ in 0..LOADS {
                at = next[at as usize];
            }
            std::hint::black_box(at);
            t.elapsed().as_secs_f64() * 1e9 / LOADS as f64
        })
        .collect()
}

/// The other thing mpctl's path is made of: wake-ups. Two threads bounce a
/// byte over a socket pair 200 times; each sample is one round trip in µs
/// (two wake-ups of a blocked thread).
fn wakeup_round_trips() -> Result<Vec<f64>> {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let (mut a, mut b) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut byte = [0u8; 1];
        while b.read(&mut byte)? == 1 {
            b.write_all(&byte)?;
        }
        Ok(())
    });
    let mut v = Vec::with_capacity(200);
    let mut byte = [0u8; 1];
    for _ in 0..200 {
        let t = Instant::now();
        a.write_all(b"x")?;
        a.read_exact(&mut byte)?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(a);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(v)
}

/// `not available: <reason>` for a feature that is not built yet.
pub fn not_available(why: &str) -> Side {
    Side::NotAvailable(why.to_owned())
}
