//! The transactional outbox: an event is appended in the same transaction as the
//! state change it announces, so it exists if and only if that change committed.
//! The relay (a later stage) moves it to Redis Streams.
//!
//! Every service's outbox table has one shape; this module is the only code that
//! writes to them.

use sqlx::PgConnection;

use crate::envelope::{EventEnvelope, OutboxColumnArrays, OutboxColumns};
use crate::error::StoreError;

/// The outbox tables, one per service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outbox {
    /// `orders.outbox`, written by the order service.
    Orders,
    /// `inventory.outbox`, written by the inventory service.
    Inventory,
}

impl Outbox {
    pub const ALL: [Outbox; 2] = [Outbox::Orders, Outbox::Inventory];

    pub fn table(self) -> &'static str {
        match self {
            Self::Orders => "orders.outbox",
            Self::Inventory => "inventory.outbox",
        }
    }
}

/// Appends `event` to `outbox` on `conn`, which must be inside the transaction
/// that makes the change the event announces.
pub async fn append(
    conn: &mut PgConnection,
    outbox: Outbox,
    event: &EventEnvelope,
) -> Result<(), StoreError> {
    let c = OutboxColumns::from(event);
    // One literal statement per table: table names cannot be bound parameters,
    // and SQL is never built from strings.
    let result = match outbox {
        Outbox::Orders => {
            sqlx::query!(
                r#"INSERT INTO orders.outbox
                   (event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, traceparent, payload)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::json)"#,
                c.event_id,
                c.event_type,
                c.schema_version,
                c.aggregate_type,
                c.aggregate_id,
                c.occurred_at,
                c.traceparent,
                c.payload,
            )
            .execute(conn)
            .await
        }
        Outbox::Inventory => {
            sqlx::query!(
                r#"INSERT INTO inventory.outbox
                   (event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, traceparent, payload)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::json)"#,
                c.event_id,
                c.event_type,
                c.schema_version,
                c.aggregate_type,
                c.aggregate_id,
                c.occurred_at,
                c.traceparent,
                c.payload,
            )
            .execute(conn)
            .await
        }
    };
    result
        .map(|_| ())
        .map_err(|e| StoreError::database("appending to the outbox", e))
}

/// Appends `events`, in order, to `outbox` in one statement; for consumers that
/// settle a whole batch in one transaction, and for events sent again under
/// their first `event_id`: an event still waiting in the outbox is not added
/// twice (its id is already there).
pub async fn append_all(
    conn: &mut PgConnection,
    outbox: Outbox,
    events: &[EventEnvelope],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let a: OutboxColumnArrays = events.iter().collect();
    // Rows are inserted in array order (WITH ORDINALITY), so ids follow it.
    let result = match outbox {
        Outbox::Orders => {
            sqlx::query!(
                r#"INSERT INTO orders.outbox
                   (event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, traceparent, payload)
                   SELECT e.event_id, e.event_type, e.schema_version, e.aggregate_type, e.aggregate_id,
                          e.occurred_at, NULLIF(e.traceparent, ''), e.payload::json
                   FROM UNNEST($1::uuid[], $2::text[], $3::integer[], $4::text[], $5::text[],
                               $6::timestamptz[], $7::text[], $8::text[]) WITH ORDINALITY
                        AS e(event_id, event_type, schema_version, aggregate_type, aggregate_id,
                             occurred_at, traceparent, payload, n)
                   ORDER BY e.n
                   ON CONFLICT (event_id) DO NOTHING"#,
                &a.event_ids,
                &a.event_types,
                &a.schema_versions,
                &a.aggregate_types,
                &a.aggregate_ids,
                &a.occurred_at,
                &a.traceparents,
                &a.payloads,
            )
            .execute(conn)
            .await
        }
        Outbox::Inventory => {
            sqlx::query!(
                r#"INSERT INTO inventory.outbox
                   (event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, traceparent, payload)
                   SELECT e.event_id, e.event_type, e.schema_version, e.aggregate_type, e.aggregate_id,
                          e.occurred_at, NULLIF(e.traceparent, ''), e.payload::json
                   FROM UNNEST($1::uuid[], $2::text[], $3::integer[], $4::text[], $5::text[],
                               $6::timestamptz[], $7::text[], $8::text[]) WITH ORDINALITY
                        AS e(event_id, event_type, schema_version, aggregate_type, aggregate_id,
                             occurred_at, traceparent, payload, n)
                   ORDER BY e.n
                   ON CONFLICT (event_id) DO NOTHING"#,
                &a.event_ids,
                &a.event_types,
                &a.schema_versions,
                &a.aggregate_types,
                &a.aggregate_ids,
                &a.occurred_at,
                &a.traceparents,
                &a.payloads,
            )
            .execute(conn)
            .await
        }
    };
    result
        .map(|_| ())
        .map_err(|e| StoreError::database("appending to the outbox", e))
}
