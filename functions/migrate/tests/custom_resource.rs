//! The migrate function against the real PostgreSQL (an empty database of its
//! own per test), with a local HTTP server standing in for CloudFormation's
//! pre-signed `ResponseURL`.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use lambda_runtime::{Context, LambdaEvent};
use migrate::{Answer, Answered, Config, Deps};
use serde_json::{json, Value};
use shared::config::Env;
use sqlx::migrate::Migrate as _;
use sqlx::{Connection as _, PgConnection};
use test_support::TestDb;
use tokio::sync::mpsc;

const SIGNATURE: &str = "sekrit-signature-Zm9v";
const ACCESS_KEY: &str = "AKIAEXAMPLEKEYID";
const PASSWORD: &str = "hunter2-database-password";
const STACK_ID: &str =
    "arn:aws:cloudformation:us-east-1:000000000000:stack/orders/5b1c2a10-0000-4000-8000-000000000000";
const REQUEST_ID: &str = "9a1d7f52-0000-4000-8000-000000000001";

/// Whether sqlx's bookkeeping table exists in `db` (a migration run creates it).
async fn touched(db: &TestDb) -> anyhow::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(&db.pool)
            .await?,
    )
}

/// A connection of its own to `db`.
async fn connect(db: &TestDb) -> anyhow::Result<PgConnection> {
    Ok(PgConnection::connect(&db.url()).await?)
}

/// One request the stand-in for the `ResponseURL` received.
#[derive(Debug)]
struct Received {
    method: String,
    path_and_query: String,
    content_type: Option<String>,
    body: Value,
}

/// A local HTTP server that records every request and answers `status`.
struct ResponseServer {
    base: String,
    received: mpsc::UnboundedReceiver<Received>,
}

impl ResponseServer {
    async fn start(status: StatusCode) -> anyhow::Result<Self> {
        let (tx, received) = mpsc::unbounded_channel();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let tx = tx.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                let _ = tx.send(Received {
                    method: parts.method.to_string(),
                    path_and_query: parts
                        .uri
                        .path_and_query()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    content_type: parts
                        .headers
                        .get("content-type")
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                });
                status
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { base, received })
    }

    /// A URL shaped like CloudFormation's pre-signed S3 URL, on this server.
    fn url(&self) -> String {
        format!("{}{}", self.base, presigned_path())
    }

    async fn next(&mut self) -> anyhow::Result<Received> {
        tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the server stopped"))
    }

    fn nothing_more(&mut self) -> bool {
        self.received.try_recv().is_err()
    }
}

fn presigned_path() -> String {
    format!(
        "/arn%3Aaws%3Acloudformation%3Aus-east-1%3A000000000000%3Astack/orders/5b1c2a10%7CDatabaseMigrations%7C{REQUEST_ID}?AWSAccessKeyId={ACCESS_KEY}&Expires=1700000000&Signature={SIGNATURE}"
    )
}

/// A port with nothing listening.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A custom resource request as CloudFormation sends it.
fn request(kind: &str, response_url: &str, physical_resource_id: Option<&str>) -> Value {
    let properties = json!({
        "ServiceToken": "arn:aws:lambda:us-east-1:000000000000:function:orders-MigrateFunction:live",
        "FunctionVersion": "arn:aws:lambda:us-east-1:000000000000:function:orders-MigrateFunction:3"
    });
    let mut event = json!({
        "RequestType": kind,
        "ServiceToken": properties["ServiceToken"],
        "ResponseURL": response_url,
        "StackId": STACK_ID,
        "RequestId": REQUEST_ID,
        "LogicalResourceId": "DatabaseMigrations",
        "ResourceType": "Custom::DatabaseMigrations",
        "ResourceProperties": properties,
    });
    if kind == "Update" {
        event["OldResourceProperties"] = event["ResourceProperties"].clone();
    }
    if let Some(id) = physical_resource_id {
        event["PhysicalResourceId"] = json!(id);
    }
    event
}

/// Lambda's context with `left` before the deadline.
fn context(left: Duration) -> Context {
    let now_ms = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits");
    let mut context = Context::default();
    context.request_id = "0f6c1b7e-0000-4000-8000-00000000abcd".into();
    context.deadline = now_ms + u64::try_from(left.as_millis()).expect("fits");
    context.env_config = Arc::new(lambda_runtime::Config {
        function_name: "orders-MigrateFunction".into(),
        memory: 256,
        version: "3".into(),
        log_stream: "2026/11/24/[3]0123456789abcdef".into(),
        log_group: "/aws/lambda/orders-MigrateFunction".into(),
    });
    context
}

