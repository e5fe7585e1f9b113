//! What every consuming function reads from its environment, and how long a
//! scheduled invocation may run.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::SourceSettings;
use crate::config::{ConfigError, DatabaseConfig, Env, RedisConfig};
use crate::envelope::AggregateType;
use crate::streams::stream_keys;

/// A consuming function's settings, read once at cold start.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub source: SourceSettings,
    /// Stop starting batches when less than this remains of the invocation
    /// (`SAFETY_MARGIN_MS`, 3000).
    pub safety_margin: Duration,
    /// `REDIS_RESPONSE_TIMEOUT_MS` (2000), for every command but the blocking read.
    pub redis_timeout: Duration,
}

impl ConsumerConfig {
    /// The settings of consumer group `group`, reading every partition of
    /// `aggregate_types` (`STREAM_PARTITIONS`, `STREAM_NAMESPACE`, as the relay
    /// writes them), with the event source variables of
    /// [`SourceSettings::from_env`].
    ///
    /// `STREAM_SOURCE` (comma-separated aggregate types), when set, names the
    /// streams instead: the template declares it, and the emulator reads it too.
    pub fn from_env(env: &Env, group: &str, aggregate_types: &[&str]) -> Result<Self, ConfigError> {
        // The relay's reading of the same variables, so both agree.
        let namespace = crate::streams::namespace(env)?;
        let partitions = crate::streams::partitions(env)?;
        let declared: Option<Vec<&str>> = env.get("STREAM_SOURCE")?.map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect()
        });
        let aggregate_types = declared.as_deref().unwrap_or(aggregate_types);
        if aggregate_types.is_empty() {
            return Err(ConfigError::Malformed {
                var: "STREAM_SOURCE",
                reason: "names no aggregate type".into(),
            });
        }
        let mut streams = Vec::new();
        let mut types = Vec::new();
        for t in aggregate_types {
            let t = AggregateType::parse(t).map_err(|e| ConfigError::Malformed {
                var: "STREAM_SOURCE",
                reason: e.to_string(),
            })?;
            streams.extend(stream_keys(&namespace, &t, partitions));
            types.push(t.to_string());
        }
        let mut settings = SourceSettings::new(group, streams);
        settings.namespace = namespace;
        settings.aggregate_types = types;
        Ok(Self {
            database: DatabaseConfig::from_env(env)?,
            redis: RedisConfig::from_env(env)?,
            source: settings.from_env(env)?,
            safety_margin: env.millis_or("SAFETY_MARGIN_MS", Duration::from_secs(3))?,
            redis_timeout: env.millis_or("REDIS_RESPONSE_TIMEOUT_MS", Duration::from_secs(2))?,
        })
    }
}

/// When to stop an invocation whose deadline is `deadline_epoch_ms`
/// (milliseconds since the epoch, as Lambda gives it): `margin` before it.
pub fn stop_at(deadline_epoch_ms: u64, margin: Duration) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let remaining = Duration::from_millis(deadline_epoch_ms.saturating_sub(now_ms));
    Instant::now() + remaining.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_reads_every_partition_of_its_aggregate_types() {
        let env = Env::from_pairs([
            ("DATABASE_URL", "postgres://u@h/db"),
            ("REDIS_URL", "redis://h"),
            ("STREAM_PARTITIONS", "2"),
            ("STREAM_NAMESPACE", "prod"),
            ("BATCH_SIZE", "7"),
        ]);
        let c = ConsumerConfig::from_env(&env, "inventory", &["Order"]).expect("valid");
        assert_eq!(c.source.streams, ["prod:{Order:0}", "prod:{Order:1}"]);
        assert_eq!(c.source.namespace, "prod");
        assert_eq!(c.source.aggregate_types, ["Order"]);
        assert_eq!(c.source.group, "inventory");
        assert_eq!(c.source.batch_size, 7);
        let declared = Env::from_pairs([
            ("DATABASE_URL", "postgres://u@h/db"),
            ("REDIS_URL", "redis://h"),
            ("STREAM_SOURCE", "Reservation, Order"),
        ]);
        let c = ConsumerConfig::from_env(&declared, "g", &["Order"]).expect("valid");
        assert_eq!(
            c.source.streams,
            ["events:{Reservation:0}", "events:{Order:0}"]
        );
        let empty = Env::from_pairs([
            ("DATABASE_URL", "postgres://u@h/db"),
            ("REDIS_URL", "redis://h"),
            ("STREAM_SOURCE", " , "),
        ]);
        assert!(ConsumerConfig::from_env(&empty, "g", &["Order"]).is_err());
        let soon = stop_at(0, Duration::from_secs(3));
        assert!(soon <= Instant::now());
    }
}

/// An event source and its handler, built once per process: what a consuming
/// function's invocations borrow.
#[derive(Debug)]
pub struct Consumer<H> {
    pub source: super::EventSource,
    pub handler: std::sync::Arc<H>,
    pub safety_margin: Duration,
    /// Set by [`Consumer::stop`]: invocations end early, batches in hand finish.
    pub stopping: tokio::sync::watch::Sender<bool>,
}

impl<H: super::BatchHandler> Consumer<H> {
    pub async fn connect(config: &ConsumerConfig, handler: H) -> Result<Self, redis::RedisError> {
        Ok(Self {
            source: super::EventSource::with_client(
                config.redis.client()?,
                config.redis_timeout,
                config.source.clone(),
            )?,
            handler: std::sync::Arc::new(handler),
            safety_margin: config.safety_margin,
            stopping: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Ends the current and every later invocation as soon as the batches in
    /// hand are settled (the process got SIGTERM).
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Stops the consumer on SIGTERM, as Lambda (or the emulator) sends before
    /// it ends the process: what was handled is acknowledged first.
    pub fn stop_on_sigterm(self: &std::sync::Arc<Self>) {
        let consumer = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            #[cfg(unix)]
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
                tracing::info!("SIGTERM: finishing the batches in hand");
                consumer.stop();
            }
        });
    }

    async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Reads the streams until `safety_margin` before `deadline_epoch_ms` (a
    /// scheduled invocation), then lets the batches in hand finish.
    /// One Lambda invocation (`request_id`, with its X-Ray trace header if any):
    /// [`run_invocation`](Self::run_invocation) inside the invocation's span and
    /// a `consume` span naming the group, timed and with its metrics flushed.
    pub async fn invoke(
        &self,
        request_id: &str,
        xray_trace_id: Option<&str>,
        deadline_epoch_ms: u64,
    ) -> super::SourceStats {
        use tracing::Instrument as _;
        let settings = self.source.settings();
        let invocation =
            crate::telemetry::Invocation::start(&settings.service, request_id, xray_trace_id);
        let consume = tracing::info_span!("consume", group = %settings.group);
        invocation
            .run(self.run_invocation(deadline_epoch_ms).instrument(consume))
            .await
    }

    pub async fn run_invocation(&self, deadline_epoch_ms: u64) -> super::SourceStats {
        let stop = stop_at(deadline_epoch_ms, self.safety_margin);
        let stats = self
            .source
            .run(
                std::sync::Arc::clone(&self.handler),
                Some(stop),
                self.stopped(),
            )
            .await;
        tracing::info!(group = %self.source.settings().group, ?stats, "streams read");
        stats
    }

    /// Reads the streams until `shutdown` or [`Consumer::stop`] (the emulator,
    /// a long-lived process).
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) -> super::SourceStats {
        let either = async {
            tokio::select! {
                () = shutdown => {}
                () = self.stopped() => {}
            }
        };
        self.source
            .run(std::sync::Arc::clone(&self.handler), None, either)
            .await
    }
}
