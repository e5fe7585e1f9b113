//! `GET /metrics`: the functions' metrics in Prometheus' text format, kept by
//! `metrics-exporter-prometheus` as the process's `metrics` recorder. In-process
//! functions record into it directly; the figures of function processes reach
//! it from their EMF lines ([`shared::metrics::ingest_emf`]).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use shared::metrics::{Metric, DURATION_BUCKETS};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder's handle; the first call installs it as the process's
/// `metrics` recorder. Call it before anything records (before
/// [`shared::telemetry::init`], whose EMF writer would otherwise be installed
/// first) and from within a Tokio runtime, which runs its upkeep.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = histograms().unwrap_or_else(|error| {
            tracing::warn!(%error, "histogram buckets refused: /metrics shows summaries");
            PrometheusBuilder::new()
        });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder was installed first: /metrics stays empty");
        }
        shared::metrics::describe_known();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let upkeep = handle.clone();
            runtime.spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
        }
        handle
    })
}

/// Every distribution as a histogram: with its metric's bounds when the process
/// knows it, else with a duration's.
fn histograms() -> Result<PrometheusBuilder, BuildError> {
    let mut builder = PrometheusBuilder::new().set_buckets(DURATION_BUCKETS)?;
    for metric in Metric::TOOLKIT {
        if let Some(bounds) = metric.buckets() {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(metric.prometheus_name().into()), bounds)?;
        }
    }
    Ok(builder)
}

/// The metrics in Prometheus' text exposition format (version 0.0.4).
pub fn render() -> String {
    handle().render()
}

#[cfg(test)]
mod tests {
    use shared::metrics::{Metric, Recorder};

    /// What the tests of the emulator's `/metrics` read: names, types, labels
    /// and histogram buckets, from values recorded in process and from an EMF
    /// line of a function process.
    #[tokio::test]
    async fn in_process_values_and_emf_lines_render_as_prometheus_text() {
        let _installed = super::handle();
        let a = Recorder::new("metrics-test-a");
        a.count(Metric::EVENTS_PROCESSED, 3);
        a.count(Metric::EVENTS_PROCESSED, 4);
        a.record(Metric::OUTBOX_AGE, 9.0);
        a.record(Metric::OUTBOX_AGE, 2.0);
        a.record(Metric::HANDLER_DURATION, 3.0);
        a.record(Metric::HANDLER_DURATION, 700.0);
        a.record_for(Metric::OUTBOX_FAILED_ROWS, ("outbox", "orders.outbox"), 3.0);
        let line = serde_json::json!({
            "_aws": {"Timestamp": 1, "CloudWatchMetrics": [{
                "Namespace": "N", "Dimensions": [["service"]],
                "Metrics": [{"Name": "ParcelsShipped", "Unit": "Count"},
                            {"Name": "BatchSize", "Unit": "Count"}]}]},
            "service": "metrics-test-b",
            "ParcelsShipped": 3, "BatchSize": [10, 100]
        })
        .to_string();
        assert!(shared::metrics::ingest_emf(&line));

        let text = super::render();
        for expected in [
            "# HELP events_processed_total Records a consumer handled and acknowledged.\n",
            "# TYPE events_processed_total counter\n",
            "events_processed_total{service=\"metrics-test-a\"} 7\n",
            "outbox_age_seconds{service=\"metrics-test-a\"} 2\n",
            "# TYPE handler_duration_milliseconds histogram\n",
            "handler_duration_milliseconds_bucket{service=\"metrics-test-a\",le=\"5\"} 1\n",
            "handler_duration_milliseconds_bucket{service=\"metrics-test-a\",le=\"1000\"} 2\n",
            "handler_duration_milliseconds_bucket{service=\"metrics-test-a\",le=\"+Inf\"} 2\n",
            "handler_duration_milliseconds_sum{service=\"metrics-test-a\"} 703\n",
            "outbox_failed_rows{service=\"metrics-test-a\",outbox=\"orders.outbox\"} 3\n",
            "parcels_shipped_total{service=\"metrics-test-b\"} 3\n",
            "batch_size_bucket{service=\"metrics-test-b\",le=\"10\"} 1\n",
            "batch_size_count{service=\"metrics-test-b\"} 2\n",
        ] {
            assert!(text.contains(expected), "lacks {expected:?}:\n{text}");
        }
    }
}
