//! Changing `STREAM_PARTITIONS` while the system runs: every aggregate's events
//! are still handled in order, none is lost, and a relay of the previous
//! deployment never changes the count back (`shared::layout`).

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use shared::envelope::{AggregateId, AggregateType, EventEnvelope, EventType, Payload};
use shared::layout::Layout;
use shared::outbox;
use shared::redis_link::RedisClient;
use shared::relay::{Relay, RelayOptions};
use shared::source::{EventSource, RecordOutcome, RedrivePolicy, Selection, SourceSettings};
use shared::streams::{stream_key_pattern, stream_keys};
use tests::cluster::RedisCluster;
use tests::source::{fast_settings, Recorder, Running};
use tests::{redis_url, unique_namespace, wait_until, RunningRelay, TestDb};

const AGGREGATES: u64 = 40;
const GROUP: &str = "repartition";

fn event(aggregate: u64, seq: u64) -> Result<EventEnvelope> {
    Ok(EventEnvelope::new(
        EventType::parse("TestHappened")?,
        1,
        AggregateType::parse("Order")?,
        AggregateId::parse(&format!("agg-{aggregate}"))?,
        None,
        Payload::from_json(format!(r#"{{"seq":{seq}}}"#))?,
    ))
}

fn node() -> Result<RedisClient> {
    Ok(RedisClient::open(&redis_url(), false)?)
}

fn relay_with(db: &TestDb, redis: &RedisClient, ns: &str, partitions: u16) -> Result<Relay> {
    let options = RelayOptions {
        stream_namespace: ns.to_owned(),
        stream_partitions: partitions,
        batch_size: 50,
        ..tests::relay_options()
    };
    Ok(Relay::new(
        db.pool.clone(),
        redis.connect(Duration::from_secs(5))?,
        options,
    ))
}

async fn relay(
    db: &TestDb,
    redis: &RedisClient,
    ns: &str,
    partitions: u16,
) -> Result<RunningRelay> {
    let relay = relay_with(db, redis, ns, partitions)?;
    Ok(RunningRelay::start(relay, Duration::from_millis(50)).await)
}

fn source(redis: &RedisClient, settings: SourceSettings) -> Result<EventSource> {
    Ok(EventSource::with_client(
        redis.clone(),
        Duration::from_secs(5),
        settings,
    )?)
}

/// A consumer of the group following the layout, as `ConsumerConfig` builds
/// it: `partitions` only until a relay has recorded a layout.
fn settings(ns: &str, consumer: &str, partitions: u16) -> Result<SourceSettings> {
    let streams = stream_keys(ns, &AggregateType::parse("Order")?, partitions);
    let mut s = fast_settings(ns, GROUP, streams);
    s.aggregate_types = vec!["Order".to_owned()];
    s.consumer = consumer.to_owned();
    s.batch_size = 10;
    Ok(s)
}

async fn layout(redis: &RedisClient, ns: &str) -> Result<Option<Layout>> {
    let mut redis = redis.connect(Duration::from_secs(5))?;
    Ok(shared::layout::read(&mut redis, ns).await?)
}

async fn wait_for_generation(redis: &RedisClient, ns: &str, generation: u32) -> Result<Layout> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = layout(redis, ns).await? {
            if l.generation >= generation {
                return Ok(l);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "generation {generation} never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Entries per generation of the namespace's streams (on every primary).
async fn entries_per_generation(redis: &RedisClient, ns: &str) -> Result<BTreeMap<u32, u64>> {
    let mut redis = redis.connect(Duration::from_secs(5))?;
    let mut counts = BTreeMap::new();
    for key in redis.scan(&stream_key_pattern(ns), Some("stream")).await? {
        let name = shared::layout::parse_stream_key(ns, &key).expect("a stream key");
        let len: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut redis).await?;
        *counts.entry(name.generation).or_default() += len;
    }
    Ok(counts)
}

/// Up from 2 partitions to 5, then down to 3, while writers append and a slow
/// group of two consumers has a backlog: each aggregate's events are handled
/// once each, in the order written, and the relays of each earlier count keep
/// running without changing it back.
#[tokio::test]
async fn changing_the_partition_count_under_load_keeps_every_aggregate_in_order() -> Result<()> {
    change_under_load(&node()?).await
}

/// The same on a Redis Cluster of three primaries: the generations' streams
/// spread over the shards, the stream ends are found by a scan of every primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_changing_the_partition_count_keeps_every_aggregate_in_order() -> Result<()> {
    let cluster = RedisCluster::start().await?;
    change_under_load(&cluster.client()?).await
}

async fn change_under_load(redis: &RedisClient) -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    // Slower than the writers while there are 2 partitions: a backlog builds
    // up in the first generation's streams before the change.
    let handler = Recorder::slow(|_| RecordOutcome::Done, Duration::from_millis(50));
    let consumers = [
        Running::start(
            source(redis, settings(&ns, "c1", 2)?)?,
            Arc::clone(&handler),
        ),
        Running::start(
            source(redis, settings(&ns, "c2", 2)?)?,
            Arc::clone(&handler),
        ),
    ];

    let writing = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..4_u64)
        .map(|w| {
            let pool = db.pool.clone();
            let writing = Arc::clone(&writing);
            tokio::spawn(async move {
                let mut written = HashMap::new();
                let mut seq = 0;
                while writing.load(Ordering::Relaxed) {
                    for a in (w..AGGREGATES).step_by(4) {
                        let mut tx = pool.begin().await?;
                        outbox::append(&mut tx, &order_service::OUTBOX, &event(a, seq)?).await?;
                        tx.commit().await?;
                        written.insert(a, seq + 1);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    seq += 1;
                }
                anyhow::Ok(written)
            })
        })
        .collect();

    let first = relay(&db, redis, &ns, 2).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let up = relay(&db, redis, &ns, 5).await?;
    let l = wait_for_generation(redis, &ns, 1).await?;
    assert_eq!(l.partitions, 5);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let down = relay(&db, redis, &ns, 3).await?;
    let l = wait_for_generation(redis, &ns, 2).await?;
    assert_eq!(l.partitions, 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    writing.store(false, Ordering::Relaxed);
    let mut written: HashMap<u64, u64> = HashMap::new();
    for w in writers {
        written.extend(w.await??);
    }
    let total: u64 = written.values().sum();

    let deadline = Instant::now() + Duration::from_secs(60);
    while (handler.done().len() as u64) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in consumers {
        c.stop().await?;
    }
    for r in [first, up, down] {
        r.stop().await?;
    }

    // Every generation carried events: the changes happened under load.
    let per_generation = entries_per_generation(redis, &ns).await?;
    eprintln!("entries per generation: {per_generation:?}, {total} written");
    assert_eq!(
        per_generation.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(
        per_generation.values().all(|n| *n > 0),
        "{per_generation:?}"
    );
    // Nobody changed it back: the relay of 2 and the relay of 5 still ran.
    let last = layout(redis, &ns).await?.expect("a layout");
    assert_eq!((last.generation, last.partitions), (2, 3));

    let mut handled: HashMap<String, Vec<u64>> = HashMap::new();
    for seen in handler.seen() {
        handled.entry(seen.aggregate).or_default().push(seen.seq);
    }
    for (a, n) in &written {
        let seqs = handled.remove(&format!("agg-{a}")).unwrap_or_default();
        assert_eq!(
            seqs,
            (0..*n).collect::<Vec<_>>(),
            "agg-{a}: handled out of order, twice or not at all"
        );
    }
    assert!(
        handled.is_empty(),
        "unknown aggregates: {:?}",
        handled.keys()
    );
    Ok(())
}

/// A record dead-lettered from a stream of the first generation is redriven,
/// after the count changed, to its aggregate's stream of the current
/// generation, and handled there: the consumers no longer read the old one.
#[tokio::test]
async fn a_dead_letter_of_a_finished_generation_is_redriven_to_its_aggregate_s_current_stream(
) -> Result<()> {
    let redis = node()?;
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    let poisoned = Arc::new(AtomicBool::new(true));
    let rule = {
        let poisoned = Arc::clone(&poisoned);
        move |r: &shared::source::StreamRecord| {
            if poisoned.load(Ordering::Relaxed) && r.event.aggregate_id.as_str() == "agg-3" {
                RecordOutcome::Reject("poison".into())
            } else {
                RecordOutcome::Done
            }
        }
    };
    let handler = Recorder::new(rule);
    let consumer = Running::start(
        source(&redis, settings(&ns, "c1", 2)?)?,
        Arc::clone(&handler),
    );
    let mut tx = db.pool.begin().await?;
    for a in 0..8 {
        outbox::append(&mut tx, &order_service::OUTBOX, &event(a, 0)?).await?;
    }
    tx.commit().await?;
    relay_with(&db, &redis, &ns, 2)?
        .drain_until(Instant::now() + Duration::from_secs(30))
        .await?;
    let dead = source(&redis, settings(&ns, "tools", 2)?)?.dead_letters();
    wait_until(
        Duration::from_secs(10),
        "the poison record dead-lettered",
        || async { Ok(dead.count().await? == 1) },
    )
    .await?;

    // The count changes; the group has finished the first generation.
    let next = relay_with(&db, &redis, &ns, 7)?.keep_layout().await?;
    assert_eq!((next.generation, next.partitions), (1, 7));
    poisoned.store(false, Ordering::Relaxed);
    let report = dead
        .redrive(&Selection::All, &RedrivePolicy::new(3), |_, _| {})
        .await?;
    let target = next.stream_of(&ns, "Order", "agg-3");
    assert_eq!(report.redriven.values().sum::<u64>(), 1);
    let mut conn = redis.connect(Duration::from_secs(5))?;
    let len: u64 = redis::cmd("XLEN")
        .arg(&target)
        .query_async(&mut conn)
        .await?;
    assert_eq!(len, 1, "the redriven record is in {target}");
    wait_until(
        Duration::from_secs(10),
        "the redriven record handled",
        || async {
            Ok(handler
                .seen()
                .iter()
                .any(|s| s.aggregate == "agg-3" && s.outcome == RecordOutcome::Done))
        },
    )
    .await?;
    consumer.stop().await?;
    Ok(())
}

/// A redeployment of the emulated system with another `STREAM_PARTITIONS`: the
/// new one starts while the old one still serves (on the same database, Redis
/// and namespace), then the old one stops; orders keep coming throughout. Every
/// order is confirmed, its stock reserved once, and the layout has moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulated_system_redeployed_with_more_partitions_confirms_every_order() -> Result<()> {
    let db = TestDb::fresh().await?;
    sqlx::query(
        "INSERT INTO inventory.stock (sku, available, price_cents) VALUES ('LAMP-1', 1000, 10)",
    )
    .execute(&db.pool)
    .await?;
    let ns = unique_namespace();
    let mode = emulator::system::Mode::InProcess;
    let env = |partitions| {
        [
            ("STREAM_PARTITIONS", partitions),
            ("STREAM_NAMESPACE", ns.as_str()),
        ]
    };
    let http = tests::client_as("c-1");
    let post = |base: String| {
        let http = http.clone();
        async move {
            let answer = http
                .post(format!("{base}/orders"))
                .json(&serde_json::json!({"items": [{"sku": "LAMP-1", "quantity": 1, "unit_price_cents": 10}]}))
                .send()
                .await?;
            anyhow::ensure!(answer.status() == 201, "{}", answer.text().await?);
            anyhow::Ok(())
        }
    };
    let old = tests::emulated::start(&db, mode.clone(), &env("1")).await?;
    for _ in 0..20 {
        post(old.base.clone()).await?;
    }
    let new = tests::emulated::start(&db, mode, &env("4")).await?;
    for _ in 0..20 {
        post(old.base.clone()).await?;
        post(new.base.clone()).await?;
    }
    old.stop_leaving_streams().await?;
    for _ in 0..20 {
        post(new.base.clone()).await?;
    }
    tests::wait_confirmed(&db, 80).await?;
    let reserved: i32 =
        sqlx::query_scalar("SELECT reserved FROM inventory.stock WHERE sku = 'LAMP-1'")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(reserved, 80, "stock reserved once per order");
    let l = layout(&node()?, &ns).await?.expect("a layout");
    assert_eq!((l.generation, l.partitions), (1, 4));
    new.stop().await?;
    Ok(())
}

/// A copy in Redis that survived a database made afresh (its row gone) is
/// replaced by the new row's layout, whether it holds the same generation or a
/// later one: consumers would otherwise read streams nobody writes.
#[tokio::test]
async fn a_fresh_database_replaces_a_surviving_copy() -> Result<()> {
    let redis = node()?;
    for surviving in [
        Layout::first(1),
        Layout {
            origin: Some(uuid::Uuid::now_v7().to_string()),
            ..Layout::first(2)
                .next(2, BTreeMap::new())
                .next(3, BTreeMap::new())
        },
    ] {
        let ns = unique_namespace();
        let mut conn = redis.connect(Duration::from_secs(5))?;
        shared::layout::publish(&mut conn, &ns, &surviving).await?;
        let db = TestDb::fresh().await?;
        relay_with(&db, &redis, &ns, 4)?.keep_layout().await?;
        let copy = layout(&redis, &ns).await?.expect("a layout");
        assert_eq!(
            (copy.generation, copy.partitions),
            (0, 4),
            "over a surviving generation {}",
            surviving.generation
        );
    }
    Ok(())
}

/// Within one row, a copy never goes back to an earlier generation (a relay
/// of the previous deployment still finishing), with or without origins (a
/// relay of an earlier version writes none).
#[tokio::test]
async fn a_copy_goes_back_only_for_another_row() -> Result<()> {
    let redis = node()?;
    let ns = unique_namespace();
    let mut conn = redis.connect(Duration::from_secs(5))?;
    let row = |origin: &str| Layout {
        origin: (!origin.is_empty()).then(|| origin.to_owned()),
        ..Layout::first(2)
    };
    let later = Layout {
        origin: Some("a".into()),
        ..Layout::first(2).next(3, BTreeMap::new())
    };
    assert!(shared::layout::publish(&mut conn, &ns, &later).await?);
    assert!(
        !shared::layout::publish(&mut conn, &ns, &row("a")).await?,
        "same row, earlier"
    );
    assert!(
        !shared::layout::publish(&mut conn, &ns, &row("")).await?,
        "no origin, earlier"
    );
    assert!(
        shared::layout::publish(&mut conn, &ns, &later).await?,
        "same generation again"
    );
    assert!(
        shared::layout::publish(&mut conn, &ns, &row("b")).await?,
        "another row"
    );
    assert_eq!(layout(&redis, &ns).await?, Some(row("b")));
    Ok(())
}
