//! The web console at `/_console/`: one page (HTML, CSS and JavaScript served
//! from the binary, nothing fetched from elsewhere) that shows the running
//! system live, from a snapshot pushed every second over server-sent events:
//! the functions, the streams and their groups, the outboxes, the dead
//! letters; and a trace view over the log book (`GET /_emulator/logs`).
//!
//! Its actions (redrive, purge) change state, so they answer only requests of
//! the console's own page: a JSON body (which a cross-site form cannot send
//! without a preflight this server never grants), an `Origin`, if any, that is
//! the listener's own, and a `Host` that is the listener's (no DNS rebinding).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use serde::{Deserialize, Serialize};
use shared::source::{DeadLetters, Filter, Kind, RedrivePolicy, Selection, StreamOverview};

use crate::functions::{ConsoleView, Functions};
use crate::status;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// How many of a group's oldest dead letters the page groups by kind each
/// second (`emulator dlq summary` groups them all).
pub const SUMMARIZED: usize = 2000;

/// How often the page gets a new snapshot.
pub const EVERY: Duration = Duration::from_secs(1);

/// What the console reads and acts on.
#[derive(Debug)]
pub struct Console {
    pub source: Arc<status::Source>,
    /// The consumer groups of the template's stream sources.
    pub groups: Vec<String>,
    /// `DLQ_MAX_REDRIVES` of the emulator's environment.
    pub max_redrives: u32,
    /// The services' own tables ([`crate::functions::Registry::console_views`]).
    pub views: Vec<ConsoleView>,
    /// Where the views' queries run.
    pub pool: sqlx::PgPool,
}

/// A service's table, read now.
#[derive(Debug, Clone, Serialize)]
pub struct ViewRows {
    pub title: String,
    /// Each row as an object of its columns; the first [`VIEW_ROWS`].
    pub rows: Vec<serde_json::Value>,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
}

/// The most rows of a view the page shows.
pub const VIEW_ROWS: usize = 50;

/// One function, as the console lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionView {
    pub id: String,
    pub binary: String,
    /// Invocations in flight now: the concurrency in use.
    pub in_flight: u64,
    /// Invocations the handler finished (HTTP, schedule), or batches a
    /// stream source handed it, whichever is more.
    pub invocations: u64,
    /// Records the function handled, or events it published.
    pub events: u64,
    /// Invocations through the emulator that ended in an error, and records
    /// that failed (retried or dead-lettered).
    pub errors: u64,
    pub cold_starts: u64,
    /// Upper bounds of the duration buckets the median and the 99th
    /// percentile fall in, in milliseconds.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A consumer group's dead letters.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterGroup {
    pub group: String,
    pub key: String,
    pub total: u64,
    /// The kinds among the oldest [`SUMMARIZED`].
    pub kinds: Vec<Kind>,
    /// The oldest few, with their redrive counts.
    pub letters: Vec<LetterRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LetterRow {
    pub id: String,
    pub source_stream: String,
    pub event_type: String,
    pub error: String,
    pub attempts: u32,
    pub redrives: u32,
    pub failed_at: String,
}

/// One outbox: its backlog and the rows set aside as failed.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxView {
    pub outbox: String,
    pub pending: u64,
    pub oldest_pending_age_ms: Option<u64>,
    pub failed: u64,
    /// The oldest few failed rows, with their errors.
    pub failed_rows: Vec<shared::relay::FailedRow>,
}

/// Everything the page shows but the logs.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub at: String,
    pub status: Option<status::Status>,
    pub functions: Vec<FunctionView>,
    pub streams: Vec<StreamOverview>,
    pub outboxes: Vec<OutboxView>,
    pub dead_letters: Vec<DeadLetterGroup>,
    pub max_redrives: u32,
    pub views: Vec<ViewRows>,
    /// Why a part is missing, when one is.
    pub errors: Vec<String>,
}

/// Per service (binary) from the Prometheus text: handler durations' bucket
/// counts and the cold starts. Pure, so that it is tested on its own.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ServiceFigures {
    /// `(upper bound, cumulative count)`, in the order given.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub cold_starts: u64,
    /// Batches a stream source handed its handler.
    pub batches: u64,
    /// Records handled or events published.
    pub events: u64,
    /// Records that failed (retried or dead-lettered).
    pub failed: u64,
}

