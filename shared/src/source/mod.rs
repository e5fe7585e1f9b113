//! A Redis Streams event source with the semantics of an AWS Lambda event
//! source mapping for Kinesis: consumer groups, batches, partial batch
//! responses, retries with backoff, a dead-letter stream, bisect on error, and
//! order per aggregate.
//!
//! - Each consuming function is one consumer group; each process is one
//!   consumer in it ([`SourceSettings`]).
//! - Every stream (one per aggregate type and partition) is read by one
//!   consumer at a time, the holder of its lease (`SET NX PX`, renewed while it
//!   works): as a Kinesis shard is read by one invocation at a time, so the
//!   events of one aggregate are handled in the order they were written.
//!   Consumers share the streams evenly: scaling out comes from partitions.
//! - Within a stream, a failed record blocks only the later records of its own
//!   aggregate, until it succeeds or is dead-lettered; the others go on
//!   ([`worker`]).
//! - A consumer that dies leaves its records pending; the next holder of the
//!   stream claims them once they have been idle for the visibility timeout. A
//!   consumer restarted under the same name takes its own pending records at once.
//!
//! [`EventSource::run`] serves until shutdown (the emulator, a container) or
//! until a deadline (a Lambda function invoked by a schedule, handling batches
//! in-process for its time budget).

mod batch;
pub(crate) mod breaker;
mod consumer;
mod dead_letter;
mod entry;
mod overview;
mod settings;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::redis_link::{Redis, RedisClient};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::Failure;

pub use batch::{
    apply_isolating, decode_and_apply, outcomes_in_order, BatchHandler, BatchItemFailure,
    BatchResponse, HandlerError, RecordOutcome, StreamBatch, StreamRecord, WAITING_FOR_EARLIER,
};
pub use consumer::{stop_at, Consumer, ConsumerConfig};
pub use dead_letter::{
    dead_letter_key, dead_letter_key_pattern, dead_letter_keys, dead_letter_streams, max_redrives,
    redrives_key, summarize, DeadLetter, DeadLetterStream, DeadLetters, Filter, Kind,
    RedrivePolicy, RedriveReport, Refused, Selection, DEFAULT_MAX_REDRIVES, MAX_REDRIVES,
};
pub use entry::RawEntry;
pub use overview::{streams as stream_overview, ConsumerOverview, GroupOverview, StreamOverview};
pub use settings::{default_consumer_name, SourceSettings, StartingPosition};

pub use worker::{Outcome, StreamWorker};

#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    fn inc(&self) {
        self.add(1);
    }
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    batches: Counter,
    records: Counter,
    succeeded: Counter,
    retried: Counter,
    waiting: Counter,
    dead_lettered: Counter,
    trimmed: Counter,
    errors: Counter,
    outages: Counter,
    outage_waits: Counter,
    groups_recreated: Counter,
}

/// What an event source has done since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SourceStats {
    /// Handler calls (bisected halves not counted separately).
    pub batches: u64,
    /// Records handed to the handler.
    pub records: u64,
    /// Records acknowledged after success.
    pub succeeded: u64,
    /// Failed records left pending for a retry.
    pub retried: u64,
    /// Records put back unattempted behind a failed record of their aggregate.
    pub waiting: u64,
    /// Records moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Pending records found trimmed from their stream and acknowledged.
    pub trimmed: u64,
    /// Cycles that failed on a Redis error (and were retried after a pause).
    pub errors: u64,
    /// Times a stream worker found its store (the handler's database or Redis)
    /// unavailable and paused until it answered again.
    pub outages: u64,
    /// Records the handler answered with an outage: put back without using up
    /// an attempt.
    pub outage_waits: u64,
    /// Consumer groups found missing (`NOGROUP`) and created again from the
    /// oldest entry of their stream.
    pub groups_recreated: u64,
}

impl Stats {
    fn snapshot(&self) -> SourceStats {
        SourceStats {
            batches: self.batches.get(),
            records: self.records.get(),
            succeeded: self.succeeded.get(),
            retried: self.retried.get(),
            waiting: self.waiting.get(),
            dead_lettered: self.dead_lettered.get(),
            trimmed: self.trimmed.get(),
            errors: self.errors.get(),
            outages: self.outages.get(),
            outage_waits: self.outage_waits.get(),
            groups_recreated: self.groups_recreated.get(),
        }
    }
}

// Compare-and-act on a lease: only its holder renews or releases it.
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) else return 0 end";

/// Reads a consumer group's streams and calls a batch handler.
pub struct EventSource {
    settings: Arc<SourceSettings>,
    client: RedisClient,
    redis: Redis,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSource")
            .field("settings", &self.settings)
            .finish()
    }
}

