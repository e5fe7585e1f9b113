//! The outbox relay: moves committed events from the outbox tables to Redis
//! Streams, in order per aggregate, never losing one.
//!
//! One step, [`Relay::relay_once`], does a whole batch in one PostgreSQL
//! transaction: take some relay slots (transaction-scoped advisory locks), read
//! the oldest pending rows of those slots, `XADD` them in one pipelined round
//! trip while deleting them in the same transaction, and commit only once Redis
//! has accepted every entry (the deletion is visible only then). A crash
//! anywhere before the commit leaves the rows pending, and the next run publishes
//! them again with the same `event_id` (at least once; consumers deduplicate).
//! [`Relay::drain_until`] repeats the step until the outboxes are empty or time is
//! up (the Lambda invocation); [`Relay::run`] keeps draining, woken by
//! `LISTEN/NOTIFY` (the emulator).
//!
//! Ordering: every row belongs to one of [`SLOTS`] slots by its aggregate id
//! (a generated column). A slot is published only under its lock, so the rows of
//! one aggregate are published by one relay at a time, in id order. `SKIP LOCKED`
//! on rows would not do: two relays could take two consecutive events of one
//! aggregate and race each other to Redis.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::redis_link::{Redis, RedisClient, Sending, SlotPipeline};
use serde::Serialize;
use sqlx::PgPool;
use tracing::{debug, info, warn};

use crate::config::{ConfigError, Env};
use crate::envelope::{EventEnvelope, OutboxColumns};
use crate::error::{Failure, Retry, StoreError};
use crate::layout::{Change, Layout};
use crate::metrics::{Metric, Recorder};
use crate::outbox::Outbox;
use crate::source::breaker::{millis, Breaker};
use crate::streams::{stream_key_pattern, StreamId};
use crate::trace::TraceParent;

/// Relay slots per outbox (see the migration `outbox_relay`).
pub const SLOTS: i16 = 16;

/// Advisory-lock namespace of relay slots (first key of the two-key form).
const LOCK_NAMESPACE: i32 = 0x1de0_0002;

/// Advisory-lock namespace of stream layouts: every batch holds its
/// namespace's lock shared, a change of layout exclusively ([`crate::layout`]).
const LAYOUT_LOCK_NAMESPACE: i32 = 0x1de0_0003;

/// How the relay behaves; see [`RelayOptions::from_env`] for the variables.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Rows per batch, i.e. per transaction and per pipelined `XADD` round trip.
    pub batch_size: u32,
    /// Slots one batch may take; fewer than [`SLOTS`] lets several relays share work.
    pub slots_per_batch: u32,
    /// Batch loops one relay runs at once per outbox (`RELAY_BATCHES_IN_FLIGHT`, 2).
    pub batches_in_flight: u32,
    /// While [`Relay::drain_until`] drains a busy outbox, how often it looks
    /// again at one it found drained (`RELAY_IDLE_POLL_MS`, 50).
    pub idle_poll: Duration,
    /// Streams per aggregate type (`hash(aggregate_id) mod N`).
    pub stream_partitions: u16,
    /// The first part of every stream key (`events:{Order:0}`).
    pub stream_namespace: String,
    /// The largest stream entry published; a larger row is set aside as failed.
    pub max_entry_bytes: usize,
    /// Entries older than this are trimmed from the streams (`XTRIM MINID`),
    /// but never one a consumer group has not yet processed.
    pub stream_retention: Duration,
    /// Dead letters older than this are trimmed from the dead-letter streams
    /// (`DLQ_RETENTION_HOURS`, 336): they can no longer be redriven.
    pub dlq_retention: Duration,
    /// Which outboxes to drain (`RELAY_OUTBOXES`, required: `orders.outbox,inventory`,
    /// a schema alone meaning its `outbox` table).
    pub outboxes: Vec<Outbox>,
    /// Replicas that must have a batch before its rows are deleted
    /// (`REDIS_MIN_REPLICAS`, 0: a lone Redis). See [`Relay::relay_once`].
    pub min_replicas: u32,
    /// How long `WAIT` waits for them (`REDIS_REPLICA_TIMEOUT_MS`, 1000).
    pub replica_timeout: Duration,
    /// Test-only fault injection.
    #[doc(hidden)]
    pub fault: Fault,
}

/// A failure a test can inject between two steps of a batch.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Stop after Redis accepted the batch and before the commit, as a crash would.
    CrashAfterPublish,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            slots_per_batch: 8,
            batches_in_flight: 2,
            idle_poll: Duration::from_millis(50),
            stream_partitions: 1,
            stream_namespace: crate::streams::DEFAULT_NAMESPACE.to_owned(),
            max_entry_bytes: 1024 * 1024,
            stream_retention: Duration::from_secs(7 * 24 * 60 * 60),
            dlq_retention: Duration::from_secs(
                crate::retention::DEFAULT_DLQ_RETENTION_HOURS * 3600,
            ),
            outboxes: Vec::new(),
            min_replicas: 0,
            replica_timeout: Duration::from_secs(1),
            fault: Fault::None,
        }
    }
}

impl RelayOptions {
    /// `RELAY_BATCH_SIZE` (500, 1..=10000), `STREAM_PARTITIONS` (1, 1..=1024),
    /// `RELAY_MAX_ENTRY_BYTES` (1 MiB), `STREAM_RETENTION_HOURS` (168),
    /// `DLQ_RETENTION_HOURS` (336), `STREAM_NAMESPACE` (`events`).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let batch = env.in_range("RELAY_BATCH_SIZE", d.batch_size, 1, 10_000)?;
        let max_entry = env.in_range(
            "RELAY_MAX_ENTRY_BYTES",
            d.max_entry_bytes,
            1024,
            512 * 1024 * 1024,
        )?;
        let in_flight = env.in_range("RELAY_BATCHES_IN_FLIGHT", d.batches_in_flight, 1, 16)?;
        let idle_poll_ms: u64 = env.in_range("RELAY_IDLE_POLL_MS", 50, 1, 60_000)?;
        let hours: u64 = env.in_range("STREAM_RETENTION_HOURS", 168, 1, 24 * 365 * 10)?;
        let min_replicas = env.in_range("REDIS_MIN_REPLICAS", 0, 0, 5)?;
        let replica_timeout_ms = env.in_range("REDIS_REPLICA_TIMEOUT_MS", 1000, 1, 60_000)?;
        let outboxes = outboxes(env.require(
            "RELAY_OUTBOXES",
            "the outboxes to drain, comma-separated: orders.outbox,inventory.outbox",
        )?)?;
        Ok(Self {
            outboxes,
            batch_size: batch,
            batches_in_flight: in_flight,
            idle_poll: Duration::from_millis(idle_poll_ms),
            stream_partitions: crate::streams::partitions(env)?,
            max_entry_bytes: max_entry,
            stream_retention: Duration::from_secs(hours * 3600),
            dlq_retention: crate::retention::dlq_retention(env)?,
            min_replicas,
            replica_timeout: Duration::from_millis(replica_timeout_ms),
            stream_namespace: crate::streams::namespace(env)?,
            ..d
        })
    }
}

/// `RELAY_OUTBOXES`: one or more outboxes, comma-separated, each once.
fn outboxes(list: &str) -> Result<Vec<Outbox>, ConfigError> {
    let malformed = |reason: String| ConfigError::Malformed {
        var: "RELAY_OUTBOXES",
        reason,
    };
    let mut outboxes: Vec<Outbox> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let outbox = Outbox::parse(name).map_err(|e| malformed(e.to_string()))?;
        if outboxes.contains(&outbox) {
            return Err(malformed(format!("{outbox} is named twice")));
        }
        outboxes.push(outbox);
    }
    if outboxes.is_empty() {
        return Err(malformed("names no outbox".into()));
    }
    Ok(outboxes)
}

