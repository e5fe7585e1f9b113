//! The operator commands around the emulator: `dlq`, `streams`, `outbox`. Each
//! writes a readable report to `out`, or with [`Format::Json`] the same figures
//! as one JSON document for scripts; progress goes to `progress`.

use std::io::Write;

use anyhow::Context as _;
use shared::outbox::Outbox;
use shared::redis_link::Redis;
use shared::relay::Relay;
use shared::source::{DeadLetter, DeadLetters, RedrivePolicy, RedriveReport, Selection};

/// How a report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned lines for people.
    Text,
    /// One JSON document (pretty-printed), for scripts.
    Json,
}

/// `value` as one JSON document on `out`.
fn json(out: &mut dyn Write, value: &impl serde::Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A dead letter as `dlq list --json` gives it: its origin, error, attempts
/// and event, without the original fields (`dlq show` has them).
#[derive(Debug, serde::Serialize)]
struct LetterView<'a> {
    id: &'a str,
    source_stream: &'a str,
    source_id: &'a str,
    attempts: u32,
    /// How many times it was redriven already.
    redrives: u32,
    failed_at: &'a str,
    error: &'a str,
    event_type: Option<String>,
    event_id: Option<String>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    /// Why the original entry is not an event, when it is not.
    undecodable: Option<String>,
}

impl<'a> LetterView<'a> {
    fn of(letter: &'a DeadLetter) -> Self {
        let (event, undecodable) = match letter.original().decode() {
            Ok(e) => (Some(e), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Self {
            id: &letter.id,
            source_stream: &letter.source_stream,
            source_id: &letter.source_id,
            attempts: letter.attempts,
            redrives: letter.redrives,
            failed_at: &letter.failed_at,
            error: &letter.error,
            event_type: event.as_ref().map(|e| e.event_type.to_string()),
            event_id: event.as_ref().map(|e| e.event_id.to_string()),
            aggregate_type: event.as_ref().map(|e| e.aggregate_type.to_string()),
            aggregate_id: event.as_ref().map(|e| e.aggregate_id.to_string()),
            undecodable,
        }
    }
}

/// The consumer groups of the template: one per function with a stream
/// source (its `CONSUMER_GROUP`), in template order.
pub fn groups(template: &crate::template::Template) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    for source in template.functions.iter().filter_map(|f| f.stream_source()) {
        if !groups.contains(&source.group) {
            groups.push(source.group);
        }
    }
    groups
}

/// `group`, if it is one of `groups`; else an error that lists them.
pub fn check_group(group: &str, groups: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        groups.iter().any(|g| g == group),
        "unknown consumer group {group:?} (the groups are {})",
        groups.join(", ")
    );
    Ok(())
}

fn describe(letter: &DeadLetter) -> String {
    let event = letter.original().decode().map_or_else(
        |e| format!("undecodable ({e})"),
        |e| {
            format!(
                "{} {} of {} {}",
                e.event_type, e.event_id, e.aggregate_type, e.aggregate_id
            )
        },
    );
    format!(
        "{id}  from {stream} {source}  attempts {attempts}  redriven {redrives}  at {at}\n    event: {event}\n    error: {error}",
        id = letter.id,
        stream = letter.source_stream,
        source = letter.source_id,
        attempts = letter.attempts,
        redrives = letter.redrives,
        at = letter.failed_at,
        error = letter.error,
    )
}

/// `3d 4h`, `2h 5m`, `12m 3s`, `800 ms`: an age at a glance.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `dlq list`: every dead-letter stream of the namespace with its length and
/// the age of its oldest entry (retention trims by that age), then the dead
/// letters of `groups`, up to `count` each.
pub async fn dlq_list(
    redis: &Redis,
    namespace: &str,
    groups: &[&str],
    count: usize,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let streams = shared::source::dead_letter_streams(&mut redis.clone(), namespace).await?;
    if format == Format::Json {
        let mut listed = Vec::new();
        for group in groups {
            let dead = DeadLetters::new(redis.clone(), namespace, group);
            let total = dead.count().await?;
            let letters = dead.list(None, count).await?;
            listed.push(serde_json::json!({
                "group": group,
                "key": dead.key(),
                "total": total,
                "letters": letters.iter().map(LetterView::of).collect::<Vec<_>>(),
            }));
        }
        return json(
            out,
            &serde_json::json!({ "streams": streams, "groups": listed }),
        );
    }
    if streams.is_empty() {
        writeln!(out, "no dead-letter streams under {namespace}:dlq:")?;
    }
    for s in &streams {
        writeln!(
            out,
            "{:<28} length {:<8} oldest {}",
            s.key,
            s.length,
            s.oldest_age_ms.map_or_else(|| "-".to_owned(), age)
        )?;
    }
    for group in groups {
        let dead = DeadLetters::new(redis.clone(), namespace, group);
        let total = dead.count().await?;
        writeln!(out, "{} ({total} dead letters)", dead.key())?;
        for letter in dead.list(None, count).await? {
            writeln!(out, "{}", describe(&letter))?;
        }
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        if total > count {
            writeln!(out, "... and {} more (--count)", total - count)?;
        }
    }
    Ok(())
}

