//! Retention of the inventory service's own memory: the orders it saw
//! cancelled (`inventory.cancelled_orders`) and the answers it sent
//! (`inventory.answers`), and, with its inbox (`inventory.processed_events`,
//! [`shared::inbox::purge`]), [`purge_inventory_service`], which the
//! `inventory-retention` function runs on a schedule.
//!
//! All three are kept `INBOX_RETENTION_HOURS`: as long as an `OrderCreated` or
//! `OrderCancelled` can still come back (a redrive), the inventory must still
//! know the order was cancelled, and still answer with what it answered then.

use std::time::{Duration, Instant};

use shared::inbox;
use shared::retention::{Purge, PurgeSummary, RetentionConfig};
use shared::StoreError;
use sqlx::{PgExecutor, PgPool};

/// The table of [`purge_cancelled_orders`].
pub const CANCELLED_ORDERS: &str = "inventory.cancelled_orders";
/// The table of [`purge_answers`].
pub const ANSWERS: &str = "inventory.answers";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Deletes up to `limit` cancelled orders recorded more than `older_than`
/// ago, oldest first (through the `cancelled_at` index); returns how many.
pub async fn purge_cancelled_orders(
    db: impl PgExecutor<'_>,
    older_than: Duration,
    limit: i64,
) -> Result<u64, StoreError> {
    sqlx::query!(
        r#"DELETE FROM inventory.cancelled_orders
           WHERE order_id IN (
               SELECT order_id FROM inventory.cancelled_orders
               WHERE cancelled_at < now() - make_interval(secs => $1::bigint / 1000.0)
               ORDER BY cancelled_at
               LIMIT $2
               FOR UPDATE SKIP LOCKED)"#,
        millis(older_than),
        limit,
    )
    .execute(db)
    .await
    .map(|r| r.rows_affected())
    .map_err(|e| StoreError::database("purging cancelled orders", e))
}

/// Deletes up to `limit` answers sent more than `older_than` ago, oldest
/// first (through the `answered_at` index); returns how many.
pub async fn purge_answers(
    db: impl PgExecutor<'_>,
    older_than: Duration,
    limit: i64,
) -> Result<u64, StoreError> {
    sqlx::query!(
        r#"DELETE FROM inventory.answers
           WHERE (order_id, request) IN (
               SELECT order_id, request FROM inventory.answers
               WHERE answered_at < now() - make_interval(secs => $1::bigint / 1000.0)
               ORDER BY answered_at
               LIMIT $2
               FOR UPDATE SKIP LOCKED)"#,
        millis(older_than),
        limit,
    )
    .execute(db)
    .await
    .map(|r| r.rows_affected())
    .map_err(|e| StoreError::database("purging answers", e))
}

/// The inventory service's purges, each past `config.inbox_retention`: its
/// inbox, its cancelled orders, its answers. Starts no statement after `stop`
/// nor after `config.time_budget`.
pub async fn purge_inventory_service(
    pool: &PgPool,
    config: &RetentionConfig,
    stop: Instant,
) -> Result<PurgeSummary, StoreError> {
    let older_than = config.inbox_retention;
    let mut run = Purge::new(config, stop);
    let inventory_inbox = inventory_service::INBOX;
    run.table(&inventory_inbox, |limit| {
        inbox::purge(pool, &inventory_inbox, older_than, limit)
    })
    .await?;
    run.table(CANCELLED_ORDERS, |limit| {
        purge_cancelled_orders(pool, older_than, limit)
    })
    .await?;
    run.table(ANSWERS, |limit| purge_answers(pool, older_than, limit))
        .await?;
    Ok(run.finish())
}
