//! Hostile input over real HTTP through the in-process emulator: oversized
//! bodies, deep nesting, invalid UTF-8, huge and wrong numbers, SQL and Redis
//! command injection strings, NUL bytes and very long strings in every string
//! the API reads (body fields, path ids, `Idempotency-Key`, `traceparent`).
//!
//! Each is refused with a clear `4xx` (a problem, or for bytes HTTP itself
//! forbids the server's own `400`), never a `5xx` or a hang, and writes nothing.
//! Hostile-looking strings the API does accept are stored and published
//! verbatim, and the database and Redis are intact afterwards.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use serde_json::{json, Value};
use tests::emulated::RunningEmulator;
use tests::TestDb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SQL: &str = "'; DROP TABLE orders.orders; --";
const REDIS_CRLF: &str = "\r\nFLUSHALL\r\n";
const REDIS_RESP: &str = "*1\r\n$8\r\nFLUSHALL\r\n";
const NUL: &str = "a\0b";

/// Every hostile string put in string fields.
fn hostile_strings() -> Vec<String> {
    vec![
        SQL.to_owned(),
        REDIS_CRLF.to_owned(),
        REDIS_RESP.to_owned(),
        NUL.to_owned(),
        "x".repeat(65),
        "y".repeat(60_000),
        "\u{FFFD}\u{202E}é".to_owned(),
        String::new(),
        " ".to_owned(),
        "../../etc/passwd".to_owned(),
        "%00".to_owned(),
    ]
}

/// The tables a request could write, and their row counts.
const TABLES: [&str; 5] = [
    "orders.orders",
    "orders.order_lines",
    "orders.outbox",
    "orders.idempotency_keys",
    "inventory.stock",
];

async fn counts(db: &TestDb) -> Result<Vec<(&'static str, i64)>> {
    let mut out = Vec::new();
    for table in TABLES {
        out.push((table, db.count(table).await?));
    }
    Ok(out)
}

/// What came back.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(300)
            .collect()
    }
}

