//! The create-order function called in-process with real API Gateway v2 events,
//! against a real PostgreSQL database of its own per test.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::time::Duration;

use anyhow::Result;
use create_order::{handle, Deps};
use serde_json::{json, Value};
use shared::config::DatabaseConfig;
use tests::{Answer, ApiRequest, TestDb};

const ORDER: &str = r#"{"items":[{"sku":"WIDGET-1","quantity":2,"unit_price_cents":1999},{"sku":"GADGET-7","quantity":1,"unit_price_cents":500}]}"#;

fn deps(db: &TestDb) -> Deps {
    Deps {
        pool: db.pool.clone(),
        idempotency_ttl: Duration::from_secs(24 * 60 * 60),
    }
}

async fn call(deps: &Deps, request: ApiRequest) -> Answer {
    Answer::from(handle(deps, request.build()).await)
}

async fn assert_nothing_written(db: &TestDb) -> Result<()> {
    for table in [
        "orders.orders",
        "orders.order_lines",
        "orders.outbox",
        "orders.idempotency_keys",
    ] {
        assert_eq!(db.count(table).await?, 0, "{table} should be empty");
    }
    Ok(())
}

/// A valid POST creates the order, its lines and one OrderCreated outbox event,
/// with the total computed on the server, and GET returns the same order.
#[tokio::test]
async fn post_creates_order_lines_and_event_and_get_returns_it() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);

    let created = call(&deps, ApiRequest::post_orders(ORDER)).await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(created.header("content-type"), Some("application/json"));
    let order = created.json();
    let id = order["id"].as_str().expect("id").to_owned();
    assert_eq!(
        created.header("location"),
        Some(format!("/orders/{id}").as_str())
    );
    assert_eq!(order["customer_id"], "cust-42");
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["total_cents"], 2 * 1999 + 500);
    assert_eq!(
        order["items"][0],
        json!({"sku":"WIDGET-1","quantity":2,"unit_price_cents":1999,"line_total_cents":3998})
    );
    assert_eq!(order["items"][1]["sku"], "GADGET-7");
    assert!(
        order["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{order}"
    );
    assert_eq!(uuid::Uuid::parse_str(&id)?.get_version_num(), 7);

    assert_eq!(db.count("orders.orders").await?, 1);
    assert_eq!(db.count("orders.order_lines").await?, 2);
    let (event_type, version, aggregate_type, aggregate_id, traceparent, payload): (String, i32, String, String, Option<String>, Value) =
        sqlx::query_as("SELECT event_type, schema_version, aggregate_type, aggregate_id, traceparent, payload FROM orders.outbox")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(
        (event_type.as_str(), version, aggregate_type.as_str()),
        ("OrderCreated", 1, "Order")
    );
    assert_eq!(aggregate_id, id);
    assert_eq!(payload["order_id"], json!(id));
    assert_eq!(payload["total_cents"], json!(4498));
    assert_eq!(payload["items"].as_array().map(Vec::len), Some(2));
    // The caller's trace continues: same trace id, a new parent span (ours).
    let traceparent = traceparent.expect("traceparent stored");
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    assert_ne!(
        traceparent,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );

    let fetched = call(&deps, ApiRequest::get_order(&id)).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(
        fetched.json(),
        order,
        "GET shows exactly what POST answered"
    );
    Ok(())
}

/// Without a traceparent header a new trace is started and stored.
#[tokio::test]
async fn a_request_without_traceparent_starts_a_trace() -> Result<()> {
    let db = TestDb::fresh().await?;
    let answer = call(
        &deps(&db),
        ApiRequest::post_orders(ORDER).without_header("traceparent"),
    )
    .await;
    assert_eq!(answer.status, 201);
    let tp: Option<String> = sqlx::query_scalar("SELECT traceparent FROM orders.outbox")
        .fetch_one(&db.pool)
        .await?;
    assert!(shared::trace::TraceParent::parse(&tp.expect("stored")).is_ok());
    Ok(())
}

/// API Gateway base64-encodes bodies it deems binary; they are read the same.
#[tokio::test]
async fn a_base64_encoded_body_is_decoded() -> Result<()> {
    let db = TestDb::fresh().await?;
    let answer = call(
        &deps(&db),
        ApiRequest::post_orders_fixture().base64_body(ORDER.as_bytes()),
    )
    .await;
    assert_eq!(
        answer.status,
        201,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["total_cents"], 4498);
    Ok(())
}

#[tokio::test]
async fn get_answers_404_for_an_unknown_order_and_400_for_a_bad_id() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let missing = call(
        &deps,
        ApiRequest::get_order("0193a3e2-7c1a-7000-8000-000000000001"),
    )
    .await;
    tests::problem(&missing, 404);
    let bad = call(&deps, ApiRequest::get_order("not-a-uuid")).await;
    let body = tests::problem(&bad, 400);
    assert_eq!(body["errors"][0]["field"], "id");
    let injected = call(&deps, ApiRequest::get_order("1%27%20OR%20%271%27%3D%271")).await;
    tests::problem(&injected, 400);
    Ok(())
}

