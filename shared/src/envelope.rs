//! The event envelope every event in the system travels in, and the one place
//! that says how it is written to and read from a Redis Stream entry and an
//! outbox row. Nothing else may spell those field names.

use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::trace::TraceParent;
use crate::value::{check_identifier, EventId, InvalidValue};

/// What happened, e.g. `OrderCreated`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType(String);

/// The kind of entity an event is about, e.g. `Order`. Streams are named after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggregateType(String);

/// The id of the entity an event is about; events of one aggregate keep their order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggregateId(String);

macro_rules! identifier {
    ($name:ident, $what:literal, $max:literal) => {
        impl $name {
            pub fn parse(value: &str) -> Result<Self, InvalidValue> {
                check_identifier($what, value, $max)?;
                Ok(Self(value.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
identifier!(EventType, "an event type", 64);
identifier!(AggregateType, "an aggregate type", 64);
identifier!(AggregateId, "an aggregate id", 128);

/// One event, as written by its producer and read by every consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    pub event_id: EventId,
    pub event_type: EventType,
    /// The version of `payload`'s schema for this `event_type`; starts at 1.
    pub schema_version: u32,
    pub aggregate_type: AggregateType,
    pub aggregate_id: AggregateId,
    /// UTC, microsecond precision (what PostgreSQL keeps), RFC 3339 on the wire.
    pub occurred_at: OffsetDateTime,
    /// The W3C trace context of the request that caused the event.
    pub traceparent: Option<TraceParent>,
    pub payload: Payload,
}

/// An event's payload: JSON text, checked to be JSON, kept byte for byte as its
/// producer wrote it (the relay publishes it exactly as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(String);

impl Payload {
    /// Checks that `text` is one JSON value.
    pub fn from_json(text: impl Into<String>) -> Result<Self, InvalidValue> {
        let text = text.into();
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| InvalidValue::new(format!("the payload is not JSON: {e}")))?;
        Ok(Self(text))
    }

    /// Serializes `value` as the payload.
    pub fn of(value: &impl serde::Serialize) -> Result<Self, InvalidValue> {
        serde_json::to_string(value)
            .map(Self)
            .map_err(|e| InvalidValue::new(format!("the payload cannot be serialized: {e}")))
    }

    /// Decodes the payload into the type its `event_type` and `schema_version` name.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a stream entry or an outbox row is not an envelope. Always permanent:
/// reading the same bytes again gives the same answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{0}` appears more than once")]
    Duplicate(&'static str),
    #[error("field `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl EnvelopeError {
    fn invalid(field: &'static str, reason: impl fmt::Display) -> Self {
        Self::Invalid {
            field,
            reason: reason.to_string(),
        }
    }
}

// The stream entry's field names, in the order they are written.
const EVENT_ID: &str = "event_id";
const EVENT_TYPE: &str = "event_type";
const SCHEMA_VERSION: &str = "schema_version";
const AGGREGATE_TYPE: &str = "aggregate_type";
const AGGREGATE_ID: &str = "aggregate_id";
const OCCURRED_AT: &str = "occurred_at";
const TRACEPARENT: &str = "traceparent";
const PAYLOAD: &str = "payload";
const FIELDS: [&str; 8] = [
    EVENT_ID,
    EVENT_TYPE,
    SCHEMA_VERSION,
    AGGREGATE_TYPE,
    AGGREGATE_ID,
    OCCURRED_AT,
    TRACEPARENT,
    PAYLOAD,
];

impl EventEnvelope {
    /// A new event about `aggregate_id`, occurring now.
    pub fn new(
        event_type: EventType,
        schema_version: u32,
        aggregate_type: AggregateType,
        aggregate_id: AggregateId,
        traceparent: Option<TraceParent>,
        payload: Payload,
    ) -> Self {
        Self {
            event_id: EventId::new(),
            event_type,
            schema_version,
            aggregate_type,
            aggregate_id,
            occurred_at: now_utc(),
            traceparent,
            payload,
        }
    }

    /// The fields of the Redis Stream entry (`XADD key * f1 v1 f2 v2 ...`).
    /// `traceparent` is left out when there is none.
    pub fn to_stream_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            (EVENT_ID, self.event_id.to_string()),
            (EVENT_TYPE, self.event_type.to_string()),
            (SCHEMA_VERSION, self.schema_version.to_string()),
            (AGGREGATE_TYPE, self.aggregate_type.to_string()),
            (AGGREGATE_ID, self.aggregate_id.to_string()),
            (OCCURRED_AT, format_timestamp(self.occurred_at)),
        ];
        if let Some(tp) = &self.traceparent {
            fields.push((TRACEPARENT, tp.to_string()));
        }
        fields.push((PAYLOAD, self.payload.as_str().to_owned()));
        fields
    }

    /// Reads a stream entry's fields back. Unknown fields are ignored, so
    /// producers may add fields before consumers know them.
    pub fn from_stream_fields<I, K, V>(fields: I) -> Result<Self, EnvelopeError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let mut values: [Option<String>; 8] = Default::default();
        for (name, value) in fields {
            let Some(slot) = FIELDS.iter().position(|f| *f == name.as_ref()) else {
                continue;
            };
            let field = FIELDS[slot];
            if values[slot].is_some() {
                return Err(EnvelopeError::Duplicate(field));
            }
            let text = std::str::from_utf8(value.as_ref())
                .map_err(|_| EnvelopeError::invalid(field, "not UTF-8"))?;
            values[slot] = Some(text.to_owned());
        }
        let [event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, traceparent, payload] =
            values;
        let need = |v: Option<String>, field| v.ok_or(EnvelopeError::Missing(field));
        let event_id = need(event_id, EVENT_ID)?;
        let schema_version = need(schema_version, SCHEMA_VERSION)?;
        let occurred_at = need(occurred_at, OCCURRED_AT)?;
        let payload = need(payload, PAYLOAD)?;
        Ok(Self {
            event_id: EventId::parse(&event_id).map_err(|e| EnvelopeError::invalid(EVENT_ID, e))?,
            event_type: parse_field(EVENT_TYPE, need(event_type, EVENT_TYPE)?, EventType::parse)?,
            schema_version: parse_schema_version(&schema_version)?,
            aggregate_type: parse_field(
                AGGREGATE_TYPE,
                need(aggregate_type, AGGREGATE_TYPE)?,
                AggregateType::parse,
            )?,
            aggregate_id: parse_field(
                AGGREGATE_ID,
                need(aggregate_id, AGGREGATE_ID)?,
                AggregateId::parse,
            )?,
            occurred_at: parse_timestamp(&occurred_at)?,
            traceparent: traceparent
                .map(|tp| {
                    TraceParent::parse(&tp).map_err(|e| EnvelopeError::invalid(TRACEPARENT, e))
                })
                .transpose()?,
            payload: Payload::from_json(payload).map_err(|e| EnvelopeError::invalid(PAYLOAD, e))?,
        })
    }
}

fn parse_field<T>(
    field: &'static str,
    value: String,
    parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
) -> Result<T, EnvelopeError> {
    parse(&value).map_err(|e| EnvelopeError::invalid(field, e))
}

/// RFC 3339 text as a UTC instant within the years 0000 to 9999, the instants
/// [`format_timestamp`] writes. Checked, not `to_offset`: that panics when the
/// instant in UTC leaves the years `time` supports (`9999-12-31T23:59:59-00:01`).
fn parse_timestamp(value: &str) -> Result<OffsetDateTime, EnvelopeError> {
    OffsetDateTime::parse(value, &Rfc3339)
        .map_err(|e| EnvelopeError::invalid(OCCURRED_AT, e))?
        .checked_to_offset(time::UtcOffset::UTC)
        .filter(|at| (0..=9999).contains(&at.year()))
        .ok_or_else(|| {
            EnvelopeError::invalid(OCCURRED_AT, "must be within the years 0000 to 9999 in UTC")
        })
}

fn parse_schema_version(value: &str) -> Result<u32, EnvelopeError> {
    match value.parse::<u32>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(EnvelopeError::invalid(
            SCHEMA_VERSION,
            "must be a whole number from 1",
        )),
    }
}

/// An outbox row's columns (every service's outbox has this shape; see the
/// migrations). `id` and `recorded_at` belong to the table, not the event.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxColumns {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub occurred_at: OffsetDateTime,
    pub traceparent: Option<String>,
    /// JSON text (the column is `json`, which keeps the text as written).
    pub payload: String,
}

