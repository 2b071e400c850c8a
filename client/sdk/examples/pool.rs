//! A pool on the cluster (or, with nothing configured, an embedded one):
//! `cargo run --release --example pool`.

use std::time::Duration;

use mpctl::{runtime::Runtime, Cluster, Pool, PoolError};

fn main() {
    Runtime::new()
        .function("square", |x: i64| x * x)
        .function("connect_db", |url: String| {
            // Runs once in each worker, before its first task.
            let _ = url;
        })
        .init();
    tokio::runtime::Runtime::new()
        .expect("tokio runtime")
        .block_on(async {
            let cluster = Cluster::from_env().await.expect("cluster");
            let pool = Pool::builder(&cluster)
                .processes(2)
                .initializer("connect_db", &"postgres://db")
                .maxtasksperchild(1000)
                .create()
                .await
                .expect("pool");
            let squares: Vec<i64> = pool.map("square", 0..10_000i64, None).await.unwrap();
            println!(
                "sum of squares below 10,000: {}",
                squares.iter().sum::<i64>()
            );
            let r = pool.apply_async::<_, i64>("square", &7).unwrap();
            match r.get(Some(Duration::from_secs(5))).await {
                Ok(v) => println!("7² = {v}"),
                Err(PoolError::WorkerLost { node, exitcode, .. }) => {
                    eprintln!("worker lost on {node}: {exitcode:?}")
                }
                Err(e) => eprintln!("{e}"),
            }
            pool.close().unwrap();
            pool.join().await.unwrap();
            cluster.close().await;
        });
}
