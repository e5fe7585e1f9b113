//! The order saga's consumer: reads the participants' answers (the
//! `Reservation` streams of the inventory, the `Credit` streams of the customer
//! service) as consumer group `order-saga`, and moves each order on:
//!
//! - an order is `CONFIRMED` once every participant ([`PARTICIPANTS`]) has
//!   reserved for it, in whatever order the answers arrive;
//! - the first refusal makes a `PENDING` order `REJECTED` with that
//!   participant's reason, and sends its compensation, an `OrderCancelled`, so
//!   that every participant releases what it holds for the order;
//! - an order that moved on (cancelled or rejected meanwhile) keeps its status;
//! - a compensation (a cancellation, a rejection) is settled once every
//!   participant confirmed its release (`InventoryReleased`, `CreditReleased`),
//!   and the reconciler stops sending it again.
//!
//! Each batch commits its inbox rows with its orders' changes and its
//! compensations, so an event delivered twice changes nothing. The decision
//! ([`decide`]) is pure; [`apply`] loads, decides and writes.

use std::collections::{BTreeMap, HashSet};

use contracts::events::{
    CreditRejectedV1, CreditReleasedV1, CreditReservedV1, InventoryRejectedV1, InventoryReleasedV1,
    InventoryReservedV1, OrderCancelledV1, CREDIT_AGGREGATE, CREDIT_REJECTED, CREDIT_RELEASED,
    CREDIT_RESERVED, INVENTORY_REJECTED, INVENTORY_RELEASED, INVENTORY_RESERVED,
    RESERVATION_AGGREGATE,
};
use contracts::{OrderId, OrderStatus};
use order_service::orders::{self, SagaOrder};
use shared::config::{ConfigError, Env};
use shared::envelope::EventEnvelope;
use shared::source::{
    decode_and_apply, BatchHandler, BatchResponse, Consumer, ConsumerConfig, HandlerError,
    RecordOutcome, StreamBatch, StreamRecord,
};
use shared::trace::TraceParent;
use shared::{inbox, outbox, StoreError};
use stream_consumer::ConsumerFunction;

use sqlx::PgPool;
use tracing::{debug, warn};
use uuid::Uuid;

/// The consumer group, and the consumer's name in the inbox.
pub const GROUP: &str = "order-saga";

/// The function's name: the `service` of its logs and metrics.
pub const SERVICE: &str = "order-saga";

/// The inventory service, a participant.
pub const INVENTORY: &str = "inventory";
/// The customer service (credit), a participant.
pub const CUSTOMERS: &str = "customers";
/// Every participant of the saga: an order is confirmed when all reserved.
pub const PARTICIPANTS: [&str; 2] = [INVENTORY, CUSTOMERS];

/// The step an answer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub event_id: Uuid,
    pub order_id: Uuid,
    /// Who answered: one of [`PARTICIPANTS`].
    pub participant: &'static str,
    pub answer: Answer,
}

/// A participant's answer about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It holds what the order needs.
    Reserved,
    /// It refused the order, and why.
    Rejected { reason: String },
    /// It released what the order held (or held nothing), as a compensation asked.
    Released,
}

/// The longest reason stored (the column allows 2000 characters).
const MAX_REASON_CHARS: usize = 1000;

fn payload<T: serde::de::DeserializeOwned>(record: &StreamRecord) -> Result<T, String> {
    let event = &record.event;
    event
        .payload
        .decode()
        .map_err(|e| format!("invalid {} payload: {e}", event.event_type))
}

fn rejected(reason: &str) -> Answer {
    Answer::Rejected {
        reason: reason.chars().take(MAX_REASON_CHARS).collect(),
    }
}

