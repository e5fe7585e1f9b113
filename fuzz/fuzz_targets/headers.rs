//! Header values: `Idempotency-Key`, `traceparent` and X-Ray's trace header.
//! The same bytes go to every parser; none may panic, and what one accepts must
//! survive its own round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use order_service::idempotency::IdempotencyKey;
use shared::trace::TraceParent;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = IdempotencyKey::parse_header(data) {
        assert!(!key.as_str().is_empty() && key.as_str().len() <= IdempotencyKey::MAX_LEN);
        // Written back as an sf-string, the key reads the same.
        let quoted = format!(
            "\"{}\"",
            key.as_str().replace('\\', "\\\\").replace('"', "\\\"")
        );
        assert_eq!(
            IdempotencyKey::parse_header(quoted.as_bytes()).ok(),
            Some(key)
        );
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(tp) = TraceParent::parse(&text) {
        assert_eq!(TraceParent::parse(&tp.to_string()).ok(), Some(tp));
        assert_eq!(tp.child().trace_id(), tp.trace_id());
    }
    if let Some(tp) = TraceParent::from_xray(&text) {
        assert_eq!(TraceParent::parse(&tp.to_string()).ok(), Some(tp));
    }
});
