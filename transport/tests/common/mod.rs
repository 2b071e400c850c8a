//! Shared helpers: a real tonic server (tonic-health) behind `incoming`.
#![allow(dead_code)]

use std::net::SocketAddr;

use futures::StreamExt;
use mpctl_transport::{incoming, AuthKey, PeerIdentity, Role, Security, ServerAuth};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub struct TestServer {
    pub addr: SocketAddr,
    /// Identity of every connection `incoming` yielded, in order.
    pub yielded: mpsc::UnboundedReceiver<PeerIdentity>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1")
}

/// Starts a health server on 127.0.0.1 behind `incoming`. With
/// `client_only_interceptor`, every request goes through `require_role(Client)`.
pub async fn start_server(
    key: &AuthKey,
    security: Security,
    roles: &[Role],
    client_only_interceptor: bool,
) -> TestServer {
    let auth = ServerAuth::new(key, security, roles).expect("ServerAuth::new");
    start_server_with(auth, client_only_interceptor).await
}

pub async fn start_server_with(auth: ServerAuth, client_only_interceptor: bool) -> TestServer {
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    let (tx, yielded) = mpsc::unbounded_channel();
    let stream = incoming(listener, auth).inspect(move |item| {
        if let Ok(s) = item {
            let _ = tx.send(s.identity().clone());
        }
    });
    let (_reporter, health) = tonic_health::server::health_reporter();
    let task = tokio::spawn(async move {
        let res = if client_only_interceptor {
            tonic::transport::Server::builder()
                .layer(tonic::service::InterceptorLayer::new(
                    |req: tonic::Request<()>| {
                        mpctl_transport::require_role(&req, Role::Client)?;
                        Ok(req)
                    },
                ))
                .add_service(health)
                .serve_with_incoming(stream)
                .await
        } else {
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(stream)
                .await
        };
        res.expect("server failed");
    });
    TestServer {
        addr,
        yielded,
        task,
    }
}

/// One unary health check over `channel`.
pub async fn health_check(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The role key as the spec defines it, computed independently of the crate.
pub fn spec_role_key(authkey: &[u8; 32], role: Role) -> [u8; 32] {
    let info: &[u8] = match role {
        Role::Client => b"mpctl role client",
        Role::Agent => b"mpctl role agent",
        // The job key of the empty id; real job keys append the process id.
        Role::Job => b"mpctl role job\0",
    };
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"mpctl authkey v1"), authkey);
    let mut okm = [0u8; 32];
    hk.expand(info, &mut okm).unwrap();
    okm
}
