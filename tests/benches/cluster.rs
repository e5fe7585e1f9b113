//! Issue 16's benchmarks, each a ratio measured in one run on this machine:
//!
//! - the relay draining a pre-filled outbox into 8 partitions, and the event
//!   source draining 8 pre-filled partitions (a handler that does nothing, so
//!   Redis's part is what is measured), on a 3-primary Redis Cluster against one
//!   Redis node, both private servers started here without replicas, rounds
//!   alternating;
//! - `ParallelizationFactor` 1, 2 and 4 on one stream of many aggregates, with
//!   the inventory consumer's real handler (PostgreSQL) and with a handler that
//!   takes 5 ms per call (an I/O-bound handler), batch size 10.
//!
//! `cargo bench -p tests --bench cluster -- [--rows 100000] [--events 20000] [--rounds 3] [--parallel-only]`

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use shared::envelope::{AggregateType, EventEnvelope};
use shared::redis_link::{Redis, RedisClient};
use shared::relay::{Relay, RelayOptions};
use shared::source::{BatchHandler, BatchResponse, HandlerError, StreamBatch};
use shared::streams::{partition_of, stream_key, stream_keys};
use tests::cluster::RedisCluster;
use tests::source::{event, fast_settings, Recorder, Running};
use tests::{spare_port, unique_namespace, RedisServer, TestDb};

const PARTITIONS: u16 = 8;

struct Args {
    rows: i64,
    events: usize,
    rounds: usize,
    /// Only the ParallelizationFactor runs.
    parallel_only: bool,
}

