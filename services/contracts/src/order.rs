use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use shared::value::InvalidValue;

use crate::{CustomerId, Money, OrderId, Quantity, Sku};

/// The most lines one order may have.
pub const MAX_ORDER_LINES: usize = 100;

/// Where an order stands in its saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Rejected => "REJECTED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

impl FromStr for OrderStatus {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "PENDING" => Ok(Self::Pending),
            "CONFIRMED" => Ok(Self::Confirmed),
            "REJECTED" => Ok(Self::Rejected),
            "CANCELLED" => Ok(Self::Cancelled),
            other => Err(InvalidValue::new(format!("unknown order status {other:?}"))),
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price: Money,
}

impl OrderLine {
    /// `quantity × unit price`; cannot overflow within the accepted bounds.
    pub fn line_total(&self) -> Option<Money> {
        self.unit_price.checked_mul(self.quantity)
    }
}

/// Why a set of lines is not an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NewOrderError {
    #[error("an order needs at least one line")]
    NoLines,
    #[error("an order may have at most {MAX_ORDER_LINES} lines (got {0})")]
    TooManyLines(usize),
    #[error("SKU {sku} appears on more than one line; put its whole quantity on one line")]
    DuplicateSku { index: usize, sku: Sku },
    #[error("the order total does not fit in 64 bits")]
    TotalOverflow,
}

/// A valid order that is not yet stored: non-empty, at most [`MAX_ORDER_LINES`]
/// lines, each SKU once, and a total computed here from the lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    id: OrderId,
    customer_id: CustomerId,
    lines: Vec<OrderLine>,
    total: Money,
    created_at: OffsetDateTime,
}

impl NewOrder {
    pub fn new(
        customer_id: CustomerId,
        lines: Vec<OrderLine>,
        created_at: OffsetDateTime,
    ) -> Result<Self, NewOrderError> {
        if lines.is_empty() {
            return Err(NewOrderError::NoLines);
        }
        if lines.len() > MAX_ORDER_LINES {
            return Err(NewOrderError::TooManyLines(lines.len()));
        }
        let mut seen = HashSet::with_capacity(lines.len());
        for (index, line) in lines.iter().enumerate() {
            if !seen.insert(&line.sku) {
                return Err(NewOrderError::DuplicateSku {
                    index,
                    sku: line.sku.clone(),
                });
            }
        }
        let total = lines.iter().try_fold(Money::ZERO, |sum, line| {
            line.line_total().and_then(|t| sum.checked_add(t))
        });
        let total = total.ok_or(NewOrderError::TotalOverflow)?;
        Ok(Self {
            id: OrderId::new(),
            customer_id,
            lines,
            total,
            created_at,
        })
    }

    pub fn id(&self) -> OrderId {
        self.id
    }
    pub fn customer_id(&self) -> &CustomerId {
        &self.customer_id
    }
    pub fn lines(&self) -> &[OrderLine] {
        &self.lines
    }
    pub fn total(&self) -> Money {
        self.total
    }
    pub fn created_at(&self) -> OffsetDateTime {
        self.created_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, qty: i64, cents: i64) -> OrderLine {
        OrderLine {
            sku: Sku::parse(sku).expect("valid sku"),
            quantity: Quantity::try_from(qty).expect("valid qty"),
            unit_price: Money::unit_price(cents).expect("valid price"),
        }
    }

    fn customer() -> CustomerId {
        CustomerId::parse("c-1").expect("valid customer")
    }

    #[test]
    fn total_is_computed_from_the_lines() {
        let order = NewOrder::new(
            customer(),
            vec![line("A", 2, 1999), line("B", 1, 1)],
            OffsetDateTime::UNIX_EPOCH,
        )
        .expect("valid order");
        assert_eq!(order.total().cents(), 3999);
    }

    #[test]
    fn empty_duplicate_and_oversized_orders_are_refused() {
        let at = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(
            NewOrder::new(customer(), vec![], at),
            Err(NewOrderError::NoLines)
        );
        let dup = NewOrder::new(customer(), vec![line("A", 1, 1), line("A", 2, 1)], at);
        assert!(matches!(
            dup,
            Err(NewOrderError::DuplicateSku { index: 1, .. })
        ));
        let many = (0..=MAX_ORDER_LINES)
            .map(|i| line(&format!("S{i}"), 1, 1))
            .collect();
        assert_eq!(
            NewOrder::new(customer(), many, at),
            Err(NewOrderError::TooManyLines(MAX_ORDER_LINES + 1))
        );
    }

    #[test]
    fn the_largest_possible_order_does_not_overflow() {
        let lines = (0..MAX_ORDER_LINES)
            .map(|i| line(&format!("S{i}"), Quantity::MAX, Money::MAX_UNIT_PRICE))
            .collect();
        let order = NewOrder::new(customer(), lines, OffsetDateTime::UNIX_EPOCH).expect("fits");
        assert_eq!(order.total().cents(), 100 * 1000 * Money::MAX_UNIT_PRICE);
    }
}