fn deps(vars: &[(&str, &str)]) -> Deps {
    let env = Env::from_pairs(vars.iter().copied());
    Deps::new(&Config::from_env(&env).expect("valid configuration")).expect("an HTTP client")
}

fn unreachable_database() -> String {
    format!(
        "postgres://orders_app:{PASSWORD}@127.0.0.1:{}/orders",
        closed_port()
    )
}

/// Every version of the embedded migrations, in order.
fn all_versions() -> Vec<i64> {
    shared::db::versions(&migrate::migrations())
        .into_iter()
        .collect()
}

fn joined(versions: &[i64]) -> String {
    versions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The log lines of one test, at every level.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this thread's logs (each test runs on a runtime of its own thread).
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }

    /// No credential reached a log line: neither the URL's signature nor the password.
    fn assert_clean(&self) {
        let text = self.text();
        assert!(!text.is_empty(), "nothing was logged");
        for secret in [SIGNATURE, ACCESS_KEY, PASSWORD] {
            assert!(
                !text.contains(secret),
                "{secret} leaked into the logs:\n{text}"
            );
        }
    }
}

/// Create applies every migration and answers SUCCESS at the exact pre-signed
/// URL, echoing the request's ids, with the versions in `Data`; an Update then
/// finds nothing to do and keeps the physical id.
#[tokio::test]
async fn create_applies_the_migrations_and_answers_success() -> anyhow::Result<()> {
    let (logs, _guard) = Logs::capture();
    let db = TestDb::empty().await?;
    let mut server = ResponseServer::start(StatusCode::OK).await?;
    let deps = deps(&[("DATABASE_URL", &db.url())]);

    let answer = migrate::handle(
        &deps,
        LambdaEvent::new(
            request("Create", &server.url(), None),
            context(Duration::from_secs(60)),
        ),
    )
    .await?;

    let received = server.next().await?;
    assert_eq!(received.method, "PUT");
    assert_eq!(received.path_and_query, presigned_path());
    // The signature covers Content-Type: none is sent.
    assert_eq!(received.content_type, None);
    let body = &received.body;
    let versions = all_versions();
    let physical = format!("{}-migrations", db.name());
    assert_eq!(body["Status"], "SUCCESS", "{body}");
    assert_eq!(body["StackId"], STACK_ID);
    assert_eq!(body["RequestId"], REQUEST_ID);
    assert_eq!(body["LogicalResourceId"], "DatabaseMigrations");
    assert_eq!(body["PhysicalResourceId"], physical.as_str());
    assert_eq!(body["Data"]["Applied"], joined(&versions).as_str());
    assert_eq!(
        body["Data"]["PendingBefore"],
        versions.len().to_string().as_str()
    );
    assert_eq!(
        body["Data"]["LatestVersion"],
        versions.last().expect("migrations").to_string().as_str()
    );
    assert!(
        body["Reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("applied ")),
        "{body}"
    );
    assert!(matches!(
        answer,
        Answer::CloudFormation(Answered { ref physical_resource_id, .. }) if *physical_resource_id == physical
    ));

    // The schema is really there.
    let mut conn = connect(&db).await?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(applied, i64::try_from(versions.len())?);
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname IN ('orders', 'inventory')",
    )
    .fetch_one(&mut conn)
    .await?;
    assert_eq!(schemas, 2);
    conn.close().await?;

    migrate::handle(
        &deps,
        LambdaEvent::new(
            request("Update", &server.url(), Some(&physical)),
            context(Duration::from_secs(60)),
        ),
    )
    .await?;
    let body = server.next().await?.body;
    assert_eq!(body["Status"], "SUCCESS", "{body}");
    assert_eq!(body["PhysicalResourceId"], physical.as_str());
    assert_eq!(body["Data"]["Applied"], "");
    assert_eq!(body["Data"]["PendingBefore"], "0");
    assert!(server.nothing_more());
    logs.assert_clean();
    Ok(())
}

