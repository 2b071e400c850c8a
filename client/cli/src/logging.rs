//! The daemons' log lines: `--log-format text` (the default, for people)
//! or `json` (one JSON object per line, for log collectors), both on
//! stderr, filtered by `RUST_LOG` (default `info` for daemons, `warn` for
//! the other commands).
//!
//! A JSON line is tracing-subscriber's (`timestamp`, `level`, `fields`,
//! `target`, `span`, `spans`) plus `trace_id` when the event happens inside
//! a span that carries a trace context, so log lines and traces join.
//! [`current_trace_id`] is that hook: it answers `None` until the daemons
//! carry trace contexts (OpenTelemetry), and then nothing else here
//! changes.

use std::fmt;

use clap::ValueEnum;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent};
use tracing_subscriber::registry::LookupSpan;

/// How the daemons write their log lines.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines
    #[default]
    Text,
    /// One JSON object per line
    Json,
}

/// The W3C trace id (32 hex digits) of the span the current event is in,
/// if that span has a trace context. The hook for tracing: none yet.
pub fn current_trace_id() -> Option<String> {
    mpctl_transport::trace::current_trace_id()
}

/// tracing-subscriber's JSON line with `trace_id` added when there is one.
struct JsonWithTrace(Format<Json>);

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(trace_id) = current_trace_id() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The line is one JSON object and a newline: the field goes before
        // the closing brace. The id is hex, so it needs no escaping.
        match line.trim_end().strip_suffix('}') {
            Some(head) => writeln!(writer, "{head},\"trace_id\":\"{trace_id}\"}}"),
            None => writer.write_str(&line),
        }
    }
}

/// The stderr log layer in `format`, filtered by `RUST_LOG` or
/// `default_filter` ([`crate::telemetry::init`] puts it next to the trace
/// exporter).
pub fn layer<S>(
    format: LogFormat,
    default_filter: &str,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => builder
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(JsonWithTrace(Format::default().json()))
            .with_filter(filter)
            .boxed(),
    }
}