/// The figures of every service in `text` (Prometheus' exposition format).
pub fn figures(text: &str) -> BTreeMap<String, ServiceFigures> {
    let mut out: BTreeMap<String, ServiceFigures> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = name_labels
            .split_once('{')
            .map_or((name_labels, ""), |(n, l)| (n, l.trim_end_matches('}')));
        let label = |key: &str| {
            labels.split(',').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == key).then(|| v.trim_matches('"').to_owned())
            })
        };
        let Some(service) = label("service") else {
            continue;
        };
        // Only the service's own series, not those of a second dimension.
        if labels.split(',').count() > 1 + usize::from(label("le").is_some()) {
            continue;
        }
        let value = count(value);
        let entry = out.entry(service).or_default();
        match name {
            "handler_duration_milliseconds_bucket" => {
                let bound =
                    label("le").map_or(f64::INFINITY, |le| le.parse().unwrap_or(f64::INFINITY));
                entry.buckets.push((bound, value));
            }
            "handler_duration_milliseconds_count" => entry.count = value,
            "cold_starts_total" => entry.cold_starts = value,
            "batch_size_count" => entry.batches = value,
            "events_processed_total" | "events_published_total" => entry.events += value,
            "events_failed_total" => entry.failed = value,
            _ => {}
        }
    }
    out
}

/// A sample's value as a count: the exporter writes counts as whole numbers,
/// or in float notation when large.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // Rounded, clamped at 0.
fn count(value: &str) -> u64 {
    value.parse::<u64>().unwrap_or_else(|_| {
        value
            .parse::<f64>()
            .map_or(0, |f| f.max(0.0).round() as u64)
    })
}

/// The upper bound of the bucket that holds the quantile `per_mille`/1000 of `buckets`.
pub fn quantile(buckets: &[(f64, u64)], count: u64, per_mille: u64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = (count * per_mille).div_ceil(1000).max(1);
    buckets
        .iter()
        .find(|(_, cumulative)| *cumulative >= rank)
        .map(|(bound, _)| *bound)
        .filter(|b| b.is_finite())
}

impl Console {
    /// The snapshot the page shows now. Each figure is read once: the
    /// status is decided from the same outboxes and streams the page shows.
    pub async fn snapshot(&self, functions: &Functions) -> Snapshot {
        let mut errors = Vec::new();
        let in_flight = functions.in_flight();
        let mut outboxes = Vec::new();
        for outbox in &self.source.relay.options().outboxes {
            match self.outbox(outbox).await {
                Ok(o) => outboxes.push(o),
                Err(e) => errors.push(format!("outbox {outbox}: {e}")),
            }
        }
        let streams = match shared::source::stream_overview(
            &mut self.source.redis.clone(),
            &self.source.namespace,
        )
        .await
        {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(format!("streams: {e}"));
                None
            }
        };
        let status = streams
            .as_ref()
            .filter(|_| errors.is_empty())
            .map(|streams| {
                status::decide(
                    status::busiest(in_flight, functions.in_flight()),
                    outboxes
                        .iter()
                        .map(|o| status::OutboxStatus {
                            outbox: o.outbox.clone(),
                            pending: o.pending,
                        })
                        .collect(),
                    status::groups_of(streams),
                )
            });
        let mut dead_letters = Vec::new();
        for group in &self.groups {
            match self.dead_letters(group).await {
                Ok(d) => dead_letters.push(d),
                Err(e) => errors.push(format!("dead letters of {group}: {e}")),
            }
        }
        Snapshot {
            at: shared::envelope::format_timestamp(shared::envelope::now_utc()),
            status,
            functions: function_views(functions),
            streams: streams.unwrap_or_default(),
            outboxes,
            dead_letters,
            max_redrives: self.max_redrives,
            views: self.views().await,
            errors,
        }
    }

    async fn views(&self) -> Vec<ViewRows> {
        let mut out = Vec::with_capacity(self.views.len());
        for view in &self.views {
            let sql = format!(
                "SELECT row_to_json(v)::text FROM ({}) v LIMIT {VIEW_ROWS}",
                view.sql
            );
            let read: Result<Vec<String>, sqlx::Error> =
                sqlx::query_scalar(&sql).fetch_all(&self.pool).await;
            let (rows, error) = match read {
                Ok(rows) => (
                    rows.iter()
                        .filter_map(|r| serde_json::from_str(r).ok())
                        .collect(),
                    None,
                ),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            out.push(ViewRows {
                title: view.title.to_owned(),
                rows,
                error,
            });
        }
        out
    }

    async fn outbox(
        &self,
        outbox: &shared::outbox::Outbox,
    ) -> Result<OutboxView, shared::relay::RelayError> {
        let relay = &self.source.relay;
        let backlog = relay.backlog(outbox).await?;
        let failed_rows = if backlog.failed == 0 {
            Vec::new()
        } else {
            relay.failed_rows(outbox, 20).await?
        };
        Ok(OutboxView {
            outbox: outbox.to_string(),
            pending: backlog.pending,
            oldest_pending_age_ms: backlog.oldest_pending_age_ms,
            failed: backlog.failed,
            failed_rows,
        })
    }

    fn letters_of(&self, group: &str) -> DeadLetters {
        DeadLetters::new(self.source.redis.clone(), &self.source.namespace, group)
    }

    async fn dead_letters(&self, group: &str) -> Result<DeadLetterGroup, redis::RedisError> {
        let dead = self.letters_of(group);
        let total = dead.count().await?;
        let kinds = if total == 0 {
            Vec::new()
        } else {
            dead.summary(SUMMARIZED).await?
        };
        let letters = dead
            .list(None, 50)
            .await?
            .into_iter()
            .map(|l| LetterRow {
                event_type: l.event_type(),
                id: l.id,
                source_stream: l.source_stream,
                error: l.error,
                attempts: l.attempts,
                redrives: l.redrives,
                failed_at: l.failed_at,
            })
            .collect();
        Ok(DeadLetterGroup {
            key: dead.key().to_owned(),
            group: group.to_owned(),
            total,
            kinds,
            letters,
        })
    }
}

