//! Create-order throughput: the handler called in-process by N concurrent tasks,
//! against the same SQL transaction issued directly (and, when `pgbench` is on
//! PATH, against pgbench running that transaction), side by side in one run on
//! one fresh database.
//!
//! `cargo bench -p tests --bench create_order_throughput -- [--concurrency 8] [--seconds 10] [--rounds 2]`

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use create_order::Deps;
use tests::{ApiRequest, TestDb};

const BODY: &str = r#"{"items":[{"sku":"WIDGET-1","quantity":2,"unit_price_cents":1999},{"sku":"GADGET-7","quantity":1,"unit_price_cents":500}]}"#;

struct Args {
    concurrency: usize,
    seconds: u64,
    rounds: usize,
}

fn args() -> Result<Args> {
    let mut parsed = Args {
        concurrency: 8,
        seconds: 10,
        rounds: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("missing value");
        match arg.as_str() {
            "--concurrency" => parsed.concurrency = value()?.parse()?,
            "--seconds" => parsed.seconds = value()?.parse()?,
            "--rounds" => parsed.rounds = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(parsed)
}

/// Runs `work` in `concurrency` tasks for `seconds`; returns completed operations per second.
async fn measure<F, Fut>(concurrency: usize, seconds: u64, work: F) -> Result<f64>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let work = Arc::new(work);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (work, done) = (work.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                work().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

const PGBENCH_SCRIPT: &str = r#"\set n random(1, 1000000000)
BEGIN;
WITH new_order AS (INSERT INTO orders.orders (id, customer_id, status, total_cents, created_at, updated_at) VALUES (gen_random_uuid(), 'cust-42', 'PENDING', 4498, now(), now()) RETURNING id)
INSERT INTO orders.order_lines (order_id, line_no, sku, quantity, unit_price_cents) SELECT id, l.line_no, l.sku, l.quantity, l.unit_price_cents FROM new_order, UNNEST('{1,2}'::smallint[], '{WIDGET-1,GADGET-7}'::text[], '{2,1}'::integer[], '{1999,500}'::bigint[]) AS l(line_no, sku, quantity, unit_price_cents);
INSERT INTO orders.outbox (event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, traceparent, payload) VALUES (gen_random_uuid(), 'OrderCreated', 1, 'Order', :n, now(), '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', '{"order_id":"x","customer_id":"cust-42","items":[{"sku":"WIDGET-1","quantity":2,"unit_price_cents":1999},{"sku":"GADGET-7","quantity":1,"unit_price_cents":500}],"total_cents":4498}');
COMMIT;
"#;

/// pgbench running the same transaction, if installed; `None` otherwise.
fn pgbench(db: &TestDb, concurrency: usize, seconds: u64) -> Result<Option<f64>> {
    let script = std::env::temp_dir().join(format!("create-order-{}.sql", uuid::Uuid::now_v7()));
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    // pgbench (libpq) takes a URL as the database name: the test server, our database.
    let admin = tests::admin_url();
    let server = admin.split('?').next().unwrap_or_default();
    let server = server.rsplit_once('/').map_or(server, |(s, _)| s);
    let url = format!("{server}/{}", db.config.database_name().unwrap_or_default());
    let output = std::process::Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &concurrency.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(&url)
        .output();
    let _ = std::fs::remove_file(&script);
    let Ok(output) = output else { return Ok(None) };
    let text = String::from_utf8_lossy(&output.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|n| n.parse().ok());
    if tps.is_none() {
        eprintln!(
            "pgbench gave no figure: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(tps)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let db = TestDb::fresh().await?;
    let deps = Arc::new(Deps {
        pool: db.pool.clone(),
        idempotency_ttl: Duration::from_secs(86_400),
    });
    let event = ApiRequest::post_orders(BODY).build_event_json();
    let keyed = Arc::new(AtomicU64::new(0));

    println!(
        "create-order throughput: {} concurrent tasks, {} s per phase, {} rounds, pool of 20",
        args.concurrency, args.seconds, args.rounds
    );
    let (mut handler_sum, mut raw_sum, mut keyed_sum, mut pgbench_sum, mut pgbench_n) =
        (0.0, 0.0, 0.0, 0.0, 0);
    for round in 1..=args.rounds {
        let handler = {
            let (deps, event) = (deps.clone(), event.clone());
            measure(args.concurrency, args.seconds, move || {
                let (deps, event) = (deps.clone(), event.clone());
                async move {
                    let request = lambda_http::request::from_str(&event)?;
                    let response = create_order::handle(&deps, request).await;
                    if response.status() != 201 {
                        bail!("handler answered {}", response.status());
                    }
                    Ok(())
                }
            })
            .await?
        };
        let raw = {
            let pool = db.pool.clone();
            measure(args.concurrency, args.seconds, move || {
                let pool = pool.clone();
                async move { tests::raw_create_order(&pool, "cust-42").await }
            })
            .await?
        };
        let with_key = {
            let (deps, keyed) = (deps.clone(), keyed.clone());
            measure(args.concurrency, args.seconds, move || {
                let (deps, keyed) = (deps.clone(), keyed.clone());
                async move {
                    let key = format!("bench-{}", keyed.fetch_add(1, Ordering::Relaxed));
                    let request = ApiRequest::post_orders(BODY)
                        .header("idempotency-key", &key)
                        .build();
                    let response = create_order::handle(&deps, request).await;
                    if response.status() != 201 {
                        bail!("handler answered {}", response.status());
                    }
                    Ok(())
                }
            })
            .await?
        };
        let pg = pgbench(&db, args.concurrency, args.seconds)?;
        println!(
            "round {round}: handler {handler:>7.0}/s   raw SQL {raw:>7.0}/s   ratio {:.2}   handler+Idempotency-Key {with_key:>7.0}/s   pgbench {}",
            handler / raw,
            pg.map_or_else(|| "n/a".to_owned(), |t| format!("{t:.0}/s"))
        );
        handler_sum += handler;
        raw_sum += raw;
        keyed_sum += with_key;
        if let Some(t) = pg {
            pgbench_sum += t;
            pgbench_n += 1;
        }
    }
    let n = args.rounds as f64;
    println!(
        "mean: handler {:.0}/s, raw SQL {:.0}/s, handler/raw = {:.2}; with Idempotency-Key {:.0}/s ({:.2} of raw); pgbench {}",
        handler_sum / n,
        raw_sum / n,
        handler_sum / raw_sum,
        keyed_sum / n,
        keyed_sum / raw_sum,
        if pgbench_n > 0 { format!("{:.0}/s", pgbench_sum / f64::from(pgbench_n)) } else { "n/a".into() }
    );
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.orders")
        .fetch_one(&db.pool)
        .await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.outbox")
        .fetch_one(&db.pool)
        .await?;
    println!(
        "rows written: {orders} orders, {events} outbox events (one per order: {})",
        orders == events
    );
    Ok(())
}
