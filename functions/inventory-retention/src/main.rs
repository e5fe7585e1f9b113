//! The Lambda entry point: configuration, telemetry and the pool are built
//! once per cold start; each invocation borrows them.

use lambda_runtime::{service_fn, LambdaEvent};
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let env = Env::from_process();
    shared::telemetry::init(&env, inventory_retention::SERVICE);
    let config = inventory_retention::Config::from_env(&env)?;
    let deps = inventory_retention::Deps::new(&config);
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| {
        inventory_retention::handle(&deps, event)
    }))
    .await
}
