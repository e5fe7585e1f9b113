//! The emulator over real HTTP: requests become API Gateway v2 events, go to the
//! create-order and inventory-api handlers in-process, and come back as HTTP
//! responses.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use tests::TestDb;

async fn start(db: &TestDb) -> Result<tests::emulated::RunningEmulator> {
    tests::emulated::start(db, emulator::system::Mode::InProcess, &[]).await
}

#[tokio::test]
async fn post_then_get_over_http() -> Result<()> {
    let db = TestDb::fresh().await?;
    let running = start(&db).await?;
    let http = tests::client_as("cust-1");
    let body = json!({"items": [{"sku": "A-1", "quantity": 3, "unit_price_cents": 250}]});
    let created = http
        .post(format!("{}/orders", running.base))
        .header("content-type", "application/json")
        .header("cookie", "session=abc; theme=dark")
        .body(body.to_string())
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str()?.to_owned();
    let order: Value = created.json().await?;
    assert_eq!(order["total_cents"], 750);
    assert_eq!(
        location,
        format!("/orders/{}", order["id"].as_str().unwrap_or_default())
    );

    let fetched = http
        .get(format!("{}{location}?verbose=1&verbose=2", running.base))
        .send()
        .await?;
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.json::<Value>().await?, order);

    // No route: API Gateway's own 404.
    let missing = http.get(format!("{}/nowhere", running.base)).send().await?;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await?,
        json!({"message": "Not Found"})
    );

    // A binary body travels base64-encoded and is still refused as not JSON.
    let binary = http
        .post(format!("{}/orders", running.base))
        .header("content-type", "application/octet-stream")
        .body(vec![0_u8, 159, 146, 150])
        .send()
        .await?;
    assert_eq!(binary.status(), 415);

    // The in-process functions' metrics, in Prometheus' text format.
    let metrics = http.get(format!("{}/metrics", running.base)).send().await?;
    assert_eq!(metrics.status(), 200);
    assert!(metrics.headers()["content-type"]
        .to_str()?
        .starts_with("text/plain; version=0.0.4"));
    let metrics = metrics.text().await?;
    assert!(
        metrics.contains("# TYPE orders_created_total counter")
            && metrics.contains("orders_created_total{service=\"create-order\"}")
            && metrics.contains("handler_duration_milliseconds_count{service=\"create-order\"}"),
        "{metrics}"
    );

    running.stop().await
}