/// `dlq show`: one dead letter, with its original fields.
pub async fn dlq_show(
    redis: &Redis,
    namespace: &str,
    group: &str,
    id: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let dead = DeadLetters::new(redis.clone(), namespace, group);
    let letter = dead
        .get(id)
        .await?
        .with_context(|| format!("no dead letter {id} in {}", dead.key()))?;
    writeln!(out, "{}", describe(&letter))?;
    writeln!(out, "    fields:")?;
    for (k, v) in &letter.fields {
        writeln!(
            out,
            "      {} = {}",
            String::from_utf8_lossy(k),
            String::from_utf8_lossy(v)
        )?;
    }
    Ok(())
}

/// `dlq summary`: the group's dead letters by error, event type and hour.
pub async fn dlq_summary(
    redis: &Redis,
    namespace: &str,
    group: &str,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let dead = DeadLetters::new(redis.clone(), namespace, group);
    let kinds = dead.summary(usize::MAX).await?;
    if format == Format::Json {
        return json(out, &kinds);
    }
    writeln!(out, "{} ({} kinds)", dead.key(), kinds.len())?;
    for k in &kinds {
        writeln!(
            out,
            "{:>6}  {}  {}  redriven up to {}  {}..{}\n        error: {}",
            k.count, k.hour, k.event_type, k.max_redrives, k.first_id, k.last_id, k.error
        )?;
    }
    Ok(())
}

/// `dlq redrive`: back to their original streams, with progress; what was
/// (or, dry, would be) redriven per stream, and what was refused.
pub async fn dlq_redrive(
    redis: &Redis,
    namespace: &str,
    group: &str,
    selection: &Selection,
    policy: &RedrivePolicy,
    out: &mut dyn Write,
    progress: &mut dyn Write,
) -> anyhow::Result<RedriveReport> {
    let dead = DeadLetters::new(redis.clone(), namespace, group);
    let report = dead
        .redrive(selection, policy, |done, total| {
            let _ = write!(progress, "\rlooked at {done}/{total}");
            let _ = progress.flush();
        })
        .await?;
    if report.total() + report.refused.len() as u64 > 0 {
        writeln!(progress)?;
    }
    write!(out, "{}", redrive_lines(dead.key(), policy, &report))?;
    Ok(report)
}

/// What `dlq redrive` says of `report`.
pub fn redrive_lines(key: &str, policy: &RedrivePolicy, report: &RedriveReport) -> String {
    let verb = if report.dry_run {
        "would be redriven (dry run: nothing changed)"
    } else {
        "redriven"
    };
    let mut text = format!("{} dead letters of {key} {verb}\n", report.total());
    for (stream, n) in &report.redriven {
        text.push_str(&format!("  {n} to {stream}\n"));
    }
    if !report.refused.is_empty() {
        text.push_str(&format!(
            "{} refused: redriven {} times already (DLQ_MAX_REDRIVES), --force redrives them anyway\n",
            report.refused.len(),
            policy.max_redrives
        ));
        for r in &report.refused {
            text.push_str(&format!("  {} (redriven {} times)\n", r.id, r.redrives));
        }
    }
    for id in &report.not_found {
        text.push_str(&format!("  {id}: no such dead letter\n"));
    }
    text
}

/// `dlq purge`: with `yes`, deletes; without, says how many it would.
pub async fn dlq_purge(
    redis: &Redis,
    namespace: &str,
    group: &str,
    selection: &Selection,
    yes: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let dead = DeadLetters::new(redis.clone(), namespace, group);
    if !yes {
        let n = dead.matching(selection).await?;
        writeln!(
            out,
            "{n} dead letters of {} would be purged; add --yes to delete them for good",
            dead.key()
        )?;
        return Ok(0);
    }
    let n = dead.purge(selection).await?;
    writeln!(out, "{n} dead letters of {} purged", dead.key())?;
    Ok(n)
}

/// `streams`: per stream, its length and each group's consumers, pending and lag.
pub async fn streams(
    redis: &Redis,
    namespace: &str,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let streams = shared::source::stream_overview(&mut redis.clone(), namespace).await?;
    if format == Format::Json {
        return json(out, &streams);
    }
    if streams.is_empty() {
        writeln!(out, "no streams under {namespace}:")?;
    }
    for s in streams {
        writeln!(out, "{}  length {}", s.key, s.length)?;
        for g in s.groups {
            writeln!(
                out,
                "    group {:<12} consumers {:<3} pending {:<6} lag {:<6} last delivered {}",
                g.name,
                g.consumers,
                g.pending,
                g.lag.map_or_else(|| "?".to_owned(), |l| l.to_string()),
                g.last_delivered_id
            )?;
        }
    }
    Ok(())
}

