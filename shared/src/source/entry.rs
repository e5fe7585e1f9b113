//! Stream entries exactly as Redis holds them, read from raw replies: fields
//! keep their order, duplicates and bytes, so a dead-lettered entry is a
//! verbatim copy of the original.

use redis::Value;

use crate::envelope::{EnvelopeError, EventEnvelope};

/// One stream entry: its id and its field/value pairs, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub id: String,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawEntry {
    /// The value of the first field called `name`.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// The entry's aggregate id, if it has a readable one: the unit of ordering.
    pub fn aggregate_id(&self) -> Option<&str> {
        std::str::from_utf8(self.field("aggregate_id")?).ok()
    }

    pub fn decode(&self) -> Result<EventEnvelope, EnvelopeError> {
        EventEnvelope::from_stream_fields(
            self.fields
                .iter()
                .map(|(k, v)| (String::from_utf8_lossy(k), v.as_slice())),
        )
    }

    /// Milliseconds since the epoch at which Redis appended the entry.
    pub fn timestamp_ms(&self) -> Option<u64> {
        self.id.split_once('-')?.0.parse().ok()
    }
}

/// A reply that is not the shape the command returns (a bug, or not Redis).
pub(crate) fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

pub(crate) fn string(value: Value) -> Option<String> {
    String::from_utf8(bytes(value)?).ok()
}

fn items(value: Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(v) | Value::Set(v) => Some(v),
        Value::Map(pairs) => Some(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

/// One `[id, [field, value, ...]]`; `None` for an entry deleted since (history
/// reads answer `[id, nil]`).
fn entry(value: Value) -> Result<Option<RawEntry>, redis::RedisError> {
    let mut parts = items(value)
        .ok_or_else(|| unexpected("a stream entry"))?
        .into_iter();
    let id = parts
        .next()
        .and_then(string)
        .ok_or_else(|| unexpected("a stream entry id"))?;
    let fields = match parts.next() {
        None | Some(Value::Nil) => return Ok(None),
        Some(v) => items(v).ok_or_else(|| unexpected("stream entry fields"))?,
    };
    let mut pairs = Vec::with_capacity(fields.len() / 2);
    let mut fields = fields.into_iter();
    while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
        pairs.push((
            bytes(k).ok_or_else(|| unexpected("a field name"))?,
            bytes(v).ok_or_else(|| unexpected("a field value"))?,
        ));
    }
    Ok(Some(RawEntry { id, fields: pairs }))
}

/// The reply of `XRANGE`: entries in id order.
pub(crate) fn parse_range(value: Value) -> Result<Vec<RawEntry>, redis::RedisError> {
    let list = items(value).ok_or_else(|| unexpected("an XRANGE reply"))?;
    let mut out = Vec::with_capacity(list.len());
    for v in list {
        out.extend(entry(v)?);
    }
    Ok(out)
}

/// The reply of `XREADGROUP` for one stream: its entries (nil on timeout).
pub(crate) fn parse_read(value: Value) -> Result<Vec<RawEntry>, redis::RedisError> {
    let mut out = Vec::new();
    let streams = items(value).ok_or_else(|| unexpected("an XREADGROUP reply"))?;
    let mut streams = streams.into_iter().peekable();
    while let Some(stream) = streams.next() {
        // RESP2: [[name, entries], ...]; RESP3 maps flatten to name, entries, ...
        let entries = match stream {
            Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
            _ => streams.next(),
        };
        if let Some(entries) = entries {
            out.extend(parse_range(entries)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn replies_parse_with_order_and_duplicates_kept() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("events:{Order:0}"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("5-1"),
                    Value::Array(vec![
                        bulk("b"),
                        bulk("2"),
                        bulk("a"),
                        bulk("1"),
                        bulk("b"),
                        bulk("3"),
                    ]),
                ]),
                Value::Array(vec![bulk("6-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read(reply).expect("parses");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "5-1");
        assert_eq!(entries[0].fields.len(), 3);
        assert_eq!(entries[0].field("b"), Some(&b"2"[..]));
        assert_eq!(entries[0].timestamp_ms(), Some(5));
        assert!(parse_read(Value::Nil).expect("timeout").is_empty());
        assert!(parse_range(bulk("x")).is_err());
    }
}