/// The step `record` asks for; `Err` is why it never can be handled.
pub fn decode(record: &StreamRecord) -> Result<Step, String> {
    let event = &record.event;
    let step = |participant, order_id, answer| Step {
        event_id: event.event_id.as_uuid(),
        order_id,
        participant,
        answer,
    };
    let v = event.schema_version;
    match event.event_type.as_str() {
        INVENTORY_RESERVED if v == InventoryReservedV1::SCHEMA_VERSION => {
            let e: InventoryReservedV1 = payload(record)?;
            Ok(step(INVENTORY, e.order_id, Answer::Reserved))
        }
        INVENTORY_REJECTED if v == InventoryRejectedV1::SCHEMA_VERSION => {
            let e: InventoryRejectedV1 = payload(record)?;
            Ok(step(INVENTORY, e.order_id, rejected(&e.reason)))
        }
        INVENTORY_RELEASED if v == InventoryReleasedV1::SCHEMA_VERSION => {
            let e: InventoryReleasedV1 = payload(record)?;
            Ok(step(INVENTORY, e.order_id, Answer::Released))
        }
        CREDIT_RESERVED if v == CreditReservedV1::SCHEMA_VERSION => {
            let e: CreditReservedV1 = payload(record)?;
            Ok(step(CUSTOMERS, e.order_id, Answer::Reserved))
        }
        CREDIT_REJECTED if v == CreditRejectedV1::SCHEMA_VERSION => {
            let e: CreditRejectedV1 = payload(record)?;
            Ok(step(CUSTOMERS, e.order_id, rejected(&e.reason)))
        }
        CREDIT_RELEASED if v == CreditReleasedV1::SCHEMA_VERSION => {
            let e: CreditReleasedV1 = payload(record)?;
            Ok(step(CUSTOMERS, e.order_id, Answer::Released))
        }
        INVENTORY_RESERVED | INVENTORY_REJECTED | INVENTORY_RELEASED | CREDIT_RESERVED
        | CREDIT_REJECTED | CREDIT_RELEASED => Err(format!(
            "unsupported schema version {v} of {}",
            event.event_type
        )),
        other => Err(format!("unknown event type {other:?}")),
    }
}

/// What one step did to its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing changed (a late or repeated answer, an order moved on).
    None,
    /// The participant's answer was noted; the order waits for the others.
    Noted,
    /// Every participant reserved: the order is `CONFIRMED`.
    Confirmed,
    /// The order is `REJECTED`: its compensation must be sent.
    Rejected,
    /// Every participant released: the compensation is settled.
    Settled,
}