impl From<&EventEnvelope> for OutboxColumns {
    fn from(e: &EventEnvelope) -> Self {
        Self {
            event_id: e.event_id.as_uuid(),
            event_type: e.event_type.to_string(),
            // Schema versions are small; a version past i32::MAX is saturated, never wrapped.
            schema_version: i32::try_from(e.schema_version).unwrap_or(i32::MAX),
            aggregate_type: e.aggregate_type.to_string(),
            aggregate_id: e.aggregate_id.to_string(),
            occurred_at: e.occurred_at,
            traceparent: e.traceparent.map(|tp| tp.to_string()),
            payload: e.payload.as_str().to_owned(),
        }
    }
}

impl TryFrom<OutboxColumns> for EventEnvelope {
    type Error = EnvelopeError;

    fn try_from(row: OutboxColumns) -> Result<Self, Self::Error> {
        Ok(Self {
            event_id: EventId::from(row.event_id),
            event_type: parse_field(EVENT_TYPE, row.event_type, EventType::parse)?,
            schema_version: u32::try_from(row.schema_version)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| EnvelopeError::invalid(SCHEMA_VERSION, "must be from 1"))?,
            aggregate_type: parse_field(AGGREGATE_TYPE, row.aggregate_type, AggregateType::parse)?,
            aggregate_id: parse_field(AGGREGATE_ID, row.aggregate_id, AggregateId::parse)?,
            occurred_at: row.occurred_at,
            traceparent: row
                .traceparent
                .map(|tp| {
                    TraceParent::parse(&tp).map_err(|e| EnvelopeError::invalid(TRACEPARENT, e))
                })
                .transpose()?,
            payload: Payload::from_json(row.payload)
                .map_err(|e| EnvelopeError::invalid(PAYLOAD, e))?,
        })
    }
}

