//! Case 3: notification latency, from the child's exit to `join` returning.
//!
//! mpctl: the child is this binary's hidden `stamp FIFO OUT` mode, started on
//! the dev agent. `join` is called in a task, 10 ms later the harness
//! releases the FIFO; the child writes CLOCK_MONOTONIC to OUT as the last
//! thing before exiting, and the sample is t(join returned) − stamp.
//! CPython: the target waits on an Event, puts `time.monotonic_ns()` into a
//! shared Value and returns; the parent measures after `join()`.
//!
//! In the same blocks, the same child under a plain parent blocked in
//! `waitpid` (the floor's `exit_wait`): the kernel's share (tearing the
//! child down, waking its parent) that no manager can avoid. mpctl's own
//! share is the difference of the two medians, round by round.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::report::{median, Row, Samples, Side};
use crate::{monotonic_ns, Ctx};

const CASE: &str = "3 exit→join notification";

/// A round alternates mpctl and CPython in this many blocks. CPython's
/// side (a forked interpreter's exit) moves by up to a half from one block
/// to the next on this VM, so the row needs many pairs to settle.
const BLOCKS: usize = 8;

pub async fn round(ctx: &Ctx, r: usize, s: &mut Samples) -> Result<()> {
    let n = ctx.n.notify.div_ceil(BLOCKS);
    for b in 0..BLOCKS {
        let v = block(ctx, r * BLOCKS + b, n).await?;
        s.add("mpctl/notify", r, v);
        let v = tokio::task::spawn_blocking(move || crate::floor::exit_wait(n)).await??;
        s.add("plain/notify", r, v);
        for m in ["fork", "forkserver"] {
            let v = ctx.py.run(&format!("notify:{m}"), n).await?;
            s.add(&format!("cpython/notify:{m}"), r, v);
        }
    }
    Ok(())
}

/// `n` samples of mpctl's notification latency.
async fn block(ctx: &Ctx, r: usize, n: usize) -> Result<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let fifo = ctx.work.path().join(format!("fifo-{r}-{i}"));
        let out = ctx.work.path().join(format!("stamp-{r}-{i}"));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        let argv = [&ctx.bench, std::path::Path::new("stamp"), &fifo, &out]
            .map(|p| p.to_string_lossy().into_owned());
        let mut p = mpctl::Process::new(&ctx.cluster, argv);
        p.start().await?;
        let joiner = tokio::spawn(async move {
            let r = p.join(None).await;
            let now = monotonic_ns();
            r.map(|()| (now, p.exitcode()))
        });
        // Let the Join call reach the coordinator before the child exits.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let f = fifo.clone();
        tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(f))
            .await??;
        let (joined, code) = joiner.await??;
        ensure!(code == Some(0), "stamp exited {code:?}");
        let stamp: i64 = std::fs::read_to_string(&out)?
            .trim()
            .parse()
            .context("stamp file")?;
        v.push((joined - stamp) as f64 / 1e6);
        let _ = std::fs::remove_file(&fifo);
        let _ = std::fs::remove_file(&out);
    }
    Ok(v)
}

pub fn rows(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = ["fork", "forkserver"]
        .into_iter()
        .map(|m| {
            Row::new(CASE, format!("mpctl SDK join → dev vs CPython {m}"), "ms")
                .ours(s.get("mpctl/notify"))
                .cpython(s.get(&format!("cpython/notify:{m}")))
                .blocks(BLOCKS)
        })
        .collect();
    rows.push(
        Row::new(
            CASE,
            "the same child under a plain parent's waitpid (same blocks)",
            "ms",
        )
        .ours(s.get("plain/notify")),
    );
    rows.push(
        Row::new(
            CASE,
            "mpctl's share: join − plain parent, medians per round",
            "ms",
        )
        .ours(share(s.get("mpctl/notify"), s.get("plain/notify"))),
    );
    rows
}

/// Per round, the median of `a` minus the median of `b`: one value each.
fn share(a: Side, b: Side) -> Side {
    match (a, b) {
        (Side::Measured(a), Side::Measured(b)) => Side::Measured(
            a.iter()
                .zip(&b)
                .map(|(x, y)| vec![median(x) - median(y)])
                .collect(),
        ),
        (Side::Measured(_), other) | (other, _) => other,
    }
}

