//! Helpers for event-source tests: fast settings, writing events straight to a
//! stream, a scriptable batch handler that records what it saw, and running a
//! source in the background.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::envelope::{AggregateId, AggregateType, EventEnvelope, EventType, Payload};
use shared::source::{
    outcomes_in_order, BatchHandler, BatchResponse, EventSource, HandlerError, RecordOutcome,
    SourceSettings, SourceStats, StreamBatch, StreamRecord,
};

/// Settings for tests: short backoff, visibility timeout, block and lease.
pub fn fast_settings(namespace: &str, group: &str, streams: Vec<String>) -> SourceSettings {
    let mut s = SourceSettings::new(group, streams);
    s.namespace = namespace.to_owned();
    s.retry_backoff = Duration::from_millis(50);
    s.max_retry_backoff = Duration::from_millis(400);
    s.visibility_timeout = Duration::from_millis(800);
    s.block = Duration::from_millis(200);
    s.lease_ttl = Duration::from_millis(1500);
    s
}

pub async fn source(settings: SourceSettings) -> anyhow::Result<EventSource> {
    Ok(EventSource::connect(&crate::redis_url(), Duration::from_secs(5), settings).await?)
}

/// A test event about `aggregate`, with `seq` in its payload.
pub fn event(aggregate: &str, seq: u64) -> EventEnvelope {
    EventEnvelope::new(
        EventType::parse("TestHappened").expect("valid"),
        1,
        AggregateType::parse("Test").expect("valid"),
        AggregateId::parse(aggregate).expect("valid"),
        None,
        Payload::from_json(format!("{{\"seq\":{seq}}}")).expect("json"),
    )
}

/// `XADD`s `events` to `stream`; returns their entry ids.
pub async fn append(stream: &str, events: &[EventEnvelope]) -> anyhow::Result<Vec<String>> {
    let mut conn = connection().await?;
    let mut ids = Vec::with_capacity(events.len());
    for chunk in events.chunks(500) {
        let mut pipe = redis::pipe();
        for e in chunk {
            pipe.xadd(stream, "*", &e.to_stream_fields());
        }
        let got: Vec<String> = pipe.query_async(&mut conn).await?;
        ids.extend(got);
    }
    Ok(ids)
}

/// A connection with a generous response timeout.
pub async fn connection() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(crate::redis_url())?;
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// Creates `group` on `stream` and delivers every entry to `consumer`, as a
/// consumer that then died would have received them.
pub async fn deliver(stream: &str, group: &str, consumer: &str) -> anyhow::Result<()> {
    let mut conn = connection().await?;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .query_async(&mut conn)
        .await?;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// How many entries `group` has pending on `stream`.
/// A group its consumer has not created yet has nothing pending.
pub async fn pending_count(stream: &str, group: &str) -> anyhow::Result<u64> {
    let mut conn = connection().await?;
    let reply: redis::RedisResult<redis::streams::StreamPendingReply> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(&mut conn)
        .await;
    match reply {
        Ok(reply) => Ok(reply.count() as u64),
        Err(e) if e.code() == Some("NOGROUP") => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// One record as the handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub attempt: u32,
    pub aggregate: String,
    pub seq: u64,
    pub outcome: RecordOutcome,
}

type Rule = dyn Fn(&StreamRecord) -> RecordOutcome + Send + Sync;

/// A batch handler that decides each record's outcome with a rule and records
/// everything it saw; `fail_batches_with` makes whole calls fail.
pub struct Recorder {
    rule: Box<Rule>,
    pub seen: Mutex<Vec<Seen>>,
    pub batches: Mutex<Vec<usize>>,
    batch_error: Box<dyn Fn(&StreamBatch) -> bool + Send + Sync>,
    /// How long each call takes (none by default).
    pause: Duration,
    calls_now: std::sync::atomic::AtomicUsize,
    /// The most calls that ran at once.
    pub most_calls: std::sync::atomic::AtomicUsize,
    in_flight: Mutex<std::collections::HashSet<String>>,
    /// Aggregates a call was given while another call had one of their records.
    pub overlaps: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn new(rule: impl Fn(&StreamRecord) -> RecordOutcome + Send + Sync + 'static) -> Arc<Self> {
        Self::with_batch_error(rule, |_| false)
    }

    pub fn with_batch_error(
        rule: impl Fn(&StreamRecord) -> RecordOutcome + Send + Sync + 'static,
        batch_error: impl Fn(&StreamBatch) -> bool + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            rule: Box::new(rule),
            seen: Mutex::default(),
            batches: Mutex::default(),
            batch_error: Box::new(batch_error),
            pause: Duration::ZERO,
            calls_now: std::sync::atomic::AtomicUsize::default(),
            most_calls: std::sync::atomic::AtomicUsize::default(),
            in_flight: Mutex::default(),
            overlaps: Mutex::default(),
        })
    }

    /// [`Recorder::new`] whose every call takes `pause`, so calls can overlap.
    pub fn slow(
        rule: impl Fn(&StreamRecord) -> RecordOutcome + Send + Sync + 'static,
        pause: Duration,
    ) -> Arc<Self> {
        let mut recorder = Self::with_batch_error(rule, |_| false);
        Arc::get_mut(&mut recorder).expect("not shared yet").pause = pause;
        recorder
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// Ids handled successfully.
    pub fn done(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.outcome == RecordOutcome::Done)
            .map(|s| s.id)
            .collect()
    }
}

