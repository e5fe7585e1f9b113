//! The system's metrics, recorded through the `metrics` facade: published in
//! Lambda as CloudWatch Embedded Metric Format (EMF: plain JSON log lines that
//! CloudWatch turns into metrics, no agent), and shown by the emulator in
//! Prometheus' text format (`metrics-exporter-prometheus`, in the emulator).
//!
//! A metric is data ([`Metric`]: names, unit, kind, help); the toolkit defines
//! its own and a service its business metrics. Every value has the label (EMF:
//! dimension) `service`: the function's binary name. A value may carry a
//! second one (e.g. `outbox`, [`Recorder::record_for`]); EMF then also
//! publishes it under `service` alone, so one alarm can watch them all. The
//! namespace is `METRICS_NAMESPACE` (`OrderProcessing`). The template's alarms
//! watch `EventsDeadLettered`, `OutboxAge` and `OutboxFailedRows` by these names.
//!
//! In Lambda, [`configure`] installs the EMF writer as the facade's recorder,
//! and an invocation [`flush`]es when it ends ([`crate::telemetry::Invocation::run`]).
//! The EMF writer is ours, not `metrics_cloudwatch_embedded`'s: that crate
//! keeps 100 values of a distribution per flush and drops the rest, where this
//! one spills them into more documents. The emulator installs a Prometheus
//! recorder instead and reads the EMF lines of the function processes it runs
//! with [`ingest_emf`], so `/metrics` shows the same figures in both of its
//! modes.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Label, SharedString};
use serde_json::{json, Map, Value};

use crate::config::Env;

/// A metric, as data: its CloudWatch name, its Prometheus name, unit, kind and
/// help. The toolkit defines its own ([`Metric::EVENTS_PUBLISHED`], ...); a
/// service defines its business metrics the same way, as constants of its own
/// (`Metric::counter("OrdersCreated", "orders_created_total", "...")`), and
/// [`describe`]s them so that `/metrics` shows them before their first value.
/// Two metrics are the same metric when their CloudWatch names are.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    name: &'static str,
    prometheus: &'static str,
    unit: Unit,
    kind: Kind,
    help: &'static str,
}

/// A metric's CloudWatch unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Seconds,
    Milliseconds,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Seconds => "Seconds",
            Unit::Milliseconds => "Milliseconds",
        }
    }

    fn parse(unit: &str) -> Self {
        match unit {
            "Seconds" => Unit::Seconds,
            "Milliseconds" => Unit::Milliseconds,
            _ => Unit::Count,
        }
    }
}

/// How values of a metric combine.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Values add up.
    Counter,
    /// The latest value stands (the largest within one flush).
    Gauge,
    /// Every value counts: a histogram locally, an array of values in EMF.
    Distribution(&'static [f64]),
}

/// Bounds of a duration's histogram, in milliseconds.
pub const DURATION_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0];

impl PartialEq for Metric {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Metric {}

impl PartialOrd for Metric {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Metric {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.cmp(other.name)
    }
}

impl std::hash::Hash for Metric {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl Metric {
    /// Values that add up (Prometheus: a name ending in `_total`).
    pub const fn counter(name: &'static str, prometheus: &'static str, help: &'static str) -> Self {
        Self::define(name, prometheus, Unit::Count, Kind::Counter, help)
    }

    /// A level: the latest value stands.
    pub const fn gauge(
        name: &'static str,
        prometheus: &'static str,
        unit: Unit,
        help: &'static str,
    ) -> Self {
        Self::define(name, prometheus, unit, Kind::Gauge, help)
    }

    /// Every value counts: a histogram with these bucket bounds locally.
    pub const fn distribution(
        name: &'static str,
        prometheus: &'static str,
        unit: Unit,
        buckets: &'static [f64],
        help: &'static str,
    ) -> Self {
        Self::define(name, prometheus, unit, Kind::Distribution(buckets), help)
    }

    const fn define(
        name: &'static str,
        prometheus: &'static str,
        unit: Unit,
        kind: Kind,
        help: &'static str,
    ) -> Self {
        Self {
            name,
            prometheus,
            unit,
            kind,
            help,
        }
    }