/// The columns of many events, one array per column, to bind as `UNNEST` arrays
/// (one statement for a batch). `traceparent` uses `''` for "none": arrays of
/// NULLs do not bind as `text[]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxColumnArrays {
    pub event_ids: Vec<Uuid>,
    pub event_types: Vec<String>,
    pub schema_versions: Vec<i32>,
    pub aggregate_types: Vec<String>,
    pub aggregate_ids: Vec<String>,
    pub occurred_at: Vec<OffsetDateTime>,
    pub traceparents: Vec<String>,
    pub payloads: Vec<String>,
}

impl OutboxColumnArrays {
    /// Binds the eight arrays, in column order (`event_id` .. `payload`), as the
    /// next parameters of `query`: the one place that lists them for an
    /// `UNNEST` of envelopes (the outbox, the recorded answers).
    pub fn bind_to<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.event_ids)
            .bind(&self.event_types)
            .bind(&self.schema_versions)
            .bind(&self.aggregate_types)
            .bind(&self.aggregate_ids)
            .bind(&self.occurred_at)
            .bind(&self.traceparents)
            .bind(&self.payloads)
    }
}

impl<'a> FromIterator<&'a EventEnvelope> for OutboxColumnArrays {
    fn from_iter<I: IntoIterator<Item = &'a EventEnvelope>>(events: I) -> Self {
        let mut a = Self::default();
        for event in events {
            let c = OutboxColumns::from(event);
            a.event_ids.push(c.event_id);
            a.event_types.push(c.event_type);
            a.schema_versions.push(c.schema_version);
            a.aggregate_types.push(c.aggregate_type);
            a.aggregate_ids.push(c.aggregate_id);
            a.occurred_at.push(c.occurred_at);
            a.traceparents.push(c.traceparent.unwrap_or_default());
            a.payloads.push(c.payload);
        }
        a
    }
}

