//! The Redis Streams event source against a real Redis: partial batch
//! failures, retries, the dead-letter stream, crash recovery, ordering per
//! aggregate under several consumers, redrive, trimming and idle consumers.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use shared::source::{Outcome, RecordOutcome, Selection, StartingPosition, StreamWorker};
use tests::source::{
    append, connection, deliver, event, fast_settings, pending_count, source, Recorder, Running,
};
use tests::{delete_streams, redis_url, unique_namespace, wait_until};

const GROUP: &str = "test-consumer";
const WAIT: Duration = Duration::from_secs(20);

fn stream(ns: &str, partition: u16) -> String {
    format!("{ns}:{{Test:{partition}}}")
}

/// About one delivery in 7 fails, retryably: retries interleave with new
/// records. Which ones is a function of the record and its attempt, not a count
/// of deliveries: a count could fail the same record on every attempt when the
/// batch it comes back in holds a multiple of 7 records.
fn flaky(r: &shared::source::StreamRecord) -> RecordOutcome {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (&r.id, r.attempt).hash(&mut h);
    if h.finish() % 7 == 0 {
        RecordOutcome::Retry("flaky".into())
    } else {
        RecordOutcome::Done
    }
}

/// Asserts that every aggregate's records were handled successfully in
/// sequence order, each once; how many were.
fn done_in_order_once(handler: &Recorder) -> usize {
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    let mut done = HashSet::new();
    for x in handler
        .seen()
        .into_iter()
        .filter(|x| x.outcome == RecordOutcome::Done)
    {
        let prev = last.entry(x.aggregate.clone()).or_insert(-1);
        assert_eq!(
            x.seq as i64,
            *prev + 1,
            "{} handled out of order",
            x.aggregate
        );
        *prev = x.seq as i64;
        assert!(done.insert(x.id), "handled twice");
    }
    done.len()
}

#[tokio::test]
async fn a_partial_batch_failure_retries_only_the_failed_records() -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    let ids = append(
        &s,
        &(0..10)
            .map(|i| event(&format!("agg-{i}"), 0))
            .collect::<Vec<_>>(),
    )
    .await?;
    let failing = ids[3].clone();
    let f = failing.clone();
    let handler = Recorder::new(move |r| {
        if r.id == f && r.attempt == 1 {
            RecordOutcome::Retry("not yet".into())
        } else {
            RecordOutcome::Done
        }
    });
    let running = Running::start(
        source(fast_settings(&ns, GROUP, vec![s.clone()])).await?,
        handler.clone(),
    );
    wait_until(WAIT, "every record is done", || async {
        Ok(handler.done().len() == 10 && pending_count(&s, GROUP).await? == 0)
    })
    .await?;
    let stats = running.stop().await?;
    let seen = handler.seen();
    for id in &ids {
        let times: Vec<u32> = seen
            .iter()
            .filter(|x| &x.id == id)
            .map(|x| x.attempt)
            .collect();
        if *id == failing {
            assert_eq!(
                times,
                [1, 2],
                "the failed record is retried once, as attempt 2"
            );
        } else {
            assert_eq!(times, [1], "a succeeded record is not retried");
        }
    }
    assert_eq!(stats.succeeded, 10);
    assert_eq!(stats.retried, 1);
    assert_eq!(stats.dead_lettered, 0);
    delete_streams(&redis_url(), &ns).await
}