/// Malformed JSON is a 400, with nothing written.
#[tokio::test]
async fn malformed_json_is_400_and_writes_nothing() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    for body in [
        "{",
        "",
        "   ",
        "not json",
        r#"{"customer_id":"c1"} {"again":1}"#,
        "{\"customer_id\": \"\u{1}\"}",
    ] {
        let answer = call(&deps, ApiRequest::post_orders(body)).await;
        tests::problem(&answer, 400);
    }
    // Invalid UTF-8 inside a JSON string, sent as binary.
    let answer = call(
        &deps,
        ApiRequest::post_orders_fixture().base64_body(b"{\"customer_id\":\"\xff\xfe\"}"),
    )
    .await;
    tests::problem(&answer, 400);
    assert_nothing_written(&db).await
}

/// Valid JSON that breaks a rule is a 422 naming the offending field, with
/// nothing written.
#[tokio::test]
async fn rule_breaking_bodies_are_422_naming_the_field() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let line = |sku: &str, qty: Value, price: Value| json!({"sku": sku, "quantity": qty, "unit_price_cents": price});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "a customer in the body (the customer is the caller)",
            json!({"customer_id": "c1", "items": [line("A", json!(1), json!(1))]}),
            "customer_id",
        ),
        ("missing items", json!({}), "items"),
        ("empty items", json!({"items": []}), "items"),
        (
            "quantity 0",
            json!({"items": [line("A", json!(0), json!(1))]}),
            "items[0].quantity",
        ),
        (
            "negative quantity",
            json!({"items": [line("A", json!(-3), json!(1))]}),
            "items[0].quantity",
        ),
        (
            "quantity too big",
            json!({"items": [line("A", json!(1001), json!(1))]}),
            "items[0].quantity",
        ),
        (
            "huge quantity",
            json!({"items": [line("A", json!(1e300), json!(1))]}),
            "items[0].quantity",
        ),
        (
            "negative price",
            json!({"items": [line("A", json!(1), json!(-1))]}),
            "items[0].unit_price_cents",
        ),
        (
            "float price",
            json!({"items": [line("A", json!(1), json!(19.99))]}),
            "items[0].unit_price_cents",
        ),
        (
            "missing sku",
            json!({"items": [{"quantity": 1, "unit_price_cents": 1}]}),
            "items[0].sku",
        ),
        (
            "duplicate sku",
            json!({"items": [line("A", json!(1), json!(1)), line("B", json!(1), json!(1)), line("A", json!(2), json!(1))]}),
            "items[2].sku",
        ),
        (
            "unknown field",
            json!({"total_cents": 1, "items": [line("A", json!(1), json!(1))]}),
            "total_cents",
        ),
        (
            "unknown line field",
            json!({"items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1, "discount": 5}]}),
            "discount",
        ),
        (
            "SQL in customer",
            json!({"customer_id": "c1'; DROP TABLE orders.orders; --", "items": [line("A", json!(1), json!(1))]}),
            "customer_id",
        ),
        (
            "Redis command in sku",
            json!({"items": [line("A\r\nFLUSHALL\r\n", json!(1), json!(1))]}),
            "items[0].sku",
        ),
        ("not an object", json!([1, 2, 3]), ""),
    ];
    for (case, body, field) in cases {
        let answer = call(&deps, ApiRequest::post_orders(&body.to_string())).await;
        let problem = tests::problem(&answer, 422);
        let named = problem["errors"].as_array().is_some_and(|errors| {
            errors.iter().any(|e| {
                e["field"].as_str().is_some_and(|f| f.contains(field))
                    || e["detail"].as_str().is_some_and(|d| d.contains(field))
            })
        });
        assert!(named, "{case}: {field} not named in {problem}");
    }
    assert_nothing_written(&db).await
}

/// Several broken rules are all reported at once.
#[tokio::test]
async fn every_broken_rule_is_reported() -> Result<()> {
    let db = TestDb::fresh().await?;
    let body = json!({"items": [{"sku": "", "quantity": 0, "unit_price_cents": -1}]});
    let answer = call(&deps(&db), ApiRequest::post_orders(&body.to_string())).await;
    let problem = tests::problem(&answer, 422);
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "items[0].sku",
            "items[0].quantity",
            "items[0].unit_price_cents"
        ]
    );
    assert_eq!(problem["errors"][2]["pointer"], "/items/0/unit_price_cents");
    Ok(())
}

