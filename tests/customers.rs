//! The customer service's credit API through the emulator, as API Gateway
//! serves it: an operator (`customers:write`) sets a limit; a customer reads
//! their own credit (`customers:read`) and nobody else's (404, as for a
//! customer that does not exist); `customers:admin` reads anyone's; a customer
//! without a record has the default limit; bad bodies are refused by field.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use anyhow::Result;
use emulator::system::Mode;
use serde_json::{json, Value};
use tests::TestDb;

fn client(subject: &str, scopes: &str) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", tests::token(subject, scopes)).parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

#[tokio::test]
async fn credit_limits_are_set_by_operators_and_read_by_their_owners() -> Result<()> {
    let db = TestDb::fresh().await?;
    let running = tests::emulated::start(
        &db,
        Mode::InProcess,
        &[("DEFAULT_CREDIT_LIMIT_CENTS", "7000")],
    )
    .await?;
    let operator = client("ops-1", "customers:write")?;
    let alice = client("alice", "customers:read")?;
    let admin = client("auditor", "customers:read customers:admin")?;
    let credit = |who: &str| running.url(&format!("/customers/{who}/credit"));

    // Nobody has a record yet: the default limit, nothing reserved.
    let read = alice.get(credit("alice")).send().await?;
    assert_eq!(read.status(), 200);
    assert_eq!(
        read.json::<Value>().await?,
        json!({"customer_id": "alice", "limit_cents": 7000, "reserved_cents": 0, "available_cents": 7000})
    );

    let set = operator
        .put(credit("alice"))
        .header("content-type", "application/json")
        .body(r#"{"limit_cents": 50000}"#)
        .send()
        .await?;
    assert_eq!(set.status(), 200);
    assert_eq!(set.json::<Value>().await?["limit_cents"], 50000);
    let read = alice.get(credit("alice")).send().await?;
    assert_eq!(
        read.json::<Value>().await?,
        json!({"customer_id": "alice", "limit_cents": 50000, "reserved_cents": 0, "available_cents": 50000})
    );

    // Another customer's credit does not exist for Alice; an admin sees it.
    let theirs = alice.get(credit("bob")).send().await?;
    assert_eq!(theirs.status(), 404);
    let seen = admin.get(credit("alice")).send().await?;
    assert_eq!(seen.status(), 200);
    assert_eq!(seen.json::<Value>().await?["limit_cents"], 50000);

    // The routes' scopes, checked before the function runs.
    let not_allowed = alice
        .put(credit("alice"))
        .header("content-type", "application/json")
        .body(r#"{"limit_cents": 99999999}"#)
        .send()
        .await?;
    assert_eq!(
        not_allowed.status(),
        403,
        "a customer cannot raise their own limit"
    );
    let anonymous = reqwest::Client::new().get(credit("alice")).send().await?;
    assert_eq!(anonymous.status(), 401);

    // Bad bodies: the field is named, nothing changes.
    for body in [r#"{"limit_cents": -5}"#, r#"{"limit_cents": "5"}"#, r#"{}"#] {
        let refused = operator
            .put(credit("alice"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        assert_eq!(refused.status(), 422, "{body}");
        let problem: Value = refused.json().await?;
        assert_eq!(problem["errors"][0]["field"], "limit_cents", "{problem}");
    }
    let bad_id = operator
        .put(running.url("/customers/has%20space/credit"))
        .header("content-type", "application/json")
        .body(r#"{"limit_cents": 1}"#)
        .send()
        .await?;
    assert_eq!(bad_id.status(), 400);
    let limit: i64 =
        sqlx::query_scalar("SELECT limit_cents FROM customers.credit WHERE customer_id = 'alice'")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(limit, 50000);
    running.stop().await
}

/// A request that reaches customers-api without claims (a route left without
/// its authorizer) is 401 with a Bearer challenge, and writes nothing.
#[tokio::test]
async fn without_claims_the_credit_routes_are_401_and_write_nothing() -> Result<()> {
    let db = TestDb::fresh().await?;
    let deps = customers_api::Deps {
        pool: db.pool.clone(),
        default_limit_cents: 7000,
    };
    for request in [
        tests::ApiRequest::put_inventory("X", r#"{"limit_cents": 500}"#)
            .path("/customers/alice/credit"),
        tests::ApiRequest::get_inventory("X").path("/customers/alice/credit"),
    ] {
        let answer = tests::Answer::from(
            customers_api::handle(&deps, request.without_authorizer().build()).await,
        );
        assert_eq!(
            answer.status,
            401,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM customers.credit")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(rows, 0, "nothing written");
    Ok(())
}
