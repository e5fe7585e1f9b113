//! `emulator up --watch`, as a developer uses it, in both run modes: orders
//! stream in at about 100 a second while a handler's source is saved, first
//! broken (the compiler's errors are printed, the old code keeps serving),
//! then changed; the new code is swapped in and the next orders run it; then
//! a stream consumer is changed and swapped, handing its leases over. Every
//! order is answered 201, none is lost, none is handled twice.
//!
//! It edits `functions/create-order/src/lib.rs` and
//! `functions/inventory-consumer/src/lib.rs` (restored when it ends) and
//! runs cargo in the workspace; the two tests take turns.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::Connection as _;

mod common;

use common::{fresh_database, spare_port, start_up, BIN, TEMPLATE};

const SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../functions/create-order/src/lib.rs"
);
const CONSUMER_SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../functions/inventory-consumer/src/lib.rs"
);

/// The two tests edit the same sources: one at a time.
static EDITING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `cargo build ARGS` in the workspace.
fn cargo_build(args: &[String]) -> anyhow::Result<()> {
    let built = std::process::Command::new(env!("CARGO"))
        .arg("build")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()?;
    anyhow::ensure!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    Ok(())
}

/// Puts the sources back as they were, whatever happens, and builds the
/// binaries again from them (`cargo build ARGS`): later tests run them.
struct Restore {
    sources: Vec<(&'static str, String)>,
    build: Vec<String>,
}

impl Restore {
    fn sources(build: Vec<String>) -> anyhow::Result<Self> {
        Ok(Self {
            sources: vec![
                (SOURCE, std::fs::read_to_string(SOURCE)?),
                (CONSUMER_SOURCE, std::fs::read_to_string(CONSUMER_SOURCE)?),
            ],
            build,
        })
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        for (path, text) in &self.sources {
            let _ = std::fs::write(path, text);
        }
        if cargo_build(&self.build).is_err() {
            eprintln!("the binaries could not be built again from the restored sources");
        }
    }
}

/// `per_second` orders a second until stopped; every answer is kept as
/// (sent at, status, order id or error).
struct Load {
    running: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<(Instant, u16, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(http: &reqwest::Client, base: &str, per_second: u32) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let answers: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
        let (http, base, going, kept) = (
            http.clone(),
            base.to_owned(),
            Arc::clone(&running),
            Arc::clone(&answers),
        );
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1) / per_second);
            // A steady rate: a late tick is not made up with a burst.
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut posts = tokio::task::JoinSet::new();
            while going.load(Ordering::SeqCst) {
                every.tick().await;
                let (http, base, kept) = (http.clone(), base.clone(), Arc::clone(&kept));
                posts.spawn(async move {
                    let sent = Instant::now();
                    let answer = http
                        .post(format!("{base}/orders"))
                        .json(&json!({"items":[{"sku":"LAMP-9","quantity":1,"unit_price_cents":100}]}))
                        .send()
                        .await;
                    let one = match answer {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body: Value = r.json().await.unwrap_or(Value::Null);
                            (sent, status, body["id"].as_str().unwrap_or_default().to_owned())
                        }
                        Err(e) => (sent, 0, e.to_string()),
                    };
                    kept.lock().expect("not poisoned").push(one);
                });
            }
            while posts.join_next().await.is_some() {}
        });
        Self {
            running,
            answers,
            task,
        }
    }

    async fn stop(self) -> anyhow::Result<Vec<(Instant, u16, String)>> {
        self.running.store(false, Ordering::SeqCst);
        self.task.await?;
        let answers = self.answers.lock().expect("not poisoned").clone();
        Ok(answers)
    }
}

