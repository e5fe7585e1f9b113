//! The `POST /orders` body: parsed once at the edge into a [`NewOrder`] for the
//! authenticated customer, with every rule it breaks reported against the field
//! that breaks it.

use contracts::{
    CustomerId, Money, NewOrder, NewOrderError, OrderLine, Quantity, Sku, MAX_ORDER_LINES,
};
use http_api::{FieldError, Problem};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The body as sent. Every field is optional here so that a missing one is
/// reported by name; unknown fields are refused. `customer_id` is read only to
/// refuse it by name: the customer is the caller.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrderBody {
    customer_id: Option<serde_json::Value>,
    items: Option<Vec<ItemBody>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemBody {
    sku: Option<String>,
    // i64, not u16: a negative or oversized number gets our message, not serde's.
    quantity: Option<i64>,
    unit_price_cents: Option<i64>,
}

/// The parts of a valid request that make it "the same request" for
/// `Idempotency-Key`: field order and white space do not matter.
#[derive(Debug, Serialize)]
struct Canonical<'a> {
    customer_id: &'a str,
    items: Vec<(&'a str, u16, i64)>,
}

/// A valid `POST /orders` body.
#[derive(Debug)]
pub struct CreateOrder {
    pub order: NewOrder,
}

impl CreateOrder {
    /// Parses and validates `bytes`, an order of `customer` (the caller):
    /// malformed JSON is a `400`, valid JSON that breaks a rule a `422` listing
    /// every broken rule.
    pub fn parse(bytes: &[u8], customer: CustomerId, now: OffsetDateTime) -> Result<Self, Problem> {
        let body: CreateOrderBody = http_api::parse_json(bytes)?;
        validate(body, customer, now).map(|order| Self { order })
    }

    /// A digest input that is equal for equal requests.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let canonical = Canonical {
            customer_id: self.order.customer_id().as_str(),
            items: self
                .order
                .lines()
                .iter()
                .map(|l| (l.sku.as_str(), l.quantity.get(), l.unit_price.cents()))
                .collect(),
        };
        // A struct of strings and integers always serializes.
        serde_json::to_vec(&canonical).unwrap_or_default()
    }
}

