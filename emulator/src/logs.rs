//! One order's journey in the log lines: `GET /_emulator/logs` and
//! `emulator logs`, which read the running emulator's [`LogBook`] (its last
//! [`BOOK_LINES`] lines, as Lambda's JSON lines with `function_name`).
//!
//! A line belongs to a trace when it names the trace id anywhere (a field of
//! the emulator's own lines, or the text of a function binary's line under
//! `--runtime-api`). An order id stands for the traces of the lines that name
//! it: the order's request and every hop that carried its trace on.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::logbook::LogBook;

/// How many lines `emulator up` keeps.
pub const BOOK_LINES: usize = 50_000;

/// Which lines to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Only this function's lines (its logical id).
    pub function: Option<String>,
    /// Only the lines of this trace.
    pub trace: Option<String>,
    /// Only the lines of the traces that name this order (or any other id).
    pub order: Option<String>,
    /// Lines numbered this and later (`next` of the last answer); all kept by default.
    #[serde(default)]
    pub from: u64,
    /// The most lines answered: the latest that match.
    pub limit: Option<usize>,
}

/// The answer of `GET /_emulator/logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The lines, oldest first, each a JSON object.
    pub lines: Vec<Value>,
    /// Ask again with `from` = this for the lines written since.
    pub next: u64,
    /// The traces that were followed (the given one, or the order's).
    pub traces: Vec<String>,
}

const DEFAULT_LIMIT: usize = 1000;

/// The function a JSON line names, if any.
fn function_of(line: &Value) -> Option<&str> {
    line.get("function_name").and_then(Value::as_str)
}