/// Every order answered 201 from `warm` on; then none lost, none handled
/// twice: every order confirmed, each reserved once, each `OrderCreated`
/// handled by the inventory once (its `event handled` lines in `emulator
/// logs`, across every swap). `before`: the orders created before the load.
async fn exactly_once(
    base: &str,
    database_url: &str,
    answers: &[(Instant, u16, String)],
    (warm, saved): (Instant, Instant),
    before: i64,
) -> anyhow::Result<()> {
    let refused: Vec<String> = answers
        .iter()
        .filter(|(sent, status, _)| *sent >= warm && *status != 201)
        .map(|(sent, status, e)| format!("{status} at +{:?} {e}", sent.duration_since(warm)))
        .collect();
    assert!(
        refused.is_empty(),
        "answered other than 201 through the reloads (the good save at +{:?}): {refused:?}",
        saved.duration_since(warm)
    );
    assert!(
        answers.iter().all(|(_, s, _)| *s == 201 || *s == 429),
        "only throttling while warming"
    );
    let wait_idle = || {
        std::process::Command::new(BIN)
            .args(["wait-idle", "--url", base, "--timeout", "60"])
            .output()
    };
    let waited = wait_idle()?;
    let mut db = sqlx::PgConnection::connect(database_url).await?;
    if !waited.status.success() {
        // An invocation may run up to its function's Timeout (60 s): one that
        // began late under a loaded CI machine is waited for once more, and
        // what was busy is printed either way.
        let report = not_idle(base, &mut db, function_of(&waited.stderr)).await;
        eprintln!("not idle after 60 s: {waited:?}\n{report}");
        let again = wait_idle()?;
        if !again.status.success() {
            panic!(
                "{again:?}\n{}",
                not_idle(base, &mut db, function_of(&again.stderr)).await
            );
        }
    }
    let confirmed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'")
            .fetch_one(&mut db)
            .await?;
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.orders")
        .fetch_one(&mut db)
        .await?;
    let reserved: i64 =
        sqlx::query_scalar("SELECT reserved::int8 FROM inventory.stock WHERE sku = 'LAMP-9'")
            .fetch_one(&mut db)
            .await?;
    let posted = i64::try_from(answers.iter().filter(|(_, s, _)| *s == 201).count())? + before;
    let through = answers.iter().filter(|(sent, _, _)| *sent >= warm).count();
    let throttled = answers.iter().filter(|(_, s, _)| *s == 429).count();
    eprintln!(
        "{posted} orders created, {through} of them posted through the reloads; \
         {throttled} throttled while the first instances warmed"
    );
    assert_eq!((all, confirmed), (posted, posted), "every order confirmed");
    assert_eq!(reserved, posted, "each order reserved once");
    let mut handled: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in logs_of(base, "InventoryConsumerFunction")?.lines() {
        let line: Value = serde_json::from_str(line)?;
        if line["message"] == "event handled" {
            *handled
                .entry(line["event_id"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    let repeated: Vec<(&String, &usize)> = handled.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "handled more than once: {repeated:?}");
    assert_eq!(i64::try_from(handled.len())?, posted, "each handled");
    Ok(())
}

/// `emulator logs --function F --json`: every line the emulator keeps.
/// The first function `wait-idle` names as busy ("… in flight (F 1)").
fn function_of(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let (_, after) = text.split_once("in flight (")?;
    after.split_whitespace().next().map(str::to_owned)
}

/// What the system was doing when it did not come to rest: the busy
/// function's latest log lines and the database's sessions.
async fn not_idle(base: &str, db: &mut sqlx::PgConnection, function: Option<String>) -> String {
    let mut report = String::new();
    if let Some(function) = function {
        let logs = logs_of(base, &function).unwrap_or_else(|e| e.to_string());
        let tail: Vec<&str> = logs.lines().rev().take(40).collect();
        report.push_str(&format!("{function}'s last log lines, newest first:\n"));
        for line in tail {
            report.push_str(line);
            report.push('\n');
        }
    }
    let sessions: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' | ', application_name, state, \
         wait_event_type || ':' || wait_event, left(query, 200)) \
         FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND state <> 'idle'",
    )
    .fetch_all(db)
    .await
    .unwrap_or_default();
    report.push_str("database sessions not idle (application, state, waiting on, query):\n");
    for session in sessions {
        report.push_str(&format!("{session}\n"));
    }
    report
}

fn logs_of(base: &str, function: &str) -> anyhow::Result<String> {
    let logs = std::process::Command::new(BIN)
        .args(["logs", "--url", base, "--function", function])
        .args(["--json", "--limit", "1000000"])
        .output()?;
    anyhow::ensure!(logs.status.success(), "{logs:?}");
    Ok(String::from_utf8(logs.stdout)?)
}

/// Polls `emulator logs` until a line of CreateOrderFunction carries `marker`:
/// the first order the new code answered.
async fn first_answer_with(base: &str, marker: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if logs_of(base, "CreateOrderFunction")?.contains(marker) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "no order ran the new code");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a line of `up`'s stdout that starts with `prefix`; the lines seen.
fn wait_line(
    lines: &std::sync::mpsc::Receiver<String>,
    prefix: &str,
    within: Duration,
) -> anyhow::Result<(String, Vec<String>)> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .map_err(|_| anyhow::anyhow!("no line {prefix:?} within {within:?}; saw {seen:#?}"))?;
        if line.starts_with(prefix) {
            return Ok((line, seen));
        }
        seen.push(line);
    }
}

/// `up ARGS --watch` on a fresh database and namespace, LAMP-9 stocked: its
/// lines, its base URL and a client; `Watching` seen.
struct Running {
    _up: common::Up,
    lines: std::sync::mpsc::Receiver<String>,
    base: String,
    http: reqwest::Client,
    database_url: String,
    _vars: common::tempfile_path::TempPath,
}

