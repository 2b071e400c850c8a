//! Case 5: scale, on a separate `mpctl server` + `mpctl agent --slots 1100`.
//! 1,000 concurrent `sleep 600`: RSS (VmRSS) of the agent daemon, its node
//! launcher and the coordinator before and after; `List` (SDK) and `mpctl ps`
//! latency with 1,000 rows; then all killed and joined. Then 10,000 `true`
//! (at most 200 in flight) and the coordinator's RSS growth, scaled ×10 to
//! 100,000 finished processes (extrapolated). Run once; no CPython counterpart.

use std::process::Stdio;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};

use crate::cluster::{mpctl_command, rss_mib, Split};
use crate::report::{Row, Side};
use crate::{connect, ms, run_true, Ctx};

const CASE: &str = "5 scale";

fn one(v: f64) -> Side {
    Side::Measured(vec![vec![v]])
}

fn many(v: Vec<f64>) -> Side {
    Side::Measured(vec![v])
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let n = ctx.n.sleepers;
    let split = Split::start(&ctx.mpctl, 1100)?;
    let cluster = connect(&split.addr, &split.key).await?;
    run_true(&cluster).await?; // the launcher is up and the connection warm
    let launcher = split
        .launcher_pid()
        .context("cannot find the agent's launcher")?;
    let pids = [
        ("agent daemon", split.agent_pid()),
        ("launcher", launcher),
        ("coordinator", split.server_pid()),
    ];
    let before: Vec<f64> = pids
        .iter()
        .map(|(_, p)| rss_mib(*p))
        .collect::<Result<_>>()?;

    let t = Instant::now();
    let mut sleepers: Vec<mpctl::Process> = futures::stream::iter(0..n)
        .map(|_| {
            let mut p = mpctl::Process::new(&cluster, ["sleep", "600"]);
            async move { p.start().await.map(|()| p) }
        })
        .buffer_unordered(100)
        .try_collect()
        .await?;
    let start_rate = n as f64 / t.elapsed().as_secs_f64();
    let after: Vec<f64> = pids
        .iter()
        .map(|(_, p)| rss_mib(*p))
        .collect::<Result<_>>()?;

    let mut list = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let rows = cluster.list(false).await?.len();
        list.push(ms(t));
        ensure!(rows >= n, "List returned {rows} rows, expected {n}");
    }
    let mut ps = Vec::new();
    for _ in 0..7 {
        let mut cmd = tokio::process::Command::from(mpctl_command(&ctx.mpctl, split.home()));
        cmd.env("MPCTL_ADDR", &split.addr)
            .env("MPCTL_AUTHKEY_FILE", &split.key)
            .arg("ps")
            .stdin(Stdio::null());
        let t = Instant::now();
        let out = cmd.output().await?;
        ps.push(ms(t));
        ensure!(out.status.success(), "mpctl ps failed: {}", out.status);
        let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
        ensure!(lines >= n, "mpctl ps printed {lines} lines, expected {n}");
    }

    let t = Instant::now();
    futures::stream::iter(sleepers.iter_mut())
        .map(|p| async move {
            p.kill().await?;
            p.join(None).await
        })
        .buffer_unordered(100)
        .try_collect::<Vec<()>>()
        .await?;
    let kill_rate = n as f64 / t.elapsed().as_secs_f64();
    ensure!(
        sleepers.iter().all(|p| p.exitcode() == Some(-9)),
        "a killed sleeper did not report -9"
    );

    let m = ctx.n.finished;
    let coord0 = rss_mib(split.server_pid())?;
    let t = Instant::now();
    futures::stream::iter(0..m)
        .map(|_| run_true(&cluster))
        .buffer_unordered(200)
        .try_collect::<Vec<()>>()
        .await?;
    let through_rate = m as f64 / t.elapsed().as_secs_f64();
    let growth = (rss_mib(split.server_pid())? - coord0) * 100_000.0 / m as f64;
    drop(cluster);
    drop(split);

    let mut rows = Vec::new();
    for (i, (what, _)) in pids.iter().enumerate() {
        rows.push(Row::new(CASE, format!("{what} RSS, idle"), "MiB").ours(one(before[i])));
        rows.push(Row::new(CASE, format!("{what} RSS, {n} sleeping"), "MiB").ours(one(after[i])));
    }
    rows.extend([
        Row::new(
            CASE,
            format!("start {n} `sleep 600` (100 in flight)"),
            "1/s",
        )
        .ours(one(start_rate)),
        Row::new(CASE, format!("List RPC (SDK), {n} rows"), "ms").ours(many(list)),
        Row::new(CASE, format!("`mpctl ps` CLI, {n} rows"), "ms").ours(many(ps)),
        Row::new(CASE, format!("kill + join {n} (100 in flight)"), "1/s").ours(one(kill_rate)),
        Row::new(
            CASE,
            format!("{m} `true` start+join (200 in flight)"),
            "1/s",
        )
        .ours(one(through_rate)),
        Row::new(
            CASE,
            format!(
                "coordinator RSS per 100,000 finished (extrapolated ×{} from {m})",
                100_000 / m
            ),
            "MiB",
        )
        .ours(one(growth)),
    ]);
    Ok(rows)
}