/// Now, in UTC, cut to the microsecond precision PostgreSQL stores, so a value
/// read back equals the value written.
pub fn now_utc() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let micros = now.nanosecond() / 1_000 * 1_000;
    now.replace_nanosecond(micros).unwrap_or(now)
}

/// RFC 3339 in UTC (`...Z`), as every timestamp leaves the system.
pub fn format_timestamp(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        // Formatting a UTC date within years 0..=9999 as RFC 3339 cannot fail.
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EventEnvelope {
        EventEnvelope::new(
            EventType::parse("OrderCreated").expect("valid"),
            1,
            AggregateType::parse("Order").expect("valid"),
            AggregateId::parse("0193a3e2-7c1a-7000-8000-000000000001").expect("valid"),
            Some(TraceParent::new_root()),
            Payload::from_json(r#"{"total_cents": 3998, "items": [{"sku": "A"}], "a": 1.50}"#)
                .expect("JSON"),
        )
    }

    #[test]
    fn stream_fields_round_trip() {
        let event = sample();
        let fields = event.to_stream_fields();
        let names: Vec<_> = fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, FIELDS);
        let back = EventEnvelope::from_stream_fields(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
        );
        assert_eq!(back, Ok(event));
    }

    #[test]
    fn outbox_columns_round_trip() {
        let event = sample();
        assert_eq!(
            EventEnvelope::try_from(OutboxColumns::from(&event)),
            Ok(event)
        );
    }

    #[test]
    fn a_missing_traceparent_is_allowed_and_extra_fields_ignored() {
        let mut event = sample();
        event.traceparent = None;
        let mut fields: Vec<(String, String)> = event
            .to_stream_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        fields.push(("added_later".into(), "x".into()));
        assert_eq!(EventEnvelope::from_stream_fields(fields), Ok(event));
    }

    #[test]
    fn broken_entries_name_the_field() {
        let good: Vec<(&str, String)> = sample().to_stream_fields();
        let without = |name: &str| {
            good.iter()
                .filter(|(k, _)| *k != name)
                .cloned()
                .collect::<Vec<_>>()
        };
        let replaced = |name: &str, value: &str| {
            good.iter()
                .map(|(k, v)| {
                    (
                        *k,
                        if *k == name {
                            value.to_owned()
                        } else {
                            v.clone()
                        },
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            EventEnvelope::from_stream_fields(without(EVENT_ID)),
            Err(EnvelopeError::Missing(EVENT_ID))
        );
        for (field, value) in [
            (EVENT_ID, "nope"),
            (SCHEMA_VERSION, "0"),
            (SCHEMA_VERSION, "-1"),
            (OCCURRED_AT, "yesterday"),
            (PAYLOAD, "{not json"),
            (TRACEPARENT, "00-zz"),
            (EVENT_TYPE, "Order Created"),
        ] {
            let err = EventEnvelope::from_stream_fields(replaced(field, value));
            assert!(
                matches!(err, Err(EnvelopeError::Invalid { field: f, .. }) if f == field),
                "{field}={value:?} gave {err:?}"
            );
        }
        let mut twice = good.clone();
        twice.push((EVENT_TYPE, "OrderCreated".into()));
        assert_eq!(
            EventEnvelope::from_stream_fields(twice),
            Err(EnvelopeError::Duplicate(EVENT_TYPE))
        );
        let not_utf8 = vec![(PAYLOAD, vec![0xff_u8, 0xfe])];
        assert!(matches!(
            EventEnvelope::from_stream_fields(not_utf8),
            Err(EnvelopeError::Invalid { field: PAYLOAD, .. })
        ));
    }

    #[test]
    fn timestamps_are_utc_rfc3339_with_microseconds() {
        let at = now_utc();
        assert_eq!(at.nanosecond() % 1_000, 0);
        let text = format_timestamp(at);
        assert!(text.ends_with('Z'), "{text}");
        assert_eq!(OffsetDateTime::parse(&text, &Rfc3339).ok(), Some(at));
    }
}
