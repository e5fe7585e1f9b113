//! Who may do what, through the emulator as through API Gateway: every route
//! checks its token (signature, issuer, audience, times, scopes) before its
//! function runs; a refused request writes nothing; a JWKS of another library's
//! keys can be trusted instead of the development key; customers see only their
//! own orders; throttling and CORS are the template's.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use emulator::auth::{DevKey, Trust, DEV_AUDIENCE, DEV_ISSUER};
use emulator::system::Mode;
use reqwest::Method;
use serde_json::{json, Map, Value};
use tests::emulated::{start_with, template_with, RunningEmulator};
use tests::TestDb;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Claims of a valid customer token, to change one at a time.
fn claims(subject: &str, scope: &str) -> Map<String, Value> {
    let now = now();
    let value = json!({
        "sub": subject, "iss": DEV_ISSUER, "aud": DEV_AUDIENCE,
        "iat": now, "nbf": now, "exp": now + 600, "scope": scope,
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn sign(claims: &Map<String, Value>) -> String {
    tests::auth::key().sign(claims).expect("a token")
}

/// A route, with a request that its function would accept.
struct Route {
    method: Method,
    path: String,
    body: Option<Value>,
    scope: &'static str,
}

/// What the stores hold: compared before and after refused requests.
async fn written(db: &TestDb) -> Result<Value> {
    let (orders, outbox, keys, reservations): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders.orders),
                (SELECT count(*) FROM orders.outbox) + (SELECT count(*) FROM inventory.outbox)
                  + (SELECT count(*) FROM customers.outbox),
                (SELECT count(*) FROM orders.idempotency_keys),
                (SELECT count(*) FROM customers.credit_reservations)",
    )
    .fetch_one(&db.pool)
    .await?;
    let stock: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT sku, available, price_cents::int8 FROM inventory.stock ORDER BY sku",
    )
    .fetch_all(&db.pool)
    .await?;
    let credit: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT customer_id, limit_cents, reserved_cents FROM customers.credit ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await?;
    let cancelled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders.orders WHERE status = 'CANCELLED'")
            .fetch_one(&db.pool)
            .await?;
    Ok(
        json!({"orders": orders, "outbox": outbox, "keys": keys, "stock": stock,
               "cancelled": cancelled, "credit": credit, "reservations": reservations}),
    )
}

async fn send(
    running: &RunningEmulator,
    route: &Route,
    authorization: Option<&str>,
) -> Result<(u16, Value, Option<String>)> {
    let mut request = reqwest::Client::new()
        .request(route.method.clone(), running.url(&route.path))
        .header("idempotency-key", uuid::Uuid::now_v7().to_string());
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    if let Some(body) = &route.body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response.bytes().await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, body, challenge))
}

