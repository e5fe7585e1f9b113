//! The customer service's side of a batch, in one transaction: inbox, credit,
//! reservations, recorded answers, outbox. Credit rows are locked in customer
//! order, so concurrent batches never deadlock and never reserve beyond a
//! limit; the CHECK constraints on `customers.credit` stand behind the
//! arithmetic.
//!
//! A batch goes in three steps: [`load`] reads (and locks) everything the
//! decision needs, [`decide`] decides in memory without any I/O, and [`write`]
//! writes what it decided.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use contracts::events::{CreditRejectedV1, CreditReleasedV1, CreditReservedV1};
use customer_service as customers;
use shared::answers::{self, triage, Outgoing, Recorded, Triage};
use shared::{inbox, outbox, StoreError};
use sqlx::{PgConnection, PgPool};
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

impl shared::answers::Request for Job {
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn order_id(&self) -> Uuid {
        self.command.order_id().as_uuid()
    }
    fn request(&self) -> &'static str {
        self.command.request()
    }
}

/// A customer's credit as the batch sees it: (limit, reserved).
type Credit = (i64, i64);

/// What an order holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    customer: String,
    amount_cents: i64,
    released: bool,
}

/// Applies `jobs`, in order, in one transaction; a customer without a record
/// gets `default_limit_cents`.
pub async fn apply(
    pool: &PgPool,
    jobs: &[Job],
    default_limit_cents: i64,
) -> Result<Applied, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| StoreError::database("starting a transaction", e))?;
    let loaded = load(&mut tx, jobs, default_limit_cents).await?;
    let decision = decide(jobs, loaded)?;
    let applied = write(&mut tx, decision).await?;
    tx.commit()
        .await
        .map_err(|e| StoreError::database("committing the batch", e))?;
    Ok(applied)
}

/// Everything the decision on a batch reads, read: [`decide`] needs nothing else.
#[derive(Debug, Default)]
struct Loaded {
    /// The events of the batch seen for the first time (now in the inbox).
    fresh: HashSet<Uuid>,
    /// The answers recorded before for the orders of the batch.
    answered: Recorded,
    /// What the orders to decide hold (locked).
    held: HashMap<Uuid, Held>,
    /// The credit of every customer involved (locked), by customer.
    credit: BTreeMap<String, Credit>,
    /// Orders to decide that were cancelled or rejected before.
    released: HashSet<Uuid>,
}

/// The first step: records the batch's events in the inbox, reads the answers
/// given before, and for the requests still to decide locks what their orders
/// hold and the credit of their customers (in customer order; a customer
/// without a record gets one, with the default limit), and reads which orders
/// were released before.
/// The advisory-lock namespace of the orders this consumer decides on.
const ORDER_LOCKS: i32 = 0x1de0_0011;

async fn load(
    tx: &mut PgConnection,
    jobs: &[Job],
    default_limit_cents: i64,
) -> Result<Loaded, StoreError> {
    let order_ids: Vec<Uuid> = jobs
        .iter()
        .map(|j| j.command.order_id().as_uuid())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    inbox::lock_aggregates(tx, ORDER_LOCKS, &order_ids).await?;
    let event_ids: Vec<Uuid> = jobs.iter().map(|j| j.event_id).collect();
    let fresh = inbox::record(tx, &customers::INBOX, GROUP, &event_ids).await?;
    let answered = answers::load(tx, &customers::ANSWERS, &order_ids).await?;
    let to_decide = triage(jobs, &fresh, &answered).to_decide;
    if to_decide.is_empty() {
        return Ok(Loaded {
            fresh,
            answered,
            ..Loaded::default()
        });
    }
    let order_ids: Vec<Uuid> = to_decide
        .iter()
        .map(|j| j.command.order_id().as_uuid())
        .collect();
    let held: HashMap<Uuid, Held> = sqlx::query!(
        r#"SELECT order_id, customer_id, amount_cents, status FROM customers.credit_reservations
           WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE"#,
        &order_ids,
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::database("reading credit reservations", e))?
    .into_iter()
    .map(|r| {
        (
            r.order_id,
            Held {
                customer: r.customer_id,
                amount_cents: r.amount_cents,
                released: r.status == "RELEASED",
            },
        )
    })
    .collect();
    let mut customers: BTreeSet<String> = to_decide
        .iter()
        .filter_map(|j| match &j.command {
            Command::Reserve { customer, .. } => Some(customer.to_string()),
            Command::Release { .. } => None,
        })
        .collect();
    customers.extend(held.values().map(|h| h.customer.clone()));
    let customers: Vec<String> = customers.into_iter().collect();
    // A customer's first reservation writes their record with today's default.
    sqlx::query!(
        r#"INSERT INTO customers.credit (customer_id, limit_cents)
           SELECT c, $2 FROM UNNEST($1::text[]) AS c ORDER BY c
           ON CONFLICT (customer_id) DO NOTHING"#,
        &customers,
        default_limit_cents,
    )
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::database("recording customers", e))?;
    let credit: BTreeMap<String, Credit> = sqlx::query!(
        r#"SELECT customer_id, limit_cents, reserved_cents FROM customers.credit
           WHERE customer_id = ANY($1) ORDER BY customer_id FOR UPDATE"#,
        &customers,
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::database("locking credit", e))?
    .into_iter()
    .map(|r| (r.customer_id, (r.limit_cents, r.reserved_cents)))
    .collect();
    let released: HashSet<Uuid> = sqlx::query_scalar!(
        "SELECT order_id FROM customers.released_orders WHERE order_id = ANY($1)",
        &order_ids,
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::database("reading released orders", e))?
    .into_iter()
    .collect();
    Ok(Loaded {
        fresh,
        answered,
        held,
        credit,
        released,
    })
}

