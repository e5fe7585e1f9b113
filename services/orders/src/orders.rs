//! The order service's tables, `orders.orders` and `orders.order_lines`: the only
//! code that reads or writes them.

use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use contracts::{CustomerId, Money, NewOrder, OrderId, OrderLine, OrderStatus, Quantity, Sku};
use shared::envelope::EventEnvelope;
use shared::StoreError;

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub customer_id: CustomerId,
    pub status: OrderStatus,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Why the order is in its status, when that needs saying (e.g. which SKU was
    /// short when the saga rejected it).
    pub status_reason: Option<String>,
}

/// What [`cancel`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancellation {
    /// The order was `PENDING` or `CONFIRMED` and is now `CANCELLED`.
    Cancelled(Order),
    /// The order is in a status that cannot be cancelled (`REJECTED`, `CANCELLED`);
    /// nothing was changed.
    NotCancellable(OrderStatus),
    /// There is no such order.
    NotFound,
}

/// One row of an order joined with one of its lines.
struct OrderLineRow {
    id: uuid::Uuid,
    customer_id: String,
    status: String,
    status_reason: Option<String>,
    total_cents: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    sku: String,
    quantity: i32,
    unit_price_cents: i64,
}

/// Inserts `order` (status `PENDING`) and its lines in one statement, on `conn`,
/// which should be the transaction that also appends `created`, its `OrderCreated`
/// event. The event's id and trace are kept with the order, so the reconciler can
/// send it again as it was.
pub async fn insert(
    conn: &mut PgConnection,
    order: &NewOrder,
    created: &EventEnvelope,
) -> Result<Order, StoreError> {
    let lines = order.lines();
    // Line numbers are 1..=MAX_ORDER_LINES (100), so they fit in i16.
    let line_nos: Vec<i16> = (1..=lines.len())
        .map(|n| i16::try_from(n).unwrap_or(i16::MAX))
        .collect();
    let skus: Vec<String> = lines.iter().map(|l| l.sku.to_string()).collect();
    let quantities: Vec<i32> = lines.iter().map(|l| i32::from(l.quantity.get())).collect();
    let prices: Vec<i64> = lines.iter().map(|l| l.unit_price.cents()).collect();
    sqlx::query!(
        r#"WITH new_order AS (
               INSERT INTO orders.orders
                   (id, customer_id, status, total_cents, created_at, updated_at, created_event_id, traceparent)
               VALUES ($1, $2, 'PENDING', $3, $4, $4, $9, $10)
           )
           INSERT INTO orders.order_lines (order_id, line_no, sku, quantity, unit_price_cents)
           SELECT $1, l.line_no, l.sku, l.quantity, l.unit_price_cents
           FROM UNNEST($5::smallint[], $6::text[], $7::integer[], $8::bigint[])
                AS l(line_no, sku, quantity, unit_price_cents)"#,
        order.id().as_uuid(),
        order.customer_id().as_str(),
        order.total().cents(),
        order.created_at(),
        &line_nos,
        &skus,
        &quantities,
        &prices,
        created.event_id.as_uuid(),
        created.traceparent.map(|tp| tp.to_string()),
    )
    .execute(conn)
    .await
    .map_err(|e| StoreError::database("inserting the order", e))?;
    Ok(Order {
        id: order.id(),
        customer_id: order.customer_id().clone(),
        status: OrderStatus::Pending,
        lines: lines.to_vec(),
        total: order.total(),
        created_at: order.created_at(),
        updated_at: order.created_at(),
        status_reason: None,
    })
}

/// The order with `id` and its lines, or `None`.
pub async fn find(db: impl PgExecutor<'_>, id: OrderId) -> Result<Option<Order>, StoreError> {
    const CONTEXT: &str = "reading an order";
    let rows = sqlx::query_as!(
        OrderLineRow,
        r#"SELECT o.id, o.customer_id, o.status, o.status_reason, o.total_cents,
                  o.created_at, o.updated_at, l.sku, l.quantity, l.unit_price_cents
           FROM orders.orders o
           JOIN orders.order_lines l ON l.order_id = o.id
           WHERE o.id = $1
           ORDER BY l.line_no"#,
        id.as_uuid(),
    )
    .fetch_all(db)
    .await
    .map_err(|e| StoreError::database(CONTEXT, e))?;
    from_rows(CONTEXT, &rows)
}