#[tokio::test]
async fn a_record_that_keeps_failing_is_retried_then_dead_lettered_and_does_not_block_others(
) -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    // The poison record is first, and its aggregate has a later record too.
    let mut events = vec![event("poison", 0), event("poison", 1)];
    events.extend((0..5).map(|i| event(&format!("ok-{i}"), 0)));
    let ids = append(&s, &events).await?;
    let poison = ids[0].clone();
    let p = poison.clone();
    let handler = Recorder::new(move |r| {
        if r.id == p {
            RecordOutcome::Retry("database says no".into())
        } else {
            RecordOutcome::Done
        }
    });
    let mut settings = fast_settings(&ns, GROUP, vec![s.clone()]);
    settings.maximum_retry_attempts = 2;
    let src = source(settings).await?;
    let dead = src.dead_letters();
    let running = Running::start(src, handler.clone());
    wait_until(WAIT, "the poison record is dead-lettered", || async {
        Ok(dead.count().await? == 1 && pending_count(&s, GROUP).await? == 0)
    })
    .await?;
    running.stop().await?;
    let seen = handler.seen();
    let attempts: Vec<u32> = seen
        .iter()
        .filter(|x| x.id == poison)
        .map(|x| x.attempt)
        .collect();
    assert_eq!(
        attempts,
        [1, 2, 3],
        "first attempt plus maximum_retry_attempts retries"
    );
    // The records of other aggregates were done at the first attempt; the later
    // record of the poison's aggregate waited, then went on, at attempt 1.
    let done = handler.done();
    assert_eq!(done.len(), 6);
    let second = seen
        .iter()
        .filter(|x| x.id == ids[1] && x.outcome == RecordOutcome::Done);
    assert_eq!(
        second.map(|x| x.attempt).collect::<Vec<_>>(),
        [1],
        "waiting is not an attempt"
    );
    let letters = dead.list(None, 10).await?;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.source_stream, s);
    assert_eq!(letter.source_id, poison);
    assert_eq!(letter.group, GROUP);
    assert_eq!(letter.attempts, 3);
    assert!(
        letter.error.contains("database says no"),
        "{}",
        letter.error
    );
    assert!(!letter.failed_at.is_empty());
    assert_eq!(letter.original().decode()?.event_id, events[0].event_id);
    delete_streams(&redis_url(), &ns).await
}

#[tokio::test]
async fn permanent_failures_and_undecodable_entries_are_dead_lettered_at_once() -> anyhow::Result<()>
{
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    let ids = append(&s, &[event("a", 0), event("b", 0)]).await?;
    let mut conn = connection().await?;
    let junk: String = redis::cmd("XADD")
        .arg(&s)
        .arg("*")
        .arg("event_id")
        .arg("not-a-uuid")
        .arg("payload")
        .arg(&[0xffu8, 0xfe][..])
        .query_async(&mut conn)
        .await?;
    let rejected = ids[0].clone();
    let r = rejected.clone();
    let handler = Recorder::new(move |rec| {
        if rec.id == r {
            RecordOutcome::Reject("unknown event type".into())
        } else {
            RecordOutcome::Done
        }
    });
    let src = source(fast_settings(&ns, GROUP, vec![s.clone()])).await?;
    let dead = src.dead_letters();
    let running = Running::start(src, handler.clone());
    wait_until(WAIT, "both are dead-lettered", || async {
        Ok(dead.count().await? == 2 && pending_count(&s, GROUP).await? == 0)
    })
    .await?;
    running.stop().await?;
    let seen = handler.seen();
    assert_eq!(
        seen.iter().filter(|x| x.id == rejected).count(),
        1,
        "no retry"
    );
    assert!(
        seen.iter().all(|x| x.id != junk),
        "the handler never sees an undecodable entry"
    );
    let letters = dead.list(None, 10).await?;
    let by_id: BTreeMap<_, _> = letters.iter().map(|l| (l.source_id.clone(), l)).collect();
    assert_eq!(by_id[&rejected].attempts, 1);
    assert_eq!(by_id[&rejected].error, "unknown event type");
    assert!(
        by_id[&junk].error.contains("undecodable"),
        "{}",
        by_id[&junk].error
    );
    // The undecodable entry is kept byte for byte.
    assert_eq!(
        by_id[&junk].fields[1],
        (b"payload".to_vec(), vec![0xff, 0xfe])
    );
    delete_streams(&redis_url(), &ns).await
}

#[tokio::test]
async fn records_of_a_consumer_that_died_mid_batch_are_finished_by_another_after_the_visibility_timeout(
) -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    let ids = append(
        &s,
        &(0..20)
            .map(|i| event(&format!("a{i}"), 0))
            .collect::<Vec<_>>(),
    )
    .await?;
    // The first consumer hangs in its first batch, then dies without acknowledging.
    let stuck = std::sync::Arc::new(StuckHandler);
    let mut first = fast_settings(&ns, GROUP, vec![s.clone()]);
    first.consumer = "dies".into();
    let running = Running::start(source(first).await?, stuck);
    wait_until(WAIT, "the first consumer has its batch", || async {
        Ok(pending_count(&s, GROUP).await? == 20)
    })
    .await?;
    running.crash();
    let died_at = Instant::now();

    let handler = Recorder::new(|_| RecordOutcome::Done);
    let mut second = fast_settings(&ns, GROUP, vec![s.clone()]);
    second.consumer = "survives".into();
    let settings_vis = second.visibility_timeout;
    let running = Running::start(source(second).await?, handler.clone());
    wait_until(WAIT, "the second consumer finished them", || async {
        Ok(handler.done().len() == 20 && pending_count(&s, GROUP).await? == 0)
    })
    .await?;
    assert!(
        died_at.elapsed() >= settings_vis,
        "not claimed before the visibility timeout"
    );
    running.stop().await?;
    let seen = handler.seen();
    assert_eq!(
        seen.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        ids,
        "in order"
    );
    assert!(
        seen.iter().all(|x| x.attempt == 2),
        "the dead consumer's delivery counted"
    );
    delete_streams(&redis_url(), &ns).await
}

