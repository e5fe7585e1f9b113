//! `PUT /inventory/{sku}` bodies: `SetAvailable::parse` answers values in range
//! (units, and the price when given) or a problem, never a panic.
#![no_main]

use inventory_api::{SetAvailable, MAX_AVAILABLE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match SetAvailable::parse(data) {
        Ok(set) => {
            assert!((0..=MAX_AVAILABLE).contains(&set.available));
            if let Some(price) = set.price_cents {
                assert!((0..=contracts::Money::MAX_UNIT_PRICE).contains(&price));
            }
        }
        Err(problem) => assert!(problem.status == 400 || problem.status == 422),
    }
});
