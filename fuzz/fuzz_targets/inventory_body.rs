//! `PUT /inventory/{sku}` bodies: `SetAvailable::parse` answers a value in range
//! or a problem, never a panic.
#![no_main]

use inventory_api::{SetAvailable, MAX_AVAILABLE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match SetAvailable::parse(data) {
        Ok(set) => assert!((0..=MAX_AVAILABLE).contains(&set.available)),
        Err(problem) => assert!(problem.status == 400 || problem.status == 422),
    }
});