#[tokio::test]
async fn oversized_bodies_are_413() -> Result<()> {
    let db = TestDb::fresh().await?;
    let padding = " ".repeat(create_order::MAX_BODY_BYTES);
    let answer = call(
        &deps(&db),
        ApiRequest::post_orders(&format!("{ORDER}{padding}")),
    )
    .await;
    tests::problem(&answer, 413);
    // Exactly at the limit is still read.
    let at_limit = format!(
        "{ORDER}{}",
        " ".repeat(create_order::MAX_BODY_BYTES - ORDER.len())
    );
    assert_eq!(
        call(&deps(&db), ApiRequest::post_orders(&at_limit))
            .await
            .status,
        201
    );
    Ok(())
}

#[tokio::test]
async fn non_json_content_types_are_415() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin1",
        "application/jsonx",
    ] {
        let answer = call(
            &deps,
            ApiRequest::post_orders(ORDER).header("content-type", content_type),
        )
        .await;
        tests::problem(&answer, 415);
        assert_eq!(answer.header("accept-post"), Some("application/json"));
    }
    tests::problem(
        &call(
            &deps,
            ApiRequest::post_orders(ORDER).without_header("content-type"),
        )
        .await,
        415,
    );
    for content_type in [
        "Application/JSON",
        "application/json; charset=UTF-8",
        "application/merge+json",
    ] {
        let answer = call(
            &deps,
            ApiRequest::post_orders(ORDER).header("content-type", content_type),
        )
        .await;
        assert_eq!(answer.status, 201, "{content_type}");
    }
    Ok(())
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    for path in ["/", "/order", "/orders/", "/orders/a/b", "/ordersx"] {
        tests::problem(
            &call(&deps, ApiRequest::get_order("x").path(path)).await,
            404,
        );
    }
    for (method, path, allow) in [
        ("DELETE", "/orders", "POST"),
        ("GET", "/orders", "POST"),
        ("PUT", "/orders/0193a3e2-7c1a-7000-8000-000000000001", "GET"),
        (
            "POST",
            "/orders/0193a3e2-7c1a-7000-8000-000000000001",
            "GET",
        ),
    ] {
        let answer = call(
            &deps,
            ApiRequest::post_orders(ORDER).method(method).path(path),
        )
        .await;
        tests::problem(&answer, 405);
        assert_eq!(answer.header("allow"), Some(allow));
    }
    assert_nothing_written(&db).await
}

/// Without an Idempotency-Key every POST creates an order.
#[tokio::test]
async fn without_a_key_every_post_creates_an_order() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let a = call(&deps, ApiRequest::post_orders(ORDER)).await.json();
    let b = call(&deps, ApiRequest::post_orders(ORDER)).await.json();
    assert_ne!(a["id"], b["id"]);
    assert_eq!(db.count("orders.orders").await?, 2);
    assert_eq!(db.count("orders.outbox").await?, 2);
    Ok(())
}

/// A repeat with the same key and body replays the first response and creates
/// nothing; the same body with other formatting counts as the same request.
#[tokio::test]
async fn a_repeated_key_replays_the_stored_response() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let first = call(
        &deps,
        ApiRequest::post_orders(ORDER).header("idempotency-key", "\"key-1\""),
    )
    .await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replayed"), None);
    let reformatted = serde_json::to_string_pretty(&serde_json::from_str::<Value>(ORDER)?)?;
    for body in [ORDER, reformatted.as_str()] {
        let again = call(
            &deps,
            ApiRequest::post_orders(body).header("idempotency-key", "\"key-1\""),
        )
        .await;
        assert_eq!(again.status, 201);
        assert_eq!(again.body, first.body, "same body, same order id");
        assert_eq!(again.header("location"), first.header("location"));
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
    }
    // The bare (unquoted) form of the same key is the same key.
    let bare = call(
        &deps,
        ApiRequest::post_orders(ORDER).header("idempotency-key", "key-1"),
    )
    .await;
    assert_eq!(bare.body, first.body);
    assert_eq!(db.count("orders.orders").await?, 1);
    assert_eq!(db.count("orders.outbox").await?, 1);
    Ok(())
}

/// The same key with a different body is refused with 422, creating nothing.
#[tokio::test]
async fn a_reused_key_with_another_body_is_422() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    assert_eq!(
        call(
            &deps,
            ApiRequest::post_orders(ORDER).header("idempotency-key", "k")
        )
        .await
        .status,
        201
    );
    let other = ORDER.replace("\"quantity\":2", "\"quantity\":3");
    let answer = call(
        &deps,
        ApiRequest::post_orders(&other).header("idempotency-key", "k"),
    )
    .await;
    let body = tests::problem(&answer, 422);
    assert_eq!(body["type"], "/problems/idempotency-key-reused");
    assert_eq!(db.count("orders.orders").await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_malformed_key_is_400() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    for key in ["\"unterminated", "has space", &"k".repeat(256)] {
        tests::problem(
            &call(
                &deps,
                ApiRequest::post_orders(ORDER).header("idempotency-key", key),
            )
            .await,
            400,
        );
    }
    assert_nothing_written(&db).await
}

