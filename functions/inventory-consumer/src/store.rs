//! The inventory's side of a batch, in one transaction: inbox, stock,
//! reservations, answers. Stock rows are locked in SKU order, so concurrent
//! batches never deadlock and never oversell; the CHECK constraints on
//! `inventory.stock` stand behind the arithmetic.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use shared::events::{InventoryRejectedV1, InventoryReservedV1, ReservedItemV1, ShortageV1};
use shared::inbox::{self, Inbox};
use shared::outbox::{self, Outbox};
use shared::source::RecordOutcome;
use shared::{Retry, StoreError};
use sqlx::{PgConnection, PgPool};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::{Command, Fault, Job, GROUP};

/// What a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Events already in the inbox: redeliveries, changed nothing.
    pub duplicates: usize,
    pub reserved: usize,
    pub rejected: usize,
    pub released: usize,
}

/// Applies `jobs` in one transaction. On a permanent database error with more
/// than one job, applies them one at a time instead, so one bad event does not
/// fail the others. One outcome per job, in order.
pub(crate) async fn apply_isolating(
    pool: &PgPool,
    jobs: &[Job],
    fault: Fault,
) -> Vec<RecordOutcome> {
    if jobs.is_empty() {
        return Vec::new();
    }
    match apply_with(pool, jobs, fault).await {
        Ok(applied) => {
            debug!(?applied, "batch applied");
            vec![RecordOutcome::Done; jobs.len()]
        }
        Err(e) if e.retry() == Retry::Retryable || jobs.len() == 1 => {
            warn!(error = %e, jobs = jobs.len(), "applying the batch failed");
            let reason = e.to_string();
            let outcome = match e.retry() {
                Retry::Retryable => RecordOutcome::Retry(reason),
                // A single event that the database refuses for good.
                Retry::Permanent => RecordOutcome::Reject(reason),
            };
            vec![outcome; jobs.len()]
        }
        Err(e) => {
            warn!(error = %e, "a permanent error in a batch; applying its events one by one");
            let mut outcomes = Vec::with_capacity(jobs.len());
            for job in jobs {
                outcomes.push(
                    match apply_with(pool, std::slice::from_ref(job), fault).await {
                        Ok(_) => RecordOutcome::Done,
                        Err(e) if e.retry() == Retry::Retryable => {
                            RecordOutcome::Retry(e.to_string())
                        }
                        Err(e) => RecordOutcome::Reject(e.to_string()),
                    },
                );
            }
            outcomes
        }
    }
}

/// Applies `jobs`, in order, in one transaction.
pub async fn apply(pool: &PgPool, jobs: &[Job]) -> Result<Applied, StoreError> {
    apply_with(pool, jobs, Fault::None).await
}

