//! The layout of a namespace's streams: how many partitions, in which
//! generation of stream keys, and how a change of `STREAM_PARTITIONS` happens
//! without reordering any aggregate's events.
//!
//! Changing the partition count moves most aggregates to another partition. As
//! Kinesis finishes a parent shard before its children, consumers finish the
//! old streams before they read the new ones:
//!
//! 1. The record of truth is a row of `toolkit.stream_layout` (generation,
//!    partitions). Every relay batch takes a shared advisory lock of the
//!    namespace with its slots and reads the row after them, so it publishes
//!    with the layout of that moment.
//! 2. A relay whose `STREAM_PARTITIONS` differs from the row's (and which
//!    started after the row last changed, so an old instance still finishing
//!    never changes it back) takes that lock exclusively: no batch is under way
//!    and none starts. It notes the last entry of every stream of the current
//!    generation (its *end*), and commits the next generation: new stream keys
//!    (`events:{Order:g1.3}`), the new count, and the old generation's ends. Then
//!    it writes the same layout to Redis (`{namespace}:layout`), where
//!    consumers read it; a relay writes it again whenever Redis lacks it.
//! 3. A consumer group reads the old generation's streams until it has handled
//!    every one up to its end (nothing pending, the last delivered entry at or
//!    past the end), and only then the new generation's. So every event of an
//!    aggregate published before the change is handled before any published
//!    after it.
//! 4. A change waits until every group has finished the generation before the
//!    current one, so at most two generations are ever live.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::redis_link::Redis;
use crate::streams::{partition_of, StreamId};

/// Which streams a namespace's events go to, as recorded in PostgreSQL and
/// copied to Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// 0 for the keys without a generation (`events:{Order:3}`), the layout
    /// every namespace starts with.
    pub generation: u32,
    pub partitions: u16,
    /// The generation before this one, until every group has finished it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
    /// The id of the PostgreSQL row it comes from (made with the row, kept by
    /// its changes): a copy from another row, a database since made afresh,
    /// is replaced whatever its generation. `None` where it does not matter
    /// (a batch's routing, a relay of an earlier version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// A generation being finished by the consumers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    pub generation: u32,
    pub partitions: u16,
    /// The id of the last entry of each of its streams when the layout changed;
    /// a stream not named had none.
    pub ends: BTreeMap<String, String>,
}

/// What a relay does about its `STREAM_PARTITIONS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The layout already has the count, or this relay is older than the last
    /// change (an instance of the previous deployment still finishing).
    Keep,
    /// Move to the next generation with this many partitions.
    Repartition { to: u16 },
}

impl Layout {
    /// The first layout of a namespace.
    pub fn first(partitions: u16) -> Self {
        Self {
            generation: 0,
            partitions: partitions.max(1),
            previous: None,
            origin: None,
        }
    }

    /// Whether a relay configured for `desired` partitions changes this layout;
    /// `started_after_change`: the relay started after the layout last changed.
    pub fn change_for(&self, desired: u16, started_after_change: bool) -> Change {
        if desired == self.partitions || !started_after_change {
            Change::Keep
        } else {
            Change::Repartition { to: desired }
        }
    }

    /// The layout after this one, with `partitions` and the current
    /// generation's `ends`.
    pub fn next(&self, partitions: u16, ends: BTreeMap<String, String>) -> Self {
        Self {
            generation: self.generation + 1,
            partitions: partitions.max(1),
            previous: Some(Previous {
                generation: self.generation,
                partitions: self.partitions,
                ends,
            }),
            origin: self.origin.clone(),
        }
    }

    /// The stream of `aggregate_id`'s events of `aggregate_type`.
    pub fn stream_of(&self, namespace: &str, aggregate_type: &str, aggregate_id: &str) -> String {
        stream_key_in(
            namespace,
            aggregate_type,
            self.generation,
            partition_of(aggregate_id, self.partitions),
        )
    }

