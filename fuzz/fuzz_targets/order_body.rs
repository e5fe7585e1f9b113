//! `POST /orders` bodies: `CreateOrder::parse` must answer every input with an
//! order or a problem, never a panic. An accepted order written back as a body
//! parses to the same order (same canonical bytes, lines and total).
#![no_main]

use create_order::CreateOrder;
use libfuzzer_sys::fuzz_target;
use contracts::CustomerId;
use time::OffsetDateTime;

fuzz_target!(|data: &[u8]| {
    // The customer is the caller (the token's subject), never the body.
    let customer = CustomerId::parse("fuzz-1").expect("a valid customer id");
    let parsed = match CreateOrder::parse(data, customer.clone(), OffsetDateTime::UNIX_EPOCH) {
        Ok(parsed) => parsed,
        Err(problem) => {
            assert!(
                problem.status == 400 || problem.status == 422,
                "{problem:?}"
            );
            return;
        }
    };
    let order = &parsed.order;
    let body = serde_json::json!({
        "items": order.lines().iter().map(|l| serde_json::json!({
            "sku": l.sku.as_str(),
            "quantity": l.quantity.get(),
            "unit_price_cents": l.unit_price.cents(),
        })).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&body).expect("JSON of strings and integers");
    let again = CreateOrder::parse(&bytes, customer, OffsetDateTime::UNIX_EPOCH).expect("re-parses");
    assert_eq!(again.canonical_bytes(), parsed.canonical_bytes());
    assert_eq!(again.order.lines(), order.lines());
    assert_eq!(again.order.total(), order.total());
});
