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
//!
//! One step is [`StreamWorker::poll_once`]: the loop ([`StreamWorker::run`])
//! repeats it, pausing as it says; a test drives it step by step. A step reads
//! (the pending list, new entries), decides without I/O (which pending records
//! to take, claim or dead-letter: [`plan_pending`]; which records are too old
//! or undecodable: [`prepare`]; what each handler outcome means: [`judge`];
//! what to acknowledge, dead-letter and put back: [`settlement`]; how long to
//! pause: [`pause_after`]), and writes (claims, then one pipelined settlement).
//! Time is tokio's ([`tokio::time::Instant`]), so tests pause and advance it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use crate::redis_link::{Redis, RedisClient, Sending, SlotPipeline};
use futures::future::BoxFuture;
use futures::FutureExt;
use redis::streams::StreamPendingCountReply;
use tokio::sync::watch;
use tokio::time::Instant;
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

/// What a cycle learned about the handler's store, and what it settled.
#[derive(Debug, Default, PartialEq)]
struct Cycle {
    /// Why the store is away, when the handler answered a record with an outage.
    outage: Option<String>,
    /// The handler answered about a record without an outage: its store works.
    store_answered: bool,
    /// Records handed to the handler.
    handled: u64,
    settled: Settled,
}

/// What one step of a stream worker ([`StreamWorker::poll_once`]) did, and how
/// long the loop pauses before the next one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Records handed to the handler.
    pub handled: u64,
    /// Records acknowledged after success.
    pub succeeded: u64,
    /// Failed records left pending for a retry after their backoff.
    pub retried: u64,
    /// Records put back unattempted behind a failed record of their aggregate.
    pub waiting: u64,
    /// Records put back without using up an attempt: the handler's store is away.
    pub outage_waits: u64,
    /// Records moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Pending records found trimmed from the stream and acknowledged.
    pub trimmed: u64,
    /// The Redis error the step failed on, if it did (it is tried again after
    /// [`Outcome::pause`]).
    pub error: Option<String>,
    /// The store (Redis, or the handler's) is unavailable: the circuit breaker
    /// is open and the next step is its probe.
    pub store_away: bool,
    /// How long to pause before the next step (never past the deadline);
    /// `None`: go on at once.
    pub pause: Option<Duration>,
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

/// The reader of one stream for one consumer of a group. [`crate::source::EventSource`]
/// runs one per stream whose lease it holds; a test builds one with
/// [`crate::source::EventSource::worker`] and drives it with
/// [`StreamWorker::poll_once`].
pub struct StreamWorker<H> {
    stream: String,
    settings: Arc<SourceSettings>,
    client: RedisClient,
    redis: Redis,
    handler: Arc<H>,
    stats: Arc<Stats>,
    metrics: Recorder,
    reader: Option<Redis>,
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
    /// The consumer group exists (created, or found, by this worker).
    group_ready: bool,
    /// The pause after a failure that is not an outage.
    backoff: Backoff,
    /// When the worker stops: no read waits, and no pause lasts, past it.
    deadline: Option<Instant>,
}

impl<H> fmt::Debug for StreamWorker<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWorker")
            .field("stream", &self.stream)
            .field("group", &self.settings.group)
            .field("consumer", &self.settings.consumer)
            .field("store_away", &self.breaker.is_open())
            .finish_non_exhaustive()
    }
}

/// How long "nothing pending" is trusted without asking Redis again.
const CLEAR_FOR: Duration = Duration::from_secs(1);

