//! The payloads of the events the services exchange, with their type names and
//! schema versions. A consumer decodes a payload only after checking both.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use shared::value::InvalidValue;

use crate::{NewOrder, OrderId};
use shared::envelope::{AggregateId, AggregateType, EventEnvelope, EventType, Payload};
use shared::trace::TraceParent;

/// Schema version 1 of a payload about one order, and its envelope: an event of
/// `$event_type` on the `$aggregate` aggregate whose id is the order's.
macro_rules! order_event {
    ($payload:ty, $event_type:expr, $aggregate:expr) => {
        impl $payload {
            pub const SCHEMA_VERSION: u32 = 1;

            pub fn envelope(
                &self,
                traceparent: Option<TraceParent>,
            ) -> Result<EventEnvelope, InvalidValue> {
                event(
                    $event_type,
                    Self::SCHEMA_VERSION,
                    $aggregate,
                    OrderId::from(self.order_id),
                    self,
                    traceparent,
                )
            }
        }
    };
}

/// The aggregate type of every order event.
pub const ORDER_AGGREGATE: &str = "Order";
pub const ORDER_CREATED: &str = "OrderCreated";

/// `OrderCreated`, schema version 1: a new order was accepted, status `PENDING`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreatedV1 {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<OrderCreatedItemV1>,
    pub total_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreatedItemV1 {
    pub sku: String,
    pub quantity: u16,
    pub unit_price_cents: i64,
}

impl OrderCreatedV1 {
    pub const SCHEMA_VERSION: u32 = 1;

    pub fn of(order: &NewOrder) -> Self {
        Self {
            order_id: order.id().as_uuid(),
            customer_id: order.customer_id().to_string(),
            items: order
                .lines()
                .iter()
                .map(|l| OrderCreatedItemV1 {
                    sku: l.sku.to_string(),
                    quantity: l.quantity.get(),
                    unit_price_cents: l.unit_price.cents(),
                })
                .collect(),
            total_cents: order.total().cents(),
        }
    }

    /// The envelope that announces `order`, caused by the request traced by `traceparent`.
    pub fn envelope(
        order: &NewOrder,
        traceparent: Option<TraceParent>,
    ) -> Result<EventEnvelope, InvalidValue> {
        let payload = Payload::of(&Self::of(order))?;
        let mut event = EventEnvelope::new(
            EventType::parse(ORDER_CREATED)?,
            Self::SCHEMA_VERSION,
            AggregateType::parse(ORDER_AGGREGATE)?,
            AggregateId::parse(&order.id().to_string())?,
            traceparent,
            payload,
        );
        event.occurred_at = order.created_at();
        Ok(event)
    }
}

pub const ORDER_CANCELLED: &str = "OrderCancelled";

/// `OrderCancelled`, schema version 1: the order service's compensation
/// request. Sent when a customer cancels a `PENDING` or `CONFIRMED` order, and
/// when an order is rejected (a participant refused it, or it timed out): every
/// participant of the saga (inventory, customers) releases what it reserved for
/// the order, answers that it did, and reserves nothing for a later
/// `OrderCreated` of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelledV1 {
    pub order_id: Uuid,
}

impl OrderCancelledV1 {
    pub const SCHEMA_VERSION: u32 = 1;

    pub fn envelope(
        order_id: OrderId,
        traceparent: Option<TraceParent>,
    ) -> Result<EventEnvelope, InvalidValue> {
        event(
            ORDER_CANCELLED,
            Self::SCHEMA_VERSION,
            ORDER_AGGREGATE,
            order_id,
            &Self {
                order_id: order_id.as_uuid(),
            },
            traceparent,
        )
    }
}

/// The aggregate type of the inventory service's answers about one order's
/// reservation; the aggregate id is the order id, so the answers about one order
/// stay in order.
pub const RESERVATION_AGGREGATE: &str = "Reservation";
pub const INVENTORY_RESERVED: &str = "InventoryReserved";
pub const INVENTORY_REJECTED: &str = "InventoryRejected";

/// `InventoryReserved`, schema version 1: every line of the order is reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReservedV1 {
    pub order_id: Uuid,
    pub items: Vec<ReservedItemV1>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedItemV1 {
    pub sku: String,
    pub quantity: u16,
}

order_event!(
    InventoryReservedV1,
    INVENTORY_RESERVED,
    RESERVATION_AGGREGATE
);

