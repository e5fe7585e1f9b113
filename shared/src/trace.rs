//! W3C Trace Context (`traceparent`): carried from the HTTP request into the
//! outbox row, the stream entry and every event caused by it, so one trace id
//! follows an order through all services.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

use crate::domain::InvalidValue;

/// A parsed `traceparent` value: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

impl TraceParent {
    /// Starts a new trace (sampled).
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        Self {
            trace_id: rng.random_range(1..=u128::MAX),
            parent_id: rng.random_range(1..=u64::MAX),
            flags: 0x01,
        }
    }

    /// The same trace, with a new span of ours as the parent of what follows.
    pub fn child(&self) -> Self {
        Self {
            parent_id: rand::rng().random_range(1..=u64::MAX),
            ..*self
        }
    }

    pub fn parse(value: &str) -> Result<Self, InvalidValue> {
        let invalid = || InvalidValue::new("traceparent must be 00-<32 hex>-<16 hex>-<2 hex>");
        let parts: Vec<&str> = value.trim().split('-').collect();
        let [version, trace_id, parent_id, flags] = parts[..] else {
            return Err(invalid());
        };
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if version != "00" || !hex(trace_id, 32) || !hex(parent_id, 16) || !hex(flags, 2) {
            return Err(invalid());
        }
        let trace_id = u128::from_str_radix(trace_id, 16).map_err(|_| invalid())?;
        let parent_id = u64::from_str_radix(parent_id, 16).map_err(|_| invalid())?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| invalid())?;
        if trace_id == 0 || parent_id == 0 {
            return Err(invalid());
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The 32-hex-digit trace id, as logs show it.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl FromStr for TraceParent {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_spec_example() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).expect("valid");
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = parsed.child();
        assert_eq!(child.trace_id(), parsed.trace_id());
        assert_ne!(child, parsed);
    }

    #[test]
    fn refuses_malformed_and_all_zero_ids() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                TraceParent::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn new_roots_are_distinct() {
        assert_ne!(
            TraceParent::new_root().trace_id(),
            TraceParent::new_root().trace_id()
        );
    }
}