    /// Every stream of the current generation of `aggregate_types`.
    pub fn streams(&self, namespace: &str, aggregate_types: &[String]) -> Vec<String> {
        keys(namespace, aggregate_types, self.generation, self.partitions)
    }

    /// Every stream of the previous generation of `aggregate_types`, with its
    /// end (none when it had no entry).
    pub fn previous_streams(
        &self,
        namespace: &str,
        aggregate_types: &[String],
    ) -> Vec<(String, Option<String>)> {
        let Some(previous) = &self.previous else {
            return Vec::new();
        };
        keys(
            namespace,
            aggregate_types,
            previous.generation,
            previous.partitions,
        )
        .into_iter()
        .map(|key| {
            let end = previous.ends.get(&key).cloned();
            (key, end)
        })
        .collect()
    }

    /// Where a record once in `stream` goes now (a redriven dead letter): its
    /// aggregate's stream of the current generation when `stream` belongs to
    /// an older one, else `stream` itself.
    pub fn route(&self, namespace: &str, stream: &str, aggregate_id: Option<&str>) -> String {
        match parse_stream_key(namespace, stream) {
            Some(name) if name.generation != self.generation => {
                let partition = match aggregate_id {
                    Some(id) => partition_of(id, self.partitions),
                    None => name.partition % self.partitions.max(1),
                };
                stream_key_in(namespace, &name.aggregate_type, self.generation, partition)
            }
            _ => stream.to_owned(),
        }
    }
}

/// Which streams a consumer group following the layout reads now: the
/// previous generation's until the group has finished them
/// (`previous_finished`), then the current one's.
pub fn streams_to_read(
    layout: &Layout,
    namespace: &str,
    aggregate_types: &[String],
    previous_finished: bool,
) -> Vec<String> {
    if layout.previous.is_some() && !previous_finished {
        layout
            .previous_streams(namespace, aggregate_types)
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    } else {
        layout.streams(namespace, aggregate_types)
    }
}

/// Whether a group has finished a stream whose last entry is `end`: it was
/// delivered everything up to `end`, and has nothing pending.
pub fn finished(end: &str, last_delivered: &str, pending: u64) -> bool {
    let reached = match (StreamId::parse(end), StreamId::parse(last_delivered)) {
        (Some(end), Some(delivered)) => delivered >= end,
        _ => false,
    };
    reached && pending == 0
}

/// The key of partition `partition` of `aggregate_type` in `generation`:
/// `events:{Order:3}` in generation 0, `events:{Order:g2.3}` after. The part
/// in braces is the Redis Cluster hash tag.
pub fn stream_key_in(
    namespace: &str,
    aggregate_type: &str,
    generation: u32,
    partition: u16,
) -> String {
    if generation == 0 {
        format!("{namespace}:{{{aggregate_type}:{partition}}}")
    } else {
        format!("{namespace}:{{{aggregate_type}:g{generation}.{partition}}}")
    }
}

fn keys(
    namespace: &str,
    aggregate_types: &[String],
    generation: u32,
    partitions: u16,
) -> Vec<String> {
    aggregate_types
        .iter()
        .flat_map(|t| {
            (0..partitions.max(1)).map(move |p| stream_key_in(namespace, t, generation, p))
        })
        .collect()
}

/// A stream key read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamName {
    pub aggregate_type: String,
    pub generation: u32,
    pub partition: u16,
}

/// The parts of a key [`stream_key_in`] wrote under `namespace`.
pub fn parse_stream_key(namespace: &str, key: &str) -> Option<StreamName> {
    let inner = key
        .strip_prefix(namespace)?
        .strip_prefix(":{")?
        .strip_suffix('}')?;
    // Aggregate types may hold ':'; the last part is the partition.
    let (aggregate_type, last) = inner.rsplit_once(':')?;
    let (generation, partition) = match last.strip_prefix('g') {
        Some(rest) => {
            let (g, p) = rest.split_once('.')?;
            (g.parse().ok()?, p.parse().ok()?)
        }
        None => (0, last.parse().ok()?),
    };
    if aggregate_type.is_empty() {
        return None;
    }
    Some(StreamName {
        aggregate_type: aggregate_type.to_owned(),
        generation,
        partition,
    })
}

