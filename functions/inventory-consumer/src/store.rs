//! The inventory's side of a batch, in one transaction: inbox, stock,
//! reservations, answers. Stock rows are locked in SKU order, so concurrent
//! batches never deadlock and never oversell; the CHECK constraints on
//! `inventory.stock` stand behind the arithmetic.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use contracts::events::{
    InventoryRejectedV1, InventoryReleasedV1, InventoryReservedV1, ReservedItemV1, ShortageV1,
    ORDER_CANCELLED, ORDER_CREATED,
};
use inventory_service as inventory;
use shared::envelope::{EventEnvelope, OutboxColumnArrays, OutboxColumns};
use shared::inbox;
use shared::outbox;
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
    /// Requests answered before, answered again with the recorded event.
    pub answered_again: usize,
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
        // The database is away: that says nothing about these events, so they
        // are neither retried against their attempts nor applied one by one;
        // the event source waits the outage out (and logs it once).
        Err(e) if e.is_outage() => {
            debug!(error = %e, jobs = jobs.len(), "the database is unavailable");
            vec![RecordOutcome::Outage(e.to_string()); jobs.len()]
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
            // Once the database is away, the rest wait for it untried.
            let mut away: Option<String> = None;
            for job in jobs {
                if let Some(reason) = &away {
                    outcomes.push(RecordOutcome::Outage(reason.clone()));
                    continue;
                }
                outcomes.push(
                    match apply_with(pool, std::slice::from_ref(job), fault).await {
                        Ok(_) => RecordOutcome::Done,
                        Err(e) if e.is_outage() => {
                            let reason = e.to_string();
                            away = Some(reason.clone());
                            RecordOutcome::Outage(reason)
                        }
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
    // 1. The inbox: only events seen for the first time take effect; the others
    //    (redeliveries, or the reconciler asking again) are answered again.
    let event_ids: Vec<Uuid> = jobs.iter().map(|j| j.event_id).collect();
    let fresh = if fault == Fault::ApplyRedeliveries {
        event_ids.iter().copied().collect()
    } else {
        inbox::record(tx, &inventory::INBOX, GROUP, &event_ids).await?
    };
    let mut seen_in_batch = HashSet::new();
    let (mut new_jobs, mut repeated): (Vec<&Job>, Vec<&Job>) = (Vec::new(), Vec::new());
    for job in jobs {
        if !seen_in_batch.insert(job.event_id) {
            continue;
        }
        if fresh.contains(&job.event_id) {
            new_jobs.push(job);
        } else {
            repeated.push(job);
        }
    }
    applied.duplicates = event_ids.len() - new_jobs.len();

    // 2. What was answered before, for every order of the batch.
    let order_ids: Vec<Uuid> = new_jobs
        .iter()
        .chain(&repeated)
        .map(|j| j.command.order_id().as_uuid())
        .collect();
    let answered = if fault == Fault::ApplyRedeliveries {
        HashMap::new()
    } else {
        answers_of(tx, &order_ids).await?
    };
    // A request answered before gets that answer again, whether it is a
    // redelivery or a new event asking the same (never decided again).
    let mut out = Outgoing::default();
    for job in &repeated {
        out.again(&answered, job);
    }
    let jobs: Vec<&Job> = new_jobs
        .into_iter()
        .filter(|job| !out.again(&answered, job))
        .collect();
    applied.answered_again = out.events.len();
    if !jobs.is_empty() {
        decide(tx, &jobs, fault, &mut applied, &mut out).await?;
    }
    write_answers(tx, &out.recorded).await?;
    outbox::append_all(tx, &inventory::OUTBOX, &out.events).await?;
    Ok(applied)
}

/// The events a batch sends, and the answers to record among them.
#[derive(Debug, Default)]
struct Outgoing {
    events: Vec<EventEnvelope>,
    /// New answers: (order, request, event).
    recorded: Vec<(Uuid, &'static str, EventEnvelope)>,
    sent: HashSet<Uuid>,
}

impl Outgoing {
    /// Queues the recorded answer to `job`'s request, if there is one; true if so.
    fn again(
        &mut self,
        answered: &HashMap<(Uuid, &'static str), EventEnvelope>,
        job: &Job,
    ) -> bool {
        let key = (job.command.order_id().as_uuid(), job.command.request());
        match answered.get(&key) {
            Some(event) => {
                if self.sent.insert(event.event_id.as_uuid()) {
                    self.events.push(event.clone());
                }
                true
            }
            None => false,
        }
    }

    /// Queues a new answer to `job`'s request and records it.
    fn answer(
        &mut self,
        job: &Job,
        event: Result<EventEnvelope, shared::value::InvalidValue>,
    ) -> Result<(), StoreError> {
        let event = event.map_err(|e| StoreError::corrupt("building an answer event", e))?;
        self.sent.insert(event.event_id.as_uuid());
        self.recorded.push((
            job.command.order_id().as_uuid(),
            job.command.request(),
            event.clone(),
        ));
        self.events.push(event);
        Ok(())
    }
}

/// The answers recorded for `order_ids`, by order and request.
async fn answers_of(
    tx: &mut PgConnection,
    order_ids: &[Uuid],
) -> Result<HashMap<(Uuid, &'static str), EventEnvelope>, StoreError> {
    if order_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query!(
        r#"SELECT order_id, request, event_id, event_type, schema_version, aggregate_type,
                  aggregate_id, occurred_at, traceparent, payload::text AS "payload!"
           FROM inventory.answers WHERE order_id = ANY($1)"#,
        order_ids,
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::database("reading earlier answers", e))?;
    let mut answered = HashMap::with_capacity(rows.len());
    for r in rows {
        let request = match r.request.as_str() {
            ORDER_CREATED => ORDER_CREATED,
            ORDER_CANCELLED => ORDER_CANCELLED,
            other => return Err(StoreError::corrupt("reading earlier answers", other)),
        };
        let event = EventEnvelope::try_from(OutboxColumns {
            event_id: r.event_id,
            event_type: r.event_type,
            schema_version: r.schema_version,
            aggregate_type: r.aggregate_type,
            aggregate_id: r.aggregate_id,
            occurred_at: r.occurred_at,
            traceparent: r.traceparent,
            payload: r.payload,
        })
        .map_err(|e| StoreError::corrupt("reading earlier answers", e))?;
        answered.insert((r.order_id, request), event);
    }
    Ok(answered)
}

/// Records new answers (`request` is the event type answered).
async fn write_answers(
    tx: &mut PgConnection,
    recorded: &[(Uuid, &'static str, EventEnvelope)],
) -> Result<(), StoreError> {
    if recorded.is_empty() {
        return Ok(());
    }
    let orders: Vec<Uuid> = recorded.iter().map(|(order, ..)| *order).collect();
    let requests: Vec<String> = recorded
        .iter()
        .map(|(_, request, _)| (*request).to_owned())
        .collect();
    let a: OutboxColumnArrays = recorded.iter().map(|(.., event)| event).collect();
    sqlx::query!(
        r#"INSERT INTO inventory.answers
           (order_id, request, event_id, event_type, schema_version, aggregate_type, aggregate_id,
            occurred_at, traceparent, payload)
           SELECT a.order_id, a.request, a.event_id, a.event_type, a.schema_version, a.aggregate_type,
                  a.aggregate_id, a.occurred_at, NULLIF(a.traceparent, ''), a.payload::json
           FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::integer[], $6::text[],
                       $7::text[], $8::timestamptz[], $9::text[], $10::text[])
                AS a(order_id, request, event_id, event_type, schema_version, aggregate_type,
                     aggregate_id, occurred_at, traceparent, payload)
           ON CONFLICT (order_id, request) DO NOTHING"#,
        &orders,
        &requests,
        &a.event_ids,
        &a.event_types,
        &a.schema_versions,
        &a.aggregate_types,
        &a.aggregate_ids,
        &a.occurred_at,
        &a.traceparents,
        &a.payloads,
    )
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::database("recording answers", e))?;
    Ok(())
}

/// Why an order cannot be reserved: the reason its `InventoryRejected` gives,
/// and the lines short of stock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    reason: String,
    shortages: Vec<ShortageV1>,
}

/// The decision on one order, pure: `None` when every line can be reserved from
/// `stock` (SKU: available, reserved) at the catalog's price in `prices`;
/// otherwise the refusal, naming every wrong price (the SKU, the catalog's price
/// and the one sent, or that the SKU has no price), every unknown SKU and every
/// shortage. Prices are checked only here, when an order is first decided: a
/// request answered before is answered from `inventory.answers`, so a price
/// changed since never changes an order.
fn refusal(
    lines: &[crate::Line],
    stock: &BTreeMap<String, (i32, i32)>,
    prices: &BTreeMap<String, Option<i64>>,
) -> Option<Refusal> {
    let shortages: Vec<ShortageV1> = lines
        .iter()
        .filter_map(|line| {
            let (sku, q) = (&line.sku, line.quantity);
            let available = stock.get(sku.as_str()).map_or(0, |s| s.0);
            (available < i32::from(q.get())).then(|| ShortageV1 {
                sku: sku.to_string(),
                requested: q.get(),
                available: i64::from(available),
            })
        })
        .collect();
    let mispriced = price_mismatches(lines, prices);
    if shortages.is_empty() && mispriced.is_empty() {
        return None;
    }
    let reason = mispriced
        .into_iter()
        .chain(shortages.iter().map(|s| {
            if stock.contains_key(&s.sku) {
                format!(
                    "insufficient stock for {}: requested {}, available {}",
                    s.sku, s.requested, s.available
                )
            } else {
                format!("unknown SKU {}", s.sku)
            }
        }))
        .collect::<Vec<_>>()
        .join("; ");
    Some(Refusal { reason, shortages })
}

/// The lines whose price is not the catalog's, as reasons: the SKU, the price
/// the order says and the catalog's. A SKU without a price takes no order; an
/// unknown SKU is a shortage, not a price question.
fn price_mismatches(lines: &[crate::Line], catalog: &BTreeMap<String, Option<i64>>) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| {
            let sku = line.sku.as_str();
            match catalog.get(sku)? {
                Some(price) if *price == line.unit_price_cents => None,
                Some(price) => Some(format!(
                    "price of {sku} is {price} cents in the catalog, not {} as ordered",
                    line.unit_price_cents
                )),
                None => Some(format!(
                    "{sku} has no price in the catalog (ordered at {} cents)",
                    line.unit_price_cents
                )),
            }
        })
        .collect()
}

/// Decides the new requests `jobs`, in order, and writes their effects; their
/// answers go to `out`.
async fn decide(
    tx: &mut PgConnection,
    jobs: &[&Job],
    fault: Fault,
    applied: &mut Applied,
    out: &mut Outgoing,
) -> Result<(), StoreError> {
    // Lock the stock of every SKU involved, in SKU order; read what the orders
    // already hold and which were cancelled.
    let skus: BTreeSet<String> = jobs
        .iter()
        .flat_map(|j| match &j.command {
            Command::Reserve { lines, .. } => lines.iter().map(|l| l.sku.to_string()).collect(),
            Command::Release { .. } => Vec::new(),
        })
        .collect();
    let order_ids: Vec<Uuid> = jobs
        .iter()
        .map(|j| j.command.order_id().as_uuid())
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
    let mut prices: BTreeMap<String, Option<i64>> = BTreeMap::new();
    let mut stock: BTreeMap<String, (i32, i32)> = sqlx::query!(
        r#"SELECT sku, available, reserved, price_cents FROM inventory.stock
           WHERE sku = ANY($1) ORDER BY sku FOR UPDATE"#,
        &sku_list,
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::database("locking stock", e))?
    .into_iter()
    .map(|r| {
        prices.insert(r.sku.clone(), r.price_cents);
        (r.sku, (r.available, r.reserved))
    })
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

    // Decide, in order, in memory.
    let mut new_reservations: Vec<(Uuid, String, i32)> = Vec::new();
    let mut released_orders: Vec<Uuid> = Vec::new();
    let mut newly_cancelled: Vec<Uuid> = Vec::new();
    for job in jobs {
        let traceparent = job.traceparent;
        match &job.command {
            Command::Reserve { order_id, lines } => {
                let id = order_id.as_uuid();
                if held.contains_key(&id) && fault != Fault::ApplyRedeliveries {
                    // Reserved (or released) before any answer was recorded
                    // (before answers were kept): nothing to do.
                    continue;
                }
                if cancelled.contains(&id) {
                    applied.rejected += 1;
                    out.answer(
                        job,
                        InventoryRejectedV1 {
                            order_id: id,
                            reason: "the order was cancelled before its stock was reserved".into(),
                            shortages: Vec::new(),
                        }
                        .envelope(traceparent),
                    )?;
                    continue;
                }
                if let Some(Refusal { reason, shortages }) = refusal(lines, &stock, &prices) {
                    applied.rejected += 1;
                    out.answer(
                        job,
                        InventoryRejectedV1 {
                            order_id: id,
                            reason,
                            shortages,
                        }
                        .envelope(traceparent),
                    )?;
                } else {
                    let mut items = Vec::with_capacity(lines.len());
                    let mut rows = Vec::with_capacity(lines.len());
                    for crate::Line { sku, quantity, .. } in lines {
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
                    out.answer(
                        job,
                        InventoryReservedV1 {
                            order_id: id,
                            items,
                        }
                        .envelope(traceparent),
                    )?;
                }
            }
            Command::Release { order_id } => {
                let id = order_id.as_uuid();
                if cancelled.insert(id) {
                    newly_cancelled.push(id);
                }
                let mut items = Vec::new();
                if let Some(rows) = held.get_mut(&id) {
                    for row in rows.iter_mut().filter(|r| !r.released) {
                        if let Some(s) = stock.get_mut(&row.sku) {
                            s.0 += row.quantity;
                            s.1 -= row.quantity;
                        }
                        row.released = true;
                        items.push(ReservedItemV1 {
                            sku: row.sku.clone(),
                            quantity: u16::try_from(row.quantity).unwrap_or(u16::MAX),
                        });
                    }
                    if !items.is_empty() {
                        applied.released += 1;
                        released_orders.push(id);
                    }
                }
                // Confirmed whether or not anything was held, so the order
                // service stops asking.
                out.answer(
                    job,
                    InventoryReleasedV1 {
                        order_id: id,
                        items,
                    }
                    .envelope(traceparent),
                )?;
            }
        }
    }

    // Write the effects.
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::{Quantity, Sku};

    fn line(sku: &str, price: i64) -> crate::Line {
        crate::Line {
            sku: Sku::parse(sku).expect("a SKU"),
            quantity: Quantity::try_from(1_i64).expect("a quantity"),
            unit_price_cents: price,
        }
    }

    #[test]
    fn only_the_catalogs_price_passes() {
        let catalog: BTreeMap<String, Option<i64>> = [
            ("LAMP-1".to_owned(), Some(2500)),
            ("DESK-1".to_owned(), Some(0)),
            ("OLD-1".to_owned(), None),
        ]
        .into_iter()
        .collect();
        assert!(price_mismatches(&[line("LAMP-1", 2500), line("DESK-1", 0)], &catalog).is_empty());
        assert_eq!(
            price_mismatches(&[line("LAMP-1", 2499)], &catalog),
            ["price of LAMP-1 is 2500 cents in the catalog, not 2499 as ordered"]
        );
        assert_eq!(
            price_mismatches(&[line("OLD-1", 10)], &catalog),
            ["OLD-1 has no price in the catalog (ordered at 10 cents)"]
        );
        assert!(
            price_mismatches(&[line("NOPE-1", 10)], &catalog).is_empty(),
            "an unknown SKU is a shortage"
        );
    }

    type Stock = BTreeMap<String, (i32, i32)>;
    type Prices = BTreeMap<String, Option<i64>>;

    /// LAMP-1: 5 available at 2500; OLD-1: 5 available, no price (stocked
    /// before prices existed).
    fn shop() -> (Stock, Prices) {
        let stock = [("LAMP-1".to_owned(), (5, 0)), ("OLD-1".to_owned(), (5, 0))];
        let prices = [
            ("LAMP-1".to_owned(), Some(2500)),
            ("OLD-1".to_owned(), None),
        ];
        (stock.into_iter().collect(), prices.into_iter().collect())
    }

    fn lines(wanted: &[(&str, i64, i64)]) -> Vec<crate::Line> {
        wanted
            .iter()
            .map(|(sku, quantity, price)| crate::Line {
                sku: Sku::parse(sku).expect("a SKU"),
                quantity: Quantity::try_from(*quantity).expect("a quantity"),
                unit_price_cents: *price,
            })
            .collect()
    }

    #[test]
    fn an_order_in_stock_at_the_catalogs_price_is_reserved() {
        let (stock, prices) = shop();
        assert_eq!(
            refusal(&lines(&[("LAMP-1", 5, 2500)]), &stock, &prices),
            None
        );
    }

    #[test]
    fn a_price_that_is_not_the_catalogs_is_refused_naming_both() {
        let (stock, prices) = shop();
        for sent in [0, 2499, 2501] {
            let refused = refusal(&lines(&[("LAMP-1", 1, sent)]), &stock, &prices);
            assert_eq!(
                refused,
                Some(Refusal {
                    reason: format!(
                        "price of LAMP-1 is 2500 cents in the catalog, not {sent} as ordered"
                    ),
                    shortages: Vec::new(),
                })
            );
        }
    }

    #[test]
    fn a_sku_without_a_price_takes_no_order() {
        let (stock, prices) = shop();
        for sent in [0, 100] {
            let refused = refusal(&lines(&[("OLD-1", 1, sent)]), &stock, &prices).expect("refused");
            assert_eq!(
                refused.reason,
                format!("OLD-1 has no price in the catalog (ordered at {sent} cents)")
            );
            assert!(refused.shortages.is_empty());
        }
    }

    #[test]
    fn an_unknown_sku_is_refused_as_before_whatever_its_price() {
        let (stock, prices) = shop();
        let refused = refusal(
            &lines(&[("LAMP-1", 1, 2500), ("NOPE-1", 2, 10)]),
            &stock,
            &prices,
        );
        assert_eq!(
            refused,
            Some(Refusal {
                reason: "unknown SKU NOPE-1".to_owned(),
                shortages: vec![ShortageV1 {
                    sku: "NOPE-1".to_owned(),
                    requested: 2,
                    available: 0,
                }],
            })
        );
    }

    #[test]
    fn every_reason_is_given_prices_first() {
        let (stock, prices) = shop();
        let refused = refusal(
            &lines(&[("LAMP-1", 6, 1500), ("OLD-1", 1, 1), ("NOPE-1", 1, 1)]),
            &stock,
            &prices,
        )
        .expect("refused");
        assert_eq!(
            refused.reason,
            "price of LAMP-1 is 2500 cents in the catalog, not 1500 as ordered; \
             OLD-1 has no price in the catalog (ordered at 1 cents); \
             insufficient stock for LAMP-1: requested 6, available 5; unknown SKU NOPE-1"
        );
        assert_eq!(refused.shortages.len(), 2);
    }
}