    /// outbox-relay: events written to the streams.
    pub const EVENTS_PUBLISHED: Metric = Metric::counter(
        "EventsPublished",
        "events_published_total",
        "Events the outbox relay wrote to the streams.",
    );
    /// outbox-relay: age of the oldest unpublished outbox row, in seconds (0 when none).
    pub const OUTBOX_AGE: Metric = Metric::gauge(
        "OutboxAge",
        "outbox_age_seconds",
        Unit::Seconds,
        "Age of the oldest unpublished outbox row, at the relay's last run.",
    );
    /// outbox-relay: rows set aside as failed, per outbox (dimension `outbox`).
    pub const OUTBOX_FAILED_ROWS: Metric = Metric::gauge(
        "OutboxFailedRows",
        "outbox_failed_rows",
        Unit::Count,
        "Outbox rows set aside as failed (never published), at the relay's last run.",
    );
    /// Consumers: records handled and acknowledged.
    pub const EVENTS_PROCESSED: Metric = Metric::counter(
        "EventsProcessed",
        "events_processed_total",
        "Records a consumer handled and acknowledged.",
    );
    /// Consumers: records whose handling failed (to be retried or dead-lettered).
    pub const EVENTS_FAILED: Metric = Metric::counter(
        "EventsFailed",
        "events_failed_total",
        "Records whose handling failed (retried or dead-lettered).",
    );
    /// Consumers: records moved to the dead-letter stream.
    pub const EVENTS_DEAD_LETTERED: Metric = Metric::counter(
        "EventsDeadLettered",
        "events_dead_lettered_total",
        "Records moved to a dead-letter stream.",
    );
    /// Consumers: records per handler call.
    pub const BATCH_SIZE: Metric = Metric::distribution(
        "BatchSize",
        "batch_size",
        Unit::Count,
        BATCH_BUCKETS,
        "Records per batch handed to a consumer's handler.",
    );
    /// Consumers: times a stream worker found its store (the database or
    /// Redis) unavailable and paused until it answered again.
    pub const STORE_OUTAGES: Metric = Metric::counter(
        "StoreOutages",
        "store_outages_total",
        "Times a consumer found its store unavailable and paused until it answered.",
    );
    /// Consumers: consumer groups found missing (`NOGROUP`) and created again.
    pub const CONSUMER_GROUPS_RECREATED: Metric = Metric::counter(
        "ConsumerGroupsRecreated",
        "consumer_groups_recreated_total",
        "Consumer groups found missing (NOGROUP) and created again from the oldest entry.",
    );
    /// outbox-relay: batches kept because fewer than `REDIS_MIN_REPLICAS`
    /// replicas acknowledged them in time (`WAIT`).
    pub const REPLICATION_TIMEOUTS: Metric = Metric::counter(
        "ReplicationTimeouts",
        "replication_timeouts_total",
        "Relay batches kept because too few Redis replicas acknowledged them in time.",
    );
    /// Every function: the first invocation of a process.
    pub const COLD_START: Metric = Metric::counter(
        "ColdStart",
        "cold_starts_total",
        "First invocations of a function process.",
    );
    /// Every function: an invocation's duration, in milliseconds.
    pub const HANDLER_DURATION: Metric = Metric::distribution(
        "HandlerDuration",
        "handler_duration_milliseconds",
        Unit::Milliseconds,
        DURATION_BUCKETS,
        "Duration of an invocation.",
    );

    /// The toolkit's metrics.
    pub const TOOLKIT: [Metric; 12] = [
        Metric::EVENTS_PUBLISHED,
        Metric::OUTBOX_AGE,
        Metric::OUTBOX_FAILED_ROWS,
        Metric::EVENTS_PROCESSED,
        Metric::EVENTS_FAILED,
        Metric::EVENTS_DEAD_LETTERED,
        Metric::BATCH_SIZE,
        Metric::STORE_OUTAGES,
        Metric::CONSUMER_GROUPS_RECREATED,
        Metric::REPLICATION_TIMEOUTS,
        Metric::COLD_START,
        Metric::HANDLER_DURATION,
    ];

    /// The CloudWatch metric name.
    pub fn emf_name(self) -> &'static str {
        self.name
    }

    /// The CloudWatch unit.
    pub fn unit(self) -> &'static str {
        self.unit.as_str()
    }