/// Cancels the order with `id` if it is `PENDING` or `CONFIRMED` (status
/// `CANCELLED`, `updated_at` the event's time), on `conn`, which should be the
/// transaction that also appends `cancelled`, its `OrderCancelled` event; the order
/// then awaits the inventory's `InventoryReleased` (see [`confirm_released`]). Any
/// other status changes nothing. With `owner`, another customer's order is
/// [`Cancellation::NotFound`], as if it did not exist.
pub async fn cancel(
    conn: &mut PgConnection,
    id: OrderId,
    owner: Option<&CustomerId>,
    cancelled: &EventEnvelope,
) -> Result<Cancellation, StoreError> {
    const CONTEXT: &str = "cancelling an order";
    // The status test is in the UPDATE itself: a concurrent change is waited for and
    // the test re-checked against the row as it then is, so no cancellable status
    // is ever overwritten by a stale read.
    let rows = sqlx::query_as!(
        OrderLineRow,
        r#"WITH cancelled AS (
               UPDATE orders.orders
               SET status = 'CANCELLED', updated_at = $2, cancel_event_id = $3,
                   awaiting_release_since = $2
               WHERE id = $1 AND status IN ('PENDING', 'CONFIRMED')
                 AND ($4::text IS NULL OR customer_id = $4)
               RETURNING id, customer_id, status, status_reason, total_cents, created_at, updated_at
           )
           SELECT c.id AS "id!", c.customer_id AS "customer_id!", c.status AS "status!",
                  c.status_reason AS "status_reason?", c.total_cents AS "total_cents!",
                  c.created_at AS "created_at!", c.updated_at AS "updated_at!",
                  l.sku, l.quantity, l.unit_price_cents
           FROM cancelled c
           JOIN orders.order_lines l ON l.order_id = c.id
           ORDER BY l.line_no"#,
        id.as_uuid(),
        cancelled.occurred_at,
        cancelled.event_id.as_uuid(),
        owner.map(CustomerId::as_str),
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| StoreError::database(CONTEXT, e))?;
    if let Some(order) = from_rows(CONTEXT, &rows)? {
        return Ok(Cancellation::Cancelled(order));
    }
    // Nothing was updated: say why.
    let status = sqlx::query_scalar!(
        "SELECT status FROM orders.orders WHERE id = $1 AND ($2::text IS NULL OR customer_id = $2)",
        id.as_uuid(),
        owner.map(CustomerId::as_str),
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| StoreError::database(CONTEXT, e))?;
    match status {
        None => Ok(Cancellation::NotFound),
        Some(status) => {
            let status = status
                .parse()
                .map_err(|e| StoreError::corrupt(CONTEXT, e))?;
            Ok(Cancellation::NotCancellable(status))
        }
    }
}

/// An order from its rows (one per line, in line order); `None` for no rows.
fn from_rows(context: &'static str, rows: &[OrderLineRow]) -> Result<Option<Order>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let corrupt = |e| StoreError::corrupt(context, e);
    let mut order = Order {
        id: OrderId::from(first.id),
        customer_id: CustomerId::parse(&first.customer_id).map_err(corrupt)?,
        status: first.status.parse().map_err(corrupt)?,
        lines: Vec::with_capacity(rows.len()),
        total: Money::from_cents(first.total_cents).map_err(corrupt)?,
        created_at: first.created_at,
        updated_at: first.updated_at,
        status_reason: first.status_reason.clone(),
    };
    for row in rows {
        order.lines.push(OrderLine {
            sku: Sku::parse(&row.sku).map_err(corrupt)?,
            quantity: Quantity::try_from(i64::from(row.quantity)).map_err(corrupt)?,
            unit_price: Money::from_cents(row.unit_price_cents).map_err(corrupt)?,
        });
    }
    Ok(Some(order))
}

/// A `PENDING` order the reconciler sends `OrderCreated` for again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswered {
    pub order: Order,
    /// The id its `OrderCreated` had; `None` for an order created before ids were
    /// kept (the reconciler gives it one, once, with [`assign_created_event_ids`]).
    pub created_event_id: Option<uuid::Uuid>,
    pub traceparent: Option<String>,
}