/// Never answers: a consumer stuck in its handler.
struct StuckHandler;

impl shared::source::BatchHandler for StuckHandler {
    async fn handle(
        &self,
        _batch: shared::source::StreamBatch,
    ) -> Result<shared::source::BatchResponse, shared::source::HandlerError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_restarted_consumer_takes_its_own_pending_records_at_once() -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    append(
        &s,
        &(0..5)
            .map(|i| event(&format!("a{i}"), 0))
            .collect::<Vec<_>>(),
    )
    .await?;
    // "worker-1" received them, then its process died.
    deliver(&s, GROUP, "worker-1").await?;
    let handler = Recorder::new(|_| RecordOutcome::Done);
    let mut settings = fast_settings(&ns, GROUP, vec![s.clone()]);
    settings.consumer = "worker-1".into();
    settings.visibility_timeout = Duration::from_secs(600);
    let started = Instant::now();
    let running = Running::start(source(settings).await?, handler.clone());
    wait_until(WAIT, "its own records are done", || async {
        Ok(handler.done().len() == 5 && pending_count(&s, GROUP).await? == 0)
    })
    .await?;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "did not wait for the visibility timeout"
    );
    running.stop().await?;
    delete_streams(&redis_url(), &ns).await
}

#[tokio::test]
async fn events_of_one_aggregate_are_handled_in_order_under_two_consumers_with_failures(
) -> anyhow::Result<()> {
    let ns = unique_namespace();
    let streams: Vec<String> = (0..4).map(|p| stream(&ns, p)).collect();
    // 40 aggregates, 30 events each, spread over 4 partitions by aggregate.
    let mut per_stream: BTreeMap<usize, Vec<_>> = BTreeMap::new();
    for seq in 0..30 {
        for a in 0..40 {
            let agg = format!("agg-{a}");
            let p = shared::streams::partition_of(&agg, 4) as usize;
            per_stream.entry(p).or_default().push(event(&agg, seq));
        }
    }
    for (p, events) in &per_stream {
        append(&streams[*p], events).await?;
    }
    let handler = Recorder::new(flaky);
    let mut settings = fast_settings(&ns, GROUP, streams.clone());
    settings.batch_size = 25;
    settings.maximum_retry_attempts = 1000;
    let mut a = settings.clone();
    a.consumer = "one".into();
    let mut b = settings;
    b.consumer = "two".into();
    let one = Running::start(source(a).await?, handler.clone());
    let two = Running::start(source(b).await?, handler.clone());
    wait_until(Duration::from_secs(60), "all 1200 are done", || async {
        Ok(handler.done().len() >= 1200)
    })
    .await?;
    let s1 = one.stop().await?;
    let s2 = two.stop().await?;
    assert!(
        s1.succeeded > 0 && s2.succeeded > 0,
        "both consumers worked: {s1:?} {s2:?}"
    );
    assert!(s1.retried + s2.retried > 0, "records failed: {s1:?} {s2:?}");
    assert_eq!(done_in_order_once(&handler), 1200);
    for s in &streams {
        assert_eq!(pending_count(s, GROUP).await?, 0);
    }
    delete_streams(&redis_url(), &ns).await
}

