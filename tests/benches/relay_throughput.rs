//! Outbox relay throughput and latency, with the raw limits of the same work
//! measured in the same run on the same database and Redis:
//!
//! - raw SQL: the relay's own claim-and-delete transactions (slot locks, read 500
//!   rows, delete them, commit) with no Redis and no decoding;
//! - raw XADD: the same number of entries pipelined 500 per round trip;
//! - the relay, 1 and 2 instances, draining the whole pre-filled outbox;
//! - LISTEN/NOTIFY mode: commit-to-XADD latency under a steady rate of events.
//!
//! `cargo bench -p tests --bench relay_throughput -- [--rows 1000000] [--rate 1000] [--seconds 10]`

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use shared::outbox;
use shared::relay::{RelayOptions, SLOTS};
use tests::{redis_url, unique_namespace, TestDb};

struct Args {
    rows: i64,
    rate: u64,
    seconds: u64,
}

fn args() -> Result<Args> {
    let mut parsed = Args {
        rows: 1_000_000,
        rate: 1000,
        seconds: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("missing value");
        match arg.as_str() {
            "--rows" => parsed.rows = value()?.parse()?,
            "--rate" => parsed.rate = value()?.parse()?,
            "--seconds" => parsed.seconds = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(parsed)
}

/// The relay's SQL alone: claim slots, read a batch, delete it, commit.
async fn raw_sql(db: &TestDb) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut total = 0;
    let mut cursor = 0_i16;
    loop {
        // Like the relay: start where the last batch stopped, so batches cycle through all slots.
        let slots: Vec<i16> = (0..SLOTS).map(|i| (cursor + i) % SLOTS).collect();
        cursor = (cursor + 8) % SLOTS;
        let mut tx = db.pool.begin().await?;
        let taken: Vec<i16> = sqlx::query_scalar(
            "SELECT s FROM unnest($1::smallint[]) WITH ORDINALITY AS t(s, n)
             WHERE pg_try_advisory_xact_lock(1, s) ORDER BY n LIMIT 8",
        )
        .bind(&slots)
        .fetch_all(&mut *tx)
        .await?;
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, payload::text FROM orders.outbox
             WHERE failed_at IS NULL AND relay_slot = ANY($1) ORDER BY id LIMIT 500",
        )
        .bind(&taken)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            // The other half of the slots may still hold rows.
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.outbox")
                .fetch_one(&mut *tx)
                .await?;
            tx.rollback().await?;
            if left == 0 {
                break;
            }
            continue;
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        sqlx::query("DELETE FROM orders.outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        total += ids.len() as u64;
    }
    Ok((total, started.elapsed()))
}

/// Pipelined XADD alone: `rows` entries like the relay's, 500 per round trip.
async fn raw_xadd(rows: i64, namespace: &str) -> Result<(u64, Duration)> {
    let client = redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let fields: Vec<(&str, String)> = vec![
        ("event_id", uuid::Uuid::now_v7().to_string()),
        ("event_type", "OrderCreated".into()),
        ("schema_version", "1".into()),
        ("aggregate_type", "Order".into()),
        ("aggregate_id", "order-1".into()),
        ("occurred_at", "2026-11-24T06:07:08.549755Z".into()),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        ("payload", r#"{"order_id":"order-1","customer_id":"cust-42","items":[{"sku":"WIDGET-1","quantity":2,"unit_price_cents":1999},{"sku":"GADGET-7","quantity":1,"unit_price_cents":500}],"total_cents":4498}"#.into()),
    ];
    let key = format!("{namespace}:{{Raw:0}}");
    let started = Instant::now();
    let mut sent = 0;
    while sent < rows {
        let n = (rows - sent).min(500);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.xadd(&key, "*", &fields).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        sent += n;
    }
    let elapsed = started.elapsed();
    let _: usize = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
    Ok((sent as u64, elapsed))
}

async fn relays(db: &TestDb, count: usize, namespace: &str) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..count {
        let relay = tests::relay(
            &db.pool,
            &redis_url(),
            RelayOptions {
                stream_namespace: namespace.to_owned(),
                outboxes: vec![order_service::OUTBOX],
                ..tests::relay_options()
            },
        )
        .await?;
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut published = 0;
            loop {
                published += relay
                    .drain_until(Instant::now() + Duration::from_secs(3600))
                    .await?
                    .published;
                let left: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.outbox")
                    .fetch_one(&pool)
                    .await?;
                if left == 0 {
                    return anyhow::Ok(published);
                }
            }
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((total, started.elapsed()))
}

async fn clear_streams(namespace: &str) -> Result<()> {
    tests::delete_streams(&redis_url(), namespace).await
}

fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        u64::try_from(d.as_millis()).expect("after 1970, before 2^64 ms")
    })
}

