//! The inboxes (`<schema>.processed_events`): the ids of the events a consumer
//! has applied. A consumer records an event in the same transaction as its
//! effect, so a redelivered event is recognised and changes nothing. [`purge`]
//! forgets rows once no copy of their event can come back (see
//! [`crate::retention`]).
//!
//! A service declares its inbox as a value (`Inbox::in_schema("orders")`) and
//! installs the table with `SELECT toolkit.install_inbox('orders')`.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;
use crate::table::{BadTableName, TableName};

/// A service's inbox table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Inbox(TableName);

impl Inbox {
    /// `<schema>.processed_events`, the table `toolkit.install_inbox(schema)` creates.
    pub const fn in_schema(schema: &'static str) -> Self {
        Self(TableName::new(schema, "processed_events"))
    }

    /// `schema.table`, or `schema` alone for `schema.processed_events`.
    pub fn parse(name: &str) -> Result<Self, BadTableName> {
        TableName::parse(name, "processed_events").map(Self)
    }

    pub fn table(&self) -> &TableName {
        &self.0
    }
}

impl fmt::Display for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Records `event_ids` as applied by `consumer`, on `conn` (the transaction
/// that applies them), and returns those recorded now: the others were
/// applied before and must be skipped.
pub async fn record(
    conn: &mut PgConnection,
    inbox: &Inbox,
    consumer: &str,
    event_ids: &[Uuid],
) -> Result<HashSet<Uuid>, StoreError> {
    let sql = format!(
        "INSERT INTO {inbox} (consumer, event_id)
         SELECT $1, e FROM UNNEST($2::uuid[]) AS e
         ON CONFLICT DO NOTHING
         RETURNING event_id"
    );
    sqlx::query_scalar::<_, Uuid>(&sql)
        .bind(consumer)
        .bind(event_ids)
        .fetch_all(conn)
        .await
        .map(|ids| ids.into_iter().collect())
        .map_err(|e| StoreError::database("recording events in the inbox", e))
}

/// Deletes up to `limit` rows of `inbox` processed more than `older_than` ago,
/// oldest first (through the `processed_at` index); returns how many. Rows
/// another purge is deleting are skipped, not waited for.
pub async fn purge(
    db: impl PgExecutor<'_>,
    inbox: &Inbox,
    older_than: Duration,
    limit: i64,
) -> Result<u64, StoreError> {
    let age_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let sql = format!(
        "DELETE FROM {inbox}
         WHERE (consumer, event_id) IN (
             SELECT consumer, event_id FROM {inbox}
             WHERE processed_at < now() - make_interval(secs => $1::bigint / 1000.0)
             ORDER BY processed_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)"
    );
    sqlx::query(&sql)
        .bind(age_ms)
        .bind(limit)
        .execute(db)
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| StoreError::database("purging the inbox", e))
}

/// Takes a transaction-scoped advisory lock per aggregate of `ids` (in
/// `namespace`, the first key), in the order of their keys, so that two
/// transactions deciding on one aggregate run one after the other: the second
/// then reads (inbox, answers, state) what the first committed. The event
/// source hands an aggregate's records to one consumer at a time; this holds
/// even when a Redis failover loses a lease or a delivery and two consumers
/// briefly have one aggregate's records at once.
pub async fn lock_aggregates(
    tx: &mut sqlx::PgConnection,
    namespace: i32,
    ids: &[uuid::Uuid],
) -> Result<(), crate::StoreError> {
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock($1, k))
         FROM (SELECT DISTINCT hashtext(id::text) AS k FROM unnest($2::uuid[]) AS id ORDER BY 1) AS keys",
    )
    .bind(namespace)
    .bind(ids)
    .execute(&mut *tx)
    .await
    .map(drop)
    .map_err(|e| crate::StoreError::database("locking the batch's aggregates", e))
}
