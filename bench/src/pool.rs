//! Case 4: the Pool, `Pool(2)` on both sides: tiny-task throughput (x*x)
//! with the default chunksize and with chunksize 1, and elapsed ÷ ideal for
//! 1 ms and 10 ms CPU-bound tasks on 2 workers (chunksize 1; ideal = N ×
//! task ÷ 2). mpctl's pool runs against dev (one coordinator, one agent,
//! TLS), its workers being this binary (`square`, `spin`); each round
//! creates a pool and warms both workers up first, as the CPython script does.

use std::time::Instant;

use anyhow::{ensure, Result};
use mpctl::Pool;

use crate::report::{Row, Samples};
use crate::Ctx;

const CASE: &str = "4 Pool(2)";

/// CPU-bound for `seconds`, as the CPython script's `spin`.
pub fn spin(seconds: f64) {
    let end = Instant::now() + std::time::Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

async fn ours(ctx: &Ctx, case: &str, n: usize) -> Result<f64> {
    let pool = Pool::builder(&ctx.cluster).processes(2).create().await?;
    let warm: Vec<i64> = pool.map("square", 0..1000i64, None).await?;
    ensure!(warm.len() == 1000, "warm-up map returned {}", warm.len());
    let t = Instant::now();
    let value = match case {
        "pool-default" | "pool-chunk1" => {
            let chunksize = (case == "pool-chunk1").then_some(1);
            let v: Vec<i64> = pool.map("square", 0..n as i64, chunksize).await?;
            ensure!(
                v.len() == n && v[n - 1] == (n as i64 - 1).pow(2),
                "wrong results"
            );
            n as f64 / t.elapsed().as_secs_f64()
        }
        _ => {
            let task = if case == "pool-1ms" { 0.001 } else { 0.010 };
            let v: Vec<()> = pool.map("spin", vec![task; n], Some(1)).await?;
            ensure!(v.len() == n, "wrong result count");
            t.elapsed().as_secs_f64() / (n as f64 * task / 2.0)
        }
    };
    pool.close()?;
    pool.join().await?;
    Ok(value)
}

/// Samples per round of the throughput cases, alternating mpctl and
/// CPython: one map of tiny tasks lasts only 0.1–0.5 s, so one sample a
/// round was at the mercy of a single disturbance, and samples on both
/// sides move by a third from one to the next. The overhead cases are long
/// enough with one.
const THROUGHPUT_BLOCKS: usize = 8;

pub async fn round(ctx: &Ctx, r: usize, s: &mut Samples) -> Result<()> {
    for (case, n, blocks) in [
        ("pool-default", ctx.n.pool_items, THROUGHPUT_BLOCKS),
        ("pool-chunk1", ctx.n.pool_chunk1, THROUGHPUT_BLOCKS),
        ("pool-1ms", ctx.n.pool_1ms, 1),
        ("pool-10ms", ctx.n.pool_10ms, 1),
    ] {
        for _ in 0..blocks {
            s.add(&format!("mpctl/{case}"), r, vec![ours(ctx, case, n).await?]);
            let v = ctx.py.run(case, n).await?;
            s.add(&format!("cpython/{case}"), r, v);
        }
    }
    Ok(())
}

pub fn rows(s: &Samples) -> Vec<Row> {
    [
        ("map x*x, default chunksize", "items/s", "pool-default"),
        ("map x*x, chunksize 1", "items/s", "pool-chunk1"),
        ("1 ms tasks: elapsed ÷ ideal", "ratio", "pool-1ms"),
        ("10 ms tasks: elapsed ÷ ideal", "ratio", "pool-10ms"),
    ]
    .into_iter()
    .map(|(variant, unit, key)| {
        Row::new(CASE, variant, unit)
            .ours(s.get(&format!("mpctl/{key}")))
            .cpython(s.get(&format!("cpython/{key}")))
            .blocks(THROUGHPUT_BLOCKS)
    })
    .collect()
}
