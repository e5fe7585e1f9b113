//! The Lambda entry point: configuration, telemetry and the pool are built once
//! per cold start; each scheduled invocation borrows them.

use lambda_runtime::{service_fn, LambdaEvent};
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let env = Env::from_process();
    shared::telemetry::init(&env, order_reconciler::SERVICE);
    let config = order_reconciler::Config::from_env(&env)?;
    let deps = order_reconciler::Deps::new(&config);
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| {
        order_reconciler::handle(&deps, event)
    }))
    .await
}
