//! One Redis node, or a Redis Cluster (`REDIS_CLUSTER=true`), behind one
//! connection type.
//!
//! On a cluster every command goes to the primary of its key's hash slot, and a
//! `MOVED` / `ASK` during resharding or failover is followed by the redis crate's
//! cluster client. What the toolkit adds on top:
//! - [`SlotPipeline`]: a pipeline is one round trip on one node, and one per hash
//!   slot on a cluster (the crate refuses a pipeline across slots);
//! - [`Redis::scan`]: `SCAN` on every primary, not on whichever node answers.
//!
//! Nothing in the toolkit relies on an atomic operation across keys: every
//! script and every pipeline that must be ordered names keys of one slot (a
//! stream and its lease share the stream's hash tag), or is split per slot and
//! run in order.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Cmd, RedisFuture, RedisResult, Value};

/// Where Redis is: `REDIS_URL` (on a cluster, one node's URL or several,
/// comma-separated) and `REDIS_CLUSTER`.
#[derive(Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per process or worker, made once: boxing saves nothing that counts"
)]
pub enum RedisClient {
    Node(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may hold a password.
        f.write_str(match self {
            Self::Node(_) => "RedisClient::Node",
            Self::Cluster(_) => "RedisClient::Cluster",
        })
    }
}

impl RedisClient {
    /// A client for `url`: one node's, or with `cluster` a cluster's seed
    /// nodes, comma-separated.
    pub fn open(url: &str, cluster: bool) -> RedisResult<Self> {
        if cluster {
            let nodes: Vec<&str> = url
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .collect();
            Ok(Self::Cluster(redis::cluster::ClusterClient::new(nodes)?))
        } else {
            Ok(Self::Node(redis::Client::open(url)?))
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A shared connection that connects on its first command and reconnects
    /// after a failure, so a cold start neither waits for Redis nor fails
    /// while it is briefly away; a command gives up after `response_timeout`.
    pub fn connect(&self, response_timeout: Duration) -> RedisResult<Redis> {
        match self {
            Self::Node(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(response_timeout))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(1);
                Ok(Redis::Node(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config,
                )?))
            }
            Self::Cluster(client) => Ok(Redis::Cluster(
                client.get_pending_async_connection_with_config(cluster_config(response_timeout)),
            )),
        }
    }

