//! What an operator wants to know about the streams: length, groups, consumers,
//! pending records and lag.

use crate::redis_link::Redis;
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
    /// How long ago the oldest pending record was appended, when one is pending.
    pub oldest_pending_age_ms: Option<u64>,
    /// The consumer whose lease lets it read this stream for the group, if any.
    pub lease_holder: Option<String>,
    /// Each consumer: its pending records and how long since it last read.
    pub consumer_list: Vec<ConsumerOverview>,
}

/// One consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerOverview {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

/// The lease key of `group` on `stream` (as the event source writes it).
pub(crate) fn lease_key(namespace: &str, group: &str, stream: &str) -> String {
    format!("{namespace}:lease:{group}:{stream}")
}

/// Every stream under `namespace` (event streams and dead-letter streams), by key.
pub async fn streams(
    redis: &mut Redis,
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
        let mut overviews = Vec::with_capacity(groups.groups.len());
        for g in groups.groups {
            let details = group_details(redis, namespace, &key, &g.name).await?;
            overviews.push(GroupOverview {
                consumers: g.consumers as u64,
                pending: g.pending as u64,
                lag: g.lag.map(|l| l as u64),
                last_delivered_id: g.last_delivered_id,
                oldest_pending_age_ms: details.0,
                lease_holder: details.1,
                consumer_list: details.2,
                name: g.name,
            });
        }
        out.push(StreamOverview {
            key,
            length,
            groups: overviews,
        });
    }
    Ok(out)
}

/// A group's oldest pending age, lease holder and consumers.
async fn group_details(
    redis: &mut Redis,
    namespace: &str,
    key: &str,
    group: &str,
) -> Result<(Option<u64>, Option<String>, Vec<ConsumerOverview>), redis::RedisError> {
    let (pending, holder, consumers): (
        redis::streams::StreamPendingReply,
        Option<String>,
        redis::streams::StreamInfoConsumersReply,
    ) = redis::pipe()
        .cmd("XPENDING")
        .arg(key)
        .arg(group)
        .cmd("GET")
        .arg(lease_key(namespace, group, key))
        .cmd("XINFO")
        .arg("CONSUMERS")
        .arg(key)
        .arg(group)
        .query_async(redis)
        .await?;
    let now_ms =
        u64::try_from(crate::envelope::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let oldest = match pending {
        redis::streams::StreamPendingReply::Data(data) => data
            .start_id
            .split_once('-')
            .and_then(|(ms, _)| ms.parse::<u64>().ok())
            .map(|ms| now_ms.saturating_sub(ms)),
        _ => None,
    };
    let consumers = consumers
        .consumers
        .into_iter()
        .map(|c| ConsumerOverview {
            name: c.name,
            pending: c.pending as u64,
            idle_ms: c.idle as u64,
        })
        .collect();
    Ok((oldest, holder, consumers))
}
