//! Logs and invocations, the way Powertools for AWS Lambda does them.
//!
//! - Logs: one JSON object per line in Lambda (CloudWatch parses them), with
//!   `timestamp`, `level`, `message`, `service`, `function_name`, then the fields
//!   of every span in scope (an invocation's `function_request_id`, `cold_start`,
//!   `trace_id`; an order's `order_id`, an event's `event_id`) and the event's own
//!   fields. Human-readable text locally.
//! - [`Invocation`]: the span of one invocation, its cold start flag, and its
//!   `ColdStart` / `HandlerDuration` metrics, flushed as Embedded Metric Format
//!   when it ends (see [`crate::metrics`]).
//!
//! What is logged is chosen at each call site: configuration is logged through
//! its redacting `Debug`, payloads and request bodies never.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Instrument, Span, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt as tsfmt, EnvFilter};

use crate::config::Env;
use crate::metrics::{self, Metric, Recorder};
use crate::trace::TraceParent;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// `LOG_FORMAT` (`json` / `text`) wins; then Lambda's own `AWS_LAMBDA_LOG_FORMAT`;
    /// then JSON inside Lambda (`AWS_LAMBDA_FUNCTION_NAME` is set) and text elsewhere.
    pub fn detect(env: &Env) -> LogFormat {
        let explicit = env
            .get("LOG_FORMAT")
            .ok()
            .flatten()
            .or_else(|| env.get("AWS_LAMBDA_LOG_FORMAT").ok().flatten());
        match explicit.map(str::to_ascii_lowercase).as_deref() {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            _ if matches!(env.get("AWS_LAMBDA_FUNCTION_NAME"), Ok(Some(_))) => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }
}

/// The filter: `RUST_LOG` if set, else `AWS_LAMBDA_LOG_LEVEL` / `LOG_LEVEL`, else `info`.
fn filter(env: &Env) -> EnvFilter {
    let directive = ["RUST_LOG", "AWS_LAMBDA_LOG_LEVEL", "LOG_LEVEL"]
        .into_iter()
        .find_map(|var| env.get(var).ok().flatten())
        .unwrap_or("info")
        .to_ascii_lowercase();
    EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The process's service: the function's binary name, e.g. `create-order`.
static SERVICE: OnceLock<String> = OnceLock::new();

/// The service named at [`init`], or `unknown` before.
pub fn service() -> &'static str {
    SERVICE.get().map_or("unknown", String::as_str)
}

/// Installs the global subscriber for `service` (the binary's name), and sets up
/// [`metrics`] from the same environment. A second call (tests) leaves the first
/// in place. Lines go to stdout, as Lambda collects them.
pub fn init(env: &Env, service: &str) {
    install(env, service, LogOutput::Stdout);
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// A function's logs (Lambda sends stdout to CloudWatch).
    Stdout,
    /// A command line tool's logs, apart from the results it prints on stdout.
    Stderr,
}

/// [`init`] with the log lines sent to `output`.
pub fn install(env: &Env, service: &str, output: LogOutput) {
    install_with_book(env, service, output, None);
}

/// [`install`], and with `book` every line also goes into it as a JSON line
/// (whatever the output's format), for the emulator's `logs` and console.
pub fn install_with_book(
    env: &Env,
    service: &str,
    output: LogOutput,
    book: Option<std::sync::Arc<crate::logbook::LogBook>>,
) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let _first = SERVICE.set(service.to_owned());
    let format = LogFormat::detect(env);
    metrics::configure(env, format == LogFormat::Json);
    let writer = match output {
        LogOutput::Stdout => tsfmt::writer::BoxMakeWriter::new(std::io::stdout),
        LogOutput::Stderr => tsfmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let lines = match format {
        LogFormat::Json => tsfmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines::from_env(env))
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => tsfmt::layer()
            .with_ansi(match output {
                LogOutput::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
                LogOutput::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
            })
            .event_format(TextLines)
            .with_writer(writer)
            .boxed(),
    };
    let book = book.map(|book| {
        tsfmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines::from_env(env))
            .with_writer(crate::logbook::BookWriter(book))
            .boxed()
    });
    let _already_set = tracing_subscriber::registry()
        .with(filter(env))
        .with(lines)
        .with(book)
        .try_init();
}