#[tokio::test]
async fn every_route_refuses_what_api_gateway_refuses_and_writes_nothing() -> Result<()> {
    let db = TestDb::fresh().await?;
    let running = tests::emulated::start(&db, Mode::InProcess, &[]).await?;
    let owner = tests::client_as("c-owner");
    let put = owner
        .put(running.url("/inventory/LAMP-1"))
        .header("content-type", "application/json")
        .body(r#"{"available": 5, "price_cents": 2500}"#)
        .send()
        .await?;
    ensure!(put.status() == 200, "stocking: {}", put.text().await?);
    let created: Value = owner
        .post(running.url("/orders"))
        .header("content-type", "application/json")
        .body(r#"{"items":[{"sku":"LAMP-1","quantity":1,"unit_price_cents":2500}]}"#)
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().context("an order id")?.to_owned();

    let routes = [
        Route {
            method: Method::POST,
            path: "/orders".into(),
            body: Some(json!({"items":[{"sku":"LAMP-1","quantity":1,"unit_price_cents":2500}]})),
            scope: "orders:write",
        },
        Route {
            method: Method::GET,
            path: format!("/orders/{id}"),
            body: None,
            scope: "orders:read",
        },
        Route {
            method: Method::POST,
            path: format!("/orders/{id}/cancel"),
            body: None,
            scope: "orders:write",
        },
        Route {
            method: Method::PUT,
            path: "/inventory/LAMP-1".into(),
            body: Some(json!({"available": 1})),
            scope: "inventory:write",
        },
        Route {
            method: Method::GET,
            path: "/inventory/LAMP-1".into(),
            body: None,
            scope: "inventory:read",
        },
        Route {
            method: Method::PUT,
            path: "/customers/c-owner/credit".into(),
            body: Some(json!({"limit_cents": 700_000})),
            scope: "customers:write",
        },
        Route {
            method: Method::GET,
            path: "/customers/c-owner/credit".into(),
            body: None,
            scope: "customers:read",
        },
    ];
    let stranger = DevKey::generate()?;
    // Once the saga has answered the order, nothing moves unless a request writes.
    tests::wait_until(Duration::from_secs(20), "the order is answered", || async {
        let pending: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM orders.orders WHERE status = 'PENDING')
                  + (SELECT count(*) FROM orders.outbox) + (SELECT count(*) FROM inventory.outbox)
                  + (SELECT count(*) FROM customers.outbox)",
        )
        .fetch_one(&db.pool)
        .await?;
        Ok(pending == 0)
    })
    .await?;
    let before = written(&db).await?;
    for route in &routes {
        let at = format!("{} {}", route.method, route.path);
        let good = claims("c-owner", route.scope);
        let with = |change: &dyn Fn(&mut Map<String, Value>)| {
            let mut c = good.clone();
            change(&mut c);
            format!("Bearer {}", sign(&c))
        };
        let cases: Vec<(&str, Option<String>, &str)> = vec![
            ("no token", None, "no token"),
            ("not a JWT", Some("Bearer abc.def".into()), "well-formed"),
            (
                "another key's signature",
                Some(format!("Bearer {}", stranger.sign(&good)?)),
                "signature",
            ),
            (
                "another issuer",
                Some(with(&|c| {
                    c.insert("iss".into(), json!("https://elsewhere.example"));
                })),
                "issuer",
            ),
            (
                "another audience",
                Some(with(&|c| {
                    c.insert("aud".into(), json!("someone-else"));
                })),
                "audience",
            ),
            (
                "expired",
                Some(with(&|c| {
                    c.insert("exp".into(), json!(now() - 5));
                })),
                "expired",
            ),
            (
                "not yet valid",
                Some(with(&|c| {
                    c.insert("nbf".into(), json!(now() + 300));
                })),
                "not valid yet",
            ),
        ];
        for (case, authorization, why) in cases {
            let (status, body, challenge) = send(&running, route, authorization.as_deref()).await?;
            assert_eq!(status, 401, "{at}, {case}: {body}");
            assert_eq!(body, json!({"message": "Unauthorized"}), "{at}, {case}");
            let challenge = challenge.unwrap_or_default();
            assert!(challenge.contains(why), "{at}, {case}: {challenge}");
        }
        let other_scope = with(&|c| {
            c.insert("scope".into(), json!("profile:read"));
        });
        let (status, body, challenge) = send(&running, route, Some(&other_scope)).await?;
        assert_eq!(status, 403, "{at}, missing scope: {body}");
        assert_eq!(body, json!({"message": "Forbidden"}), "{at}");
        assert!(
            challenge.unwrap_or_default().contains("insufficient_scope"),
            "{at}"
        );
    }
    assert_eq!(
        written(&db).await?,
        before,
        "a refused request wrote something"
    );

    // The same routes with a valid token carrying only the route's scope pass.
    for route in &routes {
        let authorization = format!("Bearer {}", sign(&claims("c-owner", route.scope)));
        let (status, body, _) = send(&running, route, Some(&authorization)).await?;
        assert!(
            (200..300).contains(&status),
            "{} {}: {status} {body}",
            route.method,
            route.path
        );
    }
    running.stop().await
}

