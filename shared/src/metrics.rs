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

/// The metrics, with their EMF name, unit and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// create-order: orders accepted (not replays of an `Idempotency-Key`).
    OrdersCreated,
    /// outbox-relay: events written to the streams.
    EventsPublished,
    /// outbox-relay: age of the oldest unpublished outbox row, in seconds (0 when none).
    OutboxAge,
    /// outbox-relay: rows set aside as failed, per outbox (dimension `outbox`).
    OutboxFailedRows,
    /// Consumers: records handled and acknowledged.
    EventsProcessed,
    /// Consumers: records whose handling failed (to be retried or dead-lettered).
    EventsFailed,
    /// Consumers: records moved to the dead-letter stream.
    EventsDeadLettered,
    /// Consumers: records per handler call.
    BatchSize,
    /// Consumers: times a stream worker found its store (the database or
    /// Redis) unavailable and paused until it answered again.
    StoreOutages,
    /// Consumers: consumer groups found missing (`NOGROUP`) and created again.
    ConsumerGroupsRecreated,
    /// outbox-relay: batches kept because fewer than `REDIS_MIN_REPLICAS`
    /// replicas acknowledged them in time (`WAIT`).
    ReplicationTimeouts,
    /// order-reconciler: age of the oldest `PENDING` order, in seconds (0 when none).
    OldestPendingOrderAge,
    /// order-reconciler: events sent again for orders that waited too long.
    SagaEventsResent,
    /// order-reconciler: orders rejected for having waited past their deadline.
    OrdersTimedOut,
    /// Every function: the first invocation of a process.
    ColdStart,
    /// Every function: an invocation's duration, in milliseconds.
    HandlerDuration,
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

const DURATION_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0];

impl Metric {
    pub const ALL: [Metric; 16] = [
        Metric::OrdersCreated,
        Metric::EventsPublished,
        Metric::OutboxAge,
        Metric::OutboxFailedRows,
        Metric::EventsProcessed,
        Metric::EventsFailed,
        Metric::EventsDeadLettered,
        Metric::BatchSize,
        Metric::StoreOutages,
        Metric::ConsumerGroupsRecreated,
        Metric::ReplicationTimeouts,
        Metric::OldestPendingOrderAge,
        Metric::SagaEventsResent,
        Metric::OrdersTimedOut,
        Metric::ColdStart,
        Metric::HandlerDuration,
    ];