fn args() -> Result<Args> {
    let mut parsed = Args {
        rows: 100_000,
        events: 20_000,
        rounds: 3,
        parallel_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("missing value");
        match arg.as_str() {
            "--rows" => parsed.rows = value()?.parse()?,
            "--events" => parsed.events = value()?.parse()?,
            "--rounds" => parsed.rounds = value()?.parse()?,
            "--parallel-only" => parsed.parallel_only = true,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(parsed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One relay draining `rows` pre-filled rows into 8 partitions: rows/s.
async fn relay(redis: &RedisClient, rows: i64) -> Result<f64> {
    let db = TestDb::fresh().await?;
    tests::prefill_outbox(&db, rows).await?;
    let relay = Relay::new(
        db.pool.clone(),
        redis.connect(Duration::from_secs(10))?,
        RelayOptions {
            stream_namespace: unique_namespace(),
            stream_partitions: PARTITIONS,
            outboxes: vec![order_service::OUTBOX],
            ..tests::relay_options()
        },
    );
    let started = Instant::now();
    let mut published = 0;
    while db.count("orders.outbox").await? > 0 {
        published += relay
            .drain_until(Instant::now() + Duration::from_secs(3600))
            .await?
            .published;
    }
    Ok(published as f64 / started.elapsed().as_secs_f64())
}

/// `events` test events of 2,000 aggregates appended to their partitions.
async fn fill(redis: &mut Redis, ns: &str, events: usize) -> Result<()> {
    let kind = AggregateType::parse("Test")?;
    let mut parts: Vec<Vec<EventEnvelope>> = vec![Vec::new(); usize::from(PARTITIONS)];
    for i in 0..events {
        let aggregate = format!("agg-{}", i % 2000);
        let p = partition_of(&aggregate, PARTITIONS);
        parts[usize::from(p)].push(event(&aggregate, (i / 2000) as u64));
    }
    for (p, part) in parts.iter().enumerate() {
        let key = stream_key(ns, &kind, u16::try_from(p)?);
        for chunk in part.chunks(500) {
            let mut pipe = redis::pipe();
            for e in chunk {
                pipe.xadd(&key, "*", &e.to_stream_fields()).ignore();
            }
            pipe.query_async::<()>(redis).await?;
        }
    }
    Ok(())
}

/// The event source (one consumer) draining `events` pre-filled records of 8
/// partitions with a handler that does nothing: records/s.
async fn source(redis: &RedisClient, events: usize) -> Result<f64> {
    let ns = unique_namespace();
    let mut conn = redis.connect(Duration::from_secs(10))?;
    fill(&mut conn, &ns, events).await?;
    let streams = stream_keys(&ns, &AggregateType::parse("Test")?, PARTITIONS);
    let mut settings = fast_settings(&ns, "bench", streams);
    settings.batch_size = 100;
    let handler = Recorder::new(|_| shared::source::RecordOutcome::Done);
    let started = Instant::now();
    let running = Running::start(
        shared::source::EventSource::with_client(redis.clone(), Duration::from_secs(10), settings)?,
        handler.clone(),
    );
    while handler.done().len() < events {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    running.stop().await?;
    Ok(rate)
}

/// Takes `pause` per call: an I/O-bound handler.
struct Slow {
    pause: Duration,
    done: std::sync::atomic::AtomicUsize,
}

impl BatchHandler for Slow {
    async fn handle(&self, batch: StreamBatch) -> Result<BatchResponse, HandlerError> {
        tokio::time::sleep(self.pause).await;
        self.done
            .fetch_add(batch.records.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(BatchResponse::default())
    }
}

/// OrderCreated events of `n` orders (each its own aggregate) over 1,000 SKUs.
fn orders(n: usize) -> Result<Vec<EventEnvelope>> {
    use contracts::events::{OrderCreatedItemV1, OrderCreatedV1, ORDER_AGGREGATE};
    (0..n)
        .map(|i| {
            let id = contracts::OrderId::new();
            let payload = OrderCreatedV1 {
                order_id: id.as_uuid(),
                customer_id: "cust-1".into(),
                items: vec![OrderCreatedItemV1 {
                    sku: format!("SKU-{}", i % 1000),
                    quantity: 1,
                    unit_price_cents: 100,
                }],
                total_cents: 100,
            };
            Ok(EventEnvelope::new(
                shared::envelope::EventType::parse("OrderCreated")?,
                1,
                AggregateType::parse(ORDER_AGGREGATE)?,
                shared::envelope::AggregateId::parse(&id.to_string())?,
                None,
                shared::envelope::Payload::of(&payload)?,
            ))
        })
        .collect()
}

/// One stream of `events` records, one consumer at `factor`: records/s, with
/// the inventory consumer (`real`) or a 5 ms handler.
async fn parallel(redis: &RedisClient, events: usize, factor: usize, real: bool) -> Result<f64> {
    let ns = unique_namespace();
    let key = stream_key(&ns, &AggregateType::parse("Order")?, 0);
    let mut conn = redis.connect(Duration::from_secs(10))?;
    let records = orders(events)?;
    for chunk in records.chunks(500) {
        let mut pipe = redis::pipe();
        for e in chunk {
            pipe.xadd(&key, "*", &e.to_stream_fields()).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    let mut settings = fast_settings(&ns, "inventory", vec![key]);
    settings.batch_size = 10;
    settings.parallelization_factor = factor;
    let source =
        shared::source::EventSource::with_client(redis.clone(), Duration::from_secs(10), settings)?;
    if real {
        let db = TestDb::fresh().await?;
        sqlx::query(
            "INSERT INTO inventory.stock (sku, available, price_cents)
             SELECT 'SKU-' || g, 100000000, 100 FROM generate_series(0, 999) AS g",
        )
        .execute(&db.pool)
        .await?;
        let started = Instant::now();
        let running = Running::start(
            source,
            Arc::new(inventory_consumer::Inventory {
                pool: db.pool.clone(),
            }),
        );
        while db.count("inventory.processed_events").await? < events as i64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rate = events as f64 / started.elapsed().as_secs_f64();
        running.stop().await?;
        return Ok(rate);
    }
    let handler = Arc::new(Slow {
        pause: Duration::from_millis(5),
        done: std::sync::atomic::AtomicUsize::default(),
    });
    let started = Instant::now();
    let running = Running::start(source, handler.clone());
    while handler.done.load(std::sync::atomic::Ordering::SeqCst) < events {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    running.stop().await?;
    Ok(rate)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let node = RedisServer::start(spare_port()?).await?;
    let cluster = RedisCluster::start_with(0).await?;
    let (node_client, cluster_client) = (RedisClient::open(&node.url(), false)?, cluster.client()?);

    if !args.parallel_only {
        versus_one_node(&args, &node_client, &cluster_client).await?;
    }
    parallelization(&args, &node_client).await
}

async fn versus_one_node(
    args: &Args,
    node_client: &RedisClient,
    cluster_client: &RedisClient,
) -> Result<()> {
    println!(
        "Redis Cluster (3 primaries) against one node, no replicas, median of {} rounds, alternating",
        args.rounds
    );
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "run", "cluster /s", "node /s", "ratio"
    );
    let (mut on_cluster, mut on_node) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        on_node.push(relay(node_client, args.rows).await?);
        on_cluster.push(relay(cluster_client, args.rows).await?);
    }
    let (c, n) = (median(on_cluster), median(on_node));
    let line = format!("relay, {} rows, {PARTITIONS} partitions", args.rows);
    println!("{line:<44} {c:>12.0} {n:>12.0} {:>8.2}", c / n);
    let (mut on_cluster, mut on_node) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        on_node.push(source(node_client, args.events).await?);
        on_cluster.push(source(cluster_client, args.events).await?);
    }
    let (c, n) = (median(on_cluster), median(on_node));
    let line = format!(
        "event source, {} records, {PARTITIONS} partitions",
        args.events
    );
    println!("{line:<44} {c:>12.0} {n:>12.0} {:>8.2}", c / n);
    println!();
    Ok(())
}

async fn parallelization(args: &Args, node_client: &RedisClient) -> Result<()> {
    println!(
        "ParallelizationFactor on one stream (one node), batch 10, {} records, median of {} rounds",
        args.events / 2,
        args.rounds
    );
    println!(
        "{:<30} {:>10} {:>10} {:>10}",
        "handler", "factor 1", "factor 2", "factor 4"
    );
    for real in [true, false] {
        let mut rates = Vec::new();
        for factor in [1, 2, 4] {
            let mut runs = Vec::new();
            for _ in 0..args.rounds {
                runs.push(parallel(node_client, args.events / 2, factor, real).await?);
            }
            rates.push(median(runs));
        }
        let name = if real {
            "inventory (PostgreSQL) /s"
        } else {
            "5 ms per call /s"
        };
        println!(
            "{name:<30} {:>10.0} {:>10.0} {:>10.0}   (x{:.2}, x{:.2})",
            rates[0],
            rates[1],
            rates[2],
            rates[1] / rates[0],
            rates[2] / rates[0]
        );
    }
    Ok(())
}
