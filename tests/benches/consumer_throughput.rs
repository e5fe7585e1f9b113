//! Inventory-consumer throughput (decode, inbox insert, stock update,
//! reservation and outbox insert, acknowledgement), with the same work done
//! without the event source in the same run on the same database and Redis:
//!
//! - raw: the consumer's own transaction (`inventory_consumer::apply`) called
//!   by hand on pre-decoded events, in chunks of the batch size, one task per
//!   partition (the source's concurrency too: one batch in flight per stream):
//!   no Redis, no decoding, no acknowledgements;
//! - source: the event source with 1 and 2 consumers over 2 partitions, batch
//!   sizes 1, 10 and 100; the consumers start first and share the streams out,
//!   then the events are appended and the clock runs until all are processed;
//! - one record per read: `XREADGROUP COUNT 1`, handle, `XACK`, as in the blog
//!   post this project started from.
//!
//! `cargo bench -p tests --bench consumer_throughput -- [--events 20000]`

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use contracts::events::{OrderCreatedItemV1, OrderCreatedV1, ORDER_AGGREGATE};
use contracts::{OrderId, Quantity, Sku};
use inventory_consumer::{Command, Inventory, Job};
use shared::envelope::{AggregateType, EventEnvelope};
use shared::streams::{partition_of, stream_keys};
use tests::source::{append, connection, fast_settings, source, Running};
use tests::{delete_streams, redis_url, unique_namespace, TestDb};

const PARTITIONS: u16 = 2;
const SKUS: usize = 1000;

fn events_arg() -> Result<usize> {
    let mut events = 20_000;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--events" => events = it.next().context("missing value")?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(events)
}

/// `n` OrderCreated events of one line each over `SKUS` SKUs.
fn orders(n: usize) -> Result<Vec<EventEnvelope>> {
    (0..n)
        .map(|i| {
            let id = OrderId::new();
            let payload = OrderCreatedV1 {
                order_id: id.as_uuid(),
                customer_id: "cust-1".into(),
                items: vec![OrderCreatedItemV1 {
                    sku: format!("SKU-{}", i % SKUS),
                    quantity: 1,
                    unit_price_cents: 100,
                }],
                total_cents: 100,
            };
            let mut e = EventEnvelope::new(
                shared::envelope::EventType::parse("OrderCreated")?,
                1,
                AggregateType::parse(ORDER_AGGREGATE)?,
                shared::envelope::AggregateId::parse(&id.to_string())?,
                None,
                shared::envelope::Payload::of(&payload)?,
            );
            e.occurred_at = shared::envelope::now_utc();
            Ok(e)
        })
        .collect()
}

fn job(e: &EventEnvelope) -> Result<Job> {
    let o: OrderCreatedV1 = e.payload.decode()?;
    Ok(Job {
        event_id: e.event_id.as_uuid(),
        traceparent: e.traceparent,
        command: Command::Reserve {
            order_id: OrderId::from(o.order_id),
            lines: vec![inventory_consumer::Line {
                sku: Sku::parse(&o.items[0].sku)?,
                quantity: Quantity::try_from(1_i64)?,
                unit_price_cents: o.items[0].unit_price_cents,
            }],
        },
    })
}

/// A fresh database with plenty of stock.
async fn database() -> Result<TestDb> {
    let db = TestDb::fresh().await?;
    sqlx::query(
        "INSERT INTO inventory.stock (sku, available, price_cents)
         SELECT 'SKU-' || g, 100000000, 100 FROM generate_series(0, $1 - 1) AS g",
    )
    .bind(i32::try_from(SKUS).expect("a few SKUs"))
    .execute(&db.pool)
    .await?;
    Ok(db)
}

