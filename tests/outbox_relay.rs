//! The outbox relay against real PostgreSQL and Redis: every committed event
//! reaches its stream, exactly as written, in order per aggregate, never lost.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use shared::envelope::{AggregateId, AggregateType, EventEnvelope, EventType, Payload};
use shared::outbox::{self, Outbox};
use shared::relay::{Fault, Relay, RelayError, RelayOptions};
use shared::trace::TraceParent;
use shared::Retry;
use tests::{read_streams, redis_url, unique_namespace, RedisServer, RunningRelay, TestDb};

fn options(namespace: &str) -> RelayOptions {
    RelayOptions {
        stream_namespace: namespace.to_owned(),
        ..tests::relay_options()
    }
}

async fn relay(db: &TestDb, redis_url: &str, options: RelayOptions) -> Result<Relay> {
    tests::relay(&db.pool, redis_url, options).await
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

fn event(aggregate_type: &str, aggregate_id: &str, seq: u64) -> Result<EventEnvelope> {
    Ok(EventEnvelope::new(
        EventType::parse("TestHappened")?,
        1,
        AggregateType::parse(aggregate_type)?,
        AggregateId::parse(aggregate_id)?,
        Some(TraceParent::new_root()),
        Payload::from_json(format!(r#"{{ "seq": {seq},  "amount": 1.50 }}"#))?,
    ))
}

/// Appends `event` to `outbox` in a transaction of its own.
async fn append(db: &TestDb, outbox: &Outbox, event: &EventEnvelope) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    outbox::append(&mut tx, outbox, event).await?;
    tx.commit().await?;
    Ok(())
}

fn seq(event: &EventEnvelope) -> u64 {
    event
        .payload
        .decode::<serde_json::Value>()
        .ok()
        .and_then(|v| v["seq"].as_u64())
        .unwrap_or(u64::MAX)
}

/// Events from both outboxes arrive in their streams with every envelope field
/// and the payload byte for byte as written; the outboxes are left empty.
#[tokio::test]
async fn events_reach_their_streams_exactly_as_written() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    let order_event = event("Order", "0193a3e2-7c1a-7000-8000-000000000001", 1)?;
    let stock_event = event("Stock", "WIDGET-1", 1)?;
    append(&db, &order_service::OUTBOX, &order_event).await?;
    append(&db, &inventory_service::OUTBOX, &stock_event).await?;

    let relay = relay(&db, &redis_url(), options(&ns)).await?;
    let summary = relay.drain_until(far()).await?;
    assert_eq!(
        (summary.published, summary.failed, summary.stopped_by),
        (2, 0, "empty")
    );
    assert_eq!(summary.backlog["orders.outbox"].pending, 0);
    assert_eq!(
        summary.backlog["inventory.outbox"].oldest_pending_age_ms,
        None
    );

    let streams = read_streams(&redis_url(), &ns).await?;
    assert_eq!(
        streams[&format!("{ns}:{{Order:0}}")],
        vec![order_event.clone()]
    );
    assert_eq!(streams[&format!("{ns}:{{Stock:0}}")], vec![stock_event]);
    assert_eq!(
        streams[&format!("{ns}:{{Order:0}}")][0].payload.as_str(),
        r#"{ "seq": 1,  "amount": 1.50 }"#,
        "the payload is relayed byte for byte"
    );
    assert_eq!(
        db.count("orders.outbox").await? + db.count("inventory.outbox").await?,
        0
    );
    Ok(())
}

/// Guarantee 1: a crash after XADD and before the commit leaves the rows
/// pending; the next run publishes them again with the same event ids.
#[tokio::test]
async fn a_crash_after_xadd_republishes_the_same_events() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    let mut written = Vec::new();
    for i in 0..10 {
        let e = event("Order", &format!("agg-{}", i % 3), i)?;
        append(&db, &order_service::OUTBOX, &e).await?;
        written.push(e.event_id);
    }
    let crashing = relay(
        &db,
        &redis_url(),
        RelayOptions {
            fault: Fault::CrashAfterPublish,
            slots_per_batch: 16,
            ..options(&ns)
        },
    )
    .await?;
    let crashed = crashing.relay_once(&order_service::OUTBOX).await;
    assert!(matches!(crashed, Err(RelayError::Injected)), "{crashed:?}");
    assert_eq!(db.count("orders.outbox").await?, 10, "nothing is lost");

    let relay = relay(&db, &redis_url(), options(&ns)).await?;
    relay.drain_until(far()).await?;
    assert_eq!(db.count("orders.outbox").await?, 0);
    let entries: Vec<_> = read_streams(&redis_url(), &ns)
        .await?
        .into_values()
        .flatten()
        .collect();
    assert_eq!(entries.len(), 20, "published twice: at least once");
    let first: Vec<_> = entries[..10].iter().map(|e| e.event_id).collect();
    assert_eq!(first, written, "the crashed batch reached Redis whole");
    let mut second: Vec<_> = entries[10..].iter().map(|e| e.event_id).collect();
    // Batches in flight at once may interleave aggregates; each aggregate keeps its order.
    for aggregate in ["agg-0", "agg-1", "agg-2"] {
        let of = |es: &[EventEnvelope]| {
            es.iter()
                .filter(|e| e.aggregate_id.as_str() == aggregate)
                .map(|e| e.event_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            of(&entries[10..]),
            of(&entries[..10]),
            "{aggregate} again, in order"
        );
    }
    second.sort();
    let mut expected = written.clone();
    expected.sort();
    assert_eq!(second, expected, "the same event ids again");
    Ok(())
}

/// Guarantee 2: a transaction that took a lower outbox id but commits after a
/// higher id was published is still published.
#[tokio::test]
async fn a_late_commit_with_a_lower_id_is_not_skipped() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    let relay = relay(&db, &redis_url(), options(&ns)).await?;

    let slow = event("Order", "slow", 1)?;
    let mut slow_tx = db.pool.begin().await?;
    outbox::append(&mut slow_tx, &order_service::OUTBOX, &slow).await?;
    let fast = event("Order", "fast", 1)?;
    append(&db, &order_service::OUTBOX, &fast).await?;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders.outbox")
        .fetch_all(&db.pool)
        .await?;
    assert_eq!(ids.len(), 1, "only the fast row is visible yet");

    assert_eq!(relay.drain_until(far()).await?.published, 1);
    slow_tx.commit().await?;
    let slow_id: i64 = sqlx::query_scalar("SELECT id FROM orders.outbox")
        .fetch_one(&db.pool)
        .await?;
    assert!(slow_id < ids[0], "the late row has the lower id");
    assert_eq!(relay.drain_until(far()).await?.published, 1);

    let ids: HashSet<_> = read_streams(&redis_url(), &ns)
        .await?
        .into_values()
        .flatten()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, HashSet::from([slow.event_id, fast.event_id]));
    Ok(())
}