/// The decision on one step, pure: moves `order` on by `step`'s answer. A
/// rejection leaves `order.awaiting_release` for the caller to fill with the
/// compensation it sends (see [`Effect::Rejected`]).
pub fn decide(order: &mut SagaOrder, step: &Step) -> Effect {
    let participant = step.participant.to_owned();
    match &step.answer {
        Answer::Reserved => {
            if order.reserved_by.contains(&participant) {
                return Effect::None;
            }
            order.reserved_by.push(participant);
            let all = PARTICIPANTS
                .iter()
                .all(|p| order.reserved_by.iter().any(|r| r == p));
            if order.status == OrderStatus::Pending && all {
                order.status = OrderStatus::Confirmed;
                Effect::Confirmed
            } else {
                Effect::Noted
            }
        }
        Answer::Rejected { reason } => {
            if order.status != OrderStatus::Pending {
                return Effect::None;
            }
            order.status = OrderStatus::Rejected;
            order.status_reason = Some(reason.clone());
            Effect::Rejected
        }
        Answer::Released => {
            if order.released_by.contains(&participant) {
                return Effect::None;
            }
            order.released_by.push(participant);
            let all = PARTICIPANTS
                .iter()
                .all(|p| order.released_by.iter().any(|r| r == p));
            if all && order.awaiting_release.take().is_some() {
                // The event id stays in `cancel_event_id`; only the wait ends.
                Effect::Settled
            } else {
                Effect::Noted
            }
        }
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

/// What a batch of steps did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub confirmed: usize,
    pub rejected: usize,
    pub settled: usize,
}

/// Applies `steps` in one transaction: load (inbox, orders locked), decide,
/// write (orders, compensations in the order service's outbox).
pub async fn apply(pool: &PgPool, steps: &[Step]) -> Result<Applied, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| StoreError::database("starting a transaction", e))?;
    let event_ids: Vec<Uuid> = steps.iter().map(|s| s.event_id).collect();
    let fresh = inbox::record(&mut tx, &order_service::INBOX, GROUP, &event_ids).await?;
    let mut ids: Vec<Uuid> = steps
        .iter()
        .filter(|s| fresh.contains(&s.event_id))
        .map(|s| s.order_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut orders: BTreeMap<Uuid, SagaOrder> = orders::lock_for_saga(&mut tx, &ids)
        .await?
        .into_iter()
        .map(|o| (o.id, o))
        .collect();
    let mut applied = Applied::default();
    let mut changed: HashSet<Uuid> = HashSet::new();
    let mut compensations: Vec<EventEnvelope> = Vec::new();
    for step in steps.iter().filter(|s| fresh.contains(&s.event_id)) {
        let Some(order) = orders.get_mut(&step.order_id) else {
            // An answer about an order this service does not have (deleted by
            // hand, or another deployment's): nothing to move on.
            warn!(order_id = %step.order_id, "an answer about an unknown order");
            continue;
        };
        match decide(order, step) {
            Effect::None => continue,
            Effect::Noted => {}
            Effect::Confirmed => applied.confirmed += 1,
            Effect::Settled => applied.settled += 1,
            Effect::Rejected => {
                applied.rejected += 1;
                let event = compensation(order)?;
                order.awaiting_release = Some((event.event_id.as_uuid(), event.occurred_at));
                compensations.push(event);
            }
        }
        changed.insert(step.order_id);
    }
    let to_write: Vec<SagaOrder> = orders
        .into_values()
        .filter(|o| changed.contains(&o.id))
        .collect();
    orders::write_saga(&mut tx, &to_write).await?;
    outbox::append_all(&mut tx, &order_service::OUTBOX, &compensations).await?;
    tx.commit()
        .await
        .map_err(|e| StoreError::database("committing saga steps", e))?;
    debug!(
        steps = steps.len(),
        fresh = fresh.len(),
        ?applied,
        "saga steps applied"
    );
    Ok(applied)
}

/// The compensation of a rejected order: its `OrderCancelled`, in the order's
/// trace, at a time the database keeps exactly (microseconds), so that the
/// reconciler's copy of it is the same event.
fn compensation(order: &SagaOrder) -> Result<EventEnvelope, StoreError> {
    let traceparent = order
        .traceparent
        .as_deref()
        .and_then(|tp| TraceParent::parse(tp).ok());
    let mut event = OrderCancelledV1::envelope(OrderId::from(order.id), traceparent)
        .map_err(|e| StoreError::corrupt("building a compensation", e))?;
    let at = event.occurred_at;
    event.occurred_at = at
        .replace_nanosecond(at.nanosecond() / 1000 * 1000)
        .unwrap_or(at);
    Ok(event)
}

/// What an invocation borrows: the event source and the handler, built once.
pub type Deps = Consumer<Saga>;

