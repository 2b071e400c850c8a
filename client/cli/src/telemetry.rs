//! Traces for `mpctl` and the daemons it runs (issue 14): the runtime's
//! [`Telemetry`] setup (off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set)
//! next to the stderr logs, and one root span per client command so that all
//! the RPCs of, say, one `mpctl run` form one trace.

use mpctl::runtime::telemetry::{mpctl_targets, Telemetry};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Shuts the exporter down when the command is done.
pub struct Guard(Option<Telemetry>);

impl Guard {
    /// Flushes the spans (before the tokio runtime stops).
    pub fn shutdown(self) {
        if let Some(t) = self.0 {
            t.shutdown();
        }
    }
}

/// The service name each subcommand exports as, unless `OTEL_SERVICE_NAME`
/// says otherwise.
pub fn service_name(command: &crate::Command) -> &'static str {
    match command {
        crate::Command::Server(_) => "mpctl-server",
        crate::Command::Agent(_) => "mpctl-agent",
        crate::Command::Dev(_) => "mpctl-dev",
        _ => "mpctl",
    }
}

/// Logs to stderr at `default` (or `RUST_LOG`), and, when configured,
/// exports `mpctl` spans. Runs inside the tokio runtime.
pub fn init(format: crate::logging::LogFormat, default: &str, service: &str) -> Guard {
    let fmt = crate::logging::layer(format, default);
    let telemetry = match Telemetry::start(service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mpctl: traces off: {e}");
            None
        }
    };
    let otel = telemetry.as_ref().map(|t| t.layer(mpctl_targets()));
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Guard(telemetry)
}

/// The context a client command runs in: a root span named after it when
/// tracing is on (ended when the command's future is done), else empty.
pub fn command_context(name: &str) -> Context {
    if !mpctl_transport::trace::enabled() {
        return Context::new();
    }
    let tracer = opentelemetry::global::tracer("mpctl");
    let span = tracer
        .span_builder(format!("mpctl {name}"))
        .with_kind(SpanKind::Client)
        .start(&tracer);
    Context::new().with_span(span)
}
