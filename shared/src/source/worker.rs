//! One stream, read by the one consumer that holds its lease: pending records
//! first (retries after their backoff, a dead consumer's records after the
//! visibility timeout), then new ones, handed to the batch handler in stream
//! order; then acknowledgements, dead letters and retry bookkeeping in one
//! pipelined round trip.
//!
//! The delivery count Redis keeps for every pending entry is the record's
//! attempt count. It is set explicitly (`XCLAIM ... RETRYCOUNT`): a record that
//! was delivered but not attempted (it waited behind a failed record of its
//! aggregate) gets its count back, so waiting never uses up its retries.
//!
//! An outage is waited out, never dead-lettered: a record the handler answers
//! with [`RecordOutcome::Outage`] gets its count back too (the later records of
//! its aggregate wait), and the worker opens its circuit breaker: it stops
//! reading and pauses, longer each time, then tries again (the next cycle is
//! the probe). A Redis outage of the cycle itself goes through the same
//! breaker. One line is logged when the store becomes unavailable and one when
//! it answers again. Only failures of the record itself use up attempts.
//!
//! A consumer group that Redis lost (`NOGROUP`: a replica promoted without
//! it, a restart without persistence) is created again from the oldest entry
//! in the stream; the consumers' inboxes make the redeliveries harmless.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::StreamPendingCountReply;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::batch::{BatchHandler, BatchResponse, RecordOutcome, StreamBatch, StreamRecord};
use super::breaker::{millis, Breaker};
use super::dead_letter::{dead_letter_fields, dead_letter_key};
use super::entry::{self, RawEntry};
use super::settings::{SourceSettings, StartingPosition};
use super::Stats;
use crate::error::{redis_error_codes, Failure};
use crate::metrics::{Metric, Recorder};
use crate::trace::TraceParent;

/// The most pending entries looked at per cycle. When more are pending, new
/// entries are not read until they drain (their aggregates might be blocked
/// by a pending entry beyond the ones looked at).
const PENDING_SCAN: usize = 1000;

/// An entry on the pending list.
#[derive(Debug)]
struct Pending {
    id: String,
    consumer: String,
    idle: Duration,
    count: u32,
}

/// A record taken for this batch.
#[derive(Debug)]
struct Taken {
    entry: RawEntry,
    attempt: u32,
}

/// What happens to one taken record after the handler.
#[derive(Debug, PartialEq)]
enum Fate {
    Ack,
    /// Failed; stays pending until its backoff is over.
    Retry,
    /// Not attempted: waits behind a failed record of its aggregate.
    Wait,
    /// The handler's store is away: waits, its attempt not counted.
    Outage,
    DeadLetter(String),
}

impl Fate {
    /// The outcome as the per-record log line names it.
    fn outcome(&self) -> &'static str {
        match self {
            Fate::Ack => "processed",
            Fate::Retry => "failed; will retry",
            Fate::Wait => "waiting behind a failed record of its aggregate",
            Fate::Outage => "store unavailable; waiting without using an attempt",
            Fate::DeadLetter(_) => "dead-lettered",
        }
    }
}

/// What a cycle learned about the handler's store.
#[derive(Debug, Default)]
struct Cycle {
    /// Why the store is away, when the handler answered a record with an outage.
    outage: Option<String>,
    /// The handler answered about a record without an outage: its store works.
    store_answered: bool,
}

/// The longest pause of the breaker, whatever the retry backoff.
const LONGEST_OUTAGE_PAUSE: Duration = Duration::from_secs(30);

/// What the log line of a handled record says of it; the record itself went to the handler.
struct Handled {
    aggregate: String,
    attempt: u32,
    event_id: String,
    event_type: String,
    aggregate_type: String,
    trace: TraceParent,
    producer_span: Option<String>,
}

