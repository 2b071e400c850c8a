//! A flood of idle, unauthenticated connections from 127.0.0.1 (the same
//! address as every real client and agent here) does not starve them: the
//! real coordinator keeps a per-address cap on pending handshakes and drops
//! the oldest idle one to make room (issue 12, item 8).
//!
//! The flood holds up to 2,000 descriptors in this process: the test raises
//! RLIMIT_NOFILE's soft limit to the hard limit's side first (the
//! coordinator it spawns inherits it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mpctl_tests::TestCluster;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const FLOOD: usize = 2_000;
/// A flood connection dropped by the server is opened again this much later:
/// up to 20,000 new connections a second.
const REOPEN_AFTER: Duration = Duration::from_millis(100);

fn raise_nofile(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft >= want {
        return;
    }
    assert!(
        hard >= want,
        "this test needs {want} file descriptors; RLIMIT_NOFILE is {soft} (hard {hard}): raise it with `ulimit -Hn {want}`"
    );
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("raise RLIMIT_NOFILE");
}

/// Opens `FLOOD` idle connections to `addr` (then says so on `ready`) and
/// keeps them open: each one that the server drops is opened again [`REOPEN_AFTER`]
/// later. Counts the connections opened.
fn flood(
    addr: String,
    opened: Arc<AtomicU64>,
    ready: std::sync::mpsc::Sender<()>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut first = Vec::with_capacity(FLOOD);
        for _ in 0..FLOOD {
            first.push(TcpStream::connect(&addr).await.expect("flood connect"));
        }
        opened.fetch_add(FLOOD as u64, Ordering::Relaxed);
        let _ = ready.send(());
        let mut tasks = Vec::new();
        for s in first {
            let (addr, opened, mut stop) = (addr.clone(), Arc::clone(&opened), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut s = Some(s);
                loop {
                    if let Some(mut s) = s.take() {
                        let mut buf = [0u8; 1];
                        tokio::select! {
                            _ = stop.changed() => return,
                            _ = s.read(&mut buf) => {}
                        }
                    }
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(REOPEN_AFTER) => {}
                    }
                    if let Ok(again) = TcpStream::connect(&addr).await {
                        opened.fetch_add(1, Ordering::Relaxed);
                        s = Some(again);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn ps_and_an_agent_reconnect_succeed_during_a_flood_from_the_same_address() {
    raise_nofile(FLOOD as u64 + 1024);
    let mut tc = TestCluster::with_agent(1);
    let opened = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let flooder = {
        let (addr, opened) = (tc.addr.clone(), Arc::clone(&opened));
        std::thread::spawn(move || flood(addr, opened, ready_tx, stop_rx))
    };
    // The flood is up before the first real client.
    ready
        .recv_timeout(Duration::from_secs(60))
        .expect("the flood did not open its connections");

    for round in 0..5 {
        let out = tc.cli(&["ps", "-a"]);
        assert!(
            out.status.success(),
            "round {round}: `mpctl ps` failed in the flood: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // An agent restarted in the flood registers again.
    let mut old = tc.kill_agent("node-a");
    drop(old.child.wait());
    tc.start_agent("node-a", 1, &[]);
    let out = tc.cli(&["agents"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("node-a"));

    let _ = stop_tx.send(true);
    flooder.join().unwrap();
    let opened = opened.load(Ordering::Relaxed);
    assert!(
        opened > FLOOD as u64,
        "the flood never reconnected: {opened}"
    );
    eprintln!("the flood opened {opened} connections");
    // Thousands of failed connections, a few log lines.
    let log = tc.server.as_ref().unwrap().log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("before authentication"))
        .count();
    // At most 5 lines per kind (dropped for room, silent, closed) and one
    // total per 10 s interval; the test may span two intervals.
    assert!(
        (1..=32).contains(&lines),
        "{lines} lines about failed connections for {opened} connections:\n{log}"
    );
}