/// `ParallelizationFactor`: up to that many calls of one stream at once, an
/// aggregate's records in one call at a time, in order, through retries.
#[tokio::test]
async fn parallel_calls_of_one_stream_keep_each_aggregate_in_order_and_one_at_a_time(
) -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    // 40 aggregates, 15 events each, all in one stream.
    let events: Vec<_> = (0..15)
        .flat_map(|seq| (0..40).map(move |a| event(&format!("agg-{a}"), seq)))
        .collect();
    append(&s, &events).await?;
    let handler = Recorder::slow(flaky, Duration::from_millis(5));
    let mut settings = fast_settings(&ns, GROUP, vec![s.clone()]);
    settings.batch_size = 10;
    settings.parallelization_factor = 4;
    settings.maximum_retry_attempts = 1000;
    let running = Running::start(source(settings).await?, handler.clone());
    wait_until(Duration::from_secs(60), "all 600 are done", || async {
        Ok(handler.done().len() >= 600)
    })
    .await?;
    running.stop().await?;
    let most = handler.most_calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=4).contains(&most), "calls at once: {most}");
    assert!(
        handler
            .batches
            .lock()
            .expect("not poisoned")
            .iter()
            .all(|n| *n <= 10),
        "no call over BatchSize"
    );
    let overlaps = handler.overlaps.lock().expect("not poisoned").clone();
    assert!(
        overlaps.is_empty(),
        "an aggregate in two calls at once: {overlaps:?}"
    );
    assert_eq!(done_in_order_once(&handler), 600);
    assert_eq!(pending_count(&s, GROUP).await?, 0);
    delete_streams(&redis_url(), &ns).await
}

/// With `REDIS_MIN_REPLICAS`, a record is acknowledged only once its dead
/// letter is on that many replicas: on a Redis without replicas the dead letter
/// is written (again at every try) and the record stays pending, never lost.
#[tokio::test]
async fn a_dead_letter_no_replica_holds_leaves_its_record_pending() -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    append(&s, &[event("x", 0)]).await?;
    let handler = Recorder::new(|_| RecordOutcome::Reject("poison".into()));
    let mut settings = fast_settings(&ns, GROUP, vec![s.clone()]);
    settings.min_replicas = 1;
    settings.replica_timeout = Duration::from_millis(50);
    let src = source(settings).await?;
    let dead = src.dead_letters();
    let running = Running::start(src, handler.clone());
    wait_until(WAIT, "dead-lettered twice", || async {
        Ok(dead.count().await? >= 2)
    })
    .await?;
    running.stop().await?;
    assert_eq!(pending_count(&s, GROUP).await?, 1, "not acknowledged");
    delete_streams(&redis_url(), &ns).await
}

#[tokio::test]
async fn a_redriven_dead_letter_is_handled_again() -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    let events = [event("x", 0)];
    append(&s, &events).await?;
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let b = broken.clone();
    let handler = Recorder::new(move |_| {
        if b.load(std::sync::atomic::Ordering::SeqCst) {
            RecordOutcome::Reject("cannot handle it yet".into())
        } else {
            RecordOutcome::Done
        }
    });
    let src = source(fast_settings(&ns, GROUP, vec![s.clone()])).await?;
    let dead = src.dead_letters();
    let running = Running::start(src, handler.clone());
    wait_until(WAIT, "dead-lettered", || async {
        Ok(dead.count().await? == 1)
    })
    .await?;
    // The operator fixes the cause, then redrives.
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut progress = Vec::new();
    let report = dead
        .redrive(
            &Selection::All,
            &shared::source::RedrivePolicy::default(),
            |done, total| progress.push((done, total)),
        )
        .await?;
    assert_eq!(report.total(), 1);
    assert_eq!(progress, [(1, 1)]);
    wait_until(WAIT, "handled after the redrive", || async {
        Ok(handler.done().len() == 1)
    })
    .await?;
    running.stop().await?;
    assert_eq!(dead.count().await?, 0);
    let seen = handler.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].attempt, 1, "attempts start again");
    assert_ne!(
        seen[1].id, seen[0].id,
        "a new entry at the end of the stream"
    );
    // purge removes what is selected.
    append(&s, &[event("y", 0)]).await?;
    delete_streams(&redis_url(), &ns).await
}

