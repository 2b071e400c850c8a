//! The health listener: plaintext `grpc.health.v1` whose answer is the
//! readiness function's at the moment of each check, with its reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mpctl_transport::health::{check, serve, HealthError};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test]
async fn answers_what_readiness_says_at_each_check() {
    let ready = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ready);
    let listener = serve(
        "127.0.0.1:0".parse().unwrap(),
        &["mpctl.v1.ProcessManager"],
        Arc::new(move || {
            let ok = flag.load(Ordering::SeqCst);
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("store directory not writable: read-only file system".to_owned())
                }
            })
        }),
    )
    .await
    .unwrap();
    let addr = listener.local_addr().to_string();
    let t = Duration::from_secs(5);
    assert_eq!(
        check(&addr, t).await.unwrap(),
        (
            false,
            "store directory not writable: read-only file system".to_owned()
        )
    );
    ready.store(true, Ordering::SeqCst);
    assert_eq!(check(&addr, t).await.unwrap(), (true, String::new()));

    // A named service we serve answers; any other is NOT_FOUND; nothing
    // but grpc.health.v1 is served (Watch is refused).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let named = client
        .check(HealthCheckRequest {
            service: "mpctl.v1.ProcessManager".into(),
        })
        .await
        .unwrap();
    assert_eq!(named.get_ref().status, 1);
    let unknown = client
        .check(HealthCheckRequest {
            service: "mpctl.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let watch = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(watch.code(), tonic::Code::Unimplemented);

    drop(listener);
    match check(&addr, Duration::from_secs(2)).await {
        Err(HealthError::Unreachable { addr: a, .. }) => assert_eq!(a, addr),
        other => panic!("a stopped listener answered: {other:?}"),
    }
}
