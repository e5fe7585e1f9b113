//! The emulator's `--runtime-api` mode with real child processes: the
//! `lambda-fixture` binary, a real `lambda_runtime` function, runs behind the
//! emulator's own Lambda Runtime API, and the event decides how it behaves.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _, Result};
use emulator::invoke::{Invocation, InvokeError};
use emulator::runtime::{FunctionProcess, Pool};
use serde_json::{json, Value};

fn fixture(name: &str) -> FunctionProcess {
    let mut spec = FunctionProcess::new(name, env!("CARGO_BIN_EXE_lambda-fixture"));
    spec.timeout = Duration::from_secs(5);
    spec.max_concurrency = 4;
    spec
}

fn fixture_with(name: &str, var: &str, value: &str) -> FunctionProcess {
    let mut spec = fixture(name);
    spec.env.insert(var.into(), value.into());
    spec
}

async fn call(pool: &Pool, event: Value) -> Result<Value, InvokeError> {
    let body = pool.invoke(Invocation::new(event.to_string())).await?;
    Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn pid_of(response: &Value) -> Result<u64> {
    response["pid"].as_u64().context("no pid in the response")
}

/// Whether a process of that pid still exists (`kill -0`).
fn alive(pid: u64) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn now_ms() -> Result<u64> {
    Ok(u64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis(),
    )?)
}

/// The function sees what Lambda gives it: the request id, a real deadline
/// (now + its timeout), its ARN, the trace id, its environment and Lambda's
/// reserved variables; and a second invocation reuses the warm instance.
#[tokio::test]
async fn echo_sees_the_lambda_context() -> Result<()> {
    let pool = Pool::new(fixture_with("EchoFunction", "FIXTURE_VAR", "from-the-spec"));
    let mut invocation = Invocation::new(json!({"echo": {"n": 1}}).to_string());
    invocation.trace_id =
        Some("Root=1-65a0b0c0-0123456789abcdef01234567;Parent=0123456789abcdef;Sampled=1".into());
    let request_id = invocation.request_id.clone();
    let before = now_ms()?;
    let response: Value = serde_json::from_slice(&pool.invoke(invocation.clone()).await?)?;

    assert_eq!(response["echo"], json!({"n": 1}));
    assert_eq!(response["request_id"], json!(request_id));
    assert_eq!(
        response["arn"],
        json!("arn:aws:lambda:us-east-1:000000000000:function:EchoFunction")
    );
    assert_eq!(response["trace_id"], json!(invocation.trace_id));
    assert_eq!(response["env"]["FIXTURE_VAR"], json!("from-the-spec"));
    assert_eq!(
        response["env"]["AWS_LAMBDA_FUNCTION_NAME"],
        json!("EchoFunction")
    );
    let deadline = response["deadline"].as_u64().context("deadline")?;
    let expected = before + 5_000;
    ensure!(
        deadline + 1_000 >= expected && deadline <= expected + 1_000,
        "deadline {deadline} is not about now + 5 s ({expected})"
    );

    let again = call(&pool, json!({"echo": 2})).await?;
    assert_eq!(
        pid_of(&again)?,
        pid_of(&response)?,
        "a warm instance is reused"
    );
    assert_ne!(again["request_id"], response["request_id"]);
    ensure!(again["trace_id"]
        .as_str()
        .is_some_and(|t| t.starts_with("Root=1-")));
    assert_eq!(pool.instances(), 1);
    assert!(pool.last_init_duration().is_some());
    pool.shutdown(Duration::ZERO).await;
    Ok(())
}

/// Prewarming starts an instance and measures its cold start (spawn → first `next`).
#[tokio::test]
async fn prewarm_measures_the_cold_start() -> Result<()> {
    let pool = Pool::new(fixture("PrewarmFunction"));
    let mut times = Vec::new();
    for _ in 0..3 {
        times.push(pool.prewarm().await?);
    }
    eprintln!("fixture cold starts: {times:?}");
    assert_eq!(pool.instances(), 3);
    assert_eq!(pool.last_init_duration(), times.last().copied());
    ensure!(
        times.iter().all(|t| *t < Duration::from_secs(2)),
        "{times:?}"
    );
    // Invocations take the prewarmed instances: no fourth process.
    call(&pool, json!({"echo": 1})).await?;
    assert_eq!(pool.instances(), 3);
    pool.shutdown(Duration::ZERO).await;
    Ok(())
}

