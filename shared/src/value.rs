//! Values the toolkit checks at its edges, and the means for a service's own:
//! [`InvalidValue`] (why a value was refused), [`check_identifier`], and
//! [`uuid_id!`](crate::uuid_id) for a UUID v7 id type. Each such value has a
//! private field and is built only through `parse` / `TryFrom`, so holding one
//! proves it is valid: code past the edge never re-validates.

/// Why a value was refused: a sentence a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

impl InvalidValue {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Checks a short identifier made of visible ASCII letters, digits and `-_.:@`.
/// Such values are safe in logs, URLs and Redis stream fields as they are.
pub fn check_identifier(what: &str, value: &str, max_len: usize) -> Result<(), InvalidValue> {
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

/// A UUID v7 id: new ids sort by creation time; any UUID parses, so ids minted
/// elsewhere stay valid.
#[macro_export]
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name($crate::uuid::Uuid);

        impl $name {
            pub fn new() -> Self {
                Self($crate::uuid::Uuid::now_v7())
            }

            pub fn parse(value: &str) -> Result<Self, $crate::value::InvalidValue> {
                $crate::uuid::Uuid::try_parse(value)
                    .map(Self)
                    .map_err(|_| $crate::value::InvalidValue::new(concat!($what, " must be a UUID")))
            }

            pub fn as_uuid(&self) -> $crate::uuid::Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<$crate::uuid::Uuid> for $name {
            fn from(value: $crate::uuid::Uuid) -> Self {
                Self(value)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

crate::uuid_id!(
    /// An event's id; consumers' inboxes are keyed by it.
    EventId,
    "an event id"
);