#[tokio::test]
async fn dead_letter_tools_list_show_and_purge() -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    append(
        &s,
        &(0..5)
            .map(|i| event(&format!("p{i}"), 0))
            .collect::<Vec<_>>(),
    )
    .await?;
    let handler = Recorder::new(|_| RecordOutcome::Reject("no".into()));
    let src = source(fast_settings(&ns, GROUP, vec![s.clone()])).await?;
    let dead = src.dead_letters();
    let running = Running::start(src, handler);
    wait_until(WAIT, "all dead-lettered", || async {
        Ok(dead.count().await? == 5)
    })
    .await?;
    running.stop().await?;
    let first_two = dead.list(None, 2).await?;
    assert_eq!(first_two.len(), 2);
    let next = dead.list(Some(&first_two[1].id), 10).await?;
    assert_eq!(next.len(), 3);
    let shown = dead.get(&next[0].id).await?.expect("exists");
    assert_eq!(shown, next[0]);
    assert_eq!(
        dead.purge(&Selection::Ids(vec![shown.id.clone()])).await?,
        1
    );
    assert!(dead.get(&shown.id).await?.is_none());
    assert_eq!(dead.purge(&Selection::All).await?, 4);
    assert_eq!(dead.count().await?, 0);
    delete_streams(&redis_url(), &ns).await
}

#[tokio::test]
async fn pending_records_trimmed_away_are_acknowledged_and_counted() -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    let ids = append(
        &s,
        &(0..4)
            .map(|i| event(&format!("t{i}"), 0))
            .collect::<Vec<_>>(),
    )
    .await?;
    let mut conn = connection().await?;
    deliver(&s, GROUP, "gone").await?;
    let _: u64 = redis::cmd("XDEL")
        .arg(&s)
        .arg(&ids[..2])
        .query_async(&mut conn)
        .await?;
    let handler = Recorder::new(|_| RecordOutcome::Done);
    let running = Running::start(
        source(fast_settings(&ns, GROUP, vec![s.clone()])).await?,
        handler.clone(),
    );
    wait_until(WAIT, "nothing pending", || async {
        Ok(pending_count(&s, GROUP).await? == 0 && handler.done().len() == 2)
    })
    .await?;
    let stats = running.stop().await?;
    assert_eq!(stats.trimmed, 2);
    assert_eq!(handler.done(), ids[2..].to_vec());
    delete_streams(&redis_url(), &ns).await
}

#[tokio::test]
async fn bisect_on_error_isolates_the_record_that_fails_the_batch() -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    let ids = append(
        &s,
        &(0..8)
            .map(|i| event(&format!("b{i}"), i))
            .collect::<Vec<_>>(),
    )
    .await?;
    let poison = ids[5].clone();
    let p = poison.clone();
    let handler = Recorder::with_batch_error(
        |_| RecordOutcome::Done,
        move |batch| batch.records.iter().any(|r| r.id == p),
    );
    let mut settings = fast_settings(&ns, GROUP, vec![s.clone()]);
    settings.bisect_batch_on_function_error = true;
    settings.maximum_retry_attempts = 1;
    let src = source(settings).await?;
    let dead = src.dead_letters();
    let running = Running::start(src, handler.clone());
    wait_until(
        WAIT,
        "the others done, the poison dead-lettered",
        || async { Ok(handler.done().len() == 7 && dead.count().await? == 1) },
    )
    .await?;
    running.stop().await?;
    assert_eq!(dead.list(None, 1).await?[0].source_id, poison);
    assert!(
        handler.batches.lock().expect("lock").contains(&1),
        "split down to one record"
    );
    delete_streams(&redis_url(), &ns).await
}

#[tokio::test]
async fn records_older_than_the_maximum_age_are_dead_lettered_unhandled() -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    let mut conn = connection().await?;
    let old = event("old", 0);
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&s).arg("1000-0");
    for (k, v) in old.to_stream_fields() {
        cmd.arg(k).arg(v);
    }
    let _: String = cmd.query_async(&mut conn).await?;
    append(&s, &[event("new", 0)]).await?;
    let handler = Recorder::new(|_| RecordOutcome::Done);
    let mut settings = fast_settings(&ns, GROUP, vec![s.clone()]);
    settings.maximum_record_age = Some(Duration::from_secs(60));
    let src = source(settings).await?;
    let dead = src.dead_letters();
    let running = Running::start(src, handler.clone());
    wait_until(WAIT, "sorted", || async {
        Ok(dead.count().await? == 1 && handler.done().len() == 1)
    })
    .await?;
    running.stop().await?;
    assert!(dead.list(None, 1).await?[0]
        .error
        .contains("maximum record age"));
    delete_streams(&redis_url(), &ns).await
}

