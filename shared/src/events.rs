//! The payloads of the events the services exchange, with their type names and
//! schema versions. A consumer decodes a payload only after checking both.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{InvalidValue, NewOrder};
use crate::envelope::{AggregateId, AggregateType, EventEnvelope, EventType, Payload};
use crate::trace::TraceParent;

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
