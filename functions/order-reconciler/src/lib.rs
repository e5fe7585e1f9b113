//! The order-reconciler function: the order service's owner of "this order has
//! waited too long". Invoked by a schedule, each run:
//!
//! 1. rejects every order still `PENDING` after `ORDER_PENDING_DEADLINE_SECONDS`
//!    (status reason "timed out") and writes its `OrderCancelled`, so whatever
//!    the inventory reserved for it is released;
//! 2. sends `OrderCreated` again, under its first `event_id`, for every order
//!    `PENDING` for longer than `ORDER_PENDING_TIMEOUT_SECONDS`: a lost request
//!    is handled at last, and a participant that already decided answers again
//!    with its recorded answer (the inbox makes the repeat harmless);
//! 3. sends `OrderCancelled` again, under its first `event_id`, for every
//!    compensation (a cancellation or a rejection) not every participant has
//!    confirmed (`InventoryReleased`, `CreditReleased`) within the timeout;
//! 4. purges the order service's expired idempotency keys and old inbox rows;
//! 5. records the age of the oldest `PENDING` order (`OldestPendingOrderAge`).
//!
//! Each step reads from a partial index, so a run costs what is stuck, not what
//! is stored. Events go through the outbox like every other event.

use std::time::Duration;

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use contracts::events::{OrderCancelledV1, OrderCreatedItemV1, OrderCreatedV1, ORDER_AGGREGATE};
use contracts::OrderId;
use lambda_runtime::LambdaEvent;
use order_service::orders::{self, Order, UnconfirmedRelease};
use order_service::retention;
use serde::Serialize;
use shared::config::{ConfigError, DatabaseConfig, Env};
use shared::envelope::EventEnvelope;
use shared::metrics::{Metric, Recorder, Unit};
use shared::outbox;
use shared::retention::RetentionConfig;
use shared::telemetry::Invocation;
use shared::trace::TraceParent;
use shared::value::EventId;
use shared::{Retry, StoreError};
use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::{info, warn};
use uuid::Uuid;

/// The function's name: the `service` of its logs and metrics.
pub const SERVICE: &str = "order-reconciler";

/// The status reason of an order rejected at its deadline.
pub const TIMED_OUT: &str = "timed out";

/// When an order counts as stuck, and how much one run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `ORDER_PENDING_TIMEOUT_SECONDS` (60): a `PENDING` order older than this
    /// gets its `OrderCreated` again, and an unconfirmed cancellation its
    /// `OrderCancelled`; each at most once per timeout.
    pub pending_timeout: Duration,
    /// `ORDER_PENDING_DEADLINE_SECONDS` (600): a `PENDING` order older than this
    /// is rejected, "timed out". Longer than the timeout.
    pub pending_deadline: Duration,
    /// `RECONCILE_BATCH_SIZE` (500): orders per statement.
    pub batch_size: i64,
    /// `RECONCILE_MAX_BATCHES` (20): statements per step and run, so one run is
    /// bounded however much is stuck; the next run goes on.
    pub max_batches: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            pending_timeout: Duration::from_secs(60),
            pending_deadline: Duration::from_secs(600),
            batch_size: 500,
            max_batches: 20,
        }
    }
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let timeout = env.in_range("ORDER_PENDING_TIMEOUT_SECONDS", 60, 1, 86_400)?;
        let deadline = env.in_range("ORDER_PENDING_DEADLINE_SECONDS", 600, 2, 7 * 86_400)?;
        if deadline <= timeout {
            return Err(ConfigError::Malformed {
                var: "ORDER_PENDING_DEADLINE_SECONDS",
                reason: format!(
                    "must be longer than ORDER_PENDING_TIMEOUT_SECONDS ({timeout}), got {deadline}"
                ),
            });
        }
        Ok(Self {
            pending_timeout: Duration::from_secs(timeout as u64),
            pending_deadline: Duration::from_secs(deadline as u64),
            batch_size: env.in_range("RECONCILE_BATCH_SIZE", d.batch_size, 1, 10_000)?,
            max_batches: env.in_range("RECONCILE_MAX_BATCHES", d.max_batches, 1, 1000)?,
        })
    }
}

/// Age of the oldest `PENDING` order, in seconds (0 when none).
pub const OLDEST_PENDING_ORDER_AGE: Metric = Metric::gauge(
    "OldestPendingOrderAge",
    "oldest_pending_order_age_seconds",
    Unit::Seconds,
    "Age of the oldest PENDING order, at the reconciler's last run.",
);
/// Events sent again for orders that waited too long.
pub const SAGA_EVENTS_RESENT: Metric = Metric::counter(
    "SagaEventsResent",
    "saga_events_resent_total",
    "Saga events the reconciler sent again.",
);
/// Orders rejected for having waited past their deadline.
pub const ORDERS_TIMED_OUT: Metric = Metric::counter(
    "OrdersTimedOut",
    "orders_timed_out_total",
    "Orders rejected for waiting past their deadline.",
);