impl BatchHandler for Recorder {
    async fn handle(&self, batch: StreamBatch) -> Result<BatchResponse, HandlerError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.calls_now.fetch_add(1, SeqCst) + 1;
        self.most_calls.fetch_max(now, SeqCst);
        let aggregates: std::collections::HashSet<String> = batch
            .records
            .iter()
            .map(|r| r.event.aggregate_id.to_string())
            .collect();
        {
            let mut in_flight = self.in_flight.lock().expect("not poisoned");
            for a in &aggregates {
                if !in_flight.insert(a.clone()) {
                    self.overlaps.lock().expect("not poisoned").push(a.clone());
                }
            }
        }
        if !self.pause.is_zero() {
            tokio::time::sleep(self.pause).await;
        }
        {
            let mut in_flight = self.in_flight.lock().expect("not poisoned");
            for a in &aggregates {
                in_flight.remove(a);
            }
        }
        self.calls_now.fetch_sub(1, SeqCst);
        self.batches
            .lock()
            .expect("not poisoned")
            .push(batch.records.len());
        if (self.batch_error)(&batch) {
            return Err(HandlerError::new("the batch failed"));
        }
        let mut outcomes: Vec<RecordOutcome> =
            batch.records.iter().map(|r| (self.rule)(r)).collect();
        outcomes_in_order(&batch.records, &mut outcomes);
        let mut seen = self.seen.lock().expect("not poisoned");
        for (r, o) in batch.records.iter().zip(&outcomes) {
            let seq = serde_json::from_str::<serde_json::Value>(r.event.payload.as_str())
                .ok()
                .and_then(|v| v["seq"].as_u64())
                .unwrap_or(u64::MAX);
            seen.push(Seen {
                id: r.id.clone(),
                attempt: r.attempt,
                aggregate: r.event.aggregate_id.to_string(),
                seq,
                outcome: o.clone(),
            });
        }
        Ok(BatchResponse::from_outcomes(
            batch.records.iter().zip(&outcomes),
        ))
    }
}

/// A source running in the background until [`Running::stop`].
#[derive(Debug)]
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<SourceStats>,
}

impl Running {
    pub fn start<H: BatchHandler>(source: EventSource, handler: Arc<H>) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            source
                .run(handler, None, async move {
                    let _ = stopped.await;
                })
                .await
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> anyhow::Result<SourceStats> {
        let _ = self.stop.send(());
        Ok(self.task.await?)
    }

    /// Aborts the task at once, as a crash would: nothing more is acknowledged.
    pub fn crash(self) {
        self.task.abort();
    }
}