    /// The Prometheus name (counters end in `_total`).
    pub fn prometheus_name(self) -> &'static str {
        self.prometheus
    }

    /// A distribution's histogram bounds; `None` for a counter or a gauge.
    pub fn buckets(self) -> Option<&'static [f64]> {
        match self.kind {
            Kind::Distribution(bounds) => Some(bounds),
            Kind::Counter | Kind::Gauge => None,
        }
    }

    fn kind(self) -> Kind {
        self.kind
    }

    /// A metric known to this process by its CloudWatch name: the toolkit's,
    /// one [`describe`]d or recorded, else one read from an EMF definition of
    /// another process (a counter when its unit is `Count`, else a gauge; a
    /// distribution when `values` came as an array), named for Prometheus
    /// in snake case. Such a metric's names live for the process (a handful).
    pub fn from_emf(name: &str, unit: &str, array: bool) -> Metric {
        if let Some(toolkit) = Metric::TOOLKIT.into_iter().find(|m| m.name == name) {
            return toolkit;
        }
        if let Some(known) = known().get(name) {
            return *known;
        }
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let unit = Unit::parse(unit);
        let snake = snake_case(name);
        let (prometheus, kind) = match (array, unit) {
            (true, Unit::Count) => (snake, Kind::Distribution(BATCH_BUCKETS)),
            (true, _) => (snake, Kind::Distribution(DURATION_BUCKETS)),
            (false, Unit::Count) => (format!("{snake}_total"), Kind::Counter),
            (false, _) => (snake, Kind::Gauge),
        };
        let metric = Metric::define(leak(name.to_owned()), leak(prometheus), unit, kind, "");
        describe(&[metric]);
        metric
    }
}

/// `OrdersCreated` → `orders_created`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Makes `metrics` known to this process: to the installed recorder (whose
/// `/metrics` then lists them, with HELP and TYPE, before their first value)
/// and to the EMF writer (which finds a value's CloudWatch name and unit
/// here). A service calls it once at start.
pub fn describe(metrics: &[Metric]) {
    let mut known = known();
    for m in metrics {
        known.entry(m.name).or_insert(*m);
        describe_to_facade(*m);
    }
}

/// Describes every metric this process knows to the recorder installed now:
/// for a recorder installed after some were [`describe`]d (the emulator's).
pub fn describe_known() {
    let known: Vec<Metric> = known().values().copied().collect();
    for m in Metric::TOOLKIT.into_iter().chain(known) {
        describe_to_facade(m);
    }
}

fn describe_to_facade(m: Metric) {
    let unit = match m.unit {
        Unit::Count => metrics::Unit::Count,
        Unit::Seconds => metrics::Unit::Seconds,
        Unit::Milliseconds => metrics::Unit::Milliseconds,
    };
    match m.kind {
        Kind::Counter => metrics::describe_counter!(m.prometheus, unit, m.help),
        Kind::Gauge => metrics::describe_gauge!(m.prometheus, unit, m.help),
        Kind::Distribution(_) => metrics::describe_histogram!(m.prometheus, unit, m.help),
    }
}

/// Every metric this process knows, by CloudWatch name.
static KNOWN: Mutex<BTreeMap<&'static str, Metric>> = Mutex::new(BTreeMap::new());

fn known() -> std::sync::MutexGuard<'static, BTreeMap<&'static str, Metric>> {
    KNOWN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The metric recorded under the facade's key name `prometheus`: the
/// toolkit's, or one [`describe`]d or recorded by this process.
fn by_prometheus_name(prometheus: &str) -> Option<Metric> {
    Metric::TOOLKIT
        .into_iter()
        .find(|m| m.prometheus == prometheus)
        .or_else(|| {
            known()
                .values()
                .find(|m| m.prometheus == prometheus)
                .copied()
        })
}

pub const DEFAULT_NAMESPACE: &str = "OrderProcessing";

/// Sets up this process's metrics from `env`: with `METRICS` = `emf` (or unset
/// and `emf_by_default`, i.e. JSON logs, i.e. Lambda) it installs the EMF
/// writer as the `metrics` facade's recorder, under the namespace
/// `METRICS_NAMESPACE`. Otherwise (`off`, or text logs) it installs nothing,
/// and values go to whichever recorder the process installed itself (the
/// emulator's Prometheus recorder), or nowhere. The first recorder installed
/// stays.
pub fn configure(env: &Env, emf_by_default: bool) {
    let namespace = env
        .get("METRICS_NAMESPACE")
        .ok()
        .flatten()
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_owned();
    let emf = match env.get("METRICS").ok().flatten() {
        Some(v) if v.eq_ignore_ascii_case("emf") => true,
        Some(v) if v.eq_ignore_ascii_case("off") => false,
        _ => emf_by_default,
    };
    if !emf {
        return;
    }
    let writer = Arc::new(Emf::new(namespace));
    if metrics::set_global_recorder(EmfRecorder(writer.clone())).is_ok() {
        let _first = EMF.set(writer);
        describe_known();
    }
}

/// Records metrics for one service: its values carry the label (EMF: the
/// dimension) `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorder {
    service: Arc<str>,
}