/// The name of the span that says which function a line comes from: the
/// emulator runs many functions in one process, and wraps each one's work in
/// [`function_span`]. Its one field is Powertools' `function_name`.
pub const FUNCTION_SPAN: &str = "function";

/// The span of the work of function `name` (its logical id in the emulator):
/// text lines carry the name as a prefix, JSON lines as `function_name`.
pub fn function_span(name: &str) -> Span {
    tracing::info_span!(FUNCTION_SPAN, function_name = %name)
}

/// The time of a log line: RFC 3339 in UTC, as Lambda's lines give it.
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `text` without its terminal colour sequences (`ESC [ ... m`).
fn without_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Text lines for people: time, level, `[Function]` when a [`function_span`]
/// is in scope, then the other spans (`name{fields}:`), the message and the
/// event's fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextLines;

impl<S, N> FormatEvent<S, N> for TextLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let timestamp = now_rfc3339();
        write!(writer, "{timestamp} {:>5} ", event.metadata().level())?;
        let mut function = None;
        let mut spans = String::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let fields = extensions
                    .get::<FormattedFields<N>>()
                    .map_or("", |f| f.fields.as_str());
                if span.name() == FUNCTION_SPAN {
                    // The innermost wins (a function invoked by another's work).
                    let plain = without_ansi(fields);
                    function = plain.strip_prefix("function_name=").map(str::to_owned);
                    continue;
                }
                spans.push_str(span.name());
                if !fields.is_empty() {
                    spans.push('{');
                    spans.push_str(fields);
                    spans.push('}');
                }
                spans.push_str(": ");
            }
        }
        if let Some(function) = function {
            write!(writer, "[{function}] ")?;
        }
        writer.write_str(&spans)?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The JSON line format: flat keys, Powertools' names, fixed keys first.
#[derive(Debug, Clone)]
pub struct JsonLines {
    function_name: Option<String>,
    function_version: Option<String>,
    function_memory_size: Option<String>,
}

impl JsonLines {
    pub fn from_env(env: &Env) -> Self {
        let get = |var| env.get(var).ok().flatten().map(str::to_owned);
        Self {
            function_name: get("AWS_LAMBDA_FUNCTION_NAME"),
            function_version: get("AWS_LAMBDA_FUNCTION_VERSION"),
            function_memory_size: get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
        }
    }

    /// The line for an event at `level` with the merged `fields`: the fixed keys
    /// first, in this order, then the span and event fields.
    fn line(&self, level: &str, target: &str, mut fields: Map<String, Value>) -> String {
        let timestamp = now_rfc3339();
        let message = fields.remove("message").unwrap_or_else(|| "".into());
        // A function span's name (the emulator's functions share a process)
        // wins over the process's own.
        let function_name = fields
            .remove("function_name")
            .or_else(|| self.function_name.as_deref().map(Value::from));
        let service = fields.remove("service").unwrap_or_else(|| service().into());
        let mut fixed: Vec<(&str, Value)> = vec![
            ("timestamp", timestamp.into()),
            ("level", level.into()),
            ("message", message),
            ("service", service),
        ];
        if let Some(name) = function_name {
            fixed.push(("function_name", name));
        }
        for (key, value) in [
            ("function_version", &self.function_version),
            ("function_memory_size", &self.function_memory_size),
        ] {
            if let Some(value) = value {
                fixed.push((key, value.as_str().into()));
            }
        }
        fixed.push(("target", target.into()));
        let mut line = String::with_capacity(256);
        line.push('{');
        let pairs = fixed
            .iter()
            .map(|(k, v)| (*k, v))
            .chain(fields.iter().map(|(k, v)| (k.as_str(), v)));
        for (i, (key, value)) in pairs.enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&Value::from(key).to_string());
            line.push(':');
            line.push_str(&value.to_string());
        }
        line.push_str("}\n");
        line
    }
}

