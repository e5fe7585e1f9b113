//! The inventory's side of a batch, in one transaction: inbox, stock,
//! reservations, answers. Stock rows are locked in SKU order, so concurrent
//! batches never deadlock and never oversell; the CHECK constraints on
//! `inventory.stock` stand behind the arithmetic.
//!
//! A batch goes in three steps: [`load`] reads (and locks) everything the
//! decision needs, [`decide`] decides in memory without any I/O, and [`write`]
//! writes what it decided. What the store remembers of earlier batches (the
//! inbox, the recorded answers, earlier reservations) comes through a
//! [`Memory`]: production uses [`Recorded`]; a test may put one in its place
//! that forgets, so the decision itself has no test branch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;

use contracts::events::{
    InventoryRejectedV1, InventoryReleasedV1, InventoryReservedV1, ReservedItemV1, ShortageV1,
};
use inventory_service as inventory;
use shared::answers::{self, triage, Outgoing, Triage};
use shared::inbox;
use shared::outbox;
use shared::source::RecordOutcome;
use shared::StoreError;
use sqlx::{PgConnection, PgPool};
use tracing::debug;
use uuid::Uuid;

use crate::{Command, Job, GROUP};

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

/// Answers recorded before, by order and request (the event type answered).
pub(crate) type Answers = answers::Recorded;

/// What the store remembers of earlier batches: which events it has seen, the
/// answers it gave, which orders it reserved. The seam where a test makes the
/// store forget on purpose (`crate::Faulty`); production uses [`Recorded`].
pub(crate) trait Memory: Sync {
    /// Records `event_ids` as seen; returns those seen for the first time.
    fn record_events(
        &self,
        tx: &mut PgConnection,
        event_ids: &[Uuid],
    ) -> impl Future<Output = Result<HashSet<Uuid>, StoreError>> + Send;

    /// The answers recorded for `order_ids`.
    fn answers(
        &self,
        tx: &mut PgConnection,
        order_ids: &[Uuid],
    ) -> impl Future<Output = Result<Answers, StoreError>> + Send;

    /// Of the orders that hold reservation rows (`holding`), those reserved
    /// before, which are never reserved again.
    fn reserved_before(&self, holding: HashSet<Uuid>) -> HashSet<Uuid>;
}

/// The store's real memory: the inbox, `inventory.answers` and
/// `inventory.reservations`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Recorded;

impl Memory for Recorded {
    async fn record_events(
        &self,
        tx: &mut PgConnection,
        event_ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, StoreError> {
        inbox::record(tx, &inventory::INBOX, GROUP, event_ids).await
    }

    async fn answers(
        &self,
        tx: &mut PgConnection,
        order_ids: &[Uuid],
    ) -> Result<Answers, StoreError> {
        answers::load(tx, &inventory::ANSWERS, order_ids).await
    }

    fn reserved_before(&self, holding: HashSet<Uuid>) -> HashSet<Uuid> {
        holding
    }
}

/// Applies `jobs` in one transaction, or one at a time when the batch hits a
/// permanent error ([`shared::source::apply_isolating`]). One outcome per job.
pub(crate) async fn apply_isolating(
    pool: &PgPool,
    jobs: &[Job],
    memory: &impl Memory,
) -> Vec<RecordOutcome> {
    shared::source::apply_isolating(jobs, |range| async move {
        let applied = apply_with(pool, &jobs[range], memory).await?;
        debug!(?applied, "batch applied");
        Ok(())
    })
    .await
}

/// Applies `jobs`, in order, in one transaction.
pub async fn apply(pool: &PgPool, jobs: &[Job]) -> Result<Applied, StoreError> {
    apply_with(pool, jobs, &Recorded).await
}

async fn apply_with(
    pool: &PgPool,
    jobs: &[Job],
    memory: &impl Memory,
) -> Result<Applied, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| StoreError::database("starting a transaction", e))?;
    let applied = apply_on(&mut tx, jobs, memory).await;
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
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    sku: String,
    quantity: i32,
    released: bool,
}

/// Load, decide, write.
async fn apply_on(
    tx: &mut PgConnection,
    jobs: &[Job],
    memory: &impl Memory,
) -> Result<Applied, StoreError> {
    let loaded = load(tx, jobs, memory).await?;
    let decision = decide(jobs, loaded)?;
    write(tx, decision).await
}