impl Recorder {
    pub fn new(service: &str) -> Self {
        Self {
            service: Arc::from(service),
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// Adds `value` to `metric`'s figures (a counter takes it rounded).
    pub fn record(&self, metric: Metric, value: f64) {
        send(
            metric,
            vec![Label::new("service", self.service.to_string())],
            value,
        );
    }

    /// Adds `value` to `metric`'s figures for one value of a second dimension,
    /// `(name, value)`, e.g. `("outbox", "orders.outbox")`.
    pub fn record_for(&self, metric: Metric, dimension: (&str, &str), value: f64) {
        let (name, dimension_value) = dimension;
        let labels = vec![
            Label::new("service", self.service.to_string()),
            Label::new(name.to_owned(), dimension_value.to_owned()),
        ];
        send(metric, labels, value);
    }

    /// Adds a count (a `u64` as counters and sizes come).
    pub fn count(&self, metric: Metric, n: u64) {
        self.record(metric, n as f64);
    }
}

/// Hands one value to the `metrics` facade, by the metric's kind.
fn send(metric: Metric, labels: Vec<Label>, value: f64) {
    if !value.is_finite() {
        return;
    }
    known().entry(metric.name).or_insert(metric);
    match metric.kind {
        Kind::Counter => {
            // Counts are whole and not negative; a fraction rounds.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = value.max(0.0).round() as u64;
            metrics::counter!(metric.prometheus, labels).increment(n);
        }
        Kind::Gauge => metrics::gauge!(metric.prometheus, labels).set(value),
        Kind::Distribution(_) => metrics::histogram!(metric.prometheus, labels).record(value),
    }
}

/// Whose figures: a service, and a second dimension's name and value if any.
type Series = (String, Option<(String, String)>);

/// The series a facade key's labels name: `service` and at most one other.
fn series_of(key: &metrics::Key) -> Series {
    let mut service = String::new();
    let mut other = None;
    for label in key.labels() {
        if label.key() == "service" {
            label.value().clone_into(&mut service);
        } else if other.is_none() {
            other = Some((label.key().to_owned(), label.value().to_owned()));
        }
    }
    (service, other)
}

/// The EMF writer: values recorded since the last [`flush`], per series.
#[derive(Debug)]
struct Emf {
    namespace: String,
    pending: Mutex<BTreeMap<Series, BTreeMap<Metric, Vec<f64>>>>,
}

/// The EMF writer installed by [`configure`], if any.
static EMF: std::sync::OnceLock<Arc<Emf>> = std::sync::OnceLock::new();

impl Emf {
    fn new(namespace: String) -> Self {
        Self {
            namespace,
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    fn push(&self, series: &Series, metric: Metric, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(series.clone())
            .or_default()
            .entry(metric)
            .or_default()
            .push(value);
    }
}

/// The EMF writer as the facade's recorder. A value's CloudWatch name and unit
/// are its metric's ([`describe`]); a key no [`Metric`] names keeps its own
/// name, as a count.
#[derive(Debug)]
struct EmfRecorder(Arc<Emf>);

/// One series of one metric, as the facade hands it out.
struct EmfHandle {
    emf: Arc<Emf>,
    series: Series,
    metric: Metric,
}

impl EmfRecorder {
    fn handle(&self, key: &metrics::Key, kind: Kind) -> Arc<EmfHandle> {
        let metric = by_prometheus_name(key.name()).unwrap_or_else(|| {
            let name: &'static str = Box::leak(key.name().to_owned().into_boxed_str());
            let metric = Metric::define(name, name, Unit::Count, kind, "");
            known().entry(name).or_insert(metric);
            metric
        });
        Arc::new(EmfHandle {
            emf: self.0.clone(),
            series: series_of(key),
            metric,
        })
    }
}

impl metrics::Recorder for EmfRecorder {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.handle(key, Kind::Counter))
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.handle(key, Kind::Gauge))
    }

    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.handle(key, Kind::Distribution(DURATION_BUCKETS)))
    }
}

