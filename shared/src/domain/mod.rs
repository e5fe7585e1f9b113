//! Domain values. Each has a private field and is built only through `parse` /
//! `TryFrom`, so holding one proves it is valid: code past the edge never
//! re-validates.

mod ids;
mod money;
mod order;
mod quantity;
mod sku;

pub use ids::{CustomerId, EventId, OrderId};
pub use money::Money;
pub use order::{NewOrder, NewOrderError, OrderLine, OrderStatus, MAX_ORDER_LINES};
pub use quantity::Quantity;
pub use sku::Sku;

/// Why a value was refused: a sentence a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub(crate) String);

impl InvalidValue {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Checks a short identifier made of visible ASCII letters, digits and `-_.:@`.
/// Such values are safe in logs, URLs and Redis stream fields as they are.
pub(crate) fn check_identifier(
    what: &str,
    value: &str,
    max_len: usize,
) -> Result<(), InvalidValue> {
    if value.is_empty() {
        return Err(InvalidValue::new(format!("{what} must not be empty")));
    }
    if value.len() > max_len {
        return Err(InvalidValue::new(format!(
            "{what} must be at most {max_len} characters"
        )));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')))
    {
        return Err(InvalidValue::new(format!(
            "{what} may hold only ASCII letters, digits and - _ . : @ (found {bad:?})"
        )));
    }
    Ok(())
}
