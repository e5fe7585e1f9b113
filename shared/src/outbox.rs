//! The transactional outbox: an event is appended in the same transaction as the
//! state change it announces, so it exists if and only if that change committed.
//! The relay ([`crate::relay`]) moves it to Redis Streams.
//!
//! A service declares its outbox as a value (`Outbox::in_schema("orders")`) and
//! installs the table with the toolkit's migration function
//! (`SELECT toolkit.install_outbox('orders')`, see `shared/migrations`): every
//! outbox has one shape, and this module is the only code that writes to them.

use std::fmt;

use sqlx::PgConnection;

use crate::envelope::{EventEnvelope, OutboxColumnArrays, OutboxColumns};
use crate::error::StoreError;
use crate::table::{BadTableName, TableName};

/// A service's outbox table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Outbox(TableName);

impl Outbox {
    /// `<schema>.outbox`, the table `toolkit.install_outbox(schema)` creates.
    pub const fn in_schema(schema: &'static str) -> Self {
        Self(TableName::new(schema, "outbox"))
    }

    /// `schema.table`, or `schema` alone for `schema.outbox`.
    pub fn parse(name: &str) -> Result<Self, BadTableName> {
        TableName::parse(name, "outbox").map(Self)
    }

    pub fn table(&self) -> &TableName {
        &self.0
    }
}

impl fmt::Display for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Appends `event` to `outbox` on `conn`, which must be inside the transaction
/// that makes the change the event announces.
pub async fn append(
    conn: &mut PgConnection,
    outbox: &Outbox,
    event: &EventEnvelope,
) -> Result<(), StoreError> {
    let c = OutboxColumns::from(event);
    let sql = format!(
        "INSERT INTO {outbox}
         (event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, traceparent, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::json)"
    );
    sqlx::query(&sql)
        .bind(c.event_id)
        .bind(c.event_type)
        .bind(c.schema_version)
        .bind(c.aggregate_type)
        .bind(c.aggregate_id)
        .bind(c.occurred_at)
        .bind(c.traceparent)
        .bind(c.payload)
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(|e| StoreError::database("appending to the outbox", e))
}

/// Appends `events`, in order, to `outbox` in one statement; for consumers that
/// settle a whole batch in one transaction, and for events sent again under
/// their first `event_id`: an event still waiting in the outbox is not added
/// twice (its id is already there).
pub async fn append_all(
    conn: &mut PgConnection,
    outbox: &Outbox,
    events: &[EventEnvelope],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let a: OutboxColumnArrays = events.iter().collect();
    // Rows are inserted in array order (WITH ORDINALITY), so ids follow it.
    let sql = format!(
        "INSERT INTO {outbox}
         (event_id, event_type, schema_version, aggregate_type, aggregate_id, occurred_at, traceparent, payload)
         SELECT e.event_id, e.event_type, e.schema_version, e.aggregate_type, e.aggregate_id,
                e.occurred_at, NULLIF(e.traceparent, ''), e.payload::json
         FROM UNNEST($1::uuid[], $2::text[], $3::integer[], $4::text[], $5::text[],
                     $6::timestamptz[], $7::text[], $8::text[]) WITH ORDINALITY
              AS e(event_id, event_type, schema_version, aggregate_type, aggregate_id,
                   occurred_at, traceparent, payload, n)
         ORDER BY e.n
         ON CONFLICT (event_id) DO NOTHING"
    );
    a.bind_to(sqlx::query(&sql))
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(|e| StoreError::database("appending to the outbox", e))
}
