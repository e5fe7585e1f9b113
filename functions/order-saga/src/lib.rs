//! The order saga's consumer: reads the `Reservation` streams as consumer group
//! `order-saga` and moves each `PENDING` order to `CONFIRMED` on
//! `InventoryReserved` or to `REJECTED`, with the reason, on
//! `InventoryRejected`. An order that has moved on (cancelled meanwhile) stays
//! as it is. `InventoryReleased` confirms a cancellation's release, so the
//! reconciler stops sending `OrderCancelled` again. Each batch commits its inbox
//! rows with its status changes, so an event delivered twice changes nothing.

use std::collections::HashSet;

use contracts::events::{
    InventoryRejectedV1, InventoryReleasedV1, InventoryReservedV1, INVENTORY_REJECTED,
    INVENTORY_RELEASED, INVENTORY_RESERVED, RESERVATION_AGGREGATE,
};
use contracts::OrderStatus;
use shared::config::{ConfigError, Env};
use shared::inbox;
use shared::source::{
    decode_and_apply, BatchHandler, BatchResponse, Consumer, ConsumerConfig, HandlerError,
    RecordOutcome, StreamBatch, StreamRecord,
};
use shared::StoreError;
use stream_consumer::ConsumerFunction;

use sqlx::PgPool;
use tracing::{debug, warn};
use uuid::Uuid;

/// The consumer group, and the consumer's name in the inbox.
pub const GROUP: &str = "order-saga";

/// The function's name: the `service` of its logs and metrics.
pub const SERVICE: &str = "order-saga";

/// The step an answer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub action: Action,
}

/// What a step does to its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Move a `PENDING` order to `status` (`CONFIRMED` or `REJECTED`).
    Decide {
        status: OrderStatus,
        reason: Option<String>,
    },
    /// The inventory released what the order held: its cancellation is settled.
    Released,
}

/// The longest reason stored (the column allows 2000 characters).
const MAX_REASON_CHARS: usize = 1000;

/// The step `record` asks for; `Err` is why it never can be handled.
pub fn decode(record: &StreamRecord) -> Result<Step, String> {
    let event = &record.event;
    let event_id = event.event_id.as_uuid();
    match (event.event_type.as_str(), event.schema_version) {
        (INVENTORY_RESERVED, InventoryReservedV1::SCHEMA_VERSION) => {
            let e: InventoryReservedV1 = event
                .payload
                .decode()
                .map_err(|e| format!("invalid {INVENTORY_RESERVED} payload: {e}"))?;
            Ok(Step {
                event_id,
                order_id: e.order_id,
                action: Action::Decide {
                    status: OrderStatus::Confirmed,
                    reason: None,
                },
            })
        }
        (INVENTORY_REJECTED, InventoryRejectedV1::SCHEMA_VERSION) => {
            let e: InventoryRejectedV1 = event
                .payload
                .decode()
                .map_err(|e| format!("invalid {INVENTORY_REJECTED} payload: {e}"))?;
            Ok(Step {
                event_id,
                order_id: e.order_id,
                action: Action::Decide {
                    status: OrderStatus::Rejected,
                    reason: Some(e.reason.chars().take(MAX_REASON_CHARS).collect()),
                },
            })
        }
        (INVENTORY_RELEASED, InventoryReleasedV1::SCHEMA_VERSION) => {
            let e: InventoryReleasedV1 = event
                .payload
                .decode()
                .map_err(|e| format!("invalid {INVENTORY_RELEASED} payload: {e}"))?;
            Ok(Step {
                event_id,
                order_id: e.order_id,
                action: Action::Released,
            })
        }
        (INVENTORY_RESERVED | INVENTORY_REJECTED | INVENTORY_RELEASED, v) => Err(format!(
            "unsupported schema version {v} of {}",
            event.event_type
        )),
        (other, _) => Err(format!("unknown event type {other:?}")),
    }
}

/// The batch handler.
#[derive(Debug, Clone)]
pub struct Saga {
    pub pool: PgPool,
}

impl BatchHandler for Saga {
    async fn handle(&self, batch: StreamBatch) -> Result<BatchResponse, HandlerError> {
        Ok(
            decode_and_apply(&batch.records, decode, |steps: Vec<Step>| async move {
                match apply(&self.pool, &steps).await {
                    Ok(_) => vec![RecordOutcome::Done; steps.len()],
                    // The database is away: the event source waits it out
                    // without using up the events' attempts (and logs it once).
                    Err(e) if e.is_outage() => {
                        debug!(error = %e, steps = steps.len(), "the database is unavailable");
                        vec![RecordOutcome::Outage(e.to_string()); steps.len()]
                    }
                    Err(e) => {
                        warn!(error = %e, steps = steps.len(), "applying saga steps failed");
                        // Even a permanent error is retried: status updates cannot
                        // violate a constraint, so it is a bug or a hand edit, and the
                        // events go to the dead-letter stream only after the retries.
                        vec![RecordOutcome::Retry(e.to_string()); steps.len()]
                    }
                }
            })
            .await,
        )
    }
}

/// Applies `steps` in one transaction; returns how many orders changed.
pub async fn apply(pool: &PgPool, steps: &[Step]) -> Result<u64, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| StoreError::database("starting a transaction", e))?;
    let event_ids: Vec<Uuid> = steps.iter().map(|s| s.event_id).collect();
    let fresh = inbox::record(&mut tx, &order_service::INBOX, GROUP, &event_ids).await?;
    // The first answer about an order decides; later ones find it no longer PENDING.
    let mut orders = HashSet::new();
    let (mut ids, mut statuses, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
    let mut released = Vec::new();
    for step in steps.iter().filter(|s| fresh.contains(&s.event_id)) {
        match &step.action {
            Action::Decide { status, reason } => {
                if orders.insert(step.order_id) {
                    ids.push(step.order_id);
                    statuses.push(status.as_str().to_owned());
                    reasons.push(reason.clone().unwrap_or_default());
                }
            }
            Action::Released => released.push(step.order_id),
        }
    }
    if !released.is_empty() {
        order_service::orders::confirm_released(&mut tx, &released).await?;
    }
    let changed = if ids.is_empty() {
        0
    } else {
        order_service::orders::decide_pending(&mut tx, &ids, &statuses, &reasons).await?
    };
    tx.commit()
        .await
        .map_err(|e| StoreError::database("committing saga steps", e))?;
    debug!(
        steps = steps.len(),
        fresh = fresh.len(),
        changed,
        "saga steps applied"
    );
    Ok(changed)
}

/// What an invocation borrows: the event source and the handler, built once.
pub type Deps = Consumer<Saga>;

/// Consumer group `order-saga` on the `Reservation` streams.
impl ConsumerFunction for Saga {
    const SERVICE: &'static str = SERVICE;
    const GROUP: &'static str = GROUP;
    const AGGREGATES: &'static [&'static str] = &[RESERVATION_AGGREGATE];

    fn new(config: &ConsumerConfig, _env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            pool: shared::db::lazy_pool(&config.database),
        })
    }
}
