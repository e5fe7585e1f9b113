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
    })
}

/// The order with `id` and its lines, or `None`.
pub async fn find(db: impl PgExecutor<'_>, id: OrderId) -> Result<Option<Order>, StoreError> {
    const CONTEXT: &str = "reading an order";
    let rows = sqlx::query!(
        r#"SELECT o.id, o.customer_id, o.status, o.total_cents, o.created_at, o.updated_at,
                  l.sku, l.quantity, l.unit_price_cents
           FROM orders.orders o
           JOIN orders.order_lines l ON l.order_id = o.id
           WHERE o.id = $1
           ORDER BY l.line_no"#,
        id.as_uuid(),
    )
    .fetch_all(db)
    .await
    .map_err(|e| StoreError::database(CONTEXT, e))?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let corrupt = |e| StoreError::corrupt(CONTEXT, e);
    let mut order = Order {
        id: OrderId::from(first.id),
        customer_id: CustomerId::parse(&first.customer_id).map_err(corrupt)?,
        status: first.status.parse().map_err(corrupt)?,
        lines: Vec::with_capacity(rows.len()),
        total: Money::from_cents(first.total_cents).map_err(corrupt)?,
        created_at: first.created_at,
        updated_at: first.updated_at,
    };
    for row in &rows {
        order.lines.push(OrderLine {
            sku: Sku::parse(&row.sku).map_err(corrupt)?,
            quantity: Quantity::try_from(i64::from(row.quantity)).map_err(corrupt)?,
            unit_price: Money::from_cents(row.unit_price_cents).map_err(corrupt)?,
        });
    }
    Ok(Some(order))
}
