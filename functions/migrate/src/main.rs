//! The Lambda entry point: configuration, telemetry, the pool and the HTTP
//! client are built once per cold start; each invocation borrows them.

use lambda_runtime::{service_fn, LambdaEvent};
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let env = Env::from_process();
    shared::telemetry::init(&env, migrate::SERVICE);
    let config = migrate::Config::from_env(&env)?;
    let deps = migrate::Deps::new(&config)?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<_>| {
        migrate::handle(&deps, event)
    }))
    .await
}