/// `InventoryRejected`, schema version 1: nothing was reserved, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryRejectedV1 {
    pub order_id: Uuid,
    /// For people: e.g. `insufficient stock for WIDGET-1: requested 3, available 1`.
    pub reason: String,
    /// For programs: the lines that could not be reserved.
    pub shortages: Vec<ShortageV1>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShortageV1 {
    pub sku: String,
    pub requested: u16,
    /// What was available; 0 for a SKU the inventory does not know.
    pub available: i64,
}

order_event!(
    InventoryRejectedV1,
    INVENTORY_REJECTED,
    RESERVATION_AGGREGATE
);

pub const INVENTORY_RELEASED: &str = "InventoryReleased";

/// `InventoryReleased`, schema version 1: the inventory has applied an
/// `OrderCancelled`: whatever it held for the order is released, and a later
/// `OrderCreated` of the order reserves nothing. The order service stops
/// re-sending the cancellation once it has this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReleasedV1 {
    pub order_id: Uuid,
    /// The lines that were released; empty when the order held nothing.
    pub items: Vec<ReservedItemV1>,
}

order_event!(
    InventoryReleasedV1,
    INVENTORY_RELEASED,
    RESERVATION_AGGREGATE
);

/// What an event of the `Order` streams asks a participant of the order saga:
/// to reserve for a new order, or to release what it holds for one (the
/// compensation). Every participant decodes the streams the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderRequest {
    Created(OrderCreatedV1),
    Cancelled(OrderCancelledV1),
}

impl OrderRequest {
    /// The request `event` carries; `Err` says why it never can be one (an
    /// unknown type or schema version, an invalid payload).
    pub fn decode(event: &EventEnvelope) -> Result<Self, String> {
        let invalid = |e: serde_json::Error| format!("invalid {} payload: {e}", event.event_type);
        match (event.event_type.as_str(), event.schema_version) {
            (ORDER_CREATED, OrderCreatedV1::SCHEMA_VERSION) => {
                event.payload.decode().map(Self::Created).map_err(invalid)
            }
            (ORDER_CANCELLED, OrderCancelledV1::SCHEMA_VERSION) => {
                event.payload.decode().map(Self::Cancelled).map_err(invalid)
            }
            (ORDER_CREATED | ORDER_CANCELLED, v) => Err(format!(
                "unsupported schema version {v} of {}",
                event.event_type
            )),
            (other, _) => Err(format!("unknown event type {other:?}")),
        }
    }
}

/// The aggregate type of the customer service's answers about one order's
/// credit; the aggregate id is the order id, so the answers about one order
/// stay in order.
pub const CREDIT_AGGREGATE: &str = "Credit";
pub const CREDIT_RESERVED: &str = "CreditReserved";
pub const CREDIT_REJECTED: &str = "CreditRejected";
pub const CREDIT_RELEASED: &str = "CreditReleased";

/// `CreditReserved`, schema version 1: the order's total is held against the
/// customer's credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditReservedV1 {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_cents: i64,
}

/// `CreditRejected`, schema version 1: nothing was reserved, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditRejectedV1 {
    pub order_id: Uuid,
    pub customer_id: String,
    /// For people: e.g. `insufficient credit for cust-1: the order needs 5000
    /// cents, 1200 are available (short by 3800)`.
    pub reason: String,
    /// For programs: how much credit was missing (0 when the order was refused
    /// for another reason).
    pub shortfall_cents: i64,
}

/// `CreditReleased`, schema version 1: the customer service has applied an
/// `OrderCancelled`: what it held for the order is released,
/// and a later `OrderCreated` of the order reserves nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditReleasedV1 {
    pub order_id: Uuid,
    /// What was released; 0 when the order held nothing.
    pub amount_cents: i64,
}

order_event!(CreditReservedV1, CREDIT_RESERVED, CREDIT_AGGREGATE);
order_event!(CreditRejectedV1, CREDIT_REJECTED, CREDIT_AGGREGATE);
order_event!(CreditReleasedV1, CREDIT_RELEASED, CREDIT_AGGREGATE);

fn event(
    event_type: &str,
    schema_version: u32,
    aggregate_type: &str,
    aggregate_id: OrderId,
    payload: &impl Serialize,
    traceparent: Option<TraceParent>,
) -> Result<EventEnvelope, InvalidValue> {
    Ok(EventEnvelope::new(
        EventType::parse(event_type)?,
        schema_version,
        AggregateType::parse(aggregate_type)?,
        AggregateId::parse(&aggregate_id.to_string())?,
        traceparent,
        Payload::of(payload)?,
    ))
}
