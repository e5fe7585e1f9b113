//! The Lambda entry point: configuration, telemetry, the pool and the event
//! source are built once per cold start; each scheduled invocation reads the
//! streams for its time budget.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    stream_consumer::main::<customers_consumer::Customers>().await
}
