//! `emulator up --runtime-api --watch`, as a developer uses it: orders stream
//! in at about 100 a second while a handler's source is saved, first broken
//! (the compiler's errors are printed, the old code keeps serving), then
//! changed; the function is swapped and the next orders run the new code;
//! then a stream consumer is changed and swapped, handing its leases over.
//! Every order is answered 201, none is lost, none is handled twice.
//!
//! It edits `functions/create-order/src/lib.rs` and
//! `functions/inventory-consumer/src/lib.rs` (restored when it ends) and
//! runs cargo in the workspace: the function binaries must be built, as
//! `cargo test --workspace` builds them.

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

/// Puts the sources back as they were, whatever happens, and builds the
/// binaries again from them: later tests run these binaries.
struct Restore {
    sources: Vec<(&'static str, String)>,
    build: Vec<String>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        for (path, text) in &self.sources {
            let _ = std::fs::write(path, text);
        }
        let rebuilt = std::process::Command::new(env!("CARGO"))
            .arg("build")
            .args(self.build.iter().flat_map(|b| ["--bin", b.as_str()]))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .output();
        if !rebuilt.is_ok_and(|o| o.status.success()) {
            eprintln!("the function binaries could not be built again from the restored sources");
        }
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

#[tokio::test]
async fn a_saved_change_is_served_without_losing_or_repeating_an_order() -> anyhow::Result<()> {
    let original = std::fs::read_to_string(SOURCE)?;
    let marker = format!("order created (watch {})", uuid::Uuid::now_v7().simple());
    anyhow::ensure!(
        original.contains("\"order created\""),
        "the handler's message moved"
    );
    let consumer = std::fs::read_to_string(CONSUMER_SOURCE)?;

    // The binaries as the watcher's own `cargo build` makes them (`cargo test`
    // may have built them with its dev-dependencies' features): the reload
    // below then rebuilds the changed function alone.
    let template = emulator::template::load(std::path::Path::new(TEMPLATE))?;
    let mut build = std::process::Command::new(env!("CARGO"));
    build
        .arg("build")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    for f in &template.functions {
        build.args(["--bin", &f.binary]);
    }
    let built = build.output()?;
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let _restore = Restore {
        sources: vec![
            (SOURCE, original.clone()),
            (CONSUMER_SOURCE, consumer.clone()),
        ],
        build: template
            .functions
            .iter()
            .map(|f| f.binary.clone())
            .collect(),
    };

    let database_url = fresh_database().await?;
    let namespace = format!("wat{}", uuid::Uuid::now_v7().simple());
    let vars = common::env_vars(&namespace)?;
    let port = spare_port()?;
    let state = std::env::temp_dir().join(&namespace);
    let (_up, lines) = start_up(
        &[
            "--port",
            &port.to_string(),
            "--template",
            TEMPLATE,
            "--parameter-overrides",
            "DefaultCreditLimitCents=100000000",
            "--env-vars",
            &vars.0.to_string_lossy(),
            "--state-dir",
            &state.to_string_lossy(),
            "--runtime-api",
            "--watch",
        ],
        &database_url,
        &[],
    )?;
    common::banner(&lines)?;
    wait_line(&lines, "Watching ", Duration::from_secs(10))?;
    let base = format!("http://127.0.0.1:{port}");
    let token = common::token("c-1", &state)?;
    let http = common::client(&token)?;
    common::stock_lamp(&http, &base, 100000).await?;

    // About 100 orders a second until told to stop; every answer is kept.
    let running = Arc::new(AtomicBool::new(true));
    // (sent at, status, order id)
    let answers: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
    let stream = {
        let (http, base, running, answers) = (
            http.clone(),
            base.clone(),
            Arc::clone(&running),
            Arc::clone(&answers),
        );
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(10));
            // A steady 100 a second: a late tick is not made up with a burst.
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut posts = tokio::task::JoinSet::new();
            while running.load(Ordering::SeqCst) {
                every.tick().await;
                let (http, base, answers) = (http.clone(), base.clone(), Arc::clone(&answers));
                posts.spawn(async move {
                    let sent = Instant::now();
                    let answer = http
                        .post(format!("{base}/orders"))
                        .json(&json!({"items":[{"sku":"LAMP-9","quantity":1,"unit_price_cents":100}]}))
                        .send()
                        .await;
                    let kept = match answer {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body: Value = r.json().await.unwrap_or(Value::Null);
                            (sent, status, body["id"].as_str().unwrap_or_default().to_owned())
                        }
                        Err(e) => (sent, 0, e.to_string()),
                    };
                    answers.lock().expect("not poisoned").push(kept);
                });
            }
            while posts.join_next().await.is_some() {}
        })
    };
    // Warm: the first second's burst of cold starts may be throttled (the
    // function's reserved concurrency, as in AWS); from here on none may be.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warm = Instant::now();

    // A broken save: the compiler's errors, and the old code keeps serving.
    std::fs::write(SOURCE, format!("{original}\nfn broken( {{\n"))?;
    let (failed, _) = wait_line(&lines, "Build failed", Duration::from_secs(180))?;
    let (after_errors, _) = wait_line(&lines, "", Duration::from_secs(5))?;
    eprintln!("{failed}\n{after_errors}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The fix, with a new message: reloaded, and the new code answers.
    let saved = Instant::now();
    std::fs::write(
        SOURCE,
        original.replacen("\"order created\"", &format!("{marker:?}"), 1),
    )?;
    let (reloaded, seen) = wait_line(&lines, "Reloaded ", Duration::from_secs(180))?;
    eprintln!("{seen:#?}\n{reloaded}");
    assert!(
        reloaded.starts_with("Reloaded CreateOrderFunction in "),
        "only the changed function is swapped: {reloaded}"
    );
    let swapped_after = saved.elapsed();
    // The first order the new code answers: its line carries the new message.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first_new = loop {
        let logs = std::process::Command::new(BIN)
            .args([
                "logs",
                "--url",
                &base,
                "--function",
                "CreateOrderFunction",
                "--json",
            ])
            .output()?;
        if String::from_utf8_lossy(&logs.stdout).contains(&marker) {
            break saved.elapsed();
        }
        anyhow::ensure!(Instant::now() < deadline, "no order ran the new code");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("save to reloaded: {swapped_after:?}; save to the first answer of the new code: {first_new:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A consumer changed under load: its stream source hands its leases over.
    std::fs::write(CONSUMER_SOURCE, format!("{consumer}\n// {marker}\n"))?;
    let (reloaded, _) = wait_line(&lines, "Reloaded ", Duration::from_secs(180))?;
    eprintln!("{reloaded}");
    // (The crate's other binary, the retention function, is swapped too.)
    assert!(
        reloaded.starts_with("Reloaded InventoryConsumerFunction"),
        "{reloaded}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.store(false, Ordering::SeqCst);
    stream.await?;

    let answers = answers.lock().expect("not poisoned").clone();
    let refused: Vec<&(Instant, u16, String)> = answers
        .iter()
        .filter(|(sent, status, _)| *sent >= warm && *status != 201)
        .collect();
    let when: Vec<String> = refused
        .iter()
        .map(|(sent, status, _)| format!("{status} at +{:?}", sent.duration_since(warm)))
        .collect();
    assert!(
        refused.is_empty(),
        "answered other than 201 through the reloads (the good save at +{:?}): {when:?}",
        saved.duration_since(warm)
    );
    let throttled_warming = answers.iter().filter(|(_, s, _)| *s == 429).count();
    assert!(
        answers.iter().all(|(_, s, _)| *s == 201 || *s == 429),
        "only throttling while warming"
    );
    let waited = std::process::Command::new(BIN)
        .args(["wait-idle", "--url", &base, "--timeout", "60"])
        .output()?;
    assert!(waited.status.success(), "{waited:?}");
    // None lost, none handled twice: every order confirmed, each reserved once.
    let mut db = sqlx::PgConnection::connect(&database_url).await?;
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
    let posted = i64::try_from(answers.iter().filter(|(_, s, _)| *s == 201).count())?;
    let through = answers.iter().filter(|(sent, _, _)| *sent >= warm).count();
    eprintln!(
        "{posted} orders created, {through} of them posted through the reloads; \
         {throttled_warming} throttled while the first instances warmed"
    );
    assert_eq!((all, confirmed), (posted, posted), "every order confirmed");
    assert_eq!(reserved, posted, "each order reserved once");
    // Each OrderCreated handled by the inventory once: no record was read
    // again across the consumer's swap.
    let logs = std::process::Command::new(BIN)
        .args([
            "logs",
            "--url",
            &base,
            "--function",
            "InventoryConsumerFunction",
        ])
        .args(["--json", "--limit", "1000000"])
        .output()?;
    let mut handled: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in String::from_utf8(logs.stdout)?.lines() {
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
    // And the consumer runs in a new process: a second cold start.
    let logs = std::process::Command::new(BIN)
        .args(["logs", "--url", &base, "--json", "--limit", "1000000"])
        .output()?;
    let consumer_starts = String::from_utf8(logs.stdout)?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "cold start" && l["function"] == "InventoryConsumerFunction")
        .count();
    assert!(
        consumer_starts >= 2,
        "the consumer was not swapped: {consumer_starts} cold starts"
    );
    Ok(())
}