impl<H: BatchHandler> StreamWorker<H> {
    pub(crate) fn new(
        stream: String,
        settings: Arc<SourceSettings>,
        client: RedisClient,
        redis: Redis,
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
            group_ready: false,
            backoff: Backoff::default(),
            deadline: None,
        }
    }

    /// The stream this worker reads.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Cycles until `stop` turns true or `deadline` passes. While the store is
    /// unavailable the breaker is open and every cycle is followed by a
    /// growing pause; other Redis failures are retried with a pause of their own.
    pub(crate) async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        deadline: Option<std::time::Instant>,
    ) {
        self.deadline = deadline.map(Instant::from_std);
        while !*stop.borrow_and_update() && self.deadline.is_none_or(|d| Instant::now() < d) {
            let Some(rest) = self.poll_once().await.pause else {
                continue;
            };
            tokio::select! {
                _ = tokio::time::sleep(rest) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// One step of the worker: creates the consumer group if it is not known to
    /// exist yet, then runs one cycle (takes the pending records that are due and
    /// new ones, hands them to the handler, and settles them: acknowledgements,
    /// retries, dead letters). Redis errors do not escape: an outage opens the
    /// circuit breaker, a lost group is created again, anything else is logged;
    /// the [`Outcome`] says what happened and how long to pause before the next
    /// step. The event source's loop is this step and that pause, repeated.
    pub async fn poll_once(&mut self) -> Outcome {
        let mut outcome = Outcome::default();
        // Whether to pause after other failures than outages.
        let mut failed = false;
        if !self.group_ready {
            match ensure_group(&mut self.redis, &self.stream, &self.settings).await {
                Ok(()) => self.group_ready = true,
                Err(e) => {
                    failed = !self.redis_failed(&e, "cannot create the consumer group");
                    outcome.error = Some(e.to_string());
                }
            }
        }
        if self.group_ready {
            match self.cycle().await {
                Ok(cycle) => {
                    self.backoff.reset();
                    match &cycle.outage {
                        Some(reason) => self.store_away(reason, true),
                        None if cycle.store_answered || !self.handler_away => self.store_back(),
                        None => {}
                    }
                    let s = cycle.settled;
                    outcome.handled = cycle.handled;
                    outcome.succeeded = s.succeeded;
                    outcome.retried = s.retried;
                    outcome.waiting = s.waiting;
                    outcome.outage_waits = s.outage_waits;
                    outcome.dead_lettered = s.dead_lettered;
                    outcome.trimmed = s.trimmed;
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
                    outcome.error = Some(e.to_string());
                }
            }
        }
        outcome.store_away = self.breaker.is_open();
        let left = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        outcome.pause = pause_after(&mut self.breaker, &mut self.backoff, failed, left);
        outcome
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

    /// One batch: read what is pending, decide what to take, claim it, read
    /// new records, hand them over, decide each record's fate, settle.
    async fn cycle(&mut self) -> Result<Cycle, redis::RedisError> {
        let s = Arc::clone(&self.settings);
        let deadline = self.deadline;
        let deadline_left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let mut learned = Cycle::default();
        let pending = if trust_clear(self.clear_since.take(), Instant::now()) {
            Vec::new()
        } else {
            self.pending().await?
        };
        let ids: HashSet<&str> = pending.iter().map(|p| p.id.as_str()).collect();
        self.cache.retain(|id, _| ids.contains(id.as_str()));
        self.fetch_missing(&pending).await?;

        let PendingPlan {
            mut taken,
            claims,
            exhausted,
            trimmed,
            blocked,
            next_due,
            truncated,
        } = plan_pending(&pending, &self.cache, &s);
        self.claim(&mut taken, &claims).await?;

        // New records, unless the batch is full or older ones are still unseen,
        // or the store is away and the pending records are enough of a probe.
        let mut held_back: Vec<String> = Vec::new();
        let mut fresh_count = 0;
        let probing = self.breaker.is_open() && !taken.is_empty();
        let in_hand = InHand {
            taken: taken.len(),
            other: exhausted.len() + trimmed.len(),
            truncated,
            probing,
            next_due,
        };
        if let Some(mut wait) = first_read_wait(&in_hand, &s, deadline_left()) {
            let window_end = Instant::now() + s.maximum_batching_window;
            loop {
                let fresh = self
                    .read_new(s.cycle_capacity() - taken.len(), wait)
                    .await?;
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
                let window_left = window_end.saturating_duration_since(Instant::now());
                match gather_more(
                    taken.len(),
                    s.cycle_capacity(),
                    got,
                    window_left,
                    deadline_left(),
                ) {
                    Some(next) => wait = next,
                    None => break,
                }
            }
        }
        if taken.is_empty() && exhausted.is_empty() && trimmed.is_empty() && held_back.is_empty() {
            return Ok(learned);
        }

        let (mut fates, records, record_slots) =
            prepare(&self.stream, &taken, now_ms(), s.maximum_record_age);
        // A lane hands over at most BatchSize records; the rest of it waits for
        // the next cycle (one call per lane: the slowest lane sets the pace).
        let (records, record_slots) = {
            let (now, later) = lane_batches(&records, s.parallelization_factor, s.batch_size);
            for i in later {
                fates[record_slots[i]] = Fate::Wait;
            }
            let mut records: Vec<Option<StreamRecord>> = records.into_iter().map(Some).collect();
            let kept: Vec<StreamRecord> = now.iter().filter_map(|&i| records[i].take()).collect();
            let slots: Vec<usize> = now.iter().map(|&i| record_slots[i]).collect();
            (kept, slots)
        };
        if !records.is_empty() {
            self.stats.batches.inc();
            self.stats.records.add(records.len() as u64);
            self.metrics.count(Metric::BATCH_SIZE, records.len() as u64);
            learned.handled = records.len() as u64;
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
            let outcomes = invoke_lanes(&self.handler, records, &s).await;
            let handled: Vec<(&str, u32)> = meta
                .iter()
                .map(|h| (h.aggregate.as_str(), h.attempt))
                .collect();
            let judged = judge(&handled, &outcomes, s.maximum_attempts());
            learned.outage = judged.outage;
            learned.store_answered = judged.store_answered;
            for ((fate, outcome), slot) in
                judged.fates.into_iter().zip(&outcomes).zip(&record_slots)
            {
                if let (Fate::Retry, RecordOutcome::Retry(reason)) = (&fate, outcome) {
                    let (id, attempt) = (&taken[*slot].entry.id, taken[*slot].attempt);
                    debug!(%id, attempt, %reason, "record failed; will retry");
                }
                fates[*slot] = fate;
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
        let plan = settlement(&taken, &fates, &exhausted, &trimmed, &held_back);
        learned.settled = plan.counts;
        self.settle(plan).await?;
        crate::metrics::flush_if_due(Duration::from_secs(1));
        let settled = taken.len() + exhausted.len() + trimmed.len();
        if left_nothing_pending(
            &fates,
            settled,
            pending.len() + fresh_count,
            held_back.len(),
            truncated,
        ) {
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
                self.reader
                    .insert(self.client.connect_dedicated(timeout).await?)
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

    /// Acknowledgements, dead letters and attempt counts, in one round trip
    /// (on a cluster two when there are dead letters: the dead-letter stream
    /// has a slot of its own). Dead letters are written before their
    /// acknowledgement: a crash in between redelivers the record (and may
    /// dead-letter it twice), never loses it.
    async fn settle(&mut self, plan: Settlement<'_>) -> Result<(), redis::RedisError> {
        let s = Arc::clone(&self.settings);
        let mut pipe = SlotPipeline::new();
        for (entry, reason, attempts) in &plan.dead_letters {
            warn!(stream = %self.stream, id = %entry.id, attempts, reason, "record dead-lettered");
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&self.dlq_key).arg("*");
            for (k, v) in dead_letter_fields(&self.stream, &s.group, entry, reason, *attempts) {
                xadd.arg(k).arg(v);
            }
            pipe.add(&self.dlq_key, xadd);
        }
        if !plan.dead_letters.is_empty() && s.min_replicas > 0 {
            // The dead letters reach `min_replicas` replicas before any record
            // is acknowledged; if they do not, nothing is acknowledged (the
            // records come back, and may be dead-lettered twice).
            let letters = std::mem::take(&mut pipe);
            let timeout_ms = u64::try_from(s.replica_timeout.as_millis()).unwrap_or(u64::MAX);
            let wait = redis::cmd("WAIT")
                .arg(s.min_replicas)
                .arg(timeout_ms)
                .clone();
            let replies = letters
                .run(&mut self.redis, Sending::InOrder, Some(&wait))
                .await?;
            let acked = replies.least_replicated();
            if acked < u64::from(s.min_replicas) {
                return Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{acked} of {} replicas acknowledged the dead letters within {timeout_ms} ms; nothing acknowledged",
                        s.min_replicas
                    ),
                )));
            }
        }
        if !plan.acks.is_empty() {
            let mut ack = redis::cmd("XACK");
            ack.arg(&self.stream).arg(&s.group).arg(&plan.acks);
            pipe.add(&self.stream, ack);
        }
        for (id, count) in &plan.restore {
            let mut restore = redis::cmd("XCLAIM");
            restore
                .arg(&self.stream)
                .arg(&s.group)
                .arg(&s.consumer)
                .arg(0)
                .arg(*id)
                .arg("RETRYCOUNT")
                .arg(*count)
                .arg("JUSTID");
            pipe.add(&self.stream, restore);
        }
        pipe.run(&mut self.redis, Sending::InOrder, None).await?;
        for id in &plan.acks {
            self.cache.remove(*id);
        }
        let c = plan.counts;
        if c.trimmed > 0 {
            info!(stream = %self.stream, count = c.trimmed, "pending records were trimmed from the stream before they were handled; acknowledged");
        }
        self.metrics.count(Metric::EVENTS_PROCESSED, c.succeeded);
        self.metrics
            .count(Metric::EVENTS_FAILED, c.retried + c.dead_lettered);
        self.metrics
            .count(Metric::EVENTS_DEAD_LETTERED, c.dead_lettered);
        self.stats.succeeded.add(c.succeeded);
        self.stats.retried.add(c.retried);
        self.stats.waiting.add(c.waiting);
        self.stats.outage_waits.add(c.outage_waits);
        self.stats.dead_lettered.add(c.dead_lettered);
        self.stats.trimmed.add(c.trimmed);
        Ok(())
    }
}

/// Creates the group (and the stream) unless it exists, at the starting
/// position of the settings.
pub(crate) async fn ensure_group(
    redis: &mut Redis,
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
    redis: &mut Redis,
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

/// The failures of earlier calls, by aggregate: a later record of one of these
/// aggregates is not handed to the handler (it would overtake the failed one).
type Failed = HashMap<String, RecordOutcome>;

/// Hands `records` to the handler in up to `parallelization_factor` lanes at
/// once ([`lanes`]: an aggregate's records all in one lane, in order), each lane
/// calling it with up to `batch_size` records at a time, one call after another.
/// One outcome per record, in `records`' order.
async fn invoke_lanes<H: BatchHandler>(
    handler: &Arc<H>,
    records: Vec<StreamRecord>,
    s: &SourceSettings,
) -> Vec<RecordOutcome> {
    let lanes = lanes(&records, s.parallelization_factor);
    let mut records: Vec<Option<StreamRecord>> = records.into_iter().map(Some).collect();
    let calls = lanes.iter().map(|lane| {
        let lane: Vec<StreamRecord> = lane.iter().filter_map(|&i| records[i].take()).collect();
        let handler = Arc::clone(handler);
        let (batch_size, bisect) = (s.batch_size.max(1), s.bisect_batch_on_function_error);
        async move {
            let mut failed = Failed::new();
            let mut outcomes = Vec::with_capacity(lane.len());
            let mut lane = lane.into_iter().peekable();
            while lane.peek().is_some() {
                let call: Vec<StreamRecord> = lane.by_ref().take(batch_size).collect();
                let (got, still) = invoke(Arc::clone(&handler), call, bisect, failed).await;
                outcomes.extend(got);
                failed = still;
            }
            outcomes
        }
    });
    let answers = futures::future::join_all(calls).await;
    let mut outcomes = vec![RecordOutcome::Done; records.len()];
    for (lane, answer) in lanes.iter().zip(answers) {
        for (&i, outcome) in lane.iter().zip(answer) {
            outcomes[i] = outcome;
        }
    }
    outcomes
}

/// Which records a cycle hands over (each lane's first `batch_size`) and which
/// wait for the next one (the rest of each lane), both in stream order. A lane
/// is cut, never an aggregate reordered: an aggregate's waiting records all
/// come after its handed-over ones.
fn lane_batches(
    records: &[StreamRecord],
    factor: usize,
    batch_size: usize,
) -> (Vec<usize>, Vec<usize>) {
    let (mut now, mut later) = (Vec::new(), Vec::new());
    for lane in lanes(records, factor) {
        let cut = lane.len().min(batch_size.max(1));
        now.extend_from_slice(&lane[..cut]);
        later.extend_from_slice(&lane[cut..]);
    }
    now.sort_unstable();
    later.sort_unstable();
    (now, later)
}

/// The records' indices in `factor` lanes, by [`crate::streams::partition_of`]
/// of their aggregate (so an aggregate is in one lane, its records in order);
/// empty lanes left out.
fn lanes(records: &[StreamRecord], factor: usize) -> Vec<Vec<usize>> {
    let factor = u16::try_from(factor.clamp(1, 10)).unwrap_or(1);
    let mut lanes: Vec<Vec<usize>> = vec![Vec::new(); usize::from(factor)];
    for (i, record) in records.iter().enumerate() {
        let lane = crate::streams::partition_of(record.event.aggregate_id.as_str(), factor);
        lanes[usize::from(lane)].push(i);
    }
    lanes.retain(|lane| !lane.is_empty());
    lanes
}

/// Calls the handler with `records`, but not with those of an aggregate that
/// failed earlier (`failed`: each gets that failure's outcome, unattempted); on
/// a handler error, with bisect on, splits the batch and calls it with each
/// half, the second after the first (so a record of the second half never
/// overtakes a failed one of its aggregate in the first). One outcome per
/// record, in order, and `failed` with this call's failures added.
fn invoke<H: BatchHandler>(
    handler: Arc<H>,
    records: Vec<StreamRecord>,
    bisect: bool,
    failed: Failed,
) -> BoxFuture<'static, (Vec<RecordOutcome>, Failed)> {
    async move {
        let mut outcomes: Vec<Option<RecordOutcome>> = Vec::with_capacity(records.len());
        let mut called = Vec::with_capacity(records.len());
        for record in records {
            match failed.get(record.event.aggregate_id.as_str()) {
                Some(earlier) => outcomes.push(Some(earlier.clone())),
                None => {
                    outcomes.push(None);
                    called.push(record);
                }
            }
        }
        let aggregates: Vec<String> = called
            .iter()
            .map(|r| r.event.aggregate_id.to_string())
            .collect();
        let (got, mut failed) = call(handler, called, bisect, failed).await;
        for (aggregate, outcome) in aggregates.into_iter().zip(&got) {
            if *outcome != RecordOutcome::Done {
                failed.entry(aggregate).or_insert_with(|| outcome.clone());
            }
        }
        let mut got = got.into_iter();
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.or_else(|| got.next()).unwrap_or(RecordOutcome::Done))
            .collect();
        (outcomes, failed)
    }
    .boxed()
}

/// One handler call with `records` (all to be attempted), bisected on an error
/// when `bisect` is on.
async fn call<H: BatchHandler>(
    handler: Arc<H>,
    records: Vec<StreamRecord>,
    bisect: bool,
    failed: Failed,
) -> (Vec<RecordOutcome>, Failed) {
    if records.is_empty() {
        return (Vec::new(), failed);
    }
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    // Kept only if a failed call may be split.
    let spare = (bisect && records.len() > 1).then(|| records.clone());
    let result = AssertUnwindSafe(handler.handle(StreamBatch { records }))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(super::HandlerError::new("the handler panicked")));
    match (result, spare) {
        (Ok(response), _) => (outcomes_of(&ids, response), failed),
        (Err(e), Some(mut left)) => {
            debug!(records = left.len(), error = %e, "handler error; bisecting the batch");
            let right = left.split_off(left.len() / 2);
            let (mut outcomes, failed) = invoke(Arc::clone(&handler), left, bisect, failed).await;
            let (more, failed) = invoke(handler, right, bisect, failed).await;
            outcomes.extend(more);
            (outcomes, failed)
        }
        (Err(e), None) => (
            vec![RecordOutcome::Retry(format!("handler error: {e}")); ids.len()],
            failed,
        ),
    }
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

// The decisions of a cycle: plain functions of what was read, without I/O.

/// The wait before a pending record may be taken: its backoff if it was
/// delivered to this consumer (a retry, or a record this consumer had when it
/// restarted under the same name), at least the visibility timeout if it was
/// delivered to another (that consumer is presumed dead only then).
fn due_after(p: &Pending, s: &SourceSettings) -> Duration {
    if p.consumer == s.consumer {
        s.backoff(p.count)
    } else {
        s.visibility_timeout.max(s.backoff(p.count))
    }
}

/// What to do with the pending list.
#[derive(Debug, Default)]
struct PendingPlan {
    /// Records to take for this batch (once claimed), oldest first.
    taken: Vec<Taken>,
    /// Their claims: entry id, least idle time (ms) for the claim to hold,
    /// and the attempt count to set.
    claims: Vec<(String, u64, u32)>,
    /// Records due again after their last attempt: dead-lettered unhandled
    /// (that attempt never finished: a crash or a timeout).
    exhausted: Vec<(RawEntry, u32)>,
    /// Pending entries no longer in the stream: acknowledged.
    trimmed: Vec<String>,
    /// Aggregates whose later records must wait: a record of theirs is not
    /// due yet or did not fit in the batch.
    blocked: HashSet<String>,
    /// When the first record not yet due will be.
    next_due: Option<Duration>,
    /// The pending list was longer than what was looked at.
    truncated: bool,
}

/// Decides, for each pending entry (oldest first) with its contents in
/// `cache`: take it (when it is due, the batch has room and no earlier record
/// of its aggregate is waiting), dead-letter it (due again after its last
/// attempt), acknowledge it (trimmed away), or leave it (and the later records
/// of its aggregate) for a later cycle.
fn plan_pending(
    pending: &[Pending],
    cache: &HashMap<String, RawEntry>,
    s: &SourceSettings,
) -> PendingPlan {
    let mut plan = PendingPlan {
        truncated: pending.len() >= PENDING_SCAN,
        ..PendingPlan::default()
    };
    for p in pending {
        let Some(entry) = cache.get(&p.id) else {
            plan.trimmed.push(p.id.clone());
            continue;
        };
        let aggregate = entry.aggregate_id().map(str::to_owned);
        if aggregate.as_ref().is_some_and(|a| plan.blocked.contains(a)) {
            continue;
        }
        let wait = due_after(p, s);
        if p.idle < wait || plan.taken.len() >= s.cycle_capacity() {
            if p.idle < wait {
                let left = wait - p.idle;
                plan.next_due = Some(plan.next_due.map_or(left, |d| d.min(left)));
            }
            plan.blocked.extend(aggregate);
            continue;
        }
        if p.count >= s.maximum_attempts() {
            plan.exhausted.push((entry.clone(), p.count));
            continue;
        }
        let min_idle = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        plan.claims.push((p.id.clone(), min_idle, p.count + 1));
        plan.taken.push(Taken {
            entry: entry.clone(),
            attempt: p.count + 1,
        });
    }
    plan
}

/// What a cycle has in hand once the pending records are claimed.
#[derive(Debug, Default)]
struct InHand {
    /// Pending records taken.
    taken: usize,
    /// Pending entries exhausted or trimmed (settled without the handler).
    other: usize,
    /// The pending list was longer than what was looked at.
    truncated: bool,
    /// The breaker is open and pending records were taken: they are the probe.
    probing: bool,
    /// When the first pending record not yet due will be.
    next_due: Option<Duration>,
}

/// Whether to read new entries, and how long the first read may wait for
/// some: not at all when the batch is full, older entries are still unseen
/// (`truncated`) or the taken records are the breaker's probe; otherwise up to
/// `block` when nothing at all is in hand (no wait otherwise), never past the
/// next pending record's due time or the deadline.
fn first_read_wait(
    hand: &InHand,
    s: &SourceSettings,
    deadline_left: Option<Duration>,
) -> Option<Duration> {
    if hand.truncated || hand.taken >= s.cycle_capacity() || hand.probing {
        return None;
    }
    let idle = hand.taken == 0 && hand.other == 0;
    let mut wait = if idle { s.block } else { Duration::ZERO };
    if let Some(due) = hand.next_due {
        wait = wait.min(due);
    }
    if let Some(left) = deadline_left {
        wait = wait.min(left);
    }
    Some(wait)
}

/// After a read: whether to read again, and for how long. Once something has
/// arrived, records are gathered until the batch is full or the batching
/// window (`window_left`) closes, never past the deadline.
fn gather_more(
    taken: usize,
    batch_size: usize,
    got: bool,
    window_left: Duration,
    deadline_left: Option<Duration>,
) -> Option<Duration> {
    if taken >= batch_size || window_left.is_zero() || (!got && taken == 0) {
        return None;
    }
    if deadline_left.is_some_and(|left| window_left > left) {
        return None;
    }
    Some(window_left)
}

/// Milliseconds since the epoch, by the wall clock (entry ids carry the
/// wall-clock time at which Redis appended them).
fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(u64::MAX)
}

