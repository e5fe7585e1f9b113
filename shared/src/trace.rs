//! W3C Trace Context (`traceparent`): carried from the HTTP request into the
//! outbox row, the stream entry and every event caused by it, so one trace id
//! follows an order through all services.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

use crate::value::InvalidValue;

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

    /// The 16-hex-digit id of the span this context names as the parent of what
    /// follows: ours once [`child`](Self::child) made it, else the caller's.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.parent_id)
    }

    /// The same trace read from an AWS X-Ray trace header (`X-Amzn-Trace-Id`, or
    /// Lambda's `_X_AMZN_TRACE_ID`): `Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=<0|1>`.
    /// The X-Ray trace id is the W3C one written in two parts, so both name the
    /// same trace. Without a `Parent`, a new span id is made. `None` if `Root`
    /// is missing or malformed.
    pub fn from_xray(header: &str) -> Option<Self> {
        let mut root = None;
        let mut parent = None;
        let mut sampled = true;
        for part in header.split(';') {
            let (key, value) = part.trim().split_once('=')?;
            match key.trim() {
                "Root" => root = Some(value.trim()),
                "Parent" => parent = Some(value.trim()),
                "Sampled" => sampled = value.trim() != "0",
                _ => {}
            }
        }
        let mut pieces = root?.split('-');
        let (Some("1"), Some(time), Some(unique), None) =
            (pieces.next(), pieces.next(), pieces.next(), pieces.next())
        else {
            return None;
        };
        let lower_hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(time, 8) || !lower_hex(unique, 24) {
            return None;
        }
        let trace_id = u128::from_str_radix(&format!("{time}{unique}"), 16).ok()?;
        let parent_id = match parent {
            Some(p) if lower_hex(p, 16) => u64::from_str_radix(p, 16).ok()?,
            _ => rand::rng().random_range(1..=u64::MAX),
        };
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags: u8::from(sampled),
        })
    }

    /// The trace of this invocation in Lambda's `_X_AMZN_TRACE_ID` variable, which
    /// the runtime sets for each invocation when tracing is active.
    pub fn from_lambda_environment() -> Option<Self> {
        std::env::var("_X_AMZN_TRACE_ID")
            .ok()
            .and_then(|value| Self::from_xray(&value))
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
    fn an_xray_header_names_the_same_trace() {
        let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let tp = TraceParent::from_xray(header).expect("valid");
        assert_eq!(
            tp.to_string(),
            "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01"
        );
        let unsampled =
            TraceParent::from_xray("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0")
                .expect("valid without a parent");
        assert_eq!(unsampled.trace_id(), "5759e988bd862e3fe1be46a994272793");
        assert!(unsampled.to_string().ends_with("-00"));
        for bad in [
            "",
            "Parent=53995c3f42cd8ad8",
            "Root=2-5759e988-bd862e3fe1be46a994272793",
            "Root=1-5759e98-bd862e3fe1be46a994272793",
            "Root=1-5759e988-bd862e3fe1be46a99427279",
            "Root=1-00000000-000000000000000000000000",
        ] {
            assert!(TraceParent::from_xray(bad).is_none(), "{bad:?}");
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
