//! The order pipeline wired by hand on a Redis of the test's choosing (one
//! node, a node behind a forwarder, or a cluster): create-order's handler, the
//! relay and the three consumers (inventory, customers, the saga), in this
//! process.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shared::envelope::AggregateType;
use shared::redis_link::RedisClient;
use shared::relay::RelayOptions;
use shared::streams::stream_keys;

use crate::source::{fast_settings, Running};
use crate::{Answer, ApiRequest, RunningRelay, TestDb};

/// The SKU every order buys, stocked without limit.
pub const SKU: &str = "P-1";

/// How the pipeline reaches Redis.
#[derive(Debug, Clone)]
pub struct Wiring {
    pub redis: RedisClient,
    /// Streams per aggregate type, for the relay and the consumers alike.
    pub partitions: u16,
    /// The relay's `REDIS_MIN_REPLICAS`.
    pub min_replicas: u32,
}

pub struct Pipeline {
    pub db: TestDb,
    pub ns: String,
    wiring: Wiring,
    api: create_order::Deps,
    relay: Option<RunningRelay>,
    consumers: Vec<Running>,
    generation: usize,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("ns", &self.ns).finish()
    }
}

impl Pipeline {
    pub async fn start(wiring: Wiring) -> anyhow::Result<Self> {
        let db = TestDb::fresh().await?;
        let ns = crate::unique_namespace();
        let options = RelayOptions {
            stream_namespace: ns.clone(),
            stream_partitions: wiring.partitions,
            min_replicas: wiring.min_replicas,
            replica_timeout: Duration::from_millis(200),
            ..crate::relay_options()
        };
        let redis = wiring.redis.connect(Duration::from_secs(5))?;
        let relay = RunningRelay::start(
            shared::relay::Relay::new(db.pool.clone(), redis, options),
            Duration::from_millis(200),
        )
        .await;
        let mut pipeline = Self {
            api: create_order::Deps {
                pool: db.pool.clone(),
                idempotency_ttl: Duration::from_secs(3600),
            },
            db,
            ns,
            wiring,
            relay: Some(relay),
            consumers: Vec::new(),
            generation: 0,
        };
        sqlx::query(
            "INSERT INTO inventory.stock (sku, available, price_cents) VALUES ($1, 1000000, 100)",
        )
        .bind(SKU)
        .execute(&pipeline.db.pool)
        .await?;
        pipeline.start_consumers().await?;
        Ok(pipeline)
    }

    /// Every stream of `aggregate`'s events.
    pub fn streams(&self, aggregate: &str) -> Vec<String> {
        stream_keys(
            &self.ns,
            &AggregateType::parse(aggregate).expect("valid"),
            self.wiring.partitions,
        )
    }

    fn source(
        &self,
        group: &str,
        aggregates: &[&str],
    ) -> anyhow::Result<shared::source::EventSource> {
        let streams = aggregates.iter().flat_map(|a| self.streams(a)).collect();
        let mut settings = fast_settings(&self.ns, group, streams);
        settings.consumer = format!("{group}-{}", self.generation);
        Ok(shared::source::EventSource::with_client(
            self.wiring.redis.clone(),
            Duration::from_secs(5),
            settings,
        )?)
    }

    /// Starts the three consumers (again, after [`Pipeline::stop_consumers`],
    /// under new consumer names).
    pub async fn start_consumers(&mut self) -> anyhow::Result<()> {
        self.generation += 1;
        let inventory = Arc::new(inventory_consumer::Inventory {
            pool: self.db.pool.clone(),
        });
        let customers = Arc::new(customers_consumer::Customers {
            pool: self.db.pool.clone(),
            default_limit_cents: 100_000_000_000,
        });
        let saga = Arc::new(order_saga::Saga {
            pool: self.db.pool.clone(),
        });
        self.consumers.push(Running::start(
            self.source(inventory_consumer::GROUP, &["Order"])?,
            inventory,
        ));
        self.consumers.push(Running::start(
            self.source(customers_consumer::GROUP, &["Order"])?,
            customers,
        ));
        self.consumers.push(Running::start(
            self.source(order_saga::GROUP, &["Reservation", "Credit"])?,
            saga,
        ));
        Ok(())
    }

    pub async fn stop_consumers(&mut self) -> anyhow::Result<()> {
        for c in self.consumers.drain(..) {
            c.stop().await?;
        }
        Ok(())
    }

    /// Posts `n` orders for [`SKU`] (1 to 3 each), as customer `local-developer`.
    pub async fn post_orders(&self, n: usize) -> anyhow::Result<()> {
        for i in 0..n {
            let body =
                json!({"items": [{"sku": SKU, "quantity": 1 + i % 3, "unit_price_cents": 100}]})
                    .to_string();
            let answer = Answer::from(
                create_order::handle(&self.api, ApiRequest::post_orders(&body).build()).await,
            );
            anyhow::ensure!(
                answer.status == 201,
                "POST /orders answered {}",
                answer.status
            );
        }
        Ok(())
    }

    pub async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sql).fetch_one(&self.db.pool).await?)
    }

    pub async fn pending(&self) -> anyhow::Result<i64> {
        self.count("SELECT count(*) FROM orders.orders WHERE status = 'PENDING'")
            .await
    }

    /// What the orders left behind.
    pub async fn outcome(&self) -> anyhow::Result<Outcome> {
        Ok(Outcome {
            pending: self.pending().await?,
            confirmed: self
                .count("SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'")
                .await?,
            reserved: (
                self.count("SELECT reserved::bigint FROM inventory.stock WHERE sku = 'P-1'")
                    .await?,
                self.count("SELECT coalesce(sum(l.quantity), 0)::bigint FROM orders.order_lines l JOIN orders.orders o ON o.id = l.order_id WHERE o.status = 'CONFIRMED'")
                    .await?,
            ),
            reservations: self
                .count("SELECT count(*) FROM inventory.reservations")
                .await?,
            inventory_inbox: self
                .count("SELECT count(*) FROM inventory.processed_events")
                .await?,
        })
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_consumers().await?;
        if let Some(relay) = self.relay.take() {
            relay.stop().await?;
        }
        Ok(())
    }
}

/// What a run left behind.
#[derive(Debug)]
pub struct Outcome {
    pub pending: i64,
    pub confirmed: i64,
    /// Stock reserved against the quantities of the confirmed orders.
    pub reserved: (i64, i64),
    pub reservations: i64,
    /// Inventory inbox rows: one per distinct OrderCreated.
    pub inventory_inbox: i64,
}

impl Outcome {
    /// Every one of `accepted` orders confirmed, its stock reserved once.
    pub fn assert_nothing_lost(&self, accepted: i64) {
        assert_eq!(self.pending, 0, "{self:?}");
        assert_eq!(self.confirmed, accepted, "{self:?}");
        assert_eq!(self.reserved.0, self.reserved.1, "stock exact: {self:?}");
        assert_eq!(self.reservations, accepted, "reserved once: {self:?}");
        assert_eq!(self.inventory_inbox, accepted, "{self:?}");
    }
}