#[tokio::test]
async fn idle_consumers_with_nothing_pending_are_removed_from_the_group() -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    let mut conn = connection().await?;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&s)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await?;
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&s)
        .arg(GROUP)
        .arg("old-lambda")
        .query_async(&mut conn)
        .await?;
    let mut settings = fast_settings(&ns, GROUP, vec![s.clone()]);
    settings.consumer_idle_timeout = Duration::from_millis(1);
    settings.starting_position = StartingPosition::TrimHorizon;
    let running = Running::start(
        source(settings).await?,
        Recorder::new(|_| RecordOutcome::Done),
    );
    wait_until(WAIT, "the idle consumer is gone", || async {
        let mut conn = connection().await?;
        let c: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&s)
            .arg(GROUP)
            .query_async(&mut conn)
            .await?;
        Ok(c.consumers.iter().all(|c| c.name != "old-lambda"))
    })
    .await?;
    running.stop().await?;
    delete_streams(&redis_url(), &ns).await
}

#[tokio::test]
async fn in_a_function_the_source_runs_for_its_time_budget_and_gives_its_streams_back(
) -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    append(
        &s,
        &(0..50)
            .map(|i| event(&format!("f{i}"), 0))
            .collect::<Vec<_>>(),
    )
    .await?;
    let handler = Recorder::new(|_| RecordOutcome::Done);
    let mut settings = fast_settings(&ns, GROUP, vec![s.clone()]);
    settings.block = Duration::from_secs(2);
    let src = source(settings).await?;
    let started = Instant::now();
    let stats = src
        .run(
            handler.clone(),
            Some(started + Duration::from_millis(1500)),
            std::future::pending(),
        )
        .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(3000),
        "kept to its budget: {took:?}"
    );
    assert_eq!(stats.succeeded, 50);
    assert_eq!(pending_count(&s, GROUP).await?, 0);
    let mut conn = connection().await?;
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ns}:lease:*"))
        .query_async(&mut conn)
        .await?;
    assert!(leases.is_empty(), "the lease was given back: {leases:?}");
    delete_streams(&redis_url(), &ns).await
}

