//! The inventory-retention function: invoked by a schedule (an EventBridge /
//! CloudWatch scheduled event), it deletes what the inventory service no longer
//! needs: inbox rows, cancelled orders and answers older than
//! `INBOX_RETENTION_HOURS`, in statements of `RETENTION_BATCH_SIZE` rows, at
//! most `RETENTION_MAX_BATCHES` per table, until the invocation's time is
//! nearly up; and returns what it deleted. The next run goes on where this one
//! stopped. (Streams and dead letters are trimmed by the relay.)
//!
//! [`handle`] is the whole function; `main.rs` builds [`Deps`] once per cold start.

use std::time::{Duration, Instant};

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use inventory_consumer::retention::purge_inventory_service;
use lambda_runtime::LambdaEvent;
use shared::config::{ConfigError, DatabaseConfig, Env};
use shared::retention::{PurgeSummary, RetentionConfig};
use shared::telemetry::Invocation;
use shared::{Retry, StoreError};
use sqlx::PgPool;

/// The function's name: the `service` of its logs and metrics.
pub const SERVICE: &str = "inventory-retention";

/// The function's settings, read once at cold start.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub retention: RetentionConfig,
    /// Start no statement when less than this remains of the invocation
    /// (`RETENTION_SAFETY_MARGIN_MS`, 3000).
    pub safety_margin: Duration,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseConfig::from_env(env)?,
            retention: RetentionConfig::from_env(env)?,
            safety_margin: env.millis_or("RETENTION_SAFETY_MARGIN_MS", Duration::from_secs(3))?,
        })
    }
}

/// What the handler borrows.
#[derive(Debug, Clone)]
pub struct Deps {
    pub pool: PgPool,
    pub retention: RetentionConfig,
    pub safety_margin: Duration,
}

impl Deps {
    /// Builds the (lazily connecting) pool for `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            pool: shared::db::lazy_pool(&config.database),
            retention: config.retention.clone(),
            safety_margin: config.safety_margin,
        }
    }
}

/// A failed invocation; Lambda records it and the next scheduled run goes on.
/// What was deleted before the failure stays deleted (each statement commits).
#[derive(Debug, thiserror::Error)]
#[error("{kind} failure: {source}")]
pub struct InvocationError {
    kind: &'static str,
    #[source]
    source: StoreError,
}

impl InvocationError {
    pub fn is_retryable(&self) -> bool {
        self.source.retry() == Retry::Retryable
    }
}

/// One scheduled invocation.
pub async fn handle(
    deps: &Deps,
    event: LambdaEvent<CloudWatchEvent>,
) -> Result<PurgeSummary, InvocationError> {
    let stop: Instant = shared::source::stop_at(event.context.deadline, deps.safety_margin);
    let context = &event.context;
    let invocation = Invocation::start(
        SERVICE,
        &context.request_id,
        context.xray_trace_id.as_deref(),
    );
    invocation
        .run(async move {
            // The run logs what it deleted (`Purge::finish`).
            purge_inventory_service(&deps.pool, &deps.retention, stop)
                .await
                .map_err(|source| InvocationError {
                    kind: match source.retry() {
                        Retry::Retryable => "retryable",
                        Retry::Permanent => "permanent",
                    },
                    source,
                })
        })
        .await
}

/// Lambda's error record: the type says whether the next run can succeed.
impl From<InvocationError> for lambda_runtime::Diagnostic {
    fn from(error: InvocationError) -> Self {
        Self {
            error_type: if error.is_retryable() {
                "Retention.Retryable"
            } else {
                "Retention.Permanent"
            }
            .to_owned(),
            error_message: error.to_string(),
        }
    }
}
