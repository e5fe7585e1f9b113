//! Property tests of the record decoder: any envelope decodes to a command or a
//! permanent failure, never a panic; valid events round trip; a total below zero
//! or a customer id that is not one is refused (a permanent failure, so the
//! record goes to the dead-letter stream instead of being retried).

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use contracts::events::{OrderCancelledV1, OrderCreatedItemV1, OrderCreatedV1};
use customers_consumer::{decode, Command};
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
    test_support::payload_like(&["order_id", "customer_id", "items", "total_cents"])
}

fn created(order_id: Uuid, customer_id: &str, total_cents: i64) -> Payload {
    Payload::of(&OrderCreatedV1 {
        order_id,
        customer_id: customer_id.into(),
        items: vec![OrderCreatedItemV1 {
            sku: "SKU-1".into(),
            quantity: 1,
            unit_price_cents: total_cents.max(0),
        }],
        total_cents,
    })
    .expect("JSON")
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
        customer in "[A-Za-z0-9._:@-]{1,64}",
        total_cents in 0..i64::MAX,
    ) {
        let order_id = Uuid::from_u128(order_id);
        let record = record("OrderCreated", 1, created(order_id, &customer, total_cents));
        let job = decode(&record).map_err(TestCaseError::fail)?;
        prop_assert_eq!(job.event_id, record.event.event_id.as_uuid());
        prop_assert_eq!(job.traceparent, Some(record.trace));
        let Command::Reserve { order_id: got, customer: got_customer, total_cents: got_total } =
            job.command
        else {
            return Err(TestCaseError::fail("not a reservation"));
        };
        prop_assert_eq!(got.as_uuid(), order_id);
        prop_assert_eq!(got_customer.as_str(), customer.as_str());
        prop_assert_eq!(got_total, total_cents);
    }

    #[test]
    fn negative_totals_and_bad_customer_ids_are_refused(
        total_cents in i64::MIN..0,
        customer in prop_oneof![Just(String::new()), "[A-Za-z]{65,80}"],
    ) {
        let payload = created(Uuid::nil(), "c-1", total_cents);
        prop_assert!(decode(&record("OrderCreated", 1, payload)).is_err());
        let payload = json!({
            "order_id": Uuid::nil(), "customer_id": customer, "total_cents": 1,
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1}],
        });
        let payload = Payload::from_json(payload.to_string()).expect("JSON");
        prop_assert!(decode(&record("OrderCreated", 1, payload)).is_err());
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