/// Every function with its figures.
fn function_views(functions: &Functions) -> Vec<FunctionView> {
    let figures = figures(&crate::metrics::render());
    let mut views: Vec<FunctionView> = functions
        .iter()
        .map(|f| {
            let mine = figures.get(&f.spec.binary).cloned().unwrap_or_default();
            FunctionView {
                id: f.spec.logical_id.clone(),
                binary: f.spec.binary.clone(),
                in_flight: f.in_flight.get(),
                invocations: mine.count.max(mine.batches),
                events: mine.events,
                errors: f.errors.load(std::sync::atomic::Ordering::Relaxed) + mine.failed,
                cold_starts: mine.cold_starts,
                p50_ms: quantile(&mine.buckets, mine.count, 500),
                p99_ms: quantile(&mine.buckets, mine.count, 990),
            }
        })
        .collect();
    views.sort_by(|a, b| a.id.cmp(&b.id));
    views
}

/// The page and its two files.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "" | "index.html" => (PAGE, "text/html; charset=utf-8"),
        "console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            // The page runs only what it was served with, from here.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Why a state-changing request is refused, if it is: see the module's comment.
pub fn refused(headers: &HeaderMap, listener: SocketAddr) -> Option<String> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok())?;
    if !crate::own_address(host, listener) {
        return Some(format!(
            "the console answers only its own address (Host: {host})"
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        if origin != format!("http://{host}") {
            return Some(format!(
                "the console's actions answer only its own page (Origin: {origin})"
            ));
        }
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if !json {
        return Some("the console's actions take a JSON body".to_owned());
    }
    None
}

/// The body of a redrive or purge.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Action {
    /// Every dead letter of the group.
    #[serde(default)]
    pub all: bool,
    /// These dead letters.
    #[serde(default)]
    pub ids: Vec<String>,
    /// Those of one kind.
    pub kind: Option<Filter>,
    /// Redrive: change nothing, say what would happen.
    #[serde(default)]
    pub dry_run: bool,
    /// Redrive: records redriven `DLQ_MAX_REDRIVES` times, too.
    #[serde(default)]
    pub force: bool,
    /// Purge: must be true.
    #[serde(default)]
    pub confirm: bool,
}

impl Action {
    fn selection(&self) -> Option<Selection> {
        if self.all {
            Some(Selection::All)
        } else if !self.ids.is_empty() {
            Some(Selection::Ids(self.ids.clone()))
        } else {
            self.kind.clone().map(Selection::Where)
        }
    }
}

fn json_error(code: StatusCode, message: &str) -> Response {
    (code, axum::Json(serde_json::json!({ "message": message }))).into_response()
}

/// `POST /_console/api/dlq/{group}/{redrive|purge}`.
pub async fn act(
    console: &Console,
    listener: SocketAddr,
    headers: &HeaderMap,
    group: &str,
    verb: &str,
    body: &[u8],
) -> Response {
    if let Some(reason) = refused(headers, listener) {
        tracing::warn!(%reason, "console action refused");
        return json_error(StatusCode::FORBIDDEN, &reason);
    }
    if !console.groups.iter().any(|g| g == group) {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("unknown consumer group {group:?}"),
        );
    }
    let action: Action = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("the body: {e}")),
    };
    let Some(selection) = action.selection() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "say which dead letters: all, ids or kind",
        );
    };
    let dead = console.letters_of(group);
    match verb {
        "redrive" => {
            let policy = RedrivePolicy {
                max_redrives: console.max_redrives,
                force: action.force,
                dry_run: action.dry_run,
            };
            match dead.redrive(&selection, &policy, |_, _| {}).await {
                Ok(report) => {
                    let text = crate::cli::redrive_lines(dead.key(), &policy, &report);
                    axum::Json(serde_json::json!({ "report": report, "text": text }))
                        .into_response()
                }
                Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            }
        }
        "purge" if !action.confirm => json_error(
            StatusCode::BAD_REQUEST,
            "a purge deletes for good: confirm it (\"confirm\": true)",
        ),
        "purge" => match dead.purge(&selection).await {
            Ok(n) => axum::Json(serde_json::json!({
                "purged": n,
                "text": format!("{n} dead letters of {} purged", dead.key()),
            }))
            .into_response(),
            Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        },
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `POST /_console/api/outbox/{outbox}/redrive` with `{"ids": [..]}`: puts
/// failed rows back in line (after their cause was fixed).
pub async fn redrive_outbox(
    console: &Console,
    listener: SocketAddr,
    headers: &HeaderMap,
    outbox: &str,
    body: &[u8],
) -> Response {
    #[derive(Deserialize)]
    struct Rows {
        ids: Vec<i64>,
    }
    if let Some(reason) = refused(headers, listener) {
        tracing::warn!(%reason, "console action refused");
        return json_error(StatusCode::FORBIDDEN, &reason);
    }
    let relay = &console.source.relay;
    let Some(outbox) = relay
        .options()
        .outboxes
        .iter()
        .find(|o| o.to_string() == outbox)
    else {
        return json_error(StatusCode::NOT_FOUND, &format!("unknown outbox {outbox:?}"));
    };
    let rows: Rows = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("the body: {e}")),
    };
    match relay.redrive(outbox, &rows.ids).await {
        Ok(n) => axum::Json(serde_json::json!({
            "redriven": n,
            "text": format!("{n} failed rows of {outbox} back in line"),
        }))
        .into_response(),
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `GET /_console/api/dlq/{group}/{id}`: one dead letter, its original fields
/// byte for byte (as text where they are UTF-8, and always as hex).
pub async fn letter(console: &Console, group: &str, id: &str) -> Response {
    if !console.groups.iter().any(|g| g == group) {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("unknown consumer group {group:?}"),
        );
    }
    match console.letters_of(group).get(id).await {
        Ok(Some(l)) => {
            let fields: Vec<serde_json::Value> = l
                .fields
                .iter()
                .map(|(k, v)| {
                    serde_json::json!({
                        "name": String::from_utf8_lossy(k),
                        "text": std::str::from_utf8(v).ok(),
                        "hex": v.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                    })
                })
                .collect();
            axum::Json(serde_json::json!({
                "id": l.id,
                "source_stream": l.source_stream,
                "source_id": l.source_id,
                "error": l.error,
                "attempts": l.attempts,
                "redrives": l.redrives,
                "failed_at": l.failed_at,
                "fields": fields,
            }))
            .into_response()
        }
        Ok(None) => json_error(StatusCode::NOT_FOUND, &format!("no dead letter {id}")),
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `GET /_console/api/events`: a snapshot now and every [`EVERY`], as
/// server-sent events named `snapshot`, until `stopping` (the emulator's
/// shutdown: the browser reconnects, to the next emulator when `up --watch`
/// swaps it).
pub fn events(
    console: Arc<Console>,
    functions: Arc<Functions>,
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
) -> Response {
    let stream = futures::stream::unfold(
        (console, functions, true),
        |(console, functions, first)| async move {
            if !first {
                tokio::time::sleep(EVERY).await;
            }
            let snapshot = console.snapshot(&functions).await;
            let event = Event::default()
                .event("snapshot")
                .json_data(&snapshot)
                .map_err(axum::Error::new);
            Some((event, (console, functions, false)))
        },
    );
    let stopped = async move {
        match stopping {
            Some(mut stopping) => {
                let _ = stopping.wait_for(|stopping| *stopping).await;
            }
            None => std::future::pending().await,
        }
    };
    let stream = futures::StreamExt::take_until(stream, stopped);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE handler_duration_milliseconds histogram
handler_duration_milliseconds_bucket{service="create-order",le="5"} 10
handler_duration_milliseconds_bucket{service="create-order",le="10"} 98
handler_duration_milliseconds_bucket{service="create-order",le="50"} 100
handler_duration_milliseconds_bucket{service="create-order",le="+Inf"} 100
handler_duration_milliseconds_sum{service="create-order"} 700
handler_duration_milliseconds_count{service="create-order"} 100
handler_duration_milliseconds_count{service="outbox-relay",outbox="orders.outbox"} 5
cold_starts_total{service="create-order"} 1
batch_size_count{service="inventory-consumer"} 3
events_processed_total{service="inventory-consumer"} 7
events_failed_total{service="inventory-consumer"} 2
events_published_total{service="outbox-relay"} 9
"#;

    #[test]
    fn the_figures_of_each_service_come_from_its_own_series() {
        let figures = figures(TEXT);
        let mine = &figures["create-order"];
        assert_eq!(mine.count, 100);
        assert_eq!(mine.cold_starts, 1);
        assert_eq!(mine.buckets.len(), 4);
        assert_eq!(quantile(&mine.buckets, mine.count, 500), Some(10.0));
        assert_eq!(quantile(&mine.buckets, mine.count, 990), Some(50.0));
        assert_eq!(quantile(&mine.buckets, 0, 500), None);
        // A second dimension's series is not the service's total.
        assert_eq!(figures.get("outbox-relay").map(|f| f.count), Some(0));
        assert_eq!(figures["outbox-relay"].events, 9);
        let consumer = &figures["inventory-consumer"];
        assert_eq!(
            (consumer.batches, consumer.events, consumer.failed),
            (3, 7, 2)
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("a header value"));
        }
        h
    }

    #[test]
    fn actions_answer_only_the_consoles_own_page() {
        let listener: SocketAddr = "127.0.0.1:3000".parse().expect("an address");
        let own = [
            ("host", "127.0.0.1:3000"),
            ("content-type", "application/json"),
        ];
        assert_eq!(refused(&headers(&own), listener), None, "curl, no origin");
        let page = [
            ("host", "localhost:3000"),
            ("origin", "http://localhost:3000"),
            ("content-type", "application/json"),
        ];
        assert_eq!(refused(&headers(&page), listener), None);
        for (case, pairs) in [
            (
                "another site",
                vec![
                    ("host", "127.0.0.1:3000"),
                    ("origin", "https://evil.example"),
                    ("content-type", "application/json"),
                ],
            ),
            (
                "a form post",
                vec![
                    ("host", "127.0.0.1:3000"),
                    ("origin", "http://127.0.0.1:3000"),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
            ),
            (
                "DNS rebinding",
                vec![
                    ("host", "evil.example:3000"),
                    ("origin", "http://evil.example:3000"),
                    ("content-type", "application/json"),
                ],
            ),
            (
                "another port",
                vec![
                    ("host", "127.0.0.1:3001"),
                    ("content-type", "application/json"),
                ],
            ),
        ] {
            assert!(
                refused(&headers(&pairs), listener).is_some(),
                "{case} must be refused"
            );
        }
    }
}
