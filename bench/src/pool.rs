//! Case 4: the Pool. mpctl's Pool is not built yet; CPython's `Pool(2).map`
//! is measured anyway so the reference is in the table: tiny-task throughput
//! (x*x) with the default chunksize and with chunksize 1, and elapsed ÷ ideal
//! for 1 ms and 10 ms CPU-bound tasks on 2 workers (chunksize 1).

use anyhow::Result;

use crate::report::{Row, Samples};
use crate::{not_available, Ctx};

const CASE: &str = "4 Pool(2)";
const WHY: &str = "mpctl has no Pool yet (issue \"The Pool manager: …\")";

pub async fn round(ctx: &Ctx, r: usize, s: &mut Samples) -> Result<()> {
    for (case, n) in [
        ("pool-default", ctx.n.pool_items),
        ("pool-chunk1", ctx.n.pool_chunk1),
        ("pool-1ms", ctx.n.pool_1ms),
        ("pool-10ms", ctx.n.pool_10ms),
    ] {
        let v = ctx.py.run(case, n).await?;
        s.add(&format!("cpython/{case}"), r, v);
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
            .ours(not_available(WHY))
            .cpython(s.get(&format!("cpython/{key}")))
    })
    .collect()
}
