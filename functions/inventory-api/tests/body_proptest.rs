//! Property tests of the `PUT /inventory/{sku}` body parser (the `inventory_body`
//! fuzz target covers the same ground for longer; RELIABILITY.md, "Fuzzing").

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use inventory_api::{SetAvailable, MAX_AVAILABLE};
use proptest::collection::vec;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        match SetAvailable::parse(&bytes) {
            Ok(set) => prop_assert!((0..=MAX_AVAILABLE).contains(&set.available)),
            Err(problem) => prop_assert!(problem.status == 400 || problem.status == 422),
        }
    }

    #[test]
    fn body_like_text_never_panics(
        text in r#"[{}\[\]":, a-z0-9.eE+-]{0,64}"#,
        n in any::<i64>(),
    ) {
        for body in [text.clone(), format!(r#"{{"available":{n}{text}"#)] {
            if let Err(problem) = SetAvailable::parse(body.as_bytes()) {
                prop_assert!(problem.status == 400 || problem.status == 422);
            }
        }
    }

    #[test]
    fn every_integer_is_accepted_exactly_when_in_range(n in prop_oneof![
        any::<i64>(),
        -2..=2_i64,
        i64::from(MAX_AVAILABLE) - 2..=i64::from(MAX_AVAILABLE) + 2,
    ], spaced in any::<bool>()) {
        let body = if spaced {
            format!("\n {{ \"available\" :\t{n} }} \n")
        } else {
            format!(r#"{{"available":{n}}}"#)
        };
        let parsed = SetAvailable::parse(body.as_bytes());
        if (0..=i64::from(MAX_AVAILABLE)).contains(&n) {
            prop_assert_eq!(parsed.ok().map(|s| i64::from(s.available)), Some(n));
        } else {
            let problem = parsed.err();
            prop_assert_eq!(
                problem.as_ref().map(|p| (p.status, p.errors[0].field.as_str())),
                Some((422, "available"))
            );
        }
    }
}