/// The function's settings, read once at cold start.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub settings: Settings,
    pub retention: RetentionConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseConfig::from_env(env)?,
            settings: Settings::from_env(env)?,
            retention: RetentionConfig::from_env(env)?,
        })
    }
}

/// What the handler borrows.
#[derive(Debug)]
pub struct Deps {
    pub pool: PgPool,
    pub settings: Settings,
    pub retention: RetentionConfig,
}

impl Deps {
    pub fn new(config: &Config) -> Self {
        shared::metrics::describe(&[
            OLDEST_PENDING_ORDER_AGE,
            SAGA_EVENTS_RESENT,
            ORDERS_TIMED_OUT,
        ]);
        Self {
            pool: shared::db::lazy_pool(&config.database),
            settings: config.settings.clone(),
            retention: config.retention.clone(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Orders rejected at their deadline (each with an `OrderCancelled`).
    pub timed_out: u64,
    /// `OrderCreated` events sent again.
    pub created_resent: u64,
    /// `OrderCancelled` events sent again.
    pub cancelled_resent: u64,
    /// Idempotency keys and inbox rows purged.
    pub purged: u64,
    /// `PENDING` orders older than the timeout after the run.
    pub stuck: i64,
    /// Age of the oldest `PENDING` order, in seconds.
    pub oldest_pending_seconds: Option<i64>,
}

/// One run at `now`.
pub async fn reconcile(
    pool: &PgPool,
    settings: &Settings,
    retention_config: &RetentionConfig,
    now: OffsetDateTime,
) -> Result<Summary, StoreError> {
    let mut summary = Summary::default();
    let timeout_cutoff = now - settings.pending_timeout;
    let deadline_cutoff = now - settings.pending_deadline;
    let limit = settings.batch_size;
    summary.timed_out =
        in_batches(settings, || time_out(pool, deadline_cutoff, limit, now)).await?;
    summary.created_resent = in_batches(settings, || {
        resend_created(pool, timeout_cutoff, limit, now)
    })
    .await?;
    summary.cancelled_resent = in_batches(settings, || {
        resend_cancelled(pool, timeout_cutoff, limit, now)
    })
    .await?;
    summary.purged = retention::purge_order_service(pool, retention_config)
        .await?
        .total();
    let (oldest, stuck) = orders::pending_overview(pool, timeout_cutoff).await?;
    summary.stuck = stuck;
    summary.oldest_pending_seconds = oldest.map(|at| (now - at).whole_seconds().max(0));

    let metrics = Recorder::new(SERVICE);
    metrics.record(
        OLDEST_PENDING_ORDER_AGE,
        summary.oldest_pending_seconds.unwrap_or(0) as f64,
    );
    metrics.count(
        SAGA_EVENTS_RESENT,
        summary.created_resent + summary.cancelled_resent,
    );
    metrics.count(ORDERS_TIMED_OUT, summary.timed_out);
    Ok(summary)
}

/// Runs `step` (one statement's worth, returning how many it handled) until it
/// handles less than a batch or `max_batches` have run; the total.
async fn in_batches<F, Fut>(settings: &Settings, mut step: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    for _ in 0..settings.max_batches {
        let n = step().await?;
        total += n;
        if n < settings.batch_size as u64 {
            break;
        }
    }
    Ok(total)
}

/// Rejects up to `limit` orders `PENDING` since before `cutoff`, each with its
/// `OrderCancelled`, in one transaction.
async fn time_out(
    pool: &PgPool,
    cutoff: OffsetDateTime,
    limit: i64,
    now: OffsetDateTime,
) -> Result<u64, StoreError> {
    let mut tx = begin(pool).await?;
    let overdue = orders::lock_overdue(&mut tx, cutoff, limit).await?;
    if overdue.is_empty() {
        return Ok(0);
    }
    let events = overdue
        .iter()
        .map(|o| {
            cancelled_event(
                o.id,
                EventId::new().as_uuid(),
                now,
                o.traceparent.as_deref(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<Uuid> = overdue.iter().map(|o| o.id.as_uuid()).collect();
    let event_ids: Vec<Uuid> = events.iter().map(|e| e.event_id.as_uuid()).collect();
    let rejected = orders::reject_timed_out(&mut tx, &ids, &event_ids, now, TIMED_OUT).await?;
    outbox::append_all(&mut tx, &order_service::OUTBOX, &events).await?;
    commit(tx).await?;
    for o in &overdue {
        warn!(order_id = %o.id, trace_id = trace_id(o.traceparent.as_deref()), "order rejected: no answer before its deadline");
    }
    Ok(rejected)
}

/// Sends `OrderCreated` again for up to `limit` orders `PENDING` since before
/// `cutoff` (and not sent again since then).
async fn resend_created(
    pool: &PgPool,
    cutoff: OffsetDateTime,
    limit: i64,
    now: OffsetDateTime,
) -> Result<u64, StoreError> {
    let mut tx = begin(pool).await?;
    let stuck = orders::unanswered(&mut tx, cutoff, limit).await?;
    if stuck.is_empty() {
        return Ok(0);
    }
    // Orders from before event ids were kept get one now, kept from then on.
    let (mut unnamed, mut new_ids) = (Vec::new(), Vec::new());
    let mut events = Vec::with_capacity(stuck.len());
    for s in &stuck {
        let event_id = match s.created_event_id {
            Some(id) => id,
            None => {
                let id = EventId::new().as_uuid();
                unnamed.push(s.order.id.as_uuid());
                new_ids.push(id);
                id
            }
        };
        events.push(created_event(&s.order, event_id, s.traceparent.as_deref())?);
    }
    if !unnamed.is_empty() {
        orders::assign_created_event_ids(&mut tx, &unnamed, &new_ids).await?;
    }
    let ids: Vec<Uuid> = stuck.iter().map(|s| s.order.id.as_uuid()).collect();
    outbox::append_all(&mut tx, &order_service::OUTBOX, &events).await?;
    orders::mark_resent(&mut tx, &ids, now).await?;
    commit(tx).await?;
    for (s, e) in stuck.iter().zip(&events) {
        info!(order_id = %s.order.id, event_id = %e.event_id, trace_id = trace_id(s.traceparent.as_deref()), "OrderCreated sent again: no answer within the timeout");
    }
    Ok(events.len() as u64)
}

/// Sends `OrderCancelled` again for up to `limit` cancellations written before
/// `cutoff` that the inventory has not confirmed.
async fn resend_cancelled(
    pool: &PgPool,
    cutoff: OffsetDateTime,
    limit: i64,
    now: OffsetDateTime,
) -> Result<u64, StoreError> {
    let mut tx = begin(pool).await?;
    let unconfirmed = orders::unconfirmed_releases(&mut tx, cutoff, limit).await?;
    if unconfirmed.is_empty() {
        return Ok(0);
    }
    let events = unconfirmed
        .iter()
        .map(|u: &UnconfirmedRelease| {
            cancelled_event(u.id, u.cancel_event_id, u.since, u.traceparent.as_deref())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<Uuid> = unconfirmed.iter().map(|u| u.id.as_uuid()).collect();
    outbox::append_all(&mut tx, &order_service::OUTBOX, &events).await?;
    orders::mark_resent(&mut tx, &ids, now).await?;
    commit(tx).await?;
    for u in &unconfirmed {
        info!(order_id = %u.id, event_id = %u.cancel_event_id, trace_id = trace_id(u.traceparent.as_deref()), "OrderCancelled sent again: the inventory has not confirmed the release");
    }
    Ok(events.len() as u64)
}

/// The `OrderCreated` of `order` as create-order wrote it: the payload is
/// built from the order, which never changes after creation, so it is the
/// same JSON; the time is the order's creation, the trace the request's.
pub fn created_event(
    order: &Order,
    event_id: Uuid,
    traceparent: Option<&str>,
) -> Result<EventEnvelope, StoreError> {
    let payload = OrderCreatedV1 {
        order_id: order.id.as_uuid(),
        customer_id: order.customer_id.to_string(),
        items: order
            .lines
            .iter()
            .map(|l| OrderCreatedItemV1 {
                sku: l.sku.to_string(),
                quantity: l.quantity.get(),
                unit_price_cents: l.unit_price.cents(),
            })
            .collect(),
        total_cents: order.total.cents(),
    };
    let mut event = rebuild(
        contracts::events::ORDER_CREATED,
        OrderCreatedV1::SCHEMA_VERSION,
        order.id,
        &payload,
        traceparent,
    )?;
    event.event_id = EventId::from(event_id);
    event.occurred_at = order.created_at;
    Ok(event)
}

/// An `OrderCancelled` of `order_id` with `event_id`, written at `at`.
pub fn cancelled_event(
    order_id: OrderId,
    event_id: Uuid,
    at: OffsetDateTime,
    traceparent: Option<&str>,
) -> Result<EventEnvelope, StoreError> {
    let payload = OrderCancelledV1 {
        order_id: order_id.as_uuid(),
    };
    let mut event = rebuild(
        contracts::events::ORDER_CANCELLED,
        OrderCancelledV1::SCHEMA_VERSION,
        order_id,
        &payload,
        traceparent,
    )?;
    event.event_id = EventId::from(event_id);
    event.occurred_at = at;
    Ok(event)
}

fn rebuild(
    event_type: &str,
    schema_version: u32,
    order_id: OrderId,
    payload: &impl Serialize,
    traceparent: Option<&str>,
) -> Result<EventEnvelope, StoreError> {
    use shared::envelope::{AggregateId, AggregateType, EventType, Payload};
    let corrupt = |e: shared::value::InvalidValue| StoreError::corrupt("rebuilding an event", e);
    Ok(EventEnvelope::new(
        EventType::parse(event_type).map_err(corrupt)?,
        schema_version,
        AggregateType::parse(ORDER_AGGREGATE).map_err(corrupt)?,
        AggregateId::parse(&order_id.to_string()).map_err(corrupt)?,
        traceparent.and_then(|tp| TraceParent::parse(tp).ok()),
        Payload::of(payload).map_err(corrupt)?,
    ))
}

fn trace_id(traceparent: Option<&str>) -> Option<String> {
    traceparent
        .and_then(|tp| TraceParent::parse(tp).ok())
        .map(|tp| tp.trace_id())
}

async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    pool.begin()
        .await
        .map_err(|e| StoreError::database("starting a transaction", e))
}

async fn commit(tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Result<(), StoreError> {
    tx.commit()
        .await
        .map_err(|e| StoreError::database("committing a reconciliation", e))
}

/// A failed run; the next scheduled run tries again (nothing is half done:
/// each step is one transaction).
#[derive(Debug, thiserror::Error)]
#[error("reconciliation failed: {0}")]
pub struct InvocationError(#[from] StoreError);

impl From<InvocationError> for lambda_runtime::Diagnostic {
    fn from(error: InvocationError) -> Self {
        Self {
            error_type: match error.0.retry() {
                Retry::Permanent => "Reconciler.Permanent",
                _ => "Reconciler.Retryable",
            }
            .to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// One scheduled invocation.
pub async fn handle(
    deps: &Deps,
    event: LambdaEvent<CloudWatchEvent>,
) -> Result<Summary, InvocationError> {
    let context = &event.context;
    let invocation = Invocation::start(
        SERVICE,
        &context.request_id,
        context.xray_trace_id.as_deref(),
    );
    invocation
        .run(async move {
            let summary = reconcile(
                &deps.pool,
                &deps.settings,
                &deps.retention,
                shared::envelope::now_utc(),
            )
            .await?;
            info!(
                timed_out = summary.timed_out,
                created_resent = summary.created_resent,
                cancelled_resent = summary.cancelled_resent,
                purged = summary.purged,
                stuck = summary.stuck,
                oldest_pending_seconds = summary.oldest_pending_seconds,
                "orders reconciled"
            );
            Ok(summary)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::Money;
    use contracts::{CustomerId, NewOrder, OrderLine, OrderStatus, Quantity, Sku};

    #[test]
    fn the_resent_order_created_is_the_event_create_order_wrote() {
        let line = |sku: &str, q: i64, cents: i64| OrderLine {
            sku: Sku::parse(sku).expect("sku"),
            quantity: Quantity::try_from(q).expect("quantity"),
            unit_price: Money::from_cents(cents).expect("money"),
        };
        let new = NewOrder::new(
            CustomerId::parse("c-1").expect("customer"),
            vec![line("B-2", 3, 250), line("A-1", 1, 1999)],
            shared::envelope::now_utc(),
        )
        .expect("order");
        let trace = TraceParent::new_root();
        let original = OrderCreatedV1::envelope(&new, Some(trace)).expect("event");
        let stored = Order {
            id: new.id(),
            customer_id: new.customer_id().clone(),
            status: OrderStatus::Pending,
            lines: new.lines().to_vec(),
            total: new.total(),
            created_at: new.created_at(),
            updated_at: new.created_at(),
            status_reason: None,
        };
        let again = created_event(
            &stored,
            original.event_id.as_uuid(),
            Some(&trace.to_string()),
        )
        .expect("rebuilt");
        assert_eq!(again, original);
        assert_eq!(again.payload.as_str(), original.payload.as_str());
    }

    #[test]
    fn the_deadline_must_come_after_the_timeout() {
        let env = Env::from_pairs([
            ("ORDER_PENDING_TIMEOUT_SECONDS", "60"),
            ("ORDER_PENDING_DEADLINE_SECONDS", "60"),
        ]);
        let e = Settings::from_env(&env).expect_err("refused");
        assert!(
            e.to_string().contains("ORDER_PENDING_DEADLINE_SECONDS"),
            "{e}"
        );
        let ok = Settings::from_env(&Env::default()).expect("defaults");
        assert_eq!(ok, Settings::default());
    }
}
