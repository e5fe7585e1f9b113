//! Property tests of the record decoder (the `stream_entry` fuzz target covers
//! the same ground for longer; RELIABILITY.md, "Fuzzing"): any envelope decodes
//! to a step or a permanent failure, never a panic; valid answers round trip.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use contracts::events::{InventoryRejectedV1, InventoryReservedV1, ReservedItemV1, ShortageV1};
use order_saga::{decode, Answer, INVENTORY};
use proptest::prelude::*;
use serde_json::Value;
use shared::envelope::Payload;
use shared::source::StreamRecord;
use uuid::Uuid;

fn record(event_type: &str, schema_version: u32, payload: Payload) -> StreamRecord {
    test_support::record("Reservation", event_type, schema_version, payload)
}

/// JSON shaped like the payloads, with any values.
fn payload_like() -> impl Strategy<Value = Value> {
    test_support::payload_like(&[
        "order_id",
        "items",
        "reason",
        "shortages",
        "sku",
        "quantity",
        "requested",
        "available",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_envelope_decodes_or_fails_without_panicking(
        event_type in prop_oneof![
            Just("InventoryReserved".to_owned()),
            Just("InventoryRejected".to_owned()),
            "[A-Za-z]{1,20}",
        ],
        version in prop_oneof![Just(1_u32), 1..=u32::MAX],
        payload in payload_like(),
    ) {
        let payload = Payload::from_json(payload.to_string()).expect("JSON");
        let known = matches!(event_type.as_str(), "InventoryReserved" | "InventoryRejected");
        let decoded = decode(&record(&event_type, version, payload));
        if !known || version != 1 {
            prop_assert!(decoded.is_err());
        }
    }

    #[test]
    fn reserved_round_trips(order_id in any::<u128>(), quantity in any::<u16>()) {
        let order_id = Uuid::from_u128(order_id);
        let reserved = InventoryReservedV1 {
            order_id,
            items: vec![ReservedItemV1 { sku: "A".into(), quantity }],
        };
        let record = record("InventoryReserved", 1, Payload::of(&reserved).expect("JSON"));
        let step = decode(&record).map_err(TestCaseError::fail)?;
        prop_assert_eq!(step.event_id, record.event.event_id.as_uuid());
        prop_assert_eq!(step.order_id, order_id);
        prop_assert_eq!(step.participant, INVENTORY);
        prop_assert_eq!(step.answer, Answer::Reserved);
    }

    #[test]
    fn rejected_round_trips_with_the_reason_cut_to_1000_characters(
        order_id in any::<u128>(),
        reason in ".{0,1100}",
    ) {
        let order_id = Uuid::from_u128(order_id);
        let rejected = InventoryRejectedV1 {
            order_id,
            reason: reason.clone(),
            shortages: vec![ShortageV1 { sku: "A".into(), requested: 3, available: 1 }],
        };
        let record = record("InventoryRejected", 1, Payload::of(&rejected).expect("JSON"));
        let step = decode(&record).map_err(TestCaseError::fail)?;
        prop_assert_eq!(step.order_id, order_id);
        let want: String = reason.chars().take(1000).collect();
        prop_assert_eq!(step.answer, Answer::Rejected { reason: want });
    }
}