/// Guarantee 3: four relays draining one outbox at once, while writers add
/// events, keep each aggregate's events in the order they were written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_relays_keep_each_aggregate_in_order() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    let opts = RelayOptions {
        batch_size: 7,
        slots_per_batch: 3,
        stream_partitions: 3,
        ..options(&ns)
    };
    let (aggregates, per_aggregate) = (24_u64, 40_u64);
    let writers: Vec<_> = (0..4_u64)
        .map(|w| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                for n in 0..per_aggregate {
                    for a in (w..aggregates).step_by(4) {
                        let e = event("Order", &format!("agg-{a}"), n)?;
                        let mut tx = pool.begin().await?;
                        outbox::append(&mut tx, &order_service::OUTBOX, &e).await?;
                        tx.commit().await?;
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let mut relays = Vec::new();
    for _ in 0..4 {
        let relay = relay(&db, &redis_url(), opts.clone()).await?;
        let pool = db.pool.clone();
        relays.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                relay.drain_until(deadline).await?;
                let left: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.outbox")
                    .fetch_one(&pool)
                    .await?;
                // Keep going while writers may still be adding rows.
                if left == 0 && Instant::now() > deadline - Duration::from_secs(118) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    for relay in relays {
        relay.await??;
    }
    // Writers are done; one last drain in case the relays stopped in a lull.
    relay(&db, &redis_url(), opts.clone())
        .await?
        .drain_until(far())
        .await?;

    let streams = read_streams(&redis_url(), &ns).await?;
    assert_eq!(streams.len(), 3, "three partitions");
    let mut per_aggregate_seen: HashMap<String, Vec<u64>> = HashMap::new();
    for (key, entries) in &streams {
        for e in entries {
            let partition = shared::streams::partition_of(e.aggregate_id.as_str(), 3);
            assert!(
                key.ends_with(&format!(":{partition}}}")),
                "{} landed in {key}",
                e.aggregate_id
            );
            per_aggregate_seen
                .entry(e.aggregate_id.to_string())
                .or_default()
                .push(seq(e));
        }
    }
    assert_eq!(per_aggregate_seen.len() as u64, aggregates);
    for (aggregate, seqs) in per_aggregate_seen {
        assert_eq!(
            seqs,
            (0..per_aggregate).collect::<Vec<_>>(),
            "{aggregate} out of order or incomplete"
        );
    }
    Ok(())
}

/// Guarantee 4: with Redis down the invocation fails with a retryable error and
/// the rows stay pending; once Redis is back, everything is published.
#[tokio::test]
async fn redis_down_fails_retryably_and_nothing_is_lost() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    let port = tests::spare_port()?;
    let server = RedisServer::start(port).await?;
    let url = server.url();
    // A short timeout, so the failure comes fast.
    let redis = shared::relay::connect_redis(&url, Duration::from_millis(500)).await?;
    let relay = Relay::new(db.pool.clone(), redis, options(&ns));
    for i in 0..5 {
        append(&db, &order_service::OUTBOX, &event("Order", "agg-1", i)?).await?;
    }
    server.kill();

    let started = Instant::now();
    let failure = relay.drain_until(far()).await.expect_err("Redis is down");
    assert_eq!(failure.retry(), Retry::Retryable, "{failure}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed fast, not hung"
    );
    assert_eq!(db.count("orders.outbox").await?, 5, "rows stay pending");

    let _server = RedisServer::start(port).await?;
    let mut summary = None;
    for _ in 0..50 {
        // The connection manager reconnects on its own; give it a moment.
        match relay.drain_until(far()).await {
            Ok(s) => {
                summary = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(summary.map(|s| s.published), Some(5));
    let seqs: Vec<u64> = read_streams(&url, &ns)
        .await?
        .into_values()
        .flatten()
        .map(|e| seq(&e))
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    assert_eq!(db.count("orders.outbox").await?, 0);
    Ok(())
}

/// Guarantee 5: rows that can never be published (a malformed envelope, an
/// entry over the size limit) are set aside with their error, counted and
/// listed, and block neither the rows behind them nor the rest of their aggregate.
#[tokio::test]
async fn poison_rows_are_set_aside_without_blocking_others() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    let insert = |event_type: &'static str,
                  traceparent: Option<&'static str>,
                  payload: String,
                  seq: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO orders.outbox (event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, traceparent, payload)
                 VALUES (gen_random_uuid(), $1, 1, 'Order', 'agg-1', now(), $2, $3::json)",
            )
            .bind(event_type)
            .bind(traceparent)
            .bind(payload.replace("SEQ", &seq.to_string()))
            .execute(&pool)
            .await
        }
    };
    insert("TestHappened", None, r#"{"seq": SEQ}"#.into(), 0).await?;
    insert("Not A Type", None, r#"{"seq": SEQ}"#.into(), 1).await?;
    insert("TestHappened", None, r#"{"seq": SEQ}"#.into(), 2).await?;
    insert("TestHappened", Some("garbage"), r#"{"seq": SEQ}"#.into(), 3).await?;
    insert(
        "TestHappened",
        None,
        format!(r#"{{"seq": SEQ, "blob": "{}"}}"#, "x".repeat(4096)),
        4,
    )
    .await?;
    insert("TestHappened", None, r#"{"seq": SEQ}"#.into(), 5).await?;

    let relay = relay(
        &db,
        &redis_url(),
        RelayOptions {
            max_entry_bytes: 2048,
            ..options(&ns)
        },
    )
    .await?;
    let summary = relay.drain_until(far()).await?;
    assert_eq!((summary.published, summary.failed), (3, 3));
    assert_eq!(summary.backlog["orders.outbox"].failed, 3);
    assert_eq!(summary.backlog["orders.outbox"].pending, 0);
    let seqs: Vec<u64> = read_streams(&redis_url(), &ns)
        .await?
        .into_values()
        .flatten()
        .map(|e| seq(&e))
        .collect();
    assert_eq!(seqs, [0, 2, 5], "the rest of the aggregate went on");

    let failed = relay.failed_rows(&order_service::OUTBOX, 10).await?;
    assert_eq!(failed.len(), 3);
    let errors: Vec<String> = failed
        .iter()
        .map(|f| f.last_error.clone().unwrap_or_default())
        .collect();
    assert!(errors[0].contains("event_type"), "{errors:?}");
    assert!(errors[1].contains("traceparent"), "{errors:?}");
    assert!(errors[2].contains("over the limit"), "{errors:?}");
    assert!(failed.iter().all(|f| f.attempts == 1));

    // An operator fixes a row and redrives it; the next run publishes it.
    sqlx::query("UPDATE orders.outbox SET event_type = 'TestHappened' WHERE id = $1")
        .bind(failed[0].id)
        .execute(&db.pool)
        .await?;
    assert_eq!(
        relay
            .redrive(&order_service::OUTBOX, &[failed[0].id])
            .await?,
        1
    );
    assert_eq!(relay.drain_until(far()).await?.published, 1);
    assert_eq!(
        relay.failed_rows(&order_service::OUTBOX, 10).await?.len(),
        2
    );
    Ok(())
}

/// Guarantee 6: four relays on 100,000 rows publish each event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_relays_publish_100_000_rows_exactly_once() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    sqlx::query(
        "INSERT INTO orders.outbox (event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, payload)
         SELECT gen_random_uuid(), 'TestHappened', 1, 'Order', 'agg-' || (g % 997), now(), json_build_object('seq', g)
         FROM generate_series(1, 100000) AS g",
    )
    .execute(&db.pool)
    .await?;
    let opts = RelayOptions {
        stream_partitions: 4,
        ..options(&ns)
    };
    let mut relays = Vec::new();
    for _ in 0..4 {
        let relay = relay(&db, &redis_url(), opts.clone()).await?;
        relays.push(tokio::spawn(async move {
            let mut published = 0;
            loop {
                let summary = relay.drain_until(far()).await?;
                published += summary.published;
                if summary.backlog["orders.outbox"].pending == 0 {
                    return anyhow::Ok(published);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let mut per_relay = Vec::new();
    for relay in relays {
        per_relay.push(relay.await??);
    }
    assert_eq!(per_relay.iter().sum::<u64>(), 100_000, "{per_relay:?}");
    let entries: Vec<EventEnvelope> = read_streams(&redis_url(), &ns)
        .await?
        .into_values()
        .flatten()
        .collect();
    assert_eq!(entries.len(), 100_000);
    assert_eq!(
        entries
            .iter()
            .map(|e| e.event_id)
            .collect::<HashSet<_>>()
            .len(),
        100_000,
        "no event twice"
    );
    assert_eq!(db.count("orders.outbox").await?, 0);
    Ok(())
}

/// The long-lived mode wakes on NOTIFY: an event committed while the relay
/// waits reaches Redis long before the fallback poll.
#[tokio::test]
async fn listen_notify_wakes_the_relay_within_milliseconds() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    let running = RunningRelay::start(
        relay(&db, &redis_url(), options(&ns)).await?,
        Duration::from_secs(60),
    )
    .await;
    let e = event("Order", "agg-1", 7)?;
    let committed = Instant::now();
    append(&db, &order_service::OUTBOX, &e).await?;
    let mut arrived = None;
    while committed.elapsed() < Duration::from_secs(10) {
        let entries: Vec<_> = read_streams(&redis_url(), &ns)
            .await?
            .into_values()
            .flatten()
            .collect();
        if entries.iter().any(|x| x.event_id == e.event_id) {
            arrived = Some(committed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.stop().await?;
    let arrived = arrived.expect("the event arrived");
    assert!(
        arrived < Duration::from_secs(5),
        "took {arrived:?}: woken by the poll, not NOTIFY"
    );
    Ok(())
}

/// A few rows spread over every slot are relayed in one transaction: a drain's
/// first batch takes every free slot, not `slots_per_batch` of them, so a drain
/// woken by a few commits makes no batch that finds nothing.
#[tokio::test]
async fn a_few_rows_over_every_slot_are_one_batch() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    for a in 0..32 {
        append(
            &db,
            &order_service::OUTBOX,
            &event("Order", &format!("agg-{a}"), 0)?,
        )
        .await?;
    }
    let spread: Vec<i16> = sqlx::query_scalar("SELECT DISTINCT relay_slot FROM orders.outbox")
        .fetch_all(&db.pool)
        .await?;
    assert!(
        spread.len() > 8,
        "more slots than one loop takes: {spread:?}"
    );
    let summary = relay(&db, &redis_url(), options(&ns))
        .await?
        .drain_until(far())
        .await?;
    assert_eq!((summary.published, summary.batches), (32, 1));
    Ok(())
}

/// The Lambda handler drains on a scheduled event and reports a summary; a
/// deadline already inside the safety margin publishes nothing and says why.
#[tokio::test]
async fn the_scheduled_function_drains_and_reports() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    for i in 0..3 {
        append(&db, &order_service::OUTBOX, &event("Order", "agg-1", i)?).await?;
    }
    let deps = outbox_relay::Deps {
        relay: relay(&db, &redis_url(), options(&ns)).await?,
        safety_margin: Duration::from_secs(3),
    };
    let payload = serde_json::from_str(include_str!("fixtures/scheduled-event.json"))?;
    let now_ms = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)?;

    let mut context = lambda_runtime::Context::default();
    context.deadline = now_ms + 1_000; // less than the margin left
    let summary = outbox_relay::handle(
        &deps,
        lambda_runtime::LambdaEvent::new(
            serde_json::from_value(serde_json::Value::clone(&payload))?,
            context,
        ),
    )
    .await?;
    assert_eq!((summary.published, summary.stopped_by), (0, "deadline"));
    assert_eq!(summary.backlog["orders.outbox"].pending, 3);
    assert!(summary.backlog["orders.outbox"]
        .oldest_pending_age_ms
        .is_some());

    let mut context = lambda_runtime::Context::default();
    context.deadline = now_ms + 60_000;
    let summary = outbox_relay::handle(
        &deps,
        lambda_runtime::LambdaEvent::new(serde_json::from_value(payload)?, context),
    )
    .await?;
    assert_eq!(
        (summary.published, summary.batches, summary.stopped_by),
        (3, 1, "empty")
    );
    let json = serde_json::to_value(&summary)?;
    assert_eq!(json["backlog"]["orders.outbox"]["pending"], 0);
    Ok(())
}

/// Retention trims by age with MINID, and never an entry a consumer group has
/// not processed yet.
#[tokio::test]
async fn trimming_respects_age_and_unprocessed_entries() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    let client = redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let (kept_key, free_key) = (format!("{ns}:{{Order:0}}"), format!("{ns}:{{Stock:0}}"));
    for key in [&kept_key, &free_key] {
        for id in ["1000-0", "2000-0", "3000-0"] {
            let _: String = redis::cmd("XADD")
                .arg(key)
                .arg(id)
                .arg("f")
                .arg("v")
                .query_async(&mut conn)
                .await?;
        }
    }
    // A group that has read (and not acknowledged) only the first entry.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&kept_key)
        .arg("g")
        .arg("0")
        .query_async(&mut conn)
        .await?;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("c")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&kept_key)
        .arg(">")
        .query_async(&mut conn)
        .await?;

    let relay = relay(
        &db,
        &redis_url(),
        RelayOptions {
            stream_retention: Duration::from_secs(3600),
            ..options(&ns)
        },
    )
    .await?;
    let len = |key: String| {
        let client = client.clone();
        async move {
            let mut conn = client.get_multiplexed_async_connection().await?;
            anyhow::Ok(
                redis::cmd("XLEN")
                    .arg(key)
                    .query_async::<usize>(&mut conn)
                    .await?,
            )
        }
    };
    relay.trim_streams().await?;
    assert_eq!(
        len(free_key.clone()).await?,
        0,
        "old entries nobody waits for are trimmed"
    );
    assert_eq!(
        len(kept_key.clone()).await?,
        3,
        "an unacknowledged entry keeps itself and all after it"
    );

    // Once the group acknowledges it, only what it has not yet read is kept.
    let _: usize = redis::cmd("XACK")
        .arg(&kept_key)
        .arg("g")
        .arg("1000-0")
        .query_async(&mut conn)
        .await?;
    relay.trim_streams().await?;
    assert_eq!(len(kept_key.clone()).await?, 2);
    let _: usize = redis::cmd("DEL")
        .arg(&kept_key)
        .arg(&free_key)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// One busy outbox never holds up the others: while rows keep arriving in the
/// order service's outbox, an invocation still publishes the inventory's and
/// the customer service's waiting rows before its deadline.
#[tokio::test]
async fn a_busy_outbox_does_not_starve_the_others() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    let relay = relay(&db, &redis_url(), options(&ns)).await?;
    for (i, outbox) in [inventory_service::OUTBOX, customer_service::OUTBOX]
        .iter()
        .enumerate()
    {
        for n in 0..20 {
            append(
                &db,
                outbox,
                &event("Reservation", &format!("waiting-{i}-{n}"), 1)?,
            )
            .await?;
        }
    }
    // A writer that keeps the order service's outbox busy, on connections of its own.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (pool, stop) = (db.pool.clone(), std::sync::Arc::clone(&stop));
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let e = event("Order", &format!("busy-{w}-{}", n % 64), n)?;
                    let mut tx = pool.begin().await?;
                    outbox::append(&mut tx, &order_service::OUTBOX, &e).await?;
                    tx.commit().await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let summary = relay
        .drain_until(Instant::now() + Duration::from_secs(2))
        .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await??;
    }
    let waiting: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM inventory.outbox), (SELECT count(*) FROM customers.outbox)",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(
        waiting,
        (0, 0),
        "the quiet outboxes were drained while {written} rows kept the busy one busy: {summary:?}"
    );
    tests::delete_streams(&redis_url(), &ns).await
}

/// Rows committed to a quiet outbox while another keeps an invocation busy are
/// published by that invocation, not left until the busy one empties: in Lambda
/// that is the next scheduled invocation, up to a minute later.
#[tokio::test]
async fn a_quiet_outbox_s_new_rows_wait_one_round_not_the_busy_one() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    let relay = std::sync::Arc::new(relay(&db, &redis_url(), options(&ns)).await?);
    // A backlog in the order service's outbox that takes a while to drain.
    sqlx::query(
        "INSERT INTO orders.outbox (event_id, event_type, schema_version, aggregate_type,
                                    aggregate_id, occurred_at, payload)
         SELECT gen_random_uuid(), 'TestHappened', 1, 'Order', 'busy-' || (n % 64), now(),
                json_build_object('seq', n)
         FROM generate_series(1, 100000) AS n",
    )
    .execute(&db.pool)
    .await?;
    let draining = {
        let relay = std::sync::Arc::clone(&relay);
        tokio::spawn(async move {
            relay
                .drain_until(Instant::now() + Duration::from_secs(60))
                .await
        })
    };
    // Once the quiet outbox's first drain found it empty.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in 0..5 {
        append(
            &db,
            &inventory_service::OUTBOX,
            &event("Reservation", &format!("late-{n}"), 1)?,
        )
        .await?;
    }
    let busy: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.outbox")
        .fetch_one(&db.pool)
        .await?;
    let summary = draining.await??;
    assert!(
        busy > 0,
        "the busy outbox was still draining when the rows came: {summary:?}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory.outbox")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(
        left, 0,
        "rows committed during the invocation left for the next: {summary:?}"
    );
    tests::delete_streams(&redis_url(), &ns).await
}