/// What a batch writes and sends: the decision on it.
#[derive(Debug, Default)]
struct Decision {
    applied: Applied,
    /// (limit, reserved) of every customer locked, as the batch leaves them.
    credit: BTreeMap<String, Credit>,
    /// New reservations: (order, customer, amount).
    new_reservations: Vec<(Uuid, String, i64)>,
    /// Orders whose reservation is released.
    released_orders: Vec<Uuid>,
    /// Orders released (cancelled or rejected) for the first time.
    newly_released: Vec<Uuid>,
    /// The events to send, in order, and the new answers among them to record.
    out: Outgoing,
}

/// The second step, pure: decides the batch `jobs` from what [`load`] read.
/// Requests answered before get their recorded answers again; the others are
/// decided in order, each seeing the credit as the earlier ones left it: an
/// `OrderCreated` reserves the order's total or is rejected (released before,
/// or short of credit: the reason says by how much), and is skipped when its
/// order holds a reservation already; an `OrderCancelled` releases what its
/// order holds and is confirmed whether or not it held anything.
fn decide(jobs: &[Job], loaded: Loaded) -> Result<Decision, StoreError> {
    let Loaded {
        fresh,
        answered,
        mut held,
        mut credit,
        mut released,
    } = loaded;
    let Triage {
        duplicates,
        mut out,
        to_decide,
    } = triage(jobs, &fresh, &answered);
    let mut d = Decision {
        applied: Applied {
            duplicates,
            answered_again: out.events.len(),
            ..Applied::default()
        },
        ..Decision::default()
    };
    for job in to_decide {
        let traceparent = job.traceparent;
        match &job.command {
            Command::Reserve {
                order_id,
                customer,
                total_cents,
            } => {
                let id = order_id.as_uuid();
                if held.contains_key(&id) {
                    // Reserved (or released) before any answer was recorded.
                    continue;
                }
                let rejected = |reason: String, shortfall_cents: i64| CreditRejectedV1 {
                    order_id: id,
                    customer_id: customer.to_string(),
                    reason,
                    shortfall_cents,
                };
                if released.contains(&id) {
                    d.applied.rejected += 1;
                    let reason = "the order was cancelled before its credit was reserved";
                    out.answer(job, rejected(reason.into(), 0).envelope(traceparent))?;
                    continue;
                }
                let Some(c) = credit.get_mut(customer.as_str()) else {
                    return Err(StoreError::corrupt(
                        "deciding on credit",
                        format!("no credit record for {customer}"),
                    ));
                };
                match reserve(c, *total_cents) {
                    Ok(()) => {
                        d.applied.reserved += 1;
                        d.new_reservations
                            .push((id, customer.to_string(), *total_cents));
                        held.insert(
                            id,
                            Held {
                                customer: customer.to_string(),
                                amount_cents: *total_cents,
                                released: false,
                            },
                        );
                        let reserved = CreditReservedV1 {
                            order_id: id,
                            customer_id: customer.to_string(),
                            amount_cents: *total_cents,
                        };
                        out.answer(job, reserved.envelope(traceparent))?;
                    }
                    Err(Shortfall {
                        available_cents,
                        short_cents,
                    }) => {
                        d.applied.rejected += 1;
                        let reason = format!(
                            "insufficient credit for {customer}: the order needs {total_cents} cents, \
                             {available_cents} are available (short by {short_cents})"
                        );
                        out.answer(job, rejected(reason, short_cents).envelope(traceparent))?;
                    }
                }
            }
            Command::Release { order_id } => {
                let id = order_id.as_uuid();
                if released.insert(id) {
                    d.newly_released.push(id);
                }
                let mut amount_cents = 0;
                if let Some(h) = held.get_mut(&id).filter(|h| !h.released) {
                    if let Some(c) = credit.get_mut(&h.customer) {
                        c.1 -= h.amount_cents;
                    }
                    h.released = true;
                    amount_cents = h.amount_cents;
                    d.applied.released += 1;
                    d.released_orders.push(id);
                }
                // Confirmed whether or not anything was held, so the order
                // service stops asking.
                let released = CreditReleasedV1 {
                    order_id: id,
                    amount_cents,
                };
                out.answer(job, released.envelope(traceparent))?;
            }
        }
    }
    d.credit = credit;
    d.out = out;
    Ok(d)
}

