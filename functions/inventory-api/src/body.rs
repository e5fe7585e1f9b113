//! The `PUT /inventory/{sku}` body, `{"available": 10, "price_cents": 1999}`:
//! parsed once at the edge, every broken rule reported against its field.

use contracts::Money;
use http_api::{FieldError, Problem};
use lambda_http::Request;
use serde::Deserialize;

/// The most units a SKU may have available (well inside the `integer` column).
pub const MAX_AVAILABLE: i32 = 1_000_000_000;

/// The body as sent. The fields are optional here so that a missing one is
/// reported by name; unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAvailableBody {
    // i64, not i32: a negative or oversized number gets our message, not serde's.
    available: Option<i64>,
    // A JSON value, so that `null`, `1.5` and `"5"` get our message; `None` only
    // when the field is missing (a `null` is `Some(Value::Null)`, refused).
    #[serde(default, deserialize_with = "present")]
    price_cents: Option<serde_json::Value>,
}

/// Any value that is there, `null` included.
fn present<'de, D>(deserializer: D) -> Result<Option<serde_json::Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// A valid `PUT /inventory/{sku}` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetAvailable {
    /// 0 to [`MAX_AVAILABLE`].
    pub available: i32,
    /// The catalog's unit price, 0 to [`Money::MAX_UNIT_PRICE`] cents: required for
    /// a new SKU, optional afterwards (the price stays as it is).
    pub price_cents: Option<i64>,
}

impl SetAvailable {
    /// Checks the content type (`415`) and size (`413`) of the request's body, then
    /// parses it as [`SetAvailable::parse`] does.
    pub fn from_request(request: &Request) -> Result<Self, Problem> {
        validate(http_api::json_body(request)?)
    }

    /// Malformed JSON is a `400`; valid JSON that breaks a rule a `422` naming the field.
    pub fn parse(bytes: &[u8]) -> Result<Self, Problem> {
        validate(http_api::parse_json(bytes)?)
    }
}

fn validate(body: SetAvailableBody) -> Result<SetAvailable, Problem> {
    let mut errors = Vec::new();
    let available = match body.available {
        None => {
            errors.push(FieldError::new("available", "is required"));
            None
        }
        Some(n) => {
            match i32::try_from(n) {
                Ok(available) if (0..=MAX_AVAILABLE).contains(&available) => Some(available),
                _ => {
                    errors.push(FieldError::new(
                    "available",
                    format!("available units must be an integer from 0 to {MAX_AVAILABLE} (got {n})"),
                ));
                    None
                }
            }
        }
    };
    let price_cents = match body.price_cents {
        None => None,
        Some(value) => match value.as_i64().map(Money::unit_price) {
            Some(Ok(price)) => Some(price.cents()),
            Some(Err(e)) => {
                errors.push(FieldError::new("price_cents", e.to_string()));
                None
            }
            None => {
                errors.push(FieldError::new(
                    "price_cents",
                    format!(
                        "a price must be an integer number of cents from 0 to {} (got {value})",
                        Money::MAX_UNIT_PRICE
                    ),
                ));
                None
            }
        },
    };
    match available {
        Some(available) if errors.is_empty() => Ok(SetAvailable {
            available,
            price_cents,
        }),
        _ => Err(Problem::invalid_fields(errors)),
    }
}

/// `422`: a SKU the inventory does not know needs its price.
pub fn price_required(sku: &contracts::Sku) -> Problem {
    Problem::invalid_fields(vec![FieldError::new(
        "price_cents",
        format!("is required for {sku}, a SKU the inventory does not know yet"),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> Problem {
        SetAvailable::parse(body.as_bytes()).expect_err("must be refused")
    }

    #[test]
    fn the_bounds_are_inclusive() {
        for n in [0, 7, MAX_AVAILABLE] {
            let body = format!(r#"{{"available":{n}}}"#);
            assert_eq!(
                SetAvailable::parse(body.as_bytes())
                    .ok()
                    .map(|c| c.available),
                Some(n)
            );
        }
        for n in [-1_i64, i64::from(MAX_AVAILABLE) + 1, i64::MAX] {
            let p = refused(&format!(r#"{{"available":{n}}}"#));
            assert_eq!((p.status, p.errors[0].field.as_str()), (422, "available"));
            assert!(p.detail.contains(&n.to_string()), "{}", p.detail);
        }
    }

    #[test]
    fn a_price_is_optional_here_and_checked_when_given() {
        let parsed = SetAvailable::parse(br#"{"available":3,"price_cents":1999}"#).expect("valid");
        assert_eq!(parsed.price_cents, Some(1999));
        let parsed = SetAvailable::parse(br#"{"available":3}"#).expect("valid");
        assert_eq!(parsed.price_cents, None);
        for body in [
            r#"{"available":3,"price_cents":-1}"#,
            r#"{"available":3,"price_cents":10000000001}"#,
            r#"{"available":3,"price_cents":19.99}"#,
            r#"{"available":3,"price_cents":null}"#,
        ] {
            let p = refused(body);
            assert_eq!(p.status, 422, "{body}");
            assert!(
                p.errors.iter().any(|e| e.field == "price_cents")
                    || p.detail.contains("price_cents"),
                "{body}: {p:?}"
            );
        }
    }

    #[test]
    fn wrong_shapes_name_the_field_and_bad_json_is_400() {
        for body in [
            r#"{}"#,
            r#"{"available":null}"#,
            r#"{"available":"10"}"#,
            r#"{"available":1.5}"#,
            r#"{"available":1e30}"#,
            r#"{"available":[1]}"#,
        ] {
            let p = refused(body);
            assert_eq!(
                (p.status, p.errors[0].field.as_str()),
                (422, "available"),
                "{body}"
            );
        }
        let p = refused(r#"{"available":1,"reserved":0}"#);
        assert_eq!(p.status, 422);
        assert!(p.detail.contains("reserved"), "{}", p.detail);
        assert_eq!(refused("[10]").status, 422);
        for body in ["", "{", r#"{"available":1}x"#] {
            assert_eq!(refused(body).status, 400, "{body:?}");
        }
    }
}