/// A handler's error comes back as a function error with its message, and
/// the instance stays in service.
#[tokio::test]
async fn handler_error_is_a_function_error() -> Result<()> {
    let pool = Pool::new(fixture("FailFunction"));
    let first = call(&pool, json!({"echo": 0})).await?;
    match call(&pool, json!({"fail": "no such order"})).await {
        Err(InvokeError::Function { error_message, .. }) => {
            assert_eq!(error_message, "no such order");
        }
        other => bail!("expected a function error, got {other:?}"),
    }
    let after = call(&pool, json!({"echo": 1})).await?;
    assert_eq!(pid_of(&after)?, pid_of(&first)?);
    pool.shutdown(Duration::ZERO).await;
    Ok(())
}

/// A panicking handler is an error for that invocation only; the pool keeps working.
#[tokio::test]
async fn panic_is_an_error_and_the_pool_keeps_working() -> Result<()> {
    let pool = Pool::new(fixture("PanicFunction"));
    match call(&pool, json!({"panic": true})).await {
        Err(InvokeError::Function { error_message, .. }) => {
            ensure!(
                error_message.contains("the fixture panics on purpose"),
                "{error_message}"
            );
        }
        Err(InvokeError::Exited(_)) => {}
        other => bail!("expected a function error, got {other:?}"),
    }
    assert_eq!(
        call(&pool, json!({"echo": "ok"})).await?["echo"],
        json!("ok")
    );
    pool.shutdown(Duration::ZERO).await;
    Ok(())
}