/// `PENDING` orders created before `before` whose events were not sent again
/// since `before` either, oldest first, at most `limit`; from the partial index
/// of `PENDING` orders, so the cost does not grow with the table.
pub async fn unanswered(
    conn: &mut PgConnection,
    before: OffsetDateTime,
    limit: i64,
) -> Result<Vec<Unanswered>, StoreError> {
    const CONTEXT: &str = "reading unanswered orders";
    let rows = sqlx::query!(
        r#"WITH stuck AS (
               SELECT id, customer_id, status, status_reason, total_cents, created_at, updated_at,
                      created_event_id, traceparent
               FROM orders.orders
               WHERE status = 'PENDING' AND created_at < $1
                 AND (resent_at IS NULL OR resent_at < $1)
               ORDER BY created_at
               LIMIT $2
           )
           SELECT s.id, s.customer_id, s.status, s.status_reason, s.total_cents, s.created_at,
                  s.updated_at, s.created_event_id, s.traceparent,
                  l.sku, l.quantity, l.unit_price_cents
           FROM stuck s
           JOIN orders.order_lines l ON l.order_id = s.id
           ORDER BY s.created_at, s.id, l.line_no"#,
        before,
        limit,
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| StoreError::database(CONTEXT, e))?;
    let mut found: Vec<Unanswered> = Vec::new();
    let mut group: Vec<OrderLineRow> = Vec::new();
    let mut extra: Option<(Option<uuid::Uuid>, Option<String>)> = None;
    let mut flush = |group: &mut Vec<OrderLineRow>,
                     extra: &mut Option<(Option<uuid::Uuid>, Option<String>)>|
     -> Result<(), StoreError> {
        if let (Some(order), Some((created_event_id, traceparent))) =
            (from_rows(CONTEXT, group)?, extra.take())
        {
            found.push(Unanswered {
                order,
                created_event_id,
                traceparent,
            });
        }
        group.clear();
        Ok(())
    };
    for r in rows {
        if group.first().is_some_and(|g| g.id != r.id) {
            flush(&mut group, &mut extra)?;
        }
        extra = Some((r.created_event_id, r.traceparent));
        group.push(OrderLineRow {
            id: r.id,
            customer_id: r.customer_id,
            status: r.status,
            status_reason: r.status_reason,
            total_cents: r.total_cents,
            created_at: r.created_at,
            updated_at: r.updated_at,
            sku: r.sku,
            quantity: r.quantity,
            unit_price_cents: r.unit_price_cents,
        });
    }
    flush(&mut group, &mut extra)?;
    Ok(found)
}

/// Gives orders created before event ids were kept the id their `OrderCreated`
/// is sent again under from now on (only where none is set).
pub async fn assign_created_event_ids(
    conn: &mut PgConnection,
    ids: &[uuid::Uuid],
    event_ids: &[uuid::Uuid],
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"UPDATE orders.orders o SET created_event_id = u.event_id
           FROM UNNEST($1::uuid[], $2::uuid[]) AS u(id, event_id)
           WHERE o.id = u.id AND o.created_event_id IS NULL"#,
        ids,
        event_ids,
    )
    .execute(conn)
    .await
    .map_err(|e| StoreError::database("assigning event ids", e))?;
    Ok(())
}

/// Notes that the events of `ids` were sent again at `at`.
pub async fn mark_resent(
    conn: &mut PgConnection,
    ids: &[uuid::Uuid],
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE orders.orders SET resent_at = $2 WHERE id = ANY($1)",
        ids,
        at,
    )
    .execute(conn)
    .await
    .map_err(|e| StoreError::database("noting events sent again", e))?;
    Ok(())
}

/// A `PENDING` order past its deadline, locked for [`reject_timed_out`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdue {
    pub id: OrderId,
    pub traceparent: Option<String>,
}

