//! The order reconciler's cost: one run over 1,000,000 orders of which 1,000
//! are stuck `PENDING` (past the timeout); it must read them from the partial
//! index, not scan the table. Then a run with nothing due.
//!
//! `cargo bench -p tests --bench reconciler -- [--orders 1000000] [--stuck 1000]`

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use shared::config::Env;
use shared::retention::RetentionConfig;
use tests::TestDb;

#[tokio::main]
async fn main() -> Result<()> {
    let (mut orders, mut stuck) = (1_000_000_i64, 1_000_i64);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("missing value");
        match arg.as_str() {
            "--orders" => orders = value()?.parse()?,
            "--stuck" => stuck = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    let db = TestDb::fresh().await?;
    let mut conn = db.pool.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    let loading = Instant::now();
    // Settled orders from the last 30 days; the newest `stuck` are PENDING since 2 minutes.
    sqlx::query(
        "INSERT INTO orders.orders (id, customer_id, status, total_cents, created_at, updated_at, created_event_id)
         SELECT gen_random_uuid(), 'cust-' || (g % 5000),
                CASE WHEN g > $1 - $2 THEN 'PENDING' WHEN g % 10 = 0 THEN 'REJECTED' ELSE 'CONFIRMED' END,
                1999,
                CASE WHEN g > $1 - $2 THEN now() - interval '2 minutes'
                     ELSE now() - interval '30 days' + (g * interval '2 seconds') END,
                now(), gen_random_uuid()
         FROM generate_series(1, $1) AS g",
    )
    .bind(orders)
    .bind(stuck)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO orders.order_lines (order_id, line_no, sku, quantity, unit_price_cents)
         SELECT id, 1, 'WIDGET-1', 1, 1999 FROM orders.orders",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("VACUUM ANALYZE orders.orders")
        .execute(&mut *conn)
        .await?;
    sqlx::query("VACUUM ANALYZE orders.order_lines")
        .execute(&mut *conn)
        .await?;
    drop(conn);
    println!(
        "reconciler: {orders} orders ({stuck} PENDING for 2 minutes) loaded in {:.0} s",
        loading.elapsed().as_secs_f64()
    );
    let settings = order_reconciler::Settings::default();
    let retention = RetentionConfig::from_env(&Env::default())?;
    for (label, expect) in [
        ("run with stuck orders", stuck),
        ("run with nothing due", 0),
    ] {
        let started = Instant::now();
        let summary = order_reconciler::reconcile(
            &db.pool,
            &settings,
            &retention,
            shared::envelope::now_utc(),
        )
        .await?;
        let took = started.elapsed();
        println!(
            "{label}: {} ms ({} OrderCreated sent again, {} timed out, oldest PENDING {:?} s)",
            took.as_millis(),
            summary.created_resent,
            summary.timed_out,
            summary.oldest_pending_seconds
        );
        if summary.created_resent != expect as u64 {
            bail!("sent {} again, expected {expect}", summary.created_resent);
        }
        if took > Duration::from_secs(1) {
            println!("  over the 1 s goal");
        }
    }
    Ok(())
}
