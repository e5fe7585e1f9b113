use shared::value::InvalidValue;

/// How many units of one SKU an order line asks for: 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u16);

impl Quantity {
    pub const MIN: i64 = 1;
    pub const MAX: i64 = 1000;

    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<i64> for Quantity {
    type Error = InvalidValue;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        match u16::try_from(value) {
            Ok(n) if (Self::MIN..=Self::MAX).contains(&value) => Ok(Self(n)),
            _ => Err(InvalidValue::new(format!(
                "a quantity must be between {} and {} (got {value})",
                Self::MIN,
                Self::MAX
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_bounds_are_inclusive() {
        assert!(Quantity::try_from(0).is_err());
        assert!(Quantity::try_from(-1).is_err());
        assert_eq!(Quantity::try_from(1).map(Quantity::get), Ok(1));
        assert_eq!(Quantity::try_from(1000).map(Quantity::get), Ok(1000));
        assert!(Quantity::try_from(1001).is_err());
        assert!(Quantity::try_from(i64::MAX).is_err());
    }
}
