//! The metrics listener: plain HTTP/1.1, `GET /metrics` and nothing else.
//!
//! Like the health listener it is unauthenticated and in plaintext, and off
//! unless `--metrics-listen` is given: what it reveals is counts and
//! latencies, node names and no process ids, arguments or keys. Each
//! request renders the registry at that moment. Connections are capped
//! ([`MAX_CONNECTIONS`]; more are closed at once) and a request's headers
//! must arrive within [`HEADER_TIMEOUT`], so a slow or flooding peer holds
//! a few descriptors at most.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

/// The OpenMetrics text format's content type.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format's (0.0.4) content type, for clients that do
/// not ask for OpenMetrics (`curl`, `promtool check metrics`).
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The one path served.
pub const PATH: &str = "/metrics";
/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a connection may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the metrics listener.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listener could not bind.
    #[error("cannot listen for metrics scrapes on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS reason.
        #[source]
        source: std::io::Error,
    },
}

/// A running metrics listener; dropping it stops it.
pub struct MetricsListener {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsListener {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renders `registry` as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(8 << 10);
    // Writing into a String cannot fail; an encoder error would be a bug in
    // a collector, and a partial page is then still the best answer.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's
/// family is named with its `_total` suffix there, and there is no `# EOF`
/// or `# UNIT`. Everything else (samples, histograms, escaping) is the same.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(h) = help.replace(rest) {
                push_help(&mut out, h, None);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" | "info" | "stateset" => (name.to_owned(), "untyped"),
                k => (name.to_owned(), k),
            };
            if let Some(h) = help.take() {
                push_help(&mut out, h, Some(&name));
            }
            out.push_str("# TYPE ");
            out.push_str(&name);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            continue;
        }
        if let Some(h) = help.take() {
            push_help(&mut out, h, None);
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `# HELP` for `rest` (`name text`), under `name` if given.
fn push_help(out: &mut String, rest: &str, name: Option<&str>) {
    let (own, text) = rest.split_once(' ').unwrap_or((rest, ""));
    out.push_str("# HELP ");
    out.push_str(name.unwrap_or(own));
    out.push(' ');
    out.push_str(text);
    out.push('\n');
}

/// Whether the request's `Accept` asks for OpenMetrics (Prometheus does).
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

fn answer(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &str| {
        let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            "text/plain; charset=utf-8".parse().expect("ASCII"),
        );
        r
    };
    if req.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: this listener serves GET /metrics only",
        );
    }
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET /metrics");
        r.headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("ASCII"));
        return r;
    }
    let openmetrics = wants_openmetrics(req);
    let body = match (head, openmetrics) {
        (true, _) => String::new(),
        (false, true) => render(registry),
        (false, false) => to_prometheus_text(&render(registry)),
    };
    let content_type = if openmetrics {
        CONTENT_TYPE_OPENMETRICS
    } else {
        CONTENT_TYPE_TEXT
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, content_type.parse().expect("ASCII"));
    r
}

/// Binds `addr` and serves `GET /metrics` from `registry`.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
) -> Result<MetricsListener, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let room = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&room).try_acquire_owned() else {
                tracing::debug!(%peer, "metrics listener full: connection closed");
                continue;
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let r = answer(&registry, &req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "metrics connection ended");
                }
                drop(permit);
            });
        }
    });
    tracing::info!(%local_addr, "metrics listener (GET /metrics only, plaintext, unauthenticated)");
    Ok(MetricsListener { local_addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_the_registry_on_get_metrics_only() {
        let mut reg = Registry::default();
        let c = Counter::<u64>::default();
        c.inc_by(7);
        reg.register("mpctl_test", "a test counter", c);
        let l = serve("127.0.0.1:0".parse().unwrap(), Arc::new(reg))
            .await
            .unwrap();
        let close = "Connection: close\r\nHost: x\r\n\r\n";
        let om = "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n";
        let ok = get(
            l.local_addr(),
            &format!("GET /metrics HTTP/1.1\r\n{om}{close}"),
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE_OPENMETRICS), "{ok}");
        assert!(
            ok.contains("# TYPE mpctl_test counter\nmpctl_test_total 7\n"),
            "{ok}"
        );
        assert!(ok.ends_with("# EOF\n"), "{ok}");
        let text = get(l.local_addr(), &format!("GET /metrics HTTP/1.1\r\n{close}")).await;
        assert!(text.contains(CONTENT_TYPE_TEXT), "{text}");
        assert!(
            text.ends_with(
                "# HELP mpctl_test_total a test counter.\n# TYPE mpctl_test_total counter\nmpctl_test_total 7\n"
            ),
            "{text}"
        );
        let other = get(l.local_addr(), &format!("GET / HTTP/1.1\r\n{close}")).await;
        assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n"), "{other}");
        let post = get(
            l.local_addr(),
            &format!("POST /metrics HTTP/1.1\r\n{close}"),
        )
        .await;
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
    }
}