/// `MaximumRecordAgeInSeconds`: whether a record appended at `appended_ms` is
/// older than `max_age` at `now_ms` (never, without a maximum or a readable
/// timestamp).
fn too_old(appended_ms: Option<u64>, now_ms: u64, max_age: Option<Duration>) -> bool {
    max_age.is_some_and(|max| {
        appended_ms.is_some_and(|ms| {
            now_ms.saturating_sub(ms) > u64::try_from(max.as_millis()).unwrap_or(u64::MAX)
        })
    })
}

/// The taken records before the handler: one fate each (too old or
/// undecodable: dead-lettered; the others [`Fate::Ack`] until the handler
/// answers), the records for the handler (this delivery's span in the
/// producer's trace, or a new trace), and their places among `taken`.
fn prepare(
    stream: &str,
    taken: &[Taken],
    now_ms: u64,
    max_age: Option<Duration>,
) -> (Vec<Fate>, Vec<StreamRecord>, Vec<usize>) {
    let mut fates: Vec<Fate> = Vec::with_capacity(taken.len());
    let mut records: Vec<StreamRecord> = Vec::new();
    let mut slots: Vec<usize> = Vec::new();
    for (i, t) in taken.iter().enumerate() {
        if too_old(t.entry.timestamp_ms(), now_ms, max_age) {
            fates.push(Fate::DeadLetter("older than the maximum record age".into()));
            continue;
        }
        match t.entry.decode() {
            Ok(event) => {
                fates.push(Fate::Ack); // settled by the handler's answer
                slots.push(i);
                let trace = event
                    .traceparent
                    .map_or_else(TraceParent::new_root, |tp| tp.child());
                records.push(StreamRecord {
                    stream: stream.to_owned(),
                    id: t.entry.id.clone(),
                    attempt: t.attempt,
                    event,
                    trace,
                });
            }
            Err(e) => fates.push(Fate::DeadLetter(format!("undecodable entry: {e}"))),
        }
    }
    (fates, records, slots)
}

