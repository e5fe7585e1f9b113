//! The `emulator` binary as a user runs it: `up` reads the template, prints its
//! banner, serves the saga end to end, and stops cleanly on SIGTERM with exit
//! code 0; `generate-event` and `invoke` work together; errors are one line.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{env_vars, fresh_database, spare_port, start_up, BIN, TEMPLATE};

#[tokio::test]
async fn up_serves_the_saga_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let database_url = fresh_database().await?;
    let namespace = format!("emu{}", uuid::Uuid::now_v7().simple());
    let vars = env_vars(&namespace)?;
    let port = spare_port()?;
    let state = std::env::temp_dir().join(&namespace);
    let started = Instant::now();
    let (mut child, lines) = start_up(
        &[
            "--port",
            &port.to_string(),
            "--template",
            TEMPLATE,
            "--parameter-overrides",
            "DefaultCreditLimitCents=1000000",
            "--env-vars",
            &vars.0.to_string_lossy(),
            "--state-dir",
            &state.to_string_lossy(),
        ],
        &database_url,
        &[],
    )?;
    let banner = common::banner(&lines)?;
    let ready_after = started.elapsed();
    for expected in [
        "POST   /orders/{id}/cancel",
        "-> CreateOrderFunction",
        "GET    /inventory/{sku}",
        "(token with inventory:write or inventory/write)",
        "schedule EveryMinute: rate(1 minute)",
        "stream source: group inventory on Order",
        "stream source: group customers on Order",
        "stream source: group order-saga on Reservation, Credit",
        "woken by LISTEN/NOTIFY",
        "MigrateFunction (migrate, in-process",
        "custom resource DatabaseMigrations: runs at deploy in AWS",
        "/2015-03-31/functions/{name}/invocations",
        "Tokens: the emulator's development key",
        "Not emulated (the template sets them; locally they do nothing):",
        "  Tracing (Globals): no X-Ray segments",
        "  LoggingConfig (CreateOrderFunction, ",
    ] {
        assert!(
            banner.contains(expected),
            "missing {expected:?} in\n{banner}"
        );
    }
    eprintln!("ready after {ready_after:?}:\n{banner}");

    let base = format!("http://127.0.0.1:{port}");
    // `emulator token` signs with the key `up` trusts: the state directory's.
    let token = common::token("c-1", &state)?;
    let anonymous = reqwest::Client::new()
        .get(format!("{base}/inventory/LAMP-9"))
        .send()
        .await?;
    assert_eq!(anonymous.status(), 401, "a request without a token");
    let http = common::client(&token)?;
    common::stock_lamp(&http, &base, 1).await?;
    let order: Value = http
        .post(format!("{base}/orders"))
        .json(&json!({"items":[{"sku":"LAMP-9","quantity":1,"unit_price_cents":100}]}))
        .send()
        .await?
        .json()
        .await?;
    let id = order["id"].as_str().unwrap_or_default().to_owned();
    // `wait-idle` returns once the saga has nothing in hand: the order is
    // decided by then, with no polling.
    let waited = Command::new(BIN)
        .args(["wait-idle", "--url", &base, "--timeout", "20"])
        .output()?;
    assert!(waited.status.success(), "{waited:?}");
    let now: Value = http
        .get(format!("{base}/orders/{id}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(now["status"], "CONFIRMED", "right after wait-idle");
    let status = Command::new(BIN)
        .args(["status", "--url", &base])
        .output()?;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.starts_with("idle\n"),
        "{status:?}"
    );
    assert!(text.contains("orders.outbox      pending 0"), "{text}");
    let status = Command::new(BIN)
        .args(["status", "--json", "--url", &base])
        .output()?;
    let reading: Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(reading["idle"], true, "{reading}");
    assert_eq!(reading["in_flight"], 0, "{reading}");

    // `emulator logs --order` reads the order's journey from the running
    // emulator: every hop's lines, in time order, each naming its function.
    let journey = Command::new(BIN)
        .args(["logs", "--url", &base, "--order", &id, "--json"])
        .output()?;
    assert!(journey.status.success(), "{journey:?}");
    let journey: Vec<Value> = String::from_utf8(journey.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let hops = |line: &Value| {
        (
            line["function_name"].as_str().unwrap_or("-").to_owned(),
            line["message"].as_str().unwrap_or("-").to_owned(),
        )
    };
    // One trace from the request to the saga's decision: `--trace` alone
    // finds every hop, whether or not its line names the order.
    let trace = journey
        .iter()
        .find(|l| l["function_name"] == "CreateOrderFunction")
        .and_then(|l| l["trace_id"].as_str())
        .expect("the request's line has its trace")
        .to_owned();
    let traced = Command::new(BIN)
        .args(["logs", "--url", &base, "--trace", &trace, "--json"])
        .output()?;
    let traced: Vec<Value> = String::from_utf8(traced.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    // The order's lines are its traces' (the POST's, and each GET's).
    for line in &traced {
        assert!(journey.contains(line), "{line} missing from the order's");
    }
    let seen: Vec<(String, String)> = traced.iter().map(hops).collect();
    for (function, message) in [
        ("CreateOrderFunction", "order created"),
        ("OutboxRelayFunction", "event published"),
        ("InventoryConsumerFunction", "event handled"),
        ("CustomersConsumerFunction", "event handled"),
        ("OrderSagaFunction", "event handled"),
    ] {
        assert!(
            seen.iter().any(|(f, m)| f == function && m == message),
            "no {message:?} of {function} in the order's trace {seen:#?}"
        );
    }
    let times: Vec<&str> = journey
        .iter()
        .map(|l| l["timestamp"].as_str().unwrap_or_default())
        .collect();
    assert!(times.is_sorted(), "in time order: {times:?}");
    let saga_only = Command::new(BIN)
        .args(["logs", "--url", &base, "--order", &id])
        .args(["--function", "OrderSagaFunction"])
        .output()?;
    let saga_only = String::from_utf8(saga_only.stdout)?;
    assert!(
        !saga_only.is_empty()
            && saga_only
                .lines()
                .all(|l| l.contains(" [OrderSagaFunction] ")),
        "{saga_only}"
    );

    // The Invoke API answers like AWS: a function error is a 200 with a header.
    let invoked = http
        .post(format!(
            "{base}/2015-03-31/functions/OutboxRelayFunction/invocations"
        ))
        .body(r#"{"not": "a scheduled event"}"#)
        .send()
        .await?;
    assert_eq!(invoked.status(), 200);
    assert_eq!(invoked.headers()["x-amz-function-error"], "Unhandled");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit 20 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = lines.try_iter().collect();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    // Nothing listens there any more: one clear line, exit code 1.
    let gone = Command::new(BIN)
        .args(["wait-idle", "--url", &base, "--timeout", "1"])
        .output()?;
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("is `emulator up` running there?"),
        "{gone:?}"
    );
    assert!(rest.iter().any(|l| l == "Stopped."), "{rest:?}");
    // Every line of a function's work names the function, as its log stream
    // would in CloudWatch: the order's journey reads function by function.
    let named = |message: &str, function: &str| {
        rest.iter()
            .any(|l| l.contains(message) && l.contains(&format!(" [{function}] ")))
    };
    for (message, function) in [
        ("order created", "CreateOrderFunction"),
        ("event published", "OutboxRelayFunction"),
        ("event handled", "InventoryConsumerFunction"),
        ("event handled", "CustomersConsumerFunction"),
        ("event handled", "OrderSagaFunction"),
    ] {
        assert!(
            named(message, function),
            "no {message:?} of {function} in {rest:#?}"
        );
    }
    for line in rest
        .iter()
        .filter(|l| l.contains("event handled") || l.contains("event published"))
    {
        assert!(
            line.contains("Function] "),
            "a line without its function: {line}"
        );
    }
    let _ = std::fs::remove_dir_all(&state);
    delete_streams(&namespace).await
}

async fn delete_streams(namespace: &str) -> anyhow::Result<()> {
    let client = redis::Client::open("redis://127.0.0.1:6379")?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn generate_event_feeds_invoke_and_errors_are_one_line() -> anyhow::Result<()> {
    let database_url = fresh_database().await?;
    let generated = Command::new(BIN)
        .args([
            "generate-event",
            "http",
            "--method",
            "GET",
            "--path",
            "/orders/0193f6a2-0000-7000-8000-000000000000?verbose=1",
            "--sub",
            "c-1",
            "--template",
            TEMPLATE,
        ])
        .output()?;
    assert!(generated.status.success(), "{generated:?}");
    let event: Value = serde_json::from_slice(&generated.stdout)?;
    assert_eq!(
        event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"],
        "c-1"
    );
    assert_eq!(event["routeKey"], "GET /orders/{id}");
    assert_eq!(
        event["pathParameters"]["id"],
        "0193f6a2-0000-7000-8000-000000000000"
    );

    let mut invoke = Command::new(BIN)
        .args([
            "invoke",
            "CreateOrderFunction",
            "--event",
            "-",
            "--template",
            TEMPLATE,
        ])
        .env("DATABASE_URL", &database_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    invoke
        .stdin
        .take()
        .expect("piped")
        .write_all(&generated.stdout)?;
    let out = invoke.wait_with_output()?;
    assert!(out.status.success(), "{out:?}");
    let response: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(response["statusCode"], 404, "{response}");

    let unknown = Command::new(BIN)
        .args(["invoke", "NoSuchFunction", "--template", TEMPLATE])
        .stdin(Stdio::null())
        .output()?;
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = String::from_utf8(unknown.stderr)?;
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("NoSuchFunction"), "{stderr}");

    let schedule = Command::new(BIN)
        .args(["generate-event", "schedule", "--rule", "nightly"])
        .output()?;
    let schedule: Value = serde_json::from_slice(&schedule.stdout)?;
    assert_eq!(schedule["detail-type"], "Scheduled Event");
    assert_eq!(
        schedule["resources"][0],
        "arn:aws:events:us-east-1:000000000000:rule/nightly"
    );
    let batch = Command::new(BIN)
        .args([
            "generate-event",
            "stream-batch",
            "--count",
            "2",
            "--event-type",
            "OrderCreated",
            "--payload",
            r#"{"order_id":"0190f0c8-0000-7000-8000-000000000001"}"#,
        ])
        .output()?;
    let batch: Value = serde_json::from_slice(&batch.stdout)?;
    let records = batch["records"].as_array().cloned().unwrap_or_default();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["fields"]["event_type"], "OrderCreated");
    let no_route = Command::new(BIN)
        .args([
            "generate-event",
            "http",
            "--path",
            "/nowhere",
            "--template",
            TEMPLATE,
        ])
        .output()?;
    assert_eq!(no_route.status.code(), Some(1));

    let help = Command::new(BIN).args(["invoke", "--help"]).output()?;
    assert!(String::from_utf8(help.stdout)?.contains("Examples:"));
    Ok(())
}

#[tokio::test]
async fn up_with_log_format_json_writes_lambdas_json_lines() -> anyhow::Result<()> {
    let database_url = fresh_database().await?;
    let namespace = format!("emu{}", uuid::Uuid::now_v7().simple());
    let vars = env_vars(&namespace)?;
    let state = std::env::temp_dir().join(&namespace);
    let (mut child, lines) = start_up(
        &[
            "--log-format",
            "json",
            "--port",
            &spare_port()?.to_string(),
            "--template",
            TEMPLATE,
            "--env-vars",
            &vars.0.to_string_lossy(),
            "--state-dir",
            &state.to_string_lossy(),
        ],
        &database_url,
        &[("LOG_FORMAT", "text")],
    )?;
    // The lines before the banner: the emulator's own, as JSON objects.
    let mut logged = Vec::new();
    loop {
        let line = lines.recv_timeout(Duration::from_secs(20))?;
        if let Ok(Value::Object(object)) = serde_json::from_str::<Value>(&line) {
            logged.push(object);
        }
        if line.starts_with("Ready in") {
            break;
        }
    }
    child.kill()?;
    child.wait()?;
    let _ = std::fs::remove_dir_all(&state);
    assert!(!logged.is_empty(), "no JSON line before the banner");
    for object in &logged {
        for key in ["timestamp", "level", "message", "service"] {
            assert!(object.contains_key(key), "{key} missing in {object:?}");
        }
    }
    Ok(())
}