#[tokio::test]
async fn customers_see_only_their_own_orders_and_an_admin_sees_all() -> Result<()> {
    let db = TestDb::fresh().await?;
    let running = tests::emulated::start(&db, Mode::InProcess, &[]).await?;
    let (alice, bob) = (tests::client_as("alice"), tests::client_as("bob"));
    let stocked = alice
        .put(running.url("/inventory/LAMP-1"))
        .header("content-type", "application/json")
        .body(r#"{"available": 10, "price_cents": 2500}"#)
        .send()
        .await?;
    assert_eq!(stocked.status(), 200);
    let body = r#"{"items":[{"sku":"LAMP-1","quantity":1,"unit_price_cents":2500}]}"#;
    let post = |client: &reqwest::Client, key: &str| {
        client
            .post(running.url("/orders"))
            .header("content-type", "application/json")
            .header("idempotency-key", key.to_owned())
            .body(body)
            .send()
    };
    let first = post(&alice, "same-key").await?;
    assert_eq!(first.status(), 201);
    let order: Value = first.json().await?;
    let id = order["id"].as_str().context("an id")?.to_owned();

    // Bob's request with Alice's key is his own: a new order, not her replay.
    let bobs = post(&bob, "same-key").await?;
    assert_eq!(bobs.status(), 201, "the same key from another customer");
    assert!(bobs.headers().get("idempotent-replayed").is_none());
    let bobs: Value = bobs.json().await?;
    assert_ne!(bobs["id"], order["id"]);
    // Alice's retry is her replay.
    let again = post(&alice, "same-key").await?;
    let again: Value = again.json().await?;
    assert_eq!(again["id"], order["id"]);

    let path = format!("/orders/{id}");
    let read = bob.get(running.url(&path)).send().await?;
    assert_eq!(
        read.status(),
        404,
        "another customer's order does not exist for Bob"
    );
    let cancel = bob
        .post(running.url(&format!("{path}/cancel")))
        .send()
        .await?;
    assert_eq!(cancel.status(), 404);
    let status: String = sqlx::query_scalar("SELECT status FROM orders.orders WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&db.pool)
        .await?;
    assert_ne!(status, "CANCELLED", "Bob cancelled Alice's order");
    assert_eq!(alice.get(running.url(&path)).send().await?.status(), 200);

    let admin = format!(
        "Bearer {}",
        sign(&claims("ops-1", "orders:read orders:write orders:admin"))
    );
    let seen = reqwest::Client::new()
        .get(running.url(&path))
        .header("authorization", &admin)
        .send()
        .await?;
    assert_eq!(seen.status(), 200, "an admin reads any order");
    let cancelled = reqwest::Client::new()
        .post(running.url(&format!("{path}/cancel")))
        .header("authorization", &admin)
        .send()
        .await?;
    assert!(
        cancelled.status().is_success(),
        "an admin cancels any order: {}",
        cancelled.status()
    );
    running.stop().await
}

/// A Python with PyJWT and `cryptography`: the system's when it has them, else a
/// virtual environment under `target/` with the pinned versions installed from PyPI
/// (once), so that `cargo test --workspace` needs no set-up of its own.
fn pyjwt_python() -> Result<std::path::PathBuf> {
    let has_pyjwt = |python: &std::path::Path| {
        Command::new(python)
            .args(["-c", "import jwt, cryptography"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let system = std::path::PathBuf::from("python3");
    if has_pyjwt(&system) {
        return Ok(system);
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyjwt-venv");
    let python = venv.join("bin/python");
    if !has_pyjwt(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("python3 -m venv")?;
        ensure!(made.success(), "could not make {}", venv.display());
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "PyJWT[crypto]==2.10.1"])
            .status()
            .context("pip install PyJWT")?;
        ensure!(
            installed.success(),
            "could not install PyJWT into {}",
            venv.display()
        );
    }
    Ok(python)
}

/// A key pair, JWKS file and RS256 token made by PyJWT and `cryptography`
/// (Python), not by this project's code.
fn python_token(dir: &std::path::Path, issuer: &str, audience: &str) -> Result<String> {
    let script = r#"
import json, sys, time
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
jwks_path, issuer, audience = sys.argv[1:4]
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
jwk.update({"kid": "python-1", "alg": "RS256", "use": "sig"})
with open(jwks_path, "w") as f:
    json.dump({"keys": [jwk]}, f)
now = int(time.time())
claims = {"sub": "py-customer", "iss": issuer, "aud": audience, "iat": now, "exp": now + 600,
          "scope": "orders:read orders:write inventory:read inventory:write"}
print(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "python-1"}))
"#;
    let output = Command::new(pyjwt_python()?)
        .arg("-c")
        .arg(script)
        .arg(dir.join("jwks.json"))
        .arg(issuer)
        .arg(audience)
        .output()
        .context("running python3")?;
    ensure!(
        output.status.success(),
        "PyJWT could not make a token (pip install 'PyJWT[crypto]'): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

#[tokio::test]
async fn a_jwks_of_another_librarys_keys_is_trusted_with_the_issuer_given() -> Result<()> {
    let dir = tempdir()?;
    let (issuer, audience) = ("https://issuer.example", "shop-api");
    let token = python_token(&dir, issuer, audience)?;
    let trust = Trust::jwks_file(&dir.join("jwks.json"))?;

    // Without the issuer and audience (a user pool only AWS knows) it refuses to start.
    let db = TestDb::fresh().await?;
    let refused = start_with(
        &db,
        Mode::InProcess,
        &[],
        tests::emulated::template()?,
        trust.clone(),
    )
    .await;
    let error = format!("{:#}", refused.err().context("started without an issuer")?);
    assert!(error.contains("--parameter-overrides"), "{error}");

    let template = template_with(&[("AuthIssuer", issuer), ("AuthAudience", audience)])?;
    let running = start_with(&db, Mode::InProcess, &[], template, trust).await?;
    let answer = reqwest::Client::new()
        .get(running.url("/inventory/NOTHING"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await?;
    assert_eq!(
        answer.status(),
        404,
        "the function answered: the token passed"
    );
    let created = reqwest::Client::new()
        .post(running.url("/orders"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(r#"{"items":[{"sku":"LAMP-1","quantity":1,"unit_price_cents":2500}]}"#)
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    let customer: String = sqlx::query_scalar("SELECT customer_id FROM orders.orders")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(
        customer, "py-customer",
        "the customer is the token's subject"
    );
    // The development key is not trusted any more.
    let dev = reqwest::Client::new()
        .get(running.url("/inventory/NOTHING"))
        .header("authorization", tests::bearer("c-1"))
        .send()
        .await?;
    assert_eq!(dev.status(), 401);
    running.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn the_token_command_key_is_the_one_up_trusts() -> Result<()> {
    let dir = tempdir()?;
    let template = tests::emulated::template()?;
    // `emulator token` and `emulator up` both take the key of the state directory.
    let printed = emulator::auth::dev_token(
        &template,
        &DevKey::load_or_create(&dir)?,
        "cli-1",
        None,
        Duration::from_secs(60),
    )?;
    let trust = Trust::DevKey(std::sync::Arc::new(DevKey::load_or_create(&dir)?));
    let db = TestDb::fresh().await?;
    let running = start_with(&db, Mode::InProcess, &[], template, trust).await?;
    let answer = reqwest::Client::new()
        .get(running.url("/inventory/NOTHING"))
        .header("authorization", format!("Bearer {printed}"))
        .send()
        .await?;
    assert_eq!(
        answer.status(),
        404,
        "the token passed and the function answered"
    );
    running.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn past_the_burst_api_gateway_answers_429_and_under_it_everything_passes() -> Result<()> {
    let db = TestDb::fresh().await?;
    let template = template_with(&[
        ("ApiThrottlingBurstLimit", "5"),
        ("ApiThrottlingRateLimit", "0.01"),
    ])?;
    let running = start_with(&db, Mode::InProcess, &[], template, tests::auth::trust()).await?;
    let http = tests::client_as("c-1");
    // (A PUT is a route of its own, with its own bucket.)
    let put = http
        .put(running.url("/inventory/LAMP-1"))
        .header("content-type", "application/json")
        .body(r#"{"available": 5, "price_cents": 2500}"#)
        .send()
        .await?;
    assert_eq!(put.status(), 200);
    // Eight at once against a burst of five: five pass, three are refused.
    let answers = futures::future::join_all(
        (0..8).map(|_| http.get(running.url("/inventory/LAMP-1")).send()),
    )
    .await;
    let mut statuses = Vec::new();
    for answer in answers {
        let answer = answer?;
        let status = answer.status().as_u16();
        if status == 429 {
            assert_eq!(
                answer.json::<Value>().await?,
                json!({"message": "Too Many Requests"})
            );
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    // Each route has its own bucket.
    let other = http
        .get(running.url("/orders/0193f6a2-0000-7000-8000-000000000000"))
        .send()
        .await?;
    assert_eq!(other.status(), 404);
    running.stop().await
}

#[tokio::test]
async fn cors_preflights_are_answered_by_the_gateway_for_allowed_origins() -> Result<()> {
    let db = TestDb::fresh().await?;
    let template = template_with(&[("AllowedOrigins", "https://shop.example")])?;
    let running = start_with(&db, Mode::InProcess, &[], template, tests::auth::trust()).await?;
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(Method::OPTIONS, running.url("/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let allowed = preflight("https://shop.example").await?;
    assert_eq!(allowed.status(), 204, "answered without a token");
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let methods = allowed.headers()["access-control-allow-methods"].to_str()?;
    assert!(methods.contains("POST"), "{methods}");
    let elsewhere = preflight("https://evil.example").await?;
    assert!(elsewhere
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let created = tests::client_as("c-1")
        .post(running.url("/orders"))
        .header("origin", "https://shop.example")
        .header("content-type", "application/json")
        .body(r#"{"items":[{"sku":"LAMP-1","quantity":1,"unit_price_cents":2500}]}"#)
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    assert_eq!(
        created.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let exposed = created.headers()["access-control-expose-headers"].to_str()?;
    assert!(
        exposed.to_ascii_lowercase().contains("location"),
        "{exposed}"
    );
    running.stop().await
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("auth-test-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
