//! The Lambda entry point: configuration, telemetry and the pool are built once
//! per cold start; each invocation borrows them.

use std::convert::Infallible;

use lambda_http::{service_fn, Request};
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let env = Env::from_process();
    shared::telemetry::init(&env, create_order::SERVICE);
    let config = create_order::Config::from_env(&env)?;
    let deps = create_order::Deps::new(&config);
    lambda_http::run(service_fn(|request: Request| {
        let deps = &deps;
        async move { Ok::<_, Infallible>(create_order::handle(deps, request).await) }
    }))
    .await
}