/// Past its timeout an invocation fails, its process is killed and the
/// instance dropped; the next invocation runs on a fresh one.
#[tokio::test]
async fn timeout_kills_the_instance() -> Result<()> {
    let mut spec = fixture("SlowFunction");
    spec.timeout = Duration::from_secs(1);
    let pool = Pool::new(spec);
    let pid = pid_of(&call(&pool, json!({"echo": 0})).await?)?;

    let started = Instant::now();
    let result = call(&pool, json!({"sleep_ms": 3_000})).await;
    assert_eq!(
        result.err(),
        Some(InvokeError::Timeout {
            after: Duration::from_secs(1)
        })
    );
    ensure!(
        started.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(pool.instances(), 0);
    assert!(!alive(pid), "process {pid} still runs");

    let fresh = pid_of(&call(&pool, json!({"echo": 1})).await?)?;
    assert_ne!(fresh, pid);
    assert_eq!(pool.instances(), 1);
    pool.shutdown(Duration::ZERO).await;
    Ok(())
}

/// A process that exits mid-invocation fails that invocation with its exit status.
#[tokio::test]
async fn exit_mid_invocation_is_reported() -> Result<()> {
    let pool = Pool::new(fixture("ExitFunction"));
    match call(&pool, json!({"exit": 3})).await {
        Err(InvokeError::Exited(status)) => ensure!(status.contains('3'), "{status}"),
        other => bail!("expected an exit, got {other:?}"),
    }
    assert_eq!(pool.instances(), 0);
    call(&pool, json!({"echo": 1})).await?;
    pool.shutdown(Duration::ZERO).await;
    Ok(())
}

/// Overlapping invocations each get an instance of their own.
#[tokio::test]
async fn overlapping_invocations_get_their_own_instances() -> Result<()> {
    let pool = Pool::new(fixture("BusyFunction"));
    let (a, b, c) = tokio::join!(
        call(&pool, json!({"sleep_ms": 300})),
        call(&pool, json!({"sleep_ms": 300})),
        call(&pool, json!({"sleep_ms": 300})),
    );
    let mut pids = vec![pid_of(&a?)?, pid_of(&b?)?, pid_of(&c?)?];
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert_eq!(pool.instances(), 3);
    pool.shutdown(Duration::ZERO).await;
    Ok(())
}

/// At the concurrency limit with every instance busy, an invocation is
/// throttled at once rather than queued.
#[tokio::test]
async fn busy_at_the_limit_is_throttled() -> Result<()> {
    let mut spec = fixture("LimitedFunction");
    spec.max_concurrency = 1;
    let pool = Pool::new(spec);
    pool.prewarm().await?;
    let busy = tokio::spawn({
        let pool = pool.clone();
        async move { call(&pool, json!({"sleep_ms": 1_500})).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    assert_eq!(
        call(&pool, json!({"echo": 1})).await.err(),
        Some(InvokeError::Throttled)
    );
    ensure!(
        started.elapsed() < Duration::from_millis(500),
        "not at once"
    );
    assert_eq!(pool.prewarm().await.err(), Some(InvokeError::Throttled));

    busy.await??;
    call(&pool, json!({"echo": 2})).await?;
    assert_eq!(pool.instances(), 1);
    pool.shutdown(Duration::ZERO).await;
    Ok(())
}

/// A process that exits during init fails the invocation that started it,
/// with its exit status and its last stderr lines.
#[tokio::test]
async fn init_exit_is_an_init_error_with_stderr() -> Result<()> {
    let pool = Pool::new(fixture_with("BrokenFunction", "FIXTURE_INIT", "fail"));
    match call(&pool, json!({"echo": 1})).await {
        Err(InvokeError::Init {
            error_type,
            error_message,
        }) => {
            assert_eq!(error_type, "Runtime.ExitError");
            ensure!(error_message.contains("exit status: 1"), "{error_message}");
            ensure!(
                error_message.contains("about to fail init"),
                "{error_message}"
            );
            ensure!(
                error_message.contains("init failed on purpose"),
                "{error_message}"
            );
        }
        other => bail!("expected an init error, got {other:?}"),
    }
    assert_eq!(pool.instances(), 0);
    assert_eq!(pool.last_init_duration(), None);
    assert!(matches!(
        pool.prewarm().await,
        Err(InvokeError::Init { .. })
    ));
    Ok(())
}

/// `POST /runtime/init/error` from the runtime is the init error.
#[tokio::test]
async fn init_error_posted_by_the_runtime() -> Result<()> {
    let pool = Pool::new(fixture_with("ReportingFunction", "FIXTURE_INIT", "report"));
    assert_eq!(
        call(&pool, json!({"echo": 1})).await.err(),
        Some(InvokeError::Init {
            error_type: "Fixture.InitError".into(),
            error_message: "the fixture reported its init failure".into(),
        })
    );
    assert_eq!(pool.instances(), 0);
    Ok(())
}

/// A runtime that never reaches `next` within the init timeout is killed.
#[tokio::test]
async fn init_timeout_is_an_init_error() -> Result<()> {
    let mut spec = fixture_with("HangingFunction", "FIXTURE_INIT", "sleep");
    spec.init_timeout = Duration::from_secs(1);
    let pool = Pool::new(spec);
    let started = Instant::now();
    match pool.prewarm().await {
        Err(InvokeError::Init { error_type, .. }) => assert_eq!(error_type, "Runtime.InitTimeout"),
        other => bail!("expected an init timeout, got {other:?}"),
    }
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(pool.instances(), 0);
    Ok(())
}

/// Shutdown lets the invocation under way finish, refuses new ones, and
/// leaves no process behind.
#[tokio::test]
async fn shutdown_waits_for_in_flight_then_stops_every_process() -> Result<()> {
    let pool = Pool::new(fixture("StoppingFunction"));
    let (a, b) = tokio::join!(
        call(&pool, json!({"echo": 1})),
        call(&pool, json!({"echo": 2}))
    );
    let pids = [pid_of(&a?)?, pid_of(&b?)?];
    let running = tokio::spawn({
        let pool = pool.clone();
        async move { call(&pool, json!({"sleep_ms": 600})).await }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;

    pool.shutdown(Duration::from_secs(3)).await;
    let finished = running.await??;
    assert_eq!(finished["slept_ms"], json!(600));
    assert_eq!(pool.instances(), 0);
    for pid in pids {
        assert!(!alive(pid), "process {pid} still runs");
    }
    assert_eq!(
        call(&pool, json!({"echo": 3})).await.err(),
        Some(InvokeError::Throttled)
    );
    Ok(())
}

/// Past its grace period, shutdown stops invocations still running.
#[tokio::test]
async fn shutdown_stops_what_outlives_the_grace_period() -> Result<()> {
    let pool = Pool::new(fixture("StuckFunction"));
    let pid = pid_of(&call(&pool, json!({"echo": 1})).await?)?;
    let running = tokio::spawn({
        let pool = pool.clone();
        async move { call(&pool, json!({"sleep_ms": 10_000})).await }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;

    let started = Instant::now();
    pool.shutdown(Duration::from_millis(200)).await;
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(running.await?, Err(InvokeError::Exited(_))));
    assert!(!alive(pid), "process {pid} still runs");
    assert_eq!(pool.instances(), 0);
    Ok(())
}