/// The traces of the lines that name `id`: their `trace_id` fields.
fn traces_naming(book: &LogBook, id: &str) -> BTreeSet<String> {
    let page = book.read(0, usize::MAX, |l| l.contains(id));
    page.lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("trace_id").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// The lines of `book` that `query` asks for.
pub fn read(book: &LogBook, query: &Query) -> Answer {
    let mut traces: BTreeSet<String> = query.trace.iter().cloned().collect();
    if let Some(order) = &query.order {
        traces.extend(traces_naming(book, order));
    }
    let order = query.order.as_deref();
    let function = query.function.as_deref();
    let follows_ids = query.trace.is_some() || order.is_some();
    let page = book.read(query.from, query.limit.unwrap_or(DEFAULT_LIMIT), |line| {
        let of_trace = !follows_ids
            || traces.iter().any(|t| line.contains(t.as_str()))
            || order.is_some_and(|o| line.contains(o));
        // A cheap test first; the exact one parses the line.
        of_trace
            && function.is_none_or(|f| {
                line.contains(f)
                    && serde_json::from_str::<Value>(line).is_ok_and(|v| function_of(&v) == Some(f))
            })
    });
    Answer {
        lines: page
            .lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .map(flatten)
            .collect(),
        next: page.next,
        traces: traces.into_iter().collect(),
    }
}

/// A function binary's own JSON line (under `--runtime-api`, the emulator's
/// line carries it as its message) in place of the line that carries it: its
/// time, level, message and fields are the function's.
fn flatten(line: Value) -> Value {
    let inner = line
        .get("message")
        .and_then(Value::as_str)
        .filter(|m| m.starts_with('{'))
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .filter(|v| v.get("message").is_some());
    match inner {
        Some(Value::Object(mut inner)) => {
            if let Some(function) = line.get("function_name") {
                inner
                    .entry("function_name")
                    .or_insert_with(|| function.clone());
            }
            Value::Object(inner)
        }
        _ => line,
    }
}

/// A JSON line as a person reads it: `time LEVEL [Function] message key=value ...`
/// (the other fields in name order).
pub fn text(line: &Value) -> String {
    let get = |key: &str| line.get(key).and_then(Value::as_str).unwrap_or_default();
    let mut text = format!("{} {:>5} ", get("timestamp"), get("level"));
    if let Some(function) = function_of(line) {
        text.push_str(&format!("[{function}] "));
    }
    text.push_str(get("message"));
    const SHOWN: [&str; 6] = [
        "timestamp",
        "level",
        "message",
        "function_name",
        "service",
        "target",
    ];
    if let Some(fields) = line.as_object() {
        for (key, value) in fields.iter().filter(|(k, _)| !SHOWN.contains(&k.as_str())) {
            match value {
                Value::String(s) => text.push_str(&format!(" {key}={s}")),
                other => text.push_str(&format!(" {key}={other}")),
            }
        }
    }
    text
}

/// `emulator logs`: the lines of the emulator at `url` that `query` asks for,
/// as text or JSON lines; with `follow`, then every new one until interrupted.
pub async fn print(
    url: &str,
    mut query: Query,
    json: bool,
    follow: bool,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let endpoint = format!("{}/_emulator/logs", url.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    loop {
        let answer: Answer = match http.get(&endpoint).query(&query).send().await {
            Ok(r) if r.status().is_success() => r.json().await?,
            Ok(r) => anyhow::bail!("{endpoint} answered {}", r.status()),
            Err(e) => anyhow::bail!("{endpoint}: {e} (is `emulator up` running there?)"),
        };
        for line in &answer.lines {
            if json {
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "{}", text(line))?;
            }
        }
        out.flush()?;
        if !follow {
            return Ok(());
        }
        query.from = answer.next;
        // An order's later hops carry its trace: follow the traces found so far.
        if query.trace.is_none() && answer.traces.len() == 1 {
            query.trace = answer.traces.first().cloned();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn book() -> std::sync::Arc<LogBook> {
        let book = LogBook::new(100);
        for line in [
            json!({"timestamp":"t1","level":"INFO","message":"order created","function_name":"CreateOrderFunction","trace_id":"aaa","order_id":"o-1"}),
            json!({"timestamp":"t2","level":"INFO","message":"order created","function_name":"CreateOrderFunction","trace_id":"bbb","order_id":"o-2"}),
            json!({"timestamp":"t3","level":"INFO","message":"event published","function_name":"OutboxRelayFunction","trace_id":"aaa"}),
            json!({"timestamp":"t4","level":"INFO","message":"ready"}),
            json!({"timestamp":"t5","level":"INFO","message":"{\"trace_id\":\"aaa\"} from a binary","function_name":"OrderSagaFunction","stream":"stdout"}),
        ] {
            book.push(&line.to_string());
        }
        book
    }

    fn messages(answer: &Answer) -> Vec<String> {
        answer
            .lines
            .iter()
            .map(|l| {
                format!(
                    "{}:{}",
                    l["timestamp"].as_str().unwrap_or_default(),
                    l["message"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn an_order_id_follows_the_traces_of_its_lines_across_functions() {
        let answer = read(
            &book(),
            &Query {
                order: Some("o-1".into()),
                ..Query::default()
            },
        );
        assert_eq!(answer.traces, ["aaa"]);
        assert_eq!(
            messages(&answer),
            [
                "t1:order created",
                "t3:event published",
                "t5:{\"trace_id\":\"aaa\"} from a binary"
            ]
        );
    }

    #[test]
    fn a_function_keeps_only_the_lines_it_wrote() {
        let book = book();
        let of = |function: &str, trace: Option<&str>| {
            messages(&read(
                &book,
                &Query {
                    function: Some(function.into()),
                    trace: trace.map(str::to_owned),
                    ..Query::default()
                },
            ))
        };
        assert_eq!(
            of("CreateOrderFunction", None),
            ["t1:order created", "t2:order created"]
        );
        assert_eq!(of("CreateOrderFunction", Some("bbb")), ["t2:order created"]);
        // A name that only appears inside another function's line is not its.
        assert!(of("Create", None).is_empty());
    }

    #[test]
    fn without_a_filter_every_line_from_where_the_reader_stopped() {
        let book = book();
        let all = read(&book, &Query::default());
        assert_eq!(all.lines.len(), 5);
        assert_eq!(all.next, 6);
        let later = read(
            &book,
            &Query {
                from: 5,
                ..Query::default()
            },
        );
        assert_eq!(messages(&later).len(), 1);
    }

    #[test]
    fn a_binarys_own_json_line_stands_for_the_line_that_carries_it() {
        let inner =
            json!({"timestamp":"t0","level":"WARN","message":"event failed","trace_id":"aaa"});
        let carried = json!({"timestamp":"t1","level":"INFO","message": inner.to_string(),
                             "function_name":"InventoryConsumerFunction","stream":"stdout"});
        let flat = flatten(carried);
        assert_eq!(flat["message"], "event failed");
        assert_eq!(flat["level"], "WARN");
        assert_eq!(flat["function_name"], "InventoryConsumerFunction");
        // A text line stays as it is.
        let text = json!({"message":"{not json","function_name":"F"});
        assert_eq!(flatten(text.clone()), text);
    }

    #[test]
    fn a_line_reads_with_its_function_before_the_message() {
        let line = json!({"timestamp":"2026-11-29T00:00:00Z","level":"INFO","message":"event handled","service":"emulator","function_name":"OrderSagaFunction","target":"x","trace_id":"aaa","attempt":1});
        assert_eq!(
            text(&line),
            "2026-11-29T00:00:00Z  INFO [OrderSagaFunction] event handled attempt=1 trace_id=aaa"
        );
    }
}