fn client() -> Result<reqwest::Client> {
    // A hang fails the test instead of stalling it. Every request is an
    // authenticated customer's: the hostile part is the input, not the caller.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", tests::bearer("hostile-1").parse()?);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn send(
    http: &reqwest::Client,
    running: &RunningEmulator,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: Option<(&str, Vec<u8>)>,
) -> Result<Answer> {
    let mut request = http.request(
        reqwest::Method::from_bytes(method.as_bytes())?,
        running.url(path),
    );
    for (name, value) in headers {
        request = request.header(*name, reqwest::header::HeaderValue::from_bytes(value)?);
    }
    if let Some((content_type, bytes)) = body {
        request = request.header("content-type", content_type).body(bytes);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {}", abbreviate(path)))?;
    Ok(Answer {
        status: response.status().as_u16(),
        content_type: response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body: response.bytes().await?.to_vec(),
    })
}

/// One request written byte for byte (for bytes a client library refuses to
/// send: CR, LF and NUL in a header), answered within 30 s.
async fn send_raw(running: &RunningEmulator, request: &[u8]) -> Result<Answer> {
    let address = running.base.trim_start_matches("http://").to_owned();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        stream.write_all(request).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .context("no answer within 30 s")??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line: {text:?}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    Ok(Answer {
        status,
        content_type,
        body: body.as_bytes().to_vec(),
    })
}

fn abbreviate(text: &str) -> String {
    let short: String = text.chars().take(80).collect();
    if short.len() < text.len() {
        format!("{short:?}... ({} bytes)", text.len())
    } else {
        format!("{short:?}")
    }
}

/// A refusal: a `4xx`, and from a function a problem whose `status` is the
/// answer's. The server itself (bytes HTTP forbids) answers a bare `400`, and
/// API Gateway's own answers are `{"message": ...}`.
fn refused(what: &str, answer: &Answer) -> Result<()> {
    ensure!(
        (400..500).contains(&answer.status),
        "{what}: expected a 4xx, got {} {}",
        answer.status,
        answer.text()
    );
    match answer.content_type.as_str() {
        "application/problem+json" => {
            let body: Value = serde_json::from_slice(&answer.body)
                .with_context(|| format!("{what}: a problem that is not JSON"))?;
            ensure!(
                body["status"] == answer.status
                    && body["title"].is_string()
                    && body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{what}: not a clear problem: {body}"
            );
        }
        "application/json" => {
            let body: Value = serde_json::from_slice(&answer.body)?;
            ensure!(body["message"].is_string(), "{what}: {body}");
        }
        "" => ensure!(
            answer.status == 400 || answer.status == 414 || answer.status == 431,
            "{what}: {} without a body type",
            answer.status
        ),
        other => anyhow::bail!("{what}: unexpected content type {other}"),
    }
    Ok(())
}

/// An order body (the customer is the caller: the token's subject).
fn order(sku: &Value, quantity: &Value, price: &Value) -> Vec<u8> {
    format!(r#"{{"items":[{{"sku":{sku},"quantity":{quantity},"unit_price_cents":{price}}}]}}"#)
        .into_bytes()
}

async fn start(db: &TestDb) -> Result<RunningEmulator> {
    tests::emulated::start(db, emulator::system::Mode::InProcess, &[]).await
}

const JSON: &str = "application/json";

type Headers = Vec<(&'static str, Vec<u8>)>;

/// One hostile request: what it is, method, path, headers, body and its type.
type Hostile = (
    String,
    &'static str,
    String,
    Headers,
    Option<(&'static str, Vec<u8>)>,
);

#[tokio::test]
async fn hostile_requests_are_refused_and_write_nothing() -> Result<()> {
    let db = TestDb::fresh().await?;
    let running = start(&db).await?;
    let http = client()?;
    let redis = redis::Client::open(tests::redis_url())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let sentinel = format!("{}:sentinel", running.namespace);
    let _: () = redis::cmd("SET")
        .arg(&sentinel)
        .arg("alive")
        .query_async(&mut conn)
        .await?;

    // One stocked SKU and one order to aim path attacks at.
    let put = send(
        &http,
        &running,
        "PUT",
        "/inventory/WIDGET-1",
        &[],
        Some((JSON, br#"{"available":5,"price_cents":100}"#.to_vec())),
    )
    .await?;
    ensure!(put.status == 200, "{}", put.text());
    let created = send(
        &http,
        &running,
        "POST",
        "/orders",
        &[],
        Some((JSON, order(&json!("WIDGET-1"), &json!(1), &json!(100)))),
    )
    .await?;
    ensure!(created.status == 201, "{}", created.text());
    // The saga answers the order (its own writes); then the counts must not move.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = counts(&db).await?;
    let events_before = tests::read_streams(&tests::redis_url(), &running.namespace).await?;

    let ok = || json!("WIDGET-1");
    let one = || json!(1);
    let mut cases: Vec<Hostile> = Vec::new();
    let mut add = |what: String,
                   method: &'static str,
                   path: String,
                   headers: Headers,
                   body: Option<(&'static str, Vec<u8>)>| {
        cases.push((what, method, path, headers, body));
    };

    // Sizes: just over the functions' limit, and over API Gateway's.
    let limit = create_order::MAX_BODY_BYTES;
    let padded = |n: usize| {
        let mut body = b"{\"items\":[]}".to_vec();
        body.resize(n, b' ');
        body
    };
    add(
        "64 KiB + 1".into(),
        "POST",
        "/orders".into(),
        vec![],
        Some((JSON, padded(limit + 1))),
    );
    add(
        "10 MiB + 1".into(),
        "POST",
        "/orders".into(),
        vec![],
        Some((JSON, padded(10 * 1024 * 1024 + 1))),
    );
    add(
        "PUT 64 KiB + 1".into(),
        "PUT",
        "/inventory/WIDGET-1".into(),
        vec![],
        Some((JSON, padded(limit + 1))),
    );
    // Deep nesting, as the body, in a field and in an item.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_open = "[".repeat(10_000);
    for (name, body) in [
        ("deep array body", deep.clone()),
        ("deep unclosed body", deep_open.clone()),
        ("deep object body", "{\"a\":".repeat(10_000)),
        (
            "deep customer_id",
            format!(r#"{{"customer_id":{deep},"items":[]}}"#),
        ),
        ("deep items", format!(r#"{{"items":{deep}}}"#)),
        ("deep sku", format!(r#"{{"items":[{{"sku":{deep_open}"#)),
    ] {
        add(
            name.into(),
            "POST",
            "/orders".into(),
            vec![],
            Some((JSON, body.clone().into_bytes())),
        );
        add(
            format!("PUT {name}"),
            "PUT",
            "/inventory/WIDGET-1".into(),
            vec![],
            Some((JSON, body.into_bytes())),
        );
    }
    add(
        "PUT deep available".into(),
        "PUT",
        "/inventory/WIDGET-1".into(),
        vec![],
        Some((JSON, format!(r#"{{"available":{deep}}}"#).into_bytes())),
    );
    // Invalid UTF-8: in a string, as the whole body, behind a JSON content type.
    let mut bad_utf8 = br#"{"items":[{"sku":""#.to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    bad_utf8.extend_from_slice(br#"","quantity":1,"unit_price_cents":1}]}"#);
    add(
        "invalid UTF-8 in a string".into(),
        "POST",
        "/orders".into(),
        vec![],
        Some((JSON, bad_utf8)),
    );
    add(
        "invalid UTF-8 body".into(),
        "POST",
        "/orders".into(),
        vec![],
        Some((JSON, vec![0xff, 0xfe, 0x00, 0x80])),
    );
    add(
        "PUT invalid UTF-8".into(),
        "PUT",
        "/inventory/WIDGET-1".into(),
        vec![],
        Some((JSON, b"{\"available\":\"\xff\"}".to_vec())),
    );
    add(
        "latin1 charset".into(),
        "POST",
        "/orders".into(),
        vec![],
        Some(("application/json; charset=iso-8859-1", b"{}".to_vec())),
    );
    add(
        "raw NUL in the body".into(),
        "POST",
        "/orders".into(),
        vec![],
        Some((
            JSON,
            b"{\"items\":[{\"sku\":\"a\0b\",\"quantity\":1,\"unit_price_cents\":1}]}".to_vec(),
        )),
    );
    // Numbers: huge, negative, fractional, as strings, where integers are expected.
    for number in [
        "1e400",
        "-1e400",
        "18446744073709551616",
        "18446744073709551615",
        "9223372036854775808",
        "-9223372036854775809",
        "-1",
        "0",
        "1.5",
        "1.0",
        "1e3",
        "\"1\"",
        "null",
        "true",
        "[1]",
        "{}",
        "99999999999999999999999999999999999999999999999999",
        "-0",
        "NaN",
        "Infinity",
        "0x10",
        "01",
    ] {
        // Written into the body as is (not as a JSON string), malformed or not.
        let body = |quantity: &str, price: &str| {
            format!(
                r#"{{"items":[{{"sku":"A","quantity":{quantity},"unit_price_cents":{price}}}]}}"#
            )
            .into_bytes()
        };
        // 0 is a valid price and stock level (and -0 is 0); no quantity here is valid.
        let valid_amount = matches!(number, "0" | "-0");
        add(
            format!("quantity {number}"),
            "POST",
            "/orders".into(),
            vec![],
            Some((JSON, body(number, "1"))),
        );
        if !valid_amount {
            add(
                format!("unit_price_cents {number}"),
                "POST",
                "/orders".into(),
                vec![],
                Some((JSON, body("1", number))),
            );
            add(
                format!("available {number}"),
                "PUT",
                "/inventory/WIDGET-1".into(),
                vec![],
                Some((JSON, format!(r#"{{"available":{number}}}"#).into_bytes())),
            );
        }
    }
    add(
        "unit price 10^10 + 1".into(),
        "POST",
        "/orders".into(),
        vec![],
        Some((JSON, order(&ok(), &one(), &json!(10_000_000_001_i64)))),
    );
    add(
        "available 10^9 + 1".into(),
        "PUT",
        "/inventory/WIDGET-1".into(),
        vec![],
        Some((JSON, br#"{"available":1000000001}"#.to_vec())),
    );
    add("101 lines".into(), "POST", "/orders".into(), vec![], Some((JSON, json!({"items": (0..101).map(|i| json!({"sku": format!("S{i}"), "quantity": 1, "unit_price_cents": 1})).collect::<Vec<_>>()}).to_string().into_bytes())));
    // Hostile strings in every string field: body fields, path ids, headers.
    for s in hostile_strings() {
        let label = abbreviate(&s);
        let hostile = json!(s);
        // As the token's subject (the customer): the function refuses it (401).
        add(
            format!("subject {label}"),
            "POST",
            "/orders".into(),
            vec![("authorization", tests::bearer(&s).into_bytes())],
            Some((JSON, order(&ok(), &one(), &one()))),
        );
        add(
            format!("customer_id {label}"),
            "POST",
            "/orders".into(),
            vec![],
            Some((
                JSON,
                format!(r#"{{"customer_id":{hostile},"items":[]}}"#).into_bytes(),
            )),
        );
        add(
            format!("sku {label}"),
            "POST",
            "/orders".into(),
            vec![],
            Some((JSON, order(&hostile, &one(), &one()))),
        );
        add(
            format!("field name {label}"),
            "POST",
            "/orders".into(),
            vec![],
            Some((
                JSON,
                json!({"items": [], s.clone(): 1}).to_string().into_bytes(),
            )),
        );
        add(
            format!("PUT field name {label}"),
            "PUT",
            "/inventory/WIDGET-1".into(),
            vec![],
            Some((
                JSON,
                json!({"available": 1, s.clone(): 1})
                    .to_string()
                    .into_bytes(),
            )),
        );
        // An empty segment finds no route: API Gateway's own 404.
        let encoded = percent_encode(&s);
        add(
            format!("order id {label}"),
            "GET",
            format!("/orders/{encoded}"),
            vec![],
            None,
        );
        add(
            format!("cancel id {label}"),
            "POST",
            format!("/orders/{encoded}/cancel"),
            vec![],
            None,
        );
        add(
            format!("GET sku {label}"),
            "GET",
            format!("/inventory/{encoded}"),
            vec![],
            None,
        );
        add(
            format!("PUT sku {label}"),
            "PUT",
            format!("/inventory/{encoded}"),
            vec![],
            Some((JSON, br#"{"available":1}"#.to_vec())),
        );
        if reqwest::header::HeaderValue::from_str(&s).is_ok()
            && !(s.len() <= 255 && s.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        {
            add(
                format!("Idempotency-Key {label}"),
                "POST",
                "/orders".into(),
                vec![("idempotency-key", s.clone().into_bytes())],
                Some((JSON, order(&ok(), &one(), &one()))),
            );
        }
    }
    add(
        "Idempotency-Key 256".into(),
        "POST",
        "/orders".into(),
        vec![("idempotency-key", vec![b'k'; 256])],
        Some((JSON, order(&ok(), &one(), &one()))),
    );
    add(
        "Idempotency-Key 64 KiB".into(),
        "POST",
        "/orders".into(),
        vec![("idempotency-key", vec![b'k'; 64 * 1024])],
        Some((JSON, order(&ok(), &one(), &one()))),
    );
    add(
        "Idempotency-Key obs-text".into(),
        "POST",
        "/orders".into(),
        vec![("idempotency-key", vec![b'k', 0xff, 0xfe])],
        Some((JSON, order(&ok(), &one(), &one()))),
    );
    add(
        "Idempotency-Key bad quoting".into(),
        "POST",
        "/orders".into(),
        vec![("idempotency-key", b"\"a\\x\"".to_vec())],
        Some((JSON, order(&ok(), &one(), &one()))),
    );
    add(
        "Idempotency-Key empty quoted".into(),
        "POST",
        "/orders".into(),
        vec![("idempotency-key", b"\"\"".to_vec())],
        Some((JSON, order(&ok(), &one(), &one()))),
    );
    add(
        "order id 8 KiB".into(),
        "GET",
        format!("/orders/{}", "a".repeat(8 * 1024)),
        vec![],
        None,
    );
    add(
        "sku 8 KiB".into(),
        "GET",
        format!("/inventory/{}", "a".repeat(8 * 1024)),
        vec![],
        None,
    );
    add(
        "sku invalid UTF-8".into(),
        "PUT",
        "/inventory/%FF%FE".into(),
        vec![],
        Some((JSON, br#"{"available":1}"#.to_vec())),
    );
    add(
        "order id invalid UTF-8".into(),
        "POST",
        "/orders/%FF%FE/cancel".into(),
        vec![],
        None,
    );
    add(
        "order id with SQL".into(),
        "GET",
        "/orders/1%27%20OR%20%271%27%3D%271".into(),
        vec![],
        None,
    );

    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (what, method, path, headers, body) in &cases {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let result = match send(&http, &running, method, path, &headers, body.clone()).await {
            Ok(answer) => {
                *statuses.entry(answer.status).or_default() += 1;
                refused(what, &answer)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            failures.push(format!("{e:#}"));
        }
    }

    // Bytes no client library sends: CR, LF and NUL in header values, and in
    // the request line. HTTP itself refuses them.
    let body = String::from_utf8(order(&ok(), &one(), &one()))?;
    for (what, header) in [
        (
            "Idempotency-Key CRLF FLUSHALL",
            format!("idempotency-key: k{REDIS_CRLF}"),
        ),
        (
            "Idempotency-Key RESP",
            format!("idempotency-key: {REDIS_RESP}"),
        ),
        ("Idempotency-Key NUL", "idempotency-key: a\0b".to_owned()),
        (
            "traceparent CRLF FLUSHALL",
            format!("traceparent: 00{REDIS_CRLF}"),
        ),
        ("traceparent NUL", "traceparent: 00-\0".to_owned()),
    ] {
        let request = format!(
            "POST /orders HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nconnection: close\r\ncontent-type: application/json\r\n{header}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len(),
            auth = tests::bearer("hostile-1"),
        );
        match send_raw(&running, request.as_bytes()).await {
            Ok(answer) => {
                eprintln!("{what}: {} {:?}", answer.status, answer.text());
                if let Err(e) = refused(what, &answer) {
                    failures.push(format!("{e:#}"));
                }
            }
            Err(e) => failures.push(format!("{what}: {e:#}")),
        }
    }
    for (what, line) in [
        (
            "path with raw CRLF",
            format!("GET /orders/a{REDIS_CRLF} HTTP/1.1"),
        ),
        (
            "path with raw NUL",
            "GET /inventory/a\0b HTTP/1.1".to_owned(),
        ),
        (
            "path with raw invalid UTF-8",
            "GET /inventory/\u{FFFD} HTTP/1.1".to_owned(),
        ),
    ] {
        let request = format!(
            "{line}\r\nhost: x\r\nauthorization: {}\r\nconnection: close\r\n\r\n",
            tests::bearer("hostile-1")
        );
        match send_raw(&running, request.as_bytes()).await {
            Ok(answer) => {
                eprintln!("{what}: {} {:?}", answer.status, answer.text());
                if let Err(e) = refused(what, &answer) {
                    failures.push(format!("{e:#}"));
                }
            }
            Err(e) => failures.push(format!("{what}: {e:#}")),
        }
    }
    // Raw bytes 0xFF in the path (not percent-encoded).
    let request = b"GET /inventory/\xff\xfe HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    match send_raw(&running, request).await {
        Ok(answer) => {
            if let Err(e) = refused("raw 0xFF in the path", &answer) {
                failures.push(format!("{e:#}"));
            }
        }
        Err(e) => failures.push(format!("raw 0xFF in the path: {e:#}")),
    }

    eprintln!(
        "{} hostile requests, answers by status: {statuses:?}",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} hostile requests were not refused cleanly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing was written, nothing published; the database and Redis are intact.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counts(&db).await?, before, "a refused request wrote rows");
    assert_eq!(
        tests::read_streams(&tests::redis_url(), &running.namespace).await?,
        events_before,
        "a refused request published an event"
    );
    let alive: Option<String> = redis::cmd("GET")
        .arg(&sentinel)
        .query_async(&mut conn)
        .await?;
    assert_eq!(
        alive.as_deref(),
        Some("alive"),
        "the Redis sentinel is gone"
    );
    let _: () = redis::cmd("DEL")
        .arg(&sentinel)
        .query_async(&mut conn)
        .await?;
    // Still serving.
    let again = send(&http, &running, "GET", "/inventory/WIDGET-1", &[], None).await?;
    ensure!(again.status == 200, "{}", again.text());
    running.stop().await
}

/// Percent-encodes every byte that is not unreserved (RFC 3986).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Strings that look hostile but are valid input: stored verbatim, published
/// verbatim, and the database and Redis are intact.
#[tokio::test]
async fn hostile_looking_valid_strings_are_stored_verbatim() -> Result<()> {
    let db = TestDb::fresh().await?;
    let running = start(&db).await?;
    let http = client()?;
    let redis = redis::Client::open(tests::redis_url())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let sentinel = format!("{}:sentinel", running.namespace);
    let _: () = redis::cmd("SET")
        .arg(&sentinel)
        .arg("alive")
        .query_async(&mut conn)
        .await?;

    // The identifier alphabet holds `-`, `.`, `:` and `@`: SQL comments and
    // Redis-ish key syntax are valid customer ids and SKUs.
    let customer = "--:FLUSHALL@x.y";
    let sku = "DROP.TABLE:orders@--";
    let put = send(
        &http,
        &running,
        "PUT",
        &format!("/inventory/{}", percent_encode(sku)),
        &[],
        Some((JSON, br#"{"available":5,"price_cents":7}"#.to_vec())),
    )
    .await?;
    ensure!(put.status == 200, "{}", put.text());
    ensure!(
        serde_json::from_slice::<Value>(&put.body)?["sku"] == sku,
        "{}",
        put.text()
    );

    // A quoted Idempotency-Key may hold spaces and quotes: the SQL string itself.
    let key = format!("\"{}\"", SQL);
    let hostile_trace = format!(
        "00-{}-{}",
        "'; DROP TABLE orders.outbox; --", "*1 $8 FLUSHALL"
    );
    let body = order(&json!(sku), &json!(2), &json!(7));
    let as_customer = tests::bearer(customer);
    let created = send(
        &http,
        &running,
        "POST",
        "/orders",
        &[
            ("authorization", as_customer.as_bytes()),
            ("idempotency-key", key.as_bytes()),
            ("traceparent", hostile_trace.as_bytes()),
        ],
        Some((JSON, body.clone())),
    )
    .await?;
    ensure!(created.status == 201, "{}", created.text());
    let view: Value = serde_json::from_slice(&created.body)?;
    assert_eq!(view["customer_id"], customer);
    assert_eq!(view["items"][0]["sku"], sku);
    let id = view["id"].as_str().context("no id")?.to_owned();

    // Stored verbatim.
    let stored: (String,) =
        sqlx::query_as("SELECT customer_id FROM orders.orders WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(stored.0, customer);
    let keys: Vec<(String, String)> =
        sqlx::query_as("SELECT customer_id, key FROM orders.idempotency_keys")
            .fetch_all(&db.pool)
            .await?;
    assert_eq!(
        keys,
        vec![(customer.to_owned(), format!("{customer}\u{1f}{SQL}"))],
        "the key is stored unquoted, verbatim, scoped to its customer"
    );
    // The same key and body replay; the key is a key, not SQL.
    let replayed = send(
        &http,
        &running,
        "POST",
        "/orders",
        &[
            ("authorization", as_customer.as_bytes()),
            ("idempotency-key", key.as_bytes()),
        ],
        Some((JSON, body)),
    )
    .await?;
    ensure!(replayed.status == 201, "{}", replayed.text());
    assert_eq!(
        serde_json::from_slice::<Value>(&replayed.body)?["id"],
        id.as_str()
    );
    let fetched = send(
        &http,
        &running,
        "GET",
        &format!("/orders/{id}"),
        &[("authorization", as_customer.as_bytes())],
        None,
    )
    .await?;
    assert_eq!(
        serde_json::from_slice::<Value>(&fetched.body)?["customer_id"],
        customer
    );

    // The event arrives with the strings verbatim, and a fresh valid trace (the
    // hostile traceparent is ignored, never copied).
    let mut created_event = None;
    for _ in 0..100 {
        let streams = tests::read_streams(&tests::redis_url(), &running.namespace).await?;
        created_event = streams
            .values()
            .flatten()
            .find(|e| {
                e.event_type.to_string() == "OrderCreated" && e.aggregate_id.to_string() == id
            })
            .cloned();
        if created_event.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event = created_event.context("no OrderCreated event in Redis")?;
    let payload: Value = serde_json::from_str(event.payload.as_str())?;
    assert_eq!(payload["customer_id"], customer, "{payload}");
    assert!(payload.to_string().contains(sku), "{payload}");
    let trace = event
        .traceparent
        .context("the event has no traceparent")?
        .to_string();
    assert!(
        !trace.contains("DROP") && !trace.contains("FLUSHALL"),
        "{trace}"
    );

    // Intact: every table is there, the sentinel survived.
    for table in TABLES {
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(table)
            .fetch_one(&db.pool)
            .await?;
        assert_eq!(exists.as_deref(), Some(table), "{table} is gone");
    }
    assert_eq!(db.count("orders.orders").await?, 1);
    let alive: Option<String> = redis::cmd("GET")
        .arg(&sentinel)
        .query_async(&mut conn)
        .await?;
    assert_eq!(
        alive.as_deref(),
        Some("alive"),
        "the Redis sentinel is gone"
    );
    let _: () = redis::cmd("DEL")
        .arg(&sentinel)
        .query_async(&mut conn)
        .await?;
    running.stop().await
}