impl metrics::CounterFn for EmfHandle {
    fn increment(&self, value: u64) {
        self.emf.push(&self.series, self.metric, value as f64);
    }

    fn absolute(&self, value: u64) {
        self.emf.push(&self.series, self.metric, value as f64);
    }
}

impl metrics::GaugeFn for EmfHandle {
    fn increment(&self, value: f64) {
        self.emf.push(&self.series, self.metric, value);
    }

    fn decrement(&self, value: f64) {
        self.emf.push(&self.series, self.metric, -value);
    }

    fn set(&self, value: f64) {
        self.emf.push(&self.series, self.metric, value);
    }
}

impl metrics::HistogramFn for EmfHandle {
    fn record(&self, value: f64) {
        self.emf.push(&self.series, self.metric, value);
    }
}

/// At most this many values of one metric in one EMF document (CloudWatch's
/// limit). `metrics_cloudwatch_embedded` 0.10 keeps these 100 and drops the
/// rest of a flush (BENCHMARKS.md, "Metrics"); this writer spills them into
/// more documents.
const EMF_MAX_VALUES: usize = 100;

impl Emf {
    /// The EMF documents for the values recorded since the last call, and
    /// forgets them. Counters are summed, gauges keep their largest value,
    /// distributions are sent as arrays of values.
    fn take(&self, timestamp_ms: u64) -> Vec<String> {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let mut documents = Vec::new();
        for ((service, label), metrics) in pending {
            documents.extend(emf_documents(
                &self.namespace,
                timestamp_ms,
                (&service, label.as_ref()),
                metrics,
            ));
        }
        documents
    }
}

/// One series' values as EMF documents: one, or more when a distribution has
/// more values than one document may hold.
fn emf_documents(
    namespace: &str,
    timestamp_ms: u64,
    (service, label): (&str, Option<&(String, String)>),
    metrics: BTreeMap<Metric, Vec<f64>>,
) -> Vec<String> {
    let mut rounds: Vec<Map<String, Value>> = Vec::new();
    let mut names: Vec<Vec<Metric>> = Vec::new();
    for (metric, values) in metrics {
        let chunks: Vec<Value> = match metric.kind() {
            Kind::Counter => vec![values.iter().sum::<f64>().into()],
            Kind::Gauge => vec![values.iter().copied().fold(f64::MIN, f64::max).into()],
            Kind::Distribution(_) => values
                .chunks(EMF_MAX_VALUES)
                // Always an array, even of one value: a reader tells a
                // distribution from a counter by it.
                .map(|chunk| Value::from(chunk.to_vec()))
                .collect(),
        };
        for (round, value) in chunks.into_iter().enumerate() {
            if rounds.len() <= round {
                rounds.push(Map::new());
                names.push(Vec::new());
            }
            rounds[round].insert(metric.emf_name().to_owned(), value);
            names[round].push(metric);
        }
    }
    rounds
        .into_iter()
        .zip(names)
        .map(|(mut values, metrics)| {
            let definitions: Vec<Value> = metrics
                .iter()
                .map(|m| json!({"Name": m.emf_name(), "Unit": m.unit()}))
                .collect();
            // A second dimension's values are also published under `service` alone.
            let dimensions = match label {
                None => json!([["service"]]),
                Some((name, _)) => json!([["service", name], ["service"]]),
            };
            values.insert(
                "_aws".into(),
                json!({
                    "Timestamp": timestamp_ms,
                    "CloudWatchMetrics": [{
                        "Namespace": namespace,
                        "Dimensions": dimensions,
                        "Metrics": definitions,
                    }],
                }),
            );
            values.insert("service".into(), service.into());
            if let Some((name, value)) = label {
                values.insert(name.clone(), value.clone().into());
            }
            Value::Object(values).to_string()
        })
        .collect()
}

/// Writes the values recorded since the last flush to stdout as EMF lines
/// (CloudWatch Logs reads them as metrics). Nothing when EMF is off.
pub fn flush() {
    let Some(emf) = EMF.get() else {
        return;
    };
    let now_ms = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or_default();
    let documents = emf.take(now_ms);
    if documents.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    for document in documents {
        let _ = writeln!(out, "{document}");
    }
    let _ = out.flush();
}

