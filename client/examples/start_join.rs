//! Times start and join of `true` against the configured cluster.
use std::time::Instant;

#[tokio::main]
async fn main() -> mpctl::Result<()> {
    let cluster = mpctl::Cluster::from_env().await?;
    let mut rows = Vec::new();
    for _ in 0..30 {
        let t0 = Instant::now();
        let mut p = mpctl::Process::new(&cluster, ["true"]);
        p.start().await?;
        let t1 = Instant::now();
        let mut logs = p.logs(mpctl::LogStream::Both, true).await?;
        let th = Instant::now();
        while logs
            .message()
            .await
            .map_err(|s| mpctl::Error::rpc("logs", "", s))?
            .is_some()
        {}
        let tl = Instant::now();
        eprintln!("headers {:.2} ms", (th - t1).as_secs_f64() * 1e3);
        p.join(None).await?;
        let t2 = Instant::now();
        eprintln!(
            "logs {:.2} ms join-after-logs {:.2} ms",
            (tl - t1).as_secs_f64() * 1e3,
            (t2 - tl).as_secs_f64() * 1e3
        );
        let info = p.info().unwrap();
        rows.push((
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (info.stopped_unix_ms - info.started_unix_ms) as f64,
        ));
    }
    rows.sort_by(|a, b| (a.0 + a.1).partial_cmp(&(b.0 + b.1)).unwrap());
    let m = rows[rows.len() / 2];
    println!(
        "median run: start {:.2} ms, join {:.2} ms, started→stopped (node clock) {:.0} ms",
        m.0, m.1, m.2
    );
    cluster.close().await;
    Ok(())
}