async fn watching(mode: &[&str]) -> anyhow::Result<Running> {
    let database_url = fresh_database().await?;
    let namespace = format!("wat{}", uuid::Uuid::now_v7().simple());
    let vars = common::env_vars(&namespace)?;
    let port = spare_port()?;
    let state = std::env::temp_dir().join(&namespace);
    let (port, vars_path, state_path) = (
        port.to_string(),
        vars.0.to_string_lossy().into_owned(),
        state.to_string_lossy().into_owned(),
    );
    let mut args = vec![
        "--port",
        &port,
        "--template",
        TEMPLATE,
        "--parameter-overrides",
        "DefaultCreditLimitCents=100000000",
        "--env-vars",
        &vars_path,
        "--state-dir",
        &state_path,
        // The test counts every `event handled` line of the run: a slow build
        // under load lets more orders through than the default book holds.
        "--log-lines",
        "5000000",
        "--watch",
    ];
    args.extend_from_slice(mode);
    let (up, lines) = start_up(&args, &database_url, &[])?;
    common::banner(&lines)?;
    wait_line(&lines, "Watching ", Duration::from_secs(20))?;
    let base = format!("http://127.0.0.1:{port}");
    let token = common::token("c-1", &state)?;
    let http = common::client(&token)?;
    common::stock_lamp(&http, &base, 100000).await?;
    Ok(Running {
        _up: up,
        lines,
        base,
        http,
        database_url,
        _vars: vars,
    })
}

/// The run mode under test and what its reloads print.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    RuntimeApi,
    InProcess,
}

impl Mode {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::RuntimeApi => &["--runtime-api"],
            Mode::InProcess => &[],
        }
    }

    /// What `cargo build` makes the binaries as the watcher builds them (as
    /// `cargo build --bins` and `cargo run -p shop` do; `cargo test` may have
    /// built them with its dev-dependencies' features), so that a reload
    /// rebuilds what changed alone.
    fn build(self) -> anyhow::Result<Vec<String>> {
        Ok(match self {
            Mode::RuntimeApi => emulator::template::load(std::path::Path::new(TEMPLATE))?
                .functions
                .iter()
                .flat_map(|f| ["--bin".to_owned(), f.binary.clone()])
                .collect(),
            Mode::InProcess => ["--package", "shop", "--bin", "emulator"]
                .map(str::to_owned)
                .to_vec(),
        })
    }

    /// The load through the reloads. With --runtime-api every instance is a
    /// process (the debug build, up to 40 of create-order's, one per
    /// consumer, the relay's): at 100 orders a second while cargo builds,
    /// this 2-core machine is saturated, create-order's 40 instances are all
    /// busy, and API Gateway's answer is 429 (as in AWS at the function's
    /// reserved concurrency); at 50 a second it is not.
    fn orders_per_second(self) -> u32 {
        match self {
            Mode::RuntimeApi => std::env::var("WATCH_RUNTIME_API_ORDERS_PER_SECOND")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(50),
            Mode::InProcess => 100,
        }
    }

    /// The report of a reload after a change to create-order's handler.
    fn handler_reloaded(self) -> &'static str {
        match self {
            Mode::RuntimeApi => "Reloaded CreateOrderFunction in ",
            Mode::InProcess => "Reloaded the in-process functions in ",
        }
    }

    /// The report of a reload after a change to the inventory consumer.
    fn consumer_reloaded(self) -> &'static str {
        match self {
            // (The crate's other binary, the retention function, is swapped too.)
            Mode::RuntimeApi => "Reloaded InventoryConsumerFunction",
            Mode::InProcess => "Reloaded the in-process functions in ",
        }
    }
}

/// Saves create-order's handler with a new message and waits until an order
/// is answered by the new code (`quiet`: no orders are coming, it posts
/// one); prints the figures; the lines before the report.
async fn reload_handler(
    mode: Mode,
    running: &Running,
    original: &str,
    quiet: bool,
) -> anyhow::Result<Vec<String>> {
    let what = if quiet { "quiet" } else { "under load" };
    let marker = format!("order created (watch {})", uuid::Uuid::now_v7().simple());
    let saved = Instant::now();
    std::fs::write(
        SOURCE,
        original.replacen("\"order created\"", &format!("{marker:?}"), 1),
    )?;
    let (reloaded, seen) = wait_line(&running.lines, "Reloaded ", Duration::from_secs(300))?;
    assert!(
        reloaded.starts_with(mode.handler_reloaded()),
        "only what changed is swapped: {reloaded}"
    );
    let swapped_after = saved.elapsed();
    if quiet {
        let _ = running
            .http
            .post(format!("{}/orders", running.base))
            .json(&json!({"items":[{"sku":"LAMP-9","quantity":1,"unit_price_cents":100}]}))
            .send()
            .await?;
    }
    first_answer_with(&running.base, &marker).await?;
    eprintln!(
        "{what}: {reloaded}\n{what}: save to reloaded {swapped_after:?}; \
         save to the first answer of the new code {:?}",
        saved.elapsed()
    );
    Ok(seen)
}