/// Everything the decision on a batch reads, read: [`decide`] needs nothing else.
#[derive(Debug, Default)]
struct Loaded {
    /// The events of the batch seen for the first time (now in the inbox).
    fresh: HashSet<Uuid>,
    /// The answers recorded before for the orders of the batch.
    answered: Answers,
    /// The reservation rows of the orders to decide (locked).
    held: HashMap<Uuid, Vec<Held>>,
    /// Orders among `held` reserved before: never reserved again.
    reserved_before: HashSet<Uuid>,
    /// (available, reserved) of every SKU involved (locked), by SKU.
    stock: BTreeMap<String, (i32, i32)>,
    /// The catalog's price of every SKU in `stock` (`None`: it has none).
    prices: BTreeMap<String, Option<i64>>,
    /// Orders to decide that were cancelled before.
    cancelled: HashSet<Uuid>,
}

/// The first step: records the batch's events in the inbox, reads the answers
/// given before, and for the requests still to decide locks the reservation
/// rows of their orders and the stock of their SKUs (in SKU order) and reads
/// which orders were cancelled.
/// The advisory-lock namespace of the orders this consumer decides on.
const ORDER_LOCKS: i32 = 0x1de0_0010;

async fn load(
    tx: &mut PgConnection,
    jobs: &[Job],
    memory: &impl Memory,
) -> Result<Loaded, StoreError> {
    let order_ids: Vec<Uuid> = jobs
        .iter()
        .map(|j| j.command.order_id().as_uuid())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    shared::inbox::lock_aggregates(tx, ORDER_LOCKS, &order_ids).await?;
    // The inbox: only events seen for the first time take effect; the others
    // (redeliveries, or the reconciler asking again) are answered again.
    let event_ids: Vec<Uuid> = jobs.iter().map(|j| j.event_id).collect();
    let fresh = memory.record_events(tx, &event_ids).await?;
    // What was answered before, for every order of the batch.
    let answered = memory.answers(tx, &order_ids).await?;
    let to_decide = triage(jobs, &fresh, &answered).to_decide;
    if to_decide.is_empty() {
        return Ok(Loaded {
            fresh,
            answered,
            ..Loaded::default()
        });
    }

    // Lock the stock of every SKU involved, in SKU order; read what the orders
    // already hold and which were cancelled.
    let skus: BTreeSet<String> = to_decide
        .iter()
        .flat_map(|j| match &j.command {
            Command::Reserve { lines, .. } => lines.iter().map(|l| l.sku.to_string()).collect(),
            Command::Release { .. } => Vec::new(),
        })
        .collect();
    let order_ids: Vec<Uuid> = to_decide
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
    let reserved_before = memory.reserved_before(held.keys().copied().collect());
    let mut all_skus: BTreeSet<String> = skus;
    all_skus.extend(held.values().flatten().map(|h| h.sku.clone()));
    let sku_list: Vec<String> = all_skus.into_iter().collect();
    let mut prices: BTreeMap<String, Option<i64>> = BTreeMap::new();
    let stock: BTreeMap<String, (i32, i32)> = sqlx::query!(
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
    let cancelled: HashSet<Uuid> = sqlx::query_scalar!(
        "SELECT order_id FROM inventory.cancelled_orders WHERE order_id = ANY($1)",
        &order_ids,
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::database("reading cancelled orders", e))?
    .into_iter()
    .collect();
    Ok(Loaded {
        fresh,
        answered,
        held,
        reserved_before,
        stock,
        prices,
        cancelled,
    })
}

/// What a batch writes and sends: the decision on it.
#[derive(Debug, Default)]
struct Decision {
    applied: Applied,
    /// (available, reserved) of every SKU locked, as the batch leaves them
    /// (rows that did not change are not written).
    stock: BTreeMap<String, (i32, i32)>,
    /// New reservation rows: (order, SKU, quantity).
    new_reservations: Vec<(Uuid, String, i32)>,
    /// Orders whose reservations are released.
    released_orders: Vec<Uuid>,
    /// Orders cancelled for the first time.
    newly_cancelled: Vec<Uuid>,
    /// The events to send, in order, and the new answers among them to record.
    out: Outgoing,
}

/// The second step, pure: decides the batch `jobs` from what [`load`] read.
/// Requests answered before get their recorded answers again; the others are
/// decided in order, each seeing the stock as the earlier ones left it:
/// an `OrderCreated` reserves every line or is rejected (cancelled before,
/// unknown SKU, short stock, wrong price), or is skipped when its order was
/// reserved before; an `OrderCancelled` releases what its order holds and is
/// confirmed whether or not it held anything.
fn decide(jobs: &[Job], loaded: Loaded) -> Result<Decision, StoreError> {
    let Loaded {
        fresh,
        answered,
        mut held,
        reserved_before: mut reserved,
        mut stock,
        prices,
        mut cancelled,
    } = loaded;
    let Triage {
        duplicates,
        mut out,
        to_decide,
    } = triage(jobs, &fresh, &answered);
    let mut applied = Applied {
        duplicates,
        answered_again: out.events.len(),
        ..Applied::default()
    };
    let mut new_reservations: Vec<(Uuid, String, i32)> = Vec::new();
    let mut released_orders: Vec<Uuid> = Vec::new();
    let mut newly_cancelled: Vec<Uuid> = Vec::new();
    for job in to_decide {
        let traceparent = job.traceparent;
        match &job.command {
            Command::Reserve { order_id, lines } => {
                let id = order_id.as_uuid();
                if reserved.contains(&id) {
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
                    reserved.insert(id);
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
    Ok(Decision {
        applied,
        stock,
        new_reservations,
        released_orders,
        newly_cancelled,
        out,
    })
}

/// The third step: writes what [`decide`] decided (stock, reservations,
/// releases, cancellations, answers, then the outbox, in that order).
async fn write(tx: &mut PgConnection, decision: Decision) -> Result<Applied, StoreError> {
    let Decision {
        applied,
        stock,
        new_reservations,
        released_orders,
        newly_cancelled,
        out,
    } = decision;
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
    answers::record(tx, &inventory::ANSWERS, &out.recorded).await?;
    outbox::append_all(tx, &inventory::OUTBOX, &out.events).await?;
    Ok(applied)
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

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::events::{ORDER_CANCELLED, ORDER_CREATED};
    use contracts::{Quantity, Sku};
    use shared::envelope::EventEnvelope;

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

    // `decide`, without a database: what `load` would have read, built by hand.

    use contracts::events::{INVENTORY_REJECTED, INVENTORY_RELEASED, INVENTORY_RESERVED};
    use contracts::OrderId;

    fn order(n: u128) -> OrderId {
        OrderId::from(Uuid::from_u128(n))
    }

    fn reserve(event: u128, order_id: OrderId, wanted: &[(&str, i64, i64)]) -> Job {
        Job {
            event_id: Uuid::from_u128(event),
            traceparent: None,
            command: Command::Reserve {
                order_id,
                lines: lines(wanted),
            },
        }
    }

    fn release(event: u128, order_id: OrderId) -> Job {
        Job {
            event_id: Uuid::from_u128(event),
            traceparent: None,
            command: Command::Release { order_id },
        }
    }

    /// `jobs` all seen for the first time, nothing answered, nothing held or
    /// cancelled, in the [`shop`].
    fn loaded(jobs: &[Job]) -> Loaded {
        let (stock, prices) = shop();
        Loaded {
            fresh: jobs.iter().map(|j| j.event_id).collect(),
            stock,
            prices,
            ..Loaded::default()
        }
    }

    fn types(d: &Decision) -> Vec<&str> {
        d.out.events.iter().map(|e| e.event_type.as_str()).collect()
    }

    fn rejection(event: &EventEnvelope) -> InventoryRejectedV1 {
        assert_eq!(event.event_type.as_str(), INVENTORY_REJECTED);
        event
            .payload
            .decode()
            .expect("an InventoryRejected payload")
    }

    #[test]
    fn decide_reserves_every_line_and_answers_reserved() {
        let jobs = [reserve(1, order(10), &[("LAMP-1", 2, 2500)])];
        let d = decide(&jobs, loaded(&jobs)).expect("decided");
        assert_eq!(
            d.applied,
            Applied {
                reserved: 1,
                ..Applied::default()
            }
        );
        assert_eq!(
            d.stock["LAMP-1"],
            (3, 2),
            "2 moved from available to reserved"
        );
        assert_eq!(d.stock["OLD-1"], (5, 0));
        assert_eq!(
            d.new_reservations,
            [(order(10).as_uuid(), "LAMP-1".to_owned(), 2)]
        );
        assert!(d.released_orders.is_empty() && d.newly_cancelled.is_empty());
        assert_eq!(types(&d), [INVENTORY_RESERVED]);
        let reserved: InventoryReservedV1 = d.out.events[0].payload.decode().expect("payload");
        assert_eq!(
            reserved,
            InventoryReservedV1 {
                order_id: order(10).as_uuid(),
                items: vec![ReservedItemV1 {
                    sku: "LAMP-1".into(),
                    quantity: 2
                }],
            }
        );
        assert_eq!(d.out.recorded.len(), 1, "the new answer is recorded");
        assert_eq!(d.out.recorded[0].order_id, order(10).as_uuid());
        assert_eq!(d.out.recorded[0].request, ORDER_CREATED);
        assert_eq!(d.out.recorded[0].event, d.out.events[0]);
    }

    #[test]
    fn decide_rejects_an_unknown_sku_short_stock_and_a_wrong_price_reserving_nothing() {
        let jobs = [
            reserve(1, order(10), &[("LAMP-1", 1, 2500), ("NOPE-1", 1, 10)]),
            reserve(2, order(11), &[("LAMP-1", 6, 2500)]),
            reserve(3, order(12), &[("LAMP-1", 1, 2499)]),
        ];
        let d = decide(&jobs, loaded(&jobs)).expect("decided");
        assert_eq!(d.applied.rejected, 3);
        assert_eq!(d.applied.reserved, 0);
        assert!(d.new_reservations.is_empty());
        assert_eq!(
            d.stock["LAMP-1"],
            (5, 0),
            "no line of a rejected order is held"
        );
        assert_eq!(types(&d), [INVENTORY_REJECTED; 3]);
        let reasons: Vec<String> = d.out.events.iter().map(|e| rejection(e).reason).collect();
        assert_eq!(
            reasons,
            [
                "unknown SKU NOPE-1",
                "insufficient stock for LAMP-1: requested 6, available 5",
                "price of LAMP-1 is 2500 cents in the catalog, not 2499 as ordered",
            ]
        );
        assert_eq!(
            rejection(&d.out.events[1]).shortages,
            [ShortageV1 {
                sku: "LAMP-1".into(),
                requested: 6,
                available: 5
            }]
        );
        assert_eq!(
            d.out.recorded.len(),
            3,
            "rejections are recorded answers too"
        );
    }

    #[test]
    fn decide_sees_the_stock_as_earlier_orders_of_the_batch_left_it() {
        let jobs = [
            reserve(1, order(10), &[("LAMP-1", 3, 2500)]),
            reserve(2, order(11), &[("LAMP-1", 3, 2500)]),
        ];
        let d = decide(&jobs, loaded(&jobs)).expect("decided");
        assert_eq!(types(&d), [INVENTORY_RESERVED, INVENTORY_REJECTED]);
        assert_eq!(
            rejection(&d.out.events[1]).reason,
            "insufficient stock for LAMP-1: requested 3, available 2"
        );
        assert_eq!(d.stock["LAMP-1"], (2, 3));
    }

    #[test]
    fn decide_releases_what_a_cancelled_order_holds_and_confirms_it() {
        let (held_order, empty_order) = (order(10), order(11));
        let jobs = [release(1, held_order), release(2, empty_order)];
        let mut l = loaded(&jobs);
        l.stock.insert("LAMP-1".into(), (3, 2));
        l.held.insert(
            held_order.as_uuid(),
            vec![Held {
                sku: "LAMP-1".into(),
                quantity: 2,
                released: false,
            }],
        );
        l.reserved_before.insert(held_order.as_uuid());
        let d = decide(&jobs, l).expect("decided");
        assert_eq!(
            d.applied,
            Applied {
                released: 1,
                ..Applied::default()
            }
        );
        assert_eq!(d.stock["LAMP-1"], (5, 0), "the 2 held are available again");
        assert_eq!(d.released_orders, [held_order.as_uuid()]);
        assert_eq!(
            d.newly_cancelled,
            [held_order.as_uuid(), empty_order.as_uuid()]
        );
        assert_eq!(types(&d), [INVENTORY_RELEASED; 2]);
        let released: Vec<InventoryReleasedV1> = d
            .out
            .events
            .iter()
            .map(|e| e.payload.decode().expect("payload"))
            .collect();
        assert_eq!(
            released[0].items,
            [ReservedItemV1 {
                sku: "LAMP-1".into(),
                quantity: 2
            }]
        );
        assert!(
            released[1].items.is_empty(),
            "an order that held nothing is confirmed all the same"
        );
        assert_eq!(d.out.recorded[1].request, ORDER_CANCELLED);
    }

    #[test]
    fn decide_answers_a_repeated_request_with_the_recorded_answer() {
        let first = [reserve(1, order(10), &[("LAMP-1", 2, 2500)])];
        let answer = decide(&first, loaded(&first)).expect("decided").out.events[0].clone();
        // The same event again, and a new event asking the same, after the
        // price changed and the stock ran out: never decided again.
        let jobs = [
            reserve(1, order(10), &[("LAMP-1", 2, 2500)]),
            reserve(2, order(10), &[("LAMP-1", 2, 2500)]),
        ];
        let mut l = loaded(&jobs);
        l.fresh.remove(&Uuid::from_u128(1));
        l.answered.insert(
            (order(10).as_uuid(), ORDER_CREATED.to_owned()),
            answer.clone(),
        );
        l.stock.insert("LAMP-1".into(), (0, 0));
        l.prices.insert("LAMP-1".into(), Some(9999));
        let d = decide(&jobs, l).expect("decided");
        assert_eq!(
            d.out.events,
            [answer],
            "the recorded event, byte for byte, once"
        );
        assert!(d.out.recorded.is_empty(), "nothing new to record");
        assert_eq!(
            d.applied,
            Applied {
                duplicates: 1,
                answered_again: 1,
                ..Applied::default()
            }
        );
        assert!(d.new_reservations.is_empty());
    }

    #[test]
    fn decide_skips_a_redelivery_never_answered_and_an_order_reserved_before() {
        let jobs = [
            reserve(1, order(10), &[("LAMP-1", 1, 2500)]),
            reserve(2, order(11), &[("LAMP-1", 1, 2500)]),
            reserve(2, order(11), &[("LAMP-1", 1, 2500)]),
        ];
        let mut l = loaded(&jobs);
        l.fresh.remove(&Uuid::from_u128(1));
        l.held.insert(
            order(11).as_uuid(),
            vec![Held {
                sku: "LAMP-1".into(),
                quantity: 1,
                released: false,
            }],
        );
        l.reserved_before.insert(order(11).as_uuid());
        let d = decide(&jobs, l).expect("decided");
        assert!(d.out.events.is_empty());
        assert!(d.new_reservations.is_empty());
        assert_eq!(
            d.applied.duplicates, 2,
            "in the inbox, and twice in the batch"
        );
        assert_eq!(d.stock["LAMP-1"], (5, 0));
    }

    #[test]
    fn decide_rejects_an_order_created_after_its_cancellation() {
        // Cancelled by an earlier batch, and cancelled earlier in this batch.
        let jobs = [
            reserve(1, order(10), &[("LAMP-1", 1, 2500)]),
            release(2, order(11)),
            reserve(3, order(11), &[("LAMP-1", 1, 2500)]),
        ];
        let mut l = loaded(&jobs);
        l.cancelled.insert(order(10).as_uuid());
        let d = decide(&jobs, l).expect("decided");
        assert_eq!(
            types(&d),
            [INVENTORY_REJECTED, INVENTORY_RELEASED, INVENTORY_REJECTED]
        );
        for event in [&d.out.events[0], &d.out.events[2]] {
            assert_eq!(
                rejection(event).reason,
                "the order was cancelled before its stock was reserved"
            );
        }
        assert!(d.new_reservations.is_empty());
        assert_eq!(d.stock["LAMP-1"], (5, 0));
        assert_eq!(d.newly_cancelled, [order(11).as_uuid()]);
        assert_eq!(d.applied.rejected, 2);
    }
}