/// The handler's answers, judged.
#[derive(Debug, Default, PartialEq)]
struct Judged {
    /// One per handled record, in order.
    fates: Vec<Fate>,
    /// Why the store is away, when the handler answered a record with an outage.
    outage: Option<String>,
    /// The handler answered about a record without an outage.
    store_answered: bool,
}

/// The fate of each handled record ((aggregate, attempt), in batch order)
/// under the handler's `outcomes`: done records are acknowledged; a failed one
/// is retried, or dead-lettered once it has had `maximum_attempts`; a rejected
/// one is dead-lettered at once; an outage waits without using its attempt.
/// Once a record of an aggregate has not succeeded, the later records of that
/// aggregate wait, whatever their outcome.
fn judge(handled: &[(&str, u32)], outcomes: &[RecordOutcome], maximum_attempts: u32) -> Judged {
    let mut judged = Judged::default();
    let mut failed: HashSet<&str> = HashSet::new();
    for (&(aggregate, attempt), outcome) in handled.iter().zip(outcomes) {
        if !matches!(outcome, RecordOutcome::Outage(_)) {
            judged.store_answered = true;
        }
        let fate = if failed.contains(aggregate) {
            Fate::Wait
        } else {
            match outcome {
                RecordOutcome::Done => Fate::Ack,
                RecordOutcome::Outage(reason) => {
                    failed.insert(aggregate);
                    judged.outage.get_or_insert_with(|| reason.clone());
                    Fate::Outage
                }
                RecordOutcome::Retry(reason) => {
                    failed.insert(aggregate);
                    if attempt >= maximum_attempts {
                        Fate::DeadLetter(format!("failed {attempt} times, the last time: {reason}"))
                    } else {
                        Fate::Retry
                    }
                }
                RecordOutcome::Reject(reason) => {
                    failed.insert(aggregate);
                    Fate::DeadLetter(reason.clone())
                }
            }
        };
        judged.fates.push(fate);
    }
    judged
}

