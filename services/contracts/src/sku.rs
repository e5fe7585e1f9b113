use std::fmt;

use shared::value::{check_identifier, InvalidValue};

/// A stock keeping unit: 1 to 64 of ASCII letters, digits and `-_.:@`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sku(String);

impl Sku {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Result<Self, InvalidValue> {
        check_identifier("a SKU", value, Self::MAX_LEN)?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_accepts_catalogue_codes_and_rejects_the_rest() {
        assert_eq!(
            Sku::parse("WIDGET-1").map(|s| s.to_string()).ok(),
            Some("WIDGET-1".into())
        );
        assert!(Sku::parse("").is_err());
        assert!(Sku::parse(&"A".repeat(65)).is_err());
        assert!(Sku::parse("A B").is_err());
        assert!(Sku::parse("*\r\nFLUSHALL\r\n").is_err());
    }
}
