//! Test harness: a fresh, migrated PostgreSQL database per test, and API Gateway
//! v2 requests built from the real event fixtures in `tests/fixtures/`.
//!
//! Tests talk to the real PostgreSQL at `TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); nothing is mocked.

// Test code states what it relies on with `expect`, and reports on stderr.
#![allow(clippy::expect_used, clippy::print_stderr)]

pub mod auth;
pub mod cluster;
pub mod emulated;
pub mod forwarder;
pub mod load;
pub mod pipeline;
pub mod source;

pub use test_support::{
    admin_url, record, redis_url, spare_port, unique_namespace, wait_until, TestDb,
};

use std::time::Duration;

pub use auth::{bearer, client_as, token};

use anyhow::Context as _;
use serde_json::{json, Value};
use sqlx::postgres::PgPool;

/// An API Gateway HTTP API (v2) event built from a fixture, then changed.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    event: Value,
}

impl ApiRequest {
    fn fixture(name: &str) -> Self {
        let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        Self {
            event: serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}")),
        }
    }

    /// `POST /orders` with the fixture's headers and this body.
    pub fn post_orders(body: &str) -> Self {
        Self::fixture("apigw-v2-post-orders.json").body(body)
    }

    /// `POST /orders` with the fixture's own body.
    pub fn post_orders_fixture() -> Self {
        Self::fixture("apigw-v2-post-orders.json")
    }

    /// `GET /orders/{id}`.
    pub fn get_order(id: &str) -> Self {
        Self::fixture("apigw-v2-get-order.json").path(&format!("/orders/{id}"))
    }

    /// `POST /orders/{id}/cancel`, with a `traceparent` of its own and no body.
    pub fn cancel_order(id: &str) -> Self {
        Self::fixture("apigw-v2-cancel-order.json").path(&format!("/orders/{id}/cancel"))
    }

    /// `PUT /inventory/{sku}` with the fixture's headers and this body.
    pub fn put_inventory(sku: &str, body: &str) -> Self {
        Self::fixture("apigw-v2-put-inventory.json")
            .path(&format!("/inventory/{sku}"))
            .body(body)
    }

    /// `GET /inventory/{sku}`: no body, no content type.
    pub fn get_inventory(sku: &str) -> Self {
        Self::fixture("apigw-v2-put-inventory.json")
            .method("GET")
            .path(&format!("/inventory/{sku}"))
            .without_header("content-type")
            .without_body()
    }

    pub fn method(mut self, method: &str) -> Self {
        self.event["requestContext"]["http"]["method"] = json!(method);
        self
    }

    /// The caller as API Gateway's JWT authorizer passes it on: the token's
    /// subject and scopes (the fixtures' caller is `cust-42` with the scopes of
    /// the fixture's route: `orders:write`, `orders:read`, or both inventory ones).
    pub fn caller(mut self, subject: &str, scopes: &[&str]) -> Self {
        let jwt = &mut self.event["requestContext"]["authorizer"]["jwt"];
        jwt["claims"]["sub"] = json!(subject);
        jwt["claims"]["scope"] = json!(scopes.join(" "));
        jwt["scopes"] = json!(scopes);
        self
    }

    /// As if the route had no authorizer: no claims reach the function.
    pub fn without_authorizer(mut self) -> Self {
        if let Some(context) = self.event["requestContext"].as_object_mut() {
            context.remove("authorizer");
        }
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.event["rawPath"] = json!(path);
        self.event["requestContext"]["http"]["path"] = json!(path);
        if let Some(rest) = path.strip_prefix("/orders/") {
            let id = rest.strip_suffix("/cancel").unwrap_or(rest);
            self.event["pathParameters"] = json!({ "id": id });
        } else if let Some(sku) = path.strip_prefix("/inventory/") {
            self.event["pathParameters"] = json!({ "sku": sku });
        } else if let Some(rest) = path.strip_prefix("/customers/") {
            let id = rest.strip_suffix("/credit").unwrap_or(rest);
            self.event["pathParameters"] = json!({ "id": id });
        }
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.event["body"] = json!(body);
        self.event["isBase64Encoded"] = json!(false);
        self
    }

    pub fn without_body(mut self) -> Self {
        if let Some(event) = self.event.as_object_mut() {
            event.remove("body");
        }
        self.event["isBase64Encoded"] = json!(false);
        self
    }

    /// A body as API Gateway sends binary content: base64, flagged.
    pub fn base64_body(mut self, bytes: &[u8]) -> Self {
        use base64::Engine as _;
        self.event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        self.event["isBase64Encoded"] = json!(true);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.event["headers"][name.to_ascii_lowercase()] = json!(value);
        self
    }

    pub fn without_header(mut self, name: &str) -> Self {
        if let Some(headers) = self.event["headers"].as_object_mut() {
            headers.remove(&name.to_ascii_lowercase());
        }
        self
    }

    /// The event as API Gateway sends it.
    pub fn build_event_json(&self) -> String {
        self.event.to_string()
    }

    /// The request exactly as `lambda_http` makes it from the event in Lambda.
    pub fn build(&self) -> lambda_http::Request {
        lambda_http::request::from_str(&self.event.to_string())
            .unwrap_or_else(|e| panic!("not an API Gateway event: {e}"))
    }
}

