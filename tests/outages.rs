//! Outages are waited out, not dead-lettered: the whole system runs in-process
//! (the emulator's `System`) on private PostgreSQL and Redis servers started by
//! the test, orders are posted continuously, and one server is stopped for
//! 30 s while they flow. Requests refused meanwhile (`503`) are fine; every
//! order accepted (`201`) must reach a terminal status within a bounded wait,
//! and no dead-letter stream may hold anything.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)] // the tests print what they saw

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emulator::servers::{self, Binaries, StateDir};
use emulator::system::{Mode, Options, System};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;

/// How long the store is away: an RDS Multi-AZ failover takes 60-120 s; this
/// is well past what the records' retries (1 + 2 + 4 s) would cover.
const DOWN_FOR: Duration = Duration::from_secs(30);
/// How long every accepted order has to reach a terminal status once the
/// store is back and the clients stopped.
const SETTLE_WITHIN: Duration = Duration::from_secs(40);
const CLIENTS: usize = 3;
const NAMESPACE: &str = "outage";

/// A state directory under /tmp (reachable by the `postgres` user), removed when dropped.
struct TempState(StateDir);

impl Drop for TempState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.path());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Postgres,
    Redis,
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Answers {
    /// Ids of the orders answered `201`.
    accepted: Vec<String>,
    /// Every other answer, by status (`0`: no answer).
    refused: BTreeMap<u16, u64>,
}

/// PostgreSQL stopped for [`DOWN_FOR`] while orders flow: nothing is
/// dead-lettered, every accepted order completes.
#[tokio::test]
async fn a_database_outage_is_waited_out() -> anyhow::Result<()> {
    outage(Store::Postgres).await
}

/// Redis stopped for [`DOWN_FOR`] while orders flow: orders are still
/// accepted (their events wait in the outbox), nothing is dead-lettered, every
/// accepted order completes.
#[tokio::test]
async fn a_redis_outage_is_waited_out() -> anyhow::Result<()> {
    outage(Store::Redis).await
}

async fn outage(store: Store) -> anyhow::Result<()> {
    let state = TempState(StateDir::new(
        std::env::temp_dir().join(format!("outages-{}", uuid::Uuid::now_v7().simple())),
    )?);
    let spare = || -> anyhow::Result<std::net::SocketAddr> {
        Ok(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            tests::spare_port()?,
        )))
    };
    let binaries = Binaries::system();
    let mut redis = servers::redis_with(None, spare()?, &state.0, &binaries).await?;
    let mut postgres = servers::postgres_with(None, spare()?, &state.0, &binaries).await?;
    let result = drive(store, &mut redis, &mut postgres).await;
    let _ = redis.stop().await;
    let _ = postgres.stop().await;
    result
}