/// `PUT` then `GET /inventory/{sku}` reach the inventory-api function (the SKU
/// percent-decoded on the way), on the same database as the orders.
#[tokio::test]
async fn inventory_put_then_get_over_http() -> Result<()> {
    let db = TestDb::fresh().await?;
    let running = start(&db).await?;
    let http = tests::client_as("cust-1");
    let url = format!("{}/inventory/ns%3AWIDGET-1", running.base);

    let set = http
        .put(&url)
        .header("content-type", "application/json")
        .body(r#"{"available": 12, "price_cents": 1999}"#)
        .send()
        .await?;
    assert_eq!(set.status(), 200);
    assert_eq!(set.headers()["content-type"], "application/json");
    let stock: Value = set.json().await?;
    assert_eq!(
        stock,
        json!({"sku": "ns:WIDGET-1", "available": 12, "reserved": 0, "price_cents": 1999})
    );
    let stored: i32 =
        sqlx::query_scalar("SELECT available FROM inventory.stock WHERE sku = 'ns:WIDGET-1'")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(stored, 12);

    let fetched = http.get(&url).send().await?;
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.json::<Value>().await?, stock);

    // The function's own answers come back as they are: 404, 422.
    let missing = http
        .get(format!("{}/inventory/UNKNOWN", running.base))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let refused = http
        .put(&url)
        .header("content-type", "application/json")
        .body(r#"{"available": -1}"#)
        .send()
        .await?;
    assert_eq!(refused.status(), 422);
    assert_eq!(
        refused.json::<Value>().await?["errors"][0]["field"],
        "available"
    );
    // The template routes GET and PUT only: another method finds no route.
    let wrong_method = http.delete(&url).send().await?;
    assert_eq!(wrong_method.status(), 404);
    assert_eq!(
        wrong_method.json::<Value>().await?,
        json!({"message": "Not Found"})
    );

    // No route for a path without a SKU: API Gateway's own 404.
    let no_route = http
        .get(format!("{}/inventory", running.base))
        .send()
        .await?;
    assert_eq!(
        no_route.json::<Value>().await?,
        json!({"message": "Not Found"})
    );
    running.stop().await
}

/// `POST /orders/{id}/cancel` reaches create-order; its route takes POST only.
#[tokio::test]
async fn cancel_over_http() -> Result<()> {
    let db = TestDb::fresh().await?;
    let running = start(&db).await?;
    let http = tests::client_as("cust-1");
    let body = json!({"items": [{"sku": "A-1", "quantity": 1, "unit_price_cents": 250}]});
    let order: Value = http
        .post(format!("{}/orders", running.base))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?
        .json()
        .await?;
    let cancel_url = format!(
        "{}/orders/{}/cancel",
        running.base,
        order["id"].as_str().unwrap_or_default()
    );

    let cancelled = http.post(&cancel_url).send().await?;
    assert_eq!(cancelled.status(), 200);
    assert_eq!(cancelled.json::<Value>().await?["status"], "CANCELLED");
    let again = http.post(&cancel_url).send().await?;
    assert_eq!(again.status(), 409);
    // Only POST is routed: API Gateway's own 404 for GET.
    let get = http.get(&cancel_url).send().await?;
    assert_eq!(get.status(), 404);
    assert_eq!(get.json::<Value>().await?, json!({"message": "Not Found"}));
    running.stop().await
}

/// The deploy-time migration step runs through the Invoke API in both modes,
/// as `aws lambda invoke` runs it in AWS: on the emulator's database, which it
/// migrated on start, there is nothing left to apply.
#[tokio::test]
async fn the_migrate_function_answers_a_direct_invocation() -> Result<()> {
    let latest = shared::db::versions(&migrate::migrations()).last().copied();
    for mode in [
        emulator::system::Mode::InProcess,
        tests::emulated::runtime_api()?,
    ] {
        let db = TestDb::fresh().await?;
        let running = tests::emulated::start(&db, mode, &[]).await?;
        let answer = reqwest::Client::new()
            .post(running.url("/2015-03-31/functions/MigrateFunction/invocations"))
            .body("{}")
            .send()
            .await?;
        assert_eq!(answer.status(), 200);
        assert!(answer.headers().get("x-amz-function-error").is_none());
        assert_eq!(
            answer.json::<Value>().await?,
            json!({"applied": [], "pending_before": 0, "latest_version": latest})
        );
        running.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn behind_the_api_the_saga_confirms_rejects_and_compensates() -> Result<()> {
    saga_scenario(emulator::system::Mode::InProcess).await
}

/// The same, with the real function binaries behind the emulator's Runtime API.
#[tokio::test]
async fn with_the_real_binaries_the_saga_confirms_rejects_and_compensates() -> Result<()> {
    saga_scenario(tests::emulated::runtime_api()?).await
}

async fn saga_scenario(mode: emulator::system::Mode) -> Result<()> {
    let db = TestDb::fresh().await?;
    let running = tests::emulated::start(&db, mode, &[]).await?;
    let http = tests::client_as("c-1");
    let put = http
        .put(format!("{}/inventory/LAMP-1", running.base))
        .json(&json!({"available": 1, "price_cents": 2500}))
        .send()
        .await?;
    assert_eq!(put.status(), 200);
    let order = json!({"items":[{"sku":"LAMP-1","quantity":1,"unit_price_cents":2500}]});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let created: Value = http
            .post(format!("{}/orders", running.base))
            .json(&order)
            .send()
            .await?
            .json()
            .await?;
        ids.push(created["id"].as_str().unwrap_or_default().to_owned());
    }
    let status = |id: String| {
        let http = http.clone();
        let base = running.base.clone();
        async move {
            let v: Value = http
                .get(format!("{base}/orders/{id}"))
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(v)
        }
    };
    tests::wait_until(
        Duration::from_secs(30),
        "both orders are decided",
        || async {
            Ok(status(ids[0].clone()).await?["status"] != "PENDING"
                && status(ids[1].clone()).await?["status"] != "PENDING")
        },
    )
    .await?;
    // The two orders are different aggregates, possibly on different
    // partitions, so either may take the last lamp: exactly one does.
    let (first, second) = (status(ids[0].clone()).await?, status(ids[1].clone()).await?);
    let (confirmed, rejected) = if first["status"] == "CONFIRMED" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(confirmed["status"], "CONFIRMED");
    assert_eq!(rejected["status"], "REJECTED");
    assert_eq!(
        rejected["status_reason"],
        "insufficient stock for LAMP-1: requested 1, available 0"
    );
    // Cancelling the confirmed order gives its unit back.
    let confirmed_id = confirmed["id"].as_str().unwrap_or_default();
    let cancelled = http
        .post(format!("{}/orders/{confirmed_id}/cancel", running.base))
        .send()
        .await?;
    assert_eq!(cancelled.status(), 200);
    tests::wait_until(
        Duration::from_secs(30),
        "the lamp is back in stock",
        || async {
            let v: Value = http
                .get(format!("{}/inventory/LAMP-1", running.base))
                .send()
                .await?
                .json()
                .await?;
            Ok(v["available"] == 1 && v["reserved"] == 0)
        },
    )
    .await?;
    // Settled, nothing is in flight: a stream source's long poll is not work
    // in hand (its records show as lag or pending), so `wait-idle` can return.
    let functions =
        std::sync::Arc::clone(&running.system.as_ref().expect("a running system").functions);
    tests::wait_until(Duration::from_secs(30), "nothing in flight", || {
        let functions = std::sync::Arc::clone(&functions);
        async move { Ok(functions.in_flight().is_empty()) }
    })
    .await?;
    running.stop().await
}
