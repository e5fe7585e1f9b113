//! The Lambda entry point: configuration, telemetry, the pool and the event
//! source are built once per cold start; each scheduled invocation reads the
//! streams for its time budget.

use lambda_runtime::{service_fn, LambdaEvent};
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let env = Env::from_process();
    shared::telemetry::init(&env, order_saga::SERVICE);
    let config = order_saga::config(&env)?;
    let deps = std::sync::Arc::new(
        order_saga::Deps::connect(&config, order_saga::handler(&config)).await?,
    );
    // SIGTERM ends a running invocation once its batches are acknowledged.
    deps.stop_on_sigterm();
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| {
        order_saga::handle(&deps, event)
    }))
    .await
}
