//! Traces (issue 14): one `mpctl run` of a function target through a real
//! coordinator and agent, each exporting over OTLP/gRPC to a receiver run
//! here (a stand-in for a collector, built on the official
//! `opentelemetry-proto` definitions), forms one trace from the client's
//! RPC to the child's own span.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpctl_tests::{Options, TestCluster};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;
use tokio::sync::watch;

const WORKER: &str = env!("CARGO_BIN_EXE_mpctl-test-worker");
const DEADLINE: Duration = Duration::from_secs(60);

/// A span as received, with the service that exported it.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, AnyValue>,
}

#[derive(Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
    changed: watch::Sender<usize>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(kv: &[KeyValue]) -> HashMap<String, AnyValue> {
    kv.iter()
        .filter_map(|a| Some((a.key.clone(), a.value.clone()?.value?)))
        .collect()
}

fn got(service: &str, s: &Span) -> Got {
    Got {
        service: service.to_owned(),
        name: s.name.clone(),
        trace_id: hex(&s.trace_id),
        span_id: hex(&s.span_id),
        parent: hex(&s.parent_span_id),
        attrs: attrs(&s.attributes),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut new = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .and_then(|a| match a.get("service.name") {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                new.extend(ss.spans.iter().map(|s| got(&service, s)));
            }
        }
        let n = {
            let mut spans = self.spans.lock().unwrap();
            spans.extend(new);
            spans.len()
        };
        self.changed.send_replace(n);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Waits (up to [`DEADLINE`]) until `find` finds something in the spans.
    async fn wait<T>(&self, what: &str, find: impl Fn(&[Got]) -> Option<T>) -> T {
        let mut rx = self.changed.subscribe();
        let waited = tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(t) = find(&self.spans.lock().unwrap()) {
                    return t;
                }
                rx.changed().await.expect("receiver alive");
            }
        })
        .await;
        match waited {
            Ok(t) => t,
            Err(_) => panic!(
                "no {what} within {DEADLINE:?}; received: {:#?}",
                self.spans.lock().unwrap()
            ),
        }
    }
}

fn one<'a>(spans: &'a [Got], service: &str, name: &str) -> Option<&'a Got> {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name)
}

#[test]
fn one_trace_from_mpctl_run_into_the_childs_own_span() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (changed, _) = watch::channel(0);
    let receiver = Receiver {
        spans: Arc::default(),
        changed,
    };
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind the receiver");
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = TraceServiceServer::new(receiver.clone());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let otel = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let mut tc = TestCluster::start(Options {
        env: vec![
            otel("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            // Batches leave every 100 ms, not 5 s: a quicker test, not a sync.
            otel("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
        ..Default::default()
    });
    tc.start_agent("node-a", 2, &[]);

    let o = tc.cli(&[
        "run",
        "-e",
        &format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}"),
        "-e",
        "OTEL_SERVICE_NAME=traced-child",
        "--function",
        "traced_child",
        "--",
        WORKER,
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("the child's report");
    let id = report["id"].as_str().expect("process id").to_owned();
    let traceparent = report["traceparent"]
        .as_str()
        .expect("TRACEPARENT in the child's environment")
        .to_owned();

    let spans = rt.block_on(receiver.wait("trace", |spans| {
        let client = one(spans, "mpctl", "mpctl.v1.ProcessManager/Start")?;
        let server = spans.iter().find(|s| {
            s.service == "mpctl-server"
                && s.name == "mpctl.v1.ProcessManager/Start"
                && s.parent == client.span_id
        })?;
        let process = spans.iter().find(|s| {
            s.service == "mpctl-server"
                && s.name.starts_with("process ")
                && s.parent == server.span_id
        })?;
        let launch = spans.iter().find(|s| {
            s.service == "mpctl-agent" && s.name == "launch" && s.parent == process.span_id
        })?;
        let child = one(spans, "traced-child", "traced_child_work")?;
        Some([client, server, process, launch, child].map(Clone::clone))
    }));
    let [client, server, process, launch, child] = spans;

    // One trace id across client, coordinator, agent and child.
    let trace_id = client.trace_id.clone();
    assert_eq!(trace_id.len(), 32);
    for s in [&server, &process, &launch, &child] {
        assert_eq!(s.trace_id, trace_id, "{s:?}");
    }
    // The process span: its id, name and outcome.
    assert_eq!(
        process.attrs.get("mpctl.exitcode"),
        Some(&AnyValue::IntValue(0))
    );
    assert_eq!(
        process.attrs.get("mpctl.process.id"),
        Some(&AnyValue::StringValue(id.clone()))
    );
    assert_eq!(
        process.attrs.get("mpctl.node"),
        Some(&AnyValue::StringValue("node-a".into()))
    );
    assert_eq!(
        process.attrs.get("mpctl.target"),
        Some(&AnyValue::StringValue("function".into()))
    );
    assert_eq!(
        process.attrs.get("mpctl.lost"),
        Some(&AnyValue::BoolValue(false))
    );
    assert!(
        matches!(process.attrs.get("process.pid"), Some(AnyValue::IntValue(p)) if *p > 0),
        "{process:?}"
    );
    // The child's TRACEPARENT names the process span, not the caller's.
    assert_eq!(traceparent, format!("00-{trace_id}-{}-01", process.span_id));
    // The child's own span is a child of the process span.
    assert_eq!(child.parent, process.span_id);
    assert_eq!(child.attrs.get("answer"), Some(&AnyValue::IntValue(42)));

    // `mpctl inspect` shows the trace id, from the process's row.
    let o = tc.cli(&["inspect", "-o", "json", &id]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("inspect JSON");
    assert_eq!(v[0]["trace_id"], Value::String(trace_id));
    rt.shutdown_background();
}
