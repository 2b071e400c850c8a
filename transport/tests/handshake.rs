//! Handshake-level attacks and robustness, on real 127.0.0.1 sockets.

mod common;

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{bind, health_check, start_server, start_server_with};
use futures::StreamExt;
use mpctl_transport::handshake::{
    self, client_handshake, server_mac, HELLO_LEN, MAC_LEN, NONCE_LEN, STATUS_FAIL, STATUS_OK,
};
use mpctl_transport::{
    check_connect_addr, check_listen_addr, connect, incoming, tls, AuthKey, Role, Security,
    ServerAuth, TransportError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_rustls::TlsConnector;

async fn tls_connect(
    addr: std::net::SocketAddr,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    handshake::Binding,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(tls::client_config().unwrap());
    let s = connector.connect(tls::server_name(), tcp).await.unwrap();
    let binding = tls::exporter_binding(s.get_ref().1).unwrap();
    (s, binding)
}

/// Records everything written through it.
struct Recorder<S> {
    inner: S,
    written: Vec<u8>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.written.extend_from_slice(&buf[..n]);
        }
        res
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn replayed_client_proof_is_rejected() {
    let key = AuthKey::generate();
    let mut srv = start_server(&key, Security::Tls, &[Role::Client], false).await;

    // Connection 1: a genuine client, recorded.
    let (s1, binding1) = tls_connect(srv.addr).await;
    let mut rec = Recorder {
        inner: s1,
        written: Vec::new(),
    };
    client_handshake(
        &mut rec,
        &key.role_key(Role::Client),
        Role::Client,
        &binding1,
        "test",
    )
    .await
    .unwrap();
    assert_eq!(rec.written.len(), HELLO_LEN + MAC_LEN);
    let (hello, mac_c) = rec.written.split_at(HELLO_LEN);
    assert_eq!(srv.yielded.recv().await.unwrap().role, Role::Client);

    // Connection 2: replay the same hello (same nonce_c) and the same MAC.
    let (mut s2, binding2) = tls_connect(srv.addr).await;
    assert_ne!(binding1, binding2, "each TLS session has its own exporter");
    s2.write_all(hello).await.unwrap();
    s2.flush().await.unwrap();
    let mut nonce_s = [0u8; NONCE_LEN];
    s2.read_exact(&mut nonce_s).await.unwrap();
    s2.write_all(mac_c).await.unwrap();
    s2.flush().await.unwrap();
    let mut status = [0u8; 1];
    s2.read_exact(&mut status).await.unwrap();
    assert_eq!(status[0], STATUS_FAIL);
    // Then the server closes: nothing more.
    let mut rest = Vec::new();
    let _ = s2.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
    assert!(matches!(srv.yielded.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test]
async fn rogue_server_without_the_key_is_detected() {
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    let rogue_key = AuthKey::generate().role_key(Role::Client);
    let rogue = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config().unwrap());
        let mut s = acceptor.accept(tcp).await.unwrap();
        let binding = tls::exporter_binding(s.get_ref().1).unwrap();
        let mut hello = [0u8; HELLO_LEN];
        s.read_exact(&mut hello).await.unwrap();
        let mut nonce_c = [0u8; NONCE_LEN];
        nonce_c.copy_from_slice(&hello[7..]);
        let nonce_s = [9u8; NONCE_LEN];
        s.write_all(&nonce_s).await.unwrap();
        s.flush().await.unwrap();
        let mut mac_c = [0u8; MAC_LEN];
        s.read_exact(&mut mac_c).await.unwrap();
        // Pretend the proof was fine, and "prove" with the wrong key.
        let mut reply = vec![STATUS_OK];
        reply.extend_from_slice(&server_mac(
            &rogue_key,
            Role::Client,
            &binding,
            &nonce_c,
            &nonce_s,
        ));
        s.write_all(&reply).await.unwrap();
        s.flush().await.unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    let err = connect(
        &addr.to_string(),
        &AuthKey::generate(),
        Role::Client,
        Security::Tls,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TransportError::ServerNotAuthenticated { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("the server at {addr} did not prove knowledge of the authkey (wrong authkey on one side, or not an mpctl server)")
    );
    rogue.await.unwrap();
}

#[tokio::test]
async fn server_handshake_with_other_key_rejects_client() {
    // The lower-level pair with different keys, over an in-memory pipe.
    let (mut a, mut b) = tokio::io::duplex(1024);
    let server_key = AuthKey::generate();
    let client_key = AuthKey::generate();
    let binding = [1u8; 32];
    let server = tokio::spawn(async move {
        handshake::server_handshake(&mut b, &server_key, &[Role::Client], &binding, "c").await
    });
    let err = client_handshake(
        &mut a,
        &client_key.role_key(Role::Client),
        Role::Client,
        &binding,
        "s",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransportError::Rejected { .. }));
    let serr = server.await.unwrap().unwrap_err();
    assert!(matches!(
        serr,
        TransportError::ClientNotAuthenticated {
            role: Role::Client,
            ..
        }
    ));
}

#[tokio::test]
async fn different_bindings_fail_even_with_the_right_key() {
    // A relay (man in the middle) sees two different TLS sessions.
    let (mut a, mut b) = tokio::io::duplex(1024);
    let key = AuthKey::generate();
    let k2 = key.clone();
    let server = tokio::spawn(async move {
        handshake::server_handshake(&mut b, &k2, &[Role::Client], &[1u8; 32], "c").await
    });
    let err = client_handshake(
        &mut a,
        &key.role_key(Role::Client),
        Role::Client,
        &[2u8; 32],
        "s",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransportError::Rejected { .. }));
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn unknown_magic_and_role_are_refused() {
    let key = AuthKey::generate();
    for hello in [
        {
            let mut h = [0u8; HELLO_LEN];
            h[..6].copy_from_slice(b"GET / ");
            h
        },
        {
            let mut h = [0u8; HELLO_LEN];
            h[..6].copy_from_slice(b"MPCTL1");
            h[6] = 9;
            h
        },
    ] {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let k = key.clone();
        let server = tokio::spawn(async move {
            handshake::server_handshake(&mut b, &k, &Role::ALL, &[0u8; 32], "peer").await
        });
        a.write_all(&hello).await.unwrap();
        let err = server.await.unwrap().unwrap_err();
        assert!(matches!(err, TransportError::Protocol { .. }), "{err:?}");
        // Nothing was sent back.
        let mut buf = Vec::new();
        a.read_to_end(&mut buf).await.unwrap();
        assert!(buf.is_empty());
    }
}

#[tokio::test]
async fn plaintext_garbage_gets_no_answer_over_tcp() {
    let key = AuthKey::generate();
    let mut srv = start_server(&key, Security::PlaintextLoopback, &[Role::Client], false).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&[0x55; HELLO_LEN]).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(buf.is_empty());
    let ch = connect(
        &srv.addr.to_string(),
        &key,
        Role::Client,
        Security::PlaintextLoopback,
    )
    .await
    .unwrap();
    health_check(ch).await.unwrap();
    srv.yielded.recv().await.unwrap();
    assert!(matches!(srv.yielded.try_recv(), Err(TryRecvError::Empty)));
}

#[test]
fn plaintext_requires_loopback_addresses() {
    for ok in ["127.0.0.1:1", "127.9.9.9:1", "[::1]:1"] {
        let a = ok.parse().unwrap();
        check_listen_addr(a, Security::PlaintextLoopback).unwrap();
        check_connect_addr(a, Security::PlaintextLoopback).unwrap();
    }
    for bad in ["0.0.0.0:1", "10.0.0.1:1", "[::]:1", "192.0.2.1:1"] {
        let a = bad.parse().unwrap();
        let err = check_listen_addr(a, Security::PlaintextLoopback).unwrap_err();
        assert!(matches!(err, TransportError::PlaintextNotLoopback { .. }));
        assert!(err.to_string().contains(bad), "{err}");
        check_connect_addr(a, Security::PlaintextLoopback).unwrap_err();
        check_listen_addr(a, Security::Tls).unwrap();
    }
}

#[tokio::test]
async fn plaintext_connect_to_non_loopback_is_refused_before_any_traffic() {
    // 192.0.2.0/24 is TEST-NET-1: if a packet were sent it would hang or fail
    // differently; the check must refuse first.
    let err = connect(
        "192.0.2.1:9",
        &AuthKey::generate(),
        Role::Client,
        Security::PlaintextLoopback,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TransportError::PlaintextNotLoopback { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn plaintext_incoming_on_non_loopback_listener_yields_nothing() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let auth = ServerAuth::new(
        &AuthKey::generate(),
        Security::PlaintextLoopback,
        &[Role::Client],
    )
    .unwrap();
    let mut stream = Box::pin(incoming(listener, auth));
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn slow_clients_do_not_block_others() {
    let key = AuthKey::generate();
    let mut srv = start_server(&key, Security::Tls, &[Role::Client], false).await;
    // One client that opens TCP and sends nothing, one that finishes TLS and
    // then sends nothing; both stay open during the good client's handshake.
    let idle_tcp = TcpStream::connect(srv.addr).await.unwrap();
    let (idle_tls, _) = tls_connect(srv.addr).await;
    let ch = tokio::time::timeout(
        Duration::from_secs(5),
        connect(&srv.addr.to_string(), &key, Role::Client, Security::Tls),
    )
    .await
    .expect("a slow client blocked the handshake of another")
    .unwrap();
    health_check(ch).await.unwrap();
    srv.yielded.recv().await.unwrap();
    drop((idle_tcp, idle_tls));
}

#[tokio::test]
async fn idle_connection_is_closed_at_the_handshake_deadline() {
    let key = AuthKey::generate();
    let auth = ServerAuth::new(&key, Security::PlaintextLoopback, &[Role::Client])
        .unwrap()
        .with_handshake_timeout(Duration::from_millis(200));
    let srv = start_server_with(auth, false).await;
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut buf))
        .await
        .expect("server did not close an idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

/// A tracing writer that collects everything into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_secret_in_logs_on_failed_handshake() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    // current_thread runtime: every spawned task runs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let server_raw = [0x5au8; 32];
    let client_raw = [0xc3u8; 32];
    let server_key = AuthKey::from_bytes(server_raw);
    let mut srv = start_server(&server_key, Security::Tls, &[Role::Client], false).await;
    let addr = srv.addr.to_string();
    let err = connect(
        &addr,
        &AuthKey::from_bytes(client_raw),
        Role::Client,
        Security::Tls,
    )
    .await
    .unwrap_err();
    tracing::error!("client error: {err} / {err:?}");
    // Also a successful connection, to log that path too.
    let ch = connect(&addr, &server_key, Role::Client, Security::Tls)
        .await
        .unwrap();
    health_check(ch).await.unwrap();
    srv.yielded.recv().await.unwrap();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("authentication failed"),
        "server failure not logged:\n{logs}"
    );
    assert!(logs.contains("role=client"), "{logs}");
    let logs_lower = logs.to_lowercase();
    for raw in [server_raw, client_raw] {
        assert!(!logs_lower.contains(&common::hex(&raw)));
        for role in Role::ALL {
            let rk = common::spec_role_key(&raw, role);
            assert!(!logs_lower.contains(&common::hex(&rk)));
            // Nor as a Debug-printed byte array.
            let dec = format!("{:?}", &rk[..8]);
            assert!(!logs.contains(dec.trim_end_matches(']')));
        }
    }
}

#[tokio::test]
async fn a_job_key_proves_its_own_process_id_and_no_other() {
    let key = AuthKey::generate();
    let binding = [3u8; 32];
    // Its own id: both sides verify, and the server learns the id.
    let (mut a, mut b) = tokio::io::duplex(1024);
    let k = key.clone();
    let server = tokio::spawn(async move {
        handshake::server_handshake_identified(&mut b, &k, &[Role::Job], &binding, "c").await
    });
    handshake::client_handshake_job(&mut a, &key.job_key("p1"), "p1", &binding, "s")
        .await
        .unwrap();
    assert_eq!(
        server.await.unwrap().unwrap(),
        (Role::Job, Some("p1".to_owned()))
    );
    // The key of p1 claiming to be p2 is rejected.
    let (mut a, mut b) = tokio::io::duplex(1024);
    let k = key.clone();
    let server = tokio::spawn(async move {
        handshake::server_handshake_identified(&mut b, &k, &[Role::Job], &binding, "c").await
    });
    let err = handshake::client_handshake_job(&mut a, &key.job_key("p1"), "p2", &binding, "s")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Rejected {
                role: Role::Job,
                ..
            }
        ),
        "{err}"
    );
    assert!(server.await.unwrap().is_err());
}
