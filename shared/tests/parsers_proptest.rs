//! Property tests of the parsers that take untrusted bytes (the fuzz targets of
//! `fuzz/` cover the same ground for longer; RELIABILITY.md, "Fuzzing"): header
//! values and stream entries never panic, and what is written reads back equal.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::Value;
use shared::envelope::{
    format_timestamp, AggregateId, AggregateType, EventEnvelope, EventType, OutboxColumns, Payload,
};
use shared::source::RawEntry;
use shared::trace::TraceParent;
use shared::value::EventId;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

const FIELDS: [&str; 8] = [
    "event_id",
    "event_type",
    "schema_version",
    "aggregate_type",
    "aggregate_id",
    "occurred_at",
    "traceparent",
    "payload",
];

/// `0000-01-01T00:00:00Z` and `9999-12-31T23:59:59.999999Z` in microseconds.
const FIRST_MICROS: i64 = -62_167_219_200_000_000;
const LAST_MICROS: i64 = 253_402_300_799_999_999;

fn identifier(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9._:@-]{{1,{max}}}")).expect("regex")
}

fn traceparent() -> impl Strategy<Value = TraceParent> {
    (1..=u128::MAX, 1..=u64::MAX, any::<u8>()).prop_map(|(t, p, f)| {
        TraceParent::parse(&format!("00-{t:032x}-{p:016x}-{f:02x}")).expect("valid traceparent")
    })
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((".{0,8}", inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Payload text as a producer might write it: compact or pretty.
fn payload() -> impl Strategy<Value = Payload> {
    (json(), any::<bool>()).prop_map(|(v, pretty)| {
        let text = if pretty {
            serde_json::to_string_pretty(&v)
        } else {
            serde_json::to_string(&v)
        };
        Payload::from_json(text.expect("JSON")).expect("JSON")
    })
}

prop_compose! {
    fn envelope()(
        id in any::<u128>(),
        event_type in identifier(64),
        schema_version in 1..=u32::MAX,
        aggregate_type in identifier(64),
        aggregate_id in identifier(128),
        micros in FIRST_MICROS..=LAST_MICROS,
        traceparent in proptest::option::of(traceparent()),
        payload in payload(),
    ) -> EventEnvelope {
        EventEnvelope {
            event_id: EventId::from(Uuid::from_u128(id)),
            event_type: EventType::parse(&event_type).expect("valid"),
            schema_version,
            aggregate_type: AggregateType::parse(&aggregate_type).expect("valid"),
            aggregate_id: AggregateId::parse(&aggregate_id).expect("valid"),
            occurred_at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
                .expect("in range"),
            traceparent,
            payload,
        }
    }
}

/// A field name: mostly the envelope's, sometimes another.
fn field_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::sample::select(FIELDS.to_vec()).prop_map(|f| f.as_bytes().to_vec()),
        1 => vec(any::<u8>(), 0..12),
    ]
}

/// A field value: a valid envelope's value, a mangled one, or any bytes.
fn field_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"0193a3e2-7c1a-7000-8000-00000000aaaa".to_vec()),
        Just(b"1".to_vec()),
        Just(b"OrderCreated".to_vec()),
        Just(b"2024-11-24T08:00:00.123456+01:00".to_vec()),
        Just(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec()),
        json().prop_map(|v| v.to_string().into_bytes()),
        vec(any::<u8>(), 0..40),
        ".{0,40}".prop_map(String::into_bytes),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn header_parsers_never_panic(bytes in vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = TraceParent::parse(&text);
        let _ = TraceParent::from_xray(&text);
    }

    #[test]
    fn header_parsers_never_panic_on_near_misses(
        text in r#"[ "\\\-;=0-9a-fA-FRotPaenSmpld]{0,120}"#,
    ) {
        let _ = TraceParent::parse(&text);
        let _ = TraceParent::from_xray(&text);
    }

    #[test]
    fn traceparents_read_back(tp in traceparent()) {
        let text = tp.to_string();
        prop_assert_eq!(TraceParent::parse(&text).ok(), Some(tp));
        prop_assert_eq!(TraceParent::parse(&format!("  {text}\t")).ok(), Some(tp));
        prop_assert_eq!(format!("00-{}-{}-", tp.trace_id(), tp.span_id()), text[..53].to_owned());
    }

    #[test]
    fn xray_headers_name_the_same_trace(
        time in "[0-9a-f]{8}",
        unique in "[0-9a-f]{24}",
        parent in "[0-9a-f]{16}",
        sampled in any::<bool>(),
    ) {
        let header = format!("Root=1-{time}-{unique};Parent={parent};Sampled={}", u8::from(sampled));
        let tp = TraceParent::from_xray(&header);
        let zero = time.bytes().chain(unique.bytes()).all(|b| b == b'0')
            || parent.bytes().all(|b| b == b'0');
        prop_assert_eq!(tp.is_none(), zero);
        if let Some(tp) = tp {
            prop_assert_eq!(tp.trace_id(), format!("{time}{unique}"));
            prop_assert_eq!(tp.span_id(), parent);
            prop_assert_eq!(TraceParent::parse(&tp.to_string()).ok(), Some(tp));
        }
    }

    #[test]
    fn stream_entries_never_panic(
        fields in vec((field_name(), field_value()), 0..12),
    ) {
        let entry = RawEntry { id: "1-0".into(), fields };
        let _ = entry.aggregate_id();
        if let Ok(event) = entry.decode() {
            // Whatever decodes, written back, decodes to itself.
            let back = EventEnvelope::from_stream_fields(event.to_stream_fields());
            prop_assert_eq!(back, Ok(event));
        }
    }

    #[test]
    fn envelopes_round_trip_through_stream_fields(event in envelope()) {
        let fields = event.to_stream_fields();
        let entry = RawEntry {
            id: "1732435200000-0".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        };
        prop_assert_eq!(entry.aggregate_id(), Some(event.aggregate_id.as_str()));
        prop_assert_eq!(entry.decode(), Ok(event.clone()));
        // The outbox column is an `integer`: versions past i32::MAX saturate.
        if i32::try_from(event.schema_version).is_ok() {
            prop_assert_eq!(EventEnvelope::try_from(OutboxColumns::from(&event)), Ok(event));
        }
    }

    #[test]
    fn timestamps_with_any_offset_read_as_the_same_instant(
        event in envelope(),
        offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59_i32),
    ) {
        let offset = time::UtcOffset::from_whole_seconds(offset_minutes * 60).expect("offset");
        let Some(local) = event.occurred_at.checked_to_offset(offset) else {
            return Ok(());
        };
        let Ok(text) = local.format(&Rfc3339) else {
            // Outside years 0..=9999 in that offset: not RFC 3339.
            return Ok(());
        };
        let fields = event.to_stream_fields().into_iter().map(|(k, v)| {
            (k, if k == "occurred_at" { text.clone() } else { v })
        });
        let decoded = EventEnvelope::from_stream_fields(fields);
        prop_assert_eq!(decoded.map(|e| format_timestamp(e.occurred_at)), Ok(format_timestamp(event.occurred_at)));
    }
}

#[test]
fn timestamps_whose_utc_falls_outside_years_0_to_9999_are_refused() {
    // `to_offset` panicked on the first (found while writing the stream_entry fuzz
    // target); the second decoded to an instant `format_timestamp` cannot write.
    for text in ["9999-12-31T23:59:59-00:01", "0000-01-01T00:00:00+00:01"] {
        let mut fields: Vec<(&str, String)> = FIELDS
            .iter()
            .map(|f| (*f, String::new()))
            .filter(|(f, _)| *f != "traceparent")
            .collect();
        for (name, value) in &mut fields {
            *value = match *name {
                "event_id" => "0193a3e2-7c1a-7000-8000-00000000aaaa",
                "event_type" => "OrderCreated",
                "schema_version" => "1",
                "aggregate_type" => "Order",
                "aggregate_id" => "o-1",
                "occurred_at" => text,
                _ => "{}",
            }
            .to_owned();
        }
        let decoded = EventEnvelope::from_stream_fields(fields);
        assert!(
            matches!(
                decoded,
                Err(shared::envelope::EnvelopeError::Invalid {
                    field: "occurred_at",
                    ..
                })
            ),
            "{text}: {decoded:?}"
        );
    }
}
