//! The inboxes (`*.processed_events`): the ids of the events a consumer has
//! applied. A consumer records an event in the same transaction as its effect,
//! so a redelivered event is recognised and changes nothing.

use std::collections::HashSet;

use sqlx::PgConnection;
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
