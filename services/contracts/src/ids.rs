use std::fmt;
use std::str::FromStr;

use shared::value::{check_identifier, InvalidValue};

shared::uuid_id!(
    /// An order's id.
    OrderId,
    "an order id"
);

/// The customer an order belongs to: 1 to 64 of ASCII letters, digits and `-_.:@`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomerId(String);

impl CustomerId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Result<Self, InvalidValue> {
        check_identifier("a customer id", value, Self::MAX_LEN)?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CustomerId {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_sort_by_creation() {
        let first = OrderId::new();
        let second = OrderId::new();
        assert!(first < second);
    }

    #[test]
    fn order_id_rejects_non_uuids() {
        assert!(OrderId::parse("not-a-uuid").is_err());
        assert!(OrderId::parse("").is_err());
        let id = OrderId::new();
        assert_eq!(OrderId::parse(&id.to_string()), Ok(id));
    }

    #[test]
    fn customer_id_is_a_short_safe_identifier() {
        assert!(CustomerId::parse("cust-42").is_ok());
        assert!(CustomerId::parse("a@b.example:7").is_ok());
        assert!(CustomerId::parse("").is_err());
        assert!(CustomerId::parse(&"x".repeat(65)).is_err());
        assert!(CustomerId::parse("'; DROP TABLE orders; --").is_err());
        assert!(CustomerId::parse("with space").is_err());
        assert!(CustomerId::parse("naïve").is_err());
    }
}