/// Commit-to-XADD latency in LISTEN/NOTIFY mode at `rate` events per second.
async fn notify_latency(db: &TestDb, rate: u64, seconds: u64) -> Result<Vec<u64>> {
    let namespace = unique_namespace();
    let relay = tests::relay(
        &db.pool,
        &redis_url(),
        RelayOptions {
            stream_namespace: namespace.clone(),
            ..tests::relay_options()
        },
    )
    .await?;
    let running = tests::RunningRelay::start(relay, Duration::from_secs(5)).await;
    // Each event is its own transaction, started on schedule whether or not the
    // previous one has committed, so the offered rate is the rate asked for.
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut writers = Vec::new();
    let mut n = 0_u64;
    while Instant::now() < end {
        tick.tick().await;
        let pool = db.pool.clone();
        writers.push(tokio::spawn(async move {
            let event = shared::envelope::EventEnvelope::new(
                shared::envelope::EventType::parse("OrderCreated")?,
                1,
                shared::envelope::AggregateType::parse("Order")?,
                shared::envelope::AggregateId::parse(&format!("order-{}", n % 1000))?,
                None,
                shared::envelope::Payload::from_json(format!(r#"{{"n":{n}}}"#))?,
            );
            let mut tx = pool.begin().await?;
            outbox::append(&mut tx, &order_service::OUTBOX, &event).await?;
            tx.commit().await?;
            anyhow::Ok((event.event_id, epoch_ms()))
        }));
        n += 1;
    }
    let mut commits = std::collections::HashMap::new();
    for writer in writers {
        let (id, at) = writer.await??;
        commits.insert(id, at);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await?;
    // An entry id is Redis' clock at XADD, in ms: the same clock as the commit times.
    let client = redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{namespace}:{{Order:0}}"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    let mut latencies = Vec::new();
    for entry in &reply.ids {
        let xadd_ms: u64 = entry.id.split('-').next().unwrap_or("0").parse()?;
        let event_id: String = entry.get("event_id").unwrap_or_default();
        if let Some(committed) = uuid::Uuid::parse_str(&event_id)
            .ok()
            .and_then(|id| commits.get(&id.into()))
        {
            latencies.push(xadd_ms.saturating_sub(*committed));
        }
    }
    if latencies.len() != commits.len() {
        bail!(
            "{} events committed, {} found in the stream",
            commits.len(),
            latencies.len()
        );
    }
    clear_streams(&namespace).await?;
    latencies.sort_unstable();
    Ok(latencies)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let db = TestDb::fresh().await?;
    let namespace = unique_namespace();
    println!(
        "relay throughput: {} pre-filled outbox rows per phase, batches of 500",
        args.rows
    );

    tests::prefill_outbox(&db, args.rows).await?;
    let (n, d) = raw_sql(&db).await?;
    let raw_sql_rate = rate(n, d);
    println!(
        "raw claim-and-delete SQL: {n} rows in {:.1} s = {raw_sql_rate:.0} rows/s",
        d.as_secs_f64()
    );

    let (n, d) = raw_xadd(args.rows, &namespace).await?;
    let raw_xadd_rate = rate(n, d);
    println!(
        "raw pipelined XADD:       {n} entries in {:.1} s = {raw_xadd_rate:.0} entries/s",
        d.as_secs_f64()
    );

    for count in [1, 2] {
        tests::prefill_outbox(&db, args.rows).await?;
        let (n, d) = relays(&db, count, &namespace).await?;
        let r = rate(n, d);
        println!(
            "relay x{count}: {n} events in {:.1} s = {r:.0} events/s; {:.2} of raw SQL, {:.2} of raw XADD",
            d.as_secs_f64(),
            r / raw_sql_rate,
            r / raw_xadd_rate
        );
        if n != args.rows as u64 {
            bail!("published {n} of {} rows", args.rows);
        }
        clear_streams(&namespace).await?;
    }

    let latencies = notify_latency(&db, args.rate, args.seconds).await?;
    let pct = |p: f64| latencies[tests::percentile_index(latencies.len(), p)];
    println!(
        "LISTEN/NOTIFY at {}/s for {} s: {} events, commit-to-XADD p50 {} ms, p99 {} ms, max {} ms",
        args.rate,
        args.seconds,
        latencies.len(),
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    Ok(())
}
