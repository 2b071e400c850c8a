//! Case 7: retention keeps the coordinator flat. A separate `mpctl server
//! --retain 10000` + `mpctl agent`; 200,000 `true` start+join (200 in
//! flight), the coordinator's RSS (VmRSS) read at every 50,000. Without
//! retention it grows about 2.2 MiB per 10,000 finished processes (case 5's
//! extrapolated row); with it, it should stay where it is once 10,000 are
//! kept. Long: runs only with `--only 7`. No CPython counterpart.

use std::time::Instant;

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};

use crate::cluster::{rss_mib, Split};
use crate::report::{Row, Side};
use crate::{connect, run_true, Ctx};

const CASE: &str = "7 retention";
const TOTAL: usize = 200_000;
const STEP: usize = 50_000;
const RETAIN: &str = "10000";

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let split = Split::start_with(&ctx.mpctl, 256, &["--retain", RETAIN])?;
    let cluster = connect(&split.addr, &split.key).await?;
    run_true(&cluster).await?;
    let idle = rss_mib(split.server_pid())?;
    let mut rows = vec![
        Row::new(CASE, "coordinator RSS, idle (--retain 10000)", "MiB")
            .ours(Side::Measured(vec![vec![idle]])),
    ];
    let t = Instant::now();
    for done in (STEP..=TOTAL).step_by(STEP) {
        futures::stream::iter(0..STEP)
            .map(|_| run_true(&cluster))
            .buffer_unordered(200)
            .try_collect::<Vec<()>>()
            .await?;
        let rss = rss_mib(split.server_pid())?;
        eprintln!(
            "mpctl-bench: retention: {done} finished, coordinator RSS {rss:.1} MiB, {:.0} s",
            t.elapsed().as_secs_f64()
        );
        rows.push(
            Row::new(
                CASE,
                format!("coordinator RSS after {done} `true` (--retain 10000)"),
                "MiB",
            )
            .ours(Side::Measured(vec![vec![rss]])),
        );
    }
    let rate = TOTAL as f64 / t.elapsed().as_secs_f64();
    rows.push(
        Row::new(
            CASE,
            format!("{TOTAL} `true` start+join with retention (200 in flight)"),
            "1/s",
        )
        .ours(Side::Measured(vec![vec![rate]])),
    );
    drop(cluster);
    drop(split);
    Ok(rows)
}