/// A repeat while the first request still runs gets 409; once the first
/// commits, repeats replay it. Exactly one order results.
#[tokio::test]
async fn a_repeat_while_the_first_is_in_flight_is_409() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    // Hold the first request inside its transaction: it takes the key's lock, then
    // waits for this table lock at its INSERT.
    let mut blocker = db.pool.begin().await?;
    sqlx::query("LOCK TABLE orders.orders IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await?;
    let first = {
        let deps = deps.clone();
        tokio::spawn(async move {
            call(
                &deps,
                ApiRequest::post_orders(ORDER).header("idempotency-key", "slow"),
            )
            .await
        })
    };
    // Wait until the first request is blocked on the table lock.
    let mut waiting = false;
    for _ in 0..200 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
            .fetch_one(&db.pool)
            .await?;
        if n > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(waiting, "the first request never reached the lock");
    let second = call(
        &deps,
        ApiRequest::post_orders(ORDER).header("idempotency-key", "slow"),
    )
    .await;
    let body = tests::problem(&second, 409);
    assert_eq!(body["type"], "/problems/idempotency-key-in-flight");
    assert_eq!(second.header("retry-after"), Some("1"));
    blocker.rollback().await?;

    let first = first.await?;
    assert_eq!(first.status, 201);
    let third = call(
        &deps,
        ApiRequest::post_orders(ORDER).header("idempotency-key", "slow"),
    )
    .await;
    assert_eq!(third.body, first.body);
    assert_eq!(db.count("orders.orders").await?, 1);
    Ok(())
}

/// Two requests with one key at the same moment: exactly one order, and each
/// answer is that order (201) or "in flight" (409).
#[tokio::test]
async fn simultaneous_requests_with_one_key_create_one_order() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    for round in 0..25 {
        let key = format!("race-{round}");
        let request = ApiRequest::post_orders(ORDER).header("idempotency-key", &key);
        let (a, b) = tokio::join!(
            tokio::spawn({
                let (deps, request) = (deps.clone(), request.clone());
                async move { call(&deps, request).await }
            }),
            tokio::spawn({
                let (deps, request) = (deps.clone(), request.clone());
                async move { call(&deps, request).await }
            }),
        );
        let (a, b) = (a?, b?);
        let mut statuses = [a.status, b.status];
        statuses.sort_unstable();
        assert!(
            statuses == [201, 201] || statuses == [201, 409],
            "round {round}: {statuses:?}"
        );
        if statuses == [201, 201] {
            assert_eq!(
                a.body, b.body,
                "round {round}: both must show the same order"
            );
        }
    }
    assert_eq!(db.count("orders.orders").await?, 25);
    assert_eq!(db.count("orders.outbox").await?, 25);
    assert_eq!(db.count("orders.idempotency_keys").await?, 25);
    Ok(())
}

/// An expired key is a fresh key: the request is processed again.
#[tokio::test]
async fn keys_expire() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let first = call(
        &deps,
        ApiRequest::post_orders(ORDER).header("idempotency-key", "old"),
    )
    .await;
    let stored_for: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - created_at)::float8 FROM orders.idempotency_keys",
    )
    .fetch_one(&db.pool)
    .await?;
    assert!(
        (stored_for - 86_400.0).abs() < 1.0,
        "kept for {stored_for}s, not 24h"
    );
    sqlx::query("UPDATE orders.idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await?;
    let second = call(
        &deps,
        ApiRequest::post_orders(ORDER).header("idempotency-key", "old"),
    )
    .await;
    assert_eq!(second.status, 201);
    assert_ne!(second.json()["id"], first.json()["id"]);
    assert_eq!(db.count("orders.orders").await?, 2);
    assert_eq!(db.count("orders.idempotency_keys").await?, 1);

    sqlx::query("UPDATE orders.idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await?;
    assert_eq!(
        order_service::idempotency::purge_expired(&db.pool, 100).await?,
        1
    );
    assert_eq!(db.count("orders.idempotency_keys").await?, 0);
    Ok(())
}

/// When the outbox insert fails inside the transaction, neither the order nor
/// its lines (nor the idempotency record) remain.
#[tokio::test]
async fn a_failing_outbox_insert_rolls_back_the_order() -> Result<()> {
    let db = TestDb::fresh().await?;
    sqlx::query(
        "CREATE FUNCTION fail_outbox() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'outbox insert refused by test'; END $$",
    )
    .execute(&db.pool)
    .await?;
    sqlx::query("CREATE TRIGGER fail_outbox BEFORE INSERT ON orders.outbox FOR EACH ROW EXECUTE FUNCTION fail_outbox()")
        .execute(&db.pool)
        .await?;
    let answer = call(
        &deps(&db),
        ApiRequest::post_orders(ORDER).header("idempotency-key", "atomic"),
    )
    .await;
    let body = tests::problem(&answer, 500);
    assert!(
        !body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("refused by test"),
        "internals leaked: {body}"
    );
    assert_nothing_written(&db).await
}

/// A database that cannot be reached answers 503 with a problem body, quickly.
#[tokio::test]
async fn an_unreachable_database_is_503_not_a_hang() -> Result<()> {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut config =
        DatabaseConfig::from_url(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))?;
    config.acquire_timeout = Duration::from_millis(500);
    let deps = Deps {
        pool: shared::db::lazy_pool(&config),
        idempotency_ttl: Duration::from_secs(60),
    };
    for request in [
        ApiRequest::post_orders(ORDER),
        ApiRequest::get_order("0193a3e2-7c1a-7000-8000-000000000001"),
    ] {
        let answer = tokio::time::timeout(Duration::from_secs(10), call(&deps, request)).await?;
        tests::problem(&answer, 503);
        assert_eq!(answer.header("retry-after"), Some("1"));
    }
    Ok(())
}

