//! The glue of a consumer function, the counterpart of `http-api` for the
//! functions that read Redis Streams: a crate implements [`ConsumerFunction`]
//! for its batch handler, and its `main` is one line:
//!
//! ```ignore
//! #[tokio::main]
//! async fn main() -> Result<(), lambda_runtime::Error> {
//!     stream_consumer::main::<my_consumer::Handler>().await
//! }
//! ```
//!
//! In Lambda each scheduled invocation reads the streams for its time budget
//! ([`handle`]); the emulator runs the same [`Consumer`] long-lived.

use std::sync::Arc;

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use lambda_runtime::{service_fn, LambdaEvent};
use shared::config::{ConfigError, Env};
use shared::source::{BatchHandler, Consumer, ConsumerConfig, SourceStats};

/// A consumer function: who it is, what it reads, and its handler.
pub trait ConsumerFunction: BatchHandler + Sized {
    /// The function's name: the `service` of its logs and metrics.
    const SERVICE: &'static str;
    /// The consumer group, and the consumer's name in its inbox.
    const GROUP: &'static str;
    /// The aggregate types whose streams it reads, unless the environment's
    /// `STREAM_SOURCE` names others (the template declares it).
    const AGGREGATES: &'static [&'static str];

    /// The handler for `config` and the function's other settings in `env`,
    /// connecting lazily: a cold start does not wait for (or fail on) a
    /// database that is briefly away.
    fn new(config: &ConsumerConfig, env: &Env) -> Result<Self, ConfigError>;
}

/// The function's settings: its group on its streams, with the event source
/// variables of the environment.
pub fn config<F: ConsumerFunction>(env: &Env) -> Result<ConsumerConfig, ConfigError> {
    let mut config = ConsumerConfig::from_env(env, F::GROUP, F::AGGREGATES)?;
    config.source.service = F::SERVICE.to_owned();
    Ok(config)
}

/// Why a consumer function could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// The event source with the function's handler, as its `main` builds it.
pub async fn connect<F: ConsumerFunction>(
    config: &ConsumerConfig,
    env: &Env,
) -> Result<Consumer<F>, StartError> {
    let handler = F::new(config, env)?;
    Ok(Consumer::connect(config, handler).await?)
}

/// One scheduled invocation: read the streams until the time budget is spent.
pub async fn handle<H: BatchHandler>(
    consumer: &Consumer<H>,
    event: LambdaEvent<CloudWatchEvent>,
) -> Result<SourceStats, lambda_runtime::Error> {
    let context = &event.context;
    Ok(consumer
        .invoke(
            &context.request_id,
            context.xray_trace_id.as_deref(),
            context.deadline,
        )
        .await)
}

/// A consumer function's whole `main`: configuration, telemetry and the event
/// source built once per cold start, then the Lambda runtime's loop. SIGTERM
/// ends a running invocation once its batches are acknowledged.
pub async fn main<F: ConsumerFunction>() -> Result<(), lambda_runtime::Error> {
    let env = Env::from_process();
    shared::telemetry::init(&env, F::SERVICE);
    let config = config::<F>(&env)?;
    let consumer = Arc::new(connect::<F>(&config, &env).await?);
    consumer.stop_on_sigterm();
    lambda_runtime::run(service_fn(|event: LambdaEvent<CloudWatchEvent>| {
        handle(&consumer, event)
    }))
    .await
}