/// When the last [`flush_if_due`] wrote.
static LAST_FLUSH: Mutex<Option<std::time::Instant>> = Mutex::new(None);

/// [`flush`]es if `interval` has passed since the last time this did: for
/// long invocations (a consumer reads its streams for most of a minute), whose
/// figures should not wait for the invocation's end.
pub fn flush_if_due(interval: std::time::Duration) {
    {
        let mut last = LAST_FLUSH.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        match *last {
            Some(at) if now.duration_since(at) < interval => return,
            _ => *last = Some(now),
        }
    }
    flush();
}

/// Reads one log line; if it is an EMF document of ours, records its values
/// through the `metrics` facade (as CloudWatch would read them) and returns
/// true. The emulator reads its function processes' stdout with it.
pub fn ingest_emf(line: &str) -> bool {
    if !line.starts_with('{') || !line.contains("\"_aws\"") {
        return false;
    }
    let Ok(Value::Object(document)) = serde_json::from_str::<Value>(line) else {
        return false;
    };
    let Some(service) = document.get("service").and_then(Value::as_str) else {
        return false;
    };
    let Some(directives) = document
        .get("_aws")
        .and_then(|aws| aws.get("CloudWatchMetrics"))
        .and_then(Value::as_array)
    else {
        return false;
    };
    // A second dimension: a name besides `service` in a dimension set.
    let label = directives
        .iter()
        .filter_map(|d| d.get("Dimensions").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .find(|name| *name != "service")
        .and_then(|name| {
            let value = document.get(name).and_then(Value::as_str)?;
            Some((name, value))
        });
    let recorder = Recorder::new(service);
    let record = |metric: Metric, value: f64| match label {
        None => recorder.record(metric, value),
        Some(dimension) => recorder.record_for(metric, dimension, value),
    };
    for definition in directives
        .iter()
        .filter_map(|d| d.get("Metrics").and_then(Value::as_array))
        .flatten()
    {
        let Some(name) = definition.get("Name").and_then(Value::as_str) else {
            continue;
        };
        let unit = definition.get("Unit").and_then(Value::as_str).unwrap_or("");
        let array = matches!(document.get(name), Some(Value::Array(_)));
        let metric = Metric::from_emf(name, unit, array);
        match document.get(metric.emf_name()) {
            Some(Value::Array(values)) => values
                .iter()
                .filter_map(Value::as_f64)
                .for_each(|v| record(metric, v)),
            Some(value) => {
                if let Some(v) = value.as_f64() {
                    record(metric, v);
                }
            }
            None => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `work` with a fresh EMF writer as this thread's recorder, and
    /// returns the documents it would flush, parsed.
    fn emf_of(work: impl FnOnce()) -> Vec<Value> {
        let emf = Arc::new(Emf::new(DEFAULT_NAMESPACE.to_owned()));
        metrics::with_local_recorder(&EmfRecorder(emf.clone()), work);
        emf.take(1_700_000_000_000)
            .iter()
            .map(|d| serde_json::from_str(d).expect("json"))
            .collect()
    }

    #[test]
    fn emf_sums_counters_keeps_the_largest_gauge_and_splits_long_distributions() {
        let documents = emf_of(|| {
            let r = Recorder::new("take");
            r.count(Metric::EVENTS_PUBLISHED, 2);
            r.count(Metric::EVENTS_PUBLISHED, 3);
            r.record(Metric::OUTBOX_AGE, 4.0);
            r.record(Metric::OUTBOX_AGE, 1.0);
            for ms in 0..150 {
                r.record(Metric::HANDLER_DURATION, f64::from(ms));
            }
        });
        assert_eq!(documents.len(), 2, "150 durations need two documents");
        let first = &documents[0];
        assert_eq!(first["service"], "take");
        assert_eq!(first["EventsPublished"], 5.0);
        assert_eq!(first["OutboxAge"], 4.0);
        assert_eq!(first["HandlerDuration"].as_array().map(Vec::len), Some(100));
        assert_eq!(
            documents[1]["HandlerDuration"].as_array().map(Vec::len),
            Some(50)
        );
        let directive = &first["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], DEFAULT_NAMESPACE);
        assert_eq!(directive["Dimensions"], json!([["service"]]));
        assert!(directive["Metrics"]
            .as_array()
            .expect("metrics")
            .contains(&json!({"Name": "OutboxAge", "Unit": "Seconds"})));
        assert_eq!(first["_aws"]["Timestamp"], 1_700_000_000_000u64);
    }

    /// A second dimension (`outbox`) is a series of its own, published in EMF
    /// under a second dimension set beside `service` alone.
    #[test]
    fn a_second_dimension_is_a_series_of_its_own() {
        let documents = emf_of(|| {
            let r = Recorder::new("dim");
            r.record_for(Metric::OUTBOX_FAILED_ROWS, ("outbox", "x.outbox"), 5.0);
            r.record_for(Metric::OUTBOX_FAILED_ROWS, ("outbox", "x.outbox"), 7.0);
            r.record_for(Metric::OUTBOX_FAILED_ROWS, ("outbox", "y.outbox"), 1.0);
        });
        assert_eq!(documents.len(), 2, "{documents:#?}");
        let x = documents
            .iter()
            .find(|d| d["outbox"] == "x.outbox")
            .expect("x's document");
        assert_eq!(x["OutboxFailedRows"], 7.0);
        assert_eq!(
            x["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["service", "outbox"], ["service"]])
        );
    }

    /// What one process writes, another reads back as the same values: the
    /// emulator's path from a function process's stdout to its `/metrics`.
    #[test]
    fn emf_lines_read_back_as_the_same_values() {
        let written = emf_of(|| {
            let r = Recorder::new("round-trip");
            r.count(Metric::EVENTS_DEAD_LETTERED, 2);
            r.count(Metric::BATCH_SIZE, 10);
            r.count(Metric::BATCH_SIZE, 100);
            r.record_for(Metric::OUTBOX_FAILED_ROWS, ("outbox", "x.outbox"), 3.0);
        });
        let read = emf_of(|| {
            for document in &written {
                assert!(ingest_emf(&document.to_string()));
            }
            assert!(!ingest_emf("{\"level\":\"INFO\",\"message\":\"hello\"}"));
            assert!(!ingest_emf("plain text"));
        });
        let strip = |documents: &[Value]| -> Vec<Value> {
            documents
                .iter()
                .map(|d| {
                    let mut d = d.clone();
                    d["_aws"]["Timestamp"] = json!(0);
                    d
                })
                .collect()
        };
        assert_eq!(strip(&read), strip(&written));
    }

    #[test]
    fn a_metric_another_process_defined_is_read_from_its_emf() {
        let line = json!({
            "_aws": {"Timestamp": 1, "CloudWatchMetrics": [{
                "Namespace": "N", "Dimensions": [["service"]],
                "Metrics": [{"Name": "ParcelsShipped", "Unit": "Count"},
                            {"Name": "ShippingDelay", "Unit": "Milliseconds"},
                            {"Name": "QueueDepth", "Unit": "Seconds"}]}]},
            "service": "foreign",
            "ParcelsShipped": 3, "ShippingDelay": [12.0], "QueueDepth": 4.5
        })
        .to_string();
        let documents = emf_of(|| assert!(ingest_emf(&line)));
        assert_eq!(documents[0]["ParcelsShipped"], 3.0);
        assert_eq!(documents[0]["ShippingDelay"], json!([12.0]));
        assert_eq!(documents[0]["QueueDepth"], 4.5);
        let shipped = Metric::from_emf("ParcelsShipped", "Count", false);
        assert_eq!(shipped.prometheus_name(), "parcels_shipped_total");
        assert_eq!(shipped.kind(), Kind::Counter);
        let delay = Metric::from_emf("ShippingDelay", "Milliseconds", true);
        assert!(matches!(delay.kind(), Kind::Distribution(_)));
        // The toolkit's own keep their definitions.
        assert_eq!(
            Metric::from_emf("BatchSize", "Count", false),
            Metric::BATCH_SIZE
        );
        assert!(matches!(
            Metric::from_emf("BatchSize", "Count", false).kind(),
            Kind::Distribution(_)
        ));
    }

    /// A value recorded through the facade under a name no [`Metric`] defines
    /// keeps that name in EMF.
    #[test]
    fn a_facade_key_of_no_metric_keeps_its_name() {
        let documents = emf_of(|| {
            metrics::counter!("widgets_made", "service" => "plain").increment(4);
        });
        assert_eq!(documents[0]["widgets_made"], 4.0);
        assert_eq!(documents[0]["service"], "plain");
    }
}
