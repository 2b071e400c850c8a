//! Trace export (issue 14), configured the standard OpenTelemetry way and
//! off unless asked for: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns it on, `OTEL_SDK_DISABLED=true`
//! or `OTEL_TRACES_EXPORTER=none` keeps it off; `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER` (+ `_ARG`) are read by
//! the SDK. Spans go out over OTLP/gRPC (tonic) in batches.
//!
//! [`Telemetry`] is the one setup, used by the daemons and `mpctl` (through
//! the CLI's own `telemetry` module) and by function targets
//! ([`start_child`], from the bootstrap): there the W3C context the agent
//! gave the child (its process span) becomes the current context, so the
//! function's own `tracing` spans are children of the process span.
//! [`shutdown_child`] flushes before the child exits.

use std::sync::Mutex;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::Layer;

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Whether this process should export traces (see the module docs).
pub fn configured() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let none = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !disabled
        && !none
}

/// An installed exporter: the global tracer provider, the W3C propagator,
/// and `mpctl_transport::trace` enabled.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Installs export when [`configured`]; `Ok(None)` otherwise. Must be
    /// called inside a tokio runtime (the gRPC exporter's connection lives
    /// on it), which must outlive [`Telemetry::shutdown`].
    /// `default_service` names the service when `OTEL_SERVICE_NAME` (or
    /// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`) does not.
    pub fn start(default_service: &str) -> Result<Option<Telemetry>, String> {
        if !configured() {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("cannot set up the OTLP trace exporter: {e}"))?;
        let detected = Resource::builder().build();
        let named = detected
            .get(&opentelemetry::Key::new("service.name"))
            .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
        let resource = if named {
            detected
        } else {
            Resource::builder()
                .with_service_name(default_service.to_owned())
                .build()
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        mpctl_transport::trace::enable();
        Ok(Some(Telemetry { provider }))
    }

    /// A `tracing` layer that exports the spans `filter` lets through.
    pub fn layer<S>(&self, filter: Targets) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("mpctl"))
            .with_filter(filter)
    }

    /// Exports what is buffered and stops (call before the process exits,
    /// while the tokio runtime still runs).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("mpctl: flushing traces: {e}");
        }
    }
}

/// `mpctl` spans only: the daemons' own (`mpctl_*` crates); hyper, h2,
/// tower and tonic never.
pub fn mpctl_targets() -> Targets {
    Targets::new().with_target("mpctl", LevelFilter::INFO)
}

/// A function's spans: anything at INFO or above except the gRPC stack's.
fn child_targets() -> Targets {
    Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
}

/// A child's export: its runtime (for the exporter's connection) and the
/// provider, shut down by [`shutdown_child`] in this process only.
struct Child {
    telemetry: Telemetry,
    runtime: tokio::runtime::Runtime,
    pid: u32,
}

static CHILD: Mutex<Option<Child>> = Mutex::new(None);

/// In a function target: when export is configured, installs it (with a
/// subscriber of its own) and makes `w3c` (the process span's context) the
/// current context of this thread for the rest of the process. A function
/// target that set up its own subscriber keeps it (then only this crate's
/// context is set). Failures are reported on stderr; the function runs anyway.
pub fn start_child(w3c: &mpctl_transport::trace::W3c, service: &str) {
    if !configured() {
        return;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mpctl-otlp")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mpctl: traces off: cannot start the exporter's runtime: {e}");
            return;
        }
    };
    let telemetry = {
        let _enter = runtime.enter();
        match Telemetry::start(service) {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                eprintln!("mpctl: traces off: {e}");
                return;
            }
        }
    };
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry().with(telemetry.layer(child_targets()));
    let _ = tracing::subscriber::set_global_default(subscriber);
    if !w3c.is_empty() {
        // For the life of the process: the guard is never dropped.
        std::mem::forget(Context::attach(w3c.context()));
    }
    *CHILD.lock().unwrap_or_else(|e| e.into_inner()) = Some(Child {
        telemetry,
        runtime,
        pid: std::process::id(),
    });
}

/// Flushes a child's spans before it exits (nothing when export is off, or
/// in a forked copy of a process that set it up: its exporter thread and
/// runtime did not come along).
pub fn shutdown_child() {
    let child = CHILD.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(c) = child {
        if c.pid == std::process::id() {
            c.telemetry.shutdown();
            c.runtime.shutdown_background();
        } else {
            std::mem::forget(c);
        }
    }
}
