//! Unauthenticated connections cannot crowd out real ones: per-address caps
//! that drop the oldest idle connection, a first-bytes deadline, throttled
//! failure logs. Real sockets on 127.0.0.1, the flood and the real clients
//! from the same address.
//!
//! The flood test holds about 4,000 descriptors in this process (both ends
//! of 2,000 connections): it raises RLIMIT_NOFILE's soft limit up to the
//! hard limit first, and says so if that is not enough.

mod common;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{health_check, start_server_with};
use mpctl_transport::{connect, AuthKey, PendingLimits, Role, Security, ServerAuth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const FLOOD: usize = 2_000;

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (within the
/// hard limit); panics with the limits when that cannot be done.
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

/// Waits (up to `within`) for the server to close `s`: true if it did.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("the server sent bytes to a silent connection"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn two_thousand_idle_connections_from_one_address_do_not_starve_clients_or_agents() {
    raise_nofile(3 * FLOOD as u64 + 512);
    let key = AuthKey::generate();
    let limits = PendingLimits::default();
    let auth = ServerAuth::new(&key, Security::Tls, &[Role::Client, Role::Agent]).unwrap();
    let mut srv = start_server_with(auth, false).await;

    // The flood: 2,000 TCP connections from 127.0.0.1 that never send a byte.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    // The server accepted every one and kept only the newest `per_addr`:
    // the older ones were closed to make room, oldest first.
    let dropped = FLOOD - limits.per_addr;
    for (n, s) in flood.iter_mut().take(dropped).enumerate() {
        assert!(
            closed_by_server(s, Duration::from_secs(2)).await,
            "flood connection {n} (of the {dropped} oldest) is still open"
        );
    }

    // Real clients and agents, from the same address, while the newest
    // idle connections still hold their places: each gets through at once.
    for round in 0..5 {
        for role in [Role::Client, Role::Agent] {
            let ch = timeout(
                Duration::from_secs(5),
                connect(&srv.addr.to_string(), &key, role, Security::Tls),
            )
            .await
            .unwrap_or_else(|_| panic!("round {round}: {role} connect timed out in the flood"))
            .unwrap_or_else(|e| panic!("round {round}: {role} refused in the flood: {e}"));
            health_check(ch).await.unwrap();
            assert_eq!(srv.yielded.recv().await.unwrap().role, role);
        }
    }
    // Every flood connection is gone by the first-bytes deadline, long
    // before the handshake deadline.
    for (n, s) in flood.iter_mut().enumerate().skip(dropped) {
        assert!(
            closed_by_server(s, Duration::from_secs(8)).await,
            "flood connection {n} outlived the first-bytes deadline"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_churning_flood_does_not_starve_a_client_either() {
    raise_nofile(4096);
    let key = AuthKey::generate();
    let auth = ServerAuth::new(&key, Security::Tls, &[Role::Client]).unwrap();
    let mut srv = start_server_with(auth, false).await;
    // 300 connections that reconnect as soon as the server drops them.
    let addr = srv.addr;
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut floods = Vec::new();
    for _ in 0..300 {
        let stop = Arc::clone(&stop);
        floods.push(tokio::spawn(async move {
            loop {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    continue;
                };
                let mut buf = [0u8; 1];
                tokio::select! {
                    _ = stop.notified() => return,
                    _ = s.read(&mut buf) => {}
                }
            }
        }));
    }
    for round in 0..5 {
        let ch = timeout(
            Duration::from_secs(5),
            connect(&addr.to_string(), &key, Role::Client, Security::Tls),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: connect timed out in the flood"))
        .unwrap_or_else(|e| panic!("round {round}: refused in the flood: {e}"));
        health_check(ch).await.unwrap();
        srv.yielded.recv().await.unwrap();
    }
    stop.notify_waiters();
    for f in floods {
        f.abort();
        let _ = f.await;
    }
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_the_first_bytes_deadline_a_started_one_is_not() {
    let key = AuthKey::generate();
    let auth = ServerAuth::new(&key, Security::PlaintextLoopback, &[Role::Client])
        .unwrap()
        .with_first_bytes_timeout(Duration::from_millis(300))
        .with_handshake_timeout(Duration::from_secs(30));
    let srv = start_server_with(auth, false).await;
    // Started first: it sends half of the mpctl hello, then stalls.
    let mut started = TcpStream::connect(srv.addr).await.unwrap();
    started.write_all(b"MPCT").await.unwrap();
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    assert!(
        closed_by_server(&mut idle, Duration::from_secs(10)).await,
        "the idle connection was not closed at the first-bytes deadline"
    );
    // Now past the first-bytes deadline of both; the started one is held
    // to the (30 s) handshake deadline.
    assert!(!closed_by_server(&mut started, Duration::from_millis(200)).await);
}

#[tokio::test]
async fn a_full_address_keeps_the_handshake_in_progress_and_drops_the_idle() {
    let key = AuthKey::generate();
    let auth = ServerAuth::new(&key, Security::PlaintextLoopback, &[Role::Client])
        .unwrap()
        .with_pending_limits(PendingLimits {
            per_addr: 2,
            total: 100,
        });
    let srv = start_server_with(auth, false).await;
    let mut started = TcpStream::connect(srv.addr).await.unwrap();
    started.write_all(b"MPCT").await.unwrap();
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    // Wait until the server saw the started one's bytes: it answers a
    // complete hello with its nonce, which proves the place is counted.
    started
        .write_all(
            &[b'L', b'1', 1]
                .iter()
                .copied()
                .chain([0u8; 32])
                .collect::<Vec<u8>>(),
        )
        .await
        .unwrap();
    let mut nonce = [0u8; 32];
    timeout(Duration::from_secs(5), started.read_exact(&mut nonce))
        .await
        .expect("no nonce from the server")
        .unwrap();
    // A third connection from the same address: the idle one makes room.
    let _third = TcpStream::connect(srv.addr).await.unwrap();
    assert!(closed_by_server(&mut idle, Duration::from_secs(5)).await);
    assert!(!closed_by_server(&mut started, Duration::from_millis(200)).await);
}

/// A tracing writer that sends each log line on a channel.
#[derive(Clone)]
struct Lines(Arc<Mutex<mpsc::UnboundedSender<String>>>);

impl io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self
            .0
            .lock()
            .unwrap()
            .send(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn failed_handshakes_are_logged_as_counts_not_one_line_each() {
    let (tx, mut lines) = mpsc::unbounded_channel();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(Lines(Arc::new(Mutex::new(tx))))
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    // current_thread runtime: every spawned task runs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let key = AuthKey::generate();
    let auth = ServerAuth::new(&key, Security::PlaintextLoopback, &[Role::Client])
        .unwrap()
        .with_failure_log_interval(Duration::from_secs(3600));
    let srv = start_server_with(auth, false).await;
    // 200 connections that do not speak mpctl: each is answered by a close.
    for _ in 0..200 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n")
            .await
            .unwrap();
        assert!(closed_by_server(&mut s, Duration::from_secs(5)).await);
    }
    // The server stops: the counts of the interval are written.
    drop(srv);
    let mut got = Vec::new();
    while got.len() < 6 {
        let line = timeout(Duration::from_secs(10), lines.recv())
            .await
            .expect("no summary line when the server stopped")
            .unwrap();
        got.push(line);
    }
    for line in &got[..5] {
        assert!(
            line.contains("connection dropped before authentication")
                && line.contains("does not speak the mpctl handshake")
                && line.contains("127.0.0.1:"),
            "{got:?}"
        );
    }
    assert!(
        got[4].contains(
            "further failures of this kind are counted and logged as a total every 3600 s"
        ),
        "{got:?}"
    );
    assert!(
        got[5].contains(
            "195 more connections failed before authentication in the last 3600 s (195 not mpctl); from 127.0.0.1 (195)"
        ),
        "{got:?}"
    );
    assert!(lines.try_recv().is_err(), "more lines than six");
}