pub(crate) struct Worker<H> {
    pub stream: String,
    pub settings: Arc<SourceSettings>,
    pub client: redis::Client,
    pub redis: ConnectionManager,
    pub handler: Arc<H>,
    pub stats: Arc<Stats>,
    metrics: Recorder,
    reader: Option<MultiplexedConnection>,
    /// Contents of pending entries already read, by id.
    cache: HashMap<String, RawEntry>,
    dlq_key: String,
    /// When the last cycle left nothing pending: the next one need not ask
    /// (only this worker delivers this stream's entries while it holds the
    /// lease). Trusted for [`CLEAR_FOR`] at most.
    clear_since: Option<Instant>,
    /// Open while the store (Redis, or the handler's) is unavailable.
    breaker: Breaker,
    /// The open breaker was tripped by the handler's store at least once: only
    /// an answer from the handler closes it (an empty cycle proves nothing).
    handler_away: bool,
}

/// How long "nothing pending" is trusted without asking Redis again.
const CLEAR_FOR: Duration = Duration::from_secs(1);

impl<H: BatchHandler> Worker<H> {
    pub fn new(
        stream: String,
        settings: Arc<SourceSettings>,
        client: redis::Client,
        redis: ConnectionManager,
        handler: Arc<H>,
        stats: Arc<Stats>,
    ) -> Self {
        let dlq_key = dead_letter_key(&settings.namespace, &settings.group);
        let metrics = Recorder::new(&settings.service);
        // The breaker pauses as retries back off, at most LONGEST_OUTAGE_PAUSE.
        let breaker = Breaker::new(
            settings.retry_backoff,
            settings.max_retry_backoff.min(LONGEST_OUTAGE_PAUSE),
        );
        Self {
            breaker,
            handler_away: false,
            stream,
            metrics,
            settings,
            client,
            redis,
            handler,
            stats,
            reader: None,
            cache: HashMap::new(),
            dlq_key,
            clear_since: None,
        }
    }