/// Locks up to `limit` `PENDING` orders created before `before`, oldest first
/// (rows another transaction holds are skipped: a saga step is deciding them).
pub async fn lock_overdue(
    conn: &mut PgConnection,
    before: OffsetDateTime,
    limit: i64,
) -> Result<Vec<Overdue>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT id, traceparent FROM orders.orders
           WHERE status = 'PENDING' AND created_at < $1
           ORDER BY created_at
           LIMIT $2
           FOR UPDATE SKIP LOCKED"#,
        before,
        limit,
    )
    .fetch_all(conn)
    .await
    .map_err(|e| StoreError::database("locking overdue orders", e))?;
    Ok(rows
        .into_iter()
        .map(|r| Overdue {
            id: OrderId::from(r.id),
            traceparent: r.traceparent,
        })
        .collect())
}

/// Rejects the locked `PENDING` orders `ids` with `reason`; each awaits the
/// release its `OrderCancelled` (`cancel_event_ids`, in the same order, written
/// at `at` by the caller in this transaction) asks for.
pub async fn reject_timed_out(
    conn: &mut PgConnection,
    ids: &[uuid::Uuid],
    cancel_event_ids: &[uuid::Uuid],
    at: OffsetDateTime,
    reason: &str,
) -> Result<u64, StoreError> {
    let done = sqlx::query!(
        r#"UPDATE orders.orders o
           SET status = 'REJECTED', status_reason = $4, updated_at = $3,
               cancel_event_id = u.event_id, awaiting_release_since = $3
           FROM UNNEST($1::uuid[], $2::uuid[]) AS u(id, event_id)
           WHERE o.id = u.id AND o.status = 'PENDING'"#,
        ids,
        cancel_event_ids,
        at,
        reason,
    )
    .execute(conn)
    .await
    .map_err(|e| StoreError::database("rejecting overdue orders", e))?;
    Ok(done.rows_affected())
}

/// An `OrderCancelled` the inventory has not confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnconfirmedRelease {
    pub id: OrderId,
    pub cancel_event_id: uuid::Uuid,
    /// When the cancellation was written: the event's `occurred_at`.
    pub since: OffsetDateTime,
    pub traceparent: Option<String>,
}

/// Cancellations written before `before` and not confirmed by the inventory,
/// nor sent again since `before`, oldest first, at most `limit` (from their
/// partial index).
pub async fn unconfirmed_releases(
    conn: &mut PgConnection,
    before: OffsetDateTime,
    limit: i64,
) -> Result<Vec<UnconfirmedRelease>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT id, cancel_event_id AS "cancel_event_id!", awaiting_release_since AS "since!",
                  traceparent
           FROM orders.orders
           WHERE awaiting_release_since < $1 AND cancel_event_id IS NOT NULL
             AND (resent_at IS NULL OR resent_at < $1)
           ORDER BY awaiting_release_since
           LIMIT $2"#,
        before,
        limit,
    )
    .fetch_all(conn)
    .await
    .map_err(|e| StoreError::database("reading unconfirmed cancellations", e))?;
    Ok(rows
        .into_iter()
        .map(|r| UnconfirmedRelease {
            id: OrderId::from(r.id),
            cancel_event_id: r.cancel_event_id,
            since: r.since,
            traceparent: r.traceparent,
        })
        .collect())
}

/// An order as the saga sees it: its status, which participants reserved for
/// it, and its compensation (see [`lock_for_saga`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaOrder {
    pub id: uuid::Uuid,
    pub status: OrderStatus,
    pub status_reason: Option<String>,
    /// Participants that reserved for the order.
    pub reserved_by: Vec<String>,
    /// Participants that confirmed the release its compensation asked for.
    pub released_by: Vec<String>,
    /// The compensation (`OrderCancelled`) sent and not yet settled: its event
    /// id and time.
    pub awaiting_release: Option<(uuid::Uuid, OffsetDateTime)>,
    /// The trace of the request that created the order.
    pub traceparent: Option<String>,
}