/// A stream this consumer reads, and its worker.
struct Held {
    stop: watch::Sender<bool>,
    task: Task,
}

/// A worker task, aborted if dropped: when a run is cancelled (or its process
/// dies), its workers stop with it instead of reading on without a lease.
struct Task(Option<JoinHandle<()>>);

impl Task {
    fn is_finished(&self) -> bool {
        self.0.as_ref().is_none_or(JoinHandle::is_finished)
    }

    async fn join(mut self) -> Result<(), tokio::task::JoinError> {
        match self.0.take() {
            Some(handle) => handle.await,
            None => Ok(()),
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

impl EventSource {
    /// Connects to the Redis node at `url` (commands time out after
    /// `response_timeout`; blocking reads use their own connections with a
    /// longer timeout).
    pub async fn connect(
        url: &str,
        response_timeout: Duration,
        settings: SourceSettings,
    ) -> Result<Self, redis::RedisError> {
        Self::with_client(RedisClient::open(url, false)?, response_timeout, settings)
    }

    /// As [`EventSource::connect`], to a node or a cluster.
    pub fn with_client(
        client: RedisClient,
        response_timeout: Duration,
        settings: SourceSettings,
    ) -> Result<Self, redis::RedisError> {
        let redis = client.connect(response_timeout)?;
        Ok(Self {
            settings: Arc::new(settings),
            client,
            redis,
            stats: Arc::default(),
        })
    }

    pub fn settings(&self) -> &SourceSettings {
        &self.settings
    }

    pub fn stats(&self) -> SourceStats {
        self.stats.snapshot()
    }

    /// The group's dead-letter stream.
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters::new(
            self.redis.clone(),
            &self.settings.namespace,
            &self.settings.group,
        )
    }

    fn lease_key(&self, stream: &str) -> String {
        overview::lease_key(&self.settings.namespace, &self.settings.group, stream)
    }

    fn members_key(&self) -> String {
        format!(
            "{}:members:{}",
            self.settings.namespace, self.settings.group
        )
    }

    /// A reader of `stream` alone, to drive one step at a time with
    /// [`StreamWorker::poll_once`] (as the relay is driven with
    /// `Relay::relay_once`). It takes no lease: the caller makes sure no other
    /// consumer of the group reads `stream` meanwhile. What it does is counted
    /// in [`EventSource::stats`].
    pub fn worker<H: BatchHandler>(&self, stream: &str, handler: Arc<H>) -> StreamWorker<H> {
        StreamWorker::new(
            stream.to_owned(),
            Arc::clone(&self.settings),
            self.client.clone(),
            self.redis.clone(),
            handler,
            Arc::clone(&self.stats),
        )
    }

    /// Serves until `shutdown` completes or `deadline` passes, then lets every
    /// batch in hand finish and be acknowledged, and gives its streams back.
    /// Returns what this run did.
    pub async fn run<H: BatchHandler>(
        &self,
        handler: Arc<H>,
        deadline: Option<Instant>,
        shutdown: impl Future<Output = ()>,
    ) -> SourceStats {
        let before = self.stats.snapshot();
        let tick = self.settings.lease_ttl / 3;
        let mut held: HashMap<String, Held> = HashMap::new();
        let mut stopping: Vec<(String, Task)> = Vec::new();
        let mut redis = self.redis.clone();
        tokio::pin!(shutdown);
        let mut ticks: u64 = 0;
        // Only for its one line per change: the loop keeps its pace while Redis is away.
        let mut redis_away = breaker::Breaker::new(tick, tick);
        // The layout generation whose previous one this group has finished.
        let mut finished = None;
        loop {
            match self
                .maintain(
                    &mut redis,
                    &handler,
                    deadline,
                    &mut held,
                    &mut stopping,
                    &mut finished,
                )
                .await
            {
                Ok(()) => {
                    if let Some(down) = redis_away.close() {
                        info!(
                            group = %self.settings.group,
                            down_for_ms = breaker::millis(down),
                            "Redis available again; stream leases renewed"
                        );
                    }
                }
                Err(e) if Failure::of_redis(&e).is_outage() => {
                    if redis_away.trip() {
                        warn!(group = %self.settings.group, error = %e, "Redis unavailable; stream leases are renewed once it answers");
                    } else {
                        debug!(error = %e, "maintaining stream leases failed; Redis still unavailable");
                    }
                }
                Err(e) => warn!(error = %e, "maintaining stream leases failed; retrying"),
            }
            if ticks % 20 == 0 {
                self.remove_idle_consumers(&mut redis, held.keys()).await;
            }
            ticks += 1;
            let sleep = match deadline {
                Some(d) => tick.min(d.saturating_duration_since(Instant::now())),
                None => tick,
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(sleep) => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        // Stop: every worker finishes its batch; then the leases go back.
        for (stream, h) in held.drain() {
            let _ = h.stop.send(true);
            stopping.push((stream, h.task));
        }
        for (stream, task) in stopping.drain(..) {
            if let Err(e) = task.join().await {
                warn!(%stream, error = %e, "a stream worker ended abnormally");
            }
            self.release(&mut redis, &stream).await;
            self.leave_group_if_done(&mut redis, &stream).await;
        }
        let _: Result<(), _> = redis::cmd("ZREM")
            .arg(self.members_key())
            .arg(&self.settings.consumer)
            .query_async(&mut redis)
            .await;
        let after = self.stats.snapshot();
        SourceStats {
            batches: after.batches - before.batches,
            records: after.records - before.records,
            succeeded: after.succeeded - before.succeeded,
            retried: after.retried - before.retried,
            waiting: after.waiting - before.waiting,
            dead_lettered: after.dead_lettered - before.dead_lettered,
            trimmed: after.trimmed - before.trimmed,
            errors: after.errors - before.errors,
            outages: after.outages - before.outages,
            outage_waits: after.outage_waits - before.outage_waits,
            groups_recreated: after.groups_recreated - before.groups_recreated,
        }
    }

    /// Heartbeat, lease renewal, and taking or giving back streams so that
    /// every live consumer holds its share.
    async fn maintain<H: BatchHandler>(
        &self,
        redis: &mut Redis,
        handler: &Arc<H>,
        deadline: Option<Instant>,
        held: &mut HashMap<String, Held>,
        stopping: &mut Vec<(String, Task)>,
        finished: &mut Option<u32>,
    ) -> Result<(), redis::RedisError> {
        let s = &self.settings;
        let all = self.streams_now(redis, finished).await?;
        let ttl_ms = u64::try_from(s.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let now_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        let members = self.members_key();
        let (_, _, live): ((), (), u64) = redis::pipe()
            .cmd("ZADD")
            .arg(&members)
            .arg(now_ms)
            .arg(&s.consumer)
            .cmd("ZREMRANGEBYSCORE")
            .arg(&members)
            .arg("-inf")
            .arg(now_ms.saturating_sub(ttl_ms))
            .cmd("ZCARD")
            .arg(&members)
            .query_async(redis)
            .await?;

        // Finished workers give their leases back.
        let mut still = Vec::new();
        for (stream, task) in stopping.drain(..) {
            if task.is_finished() {
                self.release(redis, &stream).await;
            } else {
                still.push((stream, task));
            }
        }
        *stopping = still;

        // Renew what is held (and what is still finishing its batch).
        let renewing: Vec<String> = held
            .keys()
            .chain(stopping.iter().map(|(s, _)| s))
            .cloned()
            .collect();
        for stream in renewing {
            let renewed: i64 = redis::cmd("EVAL")
                .arg(RENEW)
                .arg(1)
                .arg(self.lease_key(&stream))
                .arg(&s.consumer)
                .arg(ttl_ms)
                .query_async(redis)
                .await?;
            if renewed == 0 {
                if let Some(h) = held.remove(&stream) {
                    warn!(%stream, "lost the stream's lease; stopping after the current batch");
                    let _ = h.stop.send(true);
                    stopping.push((stream, h.task));
                }
            }
        }

        // Streams no longer read (a finished generation) go back.
        let gone: Vec<String> = held.keys().filter(|k| !all.contains(k)).cloned().collect();
        for stream in gone {
            if let Some(h) = held.remove(&stream) {
                info!(%stream, "the stream's generation is finished; giving it back");
                let _ = h.stop.send(true);
                stopping.push((stream, h.task));
            }
        }
        let streams = all.len();
        let live = usize::try_from(live.max(1)).unwrap_or(1);
        let share = streams.div_ceil(live);
        // Give back what is over the share (the worker finishes its batch first).
        while held.len() > share {
            let Some(stream) = held.keys().max().cloned() else {
                break;
            };
            if let Some(h) = held.remove(&stream) {
                info!(%stream, "giving the stream to another consumer");
                let _ = h.stop.send(true);
                stopping.push((stream, h.task));
            }
        }
        if held.len() >= share {
            return Ok(());
        }
        // Take free streams, starting at a place of our own so that consumers
        // starting together spread out.
        let offset = crate::streams::partition_of(
            &s.consumer,
            u16::try_from(streams.max(1)).unwrap_or(u16::MAX),
        ) as usize;
        for i in 0..streams {
            if held.len() >= share {
                break;
            }
            let stream = &all[(offset + i) % streams];
            if held.contains_key(stream) || stopping.iter().any(|(st, _)| st == stream) {
                continue;
            }
            let taken: Option<String> = redis::cmd("SET")
                .arg(self.lease_key(stream))
                .arg(&s.consumer)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(redis)
                .await?;
            if taken.is_none() {
                continue;
            }
            info!(%stream, consumer = %s.consumer, group = %s.group, "reading the stream");
            let (stop, stop_rx) = watch::channel(false);
            let worker = self.worker(stream, Arc::clone(handler));
            // In the caller's span: the lines of the worker name its function.
            let task = Task(Some(tokio::spawn(tracing::Instrument::in_current_span(
                worker.run(stop_rx, deadline),
            ))));
            held.insert(stream.clone(), Held { stop, task });
        }
        Ok(())
    }

    /// The streams to read now: the settings' own, or for a source following
    /// the layout ([`SourceSettings::aggregate_types`]), the previous
    /// generation's until this group has finished every one of them, then the
    /// current one's. `finished` remembers the generation found finished.
    async fn streams_now(
        &self,
        redis: &mut Redis,
        finished: &mut Option<u32>,
    ) -> Result<Vec<String>, redis::RedisError> {
        let s = &self.settings;
        if s.aggregate_types.is_empty() {
            return Ok(s.streams.clone());
        }
        let Some(layout) = crate::layout::read(redis, &s.namespace).await? else {
            return Ok(s.streams.clone());
        };
        let mut done = layout.previous.is_none() || *finished == Some(layout.generation);
        if !done {
            done = true;
            for (stream, end) in layout.previous_streams(&s.namespace, &s.aggregate_types) {
                let Some(end) = end else { continue };
                let unfinished =
                    crate::layout::unfinished_groups(redis, &stream, &end, Some(&s.group)).await?;
                if let Some(why) = unfinished.first() {
                    debug!(group = %s.group, %why, "finishing the previous stream generation");
                    done = false;
                    break;
                }
            }
            if done {
                info!(group = %s.group, generation = layout.generation, partitions = layout.partitions, "previous stream generation finished; reading the new one");
                *finished = Some(layout.generation);
            }
        }
        Ok(crate::layout::streams_to_read(
            &layout,
            &s.namespace,
            &s.aggregate_types,
            done,
        ))
    }

    async fn release(&self, redis: &mut Redis, stream: &str) {
        let released: Result<i64, _> = redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(self.lease_key(stream))
            .arg(&self.settings.consumer)
            .query_async(redis)
            .await;
        if let Err(e) = released {
            warn!(%stream, error = %e, "could not release the stream's lease; it expires by itself");
        }
    }

    /// Removes this consumer from `stream`'s group if it has nothing pending.
    async fn leave_group_if_done(&self, redis: &mut Redis, stream: &str) {
        let consumers: Result<redis::streams::StreamInfoConsumersReply, _> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(stream)
            .arg(&self.settings.group)
            .query_async(redis)
            .await;
        let done = consumers.is_ok_and(|c| {
            c.consumers
                .iter()
                .any(|c| c.name == self.settings.consumer && c.pending == 0)
        });
        if done {
            let _: Result<i64, _> = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(stream)
                .arg(&self.settings.group)
                .arg(&self.settings.consumer)
                .query_async(redis)
                .await;
        }
    }

    /// Removes other consumers that have been idle for the consumer idle
    /// timeout with nothing pending (Lambda instances come and go).
    async fn remove_idle_consumers<'a>(
        &self,
        redis: &mut Redis,
        streams: impl Iterator<Item = &'a String>,
    ) {
        let limit =
            u64::try_from(self.settings.consumer_idle_timeout.as_millis()).unwrap_or(u64::MAX);
        for stream in streams {
            let Ok(reply) = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(stream)
                .arg(&self.settings.group)
                .query_async::<redis::streams::StreamInfoConsumersReply>(redis)
                .await
            else {
                continue;
            };
            for c in reply.consumers {
                if c.name != self.settings.consumer && c.pending == 0 && c.idle as u64 >= limit {
                    let removed: Result<i64, _> = redis::cmd("XGROUP")
                        .arg("DELCONSUMER")
                        .arg(stream)
                        .arg(&self.settings.group)
                        .arg(&c.name)
                        .query_async(redis)
                        .await;
                    if removed.is_ok() {
                        info!(%stream, consumer = %c.name, "removed an idle consumer");
                    }
                }
            }
        }
    }
}
