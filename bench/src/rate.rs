//! Case 2: starts per second. Sequential: start+join one after another.
//! Concurrent: 100 started at once (`join_all`), then all joined. mpctl
//! spawns `true` through the SDK against dev; CPython runs `Process(target=noop)`.
//! Each batch is one sample; 10 batches per round, of half the case-1
//! sample counts for CPython fork and forkserver. CPython spawn is slow:
//! 4 sequential batches of a quarter of its count, spread over the round,
//! and one concurrent batch.

use std::time::Instant;

use anyhow::{ensure, Result};
use futures::future::join_all;

use crate::report::{Row, Samples};
use crate::{methods, run_true, Ctx};

const SEQ: &str = "2 sequential starts/s";
const CONC: &str = "2 concurrent starts/s (100 at once)";

/// How many of the round's batches CPython runs for `method` (sequential
/// or not): every one, except for slow spawn.
fn batches(method: &str, sequential: bool) -> usize {
    match (method, sequential) {
        ("spawn", true) => SPAWN_SEQ_BATCHES,
        ("spawn", false) => 1,
        _ => BATCHES,
    }
}

/// Whether CPython runs its `k`-th of `k` batches at mpctl's batch `b`:
/// spread evenly, at the first batch of each of the `k` blocks that
/// `Row::blocks` cuts mpctl's round into, so each pair is close in time.
fn runs_at(b: usize, k: usize) -> bool {
    (0..k).any(|i| i * BATCHES / k == b)
}

/// CPython spawn's sequential batches per round (each a quarter of its
/// case-1 count): one long batch a round gave only five noisy pairs a run.
const SPAWN_SEQ_BATCHES: usize = 4;

/// Many short batches rather than a few long ones: this machine's speed
/// moves by a third from one second to the next, on both sides at once, so
/// the ratio is taken batch by batch (`Row::blocks`) over many pairs.
const BATCHES: usize = 10;

/// mpctl's and CPython's batches alternate, so both sides are sampled over
/// the same stretch of time.
pub async fn round(ctx: &Ctx, r: usize, s: &mut Samples) -> Result<()> {
    let n = ctx.n.concurrent;
    for b in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..ctx.n.seq {
            run_true(&ctx.cluster).await?;
        }
        let rate = ctx.n.seq as f64 / t.elapsed().as_secs_f64();
        s.add("mpctl/seq", r, vec![rate]);
        for (m, n) in methods(&ctx.n) {
            if runs_at(b, batches(m, true)) {
                let v = ctx.py.run(&format!("seq:{m}"), batch(m, n)).await?;
                s.add(&format!("cpython/seq:{m}"), r, v);
            }
        }
        s.add("mpctl/concurrent", r, vec![concurrent(ctx, n).await?]);
        for (m, _) in methods(&ctx.n) {
            if runs_at(b, batches(m, false)) {
                let v = ctx.py.run(&format!("concurrent:{m}"), n).await?;
                s.add(&format!("cpython/concurrent:{m}"), r, v);
            }
        }
    }
    Ok(())
}

/// CPython's batch size for `method`, whose case-1 sample count is `n`.
fn batch(method: &str, n: usize) -> usize {
    if method == "spawn" {
        n.div_ceil(SPAWN_SEQ_BATCHES)
    } else {
        n.div_ceil(2)
    }
}

/// `n` started at once, then all joined: starts per second.
async fn concurrent(ctx: &Ctx, n: usize) -> Result<f64> {
    let mut ps: Vec<mpctl::Process> = (0..n)
        .map(|_| mpctl::Process::new(&ctx.cluster, ["true"]))
        .collect();
    let t = Instant::now();
    for started in join_all(ps.iter_mut().map(|p| p.start())).await {
        started?;
    }
    for joined in join_all(ps.iter_mut().map(|p| p.join(None))).await {
        joined?;
    }
    let elapsed = t.elapsed().as_secs_f64();
    ensure!(
        ps.iter().all(|p| p.exitcode() == Some(0)),
        "a concurrent `true` did not exit 0"
    );
    Ok(n as f64 / elapsed)
}

pub fn rows(s: &Samples) -> Vec<Row> {
    let mut rows = Vec::new();
    for (case, key) in [(SEQ, "seq"), (CONC, "concurrent")] {
        for m in ["fork", "forkserver", "spawn"] {
            rows.push(
                Row::new(
                    case,
                    format!("mpctl spawn `true` (SDK) vs CPython {m}"),
                    "1/s",
                )
                .ours(s.get(&format!("mpctl/{key}")))
                .cpython(s.get(&format!("cpython/{key}:{m}")))
                .blocks(BATCHES),
            );
        }
    }
    rows
}
