//! The toolkit on a real Redis Cluster (3 primaries, 3 replicas, on spare
//! loopback ports), as it runs on one node: the relay, the event source, the
//! dead-letter tools and the saga, with streams spread over the primaries, and a
//! primary SIGKILLed mid-run while its replica takes over.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shared::envelope::AggregateType;
use shared::source::{DeadLetters, RecordOutcome, RedrivePolicy, Selection};
use shared::streams::{partition_of, stream_key, stream_key_pattern, stream_keys};
use tests::cluster::RedisCluster;
use tests::pipeline::{Pipeline, Wiring};
use tests::source::{event, fast_settings, Recorder, Running};
use tests::wait_until;

const PARTITIONS: u16 = 6;

/// The distinct primaries serving `keys`.
async fn primaries(cluster: &RedisCluster, keys: &[String]) -> anyhow::Result<BTreeSet<u16>> {
    let mut out = BTreeSet::new();
    for key in keys {
        out.insert(cluster.primary_of(key).await?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_read_in_order_dead_lettered_and_redriven_across_the_primaries(
) -> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let ns = tests::unique_namespace();
    let kind = AggregateType::parse("Test").expect("valid");
    let streams = stream_keys(&ns, &kind, PARTITIONS);
    assert!(
        primaries(&cluster, &streams).await?.len() >= 2,
        "the partitions spread over the primaries"
    );
    // 30 aggregates, 5 events each, each in its aggregate's partition.
    let mut redis = cluster.connection()?;
    for seq in 0..5 {
        for a in 0..30 {
            let aggregate = format!("agg-{a}");
            let key = stream_key(&ns, &kind, partition_of(&aggregate, PARTITIONS));
            let _: String = redis::cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg(event(&aggregate, seq).to_stream_fields())
                .query_async(&mut redis)
                .await?;
        }
    }
    // One poison record until the test says otherwise.
    let poisoned = Arc::new(AtomicBool::new(true));
    let rule = {
        let poisoned = Arc::clone(&poisoned);
        move |r: &shared::source::StreamRecord| {
            let seq = serde_json::from_str::<serde_json::Value>(r.event.payload.as_str())
                .ok()
                .and_then(|v| v["seq"].as_u64());
            if r.event.aggregate_id.to_string() == "agg-7"
                && seq == Some(2)
                && poisoned.load(Ordering::SeqCst)
            {
                RecordOutcome::Reject("poison".into())
            } else {
                RecordOutcome::Done
            }
        }
    };
    let recorder = Recorder::new(rule);
    let source =
        shared::source::EventSource::with_client(cluster.client()?, Duration::from_secs(5), {
            // Dead letters reach a replica before their records are acknowledged.
            let mut settings = fast_settings(&ns, "g", streams.clone());
            settings.min_replicas = 1;
            settings
        })?;
    let running = Running::start(source, Arc::clone(&recorder));
    wait_until(
        Duration::from_secs(30),
        "every record but the poison one is handled",
        || async { Ok(recorder.done().len() == 149) },
    )
    .await?;

    // The dead-letter stream is found by a scan of every primary; its record
    // holds the poison event.
    let dlq = shared::source::dead_letter_keys(&mut redis, &ns).await?;
    assert_eq!(dlq, [shared::source::dead_letter_key(&ns, "g")]);
    let letters = DeadLetters::new(redis.clone(), &ns, "g");
    assert_eq!(letters.count().await?, 1);
    // So are the streams, wherever their slots live.
    let mut expected = streams.clone();
    expected.sort();
    assert_eq!(
        shared::streams::scan_streams(&mut redis, &stream_key_pattern(&ns)).await?,
        expected
    );

    poisoned.store(false, Ordering::SeqCst);
    let report = letters
        .redrive(&Selection::All, &RedrivePolicy::default(), |_, _| {})
        .await?;
    assert_eq!(report.total(), 1, "{report:?}");
    wait_until(
        Duration::from_secs(30),
        "the redriven record is handled",
        || async { Ok(recorder.done().len() == 150) },
    )
    .await?;
    assert_eq!(letters.count().await?, 0);
    running.stop().await?;

    // In order per aggregate, each once (the redriven one last, out of turn
    // as a redrive is).
    let mut by_aggregate: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for seen in recorder.seen() {
        if seen.outcome == RecordOutcome::Done {
            by_aggregate
                .entry(seen.aggregate)
                .or_default()
                .push(seen.seq);
        }
    }
    for (aggregate, seqs) in &by_aggregate {
        let expected: Vec<u64> = if aggregate == "agg-7" {
            vec![0, 1, 3, 4, 2]
        } else {
            (0..5).collect()
        };
        assert_eq!(seqs, &expected, "{aggregate}");
    }
    assert_eq!(by_aggregate.len(), 30);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_loses_no_order_when_a_primary_is_killed_mid_run() -> anyhow::Result<()> {
    let mut cluster = RedisCluster::start().await?;
    let system = Pipeline::start(Wiring {
        redis: cluster.client()?,
        partitions: PARTITIONS,
        // Each primary has a replica: a batch counts once one has it.
        min_replicas: 1,
    })
    .await?;
    let order_streams = system.streams("Order");
    assert!(
        primaries(&cluster, &order_streams).await?.len() >= 2,
        "the partitions spread over the primaries"
    );
    system.post_orders(20).await?;
    wait_until(
        Duration::from_secs(60),
        "the first orders are settled",
        || async { Ok(system.pending().await? == 0) },
    )
    .await?;

    // Orders keep coming while the primary of an order stream dies and its
    // replica is promoted.
    let posting = {
        let system = &system;
        async move {
            for _ in 0..10 {
                system.post_orders(3).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::Ok(())
        }
    };
    let killed = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.kill_primary_of(&order_streams[0]).await
    };
    let (posted, killed) = tokio::join!(posting, killed);
    posted?;
    eprintln!("killed the primary on port {}", killed?);
    system.post_orders(10).await?;

    wait_until(
        Duration::from_secs(90),
        "every order is settled after the failover",
        || async { Ok(system.pending().await? == 0) },
    )
    .await?;
    // The relay's batches count only once a replica has them: the outboxes
    // empty once the promoted primary has its new replica.
    wait_until(Duration::from_secs(60), "every outbox is empty", || async {
        system
            .count(
                "SELECT (SELECT count(*) FROM orders.outbox) + (SELECT count(*) FROM inventory.outbox) \
                 + (SELECT count(*) FROM customers.outbox)",
            )
            .await
            .map(|n| n == 0)
    })
    .await?;
    // Let in-flight redeliveries settle before counting effects.
    tokio::time::sleep(Duration::from_secs(1)).await;
    system.outcome().await?.assert_nothing_lost(60);
    system.stop().await?;
    Ok(())
}

/// The emulator on a cluster (`REDIS_URL` the nodes, `REDIS_CLUSTER=true`):
/// orders posted over HTTP are confirmed, and `emulator streams` reports every
/// partition's stream, wherever its slot lives; so does the web console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulated_system_and_its_commands_run_on_a_cluster() -> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let db = tests::TestDb::fresh().await?;
    sqlx::query(
        "INSERT INTO inventory.stock (sku, available, price_cents) VALUES ('LAMP-1', 100, 10)",
    )
    .execute(&db.pool)
    .await?;
    let store = tests::emulated::Store {
        url: cluster.url(),
        cluster: true,
    };
    let partitions = PARTITIONS.to_string();
    let running = tests::emulated::start_on(
        &db,
        &store,
        emulator::system::Mode::InProcess,
        &[("STREAM_PARTITIONS", &partitions)],
        tests::emulated::template()?,
        tests::auth::trust(),
    )
    .await?;
    let http = tests::client_as("c-1");
    for _ in 0..10 {
        let answer = http
            .post(running.url("/orders"))
            .json(&serde_json::json!({"items": [{"sku": "LAMP-1", "quantity": 1, "unit_price_cents": 10}]}))
            .send()
            .await?;
        assert_eq!(answer.status(), 201, "{}", answer.text().await?);
    }
    tests::wait_confirmed(&db, 10).await?;

    let mut out = Vec::new();
    emulator::cli::streams(
        &cluster.connection()?,
        &running.namespace,
        emulator::cli::Format::Json,
        &mut out,
    )
    .await?;
    let listed: serde_json::Value = serde_json::from_slice(&out)?;
    let keys: BTreeSet<String> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["key"].as_str().map(str::to_owned))
        .collect();
    let order = AggregateType::parse("Order").expect("valid");
    for key in stream_keys(&running.namespace, &order, PARTITIONS) {
        assert!(keys.contains(&key), "{key} not in {keys:?}");
    }

    // The console, as `emulator up` serves it, reads the same from the cluster.
    let system = running.system.as_ref().expect("the system");
    let template = tests::emulated::template()?;
    let source = tests::emulated::status_source(&db, cluster.connection()?, &running, &template)?;
    let console = tests::emulated::console(&db, source, &template);
    let snapshot = console.snapshot(&system.functions).await;
    assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
    let shown: BTreeSet<&str> = snapshot.streams.iter().map(|s| s.key.as_str()).collect();
    for key in stream_keys(&running.namespace, &order, PARTITIONS) {
        assert!(
            shown.contains(key.as_str()),
            "the console lacks {key}: {shown:?}"
        );
    }
    let published: u64 = snapshot
        .streams
        .iter()
        .filter(|s| s.key.contains("{Order:"))
        .map(|s| s.length)
        .sum();
    assert!(published >= 10, "every OrderCreated shown: {published}");
    assert!(snapshot.outboxes.len() >= 3, "every outbox shown");
    running.stop().await?;
    Ok(())
}
