//! The inboxes (`*.processed_events`): the ids of the events a consumer has
//! applied. A consumer records an event in the same transaction as its effect,
//! so a redelivered event is recognised and changes nothing. [`purge`] forgets
//! rows once no copy of their event can come back (see [`crate::retention`]).

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;

/// The inbox tables, one per service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Inbox {
    /// `orders.processed_events`, of the order service's consumers.
    Orders,
    /// `inventory.processed_events`, of the inventory service's consumers.
    Inventory,
}

impl Inbox {
    /// The table's name, `orders.processed_events` or `inventory.processed_events`.
    pub fn table(self) -> &'static str {
        match self {
            Inbox::Orders => "orders.processed_events",
            Inbox::Inventory => "inventory.processed_events",
        }
    }
}

/// Records `event_ids` as applied by `consumer`, on `conn` (the transaction
/// that applies them), and returns those recorded now: the others were
/// applied before and must be skipped.
pub async fn record(
    conn: &mut PgConnection,
    inbox: Inbox,
    consumer: &str,
    event_ids: &[Uuid],
) -> Result<HashSet<Uuid>, StoreError> {
    // One literal statement per table, as in the outbox.
    let fresh = match inbox {
        Inbox::Orders => {
            sqlx::query_scalar!(
                r#"INSERT INTO orders.processed_events (consumer, event_id)
                   SELECT $1, e FROM UNNEST($2::uuid[]) AS e
                   ON CONFLICT DO NOTHING
                   RETURNING event_id"#,
                consumer,
                event_ids,
            )
            .fetch_all(conn)
            .await
        }
        Inbox::Inventory => {
            sqlx::query_scalar!(
                r#"INSERT INTO inventory.processed_events (consumer, event_id)
                   SELECT $1, e FROM UNNEST($2::uuid[]) AS e
                   ON CONFLICT DO NOTHING
                   RETURNING event_id"#,
                consumer,
                event_ids,
            )
            .fetch_all(conn)
            .await
        }
    };
    fresh
        .map(|ids| ids.into_iter().collect())
        .map_err(|e| StoreError::database("recording events in the inbox", e))
}

/// Deletes up to `limit` rows of `inbox` processed more than `older_than` ago,
/// oldest first (through the `processed_at` index); returns how many. Rows
/// another purge is deleting are skipped, not waited for.
pub async fn purge(
    db: impl PgExecutor<'_>,
    inbox: Inbox,
    older_than: Duration,
    limit: i64,
) -> Result<u64, StoreError> {
    let age_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let deleted = match inbox {
        Inbox::Orders => {
            sqlx::query!(
                r#"DELETE FROM orders.processed_events
                   WHERE (consumer, event_id) IN (
                       SELECT consumer, event_id FROM orders.processed_events
                       WHERE processed_at < now() - make_interval(secs => $1::bigint / 1000.0)
                       ORDER BY processed_at
                       LIMIT $2
                       FOR UPDATE SKIP LOCKED)"#,
                age_ms,
                limit,
            )
            .execute(db)
            .await
        }
        Inbox::Inventory => {
            sqlx::query!(
                r#"DELETE FROM inventory.processed_events
                   WHERE (consumer, event_id) IN (
                       SELECT consumer, event_id FROM inventory.processed_events
                       WHERE processed_at < now() - make_interval(secs => $1::bigint / 1000.0)
                       ORDER BY processed_at
                       LIMIT $2
                       FOR UPDATE SKIP LOCKED)"#,
                age_ms,
                limit,
            )
            .execute(db)
            .await
        }
    };
    deleted
        .map(|r| r.rows_affected())
        .map_err(|e| StoreError::database("purging the inbox", e))
}
