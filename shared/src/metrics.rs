//! The system's metrics: recorded in process, published in Lambda as CloudWatch
//! Embedded Metric Format (EMF: plain JSON log lines that CloudWatch turns into
//! metrics, no agent), and shown by the emulator in Prometheus' text format.
//!
//! Every metric has the dimension `service`: the function's binary name. A
//! value may carry a second one (e.g. `outbox`, [`Recorder::record_for`]); it is
//! then also published under `service` alone, so one alarm can watch them all.
//! The namespace is `METRICS_NAMESPACE` (`OrderProcessing`). The template's
//! alarms watch `EventsDeadLettered`, `OutboxAge` and `OutboxFailedRows` by
//! these names.
//!
//! A [`Recorder`] adds to the process's totals (what `/metrics` shows) and, when
//! EMF is on (in Lambda), to the values the next [`flush`] writes; an invocation
//! flushes when it ends ([`crate::telemetry::Invocation::run`]). The emulator
//! reads the EMF lines of the function processes it runs with [`ingest_emf`], so
//! `/metrics` shows the same figures in both of its modes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

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

    fn help(self) -> &'static str {
        self.help
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
        if let Some(known) = registry().known.get(name) {
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

/// Makes `metrics` known to this process: `/metrics` lists them (HELP and
/// TYPE) before their first value. A service calls it once at start.
pub fn describe(metrics: &[Metric]) {
    let mut registry = registry();
    for m in metrics {
        registry.known.entry(m.name).or_insert(*m);
    }
}

/// A metric's total since the process started.
#[derive(Debug, Clone, PartialEq)]
enum Total {
    Value(f64),
    Histogram {
        buckets: Vec<u64>,
        count: u64,
        sum: f64,
    },
}

impl Total {
    fn new(metric: Metric) -> Self {
        match metric.kind() {
            Kind::Distribution(bounds) => Total::Histogram {
                buckets: vec![0; bounds.len()],
                count: 0,
                sum: 0.0,
            },
            _ => Total::Value(0.0),
        }
    }

    fn add(&mut self, metric: Metric, value: f64) {
        match (self, metric.kind()) {
            (Total::Value(v), Kind::Counter) => *v += value,
            (Total::Value(v), Kind::Gauge) => *v = value,
            (
                Total::Histogram {
                    buckets,
                    count,
                    sum,
                },
                Kind::Distribution(bounds),
            ) => {
                for (bucket, bound) in buckets.iter_mut().zip(bounds) {
                    if value <= *bound {
                        *bucket += 1;
                    }
                }
                *count += 1;
                *sum += value;
            }
            _ => {}
        }
    }
}

/// Whose figures: a service, and a second dimension's name and value if any.
type Series = (String, Option<(String, String)>);

fn series(service: &str) -> Series {
    (service.to_owned(), None)
}

#[derive(Debug)]
struct Registry {
    namespace: String,
    emf: bool,
    /// Every metric this process knows, by CloudWatch name.
    known: BTreeMap<&'static str, Metric>,
    totals: BTreeMap<(Series, Metric), Total>,
    /// Values not yet flushed, per series, when EMF is on.
    pending: BTreeMap<Series, BTreeMap<Metric, Vec<f64>>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespace: String::new(),
    emf: false,
    known: BTreeMap::new(),
    totals: BTreeMap::new(),
    pending: BTreeMap::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

pub const DEFAULT_NAMESPACE: &str = "OrderProcessing";

/// Sets the namespace (`METRICS_NAMESPACE`) and whether flushes write EMF lines:
/// `METRICS` = `emf` / `off` when set, else `emf_by_default` (JSON logs, i.e. Lambda).
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
    let mut registry = registry();
    registry.namespace = namespace;
    registry.emf = emf;
}

/// Records metrics for one service.
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

    /// Adds `value` to `metric`'s figures.
    pub fn record(&self, metric: Metric, value: f64) {
        record(series(&self.service), metric, value);
    }

    /// Adds `value` to `metric`'s figures for one value of a second dimension,
    /// `(name, value)`, e.g. `("outbox", "orders.outbox")`.
    pub fn record_for(&self, metric: Metric, dimension: (&str, &str), value: f64) {
        let (name, dimension_value) = dimension;
        let label = Some((name.to_owned(), dimension_value.to_owned()));
        record((self.service.to_string(), label), metric, value);
    }

    /// Adds a count (a `u64` as counters and sizes come).
    pub fn count(&self, metric: Metric, n: u64) {
        self.record(metric, n as f64);
    }
}