/// A response, read for assertions.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: lambda_http::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl From<lambda_http::Response<lambda_http::Body>> for Answer {
    fn from(response: lambda_http::Response<lambda_http::Body>) -> Self {
        let (parts, body) = response.into_parts();
        Self {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.to_vec(),
        }
    }
}

/// Asserts a problem+json answer with `status`, and returns its body.
pub fn problem(answer: &Answer, status: u16) -> Value {
    assert_eq!(
        answer.status,
        status,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    let body = answer.json();
    assert_eq!(body["status"], json!(status));
    assert!(
        body["title"].is_string() && body["detail"].is_string() && body["type"].is_string(),
        "{body}"
    );
    body
}

/// A private `redis-server` on a spare loopback port, for tests that stop and
/// restart Redis; killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    child: std::process::Child,
}

impl RedisServer {
    pub async fn start(port: u16) -> anyhow::Result<Self> {
        Self::start_with(port, &[]).await
    }

    /// Started with `extra` arguments too (e.g. `--replicaof 127.0.0.1 <port>`).
    pub async fn start_with(port: u16, extra: &[&str]) -> anyhow::Result<Self> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                // A replica writes the snapshot it loads: not into the work tree.
                "--dir",
                &std::env::temp_dir().to_string_lossy(),
                "--dbfilename",
                &format!("test-redis-{port}.rdb"),
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        let server = Self { port, child };
        for _ in 0..100 {
            if let Ok(client) = redis::Client::open(server.url()) {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    // Up: it answers, or asks for the password it requires.
                    match redis::cmd("PING").query_async::<String>(&mut conn).await {
                        Ok(_) => return Ok(server),
                        Err(e) if e.code() == Some("NOAUTH") => return Ok(server),
                        Err(_) => {}
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("redis-server on port {port} did not answer")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes the replica at `url` a primary (`REPLICAOF NO ONE`), as a failover does.
pub async fn promote(url: &str) -> anyhow::Result<()> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Every entry of every stream under `namespace`, by stream key, in stream order.
pub async fn read_streams(
    redis_url: &str,
    namespace: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<shared::envelope::EventEnvelope>>> {
    let client = redis::Client::open(redis_url)?;
    // Reading 100,000 entries on a loaded machine outlasts the default 500 ms
    // response timeout of a multiplexed connection.
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    // Event streams only (`ns:{Type:p}`), not the event sources' own keys.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:{{*}}"))
        .query_async(&mut conn)
        .await?;
    let mut out = std::collections::BTreeMap::new();
    for key in keys {
        let mut entries = Vec::new();
        let mut from = "-".to_owned();
        loop {
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(2_000)
                .query_async(&mut conn)
                .await?;
            let Some(last) = reply.ids.last().map(|e| e.id.clone()) else {
                break;
            };
            for entry in &reply.ids {
                let fields = entry.map.iter().map(|(k, v)| {
                    let bytes: Vec<u8> = redis::from_redis_value(v.clone()).unwrap_or_default();
                    (k.clone(), bytes)
                });
                entries.push(shared::envelope::EventEnvelope::from_stream_fields(fields)?);
            }
            from = format!("({last}");
        }
        out.insert(key, entries);
    }
    Ok(out)
}

/// The relay's defaults with the three services' outboxes, as template.yaml's
/// `RELAY_OUTBOXES` names them.
pub fn relay_options() -> shared::relay::RelayOptions {
    shared::relay::RelayOptions {
        outboxes: vec![
            order_service::OUTBOX,
            inventory_service::OUTBOX,
            customer_service::OUTBOX,
        ],
        ..shared::relay::RelayOptions::default()
    }
}

/// A relay on `pool` and the Redis at `redis_url`, failing a command after 5 s.
pub async fn relay(
    pool: &PgPool,
    redis_url: &str,
    options: shared::relay::RelayOptions,
) -> anyhow::Result<shared::relay::Relay> {
    let redis = shared::relay::connect_redis(redis_url, Duration::from_secs(5)).await?;
    Ok(shared::relay::Relay::new(pool.clone(), redis, options))
}

/// A relay in its long-lived LISTEN/NOTIFY mode, in the background until [`RunningRelay::stop`].
#[derive(Debug)]
pub struct RunningRelay {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), shared::relay::RelayError>>,
}

impl RunningRelay {
    /// Starts `relay.run` and gives it time to start listening.
    pub async fn start(relay: shared::relay::Relay, fallback_poll: Duration) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            relay
                .run(fallback_poll, async move {
                    let _ = stopped.await;
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        Self { stop, task }
    }

    /// Asks it to stop and waits until it has.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        Ok(self.task.await??)
    }
}

/// Deletes every stream under `namespace`, so test runs do not pile up in Redis.
pub async fn delete_streams(redis_url: &str, namespace: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        let _: usize = redis::cmd("DEL").arg(keys).query_async(&mut conn).await?;
    }
    Ok(())
}

/// Fills `orders.outbox` with `rows` events (10,000 aggregates, ~250-byte payloads).
pub async fn prefill_outbox(db: &TestDb, rows: i64) -> anyhow::Result<()> {
    // Bulk loading takes longer than the pool's statement timeout allows.
    let mut conn = db.pool.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO orders.outbox (event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, traceparent, payload)
         SELECT gen_random_uuid(), 'OrderCreated', 1, 'Order', 'order-' || (g % 10000), now(),
                '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
                json_build_object('order_id', 'order-' || (g % 10000), 'customer_id', 'cust-42',
                                  'items', json_build_array(json_build_object('sku', 'WIDGET-1', 'quantity', 2, 'unit_price_cents', 1999),
                                                            json_build_object('sku', 'GADGET-7', 'quantity', 1, 'unit_price_cents', 500)),
                                  'total_cents', 4498)
         FROM generate_series(1, $1) AS g",
    )
    .bind(rows)
    .execute(&mut *conn)
    .await?;
    sqlx::query("VACUUM ANALYZE orders.outbox")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Waits up to a minute until `n` orders of `db` are `CONFIRMED`.
pub async fn wait_confirmed(db: &TestDb, n: i64) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(60),
        &format!("{n} orders confirmed"),
        || async {
            let confirmed: i64 =
                sqlx::query_scalar("SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'")
                    .fetch_one(&db.pool)
                    .await?;
            Ok(confirmed == n)
        },
    )
    .await
}

/// The benchmarks' baseline: the transaction create-order runs for a POST
/// without Idempotency-Key, as plain SQL (not our code), for `customer`.
pub async fn raw_create_order(pool: &PgPool, customer: &str) -> anyhow::Result<()> {
    let id = uuid::Uuid::now_v7();
    let now = time::OffsetDateTime::now_utc();
    let mut tx = pool.begin().await?;
    sqlx::query(
        r#"WITH new_order AS (
               INSERT INTO orders.orders (id, customer_id, status, total_cents, created_at, updated_at)
               VALUES ($1, $2, 'PENDING', $3, $4, $4)
           )
           INSERT INTO orders.order_lines (order_id, line_no, sku, quantity, unit_price_cents)
           SELECT $1, l.line_no, l.sku, l.quantity, l.unit_price_cents
           FROM UNNEST($5::smallint[], $6::text[], $7::integer[], $8::bigint[])
                AS l(line_no, sku, quantity, unit_price_cents)"#,
    )
    .bind(id)
    .bind(customer)
    .bind(4498_i64)
    .bind(now)
    .bind(vec![1_i16, 2])
    .bind(vec!["WIDGET-1", "GADGET-7"])
    .bind(vec![2_i32, 1])
    .bind(vec![1999_i64, 500])
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        r#"INSERT INTO orders.outbox
           (event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, traceparent, payload)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"#,
    )
    .bind(uuid::Uuid::now_v7())
    .bind("OrderCreated")
    .bind(1_i32)
    .bind("Order")
    .bind(id.to_string())
    .bind(now)
    .bind("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    .bind(serde_json::json!({"order_id": id, "customer_id": customer, "items": [{"sku":"WIDGET-1","quantity":2,"unit_price_cents":1999},{"sku":"GADGET-7","quantity":1,"unit_price_cents":500}], "total_cents": 4498}))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// HTTP load on the emulator's API, shared by the benchmarks.

/// The SKUs of every benchmark order ([`ORDER_BODY`]); [`stock_up`] sets their
/// stock far above what a run takes.
pub const ORDER_SKUS: [&str; 2] = ["WIDGET-1", "GADGET-7"];
/// Their catalog prices, the ones [`ORDER_BODY`] carries.
pub const ORDER_PRICES: [i64; 2] = [1999, 500];
pub const ORDER_STOCK: i64 = 1_000_000_000;

/// The credit limit of a customer without a record in the tests' systems
/// (`DEFAULT_CREDIT_LIMIT_CENTS`): a billion currency units, so that only a
/// test about credit runs out of it.
pub const TEST_CREDIT_LIMIT_CENTS: &str = "100000000000";

/// A keep-alive HTTP client for load: no Nagle, idle connections kept, 30 s per request.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(None)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// A valid `POST /orders` body: two lines of [`ORDER_SKUS`] (the customer is
/// the caller: the token's subject).
pub const ORDER_BODY: &str = r#"{"items":[{"sku":"WIDGET-1","quantity":2,"unit_price_cents":1999},{"sku":"GADGET-7","quantity":1,"unit_price_cents":500}]}"#;

/// `PUT /inventory/{sku}` with [`ORDER_STOCK`] for every SKU of [`ORDER_BODY`],
/// against the API at `base` (`http://host:port`).
pub async fn stock_up(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    for (sku, price) in ORDER_SKUS.into_iter().zip(ORDER_PRICES) {
        let put = http
            .put(format!("{base}/inventory/{sku}"))
            .header("authorization", bearer("stock-operator"))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"available":{ORDER_STOCK},"price_cents":{price}}}"#
            ))
            .send()
            .await?;
        anyhow::ensure!(
            put.status() == 200,
            "PUT /inventory/{sku} answered {}",
            put.status()
        );
    }
    Ok(())
}

