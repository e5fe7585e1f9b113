//! Property tests of the `POST /orders` body parser (the `order_body` fuzz target
//! covers the same ground for longer; RELIABILITY.md, "Fuzzing").

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::collections::BTreeMap;

use contracts::{CustomerId, Money};
use create_order::CreateOrder;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{json, Value};
use time::OffsetDateTime;

/// Parses a body for `customer` (the caller).
fn parse_for(customer: &str, bytes: &[u8]) -> Result<CreateOrder, create_order::Problem> {
    let customer = CustomerId::parse(customer).expect("a valid customer id");
    CreateOrder::parse(bytes, customer, OffsetDateTime::UNIX_EPOCH)
}

fn parse(bytes: &[u8]) -> Result<CreateOrder, create_order::Problem> {
    parse_for("c-1", bytes)
}

/// A valid order: the caller's customer id and 1 to 100 lines with distinct SKUs.
fn valid_order() -> impl Strategy<Value = (String, BTreeMap<String, (u16, i64)>)> {
    (
        "[A-Za-z0-9._:@-]{1,64}",
        btree_map(
            // Short SKUs keep 100-line orders cheap to generate; the length
            // limit is the domain's unit tests' business.
            "[A-Za-z0-9._:@-]{1,16}",
            (1..=1000_u16, 0..=Money::MAX_UNIT_PRICE),
            1..=100,
        ),
    )
}

fn body(lines: &[(String, u16, i64)]) -> Value {
    json!({
        "items": lines.iter().map(|(sku, quantity, price)| json!({
            "sku": sku, "quantity": quantity, "unit_price_cents": price,
        })).collect::<Vec<_>>(),
    })
}

/// JSON that looks like a body: the right names, any values, any shapes.
fn body_like() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        Just("customer_id".to_owned()),
        Just("items".to_owned()),
        Just("sku".to_owned()),
        Just("quantity".to_owned()),
        Just("unit_price_cents".to_owned()),
        "[a-z_]{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-5_i64..1005).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[A-Za-z0-9 -]{0,70}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            vec((name.clone(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        if let Err(problem) = parse(&bytes) {
            prop_assert!(problem.status == 400 || problem.status == 422, "{:?}", problem);
        }
    }

    #[test]
    fn body_like_json_never_panics(value in body_like()) {
        if let Err(problem) = parse(value.to_string().as_bytes()) {
            prop_assert!(problem.status == 400 || problem.status == 422, "{:?}", problem);
        }
    }

    #[test]
    fn valid_bodies_parse_and_their_canonical_form_is_stable(
        (customer_id, lines) in valid_order(),
        pretty in any::<bool>(),
    ) {
        let lines: Vec<(String, u16, i64)> =
            lines.into_iter().map(|(sku, (q, p))| (sku, q, p)).collect();
        let value = body(&lines);
        let text = if pretty {
            serde_json::to_string_pretty(&value)
        } else {
            serde_json::to_string(&value)
        }
        .expect("JSON");
        let parsed = parse_for(&customer_id, text.as_bytes())
            .map_err(|p| TestCaseError::fail(format!("{p:?}")))?;
        let order = &parsed.order;
        prop_assert_eq!(order.customer_id().as_str(), customer_id.as_str());
        let got: Vec<(String, u16, i64)> = order
            .lines()
            .iter()
            .map(|l| (l.sku.to_string(), l.quantity.get(), l.unit_price.cents()))
            .collect();
        prop_assert_eq!(&got, &lines);
        let total: i64 = lines.iter().map(|(_, q, p)| i64::from(*q) * p).sum();
        prop_assert_eq!(order.total().cents(), total);

        // The canonical bytes are those of the same lines, re-parsed from a body
        // written from the parsed order.
        let again = parse_for(order.customer_id().as_str(), body(&got).to_string().as_bytes());
        prop_assert_eq!(
            again.map(|o| o.canonical_bytes()).ok(),
            Some(parsed.canonical_bytes())
        );
    }
}
