//! Property tests of the `Idempotency-Key` header parser, which takes untrusted
//! bytes: it never panics, and a key reads back equal, bare or quoted.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use order_service::idempotency::IdempotencyKey;
use proptest::collection::vec;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_parser_never_panics(bytes in vec(any::<u8>(), 0..300)) {
        let _ = IdempotencyKey::parse_header(&bytes);
    }

    #[test]
    fn the_parser_never_panics_on_near_misses(text in r#"[ "\\\-;=0-9a-fA-F]{0,120}"#) {
        let _ = IdempotencyKey::parse_header(text.as_bytes());
    }

    #[test]
    fn keys_read_back_bare_and_quoted(key in "[!-~]{1,255}") {
        // A bare key that starts with `"` is read as a quoted string instead.
        if !key.starts_with('"') {
            let bare = IdempotencyKey::parse_header(key.as_bytes());
            prop_assert_eq!(bare.as_ref().map(IdempotencyKey::as_str).ok(), Some(key.as_str()));
        }
        let quoted = format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
        let quoted = IdempotencyKey::parse_header(quoted.as_bytes());
        prop_assert_eq!(quoted.as_ref().map(IdempotencyKey::as_str).ok(), Some(key.as_str()));
    }
}
