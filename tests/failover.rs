//! A Redis failover that loses acknowledged writes, and what keeps it from
//! losing orders: the relay's replica acknowledgement (`REDIS_MIN_REPLICAS`,
//! Redis `WAIT`) and the order reconciler.
//!
//! The test's own Redis primary has one replica, connected through a forwarder
//! the test freezes, so the replica misses every write after that moment (as an
//! asynchronous replica lags). The system (relay, inventory consumer, order saga,
//! in-process) reaches Redis through a second forwarder, the "endpoint". Orders
//! are posted, the replica link frozen, more orders posted while the consumers
//! are away (lagging), the primary SIGKILLed, the replica promoted
//! (`REPLICAOF NO ONE`) and the endpoint pointed at it, as ElastiCache does.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::time::Duration;

use shared::redis_link::RedisClient;
use shared::relay::{Relay, RelayError, RelayOptions};
use sqlx::Connection;
use tests::forwarder::Forwarder;
use tests::pipeline::{Outcome, Pipeline, Wiring};
use tests::wait_until;
use tests::{spare_port, RedisServer, TestDb};

const BEFORE: usize = 15;
const DURING: usize = 15;

/// A primary, its replica behind a freezable link, and the endpoint clients use.
struct Servers {
    primary: Option<RedisServer>,
    replica: RedisServer,
    link: Forwarder,
    endpoint: Forwarder,
    /// The replica the promoted primary gets, as ElastiCache replaces a lost node.
    new_replica: Option<RedisServer>,
}

impl Servers {
    async fn start() -> anyhow::Result<Self> {
        let primary = RedisServer::start(spare_port()?).await?;
        let link = Forwarder::start(primary.port).await?;
        let link_port = link.port.to_string();
        let replica =
            RedisServer::start_with(spare_port()?, &["--replicaof", "127.0.0.1", &link_port])
                .await?;
        let endpoint = Forwarder::start(primary.port).await?;
        let servers = Self {
            primary: Some(primary),
            replica,
            link,
            endpoint,
            new_replica: None,
        };
        wait_until(
            Duration::from_secs(20),
            "the replica is in sync",
            || async {
                Ok(servers
                    .replica_info()
                    .await?
                    .contains("master_link_status:up"))
            },
        )
        .await?;
        Ok(servers)
    }

    async fn replica_info(&self) -> anyhow::Result<String> {
        let mut conn = redis::Client::open(self.replica.url())?
            .get_multiplexed_async_connection()
            .await?;
        Ok(redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await?)
    }

    /// SIGKILLs the primary, promotes the replica, moves the endpoint to it.
    async fn fail_over(&mut self) -> anyhow::Result<()> {
        if let Some(primary) = self.primary.take() {
            primary.kill();
        }
        tests::promote(&self.replica.url()).await?;
        self.endpoint.retarget(self.replica.port);
        // Until it has a replica again, a relay that requires one keeps its rows
        // (and OutboxAge grows): availability traded for durability.
        let port = self.replica.port.to_string();
        self.new_replica = Some(
            RedisServer::start_with(spare_port()?, &["--replicaof", "127.0.0.1", &port]).await?,
        );
        Ok(())
    }
}