/// Where the layout of `namespace` is copied in Redis.
pub fn layout_key(namespace: &str) -> String {
    format!("{namespace}:layout")
}

/// Sets the key to the layout unless it holds a later generation of the same
/// row (a relay of the previous deployment never sets it back). The same
/// generation is written again, and a copy of another row (`origin`) is
/// replaced whatever its generation: PostgreSQL's row is the truth (a
/// database made afresh in a namespace whose copy survived). A copy or a
/// layout without an origin (a relay of an earlier version) compares
/// generations only.
const PUBLISH: &str = "local current = redis.call('GET', KEYS[1]) \
    if current then \
        local ok, decoded = pcall(cjson.decode, current) \
        if ok and type(decoded) == 'table' and tonumber(decoded.generation) \
            and tonumber(decoded.generation) > tonumber(ARGV[2]) \
            and (ARGV[3] == '' or type(decoded.origin) ~= 'string' \
                 or decoded.origin == ARGV[3]) then return 0 end \
    end \
    redis.call('SET', KEYS[1], ARGV[1]) return 1";

/// The layout of `namespace` as consumers see it; `None` before any relay of
/// this version ran (the consumers then read generation 0 of their own
/// `STREAM_PARTITIONS`).
pub async fn read(redis: &mut Redis, namespace: &str) -> Result<Option<Layout>, redis::RedisError> {
    let text: Option<String> = redis::cmd("GET")
        .arg(layout_key(namespace))
        .query_async(redis)
        .await?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// Copies `layout` to Redis unless Redis has a later generation of the same
/// row ([`PUBLISH`]); true if written.
pub async fn publish(
    redis: &mut Redis,
    namespace: &str,
    layout: &Layout,
) -> Result<bool, redis::RedisError> {
    let json = serde_json::to_string(layout).unwrap_or_default();
    let written: i64 = redis::cmd("EVAL")
        .arg(PUBLISH)
        .arg(1)
        .arg(layout_key(namespace))
        .arg(json)
        .arg(layout.generation)
        .arg(layout.origin.as_deref().unwrap_or_default())
        .query_async(redis)
        .await?;
    Ok(written == 1)
}

/// The id of `stream`'s last entry, if it has one.
pub async fn last_entry(
    redis: &mut Redis,
    stream: &str,
) -> Result<Option<String>, redis::RedisError> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(redis)
        .await?;
    Ok(reply.ids.into_iter().next().map(|e| e.id))
}