fn record(series: Series, metric: Metric, value: f64) {
    if !value.is_finite() {
        return;
    }
    let mut registry = registry();
    registry.known.entry(metric.name).or_insert(metric);
    registry
        .totals
        .entry((series.clone(), metric))
        .or_insert_with(|| Total::new(metric))
        .add(metric, value);
    if registry.emf {
        registry
            .pending
            .entry(series)
            .or_default()
            .entry(metric)
            .or_default()
            .push(value);
    }
}

/// At most this many values of one metric in one EMF document (CloudWatch's limit).
const EMF_MAX_VALUES: usize = 100;

/// The EMF documents for the values recorded since the last flush, and forgets
/// them. Counters are summed, gauges keep their largest value, distributions
/// are sent as arrays of values.
pub fn take_emf(timestamp_ms: u64) -> Vec<String> {
    let mut registry = registry();
    let pending = std::mem::take(&mut registry.pending);
    let namespace = match registry.namespace.as_str() {
        "" => DEFAULT_NAMESPACE.to_owned(),
        configured => configured.to_owned(),
    };
    drop(registry);
    let mut documents = Vec::new();
    for ((service, label), metrics) in pending {
        // Distributions longer than one document's limit spill into more documents.
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
        for (mut values, metrics) in rounds.into_iter().zip(names) {
            let definitions: Vec<Value> = metrics
                .iter()
                .map(|m| json!({"Name": m.emf_name(), "Unit": m.unit()}))
                .collect();
            // A second dimension's values are also published under `service` alone.
            let dimensions = match &label {
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
            values.insert("service".into(), service.clone().into());
            if let Some((name, value)) = &label {
                values.insert(name.clone(), value.clone().into());
            }
            documents.push(Value::Object(values).to_string());
        }
    }
    documents
}

/// Writes what [`take_emf`] gives to stdout, one line each (CloudWatch Logs
/// reads them as metrics). Nothing when EMF is off.
pub fn flush() {
    let now_ms = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or_default();
    let documents = take_emf(now_ms);
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

/// Reads one log line; if it is an EMF document of ours, adds its values to the
/// totals (as CloudWatch would) and returns true.
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
            Some((name.to_owned(), value.to_owned()))
        });
    let series: Series = (service.to_owned(), label);
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
                .for_each(|v| record_total(&series, metric, v)),
            Some(value) => {
                if let Some(v) = value.as_f64() {
                    record_total(&series, metric, v);
                }
            }
            None => {}
        }
    }
    true
}

/// Adds to the totals only (values read back from EMF are not flushed again).
fn record_total(series: &Series, metric: Metric, value: f64) {
    if !value.is_finite() {
        return;
    }
    registry()
        .totals
        .entry((series.clone(), metric))
        .or_insert_with(|| Total::new(metric))
        .add(metric, value);
}