/// What a cycle settled, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Settled {
    succeeded: u64,
    retried: u64,
    /// Put back unattempted: behind a failed record, or read while a record of
    /// their aggregate was pending (held back).
    waiting: u64,
    outage_waits: u64,
    dead_lettered: u64,
    trimmed: u64,
}

/// What settling a cycle writes, in the order it is written.
#[derive(Debug, Default, PartialEq)]
struct Settlement<'a> {
    /// (entry, reason, attempts made), in order: the taken records, then the
    /// exhausted ones.
    dead_letters: Vec<(&'a RawEntry, String, u32)>,
    /// Entries acknowledged: the trimmed ones, then the taken records that are
    /// done or dead-lettered, then the exhausted ones.
    acks: Vec<&'a str>,
    /// Entries put back with the attempt count they had: held-back new
    /// records (0), then the taken records that waited or met an outage (their
    /// attempt not counted).
    restore: Vec<(&'a str, u32)>,
    counts: Settled,
}

/// Decides the settlement of a cycle from each taken record's fate.
fn settlement<'a>(
    taken: &'a [Taken],
    fates: &'a [Fate],
    exhausted: &'a [(RawEntry, u32)],
    trimmed: &'a [String],
    held_back: &'a [String],
) -> Settlement<'a> {
    let mut plan = Settlement {
        acks: trimmed.iter().map(String::as_str).collect(),
        restore: held_back.iter().map(|id| (id.as_str(), 0)).collect(),
        ..Settlement::default()
    };
    let c = &mut plan.counts;
    c.trimmed = trimmed.len() as u64;
    c.waiting = held_back.len() as u64;
    for (t, fate) in taken.iter().zip(fates) {
        match fate {
            Fate::Ack => {
                c.succeeded += 1;
                plan.acks.push(&t.entry.id);
            }
            Fate::Retry => c.retried += 1,
            Fate::Wait => {
                c.waiting += 1;
                plan.restore.push((&t.entry.id, t.attempt - 1));
            }
            // The attempt did not count: the store was away, not the record wrong.
            Fate::Outage => {
                c.outage_waits += 1;
                plan.restore.push((&t.entry.id, t.attempt - 1));
            }
            Fate::DeadLetter(reason) => {
                c.dead_lettered += 1;
                plan.dead_letters
                    .push((&t.entry, reason.clone(), t.attempt));
                plan.acks.push(&t.entry.id);
            }
        }
    }
    for (entry, count) in exhausted {
        c.dead_lettered += 1;
        plan.dead_letters.push((
            entry,
            format!("{count} attempts made; the last one did not finish (a crash or a timeout)"),
            *count,
        ));
        plan.acks.push(&entry.id);
    }
    plan
}

/// Whether a cycle left nothing pending: every pending entry looked at and
/// every new record read (`looked_at`) was settled, every record taken was
/// acknowledged or dead-lettered, none was held back and the pending list was
/// not truncated.
fn left_nothing_pending(
    fates: &[Fate],
    settled: usize,
    looked_at: usize,
    held_back: usize,
    truncated: bool,
) -> bool {
    let all_final = fates
        .iter()
        .all(|f| matches!(f, Fate::Ack | Fate::DeadLetter(_)));
    all_final && held_back == 0 && !truncated && settled >= looked_at
}

/// Whether "nothing pending", seen at `since`, may still be trusted at `now`.
fn trust_clear(since: Option<Instant>, now: Instant) -> bool {
    since.is_some_and(|at| now.saturating_duration_since(at) < CLEAR_FOR)
}