#[tokio::test]
async fn a_blocking_read_outlasts_the_shared_response_timeout_without_stalling_other_commands(
) -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    let mut settings = fast_settings(&ns, GROUP, vec![s.clone()]);
    settings.block = Duration::from_millis(1500);
    // Every other command fails after 300 ms; the blocking read waits 1.5 s.
    let src =
        shared::source::EventSource::connect(&redis_url(), Duration::from_millis(300), settings)
            .await?;
    let dead = src.dead_letters();
    let handler = Recorder::new(|_| RecordOutcome::Done);
    let running = Running::start(src, handler.clone());
    // While the worker blocks, the shared connection answers at once.
    for _ in 0..10 {
        let started = Instant::now();
        dead.count().await?;
        assert!(started.elapsed() < Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    append(&s, &[event("late", 0)]).await?;
    wait_until(WAIT, "the late record is handled", || async {
        Ok(handler.done().len() == 1)
    })
    .await?;
    let stats = running.stop().await?;
    assert_eq!(stats.errors, 0, "no read timed out: {stats:?}");
    delete_streams(&redis_url(), &ns).await
}

/// Runs a source whose handler answers the first record of aggregate `down`
/// with `failure` for its first `times` deliveries, then succeeds. The aggregate
/// has a second record, and another aggregate one. Returns what the handler
/// saw, the ids, the dead letters and the stats.
async fn answer_then_succeed(
    failure: fn(String) -> RecordOutcome,
    times: u32,
    maximum_retry_attempts: u32,
) -> anyhow::Result<(
    Vec<tests::source::Seen>,
    Vec<String>,
    u64,
    shared::source::SourceStats,
)> {
    use std::sync::atomic::{AtomicU32, Ordering};
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    let ids = append(&s, &[event("down", 0), event("down", 1), event("other", 0)]).await?;
    let first = ids[0].clone();
    let deliveries = std::sync::Arc::new(AtomicU32::new(0));
    let handler = Recorder::new(move |r| {
        if r.id == first && deliveries.fetch_add(1, Ordering::SeqCst) < times {
            failure("the store is away".into())
        } else {
            RecordOutcome::Done
        }
    });
    let mut settings = fast_settings(&ns, GROUP, vec![s.clone()]);
    settings.maximum_retry_attempts = maximum_retry_attempts;
    let src = source(settings).await?;
    let dead = src.dead_letters();
    let running = Running::start(src, handler.clone());
    wait_until(WAIT, "nothing is pending any more", || async {
        let seen = handler.seen();
        let answered = u32::try_from(seen.iter().filter(|x| x.id == ids[0]).count()).expect("few");
        Ok(answered >= times.min(maximum_retry_attempts + 1)
            && pending_count(&s, GROUP).await? == 0)
    })
    .await?;
    let stats = running.stop().await?;
    let dead_letters = dead.count().await?;
    delete_streams(&redis_url(), &ns).await?;
    Ok((handler.seen(), ids, dead_letters, stats))
}

/// An outage answered for longer than the record's retries is waited out: the
/// record keeps attempt 1, nothing is dead-lettered, the later record of its
/// aggregate waits for it, and the breaker opened once (one log line).
#[tokio::test]
async fn an_outage_is_waited_out_without_using_up_attempts() -> anyhow::Result<()> {
    // Three attempts in all; the outage lasts six deliveries.
    let (seen, ids, dead_letters, stats) = answer_then_succeed(RecordOutcome::Outage, 6, 2).await?;
    assert_eq!(
        dead_letters, 0,
        "an outage is never dead-lettered: {stats:?}"
    );
    let first: Vec<&tests::source::Seen> = seen.iter().filter(|x| x.id == ids[0]).collect();
    assert_eq!(first.len(), 7, "six outages, then done: {first:?}");
    assert!(
        first.iter().all(|x| x.attempt == 1),
        "an outage uses up no attempt: {first:?}"
    );
    assert_eq!(first.last().map(|x| &x.outcome), Some(&RecordOutcome::Done));
    // The later record of the aggregate took effect only after the first.
    let done_at = |id: &str| {
        seen.iter()
            .position(|x| x.id == id && x.outcome == RecordOutcome::Done)
    };
    assert!(done_at(&ids[0]) < done_at(&ids[1]), "in order: {seen:?}");
    assert!(done_at(&ids[1]).is_some() && done_at(&ids[2]).is_some());
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(stats.retried, 0, "no retry was spent: {stats:?}");
    assert_eq!(stats.outage_waits, 6, "{stats:?}");
    assert_eq!(stats.outages, 1, "one outage, opened once: {stats:?}");
    assert_eq!(stats.succeeded, 3, "{stats:?}");
    Ok(())
}

/// The control: the same failure answered as an ordinary retry uses up the
/// record's attempts and dead-letters it.
#[tokio::test]
async fn a_retry_answered_as_long_is_dead_lettered() -> anyhow::Result<()> {
    let (seen, ids, dead_letters, stats) = answer_then_succeed(RecordOutcome::Retry, 6, 2).await?;
    assert_eq!(dead_letters, 1, "{stats:?}");
    let attempts: Vec<u32> = seen
        .iter()
        .filter(|x| x.id == ids[0])
        .map(|x| x.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(stats.outages, 0);
    Ok(())
}

/// A consumer group that Redis lost (`XGROUP DESTROY` here; a promoted replica
/// without it, or a restart without persistence, in production) is created
/// again from the oldest entry, even with `LATEST` as the starting position:
/// the entries not yet acknowledged are handled, those already acknowledged
/// are delivered again (the inbox makes that harmless), and it is counted.
#[tokio::test]
async fn a_lost_consumer_group_is_created_again_from_the_oldest_entry() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    let hold = std::sync::Arc::new(AtomicBool::new(true));
    let held = std::sync::Arc::clone(&hold);
    // Records of aggregate "held" fail until released; the others succeed.
    let handler = Recorder::new(move |r| {
        if r.event.aggregate_id.as_str() == "held" && held.load(Ordering::SeqCst) {
            RecordOutcome::Retry("not yet".into())
        } else {
            RecordOutcome::Done
        }
    });
    let mut settings = fast_settings(&ns, GROUP, vec![s.clone()]);
    settings.starting_position = StartingPosition::Latest;
    settings.maximum_retry_attempts = 10_000;
    let src = source(settings).await?;
    let running = Running::start(src, handler.clone());
    let mut conn = connection().await?;
    wait_until(WAIT, "the group exists", || async {
        let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&s)
            .query_async(&mut connection().await?)
            .await;
        Ok(groups.is_ok_and(|g| g.groups.iter().any(|g| g.name == GROUP)))
    })
    .await?;
    let mut events: Vec<_> = (0..5).map(|i| event(&format!("ok-{i}"), 0)).collect();
    events.extend((0..3).map(|i| event("held", i)));
    let ids = append(&s, &events).await?;
    wait_until(
        WAIT,
        "the others are done and the held ones pending",
        || async { Ok(handler.done().len() == 5 && pending_count(&s, GROUP).await? == 3) },
    )
    .await?;
    let destroyed: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&s)
        .arg(GROUP)
        .query_async(&mut conn)
        .await?;
    assert_eq!(destroyed, 1);
    // Written while the group is gone: must not be skipped either.
    let late = append(&s, &[event("late", 0)]).await?;
    hold.store(false, Ordering::SeqCst);
    wait_until(WAIT, "every entry is handled", || async {
        let done = handler.done();
        Ok(ids.iter().chain(&late).all(|id| done.contains(id))
            && pending_count(&s, GROUP).await? == 0)
    })
    .await?;
    let stats = running.stop().await?;
    assert_eq!(stats.groups_recreated, 1, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    let done = handler.done();
    assert!(
        ids[..5]
            .iter()
            .all(|id| done.iter().filter(|d| *d == id).count() == 2),
        "acknowledged entries are delivered again from the oldest: {done:?}"
    );
    delete_streams(&redis_url(), &ns).await
}

