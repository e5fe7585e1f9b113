//! The inventory service's stock levels and catalog prices, `inventory.stock`, as
//! the inventory API reads and sets them. Reserving and releasing stock for orders
//! is the inventory consumer's business; this module never touches `reserved`.

use sqlx::PgExecutor;
use time::OffsetDateTime;

use contracts::Sku;
use shared::StoreError;

/// The inventory service's outbox, `inventory.outbox`.
pub const OUTBOX: shared::outbox::Outbox = shared::outbox::Outbox::in_schema("inventory");

/// The inventory service's inbox, `inventory.processed_events`.
pub const INBOX: shared::inbox::Inbox = shared::inbox::Inbox::in_schema("inventory");

/// The inventory service's recorded answers, `inventory.answers`.
pub const ANSWERS: shared::answers::Answers = shared::answers::Answers::in_schema("inventory");

/// One SKU's stock: units that can still be reserved, units reserved for orders,
/// and the catalog's unit price (`None` for a SKU stocked before prices existed,
/// which takes no order until it has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockLevel {
    pub sku: Sku,
    pub available: i32,
    pub reserved: i32,
    pub price_cents: Option<i64>,
    pub updated_at: OffsetDateTime,
}

/// Sets the available units of `sku`, and its price when given (a new SKU starts
/// with nothing reserved), and returns its stock level; `None` when the SKU is new
/// and no price was given (nothing is written). Values out of the table's bounds
/// are refused by it (a permanent error).
pub async fn set_stock(
    db: impl PgExecutor<'_>,
    sku: &Sku,
    available: i32,
    price_cents: Option<i64>,
) -> Result<Option<StockLevel>, StoreError> {
    const CONTEXT: &str = "setting the stock of a SKU";
    // One statement: with a price, insert or update; without one, update only.
    let row = sqlx::query!(
        r#"WITH updated AS (
               UPDATE inventory.stock
               SET available = $2, price_cents = coalesce($3, price_cents), updated_at = now()
               WHERE sku = $1
               RETURNING available, reserved, price_cents, updated_at
           ), inserted AS (
               INSERT INTO inventory.stock (sku, available, reserved, price_cents, updated_at)
               SELECT $1, $2, 0, $3, now()
               WHERE $3::bigint IS NOT NULL AND NOT EXISTS (SELECT 1 FROM updated)
               ON CONFLICT (sku) DO UPDATE
               SET available = EXCLUDED.available, price_cents = EXCLUDED.price_cents,
                   updated_at = now()
               RETURNING available, reserved, price_cents, updated_at
           )
           SELECT available AS "available!", reserved AS "reserved!",
                  price_cents, updated_at AS "updated_at!"
           FROM updated UNION ALL SELECT * FROM inserted"#,
        sku.as_str(),
        available,
        price_cents,
    )
    .fetch_optional(db)
    .await
    .map_err(|e| StoreError::database(CONTEXT, e))?;
    Ok(row.map(|row| StockLevel {
        sku: sku.clone(),
        available: row.available,
        reserved: row.reserved,
        price_cents: row.price_cents,
        updated_at: row.updated_at,
    }))
}

/// The stock level of `sku`, or `None` when the inventory does not know it.
pub async fn find(db: impl PgExecutor<'_>, sku: &Sku) -> Result<Option<StockLevel>, StoreError> {
    let row = sqlx::query!(
        "SELECT available, reserved, price_cents, updated_at FROM inventory.stock WHERE sku = $1",
        sku.as_str(),
    )
    .fetch_optional(db)
    .await
    .map_err(|e| StoreError::database("reading the stock of a SKU", e))?;
    Ok(row.map(|row| StockLevel {
        sku: sku.clone(),
        available: row.available,
        reserved: row.reserved,
        price_cents: row.price_cents,
        updated_at: row.updated_at,
    }))
}