/// A database that accepts the connection but does not finish in time answers
/// 503 (statement timeout), and nothing is written.
#[tokio::test]
async fn a_database_that_times_out_is_503() -> Result<()> {
    let db = TestDb::fresh().await?;
    let mut config = db.config.clone();
    config.statement_timeout = Duration::from_millis(300);
    let deps = Deps {
        pool: shared::db::lazy_pool(&config),
        idempotency_ttl: Duration::from_secs(60),
    };
    let mut blocker = db.pool.begin().await?;
    sqlx::query("LOCK TABLE orders.orders IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await?;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        call(&deps, ApiRequest::post_orders(ORDER)),
    )
    .await?;
    tests::problem(&answer, 503);
    blocker.rollback().await?;
    assert_nothing_written(&db).await
}

/// Once an answer has left, the key is free: back-to-back repeats (replays,
/// refused bodies) never meet the previous request's lock and never see `409`.
#[tokio::test]
async fn back_to_back_repeats_never_see_the_key_in_flight() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let first = call(
        &deps,
        ApiRequest::post_orders(ORDER).header("idempotency-key", "busy"),
    )
    .await;
    assert_eq!(first.status, 201);
    let other = ORDER.replace("\"quantity\":2", "\"quantity\":3");
    for round in 0..40 {
        let body = if round % 4 == 3 {
            other.as_str()
        } else {
            ORDER
        };
        let again = call(
            &deps,
            ApiRequest::post_orders(body).header("idempotency-key", "busy"),
        )
        .await;
        let expected = if round % 4 == 3 { 422 } else { 201 };
        assert_eq!(
            again.status,
            expected,
            "round {round}: {}",
            String::from_utf8_lossy(&again.body)
        );
    }
    assert_eq!(db.count("orders.orders").await?, 1);
    Ok(())
}

/// The trace id of the cancel fixture's `traceparent`.
const CANCEL_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// Creates an order through the API and returns its JSON.
async fn create(deps: &Deps) -> Value {
    let created = call(deps, ApiRequest::post_orders(ORDER)).await;
    assert_eq!(created.status, 201);
    created.json()
}