/// Locks the orders `ids` (in id order) and reads them as the saga sees them;
/// an id with no order is left out.
pub async fn lock_for_saga(
    conn: &mut PgConnection,
    ids: &[uuid::Uuid],
) -> Result<Vec<SagaOrder>, StoreError> {
    const CONTEXT: &str = "locking orders for the saga";
    let rows = sqlx::query!(
        r#"SELECT id, status, status_reason, reserved_by, released_by, cancel_event_id,
                  awaiting_release_since, traceparent
           FROM orders.orders WHERE id = ANY($1) ORDER BY id FOR UPDATE"#,
        ids,
    )
    .fetch_all(conn)
    .await
    .map_err(|e| StoreError::database(CONTEXT, e))?;
    rows.into_iter()
        .map(|r| {
            Ok(SagaOrder {
                id: r.id,
                status: r
                    .status
                    .parse()
                    .map_err(|e| StoreError::corrupt(CONTEXT, e))?,
                status_reason: r.status_reason,
                reserved_by: r.reserved_by,
                released_by: r.released_by,
                awaiting_release: r.cancel_event_id.zip(r.awaiting_release_since),
                traceparent: r.traceparent,
            })
        })
        .collect()
}

/// Writes what the saga decided for `orders` (read with [`lock_for_saga`] in
/// this transaction): status and reason, participants, compensation.
/// `updated_at` moves only for an order whose status changed.
pub async fn write_saga(conn: &mut PgConnection, orders: &[SagaOrder]) -> Result<(), StoreError> {
    if orders.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = orders.iter().map(|o| o.id).collect();
    let statuses: Vec<&str> = orders.iter().map(|o| o.status.as_str()).collect();
    let reasons: Vec<Option<String>> = orders.iter().map(|o| o.status_reason.clone()).collect();
    // Participants' names are identifiers: joined with commas, split in SQL.
    let reserved: Vec<String> = orders.iter().map(|o| o.reserved_by.join(",")).collect();
    let released: Vec<String> = orders.iter().map(|o| o.released_by.join(",")).collect();
    let cancel_ids: Vec<Option<uuid::Uuid>> = orders
        .iter()
        .map(|o| o.awaiting_release.map(|a| a.0))
        .collect();
    let since: Vec<Option<OffsetDateTime>> = orders
        .iter()
        .map(|o| o.awaiting_release.map(|a| a.1))
        .collect();
    sqlx::query!(
        r#"UPDATE orders.orders o
           SET status = u.status, status_reason = u.reason,
               updated_at = CASE WHEN o.status = u.status THEN o.updated_at ELSE now() END,
               reserved_by = COALESCE(string_to_array(NULLIF(u.reserved, ''), ','), '{}'),
               released_by = COALESCE(string_to_array(NULLIF(u.released, ''), ','), '{}'),
               cancel_event_id = COALESCE(u.cancel_event_id, o.cancel_event_id),
               awaiting_release_since = u.since
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[],
                       $7::timestamptz[])
                AS u(id, status, reason, reserved, released, cancel_event_id, since)
           WHERE o.id = u.id"#,
        &ids,
        &statuses as &[&str],
        &reasons as &[Option<String>],
        &reserved,
        &released,
        &cancel_ids as &[Option<uuid::Uuid>],
        &since as &[Option<OffsetDateTime>],
    )
    .execute(conn)
    .await
    .map_err(|e| StoreError::database("writing the saga's decisions", e))?;
    Ok(())
}

/// The oldest `PENDING` order's creation time, and how many there are older
/// than `before` (both from the partial index).
pub async fn pending_overview(
    db: impl PgExecutor<'_>,
    before: OffsetDateTime,
) -> Result<(Option<OffsetDateTime>, i64), StoreError> {
    let r = sqlx::query!(
        r#"SELECT min(created_at) AS oldest, count(*) FILTER (WHERE created_at < $1) AS "older!"
           FROM orders.orders WHERE status = 'PENDING'"#,
        before,
    )
    .fetch_one(db)
    .await
    .map_err(|e| StoreError::database("measuring pending orders", e))?;
    Ok((r.oldest, r.older))
}

/// The orders still `PENDING`, oldest first, with their age: the emulator's
/// console shows them (a saga that does not settle is a bug to find). The
/// partial index `orders_pending_idx` serves it.
pub const STUCK_PENDING_SQL: &str = "SELECT id AS order_id, customer_id, total_cents, created_at, \
       floor(extract(epoch FROM now() - created_at))::bigint AS age_s \
       FROM orders.orders WHERE status = 'PENDING' AND created_at < now() - interval '5 seconds' \
       ORDER BY created_at";