/// Span and event field names of other layers, in ours.
fn rename(key: &str) -> &str {
    match key {
        // lambda_runtime's own span.
        "requestId" => "function_request_id",
        "xrayTraceId" => "xray_trace_id",
        other => other,
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(formatted) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(span_fields)) =
                    serde_json::from_str::<Value>(formatted.fields.as_str())
                {
                    for (key, value) in span_fields {
                        fields.insert(rename(&key).to_owned(), value);
                    }
                }
            }
        }
        event.record(&mut JsonVisitor(&mut fields));
        let metadata = event.metadata();
        writer.write_str(&self.line(metadata.level().as_str(), metadata.target(), fields))
    }
}

/// Collects an event's fields as JSON values.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        self.0.insert(rename(field.name()).to_owned(), value);
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

/// The services that have had their first invocation in this process. Lambda
/// runs one per process; the emulator runs several in one.
static STARTED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// True the first time it is asked for `service` in this process.
fn first_invocation(service: &str) -> bool {
    let mut started = STARTED.lock().unwrap_or_else(PoisonError::into_inner);
    started
        .get_or_insert_with(HashSet::new)
        .insert(service.to_owned())
}

/// One invocation of a function: its span (with `service`, `function_request_id`,
/// `cold_start`, `xray_trace_id`), timed, with its metrics flushed at the end.
#[derive(Debug)]
pub struct Invocation {
    span: Span,
    recorder: Recorder,
    cold_start: bool,
}

impl Invocation {
    /// Starts the invocation `request_id` of `service`; `xray_trace_id` is Lambda's
    /// `Lambda-Runtime-Trace-Id` (also in `_X_AMZN_TRACE_ID`) when tracing is on.
    pub fn start(service: &str, request_id: &str, xray_trace_id: Option<&str>) -> Self {
        let cold_start = first_invocation(service);
        let span = tracing::info_span!(
            "invocation",
            service = service,
            function_request_id = request_id,
            cold_start,
            xray_trace_id = xray_trace_id.map(tracing::field::display),
        );
        Self {
            span,
            recorder: Recorder::new(service),
            cold_start,
        }
    }

    /// True if this is the process's first invocation of the function.
    pub fn cold_start(&self) -> bool {
        self.cold_start
    }

    /// The trace to continue when the event brings none: the invocation's X-Ray
    /// trace if it has one, else a new trace.
    pub fn fallback_trace(xray_trace_id: Option<&str>) -> TraceParent {
        xray_trace_id
            .and_then(TraceParent::from_xray)
            .or_else(TraceParent::from_lambda_environment)
            .unwrap_or_else(TraceParent::new_root)
    }