/// The source driven one step at a time (`poll_once`), as the relay is with
/// `relay_once`: each step says what it did. A record of aggregate "a" fails
/// every attempt: the later record of "a" waits behind it while "b" goes on;
/// after its second and last attempt it is dead-lettered and the waiting one
/// handled.
#[tokio::test]
async fn a_worker_driven_step_by_step_says_what_each_step_did() -> anyhow::Result<()> {
    let ns = unique_namespace();
    let s = stream(&ns, 0);
    let ids = append(&s, &[event("a", 0), event("b", 0), event("a", 1)]).await?;
    let bad = ids[0].clone();
    let handler = Recorder::new(move |r| {
        if r.id == bad {
            RecordOutcome::Retry("boom".into())
        } else {
            RecordOutcome::Done
        }
    });
    let mut settings = fast_settings(&ns, GROUP, vec![s.clone()]);
    settings.maximum_retry_attempts = 1;
    let src = source(settings).await?;
    let mut worker = src.worker(&s, handler.clone());
    assert_eq!(worker.stream(), s);

    let first = worker.poll_once().await;
    assert_eq!(
        first,
        Outcome {
            handled: 3,
            succeeded: 1,
            retried: 1,
            waiting: 1,
            ..Outcome::default()
        }
    );
    // The failed record is due again after its backoff (50 ms): the steps in
    // between find nothing to do (each waits at most until it is due).
    let second = step_until_handled(&mut worker).await?;
    assert_eq!(
        second,
        Outcome {
            handled: 2,
            dead_lettered: 1,
            waiting: 1,
            ..Outcome::default()
        },
        "attempt 2 of 2 failed: dead-lettered; the later record of \"a\" waited once more"
    );
    let third = step_until_handled(&mut worker).await?;
    assert_eq!(
        third,
        Outcome {
            handled: 1,
            succeeded: 1,
            ..Outcome::default()
        }
    );
    assert_eq!(worker.poll_once().await, Outcome::default(), "nothing left");
    assert_eq!(pending_count(&s, GROUP).await?, 0);
    assert_eq!(src.dead_letters().count().await?, 1);
    let stats = src.stats();
    assert_eq!((stats.succeeded, stats.dead_lettered), (2, 1));
    let attempts: Vec<(String, u32)> = handler
        .seen()
        .into_iter()
        .map(|x| (x.id, x.attempt))
        .collect();
    assert_eq!(
        attempts,
        [
            (ids[0].clone(), 1),
            (ids[1].clone(), 1),
            (ids[2].clone(), 1),
            (ids[0].clone(), 2),
            (ids[2].clone(), 1),
            (ids[2].clone(), 1),
        ],
        "a record that waited is handed over again as the same attempt"
    );
    delete_streams(&redis_url(), &ns).await
}

/// Steps until one hands records to the handler.
async fn step_until_handled<H: shared::source::BatchHandler>(
    worker: &mut StreamWorker<H>,
) -> anyhow::Result<Outcome> {
    for _ in 0..100 {
        let outcome = worker.poll_once().await;
        anyhow::ensure!(outcome.error.is_none(), "{outcome:?}");
        if outcome.handled > 0 {
            return Ok(outcome);
        }
    }
    anyhow::bail!("no step handled anything")
}