    /// The CloudWatch metric name.
    pub fn emf_name(self) -> &'static str {
        match self {
            Metric::OrdersCreated => "OrdersCreated",
            Metric::EventsPublished => "EventsPublished",
            Metric::OutboxAge => "OutboxAge",
            Metric::OutboxFailedRows => "OutboxFailedRows",
            Metric::EventsProcessed => "EventsProcessed",
            Metric::EventsFailed => "EventsFailed",
            Metric::EventsDeadLettered => "EventsDeadLettered",
            Metric::BatchSize => "BatchSize",
            Metric::StoreOutages => "StoreOutages",
            Metric::ConsumerGroupsRecreated => "ConsumerGroupsRecreated",
            Metric::ReplicationTimeouts => "ReplicationTimeouts",
            Metric::OldestPendingOrderAge => "OldestPendingOrderAge",
            Metric::SagaEventsResent => "SagaEventsResent",
            Metric::OrdersTimedOut => "OrdersTimedOut",
            Metric::ColdStart => "ColdStart",
            Metric::HandlerDuration => "HandlerDuration",
        }
    }

    /// The CloudWatch unit.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::OutboxAge | Metric::OldestPendingOrderAge => "Seconds",
            Metric::HandlerDuration => "Milliseconds",
            _ => "Count",
        }
    }

    /// The Prometheus name (counters end in `_total`).
    pub fn prometheus_name(self) -> &'static str {
        match self {
            Metric::OrdersCreated => "orders_created_total",
            Metric::EventsPublished => "events_published_total",
            Metric::OutboxAge => "outbox_age_seconds",
            Metric::OutboxFailedRows => "outbox_failed_rows",
            Metric::EventsProcessed => "events_processed_total",
            Metric::EventsFailed => "events_failed_total",
            Metric::EventsDeadLettered => "events_dead_lettered_total",
            Metric::BatchSize => "batch_size",
            Metric::StoreOutages => "store_outages_total",
            Metric::ConsumerGroupsRecreated => "consumer_groups_recreated_total",
            Metric::ReplicationTimeouts => "replication_timeouts_total",
            Metric::OldestPendingOrderAge => "oldest_pending_order_age_seconds",
            Metric::SagaEventsResent => "saga_events_resent_total",
            Metric::OrdersTimedOut => "orders_timed_out_total",
            Metric::ColdStart => "cold_starts_total",
            Metric::HandlerDuration => "handler_duration_milliseconds",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Metric::OrdersCreated => "Orders accepted by create-order.",
            Metric::EventsPublished => "Events the outbox relay wrote to the streams.",
            Metric::OutboxAge => {
                "Age of the oldest unpublished outbox row, at the relay's last run."
            }
            Metric::OutboxFailedRows => {
                "Outbox rows set aside as failed (never published), at the relay's last run."
            }
            Metric::EventsProcessed => "Records a consumer handled and acknowledged.",
            Metric::EventsFailed => "Records whose handling failed (retried or dead-lettered).",
            Metric::EventsDeadLettered => "Records moved to a dead-letter stream.",
            Metric::BatchSize => "Records per batch handed to a consumer's handler.",
            Metric::StoreOutages => {
                "Times a consumer found its store unavailable and paused until it answered."
            }
            Metric::ConsumerGroupsRecreated => {
                "Consumer groups found missing (NOGROUP) and created again from the oldest entry."
            }
            Metric::ReplicationTimeouts => {
                "Relay batches kept because too few Redis replicas acknowledged them in time."
            }
            Metric::OldestPendingOrderAge => {
                "Age of the oldest PENDING order, at the reconciler's last run."
            }
            Metric::SagaEventsResent => "Saga events the reconciler sent again.",
            Metric::OrdersTimedOut => "Orders rejected for waiting past their deadline.",
            Metric::ColdStart => "First invocations of a function process.",
            Metric::HandlerDuration => "Duration of an invocation.",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Metric::OutboxAge | Metric::OldestPendingOrderAge => Kind::Gauge,
            Metric::OutboxFailedRows => Kind::Gauge,
            Metric::BatchSize => Kind::Distribution(BATCH_BUCKETS),
            Metric::HandlerDuration => Kind::Distribution(DURATION_BUCKETS),
            _ => Kind::Counter,
        }
    }

    pub fn from_emf_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.emf_name() == name)
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
    totals: BTreeMap<(Series, Metric), Total>,
    /// Values not yet flushed, per series, when EMF is on.
    pending: BTreeMap<Series, BTreeMap<Metric, Vec<f64>>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespace: String::new(),
    emf: false,
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
                    .map(|chunk| match chunk {
                        [one] => Value::from(*one),
                        many => Value::from(many.to_vec()),
                    })
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
        let Some(metric) = definition
            .get("Name")
            .and_then(Value::as_str)
            .and_then(Metric::from_emf_name)
        else {
            continue;
        };
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
    let totals = registry().totals.clone();
    let mut out = String::new();
    for metric in Metric::ALL {
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
        format!("{}", v as i64)
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
        a.count(Metric::EventsProcessed, 3);
        a.count(Metric::EventsProcessed, 4);
        a.record(Metric::OutboxAge, 9.0);
        a.record(Metric::OutboxAge, 2.0);
        a.record(Metric::HandlerDuration, 3.0);
        a.record(Metric::HandlerDuration, 700.0);
        assert_eq!(total("metrics-test-a", Metric::EventsProcessed), 7.0);
        assert_eq!(total("metrics-test-a", Metric::OutboxAge), 2.0);
        assert_eq!(total("metrics-test-a", Metric::HandlerDuration), 2.0);
        assert_eq!(total("metrics-test-b", Metric::EventsProcessed), 0.0);

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
        assert_eq!(total("metrics-test-emf", Metric::EventsDeadLettered), 2.0);
        assert_eq!(total("metrics-test-emf", Metric::BatchSize), 2.0);
        assert!(!ingest_emf("{\"level\":\"INFO\",\"message\":\"hello\"}"));
        assert!(!ingest_emf("plain text"));
    }

    /// A second dimension (`outbox`) is its own series, in `/metrics` as a second
    /// label and in EMF as a second dimension set beside `service` alone.
    #[test]
    fn a_second_dimension_is_a_series_of_its_own() {
        let r = Recorder::new("metrics-test-dim");
        r.record_for(Metric::OutboxFailedRows, ("outbox", "orders.outbox"), 2.0);
        r.record_for(
            Metric::OutboxFailedRows,
            ("outbox", "inventory.outbox"),
            1.0,
        );
        r.record_for(Metric::OutboxFailedRows, ("outbox", "orders.outbox"), 3.0);
        let dim = ("outbox", "orders.outbox");
        assert_eq!(
            total_for("metrics-test-dim", Metric::OutboxFailedRows, dim),
            3.0
        );
        assert_eq!(total("metrics-test-dim", Metric::OutboxFailedRows), 4.0);
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
                .insert(Metric::OutboxFailedRows, vec![5.0, 7.0]);
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
            total_for("metrics-test-dim-emf", Metric::OutboxFailedRows, dim),
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
            pending.insert(Metric::EventsPublished, vec![2.0, 3.0]);
            pending.insert(Metric::OutboxAge, vec![4.0, 1.0]);
            pending.insert(Metric::HandlerDuration, (0..150).map(f64::from).collect());
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
}