/// `outbox`: per outbox, rows waiting, the oldest one's age, and rows set aside.
pub async fn outbox(relay: &Relay, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut backlogs = Vec::new();
    for o in &relay.options().outboxes {
        backlogs.push((o, relay.backlog(o).await?));
    }
    if format == Format::Json {
        let rows: Vec<serde_json::Value> = backlogs
            .iter()
            .map(|(o, b)| {
                serde_json::json!({
                    "outbox": o.to_string(),
                    "pending": b.pending,
                    "oldest_pending_age_ms": b.oldest_pending_age_ms,
                    "failed": b.failed,
                })
            })
            .collect();
        return json(out, &rows);
    }
    for (o, b) in backlogs {
        writeln!(
            out,
            "{:<18} pending {:<8} oldest {:<10} failed {}",
            o.to_string(),
            b.pending,
            b.oldest_pending_age_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
            b.failed
        )?;
    }
    Ok(())
}

/// `outbox failed`: the rows of `outbox` set aside as failed, up to `count`.
pub async fn outbox_failed(
    relay: &Relay,
    outbox: &Outbox,
    count: i64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let rows = relay.failed_rows(outbox, count).await?;
    writeln!(out, "{outbox} ({} failed rows shown)", rows.len())?;
    for row in rows {
        writeln!(
            out,
            "{:<10} event {} of {} {}  attempts {}\n    error: {}",
            row.id,
            row.event_id,
            row.aggregate_type,
            row.aggregate_id,
            row.attempts,
            row.last_error.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}

/// Which failed outbox rows `outbox purge-failed` deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailedRows {
    All,
    Ids(Vec<i64>),
}

/// `outbox purge-failed`: deletes rows set aside as failed, for good; only
/// with `confirmed` (without, it says what it would delete). Pending rows are
/// never touched.
pub async fn outbox_purge_failed(
    relay: &Relay,
    outbox: &Outbox,
    rows: &FailedRows,
    confirmed: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    if !confirmed {
        let failed = relay.backlog(outbox).await?.failed;
        let what = match rows {
            FailedRows::All => format!("all {failed} failed rows"),
            FailedRows::Ids(ids) => format!("{} of its {failed} failed rows", ids.len()),
        };
        writeln!(
            out,
            "would purge {what} of {outbox} for good; run again with --yes to do it"
        )?;
        return Ok(0);
    }
    let n = match rows {
        FailedRows::All => relay.purge_all_failed(outbox).await?,
        FailedRows::Ids(ids) => relay.purge_failed(outbox, ids).await?,
    };
    writeln!(out, "{n} failed rows of {outbox} purged")?;
    Ok(n)
}

/// The API Gateway v2 event for a request to one of the template's routes
/// (`emulator generate-event http`).
pub fn http_event(
    template: &crate::template::Template,
    method: &str,
    path_and_query: &str,
    headers: &[String],
    body: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let mut request = axum::http::Request::builder()
        .method(method.to_ascii_uppercase().as_str())
        .uri(path_and_query);
    for header in headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header {header}: expected `name: value`"))?;
        request = request.header(name.trim(), value.trim());
    }
    if !body.is_empty()
        && !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("content-type"))
    {
        request = request.header("content-type", "application/json");
    }
    let (parts, ()) = request
        .body(())
        .with_context(|| format!("{method} {path_and_query} is not a valid request"))?
        .into_parts();
    let routes = crate::routes::RouteTable::from_template(template);
    let matched = routes
        .find(parts.method.as_str(), parts.uri.path())
        .with_context(|| {
            format!(
                "no route of the template matches {} {}",
                parts.method,
                parts.uri.path()
            )
        })?;
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(crate::gateway::event(&parts, body, &matched, peer))
}

/// `count` new events of type `event_type` with `payload`, each of a new
/// aggregate of the stream's type, as the records of one batch with their
/// stream entry fields (`emulator generate-event stream-batch`).
pub fn stream_batch(
    stream: &str,
    event_type: &str,
    payload: &str,
    count: usize,
) -> anyhow::Result<serde_json::Value> {
    use shared::envelope::{AggregateId, AggregateType, EventEnvelope, EventType, Payload};
    // `events:{Order:0}`: the aggregate type is inside the braces.
    let aggregate = stream
        .split_once('{')
        .and_then(|(_, rest)| rest.split(['}', ':']).next())
        .with_context(|| format!("{stream} is not a stream key (namespace:{{Type:partition}})"))?;
    let aggregate = AggregateType::parse(aggregate)?;
    let event_type = EventType::parse(event_type)?;
    let payload = Payload::from_json(payload)?;
    let mut records = Vec::new();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    for i in 0..count {
        let event = EventEnvelope::new(
            event_type.clone(),
            1,
            aggregate.clone(),
            AggregateId::parse(&uuid::Uuid::now_v7().to_string())?,
            None,
            payload.clone(),
        );
        let fields: serde_json::Map<String, serde_json::Value> = event
            .to_stream_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v)))
            .collect();
        records.push(serde_json::json!({
            "stream": stream,
            "id": format!("{now_ms}-{i}"),
            "attempt": 1,
            "fields": fields,
        }));
    }
    Ok(serde_json::json!({ "records": records }))
}
