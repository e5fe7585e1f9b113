//! Table names that code outside the toolkit chooses: a service's outbox and
//! inbox. A table name cannot be a bind parameter, so the toolkit's SQL on those
//! tables is written with the name in it; [`TableName`] accepts only plain
//! lowercase identifiers, so such SQL is never built from arbitrary text.

use std::borrow::Cow;
use std::fmt;

/// `schema.table`, each part a PostgreSQL identifier that needs no quoting:
/// lowercase ASCII letters, digits and `_`, not starting with a digit, at most
/// 63 bytes. Checked at compile time by [`TableName::new`], at run time by
/// [`TableName::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    schema: Cow<'static, str>,
    table: Cow<'static, str>,
}

/// Why a table name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a table name (schema.table, each part lowercase letters, digits and _, not starting with a digit, at most 63 bytes)")]
pub struct BadTableName {
    pub name: String,
}

impl TableName {
    /// `schema.table`; a bad identifier fails the build where it is a constant.
    pub const fn new(schema: &'static str, table: &'static str) -> Self {
        assert!(is_identifier(schema), "not a plain SQL identifier");
        assert!(is_identifier(table), "not a plain SQL identifier");
        Self {
            schema: Cow::Borrowed(schema),
            table: Cow::Borrowed(table),
        }
    }

    /// `schema.table`, or `schema` alone with `default_table` as the table.
    pub fn parse(name: &str, default_table: &str) -> Result<Self, BadTableName> {
        let (schema, table) = name.split_once('.').unwrap_or((name, default_table));
        if is_identifier(schema) && is_identifier(table) {
            Ok(Self {
                schema: Cow::Owned(schema.to_owned()),
                table: Cow::Owned(table.to_owned()),
            })
        } else {
            Err(BadTableName {
                name: name.to_owned(),
            })
        }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

const fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 63 || b[0].is_ascii_digit() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit() || b[i] == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_identifiers_only() {
        let t = TableName::parse("shop.outbox", "x").expect("valid");
        assert_eq!(t.to_string(), "shop.outbox");
        assert_eq!(TableName::parse("shop", "outbox").expect("valid"), t);
        assert_eq!(TableName::new("shop", "outbox"), t);
        for bad in [
            "",
            ".outbox",
            "shop.",
            "Shop.outbox",
            "shop.out box",
            "shop.outbox; DROP TABLE x",
            "1shop.outbox",
            "shop.\"outbox\"",
            "a.b.c",
            &"s".repeat(64),
        ] {
            assert!(TableName::parse(bad, "outbox").is_err(), "{bad:?} accepted");
        }
    }
}
