//! Where events live in Redis: one stream per aggregate type and partition.
//!
//! Key names are valid on Redis Cluster: the part in braces is the hash tag, so
//! each partition can live on its own shard and every key of one partition on the
//! same one. The events of one aggregate always go to the same partition, so they
//! stay in order within one stream.

use crate::envelope::AggregateType;

/// `hash(aggregate_id) mod partitions`, with a hash that never changes across
/// releases or platforms (FNV-1a, 64 bit): producers and consumers must agree.
pub fn partition_of(aggregate_id: &str, partitions: u16) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in aggregate_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // The remainder is below `partitions`, a u16.
    u16::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

/// The default namespace of stream keys (`STREAM_NAMESPACE`).
pub const DEFAULT_NAMESPACE: &str = "events";

/// `STREAM_PARTITIONS` (1, 1..=1024): streams per aggregate type.
pub fn partitions(env: &crate::config::Env) -> Result<u16, crate::config::ConfigError> {
    env.in_range("STREAM_PARTITIONS", 1, 1, 1024)
}

/// `STREAM_NAMESPACE` ([`DEFAULT_NAMESPACE`]): ASCII letters, digits and `- _ . :`.
pub fn namespace(env: &crate::config::Env) -> Result<String, crate::config::ConfigError> {
    match env.get("STREAM_NAMESPACE")? {
        None => Ok(DEFAULT_NAMESPACE.to_owned()),
        Some(ns)
            if !ns.is_empty()
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            Ok(ns.to_owned())
        }
        Some(_) => Err(crate::config::ConfigError::Malformed {
            var: "STREAM_NAMESPACE",
            reason: "must be ASCII letters, digits and - _ . :".into(),
        }),
    }
}

/// `events:{Order:0}`: the stream of `aggregate_type`'s events in `partition`,
/// under `namespace` (one Redis can hold several systems, or tests, apart).
pub fn stream_key(namespace: &str, aggregate_type: &AggregateType, partition: u16) -> String {
    format!("{namespace}:{{{aggregate_type}:{partition}}}")
}

/// Every stream key of `aggregate_type` with `partitions` partitions.
pub fn stream_keys(
    namespace: &str,
    aggregate_type: &AggregateType,
    partitions: u16,
) -> Vec<String> {
    (0..partitions.max(1))
        .map(|p| stream_key(namespace, aggregate_type, p))
        .collect()
}

/// The `SCAN MATCH` pattern of every stream key under `namespace`.
pub fn stream_key_pattern(namespace: &str) -> String {
    format!("{namespace}:{{*}}")
}

/// The keys of every stream matching `pattern` (`SCAN ... MATCH ... TYPE stream`,
/// on every primary of a cluster), sorted, each once.
pub async fn scan_streams(
    redis: &mut crate::redis_link::Redis,
    pattern: &str,
) -> Result<Vec<String>, redis::RedisError> {
    redis.scan(pattern, Some("stream")).await
}

/// A stream entry id, `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId(u64, u64);

impl StreamId {
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    pub fn next(self) -> Self {
        if self.1 == u64::MAX {
            Self(self.0 + 1, 0)
        } else {
            Self(self.0, self.1 + 1)
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_in_range() {
        // Pinned values: changing the hash would reorder every live stream.
        assert_eq!(partition_of("", 1), 0);
        assert_eq!(
            partition_of("0193a3e2-7c1a-7000-8000-000000000001", 8),
            partition_of("0193a3e2-7c1a-7000-8000-000000000001", 8)
        );
        assert_eq!(
            partition_of("a", 1024),
            (0xaf63_dc4c_8601_ec8c_u64 % 1024) as u16
        );
        for i in 0..1000 {
            assert!(partition_of(&format!("agg-{i}"), 7) < 7);
        }
        assert_eq!(partition_of("x", 0), 0);
    }

    #[test]
    fn keys_carry_a_cluster_hash_tag_per_partition() {
        let order = AggregateType::parse("Order").expect("valid");
        assert_eq!(stream_key("events", &order, 3), "events:{Order:3}");
        assert_eq!(
            stream_keys("t1", &order, 2),
            ["t1:{Order:0}", "t1:{Order:1}"]
        );
        assert_eq!(stream_key_pattern("events"), "events:{*}");
    }
}