/// Delete answers SUCCESS and never touches the database, not even one that
/// cannot be reached.
#[tokio::test]
async fn delete_answers_success_and_touches_nothing() -> anyhow::Result<()> {
    let (logs, _guard) = Logs::capture();
    let db = TestDb::empty().await?;
    let mut server = ResponseServer::start(StatusCode::OK).await?;
    for url in [db.url(), unreachable_database()] {
        let deps = deps(&[("DATABASE_URL", &url)]);
        let answer = migrate::handle(
            &deps,
            LambdaEvent::new(
                request("Delete", &server.url(), Some("orders-migrations")),
                context(Duration::from_secs(60)),
            ),
        )
        .await?;
        let body = server.next().await?.body;
        assert_eq!(body["Status"], "SUCCESS", "{body}");
        assert_eq!(body["PhysicalResourceId"], "orders-migrations");
        assert_eq!(body["RequestId"], REQUEST_ID);
        assert!(matches!(answer, Answer::CloudFormation(_)));
    }
    assert!(!touched(&db).await?, "Delete ran migrations");
    logs.assert_clean();
    Ok(())
}

/// A database that cannot be reached is answered FAILED with a reason that
/// names it (and the log stream), well before the function's timeout; the
/// password appears nowhere.
#[tokio::test]
async fn an_unreachable_database_answers_failed_with_a_reason() -> anyhow::Result<()> {
    let (logs, _guard) = Logs::capture();
    let mut server = ResponseServer::start(StatusCode::OK).await?;
    let url = unreachable_database();
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap_or_default()
        .to_owned();
    let deps = deps(&[
        ("DATABASE_URL", &url),
        ("DATABASE_ACQUIRE_TIMEOUT_MS", "300"),
    ]);

    let answer = migrate::handle(
        &deps,
        LambdaEvent::new(
            request("Create", &server.url(), None),
            context(Duration::from_secs(60)),
        ),
    )
    .await?;

    let body = server.next().await?.body;
    assert_eq!(body["Status"], "FAILED", "{body}");
    let reason = body["Reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!(
            "cannot connect to the database orders at 127.0.0.1:{port}"
        )),
        "{reason}"
    );
    assert!(
        reason.ends_with("(log stream 2026/11/24/[3]0123456789abcdef)"),
        "{reason}"
    );
    assert!(!reason.contains(PASSWORD), "{reason}");
    assert_eq!(body["PhysicalResourceId"], "orders-migrations");
    assert_eq!(body["Data"], json!({}));
    // CloudFormation was answered, so the invocation itself succeeded.
    assert!(matches!(answer, Answer::CloudFormation(_)));
    logs.assert_clean();
    Ok(())
}

/// Migrations that cannot finish in time (another run holds sqlx's lock) are
/// stopped and answered FAILED before the deadline; the stopped run leaves
/// nothing behind, so the next one applies everything.
#[tokio::test]
async fn running_out_of_time_answers_failed_before_the_deadline() -> anyhow::Result<()> {
    let (logs, _guard) = Logs::capture();
    let db = TestDb::empty().await?;
    let mut server = ResponseServer::start(StatusCode::OK).await?;
    let deps = deps(&[("DATABASE_URL", &db.url()), ("SAFETY_MARGIN_MS", "1000")]);

    let mut holder = connect(&db).await?;
    holder.lock().await?;
    let started = Instant::now();
    migrate::handle(
        &deps,
        LambdaEvent::new(
            request("Create", &server.url(), None),
            context(Duration::from_millis(2500)),
        ),
    )
    .await?;
    let body = server.next().await?.body;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(body["Status"], "FAILED", "{body}");
    let reason = body["Reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("the migrations did not finish in the 1s left"),
        "{reason}"
    );

    holder.unlock().await?;
    holder.close().await?;
    migrate::handle(
        &deps,
        LambdaEvent::new(
            request("Update", &server.url(), Some("x-migrations")),
            context(Duration::from_secs(60)),
        ),
    )
    .await?;
    let body = server.next().await?.body;
    assert_eq!(body["Status"], "SUCCESS", "{body}");
    assert_eq!(body["Data"]["Applied"], joined(&all_versions()).as_str());
    logs.assert_clean();
    Ok(())
}