    /// Cycles until `stop` turns true or `deadline` passes. While the store is
    /// unavailable the breaker is open and every cycle is followed by a
    /// growing pause; other Redis failures are retried with a pause of their own.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>, deadline: Option<Instant>) {
        let mut pause = Duration::from_millis(100);
        let mut group_ready = false;
        while !*stop.borrow_and_update() && deadline.is_none_or(|d| Instant::now() < d) {
            // Whether to pause after other failures than outages.
            let mut failed = false;
            if !group_ready {
                match ensure_group(&mut self.redis, &self.stream, &self.settings).await {
                    Ok(()) => group_ready = true,
                    Err(e) => failed = !self.redis_failed(&e, "cannot create the consumer group"),
                }
            }
            if group_ready {
                match self.cycle(deadline).await {
                    Ok(cycle) => {
                        pause = Duration::from_millis(100);
                        match cycle.outage {
                            Some(reason) => self.store_away(&reason, true),
                            None if cycle.store_answered || !self.handler_away => self.store_back(),
                            None => {}
                        }
                    }
                    Err(e) => {
                        self.clear_since = None;
                        self.reader = None;
                        self.stats.errors.inc();
                        failed = if is_no_group(&e) {
                            self.cache.clear();
                            !self.recreate_group().await
                        } else {
                            !self.redis_failed(&e, "reading the stream failed; retrying")
                        };
                    }
                }
            }
            let rest = if self.breaker.is_open() {
                self.breaker.next_pause()
            } else if failed {
                let rest = pause;
                pause = (pause * 2).min(Duration::from_secs(5));
                rest
            } else {
                continue;
            };
            let rest = deadline.map_or(rest, |d| {
                rest.min(d.saturating_duration_since(Instant::now()))
            });
            tokio::select! {
                _ = tokio::time::sleep(rest) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// A Redis failure: an outage goes to the breaker (true), anything else is
    /// logged as `what` (false).
    fn redis_failed(&mut self, error: &redis::RedisError, what: &str) -> bool {
        if Failure::of_redis(error).is_outage() {
            self.store_away(&format!("Redis: {error}"), false);
            true
        } else {
            warn!(stream = %self.stream, error = %error, "{what}");
            false
        }
    }

    /// The store is away: opens the breaker, logging only when it opens.
    fn store_away(&mut self, reason: &str, handler: bool) {
        self.handler_away |= handler;
        if self.breaker.trip() {
            self.stats.outages.inc();
            self.metrics.count(Metric::STORE_OUTAGES, 1);
            warn!(stream = %self.stream, group = %self.settings.group, reason, "store unavailable; pausing");
        } else {
            debug!(stream = %self.stream, reason, "store still unavailable");
        }
    }

    /// The store answers: closes the breaker, logging only when it closes.
    fn store_back(&mut self) {
        self.handler_away = false;
        if let Some(down) = self.breaker.close() {
            info!(
                stream = %self.stream,
                group = %self.settings.group,
                down_for_ms = millis(down),
                "store available again"
            );
        }
    }

    /// The group is gone (`NOGROUP`): creates it again from the oldest entry
    /// still in the stream, never from `$` (whatever the starting position
    /// says: entries written since it was lost would be skipped). Every entry is
    /// delivered again; the consumers' inboxes make that harmless. True if this
    /// created it (the next cycle follows at once).
    async fn recreate_group(&mut self) -> bool {
        let group = &self.settings.group;
        match create_group(&mut self.redis, &self.stream, group, "0").await {
            Ok(true) => {
                self.stats.groups_recreated.inc();
                self.metrics.count(Metric::CONSUMER_GROUPS_RECREATED, 1);
                warn!(stream = %self.stream, %group, "the consumer group was missing (NOGROUP); created it again from the oldest entry, whose records are delivered again");
                true
            }
            // Someone else created it meanwhile: go on after the usual pause.
            Ok(false) => false,
            Err(e) => self.redis_failed(&e, "cannot create the lost consumer group again"),
        }
    }

    /// One batch: pick, hand over, settle.
    async fn cycle(&mut self, deadline: Option<Instant>) -> Result<Cycle, redis::RedisError> {
        let s = Arc::clone(&self.settings);
        let mut learned = Cycle::default();
        let pending = match self.clear_since.take() {
            Some(at) if at.elapsed() < CLEAR_FOR => Vec::new(),
            _ => self.pending().await?,
        };
        let truncated = pending.len() >= PENDING_SCAN;
        let ids: HashSet<&str> = pending.iter().map(|p| p.id.as_str()).collect();
        self.cache.retain(|id, _| ids.contains(id.as_str()));
        self.fetch_missing(&pending).await?;

        let mut blocked: HashSet<String> = HashSet::new();
        let mut taken: Vec<Taken> = Vec::new();
        let mut claims: Vec<(String, u64, u32)> = Vec::new(); // id, min idle ms, attempt
        let mut exhausted: Vec<(RawEntry, u32)> = Vec::new();
        let mut trimmed: Vec<String> = Vec::new();
        let mut next_due: Option<Duration> = None;
        for p in &pending {
            let Some(entry) = self.cache.get(&p.id) else {
                trimmed.push(p.id.clone());
                continue;
            };
            let aggregate = entry.aggregate_id().map(str::to_owned);
            if aggregate.as_ref().is_some_and(|a| blocked.contains(a)) {
                continue;
            }
            let wait = if p.consumer == s.consumer {
                s.backoff(p.count)
            } else {
                s.visibility_timeout.max(s.backoff(p.count))
            };
            if p.idle < wait || taken.len() >= s.batch_size {
                if p.idle < wait {
                    let left = wait - p.idle;
                    next_due = Some(next_due.map_or(left, |d| d.min(left)));
                }
                blocked.extend(aggregate);
                continue;
            }
            if p.count >= s.maximum_attempts() {
                exhausted.push((entry.clone(), p.count));
                continue;
            }
            let min_idle = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            claims.push((p.id.clone(), min_idle, p.count + 1));
            taken.push(Taken {
                entry: entry.clone(),
                attempt: p.count + 1,
            });
        }
        self.claim(&mut taken, &claims).await?;

        // New records, unless the batch is full or older ones are still unseen,
        // or the store is away and the pending records are enough of a probe.
        let mut held_back: Vec<String> = Vec::new();
        let mut fresh_count = 0;
        let probing = self.breaker.is_open() && !taken.is_empty();
        if !truncated && taken.len() < s.batch_size && !probing {
            let idle = taken.is_empty() && exhausted.is_empty() && trimmed.is_empty();
            let mut wait = if idle { s.block } else { Duration::ZERO };
            if let Some(due) = next_due {
                wait = wait.min(due);
            }
            if let Some(deadline) = deadline {
                wait = wait.min(deadline.saturating_duration_since(Instant::now()));
            }
            let window_end = Instant::now() + s.maximum_batching_window;
            loop {
                let fresh = self.read_new(s.batch_size - taken.len(), wait).await?;
                let got = !fresh.is_empty();
                fresh_count += fresh.len();
                for entry in fresh {
                    match entry.aggregate_id() {
                        Some(a) if blocked.contains(a) => held_back.push(entry.id.clone()),
                        _ => taken.push(Taken {
                            entry: entry.clone(),
                            attempt: 1,
                        }),
                    }
                    self.cache.insert(entry.id.clone(), entry);
                }
                // Gather up to the batching window once something has arrived.
                let left = window_end.saturating_duration_since(Instant::now());
                if taken.len() >= s.batch_size || left.is_zero() || (!got && taken.is_empty()) {
                    break;
                }
                wait = left;
                if deadline.is_some_and(|d| Instant::now() + wait > d) {
                    break;
                }
            }
        }
        if taken.is_empty() && exhausted.is_empty() && trimmed.is_empty() && held_back.is_empty() {
            return Ok(learned);
        }

        let mut fates: Vec<Fate> = Vec::with_capacity(taken.len());
        let mut records: Vec<StreamRecord> = Vec::new();
        let mut record_slots: Vec<usize> = Vec::new();
        for (i, t) in taken.iter().enumerate() {
            let too_old = s.maximum_record_age.is_some_and(|max| {
                t.entry.timestamp_ms().is_some_and(|ms| {
                    let now_ms = u64::try_from(
                        time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000,
                    )
                    .unwrap_or(u64::MAX);
                    now_ms.saturating_sub(ms) > u64::try_from(max.as_millis()).unwrap_or(u64::MAX)
                })
            });
            if too_old {
                fates.push(Fate::DeadLetter("older than the maximum record age".into()));
                continue;
            }
            match t.entry.decode() {
                Ok(event) => {
                    fates.push(Fate::Ack); // settled below
                    record_slots.push(i);
                    // This delivery's span, in the producer's trace (or a new one).
                    let trace = event
                        .traceparent
                        .map_or_else(TraceParent::new_root, |tp| tp.child());
                    records.push(StreamRecord {
                        stream: self.stream.clone(),
                        id: t.entry.id.clone(),
                        attempt: t.attempt,
                        event,
                        trace,
                    });
                }
                Err(e) => fates.push(Fate::DeadLetter(format!("undecodable entry: {e}"))),
            }
        }
        if !records.is_empty() {
            self.stats.batches.inc();
            self.stats.records.add(records.len() as u64);
            self.metrics.count(Metric::BATCH_SIZE, records.len() as u64);
            let meta: Vec<Handled> = records
                .iter()
                .map(|r| Handled {
                    aggregate: r.event.aggregate_id.to_string(),
                    attempt: r.attempt,
                    event_id: r.event.event_id.to_string(),
                    event_type: r.event.event_type.to_string(),
                    aggregate_type: r.event.aggregate_type.to_string(),
                    trace: r.trace,
                    producer_span: r.event.traceparent.map(|tp| tp.span_id()),
                })
                .collect();
            let outcomes = invoke(
                Arc::clone(&self.handler),
                records,
                s.bisect_batch_on_function_error,
            )
            .await;
            let mut failed: HashSet<&str> = HashSet::new();
            for ((handled, outcome), slot) in meta.iter().zip(&outcomes).zip(&record_slots) {
                let (aggregate, attempt) = (&handled.aggregate, &handled.attempt);
                let id = &taken[*slot].entry.id;
                if !matches!(outcome, RecordOutcome::Outage(_)) {
                    learned.store_answered = true;
                }
                fates[*slot] = if failed.contains(aggregate.as_str()) {
                    Fate::Wait
                } else {
                    match outcome {
                        RecordOutcome::Done => Fate::Ack,
                        RecordOutcome::Outage(reason) => {
                            failed.insert(aggregate);
                            learned.outage.get_or_insert_with(|| reason.clone());
                            Fate::Outage
                        }
                        RecordOutcome::Retry(reason) => {
                            failed.insert(aggregate);
                            if *attempt >= s.maximum_attempts() {
                                Fate::DeadLetter(format!(
                                    "failed {attempt} times, the last time: {reason}"
                                ))
                            } else {
                                debug!(%id, attempt, %reason, "record failed; will retry");
                                Fate::Retry
                            }
                        }
                        RecordOutcome::Reject(reason) => {
                            failed.insert(aggregate);
                            Fate::DeadLetter(reason.clone())
                        }
                    }
                };
            }
            for ((handled, outcome), slot) in meta.iter().zip(&outcomes).zip(&record_slots) {
                let fate = &fates[*slot];
                let reason = match (fate, outcome) {
                    (Fate::DeadLetter(reason), _) => Some(reason.as_str()),
                    (
                        _,
                        RecordOutcome::Retry(reason)
                        | RecordOutcome::Reject(reason)
                        | RecordOutcome::Outage(reason),
                    ) => Some(reason.as_str()),
                    _ => None,
                };
                macro_rules! handled_line {
                    ($level:ident) => {
                        $level!(
                            stream = %self.stream,
                            id = %taken[*slot].entry.id,
                            event_id = %handled.event_id,
                            event_type = %handled.event_type,
                            aggregate_type = %handled.aggregate_type,
                            aggregate_id = %handled.aggregate,
                            attempt = handled.attempt,
                            trace_id = %handled.trace.trace_id(),
                            span_id = %handled.trace.span_id(),
                            parent_span_id = handled.producer_span.as_deref(),
                            outcome = fate.outcome(),
                            reason,
                            "event handled"
                        )
                    };
                }
                // While the store is away the breaker's lines say it, once.
                if *fate == Fate::Outage || (learned.outage.is_some() && *fate == Fate::Wait) {
                    handled_line!(debug);
                } else {
                    handled_line!(info);
                }
            }
        }
        self.settle(&taken, &fates, &exhausted, &trimmed, &held_back)
            .await?;
        crate::metrics::flush_if_due(Duration::from_secs(1));
        // Nothing left pending if every pending entry looked at was settled
        // and every record taken was acknowledged or dead-lettered.
        let settled = taken.len() + exhausted.len() + trimmed.len();
        let all_final = fates
            .iter()
            .all(|f| matches!(f, Fate::Ack | Fate::DeadLetter(_)));
        if all_final && held_back.is_empty() && !truncated && settled >= pending.len() + fresh_count
        {
            self.clear_since = Some(Instant::now());
        }
        Ok(learned)
    }

    /// The pending list, oldest first.
    async fn pending(&mut self) -> Result<Vec<Pending>, redis::RedisError> {
        let reply: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.settings.group)
            .arg("-")
            .arg("+")
            .arg(PENDING_SCAN)
            .query_async(&mut self.redis)
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|p| Pending {
                id: p.id,
                consumer: p.consumer,
                idle: Duration::from_millis(p.last_delivered_ms as u64),
                count: u32::try_from(p.times_delivered).unwrap_or(u32::MAX),
            })
            .collect())
    }

    /// Reads the contents of pending entries not yet in the cache; an entry
    /// trimmed away is simply left out.
    async fn fetch_missing(&mut self, pending: &[Pending]) -> Result<(), redis::RedisError> {
        let missing: Vec<&str> = pending
            .iter()
            .map(|p| p.id.as_str())
            .filter(|id| !self.cache.contains_key(*id))
            .collect();
        for chunk in missing.chunks(200) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("XRANGE").arg(&self.stream).arg(*id).arg(*id);
            }
            let replies: Vec<redis::Value> = pipe.query_async(&mut self.redis).await?;
            for reply in replies {
                for entry in entry::parse_range(reply)? {
                    self.cache.insert(entry.id.clone(), entry);
                }
            }
        }
        Ok(())
    }

    /// Takes ownership of the pending records chosen for this batch and sets
    /// their attempt counts; drops from `taken` any that another consumer
    /// touched meanwhile or that were trimmed.
    async fn claim(
        &mut self,
        taken: &mut Vec<Taken>,
        claims: &[(String, u64, u32)],
    ) -> Result<(), redis::RedisError> {
        if claims.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (id, min_idle, attempt) in claims {
            pipe.cmd("XCLAIM")
                .arg(&self.stream)
                .arg(&self.settings.group)
                .arg(&self.settings.consumer)
                .arg(*min_idle)
                .arg(id)
                .arg("RETRYCOUNT")
                .arg(*attempt)
                .arg("JUSTID");
        }
        let replies: Vec<Vec<String>> = pipe.query_async(&mut self.redis).await?;
        let claimed: HashSet<String> = replies.into_iter().flatten().collect();
        let pending_ids: HashSet<&str> = claims.iter().map(|(id, ..)| id.as_str()).collect();
        taken.retain(|t| {
            !pending_ids.contains(t.entry.id.as_str()) || claimed.contains(&t.entry.id)
        });
        Ok(())
    }

    /// New entries (`>`), waiting up to `wait` for some on the reader's own
    /// connection (a blocking read would stall every other command on a shared
    /// one).
    async fn read_new(
        &mut self,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<RawEntry>, redis::RedisError> {
        let reader = match &mut self.reader {
            Some(r) => r,
            None => {
                let timeout = self.settings.block
                    + self.settings.maximum_batching_window
                    + Duration::from_secs(5);
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(timeout));
                self.reader.insert(
                    self.client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
        };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.settings.group)
            .arg(&self.settings.consumer)
            .arg("COUNT")
            .arg(count.max(1));
        // BLOCK 0 would wait forever.
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        if ms > 0 {
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(">");
        let reply: redis::Value = cmd.query_async(reader).await?;
        entry::parse_read(reply)
    }

    /// Acknowledgements, dead letters and attempt counts, in one round trip.
    /// Dead letters are written before their acknowledgement: a crash in
    /// between redelivers the record (and may dead-letter it twice), never
    /// loses it.
    async fn settle(
        &mut self,
        taken: &[Taken],
        fates: &[Fate],
        exhausted: &[(RawEntry, u32)],
        trimmed: &[String],
        held_back: &[String],
    ) -> Result<(), redis::RedisError> {
        let s = Arc::clone(&self.settings);
        let mut pipe = redis::pipe();
        let mut acks: Vec<&str> = trimmed.iter().map(String::as_str).collect();
        let mut dead = 0u64;
        let mut dead_letter = |pipe: &mut redis::Pipeline,
                               entry: &RawEntry,
                               reason: &str,
                               attempts: u32| {
            warn!(stream = %self.stream, id = %entry.id, attempts, reason, "record dead-lettered");
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&self.dlq_key).arg("*");
            for (k, v) in dead_letter_fields(&self.stream, &s.group, entry, reason, attempts) {
                xadd.arg(k).arg(v);
            }
            pipe.add_command(xadd).ignore();
            dead += 1;
        };
        let (mut ok, mut retried, mut waiting, mut outage) = (0u64, 0u64, 0u64, 0u64);
        let mut restore: Vec<(&str, u32)> = held_back.iter().map(|id| (id.as_str(), 0)).collect();
        for (t, fate) in taken.iter().zip(fates) {
            match fate {
                Fate::Ack => {
                    ok += 1;
                    acks.push(&t.entry.id);
                }
                Fate::Retry => retried += 1,
                Fate::Wait => {
                    waiting += 1;
                    restore.push((&t.entry.id, t.attempt - 1));
                }
                // The attempt did not count: the store was away, not the record wrong.
                Fate::Outage => {
                    outage += 1;
                    restore.push((&t.entry.id, t.attempt - 1));
                }
                Fate::DeadLetter(reason) => {
                    dead_letter(&mut pipe, &t.entry, reason, t.attempt);
                    acks.push(&t.entry.id);
                }
            }
        }
        for (entry, count) in exhausted {
            dead_letter(
                &mut pipe,
                entry,
                &format!(
                    "{count} attempts made; the last one did not finish (a crash or a timeout)"
                ),
                *count,
            );
            acks.push(&entry.id);
        }
        if !acks.is_empty() {
            pipe.cmd("XACK")
                .arg(&self.stream)
                .arg(&s.group)
                .arg(&acks)
                .ignore();
        }
        for (id, count) in &restore {
            pipe.cmd("XCLAIM")
                .arg(&self.stream)
                .arg(&s.group)
                .arg(&s.consumer)
                .arg(0)
                .arg(*id)
                .arg("RETRYCOUNT")
                .arg(*count)
                .arg("JUSTID")
                .ignore();
        }
        pipe.query_async::<()>(&mut self.redis).await?;
        for id in &acks {
            self.cache.remove(*id);
        }
        if !trimmed.is_empty() {
            info!(stream = %self.stream, count = trimmed.len(), "pending records were trimmed from the stream before they were handled; acknowledged");
        }
        self.metrics.count(Metric::EVENTS_PROCESSED, ok);
        self.metrics.count(Metric::EVENTS_FAILED, retried + dead);
        self.metrics.count(Metric::EVENTS_DEAD_LETTERED, dead);
        self.stats.succeeded.add(ok);
        self.stats.retried.add(retried);
        self.stats.waiting.add(waiting + held_back.len() as u64);
        self.stats.outage_waits.add(outage);
        self.stats.dead_lettered.add(dead);
        self.stats.trimmed.add(trimmed.len() as u64);
        Ok(())
    }
}