async fn failover(min_replicas: u32, reconciler: bool) -> anyhow::Result<Outcome> {
    let mut servers = Servers::start().await?;
    let mut system = Pipeline::start(Wiring {
        redis: RedisClient::open(&servers.endpoint.url(), false)?,
        partitions: 1,
        min_replicas,
    })
    .await?;
    system.post_orders(BEFORE).await?;
    wait_until(
        Duration::from_secs(60),
        "the first orders are settled",
        || async { Ok(system.pending().await? == 0) },
    )
    .await?;

    // The consumers lag; the replica stops receiving; orders keep coming.
    system.stop_consumers().await?;
    servers.link.freeze();
    system.post_orders(DURING).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    servers.fail_over().await?;
    system.start_consumers().await?;

    let deadline =
        std::time::Instant::now() + Duration::from_secs(if reconciler { 60 } else { 15 });
    let settings = order_reconciler::Settings {
        pending_deadline: Duration::from_secs(86_400),
        ..order_reconciler::Settings::default()
    };
    let retention = shared::retention::RetentionConfig::from_env(&shared::config::Env::default())?;
    let mut ahead = Duration::ZERO;
    while std::time::Instant::now() < deadline && system.pending().await? > 0 {
        if reconciler {
            // Each run as if a timeout later than the last.
            ahead += Duration::from_secs(61);
            order_reconciler::reconcile(
                &system.db.pool,
                &settings,
                &retention,
                shared::envelope::now_utc() + ahead,
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Let in-flight redeliveries settle before counting effects.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcome = system.outcome().await?;
    system.stop().await?;
    Ok(outcome)
}

#[tokio::test]
async fn with_replica_acknowledgement_a_failover_loses_no_order() -> anyhow::Result<()> {
    // WAIT alone: the batches the replica never acknowledged stay in the outbox
    // and are published again to the promoted replica.
    let outcome = failover(1, false).await?;
    outcome.assert_nothing_lost((BEFORE + DURING) as i64);
    Ok(())
}

#[tokio::test]
async fn with_the_reconciler_a_failover_loses_no_order() -> anyhow::Result<()> {
    // The reconciler alone: what the failover lost is sent again.
    let outcome = failover(0, true).await?;
    outcome.assert_nothing_lost((BEFORE + DURING) as i64);
    Ok(())
}

#[tokio::test]
async fn without_either_a_failover_loses_orders() -> anyhow::Result<()> {
    // The test can fail: with neither defence, the lost events leave orders
    // PENDING for good.
    let outcome = failover(0, false).await?;
    assert!(outcome.pending > 0, "expected lost orders: {outcome:?}");
    Ok(())
}

#[tokio::test]
async fn a_batch_no_replica_acknowledged_stays_in_the_outbox() -> anyhow::Result<()> {
    // A lone Redis has no replica to acknowledge anything.
    let redis = RedisServer::start(spare_port()?).await?;
    let db = TestDb::fresh().await?;
    let ns = tests::unique_namespace();
    let options = RelayOptions {
        stream_namespace: ns.clone(),
        min_replicas: 1,
        replica_timeout: Duration::from_millis(50),
        ..tests::relay_options()
    };
    let relay: Relay = tests::relay(&db.pool, &redis.url(), options.clone()).await?;
    tests::raw_create_order(&db.pool, "c-1").await?;
    // A connection of another relay, open before the failure, its statement
    // prepared, so that after the failure it asks in one round trip.
    let mut other = sqlx::PgConnection::connect(&db.url()).await?;
    let advisory_locks =
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND d.datname = current_database()";
    let held: i64 = sqlx::query_scalar(advisory_locks)
        .fetch_one(&mut other)
        .await?;
    assert_eq!(held, 0);
    match relay
        .drain_until(std::time::Instant::now() + Duration::from_secs(5))
        .await
    {
        Err(
            e @ RelayError::Replication {
                acked: 0,
                wanted: 1,
                ..
            },
        ) => {
            assert_eq!(e.retry(), shared::Retry::Retryable);
        }
        other => anyhow::bail!("expected a replication failure, got {other:?}"),
    }
    // The failed batch let its slots go as it failed: a relay trying straight
    // after finds them free (a dropped transaction would hold them until its
    // connection is next used, and turn that relay away with nothing done).
    let held: i64 = sqlx::query_scalar(advisory_locks)
        .fetch_one(&mut other)
        .await?;
    assert_eq!(held, 0, "the failed batch still holds its slots");
    assert_eq!(db.count("orders.outbox").await?, 1, "the row is kept");
    // Without the requirement the same row goes.
    let relay = tests::relay(
        &db.pool,
        &redis.url(),
        RelayOptions {
            min_replicas: 0,
            ..options
        },
    )
    .await?;
    relay
        .drain_until(std::time::Instant::now() + Duration::from_secs(5))
        .await?;
    assert_eq!(db.count("orders.outbox").await?, 0);
    Ok(())
}
