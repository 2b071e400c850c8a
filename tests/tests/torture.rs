//! The coordinator SIGKILLed over and over under load (issue 12's torture
//! test). Ignored by default; run it with
//!
//! ```sh
//! MPCTL_TORTURE_KILLS=100 cargo nextest run -p mpctl-tests --run-ignored only -E 'binary(torture)' --no-capture
//! ```
//!
//! 20 client tasks start jobs one after another (each with its own request
//! id, retried with the same id while the coordinator is away), and join
//! them; meanwhile the real coordinator process is SIGKILLed at random
//! points (a seeded RNG: `MPCTL_TORTURE_SEED`, printed) and restarted on the
//! same data directory, `MPCTL_TORTURE_KILLS` times (default 100). Each job
//! appends its request id to one file (O_APPEND, one short line: atomic) and
//! exits with a code from its index. At the end every request id was
//! launched exactly once and every exit code, as joined and as the
//! coordinator lists it, is the one the job exited with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpctl::{Error, Process, ProcessState};
use mpctl_tests::{Options, TestCluster};

const CLIENTS: usize = 20;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: enough randomness for kill points, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn code(client: usize, i: usize) -> i32 {
    ((client * 37 + i * 11) % 120) as i32
}

/// The coordinator may be gone for a while: any failure that is not an
/// answer about this start is retried with the same request id.
async fn start_job(cluster: &mpctl::Cluster, argv: Vec<String>, rid: &str) -> Process {
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        let mut p = Process::new(cluster, argv.clone()).request_id(rid);
        match p.start().await {
            Ok(()) => return p,
            Err(e @ Error::Start { .. }) if !e.to_string().contains("cannot place") => {
                panic!("{rid}: start failed: {e}")
            }
            Err(e) => {
                assert!(
                    Instant::now() < give_up,
                    "{rid}: no start within 120 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn join_job(p: &mut Process, rid: &str) {
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        match p.join(None).await {
            Ok(()) if p.exitcode().is_some() => return,
            Ok(()) => {}
            Err(e) => assert!(Instant::now() < give_up, "{rid}: no join within 120 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run with --run-ignored only (MPCTL_TORTURE_KILLS sets the count)"]
async fn coordinator_sigkilled_under_load_launches_each_request_once_with_the_right_code() {
    let kills = env_u64("MPCTL_TORTURE_KILLS", 100);
    let seed = env_u64("MPCTL_TORTURE_SEED", 0).max(1);
    let seed = if seed == 1 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    } else {
        seed
    };
    println!("torture: {kills} coordinator kills, MPCTL_TORTURE_SEED={seed}");
    let mut rng = Rng(seed);
    let mut c = TestCluster::start(Options {
        lease_ms: 60_000,
        ..Options::default()
    });
    c.start_agent("node-a", 16, &[]);
    let launches = c.path().join("launches");
    let cluster = c.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let cluster = cluster.clone();
        let stop = Arc::clone(&stop);
        let launches = launches.clone();
        clients.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) || i < 3 {
                let rid = format!("torture-{client}-{i}");
                let argv = vec![
                    "sh".to_owned(),
                    "-c".into(),
                    "echo \"$1\" >> \"$2\"; exit \"$3\"".into(),
                    "sh".into(),
                    rid.clone(),
                    launches.display().to_string(),
                    code(client, i).to_string(),
                ];
                let mut p = start_job(&cluster, argv, &rid).await;
                join_job(&mut p, &rid).await;
                assert_eq!(p.exitcode(), Some(code(client, i)), "{rid}'s exit code");
                done.push((rid, p.id().unwrap().to_owned(), code(client, i)));
                i += 1;
            }
            done
        }));
    }
    for k in 0..kills {
        let wait = Duration::from_millis(20 + rng.below(400));
        tokio::time::sleep(wait).await;
        tokio::task::block_in_place(|| {
            c.kill_server();
            c.start_server();
        });
        if k % 10 == 9 {
            println!("torture: {} kills", k + 1);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut jobs = Vec::new();
    for h in clients {
        jobs.extend(h.await.expect("client task"));
    }
    let text = std::fs::read_to_string(&launches).expect("launches file");
    let mut launched: HashMap<&str, usize> = HashMap::new();
    for line in text.lines() {
        *launched.entry(line).or_default() += 1;
    }
    for (rid, _, _) in &jobs {
        assert_eq!(launched.get(rid.as_str()), Some(&1), "{rid} launched once");
    }
    assert_eq!(
        launched.len(),
        jobs.len(),
        "nothing launched that no client started"
    );
    let cluster = c.client().await;
    let listed: HashMap<String, (ProcessState, Option<i32>)> = cluster
        .list(true)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.id, (p.state, p.exitcode)))
        .collect();
    for (rid, id, code) in &jobs {
        assert_eq!(
            listed.get(id),
            Some(&(ProcessState::Stopped, Some(*code))),
            "{rid} ({id}) as the coordinator lists it"
        );
    }
    assert_eq!(listed.len(), jobs.len());
    println!(
        "torture: {} jobs from {CLIENTS} clients, {kills} kills (seed {seed}): each launched once, every exit code right",
        jobs.len()
    );
}