/// `(status, updated_at)` of the order, as stored.
async fn stored_status(db: &TestDb, id: &str) -> Result<(String, time::OffsetDateTime)> {
    Ok(
        sqlx::query_as("SELECT status, updated_at FROM orders.orders WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&db.pool)
            .await?,
    )
}

/// Every `OrderCancelled` row of the outbox: `(aggregate_id, traceparent, payload)`.
async fn cancelled_events(db: &TestDb) -> Result<Vec<(String, Option<String>, Value)>> {
    Ok(sqlx::query_as(
        "SELECT aggregate_id, traceparent, payload FROM orders.outbox
         WHERE event_type = 'OrderCancelled' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await?)
}

/// A PENDING order becomes CANCELLED (updated now), answers with the order, and
/// exactly one OrderCancelled event naming it is in the outbox, continuing the
/// cancel request's trace.
#[tokio::test]
async fn cancel_turns_a_pending_order_cancelled_with_one_event() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let order = create(&deps).await;
    let id = order["id"].as_str().expect("id").to_owned();
    let (_, created_at) = stored_status(&db, &id).await?;

    let answer = call(&deps, ApiRequest::cancel_order(&id)).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let mut expected = order.clone();
    expected["status"] = json!("CANCELLED");
    assert_eq!(answer.json(), expected, "the order, now CANCELLED");

    let (status, updated_at) = stored_status(&db, &id).await?;
    assert_eq!(status, "CANCELLED");
    assert!(updated_at > created_at, "updated_at was not set");

    let events = cancelled_events(&db).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    let (aggregate_id, traceparent, payload) = &events[0];
    assert_eq!(aggregate_id, &id);
    assert_eq!(payload, &json!({ "order_id": id }));
    let (event_type, version, aggregate_type): (String, i32, String) = sqlx::query_as(
        "SELECT event_type, schema_version, aggregate_type FROM orders.outbox ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(
        (event_type.as_str(), version, aggregate_type.as_str()),
        ("OrderCancelled", 1, "Order")
    );
    let traceparent = traceparent.as_deref().expect("traceparent stored");
    assert!(
        traceparent.starts_with(&format!("00-{CANCEL_TRACE}-")),
        "the cancel request's trace continues: {traceparent}"
    );
    assert_ne!(
        traceparent, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "a new span of ours is the parent"
    );
    assert_eq!(
        db.count("orders.outbox").await?,
        2,
        "OrderCreated + OrderCancelled"
    );

    let fetched = call(&deps, ApiRequest::get_order(&id)).await;
    assert_eq!(fetched.json(), expected);
    Ok(())
}

/// A CONFIRMED order can be cancelled too.
#[tokio::test]
async fn cancel_turns_a_confirmed_order_cancelled() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let id = create(&deps).await["id"].as_str().expect("id").to_owned();
    sqlx::query("UPDATE orders.orders SET status = 'CONFIRMED' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&db.pool)
        .await?;
    let answer = call(&deps, ApiRequest::cancel_order(&id)).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["status"], "CANCELLED");
    assert_eq!(stored_status(&db, &id).await?.0, "CANCELLED");
    assert_eq!(cancelled_events(&db).await?.len(), 1);
    Ok(())
}

/// REJECTED and CANCELLED orders cannot be cancelled: 409 naming the status, and
/// nothing is written (no status change, no new event).
#[tokio::test]
async fn cancelling_a_rejected_or_cancelled_order_is_409_and_writes_nothing() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    for status in ["REJECTED", "CANCELLED"] {
        let id = create(&deps).await["id"].as_str().expect("id").to_owned();
        sqlx::query("UPDATE orders.orders SET status = $2 WHERE id = $1::uuid")
            .bind(&id)
            .bind(status)
            .execute(&db.pool)
            .await?;
        let before = stored_status(&db, &id).await?;
        let outbox_before = db.count("orders.outbox").await?;

        let answer = call(&deps, ApiRequest::cancel_order(&id)).await;
        let body = tests::problem(&answer, 409);
        assert_eq!(body["type"], "/problems/order-not-cancellable");
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains(status)),
            "{body}"
        );

        assert_eq!(stored_status(&db, &id).await?, before, "{status}");
        assert_eq!(db.count("orders.outbox").await?, outbox_before, "{status}");
    }
    assert!(cancelled_events(&db).await?.is_empty());
    Ok(())
}

/// Cancelling twice: the second is a 409 and there is still one event.
#[tokio::test]
async fn a_second_cancel_is_409() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let id = create(&deps).await["id"].as_str().expect("id").to_owned();
    assert_eq!(call(&deps, ApiRequest::cancel_order(&id)).await.status, 200);
    let again = call(&deps, ApiRequest::cancel_order(&id)).await;
    assert!(tests::problem(&again, 409)["detail"]
        .as_str()
        .is_some_and(|d| d.contains("CANCELLED")));
    assert_eq!(cancelled_events(&db).await?.len(), 1);
    Ok(())
}

/// An unknown order is 404, a malformed id 400 (as for GET), another method 405;
/// nothing is written.
#[tokio::test]
async fn cancel_answers_404_400_and_405() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    tests::problem(
        &call(
            &deps,
            ApiRequest::cancel_order("0193a3e2-7c1a-7000-8000-000000000001"),
        )
        .await,
        404,
    );
    for bad in ["not-a-uuid", "1%27%20OR%20%271%27%3D%271"] {
        let body = tests::problem(&call(&deps, ApiRequest::cancel_order(bad)).await, 400);
        assert_eq!(body["type"], "/problems/invalid-id");
        assert_eq!(body["errors"][0]["field"], "id");
    }
    for method in ["GET", "PUT", "DELETE"] {
        let answer = call(
            &deps,
            ApiRequest::cancel_order("0193a3e2-7c1a-7000-8000-000000000001").method(method),
        )
        .await;
        tests::problem(&answer, 405);
        assert_eq!(answer.header("allow"), Some("POST"));
    }
    for path in [
        "/orders/0193a3e2-7c1a-7000-8000-000000000001/cancel/now",
        "/orders/0193a3e2-7c1a-7000-8000-000000000001/uncancel",
        "/orders//cancel",
    ] {
        tests::problem(
            &call(&deps, ApiRequest::cancel_order("x").path(path)).await,
            404,
        );
    }
    assert_nothing_written(&db).await
}

