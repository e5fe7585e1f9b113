//! What an operator wants to know about the streams: length, groups, consumers,
//! pending records and lag.

use redis::aio::ConnectionManager;
use serde::Serialize;

/// One stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamOverview {
    pub key: String,
    pub length: u64,
    pub groups: Vec<GroupOverview>,
}

/// One consumer group of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupOverview {
    pub name: String,
    pub consumers: u64,
    /// Delivered, not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to the group (`None` when Redis cannot tell,
    /// e.g. after entries were deleted from the middle of the stream).
    pub lag: Option<u64>,
    pub last_delivered_id: String,
}

/// Every stream under `namespace` (event streams and dead-letter streams), by key.
pub async fn streams(
    redis: &mut ConnectionManager,
    namespace: &str,
) -> Result<Vec<StreamOverview>, redis::RedisError> {
    let keys = crate::streams::scan_streams(redis, &format!("{namespace}:*")).await?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let length: u64 = redis::cmd("XLEN").arg(&key).query_async(redis).await?;
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(redis)
            .await?;
        out.push(StreamOverview {
            key,
            length,
            groups: groups
                .groups
                .into_iter()
                .map(|g| GroupOverview {
                    name: g.name,
                    consumers: g.consumers as u64,
                    pending: g.pending as u64,
                    lag: g.lag.map(|l| l as u64),
                    last_delivered_id: g.last_delivered_id,
                })
                .collect(),
        });
    }
    Ok(out)
}