/// The consumer's transaction by hand: one task per partition, chunks of `batch`.
async fn raw(events: &[EventEnvelope], batch: usize) -> Result<f64> {
    let db = database().await?;
    let mut parts: Vec<Vec<Job>> = vec![Vec::new(); usize::from(PARTITIONS)];
    for e in events {
        parts[partition_of(e.aggregate_id.as_str(), PARTITIONS) as usize].push(job(e)?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for part in parts {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            for chunk in part.chunks(batch) {
                inventory_consumer::apply(&pool, chunk).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

/// Streams for a run, pre-filled with `events` by partition.
async fn fill(ns: &str, events: &[EventEnvelope]) -> Result<Vec<String>> {
    let keys = stream_keys(ns, &AggregateType::parse(ORDER_AGGREGATE)?, PARTITIONS);
    let mut parts: Vec<Vec<EventEnvelope>> = vec![Vec::new(); keys.len()];
    for e in events {
        parts[partition_of(e.aggregate_id.as_str(), PARTITIONS) as usize].push(e.clone());
    }
    for (key, part) in keys.iter().zip(&parts) {
        append(key, part).await?;
    }
    Ok(keys)
}

async fn processed(db: &TestDb) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM inventory.processed_events")
            .fetch_one(&db.pool)
            .await?,
    )
}

/// The event source draining the streams.
async fn through_source(events: &[EventEnvelope], consumers: usize, batch: usize) -> Result<f64> {
    let db = database().await?;
    let ns = unique_namespace();
    let keys = stream_keys(&ns, &AggregateType::parse(ORDER_AGGREGATE)?, PARTITIONS);
    let mut running = Vec::new();
    for i in 0..consumers {
        let mut s = fast_settings(&ns, "inventory", keys.clone());
        s.consumer = format!("bench-{i}");
        s.batch_size = batch;
        s.lease_ttl = Duration::from_secs(3);
        let handler = Arc::new(Inventory {
            pool: db.pool.clone(),
        });
        running.push(Running::start(source(s).await?, handler));
    }
    // Let the consumers share the streams out (a few lease ticks).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let started = Instant::now();
    fill(&ns, events).await?;
    while processed(&db).await? < events.len() as i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = events.len() as f64 / started.elapsed().as_secs_f64();
    for r in running {
        r.stop().await?;
    }
    delete_streams(&redis_url(), &ns).await?;
    Ok(rate)
}

/// One record per read, as in the blog post: read one, handle it, ack it.
async fn one_per_read(events: &[EventEnvelope]) -> Result<f64> {
    let db = database().await?;
    let ns = unique_namespace();
    let keys = fill(&ns, events).await?;
    let mut conn = connection().await?;
    for key in &keys {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg("inventory")
            .arg("0")
            .query_async(&mut conn)
            .await?;
    }
    let started = Instant::now();
    let mut done = 0;
    while done < events.len() {
        for key in &keys {
            let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("inventory")
                .arg("blog")
                .arg("COUNT")
                .arg(1)
                .arg("STREAMS")
                .arg(key)
                .arg(">")
                .query_async(&mut conn)
                .await?;
            for entry in reply.keys.iter().flat_map(|k| &k.ids) {
                let fields = entry.map.iter().map(|(k, v)| {
                    let bytes: Vec<u8> = redis::from_redis_value(v.clone()).unwrap_or_default();
                    (k.clone(), bytes)
                });
                let event = EventEnvelope::from_stream_fields(fields)?;
                inventory_consumer::apply(&db.pool, &[job(&event)?]).await?;
                let _: u64 = redis::cmd("XACK")
                    .arg(key)
                    .arg("inventory")
                    .arg(&entry.id)
                    .query_async(&mut conn)
                    .await?;
                done += 1;
            }
        }
    }
    let rate = events.len() as f64 / started.elapsed().as_secs_f64();
    delete_streams(&redis_url(), &ns).await?;
    Ok(rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let n = events_arg()?;
    const ROUNDS: usize = 3;
    println!(
        "inventory-consumer throughput, {n} OrderCreated events per run (batch 1: {}), \
         median of {ROUNDS} rounds, raw and source alternating",
        n / 5
    );
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "run", "source ev/s", "raw ev/s", "ratio"
    );
    for consumers in [1, 2] {
        for batch in [1, 10, 100] {
            // Batch size 1 is slow; a fifth of the events keeps the run short.
            let count = if batch == 1 { n / 5 } else { n };
            let (mut raws, mut sources) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                raws.push(raw(&orders(count)?, batch).await?);
                sources.push(through_source(&orders(count)?, consumers, batch).await?);
            }
            let (rate, raw_rate) = (median(sources), median(raws));
            println!(
                "{:<28} {:>12.0} {:>12.0} {:>8.2}",
                format!("{consumers} consumer(s), batch {batch}"),
                rate,
                raw_rate,
                rate / raw_rate
            );
        }
    }
    let events = orders(n / 5)?;
    let rate = one_per_read(&events).await?;
    println!("{:<28} {:>12.0}", "one record per read (blog)", rate);
    Ok(())
}
