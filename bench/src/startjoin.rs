//! Case 1: start→join of a no-op. mpctl, through the SDK against dev
//! (client → coordinator → agent over TLS, warm connection): the command
//! `true` by spawn and by forkserver (the node's launcher forks it), the
//! function `noop` of this binary by spawn and by forkserver (warmed up: the
//! server start is not measured), and by fork from a managed parent on the
//! node (timed in the parent); and the whole `mpctl run -- true` command
//! against dev and against the embedded default. CPython:
//! `Process(target=noop)` with fork, forkserver (warmed up) and spawn.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use mpctl::{Process, StartMethod};

use crate::cluster::mpctl_command;
use crate::report::{Row, Samples};
use crate::{methods, ms, Ctx};

const CASE: &str = "1 start→join no-op";

/// A round alternates mpctl and CPython in this many blocks, so both sides
/// are sampled over the same stretch of time.
const BLOCKS: usize = 4;

/// The mpctl variants started through the SDK, by series key.
const SDK: [(&str, Target, StartMethod); 4] = [
    ("sdk", Target::True, StartMethod::Spawn),
    ("sdk-forkserver", Target::True, StartMethod::Forkserver),
    ("fn-spawn", Target::Noop, StartMethod::Spawn),
    ("fn-forkserver", Target::Noop, StartMethod::Forkserver),
];

#[derive(Clone, Copy)]
enum Target {
    /// The command `true`.
    True,
    /// The function `noop` registered by this binary.
    Noop,
}

/// Builds, starts and joins one no-op; its exit code must be 0.
async fn start_join(ctx: &Ctx, target: Target, method: StartMethod) -> Result<()> {
    let p = match target {
        Target::True => Process::new(&ctx.cluster, ["true"]),
        Target::Noop => Process::function(&ctx.cluster, "noop", &())?,
    };
    let mut p = p.start_method(method);
    p.start().await?;
    p.join(None).await?;
    ensure!(p.exitcode() == Some(0), "no-op exited {:?}", p.exitcode());
    Ok(())
}

pub async fn round(ctx: &Ctx, r: usize, s: &mut Samples) -> Result<()> {
    for (_, target, method) in SDK {
        start_join(ctx, target, method).await?; // warm-up (starts forkservers), not measured
    }
    for _ in 0..BLOCKS {
        let n = ctx.n.sdk.div_ceil(BLOCKS);
        for (key, target, method) in SDK {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                start_join(ctx, target, method).await?;
                v.push(ms(t));
            }
            s.add(&format!("mpctl/startjoin/{key}"), r, v);
        }
        s.add("mpctl/startjoin/fork", r, fork(ctx, n).await?);
        let cli = ctx.n.cli.div_ceil(BLOCKS);
        let v = cli_runs(ctx, ctx.dev.home(), cli).await?;
        s.add("mpctl/startjoin/cli-dev", r, v);
        let v = cli_runs(ctx, ctx.bare.home(), cli).await?;
        s.add("mpctl/startjoin/cli-embedded", r, v);
        for (m, n) in methods(&ctx.n) {
            let v = ctx
                .py
                .run(&format!("startjoin:{m}"), n.div_ceil(BLOCKS))
                .await?;
            s.add(&format!("cpython/startjoin:{m}"), r, v);
        }
    }
    Ok(())
}

/// Fork: a managed parent (the function `fork_bench`, started by spawn on the
/// dev agent) starts `noop` by fork `n` times and times start→join itself.
async fn fork(ctx: &Ctx, n: usize) -> Result<Vec<f64>> {
    let mut p = Process::function(&ctx.cluster, "fork_bench", &n)?;
    p.start().await?;
    p.join(None).await?;
    ensure!(
        p.exitcode() == Some(0),
        "fork_bench exited {:?} (its stderr is in the dev node's output files)",
        p.exitcode()
    );
    p.result::<Vec<f64>>()
        .context("fork_bench returned nothing")?
        .map_err(Into::into)
}

/// Runs inside the managed parent: `n` start→join of `noop` by fork (after
/// one warm-up), in ms.
pub fn fork_bench(n: usize) -> Result<Vec<f64>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cluster = mpctl::Cluster::from_env().await?;
        let mut v = Vec::with_capacity(n);
        for i in 0..=n {
            let t = Instant::now();
            let mut p = Process::function(&cluster, "noop", &())?.start_method(StartMethod::Fork);
            p.start().await?;
            p.join(None).await?;
            ensure!(
                p.exitcode() == Some(0),
                "forked noop exited {:?}",
                p.exitcode()
            );
            if i > 0 {
                v.push(ms(t));
            }
        }
        Ok(v)
    })
}

/// `mpctl run -- true` as a whole command, `n` times, with `home` as HOME
/// (after one warm-up).
async fn cli_runs(ctx: &Ctx, home: &Path, n: usize) -> Result<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..=n {
        let mut cmd = tokio::process::Command::from(mpctl_command(&ctx.mpctl, home));
        cmd.args(["run", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let t = Instant::now();
        let out = cmd.output().await?;
        let elapsed = ms(t);
        ensure!(
            out.status.success(),
            "mpctl run -- true failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if i > 0 {
            v.push(elapsed);
        }
    }
    Ok(v)
}

pub fn rows(s: &Samples) -> Vec<Row> {
    let cp = |m: &str| s.get(&format!("cpython/startjoin:{m}"));
    let ours = |k: &str| s.get(&format!("mpctl/startjoin/{k}"));
    let sdk = "mpctl spawn `true`, SDK → dev (remote)";
    let mut rows: Vec<Row> = ["fork", "forkserver", "spawn"]
        .into_iter()
        .map(|m| {
            Row::new(CASE, format!("{sdk} vs CPython {m}"), "ms")
                .ours(ours("sdk"))
                .cpython(cp(m))
                .blocks(BLOCKS)
        })
        .collect();
    for (variant, key, m) in [
        (
            "mpctl forkserver `true`, SDK → dev",
            "sdk-forkserver",
            "forkserver",
        ),
        (
            "mpctl spawn, function no-op, SDK → dev",
            "fn-spawn",
            "spawn",
        ),
        (
            "mpctl forkserver, function no-op, SDK → dev",
            "fn-forkserver",
            "forkserver",
        ),
        (
            "mpctl fork, function no-op, timed in the managed parent",
            "fork",
            "fork",
        ),
        ("`mpctl run -- true` CLI → dev", "cli-dev", "spawn"),
        ("`mpctl run -- true` CLI, embedded", "cli-embedded", "spawn"),
    ] {
        rows.push(
            Row::new(CASE, format!("{variant} vs CPython {m}"), "ms")
                .ours(ours(key))
                .cpython(cp(m))
                .blocks(BLOCKS),
        );
    }
    rows
}