/// The run loop's pause after a failure that is not an outage: 100 ms,
/// doubling up to 5 s; a cycle that works starts it over.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const LONGEST: Duration = Duration::from_secs(5);

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// This pause; the next one is twice as long, up to the longest.
    fn take(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(Self::LONGEST);
        pause
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

/// How long to pause after a step: while the breaker is open, its pause
/// (growing each time); after another failure, the backoff's; otherwise none.
/// Never longer than what is left before the deadline.
fn pause_after(
    breaker: &mut Breaker,
    backoff: &mut Backoff,
    failed: bool,
    deadline_left: Option<Duration>,
) -> Option<Duration> {
    let rest = if breaker.is_open() {
        breaker.next_pause()
    } else if failed {
        backoff.take()
    } else {
        return None;
    };
    Some(deadline_left.map_or(rest, |left| rest.min(left)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{AggregateId, AggregateType, EventEnvelope, EventType, Payload};

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    /// The defaults (backoff 1 s doubling up to 60 s, visibility timeout 30 s,
    /// 4 attempts, batches of 100), for consumer `me`.
    fn settings() -> SourceSettings {
        let mut s = SourceSettings::new("g", vec!["s".into()]);
        s.consumer = "me".into();
        s
    }

    /// An entry of `aggregate` (not a whole event: enough to plan).
    fn entry(id: &str, aggregate: &str) -> RawEntry {
        RawEntry {
            id: id.into(),
            fields: vec![(b"aggregate_id".to_vec(), aggregate.as_bytes().to_vec())],
        }
    }

    /// A whole event of `aggregate` as the stream holds it.
    fn event_entry(id: &str, aggregate: &str) -> RawEntry {
        let event = EventEnvelope::new(
            EventType::parse("TestHappened").expect("a type"),
            1,
            AggregateType::parse("Test").expect("a type"),
            AggregateId::parse(aggregate).expect("an id"),
            None,
            Payload::from_json("{}".to_owned()).expect("json"),
        );
        RawEntry {
            id: id.into(),
            fields: event
                .to_stream_fields()
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
                .collect(),
        }
    }

    fn pending(id: &str, consumer: &str, idle: Duration, count: u32) -> Pending {
        Pending {
            id: id.into(),
            consumer: consumer.into(),
            idle,
            count,
        }
    }

    fn cache(entries: &[RawEntry]) -> HashMap<String, RawEntry> {
        entries.iter().map(|e| (e.id.clone(), e.clone())).collect()
    }

    fn taken_ids(plan: &PendingPlan) -> Vec<(&str, u32)> {
        plan.taken
            .iter()
            .map(|t| (t.entry.id.as_str(), t.attempt))
            .collect()
    }

    #[test]
    fn pending_records_are_taken_when_due_and_block_their_aggregates_until_then() {
        let s = settings();
        let entries = [
            entry("1-0", "A"),
            entry("2-0", "A"),
            entry("3-0", "B"),
            entry("4-0", "C"),
            entry("5-0", "D"),
            entry("7-0", "E"),
        ];
        let list = [
            // Own retry, 500 ms into its 1 s backoff: not due; A waits.
            pending("1-0", "me", 500 * MS, 1),
            // Due by itself, but behind 1-0 of its aggregate.
            pending("2-0", "me", 5 * SEC, 1),
            // Own retry at the end of its backoff: taken as attempt 2.
            pending("3-0", "me", SEC, 1),
            // Another consumer's, 10 s idle: not presumed dead before 30 s.
            pending("4-0", "other", 10 * SEC, 1),
            // Another consumer's, past the visibility timeout: taken.
            pending("5-0", "other", 31 * SEC, 1),
            // Trimmed away: not in the cache.
            pending("6-0", "me", SEC, 1),
            // Due again after its 4th and last attempt: dead-lettered.
            pending("7-0", "me", 60 * SEC, 4),
        ];
        let plan = plan_pending(&list, &cache(&entries), &s);
        assert_eq!(taken_ids(&plan), [("3-0", 2), ("5-0", 2)]);
        assert_eq!(
            plan.claims,
            [("3-0".to_owned(), 1000, 2), ("5-0".to_owned(), 30_000, 2)],
            "a claim holds only if the entry is still that idle"
        );
        assert_eq!(plan.trimmed, ["6-0"]);
        assert_eq!(plan.exhausted.len(), 1);
        assert_eq!(plan.exhausted[0].0.id, "7-0");
        assert_eq!(plan.exhausted[0].1, 4);
        assert_eq!(
            plan.blocked,
            HashSet::from(["A".to_owned(), "C".to_owned()])
        );
        assert_eq!(
            plan.next_due,
            Some(500 * MS),
            "the soonest of 500 ms and 20 s"
        );
        assert!(!plan.truncated);
    }

    #[test]
    fn a_full_batch_leaves_the_rest_pending_and_a_long_list_is_truncated() {
        let mut s = settings();
        s.batch_size = 1;
        let entries = [entry("1-0", "A"), entry("2-0", "B"), entry("3-0", "B")];
        let list = [
            pending("1-0", "me", SEC, 1),
            pending("2-0", "me", SEC, 1),
            pending("3-0", "me", SEC, 1),
        ];
        let plan = plan_pending(&list, &cache(&entries), &s);
        assert_eq!(taken_ids(&plan), [("1-0", 2)]);
        assert_eq!(plan.blocked, HashSet::from(["B".to_owned()]));
        assert_eq!(plan.next_due, None, "due, only no room");

        let many: Vec<Pending> = (0..PENDING_SCAN)
            .map(|i| pending(&format!("{i}-0"), "me", SEC, 1))
            .collect();
        assert!(plan_pending(&many, &HashMap::new(), &s).truncated);
    }

    #[test]
    fn new_records_are_read_unless_full_truncated_or_probing_and_waited_for_only_when_idle() {
        let s = settings();
        let idle = InHand::default();
        assert_eq!(first_read_wait(&idle, &s, None), Some(s.block));
        assert_eq!(
            first_read_wait(&idle, &s, Some(300 * MS)),
            Some(300 * MS),
            "never past the deadline"
        );
        let due_soon = InHand {
            next_due: Some(150 * MS),
            ..InHand::default()
        };
        assert_eq!(first_read_wait(&due_soon, &s, None), Some(150 * MS));
        for busy in [
            InHand {
                taken: 1,
                ..InHand::default()
            },
            InHand {
                other: 1,
                ..InHand::default()
            },
        ] {
            assert_eq!(first_read_wait(&busy, &s, None), Some(Duration::ZERO));
        }
        for no in [
            InHand {
                truncated: true,
                ..InHand::default()
            },
            InHand {
                taken: s.batch_size,
                ..InHand::default()
            },
            InHand {
                taken: 1,
                probing: true,
                ..InHand::default()
            },
        ] {
            assert_eq!(first_read_wait(&no, &s, None), None, "{no:?}");
        }
    }

    #[test]
    fn records_are_gathered_until_the_batch_is_full_or_the_window_closes() {
        let window = 400 * MS;
        assert_eq!(gather_more(3, 10, true, window, None), Some(window));
        assert_eq!(gather_more(3, 10, false, window, None), Some(window));
        assert_eq!(
            gather_more(0, 10, false, window, None),
            None,
            "nothing came"
        );
        assert_eq!(gather_more(10, 10, true, window, None), None, "full");
        assert_eq!(gather_more(3, 10, true, Duration::ZERO, None), None);
        assert_eq!(
            gather_more(3, 10, true, window, Some(399 * MS)),
            None,
            "the deadline comes first"
        );
        assert_eq!(gather_more(3, 10, true, window, Some(window)), Some(window));
    }

    #[test]
    fn a_record_older_than_the_maximum_age_is_too_old() {
        let max = Some(Duration::from_secs(60));
        let now = 1_000_000_000;
        assert!(
            !too_old(Some(now - 60_000), now, max),
            "exactly the maximum"
        );
        assert!(too_old(Some(now - 60_001), now, max));
        assert!(!too_old(Some(now + 5), now, max), "from a clock ahead");
        assert!(!too_old(Some(0), now, None), "no maximum");
        assert!(!too_old(None, now, max), "no readable timestamp");
    }

    #[test]
    fn too_old_and_undecodable_records_are_dead_lettered_without_the_handler() {
        let now = 1_000_000_000;
        let taken = [
            Taken {
                entry: event_entry("1000-0", "A"),
                attempt: 1,
            },
            Taken {
                entry: entry(&format!("{now}-0"), "B"),
                attempt: 1,
            },
            Taken {
                entry: event_entry(&format!("{now}-1"), "C"),
                attempt: 3,
            },
        ];
        let (fates, records, slots) = prepare("s", &taken, now, Some(Duration::from_secs(60)));
        assert_eq!(
            fates[0],
            Fate::DeadLetter("older than the maximum record age".into())
        );
        assert!(
            matches!(&fates[1], Fate::DeadLetter(r) if r.starts_with("undecodable entry: ")),
            "{:?}",
            fates[1]
        );
        assert_eq!(fates[2], Fate::Ack);
        assert_eq!(slots, [2]);
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].id.as_str(), records[0].attempt),
            (taken[2].entry.id.as_str(), 3)
        );
        assert_eq!(records[0].stream, "s");
    }

    #[test]
    fn outcomes_become_fates_and_a_failed_record_holds_back_its_aggregate() {
        let failed = |r: &str| RecordOutcome::Retry(r.into());
        let handled = [
            ("A", 1),
            ("B", 1),
            ("B", 1),
            ("C", 4),
            ("D", 1),
            ("E", 2),
            ("E", 1),
        ];
        let outcomes = [
            RecordOutcome::Done,
            failed("boom"),
            RecordOutcome::Done,
            failed("boom"),
            RecordOutcome::Reject("never".into()),
            RecordOutcome::Outage("db away".into()),
            RecordOutcome::Done,
        ];
        let judged = judge(&handled, &outcomes, 4);
        assert_eq!(
            judged.fates,
            [
                Fate::Ack,
                Fate::Retry,
                Fate::Wait,
                Fate::DeadLetter("failed 4 times, the last time: boom".into()),
                Fate::DeadLetter("never".into()),
                Fate::Outage,
                Fate::Wait,
            ]
        );
        assert_eq!(judged.outage.as_deref(), Some("db away"));
        assert!(judged.store_answered);

        let away = judge(
            &[("A", 1), ("A", 1)],
            &[
                RecordOutcome::Outage("db away".into()),
                RecordOutcome::Outage("db away".into()),
            ],
            4,
        );
        assert_eq!(away.fates, [Fate::Outage, Fate::Wait]);
        assert!(
            !away.store_answered,
            "only outages: the store did not answer"
        );
    }

    #[test]
    fn the_settlement_dead_letters_before_acknowledging_and_gives_back_unused_attempts() {
        let taken: Vec<Taken> = ["1-0", "2-0", "3-0", "4-0", "5-0"]
            .iter()
            .map(|id| Taken {
                entry: entry(id, "A"),
                attempt: 2,
            })
            .collect();
        let fates = [
            Fate::Ack,
            Fate::Retry,
            Fate::Wait,
            Fate::Outage,
            Fate::DeadLetter("never".into()),
        ];
        let exhausted = [(entry("0-5", "Z"), 4)];
        let trimmed = ["0-1".to_owned()];
        let held_back = ["9-0".to_owned()];
        let plan = settlement(&taken, &fates, &exhausted, &trimmed, &held_back);
        assert_eq!(plan.acks, ["0-1", "1-0", "5-0", "0-5"]);
        assert_eq!(plan.restore, [("9-0", 0), ("3-0", 1), ("4-0", 1)]);
        let dead: Vec<(&str, &str, u32)> = plan
            .dead_letters
            .iter()
            .map(|(e, reason, n)| (e.id.as_str(), reason.as_str(), *n))
            .collect();
        assert_eq!(
            dead,
            [
                ("5-0", "never", 2),
                (
                    "0-5",
                    "4 attempts made; the last one did not finish (a crash or a timeout)",
                    4
                ),
            ]
        );
        assert_eq!(
            plan.counts,
            Settled {
                succeeded: 1,
                retried: 1,
                waiting: 2,
                outage_waits: 1,
                dead_lettered: 2,
                trimmed: 1,
            }
        );
    }

    #[test]
    fn nothing_is_left_pending_only_when_everything_looked_at_is_final() {
        let done = [Fate::Ack, Fate::DeadLetter("x".into())];
        assert!(left_nothing_pending(&done, 2, 2, 0, false));
        assert!(!left_nothing_pending(
            &[Fate::Ack, Fate::Retry],
            2,
            2,
            0,
            false
        ));
        assert!(!left_nothing_pending(&done, 2, 2, 1, false), "held back");
        assert!(!left_nothing_pending(&done, 2, 2, 0, true), "truncated");
        assert!(
            !left_nothing_pending(&done, 2, 3, 0, false),
            "one was claimed elsewhere"
        );
    }

    // Time: tokio's clock, paused; it moves only when the test advances it or
    // every task sleeps.

    #[tokio::test(start_paused = true)]
    async fn nothing_pending_is_trusted_for_one_second() {
        let since = Instant::now();
        assert!(trust_clear(Some(since), Instant::now()));
        tokio::time::advance(999 * MS).await;
        assert!(trust_clear(Some(since), Instant::now()));
        tokio::time::advance(MS).await;
        assert!(!trust_clear(Some(since), Instant::now()));
        assert!(!trust_clear(None, Instant::now()));
    }

    /// Runs `steps` steps that fail (`failed`), sleeping each pause; the
    /// instants (ms from the start) at which each following step runs.
    async fn pace(
        breaker: &mut Breaker,
        backoff: &mut Backoff,
        failed: bool,
        steps: usize,
        deadline: Option<Instant>,
    ) -> Vec<u128> {
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..steps {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if let Some(rest) = pause_after(breaker, backoff, failed, left) {
                tokio::time::sleep(rest).await;
            }
            at.push((Instant::now() - start).as_millis());
        }
        at
    }

    #[tokio::test(start_paused = true)]
    async fn after_failures_the_loop_pauses_longer_each_time_and_a_good_step_starts_over() {
        let mut breaker = Breaker::new(SEC, 30 * SEC);
        let mut backoff = Backoff::default();
        let at = pace(&mut breaker, &mut backoff, true, 9, None).await;
        // 100 ms, doubling, at most 5 s.
        assert_eq!(
            at,
            [100, 300, 700, 1500, 3100, 6300, 11_300, 16_300, 21_300]
        );
        // A step that works goes on at once, and the next failure starts over.
        assert_eq!(pause_after(&mut breaker, &mut backoff, false, None), None);
        backoff.reset();
        assert_eq!(
            pace(&mut breaker, &mut backoff, true, 2, None).await,
            [100, 300]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_store_is_away_the_breaker_pauses_longer_each_time_and_tells_how_long() {
        let s = settings();
        // As the worker builds it: the retry backoff, at most 30 s.
        let mut breaker = Breaker::new(
            s.retry_backoff,
            s.max_retry_backoff.min(LONGEST_OUTAGE_PAUSE),
        );
        let mut backoff = Backoff::default();
        assert!(breaker.trip());
        // The breaker's pause, whether or not the step counted as failed.
        let at = pace(&mut breaker, &mut backoff, false, 7, None).await;
        assert_eq!(at, [1_000, 3_000, 7_000, 15_000, 31_000, 61_000, 91_000]);
        assert_eq!(
            breaker.close(),
            Some(91 * SEC),
            "down for exactly that long"
        );
        assert_eq!(pause_after(&mut breaker, &mut backoff, false, None), None);
    }

    #[tokio::test(start_paused = true)]
    async fn no_pause_outlasts_the_deadline() {
        let mut breaker = Breaker::new(SEC, 30 * SEC);
        let mut backoff = Backoff::default();
        breaker.trip();
        let deadline = Instant::now() + 2500 * MS;
        let at = pace(&mut breaker, &mut backoff, true, 3, Some(deadline)).await;
        assert_eq!(
            at,
            [1_000, 2_500, 2_500],
            "1 s, then 2 s cut to the 1.5 s left"
        );
    }

    /// A record that fails every attempt, in a paused clock: the steps at which
    /// it is handled follow its backoff (1 s, 2 s, 4 s), and after its 4th
    /// attempt it is dead-lettered; another consumer's record waits for the
    /// visibility timeout.
    #[tokio::test(start_paused = true)]
    async fn a_failing_record_is_retried_after_each_backoff_then_dead_lettered() {
        let s = settings();
        let entries = cache(&[entry("1-0", "A")]);
        let start = Instant::now();
        // First delivered (attempt 1) at the start, by a read of new entries.
        let (mut delivered_at, mut count) = (start, 1);
        let mut attempts_at = vec![(0, 1)];
        let mut dead_letter = None;
        while dead_letter.is_none() && Instant::now() - start < 60 * SEC {
            tokio::time::advance(10 * MS).await;
            let idle = Instant::now() - delivered_at;
            let plan = plan_pending(&[pending("1-0", "me", idle, count)], &entries, &s);
            let Some(t) = plan.taken.first() else {
                continue;
            };
            delivered_at = Instant::now();
            count = t.attempt;
            attempts_at.push(((delivered_at - start).as_millis(), t.attempt));
            let judged = judge(
                &[("A", t.attempt)],
                &[RecordOutcome::Retry("boom".into())],
                s.maximum_attempts(),
            );
            if let Fate::DeadLetter(reason) = &judged.fates[0] {
                dead_letter = Some(reason.clone());
            }
        }
        assert_eq!(attempts_at, [(0, 1), (1_000, 2), (3_000, 3), (7_000, 4)]);
        assert_eq!(
            dead_letter.as_deref(),
            Some("failed 4 times, the last time: boom")
        );

        // Delivered to a consumer that died: taken only after 30 s of silence.
        let since = Instant::now();
        let taken_after = loop {
            tokio::time::advance(100 * MS).await;
            let idle = Instant::now() - since;
            let plan = plan_pending(&[pending("1-0", "dead", idle, 1)], &entries, &s);
            if !plan.taken.is_empty() {
                break idle;
            }
        };
        assert_eq!(taken_after, s.visibility_timeout);
    }

    /// A record of `aggregate` with entry id `id`.
    fn record(id: &str, aggregate: &str) -> StreamRecord {
        StreamRecord {
            stream: "s".into(),
            id: id.into(),
            attempt: 1,
            event: EventEnvelope::new(
                EventType::parse("TestHappened").expect("a type"),
                1,
                AggregateType::parse("Test").expect("a type"),
                AggregateId::parse(aggregate).expect("an id"),
                None,
                Payload::from_json("{}".to_owned()).expect("json"),
            ),
            trace: crate::trace::TraceParent::new_root(),
        }
    }

    #[test]
    fn an_aggregate_is_in_one_lane_in_order_and_lanes_are_at_most_the_factor() {
        let records: Vec<StreamRecord> = (0..200)
            .map(|i| record(&format!("{i}-0"), &format!("agg-{}", i % 37)))
            .collect();
        for factor in [1, 2, 4, 10, 50] {
            let lanes = lanes(&records, factor);
            assert!(lanes.len() <= factor.min(10), "{factor}: {}", lanes.len());
            let mut lane_of: HashMap<String, usize> = HashMap::new();
            for (n, lane) in lanes.iter().enumerate() {
                assert!(lane.windows(2).all(|w| w[0] < w[1]), "in stream order");
                for &i in lane {
                    let aggregate = records[i].event.aggregate_id.to_string();
                    assert_eq!(*lane_of.entry(aggregate).or_insert(n), n, "one lane each");
                }
            }
            assert_eq!(lanes.iter().map(Vec::len).sum::<usize>(), 200, "each once");
        }
        assert_eq!(lanes(&records, 1), [(0..200).collect::<Vec<_>>()]);
    }

    #[test]
    fn a_lane_hands_over_a_batch_and_the_rest_of_it_waits() {
        let records: Vec<StreamRecord> = (0..60)
            .map(|i| record(&format!("{i}-0"), &format!("agg-{}", i % 7)))
            .collect();
        let (now, later) = lane_batches(&records, 2, 10);
        assert!(now.len() <= 20 && now.len() + later.len() == 60);
        for lane in lanes(&records, 2) {
            let cut = lane.len().min(10);
            assert!(lane[..cut].iter().all(|i| now.contains(i)));
            assert!(lane[cut..].iter().all(|i| later.contains(i)));
        }
        // With one lane and no more than a batch, nothing waits.
        let (now, later) = lane_batches(&records[..10], 1, 10);
        assert_eq!((now.len(), later.len()), (10, 0));
    }

    /// Fails `poison` (with `whole`, the whole call holding it, as a handler
    /// error); records what each call held, and how many calls ran at once at
    /// most.
    #[derive(Default)]
    struct Calls {
        poison: &'static str,
        whole: bool,
        seen: std::sync::Mutex<Vec<Vec<String>>>,
        now: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    impl BatchHandler for Calls {
        async fn handle(
            &self,
            batch: StreamBatch,
        ) -> Result<BatchResponse, super::super::HandlerError> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.now.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.now.fetch_sub(1, SeqCst);
            let ids: Vec<String> = batch.records.iter().map(|r| r.id.clone()).collect();
            self.seen.lock().expect("not poisoned").push(ids.clone());
            if self.whole && ids.iter().any(|id| id == self.poison) {
                return Err(super::super::HandlerError::new("poison"));
            }
            let mut outcomes: Vec<RecordOutcome> = batch
                .records
                .iter()
                .map(|r| {
                    if r.id == self.poison {
                        RecordOutcome::Retry("poison".into())
                    } else {
                        RecordOutcome::Done
                    }
                })
                .collect();
            super::super::outcomes_in_order(&batch.records, &mut outcomes);
            Ok(BatchResponse::from_outcomes(
                batch.records.iter().zip(&outcomes),
            ))
        }
    }

    #[tokio::test]
    async fn a_bisected_batch_never_hands_over_a_record_behind_a_failed_one_of_its_aggregate() {
        // A's first record is poison: its later record (in the second half)
        // must not be handled before it; B's records go on.
        let records = vec![
            record("1-0", "A"),
            record("2-0", "B"),
            record("3-0", "B"),
            record("4-0", "A"),
        ];
        let calls = Arc::new(Calls {
            poison: "1-0",
            whole: true,
            ..Calls::default()
        });
        let (outcomes, failed) = invoke(Arc::clone(&calls), records, true, Failed::new()).await;
        // The first call had the whole batch; after it failed, A's later
        // record is handed over again only if A's poison succeeded.
        let seen = calls.seen.lock().expect("not poisoned").clone();
        assert_eq!(seen[0], ["1-0", "2-0", "3-0", "4-0"]);
        let later: Vec<&String> = seen[1..].iter().flatten().collect();
        assert!(!later.contains(&&"4-0".to_owned()), "{seen:?}");
        assert!(
            matches!(outcomes[0], RecordOutcome::Retry(_)),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[1..3], [RecordOutcome::Done, RecordOutcome::Done]);
        assert_eq!(
            outcomes[3], outcomes[0],
            "unattempted, as its aggregate failed"
        );
        assert!(failed.contains_key("A") && !failed.contains_key("B"));
        // Judged, A's later record waits with its attempt given back.
        let judged = judge(&[("A", 1), ("B", 1), ("B", 1), ("A", 1)], &outcomes, 4);
        assert_eq!(judged.fates[3], Fate::Wait);
    }

    #[tokio::test]
    async fn lanes_run_at_once_each_in_batches_and_a_failure_holds_back_only_its_aggregate() {
        let mut s = settings();
        s.batch_size = 5;
        s.parallelization_factor = 4;
        let records: Vec<StreamRecord> = (0..80)
            .map(|i| record(&format!("{i}-0"), &format!("agg-{}", i % 16)))
            .collect();
        let poison = "3-0"; // agg-3's first record
        let calls = Arc::new(Calls {
            poison,
            ..Calls::default()
        });
        let outcomes = invoke_lanes(&calls, records.clone(), &s).await;
        let most = calls.most.load(std::sync::atomic::Ordering::SeqCst);
        assert!((2..=4).contains(&most), "calls at once: {most}");
        let seen = calls.seen.lock().expect("not poisoned").clone();
        assert!(
            seen.iter().all(|call| call.len() <= 5),
            "batches of at most 5"
        );
        for (record, outcome) in records.iter().zip(&outcomes) {
            let failed = record.event.aggregate_id.as_str() == "agg-3";
            assert_eq!(*outcome != RecordOutcome::Done, failed, "{}", record.id);
        }
        // After the call that failed agg-3's first record, no call holds one of
        // agg-3's (its lane's calls run one after another).
        let agg3: HashSet<&String> = records
            .iter()
            .filter(|r| r.event.aggregate_id.as_str() == "agg-3")
            .map(|r| &r.id)
            .collect();
        let failed_call = seen
            .iter()
            .position(|call| call.iter().any(|id| id == poison))
            .expect("the poison was handed over");
        for call in &seen[failed_call + 1..] {
            assert!(call.iter().all(|id| !agg3.contains(id)), "{call:?}");
        }
    }
}
