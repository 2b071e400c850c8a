//! A real tonic server over `incoming`, real clients over `connect`, 127.0.0.1 only.

mod common;

use common::{health_check, start_server};
use mpctl_transport::{
    connect, require_role, AuthKey, PeerIdentity, Role, Security, TransportError,
};
use tokio::sync::mpsc::error::TryRecvError;

#[tokio::test]
async fn correct_key_works_over_tls() {
    let key = AuthKey::generate();
    let mut srv = start_server(&key, Security::Tls, &[Role::Client], false).await;
    let ch = connect(&srv.addr.to_string(), &key, Role::Client, Security::Tls)
        .await
        .unwrap();
    health_check(ch.clone()).await.unwrap();
    health_check(ch).await.unwrap();
    let id = srv.yielded.recv().await.unwrap();
    assert_eq!(id.role, Role::Client);
    assert!(id.remote_addr.ip().is_loopback());
    // One channel, one connection.
    assert!(matches!(srv.yielded.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test]
async fn correct_key_works_in_plaintext_loopback() {
    let key = AuthKey::generate();
    let mut srv = start_server(&key, Security::PlaintextLoopback, &[Role::Agent], false).await;
    let ch = connect(
        &srv.addr.to_string(),
        &key,
        Role::Agent,
        Security::PlaintextLoopback,
    )
    .await
    .unwrap();
    health_check(ch).await.unwrap();
    assert_eq!(srv.yielded.recv().await.unwrap().role, Role::Agent);
}

#[tokio::test]
async fn localhost_name_works() {
    let key = AuthKey::generate();
    let srv = start_server(&key, Security::Tls, &[Role::Client], false).await;
    let ch = connect(
        &format!("localhost:{}", srv.addr.port()),
        &key,
        Role::Client,
        Security::Tls,
    )
    .await;
    // "localhost" may resolve to ::1 first on some hosts; the server is on
    // 127.0.0.1 only, and connect tries every address.
    health_check(ch.unwrap()).await.unwrap();
}

#[tokio::test]
async fn wrong_authkey_is_rejected_clearly_and_not_yielded() {
    for security in [Security::Tls, Security::PlaintextLoopback] {
        let key = AuthKey::generate();
        let mut srv = start_server(&key, security, &[Role::Client], false).await;
        let addr = srv.addr.to_string();
        let err = connect(&addr, &AuthKey::generate(), Role::Client, security)
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Rejected { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "authentication failed: {addr} rejected this connection's proof for role client; the authkey file does not match the cluster's (check MPCTL_AUTHKEY_FILE / --authkey-file)"
            )
        );
        // A good client afterwards is the first and only yielded connection.
        let ch = connect(&addr, &key, Role::Client, security).await.unwrap();
        health_check(ch).await.unwrap();
        let first = srv.yielded.recv().await.unwrap();
        assert_eq!(first.role, Role::Client);
        assert!(matches!(srv.yielded.try_recv(), Err(TryRecvError::Empty)));
    }
}

#[tokio::test]
async fn agent_role_is_refused_by_client_only_server() {
    let key = AuthKey::generate();
    let mut srv = start_server(&key, Security::Tls, &[Role::Client], false).await;
    let addr = srv.addr.to_string();
    let err = connect(&addr, &key, Role::Agent, Security::Tls)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::RoleRefused {
                role: Role::Agent,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("does not accept agent connections"),
        "{err}"
    );
    let ch = connect(&addr, &key, Role::Client, Security::Tls)
        .await
        .unwrap();
    health_check(ch).await.unwrap();
    assert_eq!(srv.yielded.recv().await.unwrap().role, Role::Client);
    assert!(matches!(srv.yielded.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test]
async fn require_role_denies_agent_on_client_handler_end_to_end() {
    let key = AuthKey::generate();
    let srv = start_server(&key, Security::Tls, &[Role::Client, Role::Agent], true).await;
    let addr = srv.addr.to_string();

    let agent = connect(&addr, &key, Role::Agent, Security::Tls)
        .await
        .unwrap();
    let status = health_check(agent).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "this endpoint is for client connections; this connection authenticated as agent (an agent key cannot be used by a client, and vice versa)"
    );

    let client = connect(&addr, &key, Role::Client, Security::Tls)
        .await
        .unwrap();
    health_check(client).await.unwrap();
}

#[test]
fn require_role_unit() {
    let mut req = tonic::Request::new(());
    let err = require_role(&req, Role::Client).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    req.extensions_mut().insert(PeerIdentity {
        role: Role::Agent,
        remote_addr: "127.0.0.1:5".parse().unwrap(),
        process_id: None,
    });
    assert_eq!(require_role(&req, Role::Agent).unwrap().role, Role::Agent);
    let err = require_role(&req, Role::Client).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("authenticated as agent"));
}

#[tokio::test]
async fn security_mode_mismatch_fails_with_a_hint() {
    let key = AuthKey::generate();
    let srv = start_server(&key, Security::Tls, &[Role::Client], false).await;
    let err = connect(
        &srv.addr.to_string(),
        &key,
        Role::Client,
        Security::PlaintextLoopback,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("same security mode"), "{err}");

    let srv = start_server(&key, Security::PlaintextLoopback, &[Role::Client], false).await;
    let err = connect(&srv.addr.to_string(), &key, Role::Client, Security::Tls)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("same security mode"), "{err}");
}

#[tokio::test]
async fn connection_refused_is_reported() {
    // Bind then drop to get a port with (very likely) nothing listening.
    let l = common::bind().await;
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let err = connect(&addr, &AuthKey::generate(), Role::Client, Security::Tls)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr));
}

#[tokio::test]
async fn invalid_address_is_reported() {
    let err = connect(
        "no-port-here",
        &AuthKey::generate(),
        Role::Client,
        Security::Tls,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TransportError::InvalidAddress { .. }),
        "{err:?}"
    );
}
