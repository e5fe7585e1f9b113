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
use shared::relay::{Relay, RelayOptions};
use shared::source::{RecordOutcome, SourceSettings};
use shared::streams::stream_keys;
use tests::source::{fast_settings, source, Recorder, Running};
use tests::{redis_url, unique_namespace, RunningRelay, TestDb};

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

async fn relay(db: &TestDb, ns: &str, partitions: u16) -> Result<RunningRelay> {
    let options = RelayOptions {
        stream_namespace: ns.to_owned(),
        stream_partitions: partitions,
        batch_size: 50,
        ..tests::relay_options()
    };
    let relay: Relay = tests::relay(&db.pool, &redis_url(), options).await?;
    Ok(RunningRelay::start(relay, Duration::from_millis(50)).await)
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

async fn layout(ns: &str) -> Result<Option<Layout>> {
    let mut redis = shared::redis_link::RedisClient::open(&redis_url(), false)?
        .connect(Duration::from_secs(5))?;
    Ok(shared::layout::read(&mut redis, ns).await?)
}

async fn wait_for_generation(ns: &str, generation: u32) -> Result<Layout> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = layout(ns).await? {
            if l.generation >= generation {
                return Ok(l);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "generation {generation} never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Entries per generation of the namespace's streams.
async fn entries_per_generation(ns: &str) -> Result<BTreeMap<u32, u64>> {
    let streams = tests::read_streams(&redis_url(), ns).await?;
    let mut counts = BTreeMap::new();
    for (key, entries) in streams {
        let name = shared::layout::parse_stream_key(ns, &key).expect("a stream key");
        *counts.entry(name.generation).or_default() += entries.len() as u64;
    }
    Ok(counts)
}

/// Up from 2 partitions to 5, then down to 3, while writers append and a slow
/// group of two consumers has a backlog: each aggregate's events are handled
/// once each, in the order written, and the relays of each earlier count keep
/// running without changing it back.
#[tokio::test]
async fn changing_the_partition_count_under_load_keeps_every_aggregate_in_order() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    // Slower than the writers while there are 2 partitions: a backlog builds
    // up in the first generation's streams before the change.
    let handler = Recorder::slow(|_| RecordOutcome::Done, Duration::from_millis(50));
    let consumers = [
        Running::start(source(settings(&ns, "c1", 2)?).await?, Arc::clone(&handler)),
        Running::start(source(settings(&ns, "c2", 2)?).await?, Arc::clone(&handler)),
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

    let first = relay(&db, &ns, 2).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let up = relay(&db, &ns, 5).await?;
    let l = wait_for_generation(&ns, 1).await?;
    assert_eq!(l.partitions, 5);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let down = relay(&db, &ns, 3).await?;
    let l = wait_for_generation(&ns, 2).await?;
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
    let per_generation = entries_per_generation(&ns).await?;
    eprintln!("entries per generation: {per_generation:?}, {total} written");
    assert_eq!(per_generation.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    assert!(per_generation.values().all(|n| *n > 0), "{per_generation:?}");
    // Nobody changed it back: the relay of 2 and the relay of 5 still ran.
    let last = layout(&ns).await?.expect("a layout");
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
    assert!(handled.is_empty(), "unknown aggregates: {:?}", handled.keys());
    Ok(())
}