/// Why a batch or a drain failed. Rows stay pending either way.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Redis {
        context: &'static str,
        source: redis::RedisError,
    },
    /// Fewer replicas than `REDIS_MIN_REPLICAS` acknowledged a batch in time:
    /// a failover now could lose it, so its rows stay and are published again.
    #[error("{acked} of {wanted} Redis replicas acknowledged the batch within {timeout_ms} ms")]
    Replication {
        acked: u64,
        wanted: u32,
        timeout_ms: u64,
    },
    #[error("fault injected by a test")]
    Injected,
}

/// A database failure of the relay, with what it was doing.
fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> RelayError {
    move |e| RelayError::Store(StoreError::database(context, e))
}

impl RelayError {
    fn redis(context: &'static str, source: redis::RedisError) -> Self {
        Self::Redis { context, source }
    }

    pub fn retry(&self) -> Retry {
        match self {
            Self::Store(e) => e.retry(),
            // Every Redis failure here is the server's or the network's, not a
            // row's: rows Redis could not take are set aside before the XADD.
            Self::Redis { .. } | Self::Replication { .. } | Self::Injected => Retry::Retryable,
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Rows were published (and rows that can never be published set aside).
    /// `drained`: the batch's slots when it took fewer rows than a batch holds,
    /// i.e. they had no more pending rows when it read them; else none.
    Done {
        published: u64,
        failed: u64,
        drained: Vec<i16>,
    },
    /// The slots this batch took hold no pending row.
    Empty { slots: Vec<i16> },
    /// Other relays hold every slot.
    Busy,
}

/// An outbox's pending work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    pub pending: u64,
    pub oldest_pending_age_ms: Option<u64>,
    /// Rows set aside as failed, waiting for an operator.
    pub failed: u64,
}

/// Adds what `batch` found to `seen` (the slots found without pending rows)
/// and says whether the drain of its outbox is done: every slot seen without
/// pending rows once, counting a batch that took fewer rows than it could.
/// Rows committed since are for the next drain: the one the outbox's
/// notifications wake ([`Relay::run`]), or the next look ([`Relay::drain_until`]).
/// Under a steady flow of small commits this saves the empty batches a rule of
/// "every slot empty since the last batch that published" makes after each one.
fn drained(seen: &mut BTreeSet<i16>, batch: Batch) -> bool {
    match batch {
        Batch::Done { drained, .. } => {
            seen.extend(drained);
            seen.len() == SLOTS as usize
        }
        Batch::Empty { slots } => {
            let before = seen.len();
            seen.extend(slots);
            seen.len() == before || seen.len() == SLOTS as usize
        }
        // Others hold every slot: they are draining it.
        Batch::Busy => true,
    }
}

#[derive(Debug, Default)]
struct Counts {
    published: u64,
    failed: u64,
    batches: u64,
    hit_deadline: bool,
}

impl Counts {
    /// What several drains did together.
    fn sum(all: Vec<Counts>) -> Self {
        all.into_iter().fold(Self::default(), |mut total, c| {
            total.absorb(&c);
            total
        })
    }

    /// Adds what another drain did.
    fn absorb(&mut self, other: &Counts) {
        self.published += other.published;
        self.failed += other.failed;
        self.batches += other.batches;
        self.hit_deadline |= other.hit_deadline;
    }

    /// Whether the drain that did this published or set aside rows.
    fn worked(&self) -> bool {
        self.published + self.failed > 0
    }

    /// Counts what `batch` did.
    fn add(&mut self, batch: &Batch) {
        if let Batch::Done {
            published, failed, ..
        } = batch
        {
            self.published += published;
            self.failed += failed;
            self.batches += 1;
        }
    }
}

/// What one outbox's loop in [`Relay::drain_until`] does after a drain of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Drain it again at once: the last drain published.
    Drain,
    /// Look again after [`RelayOptions::idle_poll`]: it was drained, but
    /// another outbox is still being drained.
    Pause,
    /// Done: time is up, or every outbox was found drained.
    Stop,
}

/// The decision of [`Next`]: `worked`, the drain published or set aside rows;
/// `others_busy`, another outbox's last drain did.
fn next(hit_deadline: bool, worked: bool, others_busy: bool) -> Next {
    match (hit_deadline, worked, others_busy) {
        (true, _, _) => Next::Stop,
        (false, true, _) => Next::Drain,
        (false, false, true) => Next::Pause,
        (false, false, false) => Next::Stop,
    }
}

/// A relay's shared state: a drain's set of slots seen drained, a change's
/// waiting (what a panicked holder left is as good as any: each only ever
/// grows or clears).
fn lock<T>(shared: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a drain did: the invocation's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainSummary {
    pub published: u64,
    pub failed: u64,
    pub batches: u64,
    pub backlog: HashMap<String, Backlog>,
    pub duration_ms: u64,
    /// `empty` (nothing left to do) or `deadline` (time ran out first).
    pub stopped_by: &'static str,
}

/// A row set aside: it can never be published as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedRow {
    pub id: i64,
    pub event_id: uuid::Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// What the log line of a published event says of it.
struct Published {
    event_id: uuid::Uuid,
    event_type: String,
    aggregate_id: String,
    traceparent: Option<TraceParent>,
}

/// The `service` of the relay's metrics.
pub const SERVICE: &str = "outbox-relay";

