//! The Lambda entry point: configuration, telemetry and the pool are built once
//! per cold start; each invocation borrows them.

use std::convert::Infallible;

use lambda_http::{service_fn, Request};
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let env = Env::from_process();
    shared::telemetry::init(&env, customers_api::SERVICE);
    let config = customers_api::Config::from_env(&env)?;
    let deps = customers_api::Deps::new(&config);
    lambda_http::run(service_fn(|request: Request| {
        let deps = &deps;
        async move { Ok::<_, Infallible>(customers_api::handle(deps, request).await) }
    }))
    .await
}