    /// A connection of its own, for blocking commands (`XREADGROUP BLOCK`),
    /// which would stall every other command on a shared one.
    pub async fn connect_dedicated(&self, response_timeout: Duration) -> RedisResult<Redis> {
        match self {
            Self::Node(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(response_timeout));
                Ok(Redis::Dedicated(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Self::Cluster(client) => Ok(Redis::Cluster(
                client
                    .get_async_connection_with_config(cluster_config(response_timeout))
                    .await?,
            )),
        }
    }
}

fn cluster_config(response_timeout: Duration) -> redis::cluster::ClusterConfig {
    redis::cluster::ClusterConfig::new()
        .set_connection_timeout(response_timeout.min(Duration::from_secs(5)))
        .set_response_timeout(response_timeout)
}

/// A connection to one node or to a cluster; cheap to clone (clones share it).
#[derive(Clone)]
pub enum Redis {
    /// Reconnects by itself.
    Node(ConnectionManager),
    /// One connection of its own ([`RedisClient::connect_dedicated`]).
    Dedicated(MultiplexedConnection),
    /// Routes by hash slot, follows redirections, reconnects by itself.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Node(_) => "Redis::Node",
            Self::Dedicated(_) => "Redis::Dedicated",
            Self::Cluster(_) => "Redis::Cluster",
        })
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Dedicated(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Dedicated(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Dedicated(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Redis {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The keys matching `pattern` (of `kind`, e.g. `stream`, when given), on
    /// every primary of a cluster; sorted, each once (`SCAN` may return a key
    /// twice).
    pub async fn scan(&mut self, pattern: &str, kind: Option<&str>) -> RedisResult<Vec<String>> {
        let mut keys = Vec::new();
        match self {
            Self::Cluster(cluster) => {
                for (host, port) in primaries(cluster).await? {
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    let mut cursor = 0;
                    loop {
                        let reply = cluster
                            .route_command(scan_step(cursor, pattern, kind), routing.clone())
                            .await?;
                        let (next, batch): (u64, Vec<String>) = redis::from_redis_value(reply)?;
                        keys.extend(batch);
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                }
            }
            node => {
                let mut cursor = 0;
                loop {
                    let (next, batch): (u64, Vec<String>) =
                        scan_step(cursor, pattern, kind).query_async(node).await?;
                    keys.extend(batch);
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

fn scan_step(cursor: u64, pattern: &str, kind: Option<&str>) -> Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1000);
    if let Some(kind) = kind {
        cmd.arg("TYPE").arg(kind);
    }
    cmd
}

/// The address of every primary (`CLUSTER SLOTS`: per slot range, its
/// primary first).
async fn primaries(cluster: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let ranges: Vec<Vec<Value>> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(cluster)
        .await?;
    let mut out: Vec<(String, u16)> = Vec::new();
    for range in ranges {
        let Some(primary) = range.into_iter().nth(2) else {
            continue;
        };
        let node: Vec<Value> = redis::from_redis_value(primary)?;
        let mut node = node.into_iter();
        let (Some(host), Some(port)) = (node.next(), node.next()) else {
            continue;
        };
        let address = (
            redis::from_redis_value::<String>(host)?,
            redis::from_redis_value::<u16>(port)?,
        );
        if !out.contains(&address) {
            out.push(address);
        }
    }
    Ok(out)
}

/// Commands sent in as few round trips as the deployment allows: one pipeline
/// on one node; on a cluster one per hash slot (the slot of each command's
/// key), each holding its slot's commands in the order they were added.
#[derive(Debug, Default)]
pub struct SlotPipeline {
    commands: Vec<(Slot, Cmd)>,
}

/// How a cluster's per-slot pipelines are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sending {
    /// One after another, in the order of each slot's first command: a command
    /// is never sent before an earlier command of another slot has succeeded
    /// (e.g. a dead letter is written before its record is acknowledged).
    InOrder,
    /// All at once (only the order within each slot is kept).
    Concurrently,
}

impl SlotPipeline {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Adds `cmd`, whose key (the one that routes it) is `key`.
    pub fn add(&mut self, key: impl AsRef<[u8]>, cmd: Cmd) -> &mut Self {
        self.commands.push((Slot::for_key(key), cmd));
        self
    }

    /// Sends the commands, with `tail` (e.g. `WAIT`) after each pipeline, to
    /// the node that pipeline went to. The commands' replies in the order they
    /// were added, and each pipeline's reply to `tail`.
    pub async fn run(
        self,
        redis: &mut Redis,
        sending: Sending,
        tail: Option<&Cmd>,
    ) -> RedisResult<Replies> {
        if self.commands.is_empty() {
            return Ok(Replies::default());
        }
        if !redis.is_cluster() {
            let mut pipe = redis::pipe();
            for (_, cmd) in &self.commands {
                pipe.add_command(cmd.clone());
            }
            if let Some(tail) = tail {
                pipe.add_command(tail.clone());
            }
            let mut replies: Vec<Value> = pipe.query_async(redis).await?;
            let tails = if tail.is_some() {
                replies.pop().into_iter().collect()
            } else {
                Vec::new()
            };
            return Ok(Replies { replies, tails });
        }
        let groups = per_slot(&self.commands);
        let mut pipes = Vec::with_capacity(groups.len());
        for group in &groups {
            let mut pipe = redis::pipe();
            for &i in group {
                pipe.add_command(self.commands[i].1.clone());
            }
            if let Some(tail) = tail {
                pipe.add_command(tail.clone());
            }
            pipes.push(pipe);
        }
        let answers: Vec<Vec<Value>> = match sending {
            Sending::InOrder => {
                let mut answers = Vec::with_capacity(pipes.len());
                for pipe in &pipes {
                    answers.push(pipe.query_async(&mut redis.clone()).await?);
                }
                answers
            }
            Sending::Concurrently => {
                futures::future::try_join_all(pipes.iter().map(|pipe| {
                    let mut redis = redis.clone();
                    async move { pipe.query_async::<Vec<Value>>(&mut redis).await }
                }))
                .await?
            }
        };
        let mut replies = vec![Value::Nil; self.commands.len()];
        let mut tails = Vec::new();
        for (group, mut answer) in groups.iter().zip(answers) {
            if tail.is_some() {
                tails.extend(answer.pop());
            }
            for (&i, reply) in group.iter().zip(answer) {
                replies[i] = reply;
            }
        }
        Ok(Replies { replies, tails })
    }
}

/// What a [`SlotPipeline`] got back.
#[derive(Debug, Default)]
pub struct Replies {
    /// One per command, in the order they were added.
    pub replies: Vec<Value>,
    /// One per pipeline sent: its tail command's reply.
    pub tails: Vec<Value>,
}

impl Replies {
    /// With `WAIT` as the tail: the fewest replicas any pipeline reached (0 if
    /// none was sent or a reply is not a count).
    pub fn least_replicated(&self) -> u64 {
        self.tails
            .iter()
            .map(|v| redis::from_redis_value::<u64>(v.clone()).unwrap_or(0))
            .min()
            .unwrap_or(0)
    }
}

/// The indices of `commands` grouped by slot, groups in the order of their
/// first command, indices in order within each.
fn per_slot(commands: &[(Slot, Cmd)]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<Slot, usize> = HashMap::new();
    for (i, (slot, _)) in commands.iter().enumerate() {
        let at = *index.entry(*slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(i);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_grouped_per_slot_in_first_seen_order() {
        let keys = [
            "ns:{Order:0}",
            "ns:dlq:g",
            "ns:{Order:1}",
            "ns:lease:g:ns:{Order:0}",
        ];
        let commands: Vec<(Slot, Cmd)> = keys
            .iter()
            .map(|k| (Slot::for_key(k), redis::cmd("TYPE").arg(*k).clone()))
            .collect();
        // A stream and its lease share the stream's hash tag, so one slot.
        assert_eq!(per_slot(&commands), [vec![0, 3], vec![1], vec![2]]);
    }

    #[test]
    fn a_cluster_needs_its_nodes_and_a_node_one_url() {
        let cluster = RedisClient::open("redis://127.0.0.1:7000, redis://127.0.0.1:7001", true)
            .expect("two nodes");
        assert!(cluster.is_cluster());
        assert!(!RedisClient::open("redis://127.0.0.1:6379", false)
            .expect("one node")
            .is_cluster());
        assert!(RedisClient::open("redis://a:1,redis://b:2", false).is_err());
    }
}