/// How much credit an order lacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shortfall {
    available_cents: i64,
    short_cents: i64,
}

/// Reserves `amount` against `credit` (limit, reserved), all or nothing. A
/// limit lowered below what is reserved leaves nothing available.
fn reserve(credit: &mut Credit, amount: i64) -> Result<(), Shortfall> {
    let available_cents = (credit.0 - credit.1).max(0);
    if amount > available_cents {
        return Err(Shortfall {
            available_cents,
            short_cents: amount - available_cents,
        });
    }
    credit.1 += amount;
    Ok(())
}

/// The third step: writes what [`decide`] decided (credit, reservations,
/// releases, released orders, answers, then the outbox).
async fn write(tx: &mut PgConnection, decision: Decision) -> Result<Applied, StoreError> {
    let Decision {
        applied,
        credit,
        new_reservations,
        released_orders,
        newly_released,
        out,
    } = decision;
    if !credit.is_empty() {
        let (customers, reserved): (Vec<String>, Vec<i64>) =
            credit.into_iter().map(|(c, (_, r))| (c, r)).unzip();
        sqlx::query!(
            r#"UPDATE customers.credit c SET reserved_cents = u.reserved, updated_at = now()
               FROM UNNEST($1::text[], $2::bigint[]) AS u(customer_id, reserved)
               WHERE c.customer_id = u.customer_id AND c.reserved_cents <> u.reserved"#,
            &customers,
            &reserved,
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::database("updating credit", e))?;
    }
    if !new_reservations.is_empty() {
        let (orders, (customers, amounts)): (Vec<Uuid>, (Vec<String>, Vec<i64>)) = new_reservations
            .into_iter()
            .map(|(o, c, a)| (o, (c, a)))
            .unzip();
        sqlx::query!(
            r#"INSERT INTO customers.credit_reservations (order_id, customer_id, amount_cents, status)
               SELECT o, c, a, 'RESERVED' FROM UNNEST($1::uuid[], $2::text[], $3::bigint[]) AS r(o, c, a)"#,
            &orders,
            &customers,
            &amounts,
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::database("recording credit reservations", e))?;
    }
    if !released_orders.is_empty() {
        sqlx::query!(
            r#"UPDATE customers.credit_reservations SET status = 'RELEASED', updated_at = now()
               WHERE order_id = ANY($1) AND status = 'RESERVED'"#,
            &released_orders,
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::database("releasing credit", e))?;
    }
    if !newly_released.is_empty() {
        sqlx::query!(
            r#"INSERT INTO customers.released_orders (order_id)
               SELECT UNNEST($1::uuid[]) ON CONFLICT DO NOTHING"#,
            &newly_released,
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::database("recording released orders", e))?;
    }
    answers::record(tx, &customers::ANSWERS, &out.recorded).await?;
    outbox::append_all(tx, &customers::OUTBOX, &out.events).await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::{CustomerId, OrderId};

    fn order(n: u128) -> OrderId {
        OrderId::from(Uuid::from_u128(n))
    }

    fn reserve_job(n: u128, customer: &str, total_cents: i64) -> Job {
        Job {
            event_id: Uuid::from_u128(1000 + n),
            traceparent: None,
            command: Command::Reserve {
                order_id: order(n),
                customer: CustomerId::parse(customer).expect("a customer id"),
                total_cents,
            },
        }
    }

    fn release_job(n: u128) -> Job {
        Job {
            event_id: Uuid::from_u128(2000 + n),
            traceparent: None,
            command: Command::Release { order_id: order(n) },
        }
    }

    fn loaded(jobs: &[Job], credit: &[(&str, Credit)]) -> Loaded {
        Loaded {
            fresh: jobs.iter().map(|j| j.event_id).collect(),
            credit: credit.iter().map(|(c, v)| ((*c).to_owned(), *v)).collect(),
            ..Loaded::default()
        }
    }

    #[test]
    fn an_order_reserves_all_of_its_total_or_nothing() {
        let mut credit = (100, 30);
        assert_eq!(reserve(&mut credit, 70), Ok(()));
        assert_eq!(credit, (100, 100));
        assert_eq!(
            reserve(&mut credit, 1),
            Err(Shortfall {
                available_cents: 0,
                short_cents: 1
            })
        );
        assert_eq!(credit, (100, 100), "a refusal reserves nothing");
        let mut lowered = (50, 80);
        assert_eq!(
            reserve(&mut lowered, 10),
            Err(Shortfall {
                available_cents: 0,
                short_cents: 10
            })
        );
    }

    #[test]
    fn orders_in_a_batch_see_the_credit_the_earlier_ones_left() {
        let jobs = [
            reserve_job(1, "cust-1", 60),
            reserve_job(2, "cust-1", 60),
            reserve_job(3, "cust-1", 40),
        ];
        let d = decide(&jobs, loaded(&jobs, &[("cust-1", (100, 0))])).expect("decided");
        assert_eq!((d.applied.reserved, d.applied.rejected), (2, 1));
        assert_eq!(d.credit["cust-1"], (100, 100));
        let types: Vec<&str> = d.out.events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            ["CreditReserved", "CreditRejected", "CreditReserved"]
        );
        let rejected: CreditRejectedV1 = d.out.events[1].payload.decode().expect("payload");
        assert_eq!(rejected.shortfall_cents, 20);
        assert!(
            rejected.reason.contains("short by 20"),
            "{}",
            rejected.reason
        );
        assert_eq!(d.out.recorded.len(), 3, "every new answer is recorded");
    }

    #[test]
    fn a_release_gives_back_what_the_order_held_once() {
        let jobs = [reserve_job(1, "cust-1", 60), release_job(1), release_job(2)];
        let d = decide(&jobs, loaded(&jobs, &[("cust-1", (100, 0))])).expect("decided");
        assert_eq!(d.credit["cust-1"], (100, 0));
        assert_eq!(d.applied.released, 1);
        assert_eq!(d.newly_released, [order(1).as_uuid(), order(2).as_uuid()]);
        let second: CreditReleasedV1 = d.out.events[2].payload.decode().expect("payload");
        assert_eq!(
            second.amount_cents, 0,
            "nothing held, confirmed all the same"
        );
    }

    #[test]
    fn an_order_released_before_it_is_created_reserves_nothing() {
        let jobs = [reserve_job(1, "cust-1", 10)];
        let mut l = loaded(&jobs, &[("cust-1", (100, 0))]);
        l.released.insert(order(1).as_uuid());
        let d = decide(&jobs, l).expect("decided");
        assert_eq!(d.credit["cust-1"], (100, 0));
        assert_eq!(d.out.events[0].event_type.as_str(), "CreditRejected");
    }

    #[test]
    fn a_redelivered_request_is_answered_as_it_was() {
        let jobs = [reserve_job(1, "cust-1", 10)];
        let first = decide(&jobs, loaded(&jobs, &[("cust-1", (100, 0))])).expect("decided");
        let answer = first.out.events[0].clone();
        let mut again = loaded(&jobs, &[("cust-1", (0, 0))]);
        again.fresh.clear();
        again.answered.insert(
            (order(1).as_uuid(), "OrderCreated".to_owned()),
            answer.clone(),
        );
        let d = decide(&jobs, again).expect("decided");
        assert_eq!(d.out.events, [answer]);
        assert_eq!(d.applied.duplicates, 1);
        assert!(d.out.recorded.is_empty());
        assert_eq!(d.credit["cust-1"], (0, 0), "nothing decided again");
    }
}