fn validate(
    body: CreateOrderBody,
    customer_id: CustomerId,
    now: OffsetDateTime,
) -> Result<NewOrder, Problem> {
    let mut errors = Vec::new();
    if body.customer_id.is_some() {
        errors.push(FieldError::new(
            "customer_id",
            "is not accepted: the customer is the authenticated caller (the token's subject)",
        ));
    }
    let mut lines = Vec::new();
    match body.items {
        None => errors.push(FieldError::new("items", "is required")),
        Some(items) if items.is_empty() => {
            errors.push(FieldError::new("items", "must hold at least one line"))
        }
        Some(items) if items.len() > MAX_ORDER_LINES => errors.push(FieldError::new(
            "items",
            format!(
                "must hold at most {MAX_ORDER_LINES} lines (got {})",
                items.len()
            ),
        )),
        Some(items) => {
            for (i, item) in items.into_iter().enumerate() {
                if let Some(line) = validate_item(&mut errors, i, item) {
                    lines.push((i, line));
                }
            }
        }
    }
    // Report every duplicate SKU against the later line, naming the first.
    for (pos, (i, line)) in lines.iter().enumerate() {
        if let Some((first, _)) = lines[..pos].iter().find(|(_, other)| other.sku == line.sku) {
            errors.push(FieldError::new(
                format!("items[{i}].sku"),
                format!(
                    "SKU {} is already on items[{first}]; put its whole quantity on one line",
                    line.sku
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    NewOrder::new(
        customer_id,
        lines.into_iter().map(|(_, l)| l).collect(),
        now,
    )
    .map_err(|e| {
        let field = match &e {
            NewOrderError::DuplicateSku { index, .. } => format!("items[{index}].sku"),
            NewOrderError::NoLines
            | NewOrderError::TooManyLines(_)
            | NewOrderError::TotalOverflow => "items".into(),
        };
        Problem::invalid_fields(vec![FieldError::new(field, e.to_string())])
    })
}

fn required<T>(errors: &mut Vec<FieldError>, field: &str) -> Option<T> {
    errors.push(FieldError::new(field, "is required"));
    None
}

/// A field that is required and must parse: its value, or an error recorded against it.
fn checked<T, E: std::fmt::Display>(
    errors: &mut Vec<FieldError>,
    field: String,
    parsed: Option<Result<T, E>>,
) -> Option<T> {
    match parsed {
        None => required(errors, &field),
        Some(Err(e)) => {
            errors.push(FieldError::new(field, e.to_string()));
            None
        }
        Some(Ok(value)) => Some(value),
    }
}

fn validate_item(errors: &mut Vec<FieldError>, i: usize, item: ItemBody) -> Option<OrderLine> {
    let before = errors.len();
    let field = |name: &str| format!("items[{i}].{name}");
    let sku = checked(errors, field("sku"), item.sku.as_deref().map(Sku::parse));
    let quantity = checked(
        errors,
        field("quantity"),
        item.quantity.map(Quantity::try_from),
    );
    let unit_price = checked(
        errors,
        field("unit_price_cents"),
        item.unit_price_cents.map(Money::unit_price),
    );
    if errors.len() > before {
        return None;
    }
    Some(OrderLine {
        sku: sku?,
        quantity: quantity?,
        unit_price: unit_price?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<CreateOrder, Problem> {
        let customer = CustomerId::parse("c1").expect("valid");
        CreateOrder::parse(body.as_bytes(), customer, OffsetDateTime::UNIX_EPOCH)
    }

    fn problem(body: &str) -> Problem {
        parse(body).expect_err("must be refused")
    }

    fn fields(p: &Problem) -> Vec<&str> {
        p.errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_valid_body_becomes_an_order_with_a_server_side_total() {
        let body = r#"{"items":[{"sku":"A","quantity":2,"unit_price_cents":1999},{"sku":"B","quantity":1,"unit_price_cents":2}]}"#;
        let parsed = parse(body).expect("valid");
        assert_eq!(parsed.order.total().cents(), 4000);
        assert_eq!(parsed.order.customer_id().as_str(), "c1");
    }

    #[test]
    fn a_customer_id_in_the_body_is_refused_by_name() {
        let p = problem(
            r#"{"customer_id":"c2","items":[{"sku":"A","quantity":1,"unit_price_cents":1}]}"#,
        );
        assert_eq!(p.status, 422);
        assert_eq!(fields(&p), ["customer_id"]);
        assert!(p.errors[0].detail.contains("authenticated caller"), "{p:?}");
    }

    #[test]
    fn syntax_errors_are_400_and_rule_breaks_422() {
        assert_eq!(problem("{").status, 400);
        assert_eq!(problem("").status, 400);
        assert_eq!(problem(r#"{"items":[]} trailing"#).status, 400);
        assert_eq!(problem("[1,2]").status, 422);
        let p = problem(r#"{"items":[]}"#);
        assert_eq!(p.status, 422);
        assert_eq!(fields(&p), ["items"]);
    }

    #[test]
    fn every_broken_line_rule_is_named() {
        let p = problem(
            r#"{"items":[
                {"sku":"A","quantity":0,"unit_price_cents":1},
                {"sku":"B","quantity":1001,"unit_price_cents":-5},
                {"quantity":1,"unit_price_cents":1},
                {"sku":"A","quantity":1,"unit_price_cents":1}]}"#,
        );
        assert_eq!(
            fields(&p),
            [
                "items[0].quantity",
                "items[1].quantity",
                "items[1].unit_price_cents",
                "items[2].sku"
            ]
        );
        let p = problem(
            r#"{"items":[{"sku":"A","quantity":1,"unit_price_cents":1},{"sku":"A","quantity":2,"unit_price_cents":1}]}"#,
        );
        assert_eq!(fields(&p), ["items[1].sku"]);
        assert_eq!(p.errors[0].pointer, "/items/1/sku");
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_422_at_their_path() {
        let p = problem(r#"{"total_cents":1,"items":[]}"#);
        assert_eq!(p.status, 422);
        assert!(p.detail.contains("total_cents"), "{}", p.detail);
        let p = problem(r#"{"items":[{"sku":"A","quantity":"2","unit_price_cents":1}]}"#);
        assert_eq!(fields(&p), ["items[0].quantity"]);
        let p = problem(r#"{"items":[{"sku":"A","quantity":1,"unit_price_cents":19.99}]}"#);
        assert_eq!(fields(&p), ["items[0].unit_price_cents"]);
        let p = problem(
            r#"{"items":[{"sku":"A","quantity":99999999999999999999999,"unit_price_cents":1}]}"#,
        );
        assert_eq!(p.status, 422, "{p:?}");
    }

    #[test]
    fn equal_requests_have_equal_canonical_forms() {
        let a = r#"{"items":[{"sku":"A","quantity":2,"unit_price_cents":5}]}"#;
        let b = r#"{ "items" : [ {"unit_price_cents":5, "quantity":2, "sku":"A"} ] }"#;
        let c = r#"{"items":[{"sku":"A","quantity":3,"unit_price_cents":5}]}"#;
        let canon = |s: &str| parse(s).expect("valid").canonical_bytes();
        assert_eq!(canon(a), canon(b));
        assert_ne!(canon(a), canon(c));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing() {
        for deep in [
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            format!(
                r#"{{"customer_id":{}1{}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            format!(
                r#"{{"customer_id":"c","items":[{{"sku":{}}}]}}"#,
                "{\"a\":".repeat(50_000)
            ),
        ] {
            let status = problem(&deep).status;
            assert!(status == 400 || status == 422, "{status}");
        }
    }
}