/// Consumer group `order-saga` on the participants' streams.
impl ConsumerFunction for Saga {
    const SERVICE: &'static str = SERVICE;
    const GROUP: &'static str = GROUP;
    const AGGREGATES: &'static [&'static str] = &[RESERVATION_AGGREGATE, CREDIT_AGGREGATE];

    fn new(config: &ConsumerConfig, _env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            pool: shared::db::lazy_pool(&config.database),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> SagaOrder {
        SagaOrder {
            id: Uuid::from_u128(1),
            status: OrderStatus::Pending,
            status_reason: None,
            reserved_by: Vec::new(),
            released_by: Vec::new(),
            awaiting_release: None,
            traceparent: None,
        }
    }

    fn step(participant: &'static str, answer: Answer) -> Step {
        Step {
            event_id: shared::value::EventId::new().as_uuid(),
            order_id: Uuid::from_u128(1),
            participant,
            answer,
        }
    }

    fn no(reason: &str) -> Answer {
        Answer::Rejected {
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn an_order_is_confirmed_only_when_every_participant_reserved() {
        for first in PARTICIPANTS {
            let second = PARTICIPANTS.iter().find(|p| **p != first).copied();
            let second = second.expect("two participants");
            let mut order = pending();
            assert_eq!(
                decide(&mut order, &step(first, Answer::Reserved)),
                Effect::Noted
            );
            assert_eq!(order.status, OrderStatus::Pending);
            assert_eq!(
                decide(&mut order, &step(first, Answer::Reserved)),
                Effect::None,
                "the same participant twice is once"
            );
            assert_eq!(order.status, OrderStatus::Pending);
            assert_eq!(
                decide(&mut order, &step(second, Answer::Reserved)),
                Effect::Confirmed
            );
            assert_eq!(order.status, OrderStatus::Confirmed);
        }
    }

    #[test]
    fn the_first_refusal_rejects_whatever_the_order_of_the_answers() {
        // Refused before the other reserved.
        let mut order = pending();
        assert_eq!(
            decide(&mut order, &step(CUSTOMERS, no("no credit"))),
            Effect::Rejected
        );
        assert_eq!(
            decide(&mut order, &step(INVENTORY, Answer::Reserved)),
            Effect::Noted
        );
        assert_eq!(order.status, OrderStatus::Rejected);
        assert_eq!(order.status_reason.as_deref(), Some("no credit"));
        // Refused after the other reserved.
        let mut order = pending();
        decide(&mut order, &step(INVENTORY, Answer::Reserved));
        assert_eq!(
            decide(&mut order, &step(CUSTOMERS, no("no credit"))),
            Effect::Rejected
        );
        // Both refuse: the first reason stays, one compensation.
        let mut order = pending();
        decide(&mut order, &step(INVENTORY, no("no stock")));
        assert_eq!(
            decide(&mut order, &step(CUSTOMERS, no("no credit"))),
            Effect::None
        );
        assert_eq!(order.status_reason.as_deref(), Some("no stock"));
    }

    #[test]
    fn a_cancelled_order_stays_cancelled() {
        let mut order = pending();
        order.status = OrderStatus::Cancelled;
        decide(&mut order, &step(INVENTORY, Answer::Reserved));
        decide(&mut order, &step(CUSTOMERS, Answer::Reserved));
        assert_eq!(
            decide(&mut order, &step(INVENTORY, no("late"))),
            Effect::None
        );
        assert_eq!(order.status, OrderStatus::Cancelled);
    }

    #[test]
    fn a_compensation_is_settled_once_every_participant_released() {
        let mut order = pending();
        order.status = OrderStatus::Rejected;
        let at = time::OffsetDateTime::UNIX_EPOCH;
        order.awaiting_release = Some((Uuid::from_u128(9), at));
        assert_eq!(
            decide(&mut order, &step(INVENTORY, Answer::Released)),
            Effect::Noted
        );
        assert!(order.awaiting_release.is_some());
        assert_eq!(
            decide(&mut order, &step(INVENTORY, Answer::Released)),
            Effect::None
        );
        assert_eq!(
            decide(&mut order, &step(CUSTOMERS, Answer::Released)),
            Effect::Settled
        );
        assert_eq!(order.awaiting_release, None);
    }

    #[test]
    fn a_compensation_is_an_order_cancelled_the_database_keeps_exactly() {
        let event = compensation(&pending()).expect("an event");
        assert_eq!(event.event_type.as_str(), "OrderCancelled");
        assert_eq!(event.occurred_at.nanosecond() % 1000, 0);
    }
}