/// The totals in Prometheus' text exposition format (version 0.0.4).
pub fn render_prometheus() -> String {
    let (totals, known) = {
        let mut registry = registry();
        for m in Metric::TOOLKIT {
            registry.known.entry(m.name).or_insert(m);
        }
        (registry.totals.clone(), registry.known.clone())
    };
    let mut out = String::new();
    for metric in known.into_values() {
        let name = metric.prometheus_name();
        let kind = match metric.kind() {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Distribution(_) => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {}", metric.help());
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (((service, label), _), total) in totals.iter().filter(|((_, m), _)| *m == metric) {
            // A second dimension is a second label, written inside `service="…"`'s braces.
            let service = match label {
                None => escape_label(service),
                Some((name, value)) => {
                    format!(
                        "{}\",{name}=\"{}",
                        escape_label(service),
                        escape_label(value)
                    )
                }
            };
            match (total, metric.kind()) {
                (Total::Value(v), _) => {
                    let _ = writeln!(out, "{name}{{service=\"{service}\"}} {}", number(*v));
                }
                (
                    Total::Histogram {
                        buckets,
                        count,
                        sum,
                    },
                    Kind::Distribution(bounds),
                ) => {
                    for (bucket, bound) in buckets.iter().zip(bounds) {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{{service=\"{service}\",le=\"{}\"}} {bucket}",
                            number(*bound)
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{service=\"{service}\",le=\"+Inf\"}} {count}"
                    );
                    let _ = writeln!(out, "{name}_sum{{service=\"{service}\"}} {}", number(*sum));
                    let _ = writeln!(out, "{name}_count{{service=\"{service}\"}} {count}");
                }
                _ => {}
            }
        }
    }
    out
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        // Whole and below 2^53: exact as an integer.
        #[allow(clippy::cast_possible_truncation)]
        let whole = v as i64;
        format!("{whole}")
    } else {
        format!("{v}")
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The total of `metric` for `service` (a counter's sum, a gauge's value, a
/// distribution's count; summed over a second dimension's values), for tests
/// and the emulator's banner.
pub fn total(service: &str, metric: Metric) -> f64 {
    registry()
        .totals
        .iter()
        .filter(|(((s, _), m), _)| s == service && *m == metric)
        .map(|(_, total)| total_value(total))
        .sum()
}

/// The total of `metric` for `service` and one value of a second dimension.
pub fn total_for(service: &str, metric: Metric, dimension: (&str, &str)) -> f64 {
    let label = Some((dimension.0.to_owned(), dimension.1.to_owned()));
    registry()
        .totals
        .get(&((service.to_owned(), label), metric))
        .map_or(0.0, total_value)
}

fn total_value(total: &Total) -> f64 {
    match total {
        Total::Value(v) => *v,
        Total::Histogram { count, .. } => *count as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Tests share the process's registry: each uses services of its own.

    #[test]
    fn totals_add_up_per_service_and_kind() {
        let a = Recorder::new("metrics-test-a");
        a.count(Metric::EVENTS_PROCESSED, 3);
        a.count(Metric::EVENTS_PROCESSED, 4);
        a.record(Metric::OUTBOX_AGE, 9.0);
        a.record(Metric::OUTBOX_AGE, 2.0);
        a.record(Metric::HANDLER_DURATION, 3.0);
        a.record(Metric::HANDLER_DURATION, 700.0);
        assert_eq!(total("metrics-test-a", Metric::EVENTS_PROCESSED), 7.0);
        assert_eq!(total("metrics-test-a", Metric::OUTBOX_AGE), 2.0);
        assert_eq!(total("metrics-test-a", Metric::HANDLER_DURATION), 2.0);
        assert_eq!(total("metrics-test-b", Metric::EVENTS_PROCESSED), 0.0);

        let text = render_prometheus();
        assert!(text.contains("# TYPE events_processed_total counter"));
        assert!(text.contains("events_processed_total{service=\"metrics-test-a\"} 7\n"));
        assert!(text.contains("outbox_age_seconds{service=\"metrics-test-a\"} 2\n"));
        assert!(text.contains(
            "handler_duration_milliseconds_bucket{service=\"metrics-test-a\",le=\"5\"} 1\n"
        ));
        assert!(text.contains(
            "handler_duration_milliseconds_bucket{service=\"metrics-test-a\",le=\"1000\"} 2\n"
        ));
        assert!(text.contains(
            "handler_duration_milliseconds_bucket{service=\"metrics-test-a\",le=\"+Inf\"} 2\n"
        ));
        assert!(
            text.contains("handler_duration_milliseconds_sum{service=\"metrics-test-a\"} 703\n")
        );
    }

    #[test]
    fn emf_documents_follow_the_specification_and_read_back() {
        let doc = json!({
            "_aws": {
                "Timestamp": 1_700_000_000_000u64,
                "CloudWatchMetrics": [{
                    "Namespace": "OrderProcessing",
                    "Dimensions": [["service"]],
                    "Metrics": [
                        {"Name": "EventsDeadLettered", "Unit": "Count"},
                        {"Name": "BatchSize", "Unit": "Count"},
                        {"Name": "NotOurs", "Unit": "Count"}
                    ]
                }]
            },
            "service": "metrics-test-emf",
            "EventsDeadLettered": 2,
            "BatchSize": [10, 100],
            "NotOurs": 5
        });
        assert!(ingest_emf(&doc.to_string()));
        assert_eq!(total("metrics-test-emf", Metric::EVENTS_DEAD_LETTERED), 2.0);
        assert_eq!(total("metrics-test-emf", Metric::BATCH_SIZE), 2.0);
        assert!(!ingest_emf("{\"level\":\"INFO\",\"message\":\"hello\"}"));
        assert!(!ingest_emf("plain text"));
    }

    /// A second dimension (`outbox`) is its own series, in `/metrics` as a second
    /// label and in EMF as a second dimension set beside `service` alone.
    #[test]
    fn a_second_dimension_is_a_series_of_its_own() {
        let r = Recorder::new("metrics-test-dim");
        r.record_for(Metric::OUTBOX_FAILED_ROWS, ("outbox", "orders.outbox"), 2.0);
        r.record_for(
            Metric::OUTBOX_FAILED_ROWS,
            ("outbox", "inventory.outbox"),
            1.0,
        );
        r.record_for(Metric::OUTBOX_FAILED_ROWS, ("outbox", "orders.outbox"), 3.0);
        let dim = ("outbox", "orders.outbox");
        assert_eq!(
            total_for("metrics-test-dim", Metric::OUTBOX_FAILED_ROWS, dim),
            3.0
        );
        assert_eq!(total("metrics-test-dim", Metric::OUTBOX_FAILED_ROWS), 4.0);
        let text = render_prometheus();
        assert!(
            text.contains(
                "outbox_failed_rows{service=\"metrics-test-dim\",outbox=\"orders.outbox\"} 3\n"
            ),
            "{text}"
        );

        {
            let mut registry = registry();
            let key = (
                "metrics-test-dim-emf".to_owned(),
                Some(("outbox".to_owned(), "x.outbox".to_owned())),
            );
            registry
                .pending
                .entry(key)
                .or_default()
                .insert(Metric::OUTBOX_FAILED_ROWS, vec![5.0, 7.0]);
        }
        let document = take_emf(1_700_000_000_000)
            .into_iter()
            .find(|d| d.contains("metrics-test-dim-emf"))
            .expect("a document");
        let value: Value = serde_json::from_str(&document).expect("json");
        assert_eq!(value["outbox"], "x.outbox");
        assert_eq!(value["OutboxFailedRows"], 7.0);
        assert_eq!(
            value["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["service", "outbox"], ["service"]])
        );
        assert!(ingest_emf(&document));
        let dim = ("outbox", "x.outbox");
        assert_eq!(
            total_for("metrics-test-dim-emf", Metric::OUTBOX_FAILED_ROWS, dim),
            7.0
        );
    }

    #[test]
    fn take_emf_sums_counters_and_splits_long_distributions() {
        // Only the pending values matter here: build them by hand.
        {
            let mut registry = registry();
            let pending = registry
                .pending
                .entry(series("metrics-test-take"))
                .or_default();
            pending.insert(Metric::EVENTS_PUBLISHED, vec![2.0, 3.0]);
            pending.insert(Metric::OUTBOX_AGE, vec![4.0, 1.0]);
            pending.insert(Metric::HANDLER_DURATION, (0..150).map(f64::from).collect());
        }
        let documents: Vec<Value> = take_emf(1_700_000_000_000)
            .iter()
            .map(|d| serde_json::from_str(d).expect("json"))
            .filter(|d: &Value| d["service"] == "metrics-test-take")
            .collect();
        assert_eq!(documents.len(), 2, "150 durations need two documents");
        let first = &documents[0];
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

    #[test]
    fn a_metric_another_process_defined_is_read_from_its_emf() {
        let line = serde_json::json!({
            "_aws": {"Timestamp": 1, "CloudWatchMetrics": [{
                "Namespace": "N", "Dimensions": [["service"]],
                "Metrics": [{"Name": "ParcelsShipped", "Unit": "Count"},
                            {"Name": "ShippingDelay", "Unit": "Milliseconds"},
                            {"Name": "QueueDepth", "Unit": "Seconds"}]}]},
            "service": "metrics-test-foreign",
            "ParcelsShipped": 3, "ShippingDelay": [12.0], "QueueDepth": 4.5
        })
        .to_string();
        assert!(ingest_emf(&line));
        let text = render_prometheus();
        assert!(
            text.contains("# TYPE parcels_shipped_total counter"),
            "{text}"
        );
        assert!(text.contains("parcels_shipped_total{service=\"metrics-test-foreign\"} 3"));
        assert!(text.contains("# TYPE shipping_delay histogram"), "{text}");
        assert!(text.contains("shipping_delay_count{service=\"metrics-test-foreign\"} 1"));
        assert!(text.contains("# TYPE queue_depth gauge"), "{text}");
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
}