/// The groups of `stream` that have not finished it up to `end` (all of them
/// when `group` is `None`, else that one), each with why. A group not yet on
/// the stream has not finished it.
pub async fn unfinished_groups(
    redis: &mut Redis,
    stream: &str,
    end: &str,
    group: Option<&str>,
) -> Result<Vec<String>, redis::RedisError> {
    let groups: redis::streams::StreamInfoGroupsReply = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(redis)
        .await
    {
        Ok(groups) => groups,
        // No such stream: it was deleted, nothing in it is left to do.
        Err(e) if e.to_string().contains("no such key") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut unfinished = Vec::new();
    if let Some(wanted) = group {
        if !groups.groups.iter().any(|g| g.name == wanted) {
            unfinished.push(format!("{wanted} has not read {stream} yet"));
        }
    }
    for g in &groups.groups {
        if group.is_some_and(|wanted| wanted != g.name) {
            continue;
        }
        if !finished(end, &g.last_delivered_id, g.pending as u64) {
            unfinished.push(format!(
                "{} on {stream}: delivered up to {} of {end}, {} pending",
                g.name, g.last_delivered_id, g.pending
            ));
        }
    }
    Ok(unfinished)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> Vec<String> {
        vec!["Order".to_owned()]
    }

    #[test]
    fn keys_name_their_generation_after_the_first_and_read_back() {
        assert_eq!(stream_key_in("events", "Order", 0, 3), "events:{Order:3}");
        assert_eq!(
            stream_key_in("events", "Order", 2, 3),
            "events:{Order:g2.3}"
        );
        // The first generation's keys are the ones written before layouts existed.
        assert_eq!(
            stream_key_in("ns", "Order", 0, 5),
            crate::streams::stream_key(
                "ns",
                &crate::envelope::AggregateType::parse("Order").expect("valid"),
                5
            )
        );
        for (generation, partition) in [(0, 0), (0, 17), (1, 0), (12, 1023)] {
            let key = stream_key_in("a:b", "Ty:pe", generation, partition);
            assert_eq!(
                parse_stream_key("a:b", &key),
                Some(StreamName {
                    aggregate_type: "Ty:pe".into(),
                    generation,
                    partition
                }),
                "{key}"
            );
        }
        assert_eq!(parse_stream_key("events", "events:{Order:x}"), None);
        assert_eq!(parse_stream_key("events", "other:{Order:1}"), None);
        assert_eq!(parse_stream_key("events", "events:dlq:inventory"), None);
    }

    #[test]
    fn only_a_relay_newer_than_the_last_change_repartitions_and_only_to_another_count() {
        let layout = Layout::first(2);
        assert_eq!(layout.change_for(2, true), Change::Keep);
        assert_eq!(layout.change_for(4, false), Change::Keep);
        assert_eq!(layout.change_for(4, true), Change::Repartition { to: 4 });
        assert_eq!(layout.change_for(1, true), Change::Repartition { to: 1 });
    }

    #[test]
    fn the_next_generation_keeps_the_old_one_s_ends_and_consumers_finish_it_first() {
        let first = Layout::first(2);
        assert_eq!(
            first.streams("events", &types()),
            ["events:{Order:0}", "events:{Order:1}"]
        );
        let ends = BTreeMap::from([("events:{Order:1}".to_owned(), "5-0".to_owned())]);
        let next = first.next(3, ends);
        assert_eq!(next.generation, 1);
        assert_eq!(
            next.streams("events", &types()),
            [
                "events:{Order:g1.0}",
                "events:{Order:g1.1}",
                "events:{Order:g1.2}"
            ]
        );
        assert_eq!(
            next.previous_streams("events", &types()),
            [
                ("events:{Order:0}".to_owned(), None),
                ("events:{Order:1}".to_owned(), Some("5-0".to_owned()))
            ]
        );
        assert_eq!(
            streams_to_read(&next, "events", &types(), false),
            ["events:{Order:0}", "events:{Order:1}"]
        );
        assert_eq!(
            streams_to_read(&next, "events", &types(), true),
            next.streams("events", &types())
        );
        assert_eq!(
            streams_to_read(&first, "events", &types(), false),
            first.streams("events", &types())
        );
        // A JSON round trip, as through Redis.
        let json = serde_json::to_string(&next).expect("json");
        assert_eq!(serde_json::from_str::<Layout>(&json).expect("layout"), next);
    }

    #[test]
    fn a_stream_is_finished_when_delivered_to_its_end_with_nothing_pending() {
        assert!(finished("5-0", "5-0", 0));
        assert!(finished("5-0", "7-1", 0));
        assert!(!finished("5-0", "5-0", 1));
        assert!(!finished("5-1", "5-0", 0));
        assert!(!finished("10-0", "9-5", 0));
        assert!(!finished("5-0", "garbage", 0));
    }

    #[test]
    fn a_redriven_record_of_an_old_generation_goes_to_its_aggregate_s_current_stream() {
        let next = Layout::first(2).next(4, BTreeMap::new());
        let current = next.stream_of("events", "Order", "o-1");
        assert_eq!(
            next.route("events", "events:{Order:1}", Some("o-1")),
            current
        );
        assert_eq!(next.route("events", &current, Some("o-1")), current);
        assert_eq!(
            next.route("events", "events:{Order:7}", None),
            "events:{Order:g1.3}"
        );
        assert_eq!(next.route("events", "elsewhere", None), "elsewhere");
    }
}
