//! W3C trace context on every gRPC hop (issue 14), for the client, the
//! coordinator and the agent alike.
//!
//! Tracing is off until a process's telemetry setup calls [`enable`] (it
//! does so only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set). While off, the
//! layers here make no span and touch no header: one atomic load per call.
//!
//! - [`Traced`] wraps a client channel: one `client` span per RPC, child of
//!   the current OpenTelemetry context, injected into the request's
//!   metadata (`traceparent`) by the global propagator.
//! - [`ServerLayer`] goes on a tonic server: one `server` span per RPC,
//!   child of the caller's context taken from the metadata, and the current
//!   context while the handler runs.
//! - [`W3c`] is a context as the two W3C strings, for the hops that are
//!   not HTTP headers (the `Launch` message, a child's environment).
//!
//! The spans are made with the OpenTelemetry API (tracer `mpctl`), not as
//! `tracing` spans, so this crate needs no subscriber, and nothing of
//! hyper, h2 or tower is ever exported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};

use futures::future::Either;
use opentelemetry::context::{FutureExt, WithContext};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns the RPC layers on (called once an exporter is installed).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether an exporter is installed in this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The trace id (32 hex digits) of the current context (inside an RPC
/// handler: the RPC's trace), for log lines; `None`
/// when tracing is off or the current span is not traced.
pub fn current_trace_id() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = Context::current();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// A span context as W3C `traceparent` and `tracestate` strings (both empty
/// for no context).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct W3c {
    /// `00-<trace id>-<span id>-<flags>`.
    pub traceparent: String,
    /// Vendor entries, often empty.
    pub tracestate: String,
}

impl W3c {
    /// The context's active span, or empty when it has no valid span.
    pub fn of(cx: &Context) -> W3c {
        if !cx.span().span_context().is_valid() {
            return W3c::default();
        }
        let mut map = HashMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut map);
        W3c {
            traceparent: map.remove("traceparent").unwrap_or_default(),
            tracestate: map.remove("tracestate").unwrap_or_default(),
        }
    }

    /// The remote context these strings name (an empty context when they
    /// are empty or malformed: a bad traceparent starts a new trace).
    pub fn context(&self) -> Context {
        if self.traceparent.is_empty() {
            return Context::new();
        }
        let mut map = HashMap::new();
        map.insert("traceparent".to_owned(), self.traceparent.clone());
        if !self.tracestate.is_empty() {
            map.insert("tracestate".to_owned(), self.tracestate.clone());
        }
        TraceContextPropagator::new().extract(&map)
    }

    /// The 32-hex-digit trace id (empty when there is none).
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// The 16-hex-digit span id (empty when there is none).
    pub fn span_id(&self) -> &str {
        self.traceparent.get(36..52).unwrap_or_default()
    }

    /// No context.
    pub fn is_empty(&self) -> bool {
        self.traceparent.is_empty()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// `/mpctl.v1.ProcessManager/Start` → `mpctl.v1.ProcessManager/Start`
/// (the span name the RPC conventions ask for).
fn rpc_name(path: &str) -> String {
    path.trim_start_matches('/').to_owned()
}

/// A client channel whose every request gets a `client` span and carries
/// its context in the metadata.
#[derive(Clone, Debug)]
pub struct Traced<S> {
    inner: S,
}

impl<S> Traced<S> {
    /// Wraps `inner` (a tonic `Channel`).
    pub fn new(inner: S) -> Traced<S> {
        Traced { inner }
    }
}

impl<S, B> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, WithContext<S::Future>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !enabled() {
            return Either::Left(self.inner.call(req));
        }
        let cx = rpc_span(req.uri().path(), SpanKind::Client, &Context::current());
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HeaderInjector(req.headers_mut()))
        });
        Either::Right(self.inner.call(req).with_context(cx))
    }
}

/// A context whose active span is a new RPC span under `parent`; the span
/// ends when the last clone of the context is dropped (with the call).
fn rpc_span(path: &str, kind: SpanKind, parent: &Context) -> Context {
    let tracer = opentelemetry::global::tracer("mpctl");
    let span = tracer
        .span_builder(rpc_name(path))
        .with_kind(kind)
        .with_attributes([
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.method", rpc_name(path)),
        ])
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// The tonic server layer: a `server` span per RPC, child of the caller's.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerLayer;

impl<S> tower::Layer<S> for ServerLayer {
    type Service = ServerTraced<S>;

    fn layer(&self, inner: S) -> ServerTraced<S> {
        ServerTraced { inner }
    }
}

/// A server service under [`ServerLayer`].
#[derive(Clone, Debug)]
pub struct ServerTraced<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for ServerTraced<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, WithContext<S::Future>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !enabled() {
            return Either::Left(self.inner.call(req));
        }
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(req.headers()))
        });
        let cx = rpc_span(req.uri().path(), SpanKind::Server, &parent);
        let fut = {
            let _attached = cx.clone().attach();
            self.inner.call(req)
        };
        Either::Right(fut.with_context(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w3c_round_trip_and_ids() {
        let w = W3c {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: "congo=t61rcWkgMzE".into(),
        };
        assert_eq!(w.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(w.span_id(), "b7ad6b7169203331");
        let cx = w.context();
        assert!(cx.span().span_context().is_remote());
        assert_eq!(W3c::of(&cx), w);
    }

    #[test]
    fn malformed_or_empty_is_no_context() {
        for bad in ["", "00-zz-yy-01", "garbage"] {
            let w = W3c {
                traceparent: bad.into(),
                tracestate: String::new(),
            };
            assert!(!w.context().span().span_context().is_valid(), "{bad}");
            assert_eq!(W3c::of(&w.context()), W3c::default());
        }
    }
}