async fn apply_with(pool: &PgPool, jobs: &[Job], fault: Fault) -> Result<Applied, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| StoreError::database("starting a transaction", e))?;
    let applied = apply_on(&mut tx, jobs, fault).await;
    match applied {
        Ok(applied) => {
            tx.commit()
                .await
                .map_err(|e| StoreError::database("committing the batch", e))?;
            Ok(applied)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// A reservation line as the batch sees it.
#[derive(Debug, Clone)]
struct Held {
    sku: String,
    quantity: i32,
    released: bool,
}

async fn apply_on(
    tx: &mut PgConnection,
    jobs: &[Job],
    fault: Fault,
) -> Result<Applied, StoreError> {
    let mut applied = Applied::default();
    // 1. The inbox: only events seen for the first time take effect.
    let event_ids: Vec<Uuid> = jobs.iter().map(|j| j.event_id).collect();
    let fresh = if fault == Fault::ApplyRedeliveries {
        event_ids.iter().copied().collect()
    } else {
        inbox::record(tx, Inbox::Inventory, GROUP, &event_ids).await?
    };
    let mut seen_in_batch = HashSet::new();
    let jobs: Vec<&Job> = jobs
        .iter()
        .filter(|j| fresh.contains(&j.event_id) && seen_in_batch.insert(j.event_id))
        .collect();
    applied.duplicates = event_ids.len() - jobs.len();
    if jobs.is_empty() {
        return Ok(applied);
    }

    // 2. Lock the stock of every SKU involved, in SKU order; read what the
    //    orders already hold and which were cancelled.
    let skus: BTreeSet<String> = jobs
        .iter()
        .flat_map(|j| match &j.command {
            Command::Reserve { lines, .. } => lines.iter().map(|(s, _)| s.to_string()).collect(),
            Command::Release { .. } => Vec::new(),
        })
        .collect();
    let order_ids: Vec<Uuid> = jobs
        .iter()
        .map(|j| match &j.command {
            Command::Reserve { order_id, .. } | Command::Release { order_id } => order_id.as_uuid(),
        })
        .collect();
    let held_rows = sqlx::query!(
        r#"SELECT order_id, sku, quantity, status FROM inventory.reservations
           WHERE order_id = ANY($1) ORDER BY order_id, sku FOR UPDATE"#,
        &order_ids,
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::database("reading reservations", e))?;
    let mut held: HashMap<Uuid, Vec<Held>> = HashMap::new();
    for r in held_rows {
        held.entry(r.order_id).or_default().push(Held {
            sku: r.sku,
            quantity: r.quantity,
            released: r.status == "RELEASED",
        });
    }
    let mut all_skus: BTreeSet<String> = skus;
    all_skus.extend(held.values().flatten().map(|h| h.sku.clone()));
    let sku_list: Vec<String> = all_skus.into_iter().collect();
    let mut stock: BTreeMap<String, (i32, i32)> = sqlx::query!(
        r#"SELECT sku, available, reserved FROM inventory.stock
           WHERE sku = ANY($1) ORDER BY sku FOR UPDATE"#,
        &sku_list,
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::database("locking stock", e))?
    .into_iter()
    .map(|r| (r.sku, (r.available, r.reserved)))
    .collect();
    let mut cancelled: HashSet<Uuid> = sqlx::query_scalar!(
        "SELECT order_id FROM inventory.cancelled_orders WHERE order_id = ANY($1)",
        &order_ids,
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::database("reading cancelled orders", e))?
    .into_iter()
    .collect();

    // 3. Decide, in order, in memory.
    let mut new_reservations: Vec<(Uuid, String, i32)> = Vec::new();
    let mut released_orders: Vec<Uuid> = Vec::new();
    let mut newly_cancelled: Vec<Uuid> = Vec::new();
    let mut answers = Vec::new();
    for job in jobs {
        match &job.command {
            Command::Reserve { order_id, lines } => {
                let id = order_id.as_uuid();
                if held.contains_key(&id) && fault != Fault::ApplyRedeliveries {
                    // Reserved (or released) before under another event: nothing to do.
                    continue;
                }
                let traceparent = job.traceparent;
                if cancelled.contains(&id) {
                    applied.rejected += 1;
                    answers.push(
                        InventoryRejectedV1 {
                            order_id: id,
                            reason: "the order was cancelled before its stock was reserved".into(),
                            shortages: Vec::new(),
                        }
                        .envelope(traceparent),
                    );
                    continue;
                }
                let shortages: Vec<ShortageV1> = lines
                    .iter()
                    .filter_map(|(sku, q)| {
                        let available = stock.get(sku.as_str()).map_or(0, |s| s.0);
                        (available < i32::from(q.get())).then(|| ShortageV1 {
                            sku: sku.to_string(),
                            requested: q.get(),
                            available: i64::from(available),
                        })
                    })
                    .collect();
                if shortages.is_empty() {
                    let mut items = Vec::with_capacity(lines.len());
                    let mut rows = Vec::with_capacity(lines.len());
                    for (sku, quantity) in lines {
                        let q = i32::from(quantity.get());
                        if let Some(s) = stock.get_mut(sku.as_str()) {
                            s.0 -= q;
                            s.1 += q;
                        }
                        new_reservations.push((id, sku.to_string(), q));
                        rows.push(Held {
                            sku: sku.to_string(),
                            quantity: q,
                            released: false,
                        });
                        items.push(ReservedItemV1 {
                            sku: sku.to_string(),
                            quantity: quantity.get(),
                        });
                    }
                    held.insert(id, rows);
                    applied.reserved += 1;
                    answers.push(
                        InventoryReservedV1 {
                            order_id: id,
                            items,
                        }
                        .envelope(traceparent),
                    );
                } else {
                    applied.rejected += 1;
                    let reason = shortages
                        .iter()
                        .map(|s| {
                            if stock.contains_key(&s.sku) {
                                format!(
                                    "insufficient stock for {}: requested {}, available {}",
                                    s.sku, s.requested, s.available
                                )
                            } else {
                                format!("unknown SKU {}", s.sku)
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                    answers.push(
                        InventoryRejectedV1 {
                            order_id: id,
                            reason,
                            shortages,
                        }
                        .envelope(traceparent),
                    );
                }
            }
            Command::Release { order_id } => {
                let id = order_id.as_uuid();
                if cancelled.insert(id) {
                    newly_cancelled.push(id);
                }
                if let Some(rows) = held.get_mut(&id) {
                    let mut any = false;
                    for row in rows.iter_mut().filter(|r| !r.released) {
                        if let Some(s) = stock.get_mut(&row.sku) {
                            s.0 += row.quantity;
                            s.1 -= row.quantity;
                        }
                        row.released = true;
                        any = true;
                    }
                    if any {
                        applied.released += 1;
                        released_orders.push(id);
                    }
                }
            }
        }
    }

    // 4. Write it all.
    if !stock.is_empty() {
        let (skus, (available, reserved)): (Vec<String>, (Vec<i32>, Vec<i32>)) =
            stock.into_iter().unzip();
        sqlx::query!(
            r#"UPDATE inventory.stock s
               SET available = u.available, reserved = u.reserved, updated_at = now()
               FROM UNNEST($1::text[], $2::integer[], $3::integer[]) AS u(sku, available, reserved)
               WHERE s.sku = u.sku AND (s.available, s.reserved) IS DISTINCT FROM (u.available, u.reserved)"#,
            &skus,
            &available,
            &reserved,
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::database("updating stock", e))?;
    }
    if !new_reservations.is_empty() {
        let (orders, (skus, quantities)): (Vec<Uuid>, (Vec<String>, Vec<i32>)) = new_reservations
            .into_iter()
            .map(|(o, s, q)| (o, (s, q)))
            .unzip();
        sqlx::query!(
            r#"INSERT INTO inventory.reservations (order_id, sku, quantity, status)
               SELECT o, s, q, 'RESERVED' FROM UNNEST($1::uuid[], $2::text[], $3::integer[]) AS r(o, s, q)"#,
            &orders,
            &skus,
            &quantities,
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::database("recording reservations", e))?;
    }
    if !released_orders.is_empty() {
        sqlx::query!(
            r#"UPDATE inventory.reservations SET status = 'RELEASED', updated_at = now()
               WHERE order_id = ANY($1) AND status = 'RESERVED'"#,
            &released_orders,
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::database("releasing reservations", e))?;
    }
    if !newly_cancelled.is_empty() {
        sqlx::query!(
            r#"INSERT INTO inventory.cancelled_orders (order_id)
               SELECT UNNEST($1::uuid[]) ON CONFLICT DO NOTHING"#,
            &newly_cancelled,
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::database("recording cancellations", e))?;
    }
    let events = answers
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::corrupt("building an answer event", e))?;
    outbox::append_all(tx, Outbox::Inventory, &events).await?;
    Ok(applied)
}
