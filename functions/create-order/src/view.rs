//! The order as the API shows it.

use order_service::orders::Order;
use serde::Serialize;
use shared::envelope::format_timestamp;

/// `{"id","customer_id","status","items":[...],"total_cents","created_at"}`, and
/// `"status_reason"` when the status has one (e.g. why the order was rejected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderView {
    pub id: String,
    pub customer_id: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub items: Vec<OrderItemView>,
    pub total_cents: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderItemView {
    pub sku: String,
    pub quantity: u16,
    pub unit_price_cents: i64,
    pub line_total_cents: i64,
}

impl From<&Order> for OrderView {
    fn from(order: &Order) -> Self {
        Self {
            id: order.id.to_string(),
            customer_id: order.customer_id.to_string(),
            status: order.status.as_str(),
            status_reason: order.status_reason.clone(),
            items: order
                .lines
                .iter()
                .map(|l| OrderItemView {
                    sku: l.sku.to_string(),
                    quantity: l.quantity.get(),
                    unit_price_cents: l.unit_price.cents(),
                    // Bounded by validation (see Money::MAX_UNIT_PRICE); never overflows.
                    line_total_cents: l.line_total().map_or(i64::MAX, |m| m.cents()),
                })
                .collect(),
            total_cents: order.total.cents(),
            created_at: format_timestamp(order.created_at),
        }
    }
}
