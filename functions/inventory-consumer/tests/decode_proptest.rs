//! Property tests of the record decoder (the `stream_entry` fuzz target covers
//! the same ground for longer; RELIABILITY.md, "Fuzzing"): any envelope decodes
//! to a command or a permanent failure, never a panic; valid events round trip.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use contracts::events::{OrderCancelledV1, OrderCreatedItemV1, OrderCreatedV1};
use inventory_consumer::{decode, Command};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{json, Value};
use shared::envelope::Payload;
use shared::source::StreamRecord;
use uuid::Uuid;

fn record(event_type: &str, schema_version: u32, payload: Payload) -> StreamRecord {
    test_support::record("Order", event_type, schema_version, payload)
}

/// JSON shaped like the payloads, with any values.
fn payload_like() -> impl Strategy<Value = Value> {
    test_support::payload_like(&[
        "order_id",
        "customer_id",
        "items",
        "total_cents",
        "sku",
        "quantity",
        "unit_price_cents",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_envelope_decodes_or_fails_without_panicking(
        event_type in prop_oneof![
            Just("OrderCreated".to_owned()),
            Just("OrderCancelled".to_owned()),
            "[A-Za-z]{1,20}",
        ],
        version in prop_oneof![Just(1_u32), 1..=u32::MAX],
        payload in payload_like(),
    ) {
        let payload = Payload::from_json(payload.to_string()).expect("JSON");
        let known = matches!(event_type.as_str(), "OrderCreated" | "OrderCancelled");
        let decoded = decode(&record(&event_type, version, payload));
        if !known || version != 1 {
            prop_assert!(decoded.is_err());
        }
    }

    #[test]
    fn order_created_round_trips(
        order_id in any::<u128>(),
        items in vec(("[A-Za-z0-9._:@-]{1,64}", 1..=1000_u16, 0..1_000_000_i64), 1..20),
    ) {
        let order_id = Uuid::from_u128(order_id);
        let created = OrderCreatedV1 {
            order_id,
            customer_id: "c-1".into(),
            items: items
                .iter()
                .map(|(sku, quantity, price)| OrderCreatedItemV1 {
                    sku: sku.clone(),
                    quantity: *quantity,
                    unit_price_cents: *price,
                })
                .collect(),
            total_cents: 0,
        };
        let record = record("OrderCreated", 1, Payload::of(&created).expect("JSON"));
        let job = decode(&record).map_err(TestCaseError::fail)?;
        prop_assert_eq!(job.event_id, record.event.event_id.as_uuid());
        prop_assert_eq!(job.traceparent, Some(record.trace));
        let Command::Reserve { order_id: got, lines } = job.command else {
            return Err(TestCaseError::fail("not a reservation"));
        };
        prop_assert_eq!(got.as_uuid(), order_id);
        let lines: Vec<(String, u16, i64)> = lines
            .iter()
            .map(|l| (l.sku.to_string(), l.quantity.get(), l.unit_price_cents))
            .collect();
        let want: Vec<(String, u16, i64)> = items;
        prop_assert_eq!(lines, want);
    }

    #[test]
    fn out_of_range_quantities_and_bad_skus_are_refused(
        quantity in prop_oneof![Just(0_u16), 1001..=u16::MAX],
        sku in prop_oneof![Just(String::new()), "[ /#]{1,3}", "[A-Z]{65,70}"],
    ) {
        for (sku, quantity) in [("A".to_owned(), quantity), (sku, 1)] {
            let payload = json!({
                "order_id": Uuid::nil(), "customer_id": "c", "total_cents": 0,
                "items": [{"sku": sku, "quantity": quantity, "unit_price_cents": 1}],
            });
            let payload = Payload::from_json(payload.to_string()).expect("JSON");
            prop_assert!(decode(&record("OrderCreated", 1, payload)).is_err());
        }
    }

    #[test]
    fn order_cancelled_round_trips(order_id in any::<u128>()) {
        let order_id = Uuid::from_u128(order_id);
        let payload = Payload::of(&OrderCancelledV1 { order_id }).expect("JSON");
        let job = decode(&record("OrderCancelled", 1, payload)).map_err(TestCaseError::fail)?;
        let released = match job.command {
            Command::Release { order_id } => Some(order_id.as_uuid()),
            Command::Reserve { .. } => None,
        };
        prop_assert_eq!(released, Some(order_id));
    }
}
