//! The inventory-api function called in-process with real API Gateway v2 events,
//! against a real PostgreSQL database of its own per test.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::time::Duration;

use anyhow::Result;
use inventory_api::{handle, Deps, MAX_AVAILABLE, MAX_BODY_BYTES};
use serde_json::json;
use shared::config::DatabaseConfig;
use tests::{Answer, ApiRequest, TestDb};

fn deps(db: &TestDb) -> Deps {
    Deps {
        pool: db.pool.clone(),
    }
}

async fn call(deps: &Deps, request: ApiRequest) -> Answer {
    Answer::from(handle(deps, request.build()).await)
}

/// `(sku, available, reserved)` of every stock row, by SKU.
async fn stock_rows(db: &TestDb) -> Result<Vec<(String, i32, i32)>> {
    Ok(
        sqlx::query_as("SELECT sku, available, reserved FROM inventory.stock ORDER BY sku")
            .fetch_all(&db.pool)
            .await?,
    )
}

/// PUT creates a SKU with nothing reserved at its catalog price, GET shows it,
/// and a second PUT replaces (not adds to) the available units and keeps the
/// price unless it gives one.
#[tokio::test]
async fn put_sets_the_available_units_and_get_shows_them() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);

    let set = call(
        &deps,
        ApiRequest::put_inventory("WIDGET-1", r#"{"available": 10, "price_cents": 1999}"#),
    )
    .await;
    assert_eq!(set.status, 200, "{}", String::from_utf8_lossy(&set.body));
    assert_eq!(set.header("content-type"), Some("application/json"));
    assert_eq!(
        set.json(),
        json!({"sku": "WIDGET-1", "available": 10, "reserved": 0, "price_cents": 1999})
    );
    assert_eq!(stock_rows(&db).await?, [("WIDGET-1".to_owned(), 10, 0)]);

    let got = call(&deps, ApiRequest::get_inventory("WIDGET-1")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), set.json(), "GET shows what PUT answered");

    let again = call(
        &deps,
        ApiRequest::put_inventory("WIDGET-1", r#"{"available": 3}"#),
    )
    .await;
    assert_eq!(again.json()["available"], 3);
    assert_eq!(again.json()["price_cents"], 1999, "the price stays");
    assert_eq!(stock_rows(&db).await?, [("WIDGET-1".to_owned(), 3, 0)]);
    let repriced = call(
        &deps,
        ApiRequest::put_inventory("WIDGET-1", r#"{"available": 3, "price_cents": 2100}"#),
    )
    .await;
    assert_eq!(repriced.json()["price_cents"], 2100);
    let got = call(&deps, ApiRequest::get_inventory("WIDGET-1")).await;
    assert_eq!(
        got.json(),
        json!({"sku": "WIDGET-1", "available": 3, "reserved": 0, "price_cents": 2100})
    );
    // `null` is not "keep the price": refused by name, and nothing changes.
    let nulled = call(
        &deps,
        ApiRequest::put_inventory("WIDGET-1", r#"{"available": 4, "price_cents": null}"#),
    )
    .await;
    let problem = tests::problem(&nulled, 422);
    assert_eq!(problem["errors"][0]["field"], "price_cents", "{problem}");
    assert_eq!(
        call(&deps, ApiRequest::get_inventory("WIDGET-1"))
            .await
            .json()["price_cents"],
        2100
    );
    Ok(())
}

/// A SKU the inventory does not know needs its price: without one, 422 naming
/// `price_cents`, and nothing written.
#[tokio::test]
async fn a_new_sku_needs_a_price() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let answer = call(
        &deps,
        ApiRequest::put_inventory("NEW-1", r#"{"available": 10}"#),
    )
    .await;
    let problem = tests::problem(&answer, 422);
    assert_eq!(problem["errors"][0]["field"], "price_cents", "{problem}");
    assert_eq!(db.count("inventory.stock").await?, 0);
    for bad in ["-1", "10000000001", "1.5", "\"5\"", "null"] {
        let body = format!(r#"{{"available": 1, "price_cents": {bad}}}"#);
        let answer = call(&deps, ApiRequest::put_inventory("NEW-1", &body)).await;
        let problem = tests::problem(&answer, 422);
        assert_eq!(
            problem["errors"][0]["field"], "price_cents",
            "{bad}: {problem}"
        );
    }
    assert_eq!(db.count("inventory.stock").await?, 0);
    Ok(())
}

/// Setting the available units leaves what is reserved for orders alone, and
/// marks the row as updated.
#[tokio::test]
async fn put_keeps_the_reserved_units() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    sqlx::query(
        "INSERT INTO inventory.stock (sku, available, reserved, updated_at)
         VALUES ('GADGET-7', 2, 5, now() - interval '1 day')",
    )
    .execute(&db.pool)
    .await?;
    let set = call(
        &deps,
        ApiRequest::put_inventory("GADGET-7", r#"{"available": 40}"#),
    )
    .await;
    assert_eq!(set.status, 200, "{}", String::from_utf8_lossy(&set.body));
    assert_eq!(
        set.json(),
        json!({"sku": "GADGET-7", "available": 40, "reserved": 5, "price_cents": null}),
        "a SKU stocked before prices has none until a PUT gives it one"
    );
    assert_eq!(stock_rows(&db).await?, [("GADGET-7".to_owned(), 40, 5)]);
    let fresh: bool = sqlx::query_scalar(
        "SELECT updated_at > now() - interval '1 minute' FROM inventory.stock WHERE sku = 'GADGET-7'",
    )
    .fetch_one(&db.pool)
    .await?;
    assert!(fresh, "updated_at was not bumped");
    assert_eq!(
        call(&deps, ApiRequest::get_inventory("GADGET-7"))
            .await
            .json(),
        json!({"sku": "GADGET-7", "available": 40, "reserved": 5, "price_cents": null})
    );
    Ok(())
}

/// The bounds 0 and 1,000,000,000 are accepted; SKU characters that a client
/// percent-encodes in the path are decoded.
#[tokio::test]
async fn the_bounds_and_encoded_skus_are_accepted() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    for n in [0, MAX_AVAILABLE] {
        let set = call(
            &deps,
            ApiRequest::put_inventory("A", &format!(r#"{{"available":{n},"price_cents":0}}"#)),
        )
        .await;
        assert_eq!(set.status, 200, "{}", String::from_utf8_lossy(&set.body));
        assert_eq!(set.json()["available"], n);
    }
    let encoded = call(
        &deps,
        ApiRequest::put_inventory("ns%3Apart%40v2", r#"{"available":1,"price_cents":5}"#),
    )
    .await;
    assert_eq!(encoded.json()["sku"], "ns:part@v2");
    assert_eq!(
        call(&deps, ApiRequest::get_inventory("ns:part@v2"))
            .await
            .json()["available"],
        1
    );
    Ok(())
}

#[tokio::test]
async fn get_answers_404_for_an_unknown_sku() -> Result<()> {
    let db = TestDb::fresh().await?;
    let answer = call(&deps(&db), ApiRequest::get_inventory("NOPE-1")).await;
    let body = tests::problem(&answer, 404);
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("NOPE-1")),
        "{body}"
    );
    Ok(())
}

/// A SKU that breaks the rules is a 400 naming `sku`, for GET and PUT, and
/// nothing is written.
#[tokio::test]
async fn an_invalid_sku_is_400() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let too_long = "A".repeat(65);
    for sku in [
        "A%20B",
        "a%2Fb",
        "%0D%0AFLUSHALL",
        "1%27%20OR%20%271%27%3D%271",
        too_long.as_str(),
    ] {
        for request in [
            ApiRequest::get_inventory(sku),
            ApiRequest::put_inventory(sku, r#"{"available":1}"#),
        ] {
            let body = tests::problem(&call(&deps, request).await, 400);
            assert_eq!(body["type"], "/problems/invalid-sku", "{sku}");
            assert_eq!(body["errors"][0]["field"], "sku", "{sku}");
        }
    }
    assert_eq!(db.count("inventory.stock").await?, 0);
    Ok(())
}

/// Valid JSON that breaks a rule is a 422 naming `available` (or the unknown
/// field), with nothing written.
#[tokio::test]
async fn rule_breaking_bodies_are_422_naming_the_field() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let cases: Vec<(&str, String, &str)> = vec![
        ("missing", json!({}).to_string(), "available"),
        ("null", json!({"available": null}).to_string(), "available"),
        (
            "negative",
            json!({"available": -1}).to_string(),
            "available",
        ),
        (
            "too many",
            json!({"available": i64::from(MAX_AVAILABLE) + 1}).to_string(),
            "available",
        ),
        (
            "beyond i64",
            r#"{"available": 99999999999999999999999}"#.to_owned(),
            "available",
        ),
        ("float", r#"{"available": 1.5}"#.to_owned(), "available"),
        (
            "float integer",
            r#"{"available": 10.0}"#.to_owned(),
            "available",
        ),
        (
            "string",
            json!({"available": "10"}).to_string(),
            "available",
        ),
        ("bool", json!({"available": true}).to_string(), "available"),
        (
            "unknown field",
            json!({"available": 1, "reserved": 0}).to_string(),
            "reserved",
        ),
        ("an array", "[10]".to_owned(), "(body)"),
        ("a number", "10".to_owned(), "(body)"),
    ];
    for (case, body, field) in cases {
        let answer = call(&deps, ApiRequest::put_inventory("WIDGET-1", &body)).await;
        let problem = tests::problem(&answer, 422);
        assert_eq!(problem["type"], "/problems/invalid-fields", "{case}");
        let named = problem["errors"].as_array().is_some_and(|errors| {
            errors.iter().any(|e| {
                e["field"].as_str() == Some(field)
                    || e["detail"].as_str().is_some_and(|d| d.contains(field))
            })
        });
        assert!(named, "{case}: {field} not named in {problem}");
    }
    assert_eq!(db.count("inventory.stock").await?, 0);
    Ok(())
}

/// Malformed JSON is 400, a body that is not JSON 415, an oversized one 413;
/// nothing is written.
#[tokio::test]
async fn malformed_unsupported_and_oversized_bodies_are_refused() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    for body in [
        "",
        "  ",
        "{",
        "not json",
        r#"{"available":1} {"available":2}"#,
    ] {
        let answer = call(&deps, ApiRequest::put_inventory("WIDGET-1", body)).await;
        let problem = tests::problem(&answer, 400);
        assert_eq!(problem["type"], "/problems/malformed-json", "{body:?}");
    }
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin1",
    ] {
        let answer = call(
            &deps,
            ApiRequest::put_inventory("WIDGET-1", r#"{"available":1}"#)
                .header("content-type", content_type),
        )
        .await;
        tests::problem(&answer, 415);
    }
    tests::problem(
        &call(
            &deps,
            ApiRequest::put_inventory("WIDGET-1", r#"{"available":1}"#)
                .without_header("content-type"),
        )
        .await,
        415,
    );
    let body = r#"{"available":1,"price_cents":1}"#;
    let oversized = format!("{body}{}", " ".repeat(MAX_BODY_BYTES));
    tests::problem(
        &call(&deps, ApiRequest::put_inventory("WIDGET-1", &oversized)).await,
        413,
    );
    assert_eq!(db.count("inventory.stock").await?, 0);
    // Exactly at the limit is still read.
    let at_limit = format!("{body}{}", " ".repeat(MAX_BODY_BYTES - body.len()));
    assert_eq!(
        call(&deps, ApiRequest::put_inventory("WIDGET-1", &at_limit))
            .await
            .status,
        200
    );
    Ok(())
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    for path in [
        "/inventory",
        "/inventory/",
        "/inventory/a/b",
        "/inventoryx/a",
    ] {
        tests::problem(
            &call(&deps, ApiRequest::get_inventory("x").path(path)).await,
            404,
        );
    }
    for method in ["POST", "DELETE", "PATCH"] {
        let answer = call(
            &deps,
            ApiRequest::put_inventory("WIDGET-1", r#"{"available":1}"#).method(method),
        )
        .await;
        tests::problem(&answer, 405);
        assert_eq!(answer.header("allow"), Some("GET, PUT"));
    }
    assert_eq!(db.count("inventory.stock").await?, 0);
    Ok(())
}

/// A database that cannot be reached answers 503 with a problem body, quickly.
#[tokio::test]
async fn an_unreachable_database_is_503() -> Result<()> {
    let port = tests::spare_port()?;
    let mut config =
        DatabaseConfig::from_url(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))?;
    config.acquire_timeout = Duration::from_millis(500);
    let deps = Deps {
        pool: shared::db::lazy_pool(&config),
    };
    for request in [
        ApiRequest::put_inventory("WIDGET-1", r#"{"available":1}"#),
        ApiRequest::get_inventory("WIDGET-1"),
    ] {
        let answer = tokio::time::timeout(Duration::from_secs(10), call(&deps, request)).await?;
        tests::problem(&answer, 503);
        assert_eq!(answer.header("retry-after"), Some("1"));
    }
    Ok(())
}

/// A request that reaches the function without claims (a route left without
/// its authorizer) is 401 with a Bearer challenge, and changes nothing.
#[tokio::test]
async fn without_claims_every_route_is_401_and_writes_nothing() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = deps(&db);
    let stocked = call(
        &deps,
        ApiRequest::put_inventory("WIDGET-1", r#"{"available": 10, "price_cents": 1999}"#),
    )
    .await;
    assert_eq!(stocked.status, 200);
    let before = stock_rows(&db).await?;
    for request in [
        ApiRequest::put_inventory("WIDGET-1", r#"{"available": 1}"#),
        ApiRequest::put_inventory("NEW-1", r#"{"available": 1, "price_cents": 5}"#),
        ApiRequest::get_inventory("WIDGET-1"),
    ] {
        let answer = call(&deps, request.without_authorizer()).await;
        assert_eq!(
            answer.status,
            401,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
        assert_eq!(answer.json()["status"], 401);
    }
    assert_eq!(stock_rows(&db).await?, before, "nothing written");
    Ok(())
}
