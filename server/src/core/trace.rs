//! The span of each managed process (issue 14): started in the coordinator
//! when the start is accepted (child of the `Start` RPC's span), carried to
//! the node in `Launch` and into the child as `TRACEPARENT`, and ended when
//! the process settles, with what became of it. Its W3C context is part of
//! the process's row, so `inspect` shows the trace id and a restarted
//! coordinator still launches a queued process under it; the live span
//! itself exists only in the coordinator that started it (a process that
//! settles after a restart exports no span of its own).

use std::fmt;

use mpctl_transport::trace::{enabled, W3c};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use super::model::{Method, Proc, ProcState};

/// A process's trace context, and its live span while this coordinator
/// holds it.
#[derive(Clone, Default)]
pub struct ProcTrace {
    pub w3c: W3c,
    span: Option<Context>,
}

impl PartialEq for ProcTrace {
    fn eq(&self, other: &ProcTrace) -> bool {
        self.w3c == other.w3c
    }
}

impl fmt::Debug for ProcTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcTrace")
            .field("w3c", &self.w3c)
            .field("live", &self.span.is_some())
            .finish()
    }
}

impl ProcTrace {
    /// From a stored row: the context, no live span.
    pub fn stored(w3c: W3c) -> ProcTrace {
        ProcTrace { w3c, span: None }
    }

    /// A new process span under the current context (the `Start` RPC's);
    /// empty when tracing is off.
    pub fn start() -> ProcTrace {
        if !enabled() {
            return ProcTrace::default();
        }
        let tracer = opentelemetry::global::tracer("mpctl");
        let span = tracer
            .span_builder("process")
            .with_kind(SpanKind::Internal)
            .start_with_context(&tracer, &Context::current());
        let cx = Context::current().with_span(span);
        ProcTrace {
            w3c: W3c::of(&cx),
            span: Some(cx),
        }
    }

    /// Ends the live span (if any) with `p`'s outcome; later calls do nothing.
    pub fn end(&mut self, p: &Proc) {
        let Some(cx) = self.span.take() else {
            return;
        };
        let span = cx.span();
        let target = match (p.function.is_empty(), p.pool_id.is_empty()) {
            (true, _) => "command",
            (false, true) => "function",
            (false, false) => "pool_worker",
        };
        let method = match p.method {
            Method::Spawn => "spawn",
            Method::Forkserver => "forkserver",
            Method::Fork => "fork",
        };
        span.update_name(format!("process {}", p.name));
        let mut attrs = vec![
            KeyValue::new("mpctl.process.id", p.id.clone()),
            KeyValue::new("mpctl.process.name", p.name.clone()),
            KeyValue::new("mpctl.node", p.node.clone()),
            KeyValue::new("process.pid", i64::from(p.pid)),
            KeyValue::new("mpctl.start_method", method),
            KeyValue::new("mpctl.target", target),
            KeyValue::new("mpctl.lost", p.state == ProcState::Lost),
        ];
        if !p.pool_id.is_empty() {
            attrs.push(KeyValue::new("mpctl.pool.id", p.pool_id.clone()));
        }
        match p.exitcode {
            Some(code) if code < 0 => {
                attrs.push(KeyValue::new("mpctl.exitcode", i64::from(code)));
                attrs.push(KeyValue::new("mpctl.signal", i64::from(-code)));
            }
            Some(code) => attrs.push(KeyValue::new("mpctl.exitcode", i64::from(code))),
            None => {}
        }
        span.set_attributes(attrs);
        match p.state {
            ProcState::Failed => span.set_status(Status::error(p.start_error.clone())),
            ProcState::Lost => span.set_status(Status::error("lost with its node")),
            _ if p.exitcode != Some(0) => {
                span.set_status(Status::error(format!("exit code {:?}", p.exitcode)))
            }
            _ => {}
        }
        span.end();
    }

    /// A span is still open here.
    pub fn is_live(&self) -> bool {
        self.span.is_some()
    }
}