/// A stream key and the entry's fields.
type StreamEntry = (String, Vec<(&'static str, String)>);

#[derive(sqlx::FromRow)]
struct PendingRow {
    id: i64,
    event_id: uuid::Uuid,
    event_type: String,
    schema_version: i32,
    aggregate_type: String,
    aggregate_id: String,
    occurred_at: time::OffsetDateTime,
    traceparent: Option<String>,
    payload: String,
    /// The namespace's layout ([`crate::layout`]), read with the rows, after
    /// the locks; `NULL` before the first relay of this version ran.
    layout_generation: Option<i32>,
    layout_partitions: Option<i32>,
}

/// The relay's SQL on one outbox. A table name cannot be a bind parameter; an
/// [`Outbox`] holds only a checked identifier, so the text is safe.
struct OutboxSql {
    pending: String,
    delete: String,
    fail: String,
    backlog: String,
    failed: String,
    redrive: String,
    purge_failed: String,
    purge_all_failed: String,
}

impl OutboxSql {
    fn of(outbox: &Outbox) -> Self {
        Self {
            pending: format!(
                "SELECT o.id, o.event_id, o.event_type, o.schema_version, o.aggregate_type,
                        o.aggregate_id, o.occurred_at, o.traceparent, o.payload::text AS payload,
                        l.generation AS layout_generation, l.partitions AS layout_partitions
                 FROM {outbox} o LEFT JOIN toolkit.stream_layout l ON l.namespace = $3
                 WHERE o.failed_at IS NULL AND o.relay_slot = ANY($1)
                 ORDER BY o.id
                 LIMIT $2"
            ),
            delete: format!("DELETE FROM {outbox} WHERE id = ANY($1)"),
            fail: format!(
                "UPDATE {outbox} AS o
                 SET attempts = o.attempts + 1, last_error = f.error, failed_at = now()
                 FROM UNNEST($1::bigint[], $2::text[]) AS f(id, error)
                 WHERE o.id = f.id"
            ),
            backlog: format!(
                "SELECT count(*) FILTER (WHERE failed_at IS NULL),
                        (extract(epoch FROM now() - min(recorded_at) FILTER (WHERE failed_at IS NULL)) * 1000)::bigint,
                        count(*) FILTER (WHERE failed_at IS NOT NULL)
                 FROM {outbox}"
            ),
            failed: format!(
                "SELECT id, event_id, aggregate_type, aggregate_id, attempts, last_error
                 FROM {outbox} WHERE failed_at IS NOT NULL ORDER BY id LIMIT $1"
            ),
            redrive: format!(
                "UPDATE {outbox} SET failed_at = NULL, attempts = 0, last_error = NULL
                 WHERE failed_at IS NOT NULL AND id = ANY($1)"
            ),
            // Only rows set aside: a pending row is deleted only by its publication.
            purge_failed: format!(
                "DELETE FROM {outbox} WHERE failed_at IS NOT NULL AND id = ANY($1)"
            ),
            purge_all_failed: format!("DELETE FROM {outbox} WHERE failed_at IS NOT NULL"),
        }
    }
}

/// `toolkit.stream_layout` as [`Relay::read_layout`] reads it: generation,
/// partitions, previous (JSON), whether the relay started after its last
/// change, origin.
type LayoutRow = (i32, i32, Option<String>, bool, String);

/// The second key of a relay slot's advisory lock is this plus the slot: the
/// outbox's name hashed (FNV-1a, stable across builds and machines, so every
/// relay of any version agrees) in the high bits, the slot in the low eight.
fn slot_lock_base(outbox: &Outbox) -> i32 {
    fnv32(&outbox.to_string()) & 0x7fff_ff00
}

/// The second key of `namespace`'s layout lock.
fn layout_lock(namespace: &str) -> i32 {
    fnv32(namespace) & 0x7fff_ffff
}

/// FNV-1a, 32 bit, as an advisory lock key.
fn fnv32(text: &str) -> i32 {
    let hash = text.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    // Reinterpreting the bits is the point: any i32 is a valid key.
    #[allow(clippy::cast_possible_wrap)]
    let key = hash as i32;
    key
}

/// Moves events from the outboxes to Redis Streams.
pub struct Relay {
    pool: PgPool,
    redis: Redis,
    options: RelayOptions,
    /// Where the next batch starts looking for free slots, so successive batches
    /// cycle through all of them.
    cursor: AtomicUsize,
    metrics: Recorder,
    /// The SQL of each configured outbox, written once at start (batches run
    /// thousands of times a second).
    sql: HashMap<Outbox, std::sync::Arc<OutboxSql>>,
    /// When this relay was built: only a relay built after the layout last
    /// changed may change it ([`crate::layout::Layout::change_for`]).
    started: std::time::SystemTime,
    /// The layout generation this relay last copied to Redis (-1: none yet).
    copied_generation: AtomicI64,
    /// The latest layout generation its batches published with.
    seen_generation: AtomicI64,
    /// A change of this relay's waiting for consumer groups: since when, and
    /// when it last said so at warn level.
    waiting: std::sync::Mutex<Option<Waiting>>,
}

/// A layout change that waits for consumer groups to finish a generation.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    since: Instant,
    warned: Option<Instant>,
}

/// How long a layout change waits quietly (at debug level) before the relay
/// warns, and then how often it warns again.
const WAITING_WARNING: Duration = Duration::from_secs(60);

impl Waiting {
    /// Whether to warn at `now`: after [`WAITING_WARNING`] of waiting, then
    /// once every [`WAITING_WARNING`].
    fn warn_at(&self, now: Instant) -> bool {
        now.duration_since(self.since) >= WAITING_WARNING
            && self
                .warned
                .is_none_or(|warned| now.duration_since(warned) >= WAITING_WARNING)
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(pool: PgPool, redis: Redis, options: RelayOptions) -> Self {
        let sql = options
            .outboxes
            .iter()
            .map(|o| (o.clone(), std::sync::Arc::new(OutboxSql::of(o))))
            .collect();
        Self {
            pool,
            redis,
            options,
            cursor: AtomicUsize::new(rand::random_range(0..SLOTS as usize)),
            metrics: Recorder::new(SERVICE),
            sql,
            started: std::time::SystemTime::now(),
            copied_generation: AtomicI64::new(-1),
            seen_generation: AtomicI64::new(0),
            waiting: std::sync::Mutex::new(None),
        }
    }

    /// `outbox`'s SQL: written at start for a configured outbox, else now (an
    /// operator's command on another one).
    fn sql(&self, outbox: &Outbox) -> std::sync::Arc<OutboxSql> {
        self.sql
            .get(outbox)
            .cloned()
            .unwrap_or_else(|| std::sync::Arc::new(OutboxSql::of(outbox)))
    }

    pub fn options(&self) -> &RelayOptions {
        &self.options
    }

    /// The layout a batch publishes with: its row's, read with its rows.
    fn layout_of(&self, row: &PendingRow) -> Layout {
        match (row.layout_generation, row.layout_partitions) {
            (Some(generation), Some(partitions)) => {
                let generation = u32::try_from(generation).unwrap_or(0);
                self.seen_generation
                    .fetch_max(i64::from(generation), Ordering::Relaxed);
                Layout {
                    generation,
                    partitions: u16::try_from(partitions).unwrap_or(1),
                    previous: None,
                    origin: None,
                }
            }
            _ => Layout::first(self.options.stream_partitions),
        }
    }

    /// Records the namespace's layout if it has none, changes it when this
    /// relay's `STREAM_PARTITIONS` differs and this relay is the newer
    /// ([`crate::layout`]), and copies it to Redis for the consumers. Runs
    /// when a drain starts, every few seconds in [`Relay::run`], and after a
    /// batch that saw a generation not yet copied. Returns the layout.
    pub async fn keep_layout(&self) -> Result<Layout, RelayError> {
        let namespace = &self.options.stream_namespace;
        sqlx::query(
            "INSERT INTO toolkit.stream_layout (namespace, generation, partitions)
             VALUES ($1, 0, $2) ON CONFLICT (namespace) DO NOTHING",
        )
        .bind(namespace)
        .bind(i32::from(self.options.stream_partitions))
        .execute(&self.pool)
        .await
        .map_err(db("recording the stream layout"))?;
        let (mut layout, newer) = self.read_layout(&self.pool, false).await?;
        if let Change::Repartition { to } = layout.change_for(self.options.stream_partitions, newer)
        {
            match self.repartition(to).await? {
                Ok(changed) => {
                    layout = changed;
                    *lock(&self.waiting) = None;
                }
                Err(waiting) => self.still_waiting(to, &waiting),
            }
        } else {
            *lock(&self.waiting) = None;
        }
        let mut redis = self.redis.clone();
        crate::layout::publish(&mut redis, namespace, &layout)
            .await
            .map_err(|e| RelayError::redis("copying the stream layout to Redis", e))?;
        self.copied_generation
            .fetch_max(i64::from(layout.generation), Ordering::Relaxed);
        Ok(layout)
    }

    /// Says that a change to `to` partitions waits for `group` (what
    /// [`Relay::repartition`] gave back): at debug level, and at warn level
    /// once it has waited a minute, then once a minute, since a group nobody
    /// runs any more blocks every further change.
    fn still_waiting(&self, to: u16, group: &str) {
        let namespace = &self.options.stream_namespace;
        let now = Instant::now();
        let mut waiting = lock(&self.waiting);
        let state = waiting.get_or_insert(Waiting {
            since: now,
            warned: None,
        });
        if state.warn_at(now) {
            state.warned = Some(now);
            warn!(
                namespace = %namespace,
                partitions = to,
                waited_s = now.duration_since(state.since).as_secs(),
                waiting_for = %group,
                "repartitioning waits until every consumer group has finished the previous \
                 generation; a group nobody runs any more blocks it: remove it from each of \
                 its streams (XGROUP DESTROY <stream> <group>)"
            );
        } else {
            debug!(namespace = %namespace, partitions = to, waiting_for = %group, "repartitioning waits until every consumer group has finished the previous generation");
        }
    }

    /// The namespace's layout, and whether this relay started after it last
    /// changed; `lock`: `FOR UPDATE`.
    async fn read_layout<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        lock: bool,
    ) -> Result<(Layout, bool), RelayError> {
        let started = self
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let sql = format!(
            "SELECT generation, partitions, previous::text, changed_at < to_timestamp($2),
                    origin::text
             FROM toolkit.stream_layout WHERE namespace = $1{}",
            if lock { " FOR UPDATE" } else { "" }
        );
        let (generation, partitions, previous, newer, origin): LayoutRow = sqlx::query_as(&sql)
            .bind(&self.options.stream_namespace)
            .bind(started)
            .fetch_one(executor)
            .await
            .map_err(db("reading the stream layout"))?;
        let layout = Layout {
            generation: u32::try_from(generation).unwrap_or(0),
            partitions: u16::try_from(partitions).unwrap_or(1),
            previous: previous.and_then(|p| serde_json::from_str(&p).ok()),
            origin: Some(origin),
        };
        Ok((layout, newer))
    }

    /// Moves the namespace to the next generation with `to` partitions, or
    /// says why it must wait (a group has not finished the previous one).
    async fn repartition(&self, to: u16) -> Result<Result<Layout, String>, RelayError> {
        let namespace = &self.options.stream_namespace;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting a layout change"))?;
        // Waits for the batches under way; those that come meanwhile find the
        // lock taken and try again later.
        sqlx::query("SET LOCAL lock_timeout = '10s'")
            .execute(&mut *tx)
            .await
            .map_err(db("starting a layout change"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(LAYOUT_LOCK_NAMESPACE)
            .bind(layout_lock(namespace))
            .execute(&mut *tx)
            .await
            .map_err(db("taking the stream layout's lock"))?;
        let (layout, newer) = self.read_layout(&mut *tx, true).await?;
        if layout.change_for(to, newer) == Change::Keep {
            return Ok(Ok(layout));
        }
        let mut redis = self.redis.clone();
        let redis_error = |context| move |e| RelayError::redis(context, e);
        if let Some(previous) = &layout.previous {
            for (stream, end) in &previous.ends {
                let unfinished = crate::layout::unfinished_groups(&mut redis, stream, end, None)
                    .await
                    .map_err(redis_error("reading the previous generation's groups"))?;
                if let Some(first) = unfinished.into_iter().next() {
                    return Ok(Err(first));
                }
            }
        }
        // No batch runs: the last entry of each stream is its generation's end.
        let mut ends = std::collections::BTreeMap::new();
        let streams = redis
            .scan(&stream_key_pattern(namespace), Some("stream"))
            .await
            .map_err(redis_error("listing the streams"))?;
        for stream in streams {
            let current = crate::layout::parse_stream_key(namespace, &stream)
                .is_some_and(|name| name.generation == layout.generation);
            if !current {
                continue;
            }
            if let Some(end) = crate::layout::last_entry(&mut redis, &stream)
                .await
                .map_err(redis_error("reading a stream's last entry"))?
            {
                ends.insert(stream, end);
            }
        }
        let next = layout.next(to, ends);
        let previous = serde_json::to_string(&next.previous).unwrap_or_default();
        sqlx::query(
            "UPDATE toolkit.stream_layout
             SET generation = $2, partitions = $3, previous = $4::json, changed_at = clock_timestamp()
             WHERE namespace = $1",
        )
        .bind(namespace)
        .bind(i32::try_from(next.generation).unwrap_or(i32::MAX))
        .bind(i32::from(next.partitions))
        .bind(previous)
        .execute(&mut *tx)
        .await
        .map_err(db("changing the stream layout"))?;
        tx.commit()
            .await
            .map_err(db("changing the stream layout"))?;
        info!(
            namespace = %namespace,
            generation = next.generation,
            from = layout.partitions,
            to = next.partitions,
            "stream partitions changed; consumers finish the previous generation first"
        );
        Ok(Ok(next))
    }

    /// One batch from `outbox`: claim, publish, delete, commit.
    pub async fn relay_once(&self, outbox: &Outbox) -> Result<Batch, RelayError> {
        self.batch(outbox, self.options.slots_per_batch).await
    }

    /// [`Relay::relay_once`] taking up to `slots_wanted` free slots.
    async fn batch(&self, outbox: &Outbox, slots_wanted: u32) -> Result<Batch, RelayError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("starting a relay transaction"))?;
        // The transaction ends here on every path, failures included: dropped,
        // sqlx would roll it back only when its connection is next used, and
        // until then its slot locks would turn other relays away.
        let (batch, logged) = match self.batch_in(&mut tx, outbox, slots_wanted).await {
            Ok(claimed) => claimed,
            Err(error) => {
                if let Err(e) = tx.rollback().await {
                    warn!(%outbox, error = %e, "rolling back a failed relay batch");
                }
                return Err(error);
            }
        };
        if !matches!(batch, Batch::Done { .. }) {
            tx.rollback()
                .await
                .map_err(db("ending a relay transaction"))?;
            return Ok(batch);
        }
        tx.commit().await.map_err(db("committing a relay batch"))?;
        if self.seen_generation.load(Ordering::Relaxed)
            > self.copied_generation.load(Ordering::Relaxed)
        {
            // Another relay changed the layout: consumers learn it from Redis.
            if let Err(error) = self.keep_layout().await {
                warn!(%error, "copying the stream layout to Redis failed; retrying with the next batch");
            }
        }
        if let Batch::Done {
            published, failed, ..
        } = &batch
        {
            self.metrics.count(Metric::EVENTS_PUBLISHED, *published);
            debug!(%outbox, published, failed, "batch relayed");
        }
        for (line, stream) in &logged {
            info!(
                event_id = %line.event_id,
                event_type = %line.event_type,
                aggregate_id = %line.aggregate_id,
                stream = %stream,
                trace_id = line.traceparent.map(|tp| tp.trace_id()),
                parent_span_id = line.traceparent.map(|tp| tp.span_id()),
                "event published"
            );
        }
        Ok(batch)
    }

    /// A batch's work inside its transaction, which the caller ends: claim
    /// slots, read their rows, publish them and delete them. Also returns what
    /// to log once the transaction commits.
    async fn batch_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        outbox: &Outbox,
        slots_wanted: u32,
    ) -> Result<(Batch, Vec<(Published, String)>), RelayError> {
        let sql = self.sql(outbox);

        let start = self.cursor.load(Ordering::Relaxed);
        let order: Vec<i16> = (0..SLOTS as usize)
            .map(|i| i16::try_from((start + i) % SLOTS as usize).unwrap_or(0))
            .collect();
        // With the namespace's layout lock, shared: a change of layout waits
        // for this batch, and turns away those that come while it waits.
        let slots: Vec<i16> = sqlx::query_scalar(
            "SELECT s FROM unnest($1::smallint[]) WITH ORDINALITY AS t(s, n)
             WHERE pg_try_advisory_xact_lock_shared($5, $6)
               AND pg_try_advisory_xact_lock($2, $3 + s)
             ORDER BY n
             LIMIT $4",
        )
        .bind(&order)
        .bind(LOCK_NAMESPACE)
        .bind(slot_lock_base(outbox))
        .bind(i64::from(slots_wanted))
        .bind(LAYOUT_LOCK_NAMESPACE)
        .bind(layout_lock(&self.options.stream_namespace))
        .fetch_all(&mut **tx)
        .await
        .map_err(db("taking relay slots"))?;
        let Some(last) = slots.last() else {
            return Ok((Batch::Busy, Vec::new()));
        };
        self.cursor
            .store((*last as usize + 1) % SLOTS as usize, Ordering::Relaxed);

        // A statement of its own, after the locks: its snapshot then has every
        // row the slots' previous holders deleted (in one statement with the
        // locks it would not, and a row could be published twice, out of order;
        // `FOR UPDATE` would mend that for a fifth of the bulk throughput).
        let rows: Vec<PendingRow> = sqlx::query_as(&sql.pending)
            .bind(&slots)
            .bind(i64::from(self.options.batch_size))
            .bind(&self.options.stream_namespace)
            .fetch_all(&mut **tx)
            .await
            .map_err(db("reading pending outbox rows"))?;
        if rows.is_empty() {
            return Ok((Batch::Empty { slots }, Vec::new()));
        }
        let layout = self.layout_of(&rows[0]);
        let drained = if rows.len() < self.options.batch_size as usize {
            slots
        } else {
            Vec::new()
        };

        let mut pipe = SlotPipeline::new();
        let mut published = Vec::with_capacity(rows.len());
        let mut logged = Vec::with_capacity(rows.len());
        let (mut failed_ids, mut failed_errors) = (Vec::new(), Vec::new());
        for row in rows {
            let id = row.id;
            let line = Published {
                event_id: row.event_id,
                event_type: row.event_type.clone(),
                aggregate_id: row.aggregate_id.clone(),
                traceparent: row.traceparent.as_deref().and_then(|tp| tp.parse().ok()),
            };
            match self.entry(row, &layout) {
                Ok((key, fields)) => {
                    let mut xadd = redis::cmd("XADD");
                    xadd.arg(&key).arg("*").arg(&fields);
                    pipe.add(&key, xadd);
                    published.push(id);
                    logged.push((line, key));
                }
                Err(error) => {
                    warn!(%outbox, row_id = id, %error, "outbox row set aside: it cannot be published");
                    failed_ids.push(id);
                    failed_errors.push(error);
                }
            }
        }
        // Redis takes the batch while PostgreSQL deletes it inside the still open
        // transaction: the deletion counts only if the commit below happens, and
        // the commit happens only once Redis has accepted every entry (and, with
        // `min_replicas`, once that many replicas have it: `WAIT` in the same
        // pipeline, so it covers exactly what came before it on the connection;
        // on a cluster, one pipeline per slot, each with its own `WAIT`).
        if !published.is_empty() {
            let mut redis = self.redis.clone();
            let wanted = self.options.min_replicas;
            let timeout_ms =
                u64::try_from(self.options.replica_timeout.as_millis()).unwrap_or(u64::MAX);
            let wait = (wanted > 0).then(|| redis::cmd("WAIT").arg(wanted).arg(timeout_ms).clone());
            let publish = pipe.run(&mut redis, Sending::Concurrently, wait.as_ref());
            let delete = sqlx::query(&sql.delete).bind(&published).execute(&mut **tx);
            let (published_result, deleted) = tokio::join!(publish, delete);
            let replies = published_result
                .map_err(|e| RelayError::redis("publishing a batch with XADD", e))?;
            if wanted > 0 {
                // The least replicated pipeline decides.
                let acked = replies.least_replicated();
                if acked < u64::from(wanted) {
                    self.metrics.count(Metric::REPLICATION_TIMEOUTS, 1);
                    return Err(RelayError::Replication {
                        acked,
                        wanted,
                        timeout_ms,
                    });
                }
            }
            if self.options.fault == Fault::CrashAfterPublish {
                return Err(RelayError::Injected);
            }
            deleted.map_err(db("deleting published outbox rows"))?;
        }
        if !failed_ids.is_empty() {
            sqlx::query(&sql.fail)
                .bind(&failed_ids)
                .bind(&failed_errors)
                .execute(&mut **tx)
                .await
                .map_err(db("setting failed outbox rows aside"))?;
        }
        Ok((
            Batch::Done {
                published: published.len() as u64,
                failed: failed_ids.len() as u64,
                drained,
            },
            logged,
        ))
    }

    /// The stream key and fields of a row, or why it can never be published.
    fn entry(&self, row: PendingRow, layout: &Layout) -> Result<StreamEntry, String> {
        let columns = OutboxColumns {
            event_id: row.event_id,
            event_type: row.event_type,
            schema_version: row.schema_version,
            aggregate_type: row.aggregate_type,
            aggregate_id: row.aggregate_id,
            occurred_at: row.occurred_at,
            traceparent: row.traceparent,
            payload: row.payload,
        };
        let event =
            EventEnvelope::try_from(columns).map_err(|e| format!("malformed envelope: {e}"))?;
        let fields = event.to_stream_fields();
        let size: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > self.options.max_entry_bytes {
            return Err(format!(
                "the stream entry would be {size} bytes, over the limit of {}",
                self.options.max_entry_bytes
            ));
        }
        Ok((
            layout.stream_of(
                &self.options.stream_namespace,
                event.aggregate_type.as_str(),
                event.aggregate_id.as_str(),
            ),
            fields,
        ))
    }

    /// Relays batches until every outbox is empty or `deadline` comes; then
    /// trims the streams and reports the backlog.
    pub async fn drain_until(&self, deadline: Instant) -> Result<DrainSummary, RelayError> {
        let started = Instant::now();
        self.keep_layout().await?;
        let mut summary = DrainSummary {
            stopped_by: "empty",
            ..DrainSummary::default()
        };
        let counts = self.drain_all(deadline).await?;
        summary.published = counts.published;
        summary.failed = counts.failed;
        summary.batches = counts.batches;
        if counts.hit_deadline {
            summary.stopped_by = "deadline";
        }
        self.trim_streams().await?;
        for outbox in &self.options.outboxes {
            summary
                .backlog
                .insert(outbox.to_string(), self.backlog(outbox).await?);
        }
        self.record_outbox_age(summary.backlog.values());
        self.record_failed_rows(summary.backlog.iter().map(|(table, b)| (table.as_str(), b)));
        summary.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(summary)
    }

    /// Drains every outbox at once, each with its own batch loops, until every
    /// one was found drained, so one that never empties (rows keep arriving)
    /// holds up neither the others
    /// (`tests/outbox_relay.rs::a_busy_outbox_does_not_starve_the_others`) nor
    /// the rows committed to a quiet one meanwhile: it is looked at again every
    /// [`RelayOptions::idle_poll`] while another is busy
    /// (`tests/outbox_relay.rs::a_quiet_outbox_s_new_rows_wait_one_round_not_the_busy_one`).
    async fn drain_all(&self, deadline: Instant) -> Result<Counts, RelayError> {
        let busy = AtomicUsize::new(self.options.outboxes.len());
        let drains = self
            .options
            .outboxes
            .iter()
            .map(|outbox| self.drain_while_busy(outbox, deadline, &busy));
        Ok(Counts::sum(futures::future::try_join_all(drains).await?))
    }

    /// Drains `outbox` again and again while it has work, then every
    /// [`RelayOptions::idle_poll`] while another outbox has ([`next`]).
    /// `busy`: how many outboxes' last drain worked, shared.
    async fn drain_while_busy(
        &self,
        outbox: &Outbox,
        deadline: Instant,
        busy: &AtomicUsize,
    ) -> Result<Counts, RelayError> {
        let mut total = Counts::default();
        let mut counted_busy = true;
        loop {
            let drain = self.drain_outbox(outbox, deadline).await?;
            let (hit_deadline, worked) = (drain.hit_deadline, drain.worked());
            total.absorb(&drain);
            if worked != counted_busy {
                if worked {
                    busy.fetch_add(1, Ordering::SeqCst);
                } else {
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
                counted_busy = worked;
            }
            let others_busy = busy.load(Ordering::SeqCst) > usize::from(counted_busy);
            match next(hit_deadline, worked, others_busy) {
                Next::Drain => {}
                Next::Pause => {
                    let pause = self
                        .options
                        .idle_poll
                        .min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                }
                Next::Stop => {
                    if counted_busy {
                        busy.fetch_sub(1, Ordering::SeqCst);
                    }
                    return Ok(total);
                }
            }
        }
    }

    /// Drains one outbox with [`RelayOptions::batches_in_flight`] batch loops at
    /// once: while one batch waits for Redis, another reads or commits. They take
    /// disjoint slots, so order per aggregate holds.
    async fn drain_outbox(&self, outbox: &Outbox, deadline: Instant) -> Result<Counts, RelayError> {
        let seen = std::sync::Mutex::new(BTreeSet::new());
        // The first batch takes every free slot: a drain woken by a few commits
        // is then one transaction, where loops of `slots_per_batch` slots each
        // would make one per loop, most of them finding nothing. More loops
        // start only when that batch leaves work.
        let mut first = Counts::default();
        if self
            .step(outbox, deadline, &seen, SLOTS as u32, &mut first)
            .await?
        {
            return Ok(first);
        }
        let loops = (0..self.options.batches_in_flight.max(1))
            .map(|_| self.batch_loop(outbox, deadline, &seen));
        let mut all = futures::future::try_join_all(loops).await?;
        all.push(first);
        Ok(Counts::sum(all))
    }

    /// Batches until the outbox is [`drained`], or `deadline`. `seen`:
    /// the slots the drain's loops have found without pending rows, shared.
    async fn batch_loop(
        &self,
        outbox: &Outbox,
        deadline: Instant,
        seen: &std::sync::Mutex<BTreeSet<i16>>,
    ) -> Result<Counts, RelayError> {
        let slots = self.options.slots_per_batch;
        let mut counts = Counts::default();
        while !self
            .step(outbox, deadline, seen, slots, &mut counts)
            .await?
        {}
        Ok(counts)
    }

    /// One batch of a drain, unless `deadline` has come; true when the drain's
    /// loop is done.
    async fn step(
        &self,
        outbox: &Outbox,
        deadline: Instant,
        seen: &std::sync::Mutex<BTreeSet<i16>>,
        slots: u32,
        counts: &mut Counts,
    ) -> Result<bool, RelayError> {
        if Instant::now() >= deadline {
            counts.hit_deadline = true;
            return Ok(true);
        }
        let batch = self.batch(outbox, slots).await?;
        counts.add(&batch);
        Ok(drained(&mut lock(seen), batch))
    }

    /// Drains, then waits for `NOTIFY outbox` (sent when outbox rows commit) or
    /// `fallback_poll`, and drains again, until `shutdown` completes. Each
    /// outbox has a drain loop of its own, woken by the notifications of its
    /// schema, so a busy outbox never holds up a quiet one. The batch in flight
    /// finishes first. Errors are logged and retried with backoff.
    pub async fn run(
        &self,
        fallback_poll: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RelayError> {
        tokio::pin!(shutdown);
        // One line when a store goes away and one when it answers again.
        let mut away = Breaker::new(Duration::from_millis(50), Duration::from_secs(5));
        // A database that is away at start is waited for, as the drains wait.
        let mut listener = loop {
            let listening = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
                    .await
                    .map_err(db("connecting the outbox listener"))?;
                listener
                    .listen("outbox")
                    .await
                    .map_err(db("listening for outbox rows"))?;
                Ok::<_, RelayError>(listener)
            };
            match listening.await {
                Ok(listener) => break listener,
                Err(error) if is_outage(&error) => {
                    store_away(&mut away, &error);
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(away.next_pause()) => {}
                    }
                }
                Err(error) => return Err(error),
            }
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let wakes: Vec<tokio::sync::Notify> = self
            .options
            .outboxes
            .iter()
            .map(|_| tokio::sync::Notify::new())
            .collect();
        let drains = futures::future::join_all(self.options.outboxes.iter().zip(&wakes).map(
            |(outbox, wake)| self.keep_draining(outbox, wake, fallback_poll, stopped.clone()),
        ));
        let wake_up = async {
            let mut last_trim = Instant::now();
            let mut last_measure = Instant::now() - Duration::from_secs(3600);
            let mut layout_due = Instant::now();
            loop {
                if Instant::now() >= layout_due {
                    // Every 10 s; every second while a change of this relay's waits.
                    layout_due = match self.keep_layout().await {
                        Ok(layout) if layout.partitions != self.options.stream_partitions => {
                            Instant::now() + Duration::from_secs(1)
                        }
                        Ok(_) => Instant::now() + Duration::from_secs(10),
                        Err(error) => {
                            warn!(%error, "keeping the stream layout failed");
                            Instant::now() + Duration::from_secs(1)
                        }
                    };
                }
                if last_measure.elapsed() > Duration::from_secs(10) {
                    match self.backlogs().await {
                        Ok(backlogs) => {
                            self.record_outbox_age(backlogs.iter());
                            let tables: Vec<String> = self
                                .options
                                .outboxes
                                .iter()
                                .map(Outbox::to_string)
                                .collect();
                            self.record_failed_rows(
                                tables.iter().map(String::as_str).zip(&backlogs),
                            );
                        }
                        Err(error) => warn!(%error, "measuring the outbox backlog failed"),
                    }
                    last_measure = Instant::now();
                }
                if last_trim.elapsed() > Duration::from_secs(60) {
                    if let Err(error) = self.trim_streams().await {
                        warn!(%error, "trimming streams failed");
                    }
                    last_trim = Instant::now();
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    notification = listener.recv() => match notification {
                        // The payload is the outbox's schema.
                        Ok(n) => {
                            for (outbox, wake) in self.options.outboxes.iter().zip(&wakes) {
                                if outbox.table().schema() == n.payload() {
                                    wake.notify_one();
                                }
                            }
                        }
                        Err(error) => {
                            // It reconnects on its next `recv`; the pause keeps a
                            // listener that cannot from spinning.
                            let error = db("receiving outbox notifications")(error);
                            if is_outage(&error) {
                                store_away(&mut away, &error);
                            } else {
                                warn!(%error, "outbox listener lost its connection; reconnecting");
                            }
                            tokio::select! {
                                _ = &mut shutdown => return,
                                _ = tokio::time::sleep(fallback_poll) => {}
                            }
                            // Rows may have committed meanwhile, unannounced.
                            wakes.iter().for_each(tokio::sync::Notify::notify_one);
                        }
                    },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        };
        // The listener stops first; then every drain loop ends after its batch.
        let ((), _) = tokio::join!(
            async {
                wake_up.await;
                let _ = stop.send(true);
            },
            drains
        );
        Ok(())
    }

    /// One outbox's drain loop in [`Relay::run`]: drains it, then waits for
    /// `wake` (its notifications) or `fallback_poll`; ends between batches once
    /// `stopped` turns true.
    async fn keep_draining(
        &self,
        outbox: &Outbox,
        wake: &tokio::sync::Notify,
        fallback_poll: Duration,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut away = Breaker::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut backoff = Duration::from_millis(50);
        while !*stopped.borrow() {
            // A bounded round, so that a stop is seen even under constant load.
            match self
                .drain_outbox(outbox, Instant::now() + Duration::from_secs(1))
                .await
            {
                Ok(counts) => {
                    backoff = Duration::from_millis(50);
                    store_back(&mut away);
                    if counts.published > 0 {
                        debug!(published = counts.published, %outbox, "relayed");
                    }
                    if counts.hit_deadline {
                        continue;
                    }
                }
                Err(error) => {
                    if is_outage(&error) {
                        store_away(&mut away, &error);
                    } else {
                        warn!(%error, %outbox, retry_in_ms = millis(backoff), "relay failed; rows stay pending");
                    }
                    tokio::select! {
                        _ = stopped.changed() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                _ = stopped.changed() => {}
                () = wake.notified() => {}
                _ = tokio::time::sleep(fallback_poll) => {}
            }
        }
    }

    /// The backlog of every outbox.
    async fn backlogs(&self) -> Result<Vec<Backlog>, RelayError> {
        let mut backlogs = Vec::with_capacity(self.options.outboxes.len());
        for outbox in &self.options.outboxes {
            backlogs.push(self.backlog(outbox).await?);
        }
        Ok(backlogs)
    }

    /// `OutboxAge`: the oldest pending row of all outboxes, in seconds (0 when none).
    fn record_outbox_age<'a>(&self, backlogs: impl Iterator<Item = &'a Backlog>) {
        let oldest_ms = backlogs
            .filter_map(|b| b.oldest_pending_age_ms)
            .max()
            .unwrap_or(0);
        self.metrics
            .record(Metric::OUTBOX_AGE, oldest_ms as f64 / 1000.0);
    }

    /// `OutboxFailedRows`, per outbox (dimension `outbox`): rows set aside,
    /// waiting to be redriven or purged. Kept, so counted and alarmed on.
    fn record_failed_rows<'a>(&self, backlogs: impl Iterator<Item = (&'a str, &'a Backlog)>) {
        for (table, backlog) in backlogs {
            self.metrics.record_for(
                Metric::OUTBOX_FAILED_ROWS,
                ("outbox", table),
                backlog.failed as f64,
            );
        }
    }

    /// Pending and failed rows of `outbox`, and the age of the oldest pending one.
    pub async fn backlog(&self, outbox: &Outbox) -> Result<Backlog, RelayError> {
        let sql = self.sql(outbox);
        let (pending, age, failed): (i64, Option<i64>, i64) = sqlx::query_as(&sql.backlog)
            .fetch_one(&self.pool)
            .await
            .map_err(db("measuring the outbox backlog"))?;
        Ok(Backlog {
            pending: pending.max(0) as u64,
            oldest_pending_age_ms: age.map(|a| a.max(0) as u64),
            failed: failed.max(0) as u64,
        })
    }

    /// Trims every stream of the aggregate types in the outboxes: entries older
    /// than the retention go, except those a consumer group has yet to process.
    pub async fn trim_streams(&self) -> Result<u64, RelayError> {
        let cutoff_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
            - i128::try_from(self.options.stream_retention.as_millis()).unwrap_or(i128::MAX);
        if cutoff_ms <= 0 {
            return Ok(0);
        }
        let mut redis = self.redis.clone();
        let keys = crate::streams::scan_streams(
            &mut redis,
            &stream_key_pattern(&self.options.stream_namespace),
        )
        .await
        .map_err(|e| RelayError::redis("listing streams to trim", e))?;
        let mut trimmed = 0;
        for key in keys {
            let min_id = safe_min_id(&mut redis, &key, format!("{cutoff_ms}-0")).await?;
            let n: u64 = redis::cmd("XTRIM")
                .arg(&key)
                .arg("MINID")
                .arg("=")
                .arg(&min_id)
                .query_async(&mut redis)
                .await
                .map_err(|e| RelayError::redis("trimming a stream", e))?;
            trimmed += n;
        }
        if trimmed > 0 {
            info!(trimmed, "stream entries past retention trimmed");
        }
        Ok(trimmed + self.trim_dead_letters().await?)
    }

    /// Trims every dead-letter stream of the namespace (`{ns}:dlq:*`, found
    /// with `SCAN MATCH`) by age: dead letters older than `dlq_retention` go
    /// (`XTRIM MINID`, exact; an entry's id is when it was dead-lettered). No
    /// group reads them, so age alone decides. Called by [`Self::trim_streams`].
    pub async fn trim_dead_letters(&self) -> Result<u64, RelayError> {
        let cutoff_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
            - i128::try_from(self.options.dlq_retention.as_millis()).unwrap_or(i128::MAX);
        if cutoff_ms <= 0 {
            return Ok(0);
        }
        let mut redis = self.redis.clone();
        let keys = crate::source::dead_letter_keys(&mut redis, &self.options.stream_namespace)
            .await
            .map_err(|e| RelayError::redis("listing dead-letter streams to trim", e))?;
        let mut trimmed = 0;
        for key in keys {
            let n: u64 = redis::cmd("XTRIM")
                .arg(&key)
                .arg("MINID")
                .arg("=")
                .arg(format!("{cutoff_ms}-0"))
                .query_async(&mut redis)
                .await
                .map_err(|e| RelayError::redis("trimming a dead-letter stream", e))?;
            if n > 0 {
                // Events that were never applied, now beyond redrive.
                warn!(stream = %key, trimmed = n, "dead letters past retention trimmed");
            }
            trimmed += n;
        }
        Ok(trimmed)
    }

    /// Rows of `outbox` set aside as failed, oldest first.
    pub async fn failed_rows(
        &self,
        outbox: &Outbox,
        limit: i64,
    ) -> Result<Vec<FailedRow>, RelayError> {
        let sql = self.sql(outbox);
        let rows: Vec<(i64, uuid::Uuid, String, String, i32, Option<String>)> =
            sqlx::query_as(&sql.failed)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(db("listing failed outbox rows"))?;
        Ok(rows
            .into_iter()
            .map(
                |(id, event_id, aggregate_type, aggregate_id, attempts, last_error)| FailedRow {
                    id,
                    event_id,
                    aggregate_type,
                    aggregate_id,
                    attempts,
                    last_error,
                },
            )
            .collect())
    }

    /// Puts failed rows back in line (after an operator fixed them); returns how many.
    pub async fn redrive(&self, outbox: &Outbox, ids: &[i64]) -> Result<u64, RelayError> {
        sqlx::query(&self.sql(outbox).redrive)
            .bind(ids)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(db("redriving failed outbox rows"))
    }

    /// Deletes rows of `outbox` set aside as failed (an operator gave up on
    /// them); returns how many. Ids of pending rows are ignored.
    pub async fn purge_failed(&self, outbox: &Outbox, ids: &[i64]) -> Result<u64, RelayError> {
        sqlx::query(&self.sql(outbox).purge_failed)
            .bind(ids)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(db("purging failed outbox rows"))
    }

    /// Deletes every row of `outbox` set aside as failed; returns how many.
    pub async fn purge_all_failed(&self, outbox: &Outbox) -> Result<u64, RelayError> {
        sqlx::query(&self.sql(outbox).purge_all_failed)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(db("purging failed outbox rows"))
    }
}

/// The lowest id that may be trimmed to: `cutoff`, or the oldest entry a group
/// still has pending (or has not yet been delivered), whichever is lower.
async fn safe_min_id(redis: &mut Redis, key: &str, cutoff: String) -> Result<String, RelayError> {
    let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(redis)
        .await
        .map_err(|e| RelayError::redis("reading a stream's consumer groups", e))?;
    let mut min = StreamId::parse(&cutoff);
    for group in groups.groups {
        let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
            .arg(key)
            .arg(&group.name)
            .query_async(redis)
            .await
            .map_err(|e| RelayError::redis("reading a group's pending entries", e))?;
        let keep_from = match pending {
            redis::streams::StreamPendingReply::Data(data) if data.count > 0 => {
                StreamId::parse(&data.start_id)
            }
            // Nothing pending: everything after the last delivered entry is unprocessed.
            _ => StreamId::parse(&group.last_delivered_id).map(StreamId::next),
        };
        if let (Some(keep), Some(current)) = (keep_from, min) {
            min = Some(current.min(keep));
        }
    }
    Ok(min.map_or(cutoff, |id| id.to_string()))
}

/// A connection to the Redis node at `url` for the relay: reconnects by
/// itself, and gives up on a command after `response_timeout` so an
/// unreachable Redis fails a batch instead of hanging it. (A cluster:
/// [`RedisClient::open`] with `cluster`, then [`RedisClient::connect`].)
pub async fn connect_redis(
    url: &str,
    response_timeout: Duration,
) -> Result<Redis, redis::RedisError> {
    RedisClient::open(url, false)?.connect(response_timeout)
}

/// Whether the relay failed because a store is away ([`Failure::Outage`]).
fn is_outage(error: &RelayError) -> bool {
    match error {
        RelayError::Store(e) => e.is_outage(),
        RelayError::Redis { source, .. } => Failure::of_redis(source).is_outage(),
        _ => false,
    }
}

/// Logs the first failure of an outage; the others at debug level.
fn store_away(away: &mut Breaker, error: &RelayError) {
    if away.trip() {
        warn!(%error, "store unavailable; pausing, rows stay pending");
    } else {
        debug!(%error, "store still unavailable");
    }
}

/// Logs the end of an outage, if there was one.
fn store_back(away: &mut Breaker) {
    if let Some(down) = away.close() {
        info!(
            down_for_ms = millis(down),
            "store available again; relaying"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(published: u64, drained: std::ops::Range<i16>) -> Batch {
        Batch::Done {
            published,
            failed: 0,
            drained: drained.collect(),
        }
    }

    fn empty(slots: std::ops::Range<i16>) -> Batch {
        Batch::Empty {
            slots: slots.collect(),
        }
    }

    /// A change that waits is said at warn level after a minute, then once a
    /// minute; at debug level in between.
    #[test]
    fn a_waiting_change_warns_after_a_minute_then_once_a_minute() {
        let since = Instant::now();
        let at = |s: u64| since + Duration::from_secs(s);
        let mut waiting = Waiting {
            since,
            warned: None,
        };
        assert!(!waiting.warn_at(at(0)));
        assert!(!waiting.warn_at(at(59)));
        assert!(waiting.warn_at(at(60)));
        waiting.warned = Some(at(60));
        assert!(!waiting.warn_at(at(61)));
        assert!(!waiting.warn_at(at(119)));
        assert!(waiting.warn_at(at(120)));
    }

    /// A drain ends once every slot was found without pending rows, a short
    /// batch counting, or when others hold every slot.
    #[test]
    fn a_drain_ends_when_its_slots_are_drained() {
        let mut seen = BTreeSet::new();
        assert!(!drained(&mut seen, done(3, 0..8)), "half the slots");
        assert!(!drained(&mut seen, done(500, 0..0)), "a full batch");
        assert!(drained(&mut seen, empty(8..16)), "all drained");
        let mut seen = BTreeSet::new();
        assert!(!drained(&mut seen, empty(0..8)));
        assert!(drained(&mut seen, empty(0..8)), "nothing new seen");
        assert!(drained(&mut BTreeSet::new(), Batch::Busy));
    }

    /// In `drain_until`, an outbox is drained again at once after a drain that
    /// published, looked at again after a pause while another is busy, and
    /// left once every outbox was found drained or time is up.
    #[test]
    fn an_outbox_is_looked_at_again_while_another_is_busy() {
        assert_eq!(next(false, true, false), Next::Drain);
        assert_eq!(next(false, true, true), Next::Drain);
        assert_eq!(next(false, false, true), Next::Pause);
        assert_eq!(next(false, false, false), Next::Stop);
        assert_eq!(next(true, true, true), Next::Stop);
        assert_eq!(next(true, false, true), Next::Stop);
    }

    #[test]
    fn stream_ids_order_numerically() {
        let a = StreamId::parse("1700000000000-5").expect("id");
        let b = StreamId::parse("999999999999-9").expect("id");
        assert!(b < a);
        assert_eq!(a.next().to_string(), "1700000000000-6");
        assert_eq!(StreamId::parse("nope"), None);
    }

    #[test]
    fn options_read_and_bound_their_variables() {
        const OUTBOXES: (&str, &str) = ("RELAY_OUTBOXES", "shop.outbox");
        let env = Env::from_pairs([
            ("RELAY_BATCH_SIZE", "100"),
            ("STREAM_PARTITIONS", "4"),
            OUTBOXES,
        ]);
        let options = RelayOptions::from_env(&env).expect("valid");
        assert_eq!((options.batch_size, options.stream_partitions), (100, 4));
        let bad = Env::from_pairs([("RELAY_BATCH_SIZE", "0"), OUTBOXES]);
        assert!(RelayOptions::from_env(&bad).is_err());
        let bad = Env::from_pairs([("STREAM_PARTITIONS", "many"), OUTBOXES]);
        assert!(RelayOptions::from_env(&bad).is_err());
        assert_eq!(options.dlq_retention, Duration::from_secs(336 * 3600));
        let env = Env::from_pairs([("DLQ_RETENTION_HOURS", "48"), OUTBOXES]);
        let options = RelayOptions::from_env(&env).expect("valid");
        assert_eq!(options.dlq_retention, Duration::from_secs(48 * 3600));
    }

    #[test]
    fn the_outboxes_come_from_configuration() {
        let env = |list: &str| Env::from_pairs([("RELAY_OUTBOXES", list.to_owned())]);
        let options =
            RelayOptions::from_env(&env(" shop.outbox, billing ,x.events")).expect("valid");
        let names: Vec<String> = options.outboxes.iter().map(Outbox::to_string).collect();
        assert_eq!(names, ["shop.outbox", "billing.outbox", "x.events"]);
        for bad in ["", " , ", "shop,shop.outbox", "Shop", "shop.outbox;drop"] {
            assert!(
                RelayOptions::from_env(&env(bad)).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(RelayOptions::from_env(&Env::from_pairs::<&str, &str>([])).is_err());
    }

    #[test]
    fn slot_locks_differ_per_outbox_and_are_stable() {
        let a = Outbox::in_schema("orders");
        let b = Outbox::in_schema("inventory");
        assert_ne!(slot_lock_base(&a), slot_lock_base(&b));
        assert_eq!(slot_lock_base(&a) & 0xff, 0);
        assert!(slot_lock_base(&a) >= 0);
        // The key is part of the protocol between relays of different builds.
        assert_eq!(
            slot_lock_base(&a),
            slot_lock_base(&Outbox::parse("orders").expect("valid"))
        );
    }
}