#[allow(clippy::too_many_lines)]
async fn drive(
    store: Store,
    redis: &mut servers::Redis,
    postgres: &mut servers::Postgres,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let database_url = format!("{}/postgres", postgres.url);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&database_url)
        .await?;
    shared::db::migrate(&pool, migrate::migrations()).await?;
    // Plenty of one SKU, a little of another: confirmations and rejections.
    for (sku, available) in [("PLENTY", 1_000_000), ("SCARCE", 20)] {
        sqlx::query(
            "INSERT INTO inventory.stock (sku, available, price_cents) VALUES ($1, $2, 250)",
        )
        .bind(sku)
        .bind(available)
        .execute(&pool)
        .await?;
    }
    let mut template = tests::emulated::unthrottled_template()?;
    let overrides = json!({ "Parameters": {
        "STREAM_NAMESPACE": NAMESPACE,
        "STREAM_PARTITIONS": "2",
    }});
    emulator::template::apply_env_overrides(&mut template, &overrides.to_string())?;
    let system = System::start(Options {
        template,
        mode: Mode::InProcess,
        database_url: database_url.clone(),
        redis_url: redis.url.clone(),
        redis_cluster: false,
        trust: tests::auth::trust(),
        registry: std::sync::Arc::new(shop::Shop),
    })
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(emulator::serve(
        emulator::Emulator::of(&system),
        listener,
        async move {
            let _ = http_stopped.await;
        },
    ));

    // Clients post orders until told to stop.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let stop_clients = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Answers::default()));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, base, stop, answers) = (
            http.clone(),
            base.clone(),
            Arc::clone(&stop_clients),
            Arc::clone(&answers),
        );
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sku = if n % 5 == 0 { "SCARCE" } else { "PLENTY" };
                let body = json!({
                    "items": [{"sku": sku, "quantity": 1, "unit_price_cents": 250}],
                });
                let answer = http
                    .post(format!("{base}/orders"))
                    .header("authorization", tests::bearer(&format!("cust-{c}")))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                let accepted = match answer {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let order: Value = r.json().await?;
                        Ok(order["id"].as_str().unwrap_or_default().to_owned())
                    }
                    Ok(r) => Err(r.status().as_u16()),
                    Err(_) => Err(0),
                };
                {
                    let mut answers = answers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    match accepted {
                        Ok(id) => answers.accepted.push(id),
                        Err(status) => *answers.refused.entry(status).or_default() += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            anyhow::Ok(())
        }));
    }
    let accepted_count = || answers.lock().map(|a| a.accepted.len()).unwrap_or(0);

    // Orders flow, then the store goes away for DOWN_FOR and comes back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = accepted_count();
    let outage_started = Instant::now();
    match store {
        Store::Postgres => postgres.restart(DOWN_FOR).await?,
        Store::Redis => redis.restart(DOWN_FOR).await?,
    }
    let during = accepted_count() - before;
    let outage_took = outage_started.elapsed();
    // Orders flow again for a while, then the clients stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_clients.store(true, Ordering::Relaxed);
    for client in clients {
        client.await??;
    }
    let (accepted, refused) = {
        let answers = answers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        (answers.accepted.clone(), answers.refused.clone())
    };

    // Every accepted order reaches a terminal status.
    let settle = Instant::now();
    let mut unfinished: i64 = -1;
    while settle.elapsed() < SETTLE_WITHIN {
        unfinished = sqlx::query_scalar(
            "SELECT count(*) FROM orders.orders
             WHERE id::text = ANY($1) AND status NOT IN ('CONFIRMED', 'REJECTED')",
        )
        .bind(&accepted)
        .fetch_one(&pool)
        .await
        .unwrap_or(-1);
        if unfinished == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settled_in = settle.elapsed();
    let by_status: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM orders.orders WHERE id::text = ANY($1)
         GROUP BY status ORDER BY status",
    )
    .bind(&accepted)
    .fetch_all(&pool)
    .await?;

    // Nothing in any dead-letter stream (the servers are the test's own).
    let client = redis::Client::open(redis.url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let dlq_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{NAMESPACE}:dlq:*"))
        .query_async(&mut conn)
        .await?;
    let mut dead_letters = BTreeMap::new();
    for key in &dlq_keys {
        let len: u64 = redis::cmd("XLEN").arg(key).query_async(&mut conn).await?;
        dead_letters.insert(key.clone(), len);
    }

    let _ = stop_http.send(());
    server.await??;
    system.stop().await;

    println!(
        "{store:?} away for {outage_took:?}: {} orders accepted ({before} before, {during} during the outage), \
         refused {refused:?}; {unfinished} unfinished after {settled_in:?}; by status {by_status:?}; \
         dead letters {dead_letters:?}; total {:?}",
        accepted.len(),
        started.elapsed()
    );
    anyhow::ensure!(before > 0, "no order was accepted before the outage");
    anyhow::ensure!(
        dead_letters.values().all(|n| *n == 0),
        "an outage dead-lettered events: {dead_letters:?}"
    );
    anyhow::ensure!(
        unfinished == 0,
        "{unfinished} accepted orders are not CONFIRMED or REJECTED {settled_in:?} after the outage: {by_status:?}"
    );
    if store == Store::Redis {
        anyhow::ensure!(
            during > 0,
            "orders are accepted while Redis is away (their events wait in the outbox)"
        );
    }
    Ok(())
}
