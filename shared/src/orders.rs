//! The order service's tables, `orders.orders` and `orders.order_lines`: the only
//! code that reads or writes them.

use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use crate::domain::{CustomerId, Money, NewOrder, OrderId, OrderLine, OrderStatus, Quantity, Sku};
use crate::error::StoreError;

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
/// which should be the transaction that also appends its `OrderCreated` event.
pub async fn insert(conn: &mut PgConnection, order: &NewOrder) -> Result<Order, StoreError> {
    let lines = order.lines();
    // Line numbers are 1..=MAX_ORDER_LINES (100), so they fit in i16.
    let line_nos: Vec<i16> = (1..=lines.len()).map(|n| n as i16).collect();
    let skus: Vec<String> = lines.iter().map(|l| l.sku.to_string()).collect();
    let quantities: Vec<i32> = lines.iter().map(|l| i32::from(l.quantity.get())).collect();
    let prices: Vec<i64> = lines.iter().map(|l| l.unit_price.cents()).collect();
    sqlx::query!(
        r#"WITH new_order AS (
               INSERT INTO orders.orders (id, customer_id, status, total_cents, created_at, updated_at)
               VALUES ($1, $2, 'PENDING', $3, $4, $4)
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
/// `CANCELLED`, `updated_at` now), on `conn`, which should be the transaction that
/// also appends its `OrderCancelled` event. Any other status changes nothing.
pub async fn cancel(conn: &mut PgConnection, id: OrderId) -> Result<Cancellation, StoreError> {
    const CONTEXT: &str = "cancelling an order";
    // The status test is in the UPDATE itself: a concurrent change is waited for and
    // the test re-checked against the row as it then is, so no cancellable status
    // is ever overwritten by a stale read.
    let rows = sqlx::query_as!(
        OrderLineRow,
        r#"WITH cancelled AS (
               UPDATE orders.orders
               SET status = 'CANCELLED', updated_at = now()
               WHERE id = $1 AND status IN ('PENDING', 'CONFIRMED')
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
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| StoreError::database(CONTEXT, e))?;
    if let Some(order) = from_rows(CONTEXT, &rows)? {
        return Ok(Cancellation::Cancelled(order));
    }
    // Nothing was updated: say why.
    let status = sqlx::query_scalar!(
        "SELECT status FROM orders.orders WHERE id = $1",
        id.as_uuid(),
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
