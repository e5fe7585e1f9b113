use std::fmt;

use shared::value::InvalidValue;

use crate::Quantity;

/// An amount of money in integer minor units (cents). Never negative, never a
/// float; arithmetic is checked, so an overflow is an error, not a wrong total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);
    /// The largest unit price accepted from a client: 10^10 cents (100 million).
    /// With at most 100 lines of at most 1000 units, no order total can overflow.
    pub const MAX_UNIT_PRICE: i64 = 10_000_000_000;

    /// A unit price as a client may send it: 0 to [`Money::MAX_UNIT_PRICE`] cents.
    pub fn unit_price(cents: i64) -> Result<Self, InvalidValue> {
        if cents < 0 {
            return Err(InvalidValue::new(format!(
                "a price must not be negative (got {cents})"
            )));
        }
        if cents > Self::MAX_UNIT_PRICE {
            return Err(InvalidValue::new(format!(
                "a unit price must be at most {} cents (got {cents})",
                Self::MAX_UNIT_PRICE
            )));
        }
        Ok(Self(cents))
    }

    /// Any non-negative amount, e.g. a total read back from storage.
    pub fn from_cents(cents: i64) -> Result<Self, InvalidValue> {
        if cents < 0 {
            return Err(InvalidValue::new(format!(
                "an amount must not be negative (got {cents})"
            )));
        }
        Ok(Self(cents))
    }

    pub fn cents(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_mul(self, quantity: Quantity) -> Option<Money> {
        self.0.checked_mul(i64::from(quantity.get())).map(Money)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_price_refuses_negative_and_absurd_amounts() {
        assert!(Money::unit_price(-1).is_err());
        assert_eq!(Money::unit_price(0), Ok(Money::ZERO));
        assert!(Money::unit_price(Money::MAX_UNIT_PRICE).is_ok());
        assert!(Money::unit_price(Money::MAX_UNIT_PRICE + 1).is_err());
    }

    #[test]
    fn arithmetic_is_exact_and_checked() -> Result<(), InvalidValue> {
        let price = Money::unit_price(1999)?;
        let qty = Quantity::try_from(3)?;
        assert_eq!(price.checked_mul(qty).map(Money::cents), Some(5997));
        assert_eq!(Money(i64::MAX).checked_add(Money(1)), None);
        assert_eq!(Money(1999).to_string(), "19.99");
        Ok(())
    }
}