/// Invoked directly (`aws lambda invoke` with `{}`, or any event that is not a
/// CloudFormation request), it applies the migrations and returns what it did.
#[tokio::test]
async fn a_direct_invocation_applies_and_reports() -> anyhow::Result<()> {
    let db = TestDb::empty().await?;
    let deps = deps(&[("DATABASE_URL", &db.url())]);
    let versions = all_versions();

    let first = migrate::handle(
        &deps,
        LambdaEvent::new(json!({}), context(Duration::from_secs(60))),
    )
    .await?;
    assert_eq!(
        serde_json::to_value(&first)?,
        json!({"applied": versions, "pending_before": versions.len(), "latest_version": versions.last()})
    );
    let scheduled = json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
    let again = migrate::handle(
        &deps,
        LambdaEvent::new(scheduled, context(Duration::from_secs(60))),
    )
    .await?;
    assert_eq!(
        serde_json::to_value(&again)?,
        json!({"applied": [], "pending_before": 0, "latest_version": versions.last()})
    );

    // Failing, it is the invocation's error, typed for Lambda.
    let unreachable = deps_unreachable();
    let error = migrate::handle(
        &unreachable,
        LambdaEvent::new(json!({}), context(Duration::from_secs(60))),
    )
    .await
    .expect_err("no database");
    let diagnostic = lambda_runtime::Diagnostic::from(error);
    assert_eq!(diagnostic.error_type, "Migrate.Failed");
    assert!(diagnostic
        .error_message
        .starts_with("cannot connect to the database orders"));
    assert!(!diagnostic.error_message.contains(PASSWORD));
    Ok(())
}

fn deps_unreachable() -> Deps {
    deps(&[
        ("DATABASE_URL", &unreachable_database()),
        ("DATABASE_ACQUIRE_TIMEOUT_MS", "300"),
    ])
}

/// A request that cannot be read is still answered: FAILED, with why.
#[tokio::test]
async fn a_malformed_request_is_answered_failed() -> anyhow::Result<()> {
    let mut server = ResponseServer::start(StatusCode::OK).await?;
    let deps = deps_unreachable();
    let mut event = request("Create", &server.url(), None);
    event["RequestType"] = json!("Replace");
    migrate::handle(
        &deps,
        LambdaEvent::new(event, context(Duration::from_secs(60))),
    )
    .await?;
    let body = server.next().await?.body;
    assert_eq!(body["Status"], "FAILED", "{body}");
    assert_eq!(body["RequestId"], REQUEST_ID);
    assert!(
        body["Reason"].as_str().is_some_and(
            |r| r.starts_with("malformed custom resource request: unknown variant `Replace`")
        ),
        "{body}"
    );
    Ok(())
}

/// An answer that cannot be delivered (nothing listening; a refusal, retried
/// three times) fails the invocation with an error that shows the URL without
/// its query string.
#[tokio::test]
async fn an_undeliverable_answer_is_an_error_without_the_signature() -> anyhow::Result<()> {
    let (logs, _guard) = Logs::capture();
    let deps = deps_unreachable();
    let nowhere = format!("http://127.0.0.1:{}{}", closed_port(), presigned_path());
    let error = migrate::handle(
        &deps,
        LambdaEvent::new(
            request("Delete", &nowhere, Some("p")),
            context(Duration::from_secs(60)),
        ),
    )
    .await
    .expect_err("nothing listens");
    let message = format!("{error} {error:?}");
    assert!(
        message.contains("sending the answer to http://127.0.0.1:"),
        "{message}"
    );
    assert!(message.contains("Connection refused"), "{message}");
    for secret in [SIGNATURE, ACCESS_KEY] {
        assert!(!message.contains(secret), "{message}");
    }

    let mut refusing = ResponseServer::start(StatusCode::FORBIDDEN).await?;
    let error = migrate::handle(
        &deps,
        LambdaEvent::new(
            request("Delete", &refusing.url(), Some("p")),
            context(Duration::from_secs(60)),
        ),
    )
    .await
    .expect_err("refused");
    let diagnostic = lambda_runtime::Diagnostic::from(error);
    assert_eq!(diagnostic.error_type, "Migrate.NotAnswered");
    assert!(
        diagnostic
            .error_message
            .ends_with("refused the answer with HTTP 403 Forbidden"),
        "{}",
        diagnostic.error_message
    );
    for _ in 0..3 {
        refusing.next().await?;
    }
    assert!(refusing.nothing_more());

    // A remote plain-HTTP URL is refused before anything is sent.
    let error = migrate::handle(
        &deps,
        LambdaEvent::new(
            request(
                "Delete",
                &format!("http://example.com{}", presigned_path()),
                Some("p"),
            ),
            context(Duration::from_secs(60)),
        ),
    )
    .await
    .expect_err("not https");
    assert_eq!(
        error.to_string(),
        "CloudFormation was not answered: the ResponseURL is not an HTTPS URL"
    );
    logs.assert_clean();
    Ok(())
}