/// The lines of new emulator processes (in-process mode) among `seen`.
fn new_processes(seen: &[String]) -> Vec<String> {
    seen.iter()
        .filter(|l| l.starts_with("The new code is ready"))
        .cloned()
        .collect()
}

/// A quiet reload (nothing else running: a developer's save), then, with
/// orders at 100 a second: a broken save, a change to the handler, and a
/// change to the consumer.
async fn scenario(mode: Mode) -> anyhow::Result<()> {
    let _turn = EDITING.lock().await;
    let original = std::fs::read_to_string(SOURCE)?;
    anyhow::ensure!(
        original.contains("\"order created\""),
        "the handler's message moved"
    );
    let consumer = std::fs::read_to_string(CONSUMER_SOURCE)?;
    let build = mode.build()?;
    cargo_build(&build)?;
    let _restore = Restore::sources(build)?;
    let running = watching(mode.flags()).await?;

    let quiet = reload_handler(mode, &running, &original, true).await?;
    if mode == Mode::InProcess {
        assert_eq!(
            new_processes(&quiet).len(),
            1,
            "one new process: {quiet:#?}"
        );
    }

    let load = Load::start(&running.http, &running.base, mode.orders_per_second());
    // Warm: the first second's burst of cold starts may be throttled (the
    // function's reserved concurrency, as in AWS); from here on none may be.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warm = Instant::now();

    // A broken save: the compiler's errors, and the old code keeps serving.
    std::fs::write(SOURCE, format!("{original}\nfn broken( {{\n"))?;
    let (failed, _) = wait_line(&running.lines, "Build failed", Duration::from_secs(300))?;
    let (after_errors, _) = wait_line(&running.lines, "", Duration::from_secs(5))?;
    eprintln!("{failed}\n{after_errors}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let saved = Instant::now();
    let loaded = reload_handler(mode, &running, &original, false).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A consumer changed under load: its stream source hands its leases over.
    std::fs::write(
        CONSUMER_SOURCE,
        format!("{consumer}\n// changed by the watch test\n"),
    )?;
    let (reloaded, seen) = wait_line(
        &running.lines,
        mode.consumer_reloaded(),
        Duration::from_secs(300),
    )?;
    eprintln!("consumer: {reloaded}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    if mode == Mode::InProcess {
        // A change that builds but cannot start (create-order refuses its
        // configuration): the previous build starts again and serves.
        let unstartable = original.replacen("24 * 60 * 60)? {", "24 * 60 * 60)? * 0 {", 1);
        anyhow::ensure!(unstartable != original, "the TTL's default moved");
        std::fs::write(SOURCE, unstartable)?;
        let (failed, seen) = wait_line(&running.lines, "Reload failed", Duration::from_secs(300))?;
        eprintln!("unstartable: {failed}");
        assert!(
            failed.contains("the previous build serves again"),
            "{failed}\n{seen:#?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let answers = load.stop().await?;
    // (One order was posted by the quiet reload.)
    exactly_once(
        &running.base,
        &running.database_url,
        &answers,
        (warm, saved),
        1,
    )
    .await?;
    match mode {
        Mode::InProcess => {
            let (a, b) = (new_processes(&loaded), new_processes(&seen));
            assert!(
                a.len() == 1 && b.len() == 1 && a != b,
                "a new process each: {a:?} {b:?}"
            );
        }
        Mode::RuntimeApi => {
            // The consumer runs in a new process: a second cold start.
            let logs = std::process::Command::new(BIN)
                .args([
                    "logs",
                    "--url",
                    &running.base,
                    "--json",
                    "--limit",
                    "1000000",
                ])
                .output()?;
            let consumer_starts = String::from_utf8(logs.stdout)?
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|l| {
                    l["message"] == "cold start" && l["function"] == "InventoryConsumerFunction"
                })
                .count();
            assert!(
                consumer_starts >= 2,
                "the consumer was not swapped: {consumer_starts} cold starts"
            );
        }
    }
    Ok(())
}

// Two workers: the orders keep coming while the test waits for a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_change_is_served_without_losing_or_repeating_an_order() -> anyhow::Result<()> {
    scenario(Mode::RuntimeApi).await
}

/// In-process, the functions are linked into the emulator: each good save
/// replaces the emulator process behind the proxy holding the port. Requests
/// during the swap wait; `emulator logs` keeps the lines of every process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_a_saved_change_replaces_the_emulator_and_loses_or_repeats_nothing(
) -> anyhow::Result<()> {
    scenario(Mode::InProcess).await
}
