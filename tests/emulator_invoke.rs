//! A real function binary (the test fixture) behind the emulator, reached two
//! ways: the Lambda Invoke API, answering as AWS does, and an `HttpApi` route,
//! where a failing function is API Gateway's `500` JSON and a timed-out one is
//! killed, reported, and replaced while the emulator keeps serving.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use emulator::system::{Mode, Options, System};
use serde_json::{json, Value};
use tests::emulated::RunningEmulator;

const TEMPLATE: &str = r#"
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Timeout: 1
Resources:
  FixtureFunction:
    Type: AWS::Serverless::Function
    Metadata:
      BuildMethod: rust-cargolambda
      BuildProperties:
        Binary: lambda-fixture
    Properties:
      CodeUri: .
      Environment:
        Variables:
          FIXTURE_VAR: from-the-template
      Events:
        Fixture:
          Type: HttpApi
          Properties:
            Path: /fixture/{name}
            Method: POST
"#;

/// A function no registry links runs in the default mode too: the emulator
/// finds (or builds) its binary and runs it behind the Runtime API. So a
/// function added to template.yaml runs without editing the emulator.
#[tokio::test]
async fn a_function_the_registry_does_not_link_runs_as_its_binary() -> anyhow::Result<()> {
    let system = System::start(Options {
        template: emulator::template::parse(TEMPLATE)?,
        mode: Mode::InProcess,
        database_url: tests::admin_url(),
        redis_url: tests::redis_url(),
        redis_cluster: false,
        trust: tests::auth::trust(),
        registry: std::sync::Arc::new(shop::Shop),
    })
    .await?;
    let banner = system.banner("127.0.0.1:0");
    assert!(
        banner.contains("FixtureFunction (lambda-fixture, runtime API"),
        "{banner}"
    );
    let served = tests::emulated::serve(system, tests::unique_namespace()).await?;
    let answer = reqwest::Client::new()
        .post(format!(
            "{}/2015-03-31/functions/FixtureFunction/invocations",
            served.base
        ))
        .body(r#"{"echo": 7}"#)
        .send()
        .await?;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.json::<Value>().await?["echo"], 7);
    served.stop().await
}

async fn serve() -> anyhow::Result<RunningEmulator> {
    let binaries = Path::new(env!("CARGO_BIN_EXE_lambda-fixture"))
        .parent()
        .context("the fixture has a directory")?
        .to_path_buf();
    let mut template = emulator::template::parse(TEMPLATE)?;
    emulator::template::apply_env_overrides(
        &mut template,
        &json!({"FixtureFunction": {"ADDED_BY_OVERRIDE": "yes"}}).to_string(),
    )?;
    let system = System::start(Options {
        template,
        mode: Mode::RuntimeApi {
            binaries,
            concurrency: 4,
        },
        database_url: tests::admin_url(),
        redis_url: tests::redis_url(),
        redis_cluster: false,
        trust: tests::auth::trust(),
        registry: std::sync::Arc::new(emulator::functions::NothingLinked),
    })
    .await?;
    tests::emulated::serve(system, tests::unique_namespace()).await
}

