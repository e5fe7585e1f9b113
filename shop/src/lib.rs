//! The shop's functions as the emulator links them in-process: each built from
//! its environment as its binary's `main` builds it, and invoked directly.
//! This list is the only place that names them; a function the template adds
//! and this list lacks still runs under the emulator, as its binary behind the
//! Runtime API.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::cloudwatch_events::CloudWatchEvent;
use bytes::Bytes;
use customers_consumer::Customers;
use emulator::functions::{answer, event, http, local, BoxFuture, Linked, Registry};
use emulator::invoke::InvokeError;
use inventory_consumer::Inventory;
use order_saga::Saga;
use shared::config::Env;

/// The shop's registry: its ten functions and its migrations.
#[derive(Debug, Default, Clone, Copy)]
pub struct Shop;

/// The binaries [`Shop`] links.
pub const LINKED: [&str; 10] = [
    "create-order",
    "inventory-api",
    "customers-api",
    "outbox-relay",
    "inventory-consumer",
    "customers-consumer",
    "order-saga",
    "inventory-retention",
    "order-reconciler",
    "migrate",
];

impl Registry for Shop {
    fn binaries(&self) -> Vec<&'static str> {
        LINKED.to_vec()
    }

    fn link<'a>(
        &'a self,
        binary: &'a str,
        env: &'a Env,
    ) -> BoxFuture<'a, Option<anyhow::Result<Arc<dyn Linked>>>> {
        Box::pin(async move {
            if !LINKED.contains(&binary) {
                return None;
            }
            Some(
                ShopFunction::build(binary, env)
                    .await
                    .map(|f| Arc::new(f) as Arc<dyn Linked>),
            )
        })
    }

    fn migrations(&self) -> Vec<sqlx::migrate::Migrator> {
        migrate::migrations()
    }

    fn console_views(&self) -> Vec<emulator::functions::ConsoleView> {
        vec![emulator::functions::ConsoleView {
            title: "Orders stuck in PENDING (older than 5 s)",
            sql: order_service::orders::STUCK_PENDING_SQL,
        }]
    }
}

/// One of the shop's functions, built.
#[derive(Debug)]
pub enum ShopFunction {
    CreateOrder(create_order::Deps),
    InventoryApi(inventory_api::Deps),
    CustomersApi(customers_api::Deps),
    OutboxRelay(Box<outbox_relay::Deps>),
    InventoryConsumer(Arc<inventory_consumer::Deps>),
    CustomersConsumer(Arc<shared::source::Consumer<Customers>>),
    OrderSaga(Arc<order_saga::Deps>),
    InventoryRetention(inventory_retention::Deps),
    OrderReconciler(order_reconciler::Deps),
    /// Deploy-time only: nothing drives it; the Invoke API can run it.
    Migrate(migrate::Deps),
}

impl ShopFunction {
    /// What `binary`'s `main` does before its first invocation.
    pub async fn build(binary: &str, env: &Env) -> anyhow::Result<Self> {
        Ok(match binary {
            "create-order" => Self::CreateOrder(create_order::Deps::new(
                &create_order::Config::from_env(env)?,
            )),
            "inventory-api" => Self::InventoryApi(inventory_api::Deps::new(
                &inventory_api::Config::from_env(env)?,
            )),
            "customers-api" => Self::CustomersApi(customers_api::Deps::new(
                &customers_api::Config::from_env(env)?,
            )),
            "outbox-relay" => Self::OutboxRelay(Box::new(
                outbox_relay::Deps::connect(&outbox_relay::Config::from_env(env)?).await?,
            )),
            "inventory-consumer" => {
                let config = local(stream_consumer::config::<Inventory>(env)?);
                Self::InventoryConsumer(Arc::new(stream_consumer::connect(&config, env).await?))
            }
            "customers-consumer" => {
                let config = local(stream_consumer::config::<Customers>(env)?);
                Self::CustomersConsumer(Arc::new(stream_consumer::connect(&config, env).await?))
            }
            "order-saga" => {
                let config = local(stream_consumer::config::<Saga>(env)?);
                Self::OrderSaga(Arc::new(stream_consumer::connect(&config, env).await?))
            }
            "order-reconciler" => Self::OrderReconciler(order_reconciler::Deps::new(
                &order_reconciler::Config::from_env(env)?,
            )),
            "inventory-retention" => Self::InventoryRetention(inventory_retention::Deps::new(
                &inventory_retention::Config::from_env(env)?,
            )),
            "migrate" => Self::Migrate(migrate::Deps::new(&migrate::Config::from_env(env)?)?),
            other => anyhow::bail!("{other} is not one of the shop's functions"),
        })
    }
}