/// `status_reason` is shown when it is set (the saga sets it on a rejection), and
/// absent otherwise.
#[tokio::test]
async fn the_status_reason_is_shown_only_when_set() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let order = create(&deps).await;
    assert!(order.get("status_reason").is_none(), "{order}");
    let id = order["id"].as_str().expect("id").to_owned();
    assert!(call(&deps, ApiRequest::get_order(&id))
        .await
        .json()
        .get("status_reason")
        .is_none());

    let reason = "insufficient stock for WIDGET-1: requested 2, available 1";
    sqlx::query(
        "UPDATE orders.orders SET status = 'REJECTED', status_reason = $2 WHERE id = $1::uuid",
    )
    .bind(&id)
    .bind(reason)
    .execute(&db.pool)
    .await?;
    let fetched = call(&deps, ApiRequest::get_order(&id)).await.json();
    assert_eq!(fetched["status"], "REJECTED");
    assert_eq!(fetched["status_reason"], reason);
    let mut expected = order;
    expected["status"] = json!("REJECTED");
    expected["status_reason"] = json!(reason);
    assert_eq!(fetched, expected, "nothing else changes");
    Ok(())
}

// ---------------------------------------------------------------------------
// Who is calling: the authorizer's claims.

/// A body for a failure message.
fn text(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

const READ_WRITE: &[&str] = &["orders:read", "orders:write"];
const ADMIN: &[&str] = &["orders:read", "orders:write", "orders:admin"];

/// Creates an order as `customer`, returns its id.
async fn create_as(deps: &Deps, customer: &str) -> String {
    let created = call(
        deps,
        ApiRequest::post_orders(ORDER).caller(customer, READ_WRITE),
    )
    .await;
    assert_eq!(created.status, 201, "{}", text(&created));
    let order = created.json();
    assert_eq!(order["customer_id"], customer, "the customer is the caller");
    order["id"].as_str().expect("id").to_owned()
}

/// `(type, title, status)` of a problem: what a client can tell answers apart by.
fn problem_kind(answer: &Answer) -> (u16, Option<String>, Value, Value) {
    let problem = answer.json();
    (
        answer.status,
        answer.header("content-type").map(str::to_owned),
        problem["type"].clone(),
        problem["title"].clone(),
    )
}

/// Another customer's order is answered like a missing one, to read and to
/// cancel: its existence does not leak, and nothing changes.
#[tokio::test]
async fn another_customers_order_is_404_to_read_and_to_cancel() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let id = create_as(&deps, "cust-a").await;
    let missing = "0193a3e2-7c1a-7000-8000-00000000dead";
    let missing_get = call(
        &deps,
        ApiRequest::get_order(missing).caller("cust-b", READ_WRITE),
    )
    .await;
    let missing_cancel = call(
        &deps,
        ApiRequest::cancel_order(missing).caller("cust-b", READ_WRITE),
    )
    .await;
    assert_eq!(missing_get.status, 404);

    let read = call(
        &deps,
        ApiRequest::get_order(&id).caller("cust-b", READ_WRITE),
    )
    .await;
    assert_eq!(problem_kind(&read), problem_kind(&missing_get));
    assert_eq!(
        read.json()["detail"]
            .as_str()
            .map(|d| d.replace(&id, missing)),
        missing_get.json()["detail"].as_str().map(str::to_owned),
        "the same words as for a missing order"
    );
    let cancel = call(
        &deps,
        ApiRequest::cancel_order(&id).caller("cust-b", READ_WRITE),
    )
    .await;
    assert_eq!(problem_kind(&cancel), problem_kind(&missing_cancel));
    assert_eq!(
        cancel.json()["detail"]
            .as_str()
            .map(|d| d.replace(&id, missing)),
        missing_cancel.json()["detail"].as_str().map(str::to_owned),
    );
    assert_eq!(stored_status(&db, &id).await?.0, "PENDING");
    assert!(cancelled_events(&db).await?.is_empty());

    // The owner still reads and cancels it.
    let own = call(
        &deps,
        ApiRequest::get_order(&id).caller("cust-a", &["orders:read"]),
    )
    .await;
    assert_eq!(own.status, 200);
    assert_eq!(own.json()["id"], id.as_str());
    let cancelled = call(
        &deps,
        ApiRequest::cancel_order(&id).caller("cust-a", READ_WRITE),
    )
    .await;
    assert_eq!(cancelled.status, 200, "{}", text(&cancelled));
    Ok(())
}

