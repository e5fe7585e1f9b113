//! A real Redis Cluster for tests: 3 primaries and 3 replicas on spare loopback
//! ports (`redis-server --cluster-enabled yes`, `redis-cli --cluster create
//! ... --cluster-replicas 1`), killed when dropped.

use std::time::Duration;

use anyhow::Context as _;
use shared::redis_link::{Redis, RedisClient};

use crate::{spare_port, wait_until, RedisServer};

/// How long a primary may be silent before its replica takes over.
const NODE_TIMEOUT_MS: u64 = 1000;

#[derive(Debug)]
pub struct RedisCluster {
    /// Every node, by port; a killed one is taken out.
    nodes: Vec<Option<RedisServer>>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts six nodes and makes them a cluster of three primaries with a
    /// replica each; returns once every slot is served.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(1).await
    }

    /// Three primaries with `replicas` replicas each.
    pub async fn start_with(replicas: usize) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("cluster-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir)?;
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            nodes.push(Some(start_node(&dir).await?));
        }
        let addresses: Vec<String> = nodes
            .iter()
            .flatten()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .await
            .context("redis-cli --cluster create (is redis-tools installed?)")?;
        anyhow::ensure!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = Self { nodes, dir };
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    /// Until every live node says `cluster_state:ok` and knows three
    /// primaries, and every replica has synced with its primary (a replica
    /// that has not cannot take over).
    pub async fn wait_healthy(&self) -> anyhow::Result<()> {
        wait_until(
            Duration::from_secs(30),
            "the cluster serves every slot and its replicas are in sync",
            || async {
                for node in self.nodes.iter().flatten() {
                    let info = node_command(node.port, redis::cmd("CLUSTER").arg("INFO")).await?;
                    if !info.contains("cluster_state:ok") || !info.contains("cluster_size:3") {
                        return Ok(false);
                    }
                    let replication =
                        node_command(node.port, redis::cmd("INFO").arg("replication")).await?;
                    if replication.contains("role:slave")
                        && !replication.contains("master_link_status:up")
                    {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )
        .await
    }

    /// The live nodes' URLs, comma-separated: `REDIS_URL` with `REDIS_CLUSTER=true`.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .flatten()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client(&self) -> anyhow::Result<RedisClient> {
        Ok(RedisClient::open(&self.url(), true)?)
    }

    /// A connection with a generous response timeout.
    pub fn connection(&self) -> anyhow::Result<Redis> {
        Ok(self.client()?.connect(Duration::from_secs(10))?)
    }

    /// The port of the primary serving `key`'s slot.
    pub async fn primary_of(&self, key: &str) -> anyhow::Result<u16> {
        let port = self.live_port()?;
        let slot: i64 = redis::from_redis_value(
            node_value(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await?,
        )?;
        let ranges: Vec<redis::Value> =
            redis::from_redis_value(node_value(port, redis::cmd("CLUSTER").arg("SLOTS")).await?)?;
        for range in ranges {
            let range: Vec<redis::Value> = redis::from_redis_value(range)?;
            let start: i64 = redis::from_redis_value(range[0].clone())?;
            let end: i64 = redis::from_redis_value(range[1].clone())?;
            if (start..=end).contains(&slot) {
                let primary: Vec<redis::Value> = redis::from_redis_value(range[2].clone())?;
                return Ok(redis::from_redis_value(primary[1].clone())?);
            }
        }
        anyhow::bail!("no node serves slot {slot}")
    }

    /// SIGKILLs the primary serving `key`, as a crash would, and waits until its
    /// replica has taken over the slots (the cluster is whole again).
    pub async fn kill_primary_of(&mut self, key: &str) -> anyhow::Result<u16> {
        let port = self.primary_of(key).await?;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.as_ref().is_some_and(|n| n.port == port))
            .and_then(Option::take)
            .context("the primary is one of ours")?;
        node.kill();
        let promoted = wait_until(
            Duration::from_secs(30),
            "a replica took over the killed primary's slots",
            || async { Ok(self.primary_of(key).await? != port) },
        )
        .await;
        if promoted.is_ok() {
            // As ElastiCache replaces a lost node: a new replica for the
            // promoted primary (without one, `WAIT 1` fails on its shard).
            let primary = self.primary_of(key).await?;
            self.add_replica(primary).await?;
            return Ok(port);
        }
        if let Err(e) = promoted {
            let nodes = node_command(self.live_port()?, redis::cmd("CLUSTER").arg("NODES")).await?;
            let mut logs = String::new();
            for entry in std::fs::read_dir(&self.dir)? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path)?;
                    let tail: Vec<&str> = text.lines().rev().take(8).collect();
                    logs.push_str(&format!("{}:\n{}\n", path.display(), tail.join("\n")));
                }
            }
            anyhow::bail!("{e}; CLUSTER NODES:\n{nodes}\n{logs}");
        }
        Ok(port)
    }

    /// Starts a node and makes it a replica of the primary on `primary`;
    /// returns once it has synced.
    pub async fn add_replica(&mut self, primary: u16) -> anyhow::Result<()> {
        let id = node_command(primary, redis::cmd("CLUSTER").arg("MYID")).await?;
        let node = start_node(&self.dir).await?;
        let added = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "add-node"])
            .arg(format!("127.0.0.1:{}", node.port))
            .arg(format!("127.0.0.1:{primary}"))
            .args(["--cluster-slave", "--cluster-master-id", &id])
            .output()
            .await?;
        anyhow::ensure!(
            added.status.success(),
            "redis-cli --cluster add-node: {}",
            String::from_utf8_lossy(&added.stdout)
        );
        self.nodes.push(Some(node));
        self.wait_healthy().await?;
        // Until the primary counts it among its replicas (what `WAIT` counts).
        wait_until(
            Duration::from_secs(30),
            "the new replica is connected",
            || async {
                let info = node_command(primary, redis::cmd("INFO").arg("replication")).await?;
                Ok(info.contains("connected_slaves:1"))
            },
        )
        .await
    }

    fn live_port(&self) -> anyhow::Result<u16> {
        self.nodes
            .iter()
            .flatten()
            .map(|n| n.port)
            .next()
            .context("no live node")
    }
}

/// One cluster-enabled `redis-server` on a spare port, its files in `dir`.
async fn start_node(dir: &std::path::Path) -> anyhow::Result<RedisServer> {
    let port = spare_port()?;
    let config = dir.join(format!("nodes-{port}.conf"));
    let timeout = NODE_TIMEOUT_MS.to_string();
    let log = dir.join(format!("{port}.log"));
    // The bus port of its own: port + 10000 may be taken, or past 65535.
    let bus = spare_port()?.to_string();
    RedisServer::start_with(
        port,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &config.to_string_lossy(),
            "--cluster-port",
            &bus,
            "--cluster-node-timeout",
            &timeout,
            "--dir",
            &dir.to_string_lossy(),
            // Replicas sync at once, not after diskless sync's 5 s wait.
            "--repl-diskless-sync-delay",
            "0",
            "--logfile",
            &log.to_string_lossy(),
        ],
    )
    .await
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn node_value(port: u16, cmd: &redis::Cmd) -> anyhow::Result<redis::Value> {
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await?;
    Ok(cmd.query_async(&mut conn).await?)
}

async fn node_command(port: u16, cmd: &redis::Cmd) -> anyhow::Result<String> {
    Ok(redis::from_redis_value(node_value(port, cmd).await?)?)
}
