//! Each service is its own database role (each service's migrations create its role): connected
//! as each role, the other service's tables are refused, and the role's own
//! work (its functions' handlers, the relay) is done.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tests::{redis_url, unique_namespace, Answer, ApiRequest, TestDb};

const ORDER: &str = "order_service";
const INVENTORY: &str = "inventory_service";
const RELAY: &str = "outbox_relay";
const CUSTOMER: &str = "customer_service";

/// A pool on the test's database logged in as `role` (loopback trusts: no password).
async fn pool_as(db: &TestDb, role: &str) -> Result<PgPool> {
    let config = db.config.clone().with_user(role);
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(config.connect_options())
        .await?)
}

/// `sql` fails with PostgreSQL's `insufficient_privilege` (42501).
async fn refused(pool: &PgPool, sql: &str) -> Result<()> {
    match sqlx::query(sql).execute(pool).await {
        Ok(_) => anyhow::bail!("{sql}: allowed, should be refused"),
        Err(sqlx::Error::Database(e)) => {
            ensure!(
                e.code().as_deref() == Some("42501"),
                "{sql}: refused with {:?} ({e}), not insufficient_privilege",
                e.code()
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn allowed(pool: &PgPool, sql: &str) -> Result<()> {
    sqlx::query(sql)
        .execute(pool)
        .await
        .map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
    Ok(())
}

#[tokio::test]
async fn each_role_is_refused_the_other_services_tables() -> Result<()> {
    let db = TestDb::fresh().await?;
    let order = pool_as(&db, ORDER).await?;
    let inventory = pool_as(&db, INVENTORY).await?;
    let relay = pool_as(&db, RELAY).await?;

    // The order service: no inventory at all.
    for sql in [
        "SELECT * FROM inventory.stock",
        "INSERT INTO inventory.stock (sku, available, price_cents) VALUES ('X-1', 1, 100)",
        "UPDATE inventory.stock SET available = 0",
        "SELECT * FROM inventory.outbox",
        "SELECT * FROM inventory.processed_events",
    ] {
        refused(&order, sql).await?;
    }
    allowed(&order, "SELECT * FROM orders.orders").await?;
    allowed(&order, "SELECT * FROM orders.outbox").await?;

    // The inventory service: no orders.
    for sql in [
        "SELECT * FROM orders.orders",
        "DELETE FROM orders.order_lines",
        "SELECT * FROM orders.outbox",
        "SELECT * FROM orders.idempotency_keys",
    ] {
        refused(&inventory, sql).await?;
    }
    allowed(&inventory, "SELECT * FROM inventory.stock").await?;
    allowed(&inventory, "SELECT * FROM inventory.answers").await?;
    refused(&inventory, "SELECT * FROM customers.credit").await?;
    refused(&order, "UPDATE customers.credit SET limit_cents = 0").await?;

    // The customer service: its schema, and neither orders nor stock.
    let customer = pool_as(&db, CUSTOMER).await?;
    for sql in [
        "SELECT * FROM orders.orders",
        "SELECT * FROM inventory.stock",
        "SELECT * FROM orders.outbox",
    ] {
        refused(&customer, sql).await?;
    }
    allowed(&customer, "SELECT * FROM customers.credit").await?;
    allowed(&customer, "SELECT * FROM customers.outbox").await?;

    // The relay: the outboxes, and only to read, set aside and delete.
    for sql in [
        "SELECT * FROM orders.orders",
        "SELECT * FROM orders.order_lines",
        "SELECT * FROM inventory.stock",
        "SELECT * FROM inventory.reservations",
        "INSERT INTO orders.outbox (event_id, event_type, schema_version, aggregate_type, \
         aggregate_id, occurred_at, payload) \
         VALUES (gen_random_uuid(), 'X', 1, 'Order', 'a', now(), '{}')",
        "TRUNCATE orders.outbox",
    ] {
        refused(&relay, sql).await?;
    }
    for sql in [
        "SELECT id FROM orders.outbox",
        "SELECT id FROM inventory.outbox",
        "UPDATE inventory.outbox SET attempts = 0 WHERE false",
        "DELETE FROM orders.outbox WHERE false",
    ] {
        allowed(&relay, sql).await?;
    }

    // No service may change the schema.
    for pool in [&order, &inventory, &relay] {
        refused(pool, "CREATE TABLE orders.mine (x int)").await?;
        refused(pool, "CREATE TABLE public.mine (x int)").await?;
    }
    Ok(())
}

#[tokio::test]
async fn each_role_does_its_own_work() -> Result<()> {
    let db = TestDb::fresh().await?;

    // The inventory API as inventory_service: a SKU with its price.
    let inventory_api = inventory_api::Deps {
        pool: pool_as(&db, INVENTORY).await?,
    };
    let put = Answer::from(
        inventory_api::handle(
            &inventory_api,
            ApiRequest::put_inventory("W-1", r#"{"available": 10, "price_cents": 1999}"#).build(),
        )
        .await,
    );
    ensure!(put.status < 300, "PUT /inventory as {INVENTORY}: {put:?}");
    let get = Answer::from(
        inventory_api::handle(&inventory_api, ApiRequest::get_inventory("W-1").build()).await,
    );
    ensure!(get.status == 200, "GET /inventory as {INVENTORY}: {get:?}");

    // The inventory consumer's transaction as inventory_service.
    let order_id = contracts::OrderId::new();
    let job = inventory_consumer::Job {
        event_id: uuid::Uuid::now_v7(),
        traceparent: None,
        command: inventory_consumer::Command::Reserve {
            order_id,
            lines: vec![inventory_consumer::Line {
                sku: contracts::Sku::parse("W-1")?,
                quantity: contracts::Quantity::try_from(2_i64)?,
                unit_price_cents: 1999,
            }],
        },
    };
    let applied = inventory_consumer::apply(&inventory_api.pool, &[job]).await?;
    ensure!(
        applied.reserved == 1,
        "reserved as {INVENTORY}: {applied:?}"
    );

    // create-order as order_service: create, read, cancel.
    let create_order = create_order::Deps {
        pool: pool_as(&db, ORDER).await?,
        idempotency_ttl: Duration::from_secs(3600),
    };
    let created = Answer::from(
        create_order::handle(&create_order, ApiRequest::post_orders_fixture().build()).await,
    );
    ensure!(
        created.status == 201,
        "POST /orders as {ORDER}: {created:?}"
    );
    let id = created.json()["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no id in {created:?}"))?;
    let read =
        Answer::from(create_order::handle(&create_order, ApiRequest::get_order(&id).build()).await);
    ensure!(read.status == 200, "GET /orders/{id} as {ORDER}: {read:?}");
    let cancelled = Answer::from(
        create_order::handle(&create_order, ApiRequest::cancel_order(&id).build()).await,
    );
    ensure!(
        cancelled.status == 200,
        "POST /orders/{id}/cancel as {ORDER}: {cancelled:?}"
    );

    // The reconciler (order_service): its queries and purges run.
    let retention = shared::retention::RetentionConfig::from_env(&shared::config::Env::default())?;
    order_reconciler::reconcile(
        &create_order.pool,
        &order_reconciler::Settings::default(),
        &retention,
        shared::envelope::now_utc(),
    )
    .await?;

    // The relay as outbox_relay: both outboxes drained to Redis.
    let pending = db.count("orders.outbox").await? + db.count("inventory.outbox").await?;
    ensure!(pending >= 3, "events to relay: {pending}");
    let relay = tests::relay(
        &pool_as(&db, RELAY).await?,
        &redis_url(),
        shared::relay::RelayOptions {
            stream_namespace: unique_namespace(),
            ..tests::relay_options()
        },
    )
    .await?;
    let summary = relay
        .drain_until(Instant::now() + Duration::from_secs(30))
        .await?;
    ensure!(
        summary.published == u64::try_from(pending)? && summary.failed == 0,
        "relayed as {RELAY}: {summary:?}"
    );
    ensure!(db.count("orders.outbox").await? == 0);
    ensure!(db.count("inventory.outbox").await? == 0);
    Ok(())
}