/// Why a `POST /orders` did not create an order.
#[derive(Debug)]
pub enum PostOrderError {
    /// An answer other than `201`, with its body.
    Status(u16, String),
    /// No answer: connect, timeout, a broken body.
    Transport(reqwest::Error),
    /// A `201` whose body has no order id.
    Answer(String),
}

impl PostOrderError {
    /// A short name to count errors by: `HTTP 503`, `timeout`, `connect`, ...
    pub fn kind(&self) -> String {
        match self {
            Self::Status(status, _) => format!("HTTP {status}"),
            Self::Transport(e) if e.is_timeout() => "timeout".into(),
            Self::Transport(e) if e.is_connect() => "connect".into(),
            Self::Transport(e) if e.is_body() || e.is_decode() => "body".into(),
            Self::Transport(e) if e.is_request() => "request".into(),
            Self::Transport(_) => "transport".into(),
            Self::Answer(_) => "201 without id".into(),
        }
    }
}

impl std::fmt::Display for PostOrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(status, body) => write!(f, "POST /orders answered {status}: {body}"),
            Self::Transport(e) => write!(f, "POST /orders failed: {e}"),
            Self::Answer(body) => write!(f, "POST /orders answered 201 without an id: {body}"),
        }
    }
}

impl std::error::Error for PostOrderError {}