#[tokio::test]
async fn the_invoke_api_answers_like_aws() -> anyhow::Result<()> {
    let served = serve().await?;
    let http = reqwest::Client::new();
    let invoke = |name: &str| format!("{}/2015-03-31/functions/{name}/invocations", served.base);

    let ok = http
        .post(invoke("FixtureFunction"))
        .body(r#"{"echo": 42}"#)
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().get("x-amz-function-error").is_none());
    assert_eq!(ok.headers()["x-amz-executed-version"], "$LATEST");
    let body: Value = ok.json().await?;
    assert_eq!(body["echo"], 42);
    assert_eq!(
        body["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:FixtureFunction"
    );
    assert_eq!(body["env"]["FIXTURE_VAR"], "from-the-template");
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let deadline = body["deadline"].as_u64().unwrap_or_default();
    assert!(
        deadline > now_ms && deadline <= now_ms + 1_000,
        "deadline {deadline}, now {now_ms}"
    );

    // The binary name and the ARN name the same function.
    let by_arn = http
        .post(invoke(
            "arn:aws:lambda:us-east-1:000000000000:function:lambda-fixture",
        ))
        .body(r#"{"echo": 1}"#)
        .send()
        .await?;
    assert_eq!(by_arn.status(), 200);

    let failed = http
        .post(invoke("FixtureFunction"))
        .body(r#"{"fail": "no stock today"}"#)
        .send()
        .await?;
    assert_eq!(failed.status(), 200);
    assert_eq!(failed.headers()["x-amz-function-error"], "Unhandled");
    let error: Value = failed.json().await?;
    assert_eq!(error["errorMessage"], "no stock today");

    let started = Instant::now();
    let timed_out = http
        .post(invoke("FixtureFunction"))
        .body(r#"{"sleep_ms": 5000}"#)
        .send()
        .await?;
    assert!(started.elapsed() < Duration::from_millis(2_500));
    assert_eq!(timed_out.status(), 200);
    assert_eq!(timed_out.headers()["x-amz-function-error"], "Unhandled");
    let error: Value = timed_out.json().await?;
    assert_eq!(error["errorType"], "Sandbox.Timedout");
    assert!(
        error["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("Task timed out after 1.00 seconds"),
        "{error}"
    );

    let missing = http
        .post(invoke("NoSuchFunction"))
        .body("{}")
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["x-amzn-errortype"],
        "ResourceNotFoundException"
    );

    let not_json = http
        .post(invoke("FixtureFunction"))
        .body("{not json")
        .send()
        .await?;
    assert_eq!(not_json.status(), 400);

    let asynchronous = http
        .post(invoke("FixtureFunction"))
        .header("x-amz-invocation-type", "Event")
        .body(r#"{"echo": 2}"#)
        .send()
        .await?;
    assert_eq!(asynchronous.status(), 202);
    served.stop().await
}

#[tokio::test]
async fn over_http_a_failing_or_hanging_function_is_a_gateway_error_and_serving_goes_on(
) -> anyhow::Result<()> {
    let served = serve().await?;
    let http = reqwest::Client::new();
    let url = format!("{}/fixture/a%20b?x=1&x=2&y=", served.base);

    // The real binary receives the API Gateway v2 event with full fidelity.
    let ok = http
        .post(&url)
        .header("cookie", "session=abc; theme=dark")
        .header("x-custom", "one")
        .json(&json!({"echo": "hi"}))
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-fixture"], "yes");
    assert_eq!(ok.headers()["set-cookie"], "seen=1; Path=/");
    let body: Value = ok.json().await?;
    assert_eq!(body["result"]["echo"], "hi");
    // A variable the template does not declare, added by the overrides file.
    assert_eq!(body["result"]["env"]["ADDED_BY_OVERRIDE"], "yes");
    let event = &body["event"];
    assert_eq!(event["version"], "2.0");
    assert_eq!(event["routeKey"], "POST /fixture/{name}");
    assert_eq!(event["rawPath"], "/fixture/a%20b");
    assert_eq!(event["rawQueryString"], "x=1&x=2&y=");
    assert_eq!(event["queryStringParameters"]["x"], "1,2");
    assert_eq!(event["pathParameters"]["name"], "a b");
    assert_eq!(event["cookies"], json!(["session=abc", "theme=dark"]));
    assert_eq!(event["headers"]["x-custom"], "one");
    assert_eq!(event["requestContext"]["http"]["method"], "POST");
    assert_eq!(event["requestContext"]["http"]["sourceIp"], "127.0.0.1");
    assert!(event["requestContext"]["requestId"].is_string());
    assert!(event["requestContext"]["timeEpoch"].is_i64());
    assert_eq!(event["isBase64Encoded"], false);

    let failed = http
        .post(&url)
        .json(&json!({"fail": "boom"}))
        .send()
        .await?;
    assert_eq!(failed.status(), 500);
    assert_eq!(
        failed.json::<Value>().await?,
        json!({"message": "Internal Server Error"})
    );

    let crashed = http.post(&url).json(&json!({"exit": 3})).send().await?;
    assert_eq!(crashed.status(), 500);

    let started = Instant::now();
    let hung = http
        .post(&url)
        .json(&json!({"sleep_ms": 10_000}))
        .send()
        .await?;
    assert_eq!(hung.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(2_500));

    // Still serving, on a fresh instance.
    let again = http.post(&url).json(&json!({"echo": 2})).send().await?;
    assert_eq!(again.status(), 200);
    let no_route = http
        .get(format!("{}/fixture/x", served.base))
        .send()
        .await?;
    assert_eq!(no_route.status(), 404);
    served.stop().await
}

#[tokio::test]
async fn the_invoke_api_refuses_browser_pages() -> anyhow::Result<()> {
    let served = serve().await?;
    let http = reqwest::Client::new();
    let url = format!(
        "{}/2015-03-31/functions/FixtureFunction/invocations",
        served.base
    );
    // A page's fetch carries its Origin; DNS rebinding carries a Host of its own.
    let from_page = http
        .post(&url)
        .header("origin", "https://evil.example")
        .body(r#"{"echo": 1}"#)
        .send()
        .await?;
    assert_eq!(from_page.status(), 403);
    assert_eq!(
        from_page
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok()),
        Some("AccessDeniedException")
    );
    let port = served
        .base
        .rsplit(':')
        .next()
        .context("the listener's port")?;
    let rebound = http
        .post(&url)
        .header("host", format!("evil.example:{port}"))
        .body(r#"{"echo": 1}"#)
        .send()
        .await?;
    assert_eq!(rebound.status(), 403);
    let direct = http.post(&url).body(r#"{"echo": 1}"#).send().await?;
    assert_eq!(direct.status(), 200);
    served.stop().await
}