impl Linked for ShopFunction {
    fn invoke(
        &self,
        payload: Bytes,
        context: lambda_runtime::Context,
    ) -> BoxFuture<'_, Result<Bytes, InvokeError>> {
        Box::pin(async move {
            match self {
                Self::CreateOrder(deps) => {
                    http(&payload, |request| create_order::handle(deps, request)).await
                }
                Self::InventoryApi(deps) => {
                    http(&payload, |request| inventory_api::handle(deps, request)).await
                }
                Self::CustomersApi(deps) => {
                    http(&payload, |request| customers_api::handle(deps, request)).await
                }
                Self::OutboxRelay(deps) => {
                    let e = event::<CloudWatchEvent>(&payload, context)?;
                    answer(outbox_relay::handle(deps, e).await)
                }
                Self::InventoryConsumer(deps) => {
                    let e = event::<CloudWatchEvent>(&payload, context)?;
                    answer(stream_consumer::handle(deps, e).await)
                }
                Self::CustomersConsumer(deps) => {
                    let e = event::<CloudWatchEvent>(&payload, context)?;
                    answer(stream_consumer::handle(deps, e).await)
                }
                Self::OrderSaga(deps) => {
                    let e = event::<CloudWatchEvent>(&payload, context)?;
                    answer(stream_consumer::handle(deps, e).await)
                }
                Self::OrderReconciler(deps) => {
                    let e = event::<CloudWatchEvent>(&payload, context)?;
                    answer(order_reconciler::handle(deps, e).await)
                }
                Self::InventoryRetention(deps) => {
                    let e = event::<CloudWatchEvent>(&payload, context)?;
                    answer(inventory_retention::handle(deps, e).await)
                }
                Self::Migrate(deps) => {
                    let e = event::<serde_json::Value>(&payload, context)?;
                    answer(migrate::handle(deps, e).await)
                }
            }
        })
    }

    fn serve(&self, shutdown: BoxFuture<'static, ()>) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            match self {
                Self::OutboxRelay(deps) => Some(
                    match deps.relay.run(Duration::from_secs(1), shutdown).await {
                        Ok(()) => "stopped".to_owned(),
                        Err(e) => format!("stopped: {e}"),
                    },
                ),
                Self::InventoryConsumer(c) => Some(format!("{:?}", c.run(shutdown).await)),
                Self::CustomersConsumer(c) => Some(format!("{:?}", c.run(shutdown).await)),
                Self::OrderSaga(c) => Some(format!("{:?}", c.run(shutdown).await)),
                Self::CreateOrder(_)
                | Self::InventoryApi(_)
                | Self::CustomersApi(_)
                | Self::InventoryRetention(_)
                | Self::OrderReconciler(_)
                | Self::Migrate(_) => None,
            }
        })
    }

    fn stop(&self) {
        match self {
            Self::InventoryConsumer(c) => c.stop(),
            Self::CustomersConsumer(c) => c.stop(),
            Self::OrderSaga(c) => c.stop(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every function of the repository's template is linked, so both modes run
    /// them all, and the emulator's tests exercise them in-process.
    #[test]
    fn every_function_of_the_template_is_linked() {
        let template = emulator::template::parse(include_str!("../../template.yaml"))
            .expect("template.yaml parses");
        for f in &template.functions {
            assert!(
                LINKED.contains(&f.binary.as_str()),
                "{} is not linked",
                f.binary
            );
        }
    }
}
