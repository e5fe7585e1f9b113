//! What runs behind the HTTP API in the emulator: the outbox relay, long-lived
//! and woken by `LISTEN/NOTIFY`, and the saga's consumers, each reading its
//! streams with the same event source as in Lambda. Orders move from `PENDING`
//! to `CONFIRMED` or `REJECTED` within milliseconds.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use shared::config::Env;
use shared::envelope::AggregateType;
use shared::relay::{Relay, RelayOptions};
use shared::source::{BatchHandler, Consumer, EventSource, SourceSettings};
use shared::streams::stream_keys;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Redis when `REDIS_URL` is not set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The background workers, until [`Workers::stop`].
#[derive(Debug)]
pub struct Workers {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Workers {
    /// Starts the relay and the consumers on `pool` and the Redis at `redis_url`.
    pub async fn start(pool: PgPool, redis_url: &str, env: &Env) -> anyhow::Result<Self> {
        let unreachable =
            || format!("connecting to Redis at {redis_url} (start redis-server, or set REDIS_URL)");
        let options = RelayOptions::from_env(env)?;
        let redis = shared::relay::connect_redis(redis_url, Duration::from_secs(2))
            .await
            .with_context(unreachable)?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let relay = Relay::new(pool.clone(), redis, options.clone());
        let mut rx = stopped.clone();
        tasks.push((
            "outbox relay",
            tokio::spawn(async move {
                if let Err(e) = relay.run(Duration::from_secs(1), until(&mut rx)).await {
                    tracing::error!(error = %e, "the outbox relay stopped");
                }
            }),
        ));
        let inventory = consumer(
            env,
            &options,
            inventory_consumer::GROUP,
            shared::events::ORDER_AGGREGATE,
            redis_url,
            inventory_consumer::Inventory { pool: pool.clone() },
        )
        .await
        .with_context(unreachable)?;
        tasks.push(("inventory-consumer", spawn(inventory, stopped.clone())));
        let saga = consumer(
            env,
            &options,
            order_saga::GROUP,
            shared::events::RESERVATION_AGGREGATE,
            redis_url,
            order_saga::Saga { pool },
        )
        .await
        .with_context(unreachable)?;
        tasks.push(("order-saga", spawn(saga, stopped)));
        Ok(Self { stop, tasks })
    }

    /// What runs, for the banner.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.tasks.iter().map(|(name, _)| *name)
    }

    /// Stops them; batches in hand finish and are acknowledged first.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for (name, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(worker = name, error = %e, "a worker ended abnormally");
            }
        }
    }
}

async fn until(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// A consumer of `group` on every partition of `aggregate`, as the relay writes them.
async fn consumer<H: BatchHandler>(
    env: &Env,
    relay: &RelayOptions,
    group: &str,
    aggregate: &str,
    redis_url: &str,
    handler: H,
) -> anyhow::Result<Consumer<H>> {
    let streams = stream_keys(
        &relay.stream_namespace,
        &AggregateType::parse(aggregate)?,
        relay.stream_partitions,
    );
    let mut settings = SourceSettings::new(group, streams);
    settings.namespace.clone_from(&relay.stream_namespace);
    // The group is the function's; CONSUMER_GROUP would merge both consumers.
    let mut settings = settings.from_env(env)?;
    settings.group = group.to_owned();
    // A single local process: a short lease lets a restarted emulator resume at once.
    settings.lease_ttl = Duration::from_secs(3);
    settings.visibility_timeout = settings.visibility_timeout.min(Duration::from_secs(5));
    Ok(Consumer {
        source: EventSource::connect(redis_url, Duration::from_secs(2), settings).await?,
        handler: Arc::new(handler),
        safety_margin: Duration::ZERO,
    })
}

fn spawn<H: BatchHandler>(
    consumer: Consumer<H>,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stats = consumer.run(until(&mut stopped)).await;
        tracing::info!(group = %consumer.source.settings().group, ?stats, "consumer stopped");
    })
}
