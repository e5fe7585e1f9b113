//! The Lambda entry point: configuration, telemetry, the pool and the Redis
//! connection are built once per cold start; each invocation borrows them.

use lambda_runtime::{service_fn, LambdaEvent};
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let env = Env::from_process();
    shared::telemetry::init(&env, outbox_relay::SERVICE);
    let config = outbox_relay::Config::from_env(&env)?;
    let deps = outbox_relay::Deps::connect(&config).await?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| {
        outbox_relay::handle(&deps, event)
    }))
    .await
}
