use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use super::{check_identifier, InvalidValue};

/// A UUID v7 id: new ids sort by creation time; any UUID parses, so ids minted
/// elsewhere stay valid.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn parse(value: &str) -> Result<Self, InvalidValue> {
                Uuid::try_parse(value)
                    .map(Self)
                    .map_err(|_| InvalidValue::new(concat!($what, " must be a UUID")))
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(value: Uuid) -> Self {
                Self(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// An order's id.
    OrderId,
    "an order id"
);
uuid_id!(
    /// An event's id; consumers' inboxes are keyed by it.
    EventId,
    "an event id"
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
