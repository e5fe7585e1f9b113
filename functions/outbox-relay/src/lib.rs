//! The outbox-relay function: invoked by a schedule (an EventBridge / CloudWatch
//! scheduled event), it drains every outbox into Redis Streams until they are
//! empty or the invocation's time is nearly up, and returns what it did.
//!
//! [`handle`] is the whole function; `main.rs` builds [`Deps`] once per cold start.

use std::time::Duration;

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use lambda_runtime::LambdaEvent;
use shared::config::{ConfigError, DatabaseConfig, Env, RedisConfig};
use shared::relay::{DrainSummary, Relay, RelayError, RelayOptions};
use shared::telemetry::Invocation;
use shared::Retry;
use tracing::info;

/// The function's settings, read once at cold start.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub relay: RelayOptions,
    /// Stop starting batches when less than this remains of the invocation
    /// (`RELAY_SAFETY_MARGIN_MS`, 3000).
    pub safety_margin: Duration,
    /// `REDIS_RESPONSE_TIMEOUT_MS` (2000): a command that takes longer fails the batch.
    pub redis_timeout: Duration,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseConfig::from_env(env)?,
            redis: RedisConfig::from_env(env)?,
            relay: RelayOptions::from_env(env)?,
            safety_margin: env.millis_or("RELAY_SAFETY_MARGIN_MS", Duration::from_secs(3))?,
            redis_timeout: env.millis_or("REDIS_RESPONSE_TIMEOUT_MS", Duration::from_secs(2))?,
        })
    }
}

/// What the handler borrows.
#[derive(Debug)]
pub struct Deps {
    pub relay: Relay,
    pub safety_margin: Duration,
}

impl Deps {
    pub async fn connect(config: &Config) -> Result<Self, redis::RedisError> {
        let pool = shared::db::lazy_pool(&config.database);
        let redis = config.redis.client()?.connect(config.redis_timeout)?;
        Ok(Self {
            relay: Relay::new(pool, redis, config.relay.clone()),
            safety_margin: config.safety_margin,
        })
    }
}

/// A failed invocation; Lambda records it and the next scheduled run retries.
/// Rows stay pending, so nothing is lost.
#[derive(Debug, thiserror::Error)]
#[error("{kind} failure: {source}")]
pub struct InvocationError {
    kind: &'static str,
    #[source]
    source: RelayError,
}

impl InvocationError {
    pub fn is_retryable(&self) -> bool {
        self.source.retry() == Retry::Retryable
    }
}

pub use shared::source::stop_at;

/// One scheduled invocation.
pub async fn handle(
    deps: &Deps,
    event: LambdaEvent<CloudWatchEvent>,
) -> Result<DrainSummary, InvocationError> {
    let stop = stop_at(event.context.deadline, deps.safety_margin);
    let context = &event.context;
    let invocation = Invocation::start(
        SERVICE,
        &context.request_id,
        context.xray_trace_id.as_deref(),
    );
    invocation
        .run(async move {
            let summary = deps
                .relay
                .drain_until(stop)
                .await
                .map_err(|source| InvocationError {
                    kind: match source.retry() {
                        Retry::Retryable => "retryable",
                        Retry::Permanent => "permanent",
                    },
                    source,
                })?;
            info!(
                published = summary.published,
                failed = summary.failed,
                batches = summary.batches,
                stopped_by = summary.stopped_by,
                duration_ms = summary.duration_ms,
                "outboxes drained"
            );
            Ok(summary)
        })
        .await
}

/// The function's name: the `service` of its logs and metrics.
pub use shared::relay::SERVICE;

/// Lambda's error record: the type says whether the next run can succeed.
impl From<InvocationError> for lambda_runtime::Diagnostic {
    fn from(error: InvocationError) -> Self {
        Self {
            error_type: if error.is_retryable() {
                "Relay.Retryable"
            } else {
                "Relay.Permanent"
            }
            .to_owned(),
            error_message: error.to_string(),
        }
    }
}