    /// Runs `work` inside the invocation's span, then records `ColdStart` and
    /// `HandlerDuration` and flushes the metrics.
    pub async fn run<F: Future>(self, work: F) -> F::Output {
        let started = Instant::now();
        let output = work.instrument(self.span.clone()).await;
        if self.cold_start {
            self.recorder.count(Metric::COLD_START, 1);
        }
        self.recorder.record(
            Metric::HANDLER_DURATION,
            started.elapsed().as_secs_f64() * 1000.0,
        );
        metrics::flush();
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_in_lambda_text_elsewhere_and_overridable() {
        assert_eq!(LogFormat::detect(&Env::default()), LogFormat::Text);
        let lambda = Env::from_pairs([("AWS_LAMBDA_FUNCTION_NAME", "create-order")]);
        assert_eq!(LogFormat::detect(&lambda), LogFormat::Json);
        let forced = Env::from_pairs([("AWS_LAMBDA_FUNCTION_NAME", "f"), ("LOG_FORMAT", "text")]);
        assert_eq!(LogFormat::detect(&forced), LogFormat::Text);
        let aws = Env::from_pairs([("AWS_LAMBDA_LOG_FORMAT", "JSON")]);
        assert_eq!(LogFormat::detect(&aws), LogFormat::Json);
    }

    #[test]
    fn the_first_invocation_of_each_service_is_the_cold_one() {
        assert!(first_invocation("telemetry-test-a"));
        assert!(!first_invocation("telemetry-test-a"));
        assert!(first_invocation("telemetry-test-b"));
    }

    /// What the subscriber of `format` writes for one closure.
    fn capture_as(format: LogFormat, work: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let env = Env::from_pairs([("AWS_LAMBDA_FUNCTION_NAME", "orders-CreateOrder-X1")]);
        let builder = tsfmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_writer(move || writer.clone());
        match format {
            LogFormat::Json => tracing::subscriber::with_default(
                builder
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLines::from_env(&env))
                    .finish(),
                work,
            ),
            LogFormat::Text => tracing::subscriber::with_default(
                builder.with_ansi(false).event_format(TextLines).finish(),
                work,
            ),
        }
        let bytes = buffer
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    /// A subscriber with the JSON format writing into a buffer, for one closure.
    fn capture(work: impl FnOnce()) -> Vec<Value> {
        capture_as(LogFormat::Json, work)
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
            .collect()
    }

    #[test]
    fn text_lines_name_their_function_once_before_the_message() {
        let text = capture_as(LogFormat::Text, || {
            let function = function_span("OrderSagaFunction");
            let _in_function = function.enter();
            let order = tracing::info_span!("request", order_id = "o-1");
            let _in_order = order.enter();
            tracing::info!(status = 201u16, "answered");
            drop(_in_order);
            drop(_in_function);
            tracing::warn!("the emulator's own");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with(
                " INFO [OrderSagaFunction] request{order_id=\"o-1\"}: answered status=201"
            ),
            "{text}"
        );
        assert!(!lines[0].contains("function_name"), "{text}");
        assert!(lines[1].ends_with(" WARN the emulator's own"), "{text}");
        assert!(lines[0].split(' ').next().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn colour_sequences_are_not_part_of_a_name() {
        assert_eq!(
            without_ansi("\u{1b}[3mfunction_name\u{1b}[0m\u{1b}[2m=\u{1b}[0mOrderSagaFunction"),
            "function_name=OrderSagaFunction"
        );
    }

    #[test]
    fn a_function_span_names_the_function_of_json_lines() {
        let lines = capture(|| {
            let function = function_span("InventoryConsumerFunction");
            let _in_function = function.enter();
            tracing::info!("event handled");
        });
        assert_eq!(lines[0]["function_name"], "InventoryConsumerFunction");
        assert_eq!(lines[0].as_object().map(|o| o.len()), Some(6), "{lines:?}");
    }

    #[test]
    fn json_lines_are_flat_with_the_span_fields_and_the_function() {
        let lines = capture(|| {
            let invocation = Invocation::start("create-order", "req-1", Some("Root=1-x"));
            let _entered = invocation.span.enter();
            let order = tracing::info_span!("request", trace_id = "abc", order_id = "o-1");
            let _in_order = order.enter();
            tracing::info!(status = 201u16, "answered");
            tracing::debug!("filtered out");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "answered");
        assert_eq!(line["service"], "create-order");
        assert_eq!(line["function_name"], "orders-CreateOrder-X1");
        assert_eq!(line["function_request_id"], "req-1");
        assert_eq!(line["xray_trace_id"], "Root=1-x");
        assert!(line["cold_start"].is_boolean());
        assert_eq!(line["trace_id"], "abc");
        assert_eq!(line["order_id"], "o-1");
        assert_eq!(line["status"], 201);
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn lambda_runtime_span_fields_take_our_names() {
        let lines = capture(|| {
            let runtime = tracing::info_span!(
                "Lambda runtime invoke",
                requestId = "r-9",
                xrayTraceId = "Root=1-y"
            );
            let _entered = runtime.enter();
            tracing::warn!(error = "boom", "failed");
        });
        assert_eq!(lines[0]["function_request_id"], "r-9");
        assert_eq!(lines[0]["xray_trace_id"], "Root=1-y");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["error"], "boom");
        assert!(lines[0].get("requestId").is_none());
    }
}
