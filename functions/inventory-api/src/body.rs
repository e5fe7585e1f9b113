//! The `PUT /inventory/{sku}` body, `{"available": 10}`: parsed once at the edge,
//! every broken rule reported against its field.

use http_api::{FieldError, Problem};
use lambda_http::Request;
use serde::Deserialize;

/// The most units a SKU may have available (well inside the `integer` column).
pub const MAX_AVAILABLE: i32 = 1_000_000_000;

/// The body as sent. The field is optional here so that a missing one is reported
/// by name; unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAvailableBody {
    // i64, not i32: a negative or oversized number gets our message, not serde's.
    available: Option<i64>,
}

/// A valid `PUT /inventory/{sku}` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetAvailable {
    /// 0 to [`MAX_AVAILABLE`].
    pub available: i32,
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
    let invalid =
        |detail: String| Problem::invalid_fields(vec![FieldError::new("available", detail)]);
    match body.available {
        None => Err(invalid("is required".into())),
        Some(n) => match i32::try_from(n) {
            Ok(available) if (0..=MAX_AVAILABLE).contains(&available) => {
                Ok(SetAvailable { available })
            }
            _ => Err(invalid(format!(
                "available units must be an integer from 0 to {MAX_AVAILABLE} (got {n})"
            ))),
        },
    }
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