/// Creates the group (and the stream) unless it exists, at the starting
/// position of the settings.
pub(crate) async fn ensure_group(
    redis: &mut ConnectionManager,
    stream: &str,
    settings: &SourceSettings,
) -> Result<(), redis::RedisError> {
    let start = match settings.starting_position {
        StartingPosition::TrimHorizon => "0",
        StartingPosition::Latest => "$",
    };
    create_group(redis, stream, &settings.group, start)
        .await
        .map(|_| ())
}

/// `XGROUP CREATE <stream> <group> <start> MKSTREAM`; false if the group exists.
async fn create_group(
    redis: &mut ConnectionManager,
    stream: &str,
    group: &str,
    start: &str,
) -> Result<bool, redis::RedisError> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async(redis)
        .await;
    match created {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Redis lost the group (or the stream): `NOGROUP`, alone or in a pipeline.
fn is_no_group(error: &redis::RedisError) -> bool {
    redis_error_codes(error)
        .iter()
        .any(|code| code == "NOGROUP")
}

/// Calls the handler; on a handler error, with bisect on, splits the batch and
/// calls it with each half. One outcome per record, in order.
fn invoke<H: BatchHandler>(
    handler: Arc<H>,
    records: Vec<StreamRecord>,
    bisect: bool,
) -> BoxFuture<'static, Vec<RecordOutcome>> {
    async move {
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        // Kept only if a failed call may be split.
        let spare = (bisect && records.len() > 1).then(|| records.clone());
        let result = AssertUnwindSafe(handler.handle(StreamBatch { records }))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(super::HandlerError::new("the handler panicked")));
        match (result, spare) {
            (Ok(response), _) => outcomes_of(&ids, response),
            (Err(e), Some(mut left)) => {
                debug!(records = left.len(), error = %e, "handler error; bisecting the batch");
                let right = left.split_off(left.len() / 2);
                let mut outcomes = invoke(Arc::clone(&handler), left, bisect).await;
                outcomes.extend(invoke(handler, right, bisect).await);
                outcomes
            }
            (Err(e), None) => vec![RecordOutcome::Retry(format!("handler error: {e}")); ids.len()],
        }
    }
    .boxed()
}

/// The outcome of each record under `response`. As in AWS, a response naming a
/// record that is not in the batch fails the whole batch.
fn outcomes_of(ids: &[String], response: BatchResponse) -> Vec<RecordOutcome> {
    let mut failures: HashMap<&str, RecordOutcome> = HashMap::new();
    for f in &response.batch_item_failures {
        if !ids.contains(&f.item_identifier) {
            let reason = format!(
                "the batch response names {:?}, which is not in the batch",
                f.item_identifier
            );
            return vec![RecordOutcome::Retry(reason); ids.len()];
        }
        let reason = f.reason.clone().unwrap_or_else(|| "reported failed".into());
        failures.insert(
            f.item_identifier.as_str(),
            if f.outage {
                RecordOutcome::Outage(reason)
            } else if f.permanent {
                RecordOutcome::Reject(reason)
            } else {
                RecordOutcome::Retry(reason)
            },
        );
    }
    ids.iter()
        .map(|id| failures.remove(id.as_str()).unwrap_or(RecordOutcome::Done))
        .collect()
}
