//! Redis stream entries: a raw entry's fields decoded into an `EventEnvelope`,
//! then, as a `StreamRecord`, through both consumers' decoders. None may panic;
//! a decoded envelope written back to stream fields decodes to itself.
//!
//! Input format: field names and values alternate, each ended by a NUL byte
//! (`name\0value\0name\0value...`), so entries with missing, duplicate, unknown
//! or non-UTF-8 fields are all reachable. See `fuzz/seeds/stream_entry/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::envelope::EventEnvelope;
use shared::source::{RawEntry, StreamRecord};
use shared::trace::TraceParent;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let mut fields = Vec::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        fields.push((name.to_vec(), value.to_vec()));
    }
    let entry = RawEntry {
        id: "1732435200000-0".to_owned(),
        fields,
    };
    let _ = entry.aggregate_id();
    let Ok(event) = entry.decode() else {
        return;
    };
    let written = event.to_stream_fields();
    let back = EventEnvelope::from_stream_fields(
        written
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
    );
    assert_eq!(back.as_ref(), Ok(&event));
    let record = StreamRecord {
        stream: "events:{Order:0}".to_owned(),
        id: entry.id.clone(),
        attempt: 1,
        trace: event
            .traceparent
            .map_or_else(TraceParent::new_root, |tp| tp.child()),
        event,
    };
    let _ = inventory_consumer::decode(&record);
    let _ = order_saga::decode(&record);
});
