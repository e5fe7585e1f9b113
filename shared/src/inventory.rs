//! The inventory service's stock levels, `inventory.stock`, as the inventory API
//! reads and sets them. Reserving and releasing stock for orders is the inventory
//! consumer's business; this module never touches `reserved`.

use sqlx::PgExecutor;
use time::OffsetDateTime;

use crate::domain::Sku;
use crate::error::StoreError;

/// One SKU's stock: units that can still be reserved, and units reserved for orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockLevel {
    pub sku: Sku,
    pub available: i32,
    pub reserved: i32,
    pub updated_at: OffsetDateTime,
}

/// Sets the available units of `sku` (a new SKU starts with nothing reserved) and
/// returns its stock level. `available` must not be negative: the table refuses it
/// (a permanent error).
pub async fn set_available(
    db: impl PgExecutor<'_>,
    sku: &Sku,
    available: i32,
) -> Result<StockLevel, StoreError> {
    let row = sqlx::query!(
        r#"INSERT INTO inventory.stock AS s (sku, available, reserved, updated_at)
           VALUES ($1, $2, 0, now())
           ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available, updated_at = now()
           RETURNING s.available, s.reserved, s.updated_at"#,
        sku.as_str(),
        available,
    )
    .fetch_one(db)
    .await
    .map_err(|e| StoreError::database("setting the available stock", e))?;
    Ok(StockLevel {
        sku: sku.clone(),
        available: row.available,
        reserved: row.reserved,
        updated_at: row.updated_at,
    })
}

/// The stock level of `sku`, or `None` when the inventory does not know it.
pub async fn find(db: impl PgExecutor<'_>, sku: &Sku) -> Result<Option<StockLevel>, StoreError> {
    let row = sqlx::query!(
        "SELECT available, reserved, updated_at FROM inventory.stock WHERE sku = $1",
        sku.as_str(),
    )
    .fetch_optional(db)
    .await
    .map_err(|e| StoreError::database("reading the stock of a SKU", e))?;
    Ok(row.map(|row| StockLevel {
        sku: sku.clone(),
        available: row.available,
        reserved: row.reserved,
        updated_at: row.updated_at,
    }))
}