/// `POST /orders` to `url` with [`ORDER_BODY`] as `customer`; the new order's id.
pub async fn post_order(
    http: &reqwest::Client,
    url: &str,
    customer: &str,
) -> Result<uuid::Uuid, PostOrderError> {
    let response = http
        .post(url)
        .header("authorization", bearer(customer))
        .header("content-type", "application/json")
        .body(ORDER_BODY)
        .send()
        .await
        .map_err(PostOrderError::Transport)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(PostOrderError::Transport)?;
    let text = || String::from_utf8_lossy(&body).into_owned();
    if status != 201 {
        return Err(PostOrderError::Status(status, text()));
    }
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|created| created["id"].as_str().and_then(|id| id.parse().ok()))
        .ok_or_else(|| PostOrderError::Answer(text()))
}

/// The index of the `p` quantile (0.0..=1.0) in a sorted list of `len` values,
/// rounding down: `(len - 1) * p`.
pub fn percentile_index(len: usize, p: f64) -> usize {
    // Between 0 and len - 1: no truncation (NaN and negatives are 0).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let index = ((len.saturating_sub(1)) as f64 * p) as usize;
    index.min(len.saturating_sub(1))
}

/// The `p`th percentile (nearest rank) of sorted durations; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // A rank between 0 and the length: no truncation (NaN and negatives are 0).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration in milliseconds, one decimal below 10 ms.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}