const CROWD_CASE: &str = "6 exit→join in a crowd";
/// Other processes running, each with a joiner waiting, in the crowded half.
const CROWD: usize = 1000;

/// Case 6: the same exit→join latency as case 3, three times a round: with
/// nothing else running; with [`CROWD`] other processes running; and with
/// each of those also joined by a `join` waiting at the coordinator. A
/// coordinator that wakes every waiter on every change pays for the
/// joiners on each exit; one that wakes only the joiners of the process
/// that exited does not, so joined ÷ running stays near 1. Running ÷
/// nothing is what the other processes cost the node (agent, launcher).
///
/// The crowd's joins go over a connection of their own, so the measured
/// join does not share its HTTP/2 connection with a thousand others.
pub async fn crowd_round(ctx: &Ctx, r: usize, s: &mut Samples) -> Result<()> {
    let n = ctx.n.notify.div_ceil(4);
    let v = block(ctx, 100_000 + 3 * r, n).await?;
    s.add("mpctl/notify:idle", r, v);
    let others = crate::connect(&ctx.dev.addr, &ctx.dev.key).await?;
    let mut crowd = Crowd::start(&others, CROWD).await?;
    let running = block(ctx, 100_000 + 3 * r + 1, n).await;
    let joined = match running {
        Ok(v) => {
            s.add("mpctl/notify:running", r, v);
            crowd.join_all();
            // Let the Join calls reach the coordinator and wait there.
            tokio::time::sleep(Duration::from_millis(500)).await;
            block(ctx, 100_000 + 3 * r + 2, n).await
        }
        Err(e) => Err(e),
    };
    crowd.stop(&others).await?;
    s.add("mpctl/notify:joined", r, joined?);
    Ok(())
}

/// Long sleepers, then each joined by a task of its own.
struct Crowd {
    procs: Vec<mpctl::Process>,
    ids: Vec<String>,
    joins: Vec<tokio::task::JoinHandle<mpctl::Result<Option<i32>>>>,
}

impl Crowd {
    async fn start(cluster: &mpctl::Cluster, n: usize) -> Result<Crowd> {
        use futures::{StreamExt, TryStreamExt};
        let procs: Vec<mpctl::Process> = futures::stream::iter(0..n)
            .map(|_| {
                let mut p = mpctl::Process::new(cluster, ["sleep", "3600"]);
                async move { p.start().await.map(|()| p) }
            })
            .buffer_unordered(100)
            .try_collect()
            .await?;
        let ids = procs
            .iter()
            .map(|p| p.id().unwrap_or_default().to_owned())
            .collect();
        Ok(Crowd {
            procs,
            ids,
            joins: Vec::new(),
        })
    }

    /// A `join` on each, waiting.
    fn join_all(&mut self) {
        self.joins = std::mem::take(&mut self.procs)
            .into_iter()
            .map(|mut p| {
                tokio::spawn(async move {
                    p.join(None).await?;
                    Ok(p.exitcode())
                })
            })
            .collect();
    }

    async fn stop(self, cluster: &mpctl::Cluster) -> Result<()> {
        use futures::StreamExt;
        let killed: Vec<mpctl::Result<()>> = futures::stream::iter(&self.ids)
            .map(|id| async move {
                let mut p = mpctl::Process::attach(cluster, id).await?;
                p.kill().await
            })
            .buffer_unordered(100)
            .collect()
            .await;
        killed.into_iter().collect::<mpctl::Result<()>>()?;
        for j in self.joins {
            let code = j.await??;
            ensure!(code == Some(-9), "a crowd process exited {code:?}, not -9");
        }
        Ok(())
    }
}

pub fn crowd_rows(s: &Samples) -> Vec<Row> {
    vec![
        Row::new(
            CROWD_CASE,
            format!(
                "{CROWD} others running, each joined vs not joined (the CPython columns: not joined)"
            ),
            "ms",
        )
        .ours(s.get("mpctl/notify:joined"))
        .cpython(s.get("mpctl/notify:running"))
        .blocks(1),
        Row::new(
            CROWD_CASE,
            format!("{CROWD} others running, each joined vs none running (the CPython columns: none)"),
            "ms",
        )
        .ours(s.get("mpctl/notify:joined"))
        .cpython(s.get("mpctl/notify:idle"))
        .blocks(1),
    ]
}