/// `orders:admin` reads and cancels any customer's order.
#[tokio::test]
async fn an_admin_reads_and_cancels_any_order() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let id = create_as(&deps, "cust-a").await;
    let read = call(&deps, ApiRequest::get_order(&id).caller("ops-1", ADMIN)).await;
    assert_eq!(read.status, 200, "{}", text(&read));
    assert_eq!(read.json()["customer_id"], "cust-a");
    let cancelled = call(&deps, ApiRequest::cancel_order(&id).caller("ops-1", ADMIN)).await;
    assert_eq!(cancelled.status, 200, "{}", text(&cancelled));
    assert_eq!(cancelled.json()["status"], "CANCELLED");
    assert_eq!(
        cancelled.json()["customer_id"],
        "cust-a",
        "still the owner's"
    );
    assert_eq!(stored_status(&db, &id).await?.0, "CANCELLED");
    assert_eq!(cancelled_events(&db).await?.len(), 1);
    Ok(())
}

/// The same Idempotency-Key from two customers is two keys: B's request creates
/// B's order instead of replaying A's stored response, and each replays its own.
#[tokio::test]
async fn idempotency_keys_belong_to_their_customer() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let post = |customer: &str| {
        ApiRequest::post_orders(ORDER)
            .caller(customer, READ_WRITE)
            .header("idempotency-key", "\"shared-key\"")
    };
    let a = call(&deps, post("cust-a")).await;
    assert_eq!(a.status, 201, "{}", text(&a));
    let b = call(&deps, post("cust-b")).await;
    assert_eq!(b.status, 201, "{}", text(&b));
    assert_eq!(b.header("idempotent-replayed"), None, "not A's response");
    assert_ne!(b.json()["id"], a.json()["id"]);
    assert_eq!(b.json()["customer_id"], "cust-b");
    assert_eq!(db.count("orders.orders").await?, 2);
    assert_eq!(db.count("orders.idempotency_keys").await?, 2);

    for (customer, first) in [("cust-a", &a), ("cust-b", &b)] {
        let again = call(&deps, post(customer)).await;
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.body, first.body, "{customer} replays its own order");
    }
    assert_eq!(db.count("orders.orders").await?, 2);
    Ok(())
}

/// A request without the authorizer's claims (a route without an authorizer), or
/// with claims but no subject, is 401 with a Bearer challenge on every route,
/// and reads and writes nothing: never a default customer.
#[tokio::test]
async fn without_claims_every_route_is_401_and_writes_nothing() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let unknown = "0193a3e2-7c1a-7000-8000-000000000001";
    let no_subject = |request: ApiRequest| {
        let mut event: Value = serde_json::from_str(&request.build_event_json()).expect("json");
        if let Some(claims) = event["requestContext"]["authorizer"]["jwt"]["claims"].as_object_mut()
        {
            claims.remove("sub");
        }
        event
    };
    let mut events: Vec<String> = Vec::new();
    for request in [
        ApiRequest::post_orders(ORDER).header("idempotency-key", "k-1"),
        ApiRequest::get_order(unknown),
        ApiRequest::cancel_order(unknown),
        // Even a request that would be refused for its body or method.
        ApiRequest::post_orders("{not json"),
        ApiRequest::get_order(unknown).method("DELETE"),
    ] {
        events.push(request.clone().without_authorizer().build_event_json());
        events.push(no_subject(request).to_string());
    }
    for event in events {
        let request = lambda_http::request::from_str(&event).expect("an API Gateway event");
        let answer = Answer::from(handle(&deps, request).await);
        assert_eq!(answer.status, 401, "{event}: {}", text(&answer));
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(answer.json()["status"], 401);
    }
    assert_nothing_written(&db).await
}

/// A claimless request cannot cancel an existing order either.
#[tokio::test]
async fn without_claims_an_existing_order_is_not_cancelled() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let id = create_as(&deps, "cust-42").await;
    let answer = call(&deps, ApiRequest::cancel_order(&id).without_authorizer()).await;
    assert_eq!(answer.status, 401);
    assert_eq!(stored_status(&db, &id).await?.0, "PENDING");
    assert!(cancelled_events(&db).await?.is_empty());
    Ok(())
}

/// `customer_id` in the body is 422 naming the field, with a message that says
/// why, even when it names the caller itself; nothing is written.
#[tokio::test]
async fn a_customer_id_in_the_body_is_422_naming_it() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    for customer in ["cust-42", "someone-else"] {
        let body = json!({"customer_id": customer, "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]});
        let answer = call(
            &deps,
            ApiRequest::post_orders(&body.to_string()).header("idempotency-key", "k-2"),
        )
        .await;
        assert_eq!(answer.status, 422, "{}", text(&answer));
        let problem = answer.json();
        let errors = problem["errors"].as_array().expect("errors");
        assert_eq!(errors.len(), 1, "{problem}");
        assert_eq!(errors[0]["field"], "customer_id");
        assert!(
            errors[0]["detail"]
                .as_str()
                .is_some_and(|m| m.contains("authenticated caller")),
            "{problem}"
        );
    }
    assert_nothing_written(&db).await
}
