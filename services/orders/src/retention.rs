//! The order service's purges, in the toolkit's bounded purge loop.

use std::time::Instant;

use shared::retention::{Purge, PurgeSummary, RetentionConfig};
use shared::StoreError;
use sqlx::PgPool;

/// The order service's purges: expired idempotency keys, and the order
/// service's inbox (`orders.processed_events`) past `inbox_retention`. Runs
/// at most `config.time_budget`.
pub async fn purge_order_service(
    pool: &PgPool,
    config: &RetentionConfig,
) -> Result<PurgeSummary, StoreError> {
    purge_order_service_until(pool, config, Instant::now() + config.time_budget).await
}

/// [`purge_order_service`], starting no statement after `stop` (e.g. the
/// invocation's deadline less a safety margin).
pub async fn purge_order_service_until(
    pool: &PgPool,
    config: &RetentionConfig,
    stop: Instant,
) -> Result<PurgeSummary, StoreError> {
    let mut run = Purge::new(config, stop);
    run.table("orders.idempotency_keys", |limit| {
        crate::idempotency::purge_expired(pool, limit)
    })
    .await?;
    let orders_inbox = crate::INBOX;
    run.table(&orders_inbox, |limit| {
        shared::inbox::purge(pool, &orders_inbox, config.inbox_retention, limit)
    })
    .await?;
    Ok(run.finish())
}
