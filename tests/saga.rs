//! The order saga end to end, in-process, against real PostgreSQL and Redis:
//! create-order → outbox → relay → inventory-consumer and customers-consumer →
//! their outboxes → relay → order-saga, and the compensations on a rejection
//! and on cancel.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shared::envelope::AggregateType;
use shared::relay::RelayOptions;
use shared::streams::stream_keys;
use tests::source::{append, fast_settings, source, Running};
use tests::wait_until;
use tests::{
    delete_streams, redis_url, relay, unique_namespace, Answer, ApiRequest, RunningRelay, TestDb,
};

const WAIT: Duration = Duration::from_secs(60);

/// The whole system on one test database and one stream namespace.
struct System {
    db: TestDb,
    ns: String,
    api: create_order::Deps,
    relay: Option<RunningRelay>,
    consumers: Vec<Running>,
    partitions: u16,
    /// The credit limit of a customer without a record.
    default_credit: i64,
}

impl System {
    async fn start(partitions: u16, consumers_per_group: usize) -> anyhow::Result<Self> {
        Self::start_with_credit(partitions, consumers_per_group, 100_000_000_000).await
    }

    async fn start_with_credit(
        partitions: u16,
        consumers_per_group: usize,
        default_credit: i64,
    ) -> anyhow::Result<Self> {
        let db = TestDb::fresh().await?;
        let ns = unique_namespace();
        let options = RelayOptions {
            stream_namespace: ns.clone(),
            stream_partitions: partitions,
            ..tests::relay_options()
        };
        let relay = RunningRelay::start(
            relay(&db.pool, &redis_url(), options).await?,
            Duration::from_millis(200),
        )
        .await;
        let mut system = Self {
            api: create_order::Deps {
                pool: db.pool.clone(),
                idempotency_ttl: Duration::from_secs(3600),
            },
            db,
            ns,
            relay: Some(relay),
            consumers: Vec::new(),
            partitions,
            default_credit,
        };
        for i in 0..consumers_per_group {
            system.start_inventory(&format!("inv-{i}")).await?;
            system.start_customers(&format!("cust-{i}")).await?;
            system.start_saga(&format!("saga-{i}")).await?;
        }
        Ok(system)
    }

    fn streams(&self, aggregate: &str) -> Vec<String> {
        stream_keys(
            &self.ns,
            &AggregateType::parse(aggregate).expect("valid"),
            self.partitions,
        )
    }

    async fn start_inventory(&mut self, consumer: &str) -> anyhow::Result<()> {
        let mut settings =
            fast_settings(&self.ns, inventory_consumer::GROUP, self.streams("Order"));
        settings.consumer = consumer.into();
        let handler = Arc::new(inventory_consumer::Inventory {
            pool: self.db.pool.clone(),
        });
        self.consumers
            .push(Running::start(source(settings).await?, handler));
        Ok(())
    }

    async fn start_customers(&mut self, consumer: &str) -> anyhow::Result<()> {
        let mut settings =
            fast_settings(&self.ns, customers_consumer::GROUP, self.streams("Order"));
        settings.consumer = consumer.into();
        let handler = Arc::new(customers_consumer::Customers {
            pool: self.db.pool.clone(),
            default_limit_cents: self.default_credit,
        });
        self.consumers
            .push(Running::start(source(settings).await?, handler));
        Ok(())
    }

    async fn start_saga(&mut self, consumer: &str) -> anyhow::Result<()> {
        let mut streams = self.streams("Reservation");
        streams.extend(self.streams("Credit"));
        let mut settings = fast_settings(&self.ns, order_saga::GROUP, streams);
        settings.consumer = consumer.into();
        let handler = Arc::new(order_saga::Saga {
            pool: self.db.pool.clone(),
        });
        self.consumers
            .push(Running::start(source(settings).await?, handler));
        Ok(())
    }

    /// Stocks `sku` at the catalog price every order of these tests carries (100).
    async fn set_stock(&self, sku: &str, available: i32) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO inventory.stock (sku, available, price_cents) VALUES ($1, $2, 100) ON CONFLICT (sku) DO UPDATE SET available = $2")
            .bind(sku)
            .bind(available)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    async fn stock(&self, sku: &str) -> anyhow::Result<(i32, i32)> {
        Ok(
            sqlx::query_as("SELECT available, reserved FROM inventory.stock WHERE sku = $1")
                .bind(sku)
                .fetch_one(&self.db.pool)
                .await?,
        )
    }

    async fn post_order(&self, items: Value) -> anyhow::Result<String> {
        let body = json!({"items": items}).to_string();
        let answer = Answer::from(
            create_order::handle(&self.api, ApiRequest::post_orders(&body).build()).await,
        );
        anyhow::ensure!(
            answer.status == 201,
            "POST /orders answered {}",
            answer.status
        );
        Ok(answer.json()["id"].as_str().unwrap_or_default().to_owned())
    }

    async fn get_order(&self, id: &str) -> Value {
        Answer::from(create_order::handle(&self.api, ApiRequest::get_order(id).build()).await)
            .json()
    }

    async fn cancel(&self, id: &str) -> Answer {
        let request = ApiRequest::get_order(id)
            .method("POST")
            .path(&format!("/orders/{id}/cancel"));
        Answer::from(create_order::handle(&self.api, request.build()).await)
    }

    async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sql).fetch_one(&self.db.pool).await?)
    }

    async fn wait_for_status(&self, id: &str, status: &str) -> anyhow::Result<Value> {
        wait_until(WAIT, &format!("order {id} is {status}"), || async {
            Ok(self.get_order(id).await["status"] == status)
        })
        .await?;
        Ok(self.get_order(id).await)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        for c in self.consumers.drain(..) {
            c.stop().await?;
        }
        if let Some(r) = self.relay.take() {
            r.stop().await?;
        }
        delete_streams(&redis_url(), &self.ns).await
    }
}

impl System {
    /// The customer of order `id` (the caller's subject).
    async fn customer_of(&self, id: &str) -> anyhow::Result<String> {
        Ok(
            sqlx::query_scalar("SELECT customer_id FROM orders.orders WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&self.db.pool)
                .await?,
        )
    }

    /// (limit, reserved) of `customer`'s credit, after checking that what is
    /// reserved is what the customer's `RESERVED` reservations hold.
    async fn credit(&self, customer: &str) -> anyhow::Result<(i64, i64)> {
        let (limit, reserved, held): (i64, i64, i64) = sqlx::query_as(
            "SELECT c.limit_cents, c.reserved_cents,
                    (SELECT coalesce(sum(amount_cents), 0)::bigint FROM customers.credit_reservations r
                     WHERE r.customer_id = c.customer_id AND r.status = 'RESERVED')
             FROM customers.credit c WHERE c.customer_id = $1",
        )
        .bind(customer)
        .fetch_one(&self.db.pool)
        .await?;
        anyhow::ensure!(reserved == held, "reserved {reserved}, held {held}");
        Ok((limit, reserved))
    }

    /// Waits until `id`'s compensation is settled: every participant released.
    async fn wait_settled(&self, id: &str) -> anyhow::Result<()> {
        wait_until(
            WAIT,
            &format!("order {id}'s release is confirmed"),
            || async { Ok(!self.awaiting_release(id).await?) },
        )
        .await
    }
}

/// Credit is the second participant: an order beyond the customer's available
/// credit is rejected with the shortfall even though its stock was reserved,
/// and the stock is released (compensation); cancelling a confirmed order
/// releases both its stock and its credit.
#[tokio::test]
async fn an_order_beyond_the_customers_credit_is_rejected_and_its_stock_released(
) -> anyhow::Result<()> {
    let system = System::start_with_credit(1, 1, 1000).await?;
    system.set_stock("WIDGET-1", 20).await?;
    let first = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":3,"unit_price_cents":100}]))
        .await?;
    system.wait_for_status(&first, "CONFIRMED").await?;
    let customer = system.customer_of(&first).await?;
    assert_eq!(system.credit(&customer).await?, (1000, 300));

    let second = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":8,"unit_price_cents":100}]))
        .await?;
    let rejected = system.wait_for_status(&second, "REJECTED").await?;
    assert_eq!(
        rejected["status_reason"],
        format!(
            "insufficient credit for {customer}: the order needs 800 cents, 700 are available (short by 100)"
        )
    );
    system.wait_settled(&second).await?;
    assert_eq!(
        system.stock("WIDGET-1").await?,
        (17, 3),
        "its stock released"
    );
    assert_eq!(system.credit(&customer).await?, (1000, 300));

    assert_eq!(system.cancel(&first).await.status, 200);
    system.wait_settled(&first).await?;
    assert_eq!(system.stock("WIDGET-1").await?, (20, 0));
    assert_eq!(system.credit(&customer).await?, (1000, 0));
    system.stop().await
}

/// The other way round: an order the inventory refuses releases the credit
/// the customer service reserved for it, whichever answered first.
#[tokio::test]
async fn an_order_out_of_stock_has_its_credit_released() -> anyhow::Result<()> {
    let system = System::start_with_credit(1, 1, 10_000).await?;
    system.set_stock("WIDGET-1", 2).await?;
    let id = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":5,"unit_price_cents":100}]))
        .await?;
    let rejected = system.wait_for_status(&id, "REJECTED").await?;
    assert_eq!(
        rejected["status_reason"],
        "insufficient stock for WIDGET-1: requested 5, available 2"
    );
    system.wait_settled(&id).await?;
    let customer = system.customer_of(&id).await?;
    assert_eq!(system.credit(&customer).await?, (10_000, 0));
    assert_eq!(
        system
            .count("SELECT count(*) FROM customers.credit_reservations WHERE status = 'RELEASED'")
            .await?,
        1,
        "the credit was reserved, then released"
    );
    assert_eq!(system.stock("WIDGET-1").await?, (2, 0));
    system.stop().await
}

#[tokio::test]
async fn an_order_in_stock_is_confirmed_and_one_out_of_stock_is_rejected_with_the_reason(
) -> anyhow::Result<()> {
    let system = System::start(1, 1).await?;
    system.set_stock("WIDGET-1", 5).await?;
    system.set_stock("GADGET-7", 1).await?;
    let ok = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":2,"unit_price_cents":100},{"sku":"GADGET-7","quantity":1,"unit_price_cents":100}]))
        .await?;
    let confirmed = system.wait_for_status(&ok, "CONFIRMED").await?;
    assert!(confirmed.get("status_reason").is_none(), "{confirmed}");
    assert_eq!(system.stock("WIDGET-1").await?, (3, 2));
    assert_eq!(system.stock("GADGET-7").await?, (0, 1));

    // Short on one line: nothing is reserved, and the order says why.
    let short = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":1,"unit_price_cents":100},{"sku":"GADGET-7","quantity":1,"unit_price_cents":100}]))
        .await?;
    let rejected = system.wait_for_status(&short, "REJECTED").await?;
    assert_eq!(
        rejected["status_reason"],
        "insufficient stock for GADGET-7: requested 1, available 0"
    );
    assert_eq!(system.stock("WIDGET-1").await?, (3, 2), "all or nothing");

    let unknown = system
        .post_order(json!([{"sku":"NOPE-1","quantity":1,"unit_price_cents":100}]))
        .await?;
    let rejected = system.wait_for_status(&unknown, "REJECTED").await?;
    assert_eq!(rejected["status_reason"], "unknown SKU NOPE-1");
    system.stop().await
}

/// Prices come from the catalog: an order line at another price is rejected
/// with the SKU, the price sent and the catalog's; nothing is reserved.
#[tokio::test]
async fn an_order_at_a_price_the_catalog_does_not_hold_is_rejected_with_the_reason(
) -> anyhow::Result<()> {
    let system = System::start(1, 1).await?;
    system.set_stock("WIDGET-1", 5).await?;
    system.set_stock("GADGET-7", 5).await?;
    let cheap = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":1,"unit_price_cents":100},{"sku":"GADGET-7","quantity":1,"unit_price_cents":0}]))
        .await?;
    let rejected = system.wait_for_status(&cheap, "REJECTED").await?;
    assert_eq!(
        rejected["status_reason"],
        "price of GADGET-7 is 100 cents in the catalog, not 0 as ordered"
    );
    assert_eq!(system.stock("WIDGET-1").await?, (5, 0), "all or nothing");
    // A SKU stocked before prices existed takes no order until it has one.
    sqlx::query("UPDATE inventory.stock SET price_cents = NULL WHERE sku = 'WIDGET-1'")
        .execute(&system.db.pool)
        .await?;
    let unpriced = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":1,"unit_price_cents":100}]))
        .await?;
    let rejected = system.wait_for_status(&unpriced, "REJECTED").await?;
    assert_eq!(
        rejected["status_reason"],
        "WIDGET-1 has no price in the catalog (ordered at 100 cents)"
    );
    system.stop().await
}

/// A price changed after an order was created does not change that order: it
/// stays confirmed at its own price, and its OrderCreated sent again gets the
/// answer recorded then, not a new decision at today's price.
#[tokio::test]
async fn a_price_changed_after_an_order_does_not_change_that_order() -> anyhow::Result<()> {
    let mut system = System::start(1, 0).await?;
    system.start_inventory("inv-0").await?;
    system.start_customers("cust-0").await?;
    system.set_stock("WIDGET-1", 10).await?;
    let id = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":3,"unit_price_cents":100}]))
        .await?;
    // The inventory reserves and answers; the answer is lost.
    let lost = lose_entries(&system.streams("Reservation")[0], 1).await?;
    assert_eq!(lost[0].1["event_type"], "InventoryReserved");
    sqlx::query("UPDATE inventory.stock SET price_cents = 150 WHERE sku = 'WIDGET-1'")
        .execute(&system.db.pool)
        .await?;
    system.start_saga("saga-0").await?;
    let run = system.reconcile(Duration::from_secs(61)).await?;
    assert_eq!(run.created_resent, 1, "{run:?}");
    let confirmed = system.wait_for_status(&id, "CONFIRMED").await?;
    assert_eq!(confirmed["items"][0]["unit_price_cents"], 100);
    assert_eq!(confirmed["total_cents"], 300);
    let answers = entries(&system.streams("Reservation")[0]).await?;
    assert_eq!(
        answers[0].1["payload"], lost[0].1["payload"],
        "the recorded answer"
    );
    assert_eq!(system.stock("WIDGET-1").await?, (7, 3));
    // A new order at the old price is refused; at the new one it is confirmed.
    let old = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":1,"unit_price_cents":100}]))
        .await?;
    system.wait_for_status(&old, "REJECTED").await?;
    let new = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":1,"unit_price_cents":150}]))
        .await?;
    system.wait_for_status(&new, "CONFIRMED").await?;
    system.stop().await
}

#[tokio::test]
async fn two_hundred_concurrent_orders_for_fifty_units_confirm_exactly_fifty() -> anyhow::Result<()>
{
    // Two partitions, two consumers per group: batches run concurrently.
    let system = Arc::new(System::start(2, 2).await?);
    system.set_stock("HOT-1", 50).await?;
    let mut posts = Vec::new();
    for _ in 0..200 {
        let s = Arc::clone(&system);
        posts.push(tokio::spawn(async move {
            s.post_order(json!([{"sku":"HOT-1","quantity":1,"unit_price_cents":100}]))
                .await
        }));
    }
    for p in posts {
        p.await??;
    }
    wait_until(WAIT, "no order is PENDING", || async {
        Ok(system
            .count("SELECT count(*) FROM orders.orders WHERE status = 'PENDING'")
            .await?
            == 0)
    })
    .await?;
    assert_eq!(
        system
            .count("SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'")
            .await?,
        50
    );
    assert_eq!(
        system
            .count("SELECT count(*) FROM orders.orders WHERE status = 'REJECTED'")
            .await?,
        150
    );
    assert_eq!(system.stock("HOT-1").await?, (0, 50));
    assert_eq!(system.count("SELECT coalesce(sum(quantity), 0)::bigint FROM inventory.reservations WHERE status = 'RESERVED'").await?, 50);
    let system = Arc::into_inner(system).expect("the only owner");
    system.stop().await
}

#[tokio::test]
async fn cancelling_an_order_releases_its_stock() -> anyhow::Result<()> {
    let system = System::start(1, 1).await?;
    system.set_stock("WIDGET-1", 10).await?;
    let id = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":4,"unit_price_cents":100}]))
        .await?;
    system.wait_for_status(&id, "CONFIRMED").await?;
    assert_eq!(system.stock("WIDGET-1").await?, (6, 4));
    let answer = system.cancel(&id).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["status"], "CANCELLED");
    wait_until(WAIT, "the stock is released", || async {
        Ok(system.stock("WIDGET-1").await? == (10, 0))
    })
    .await?;
    assert_eq!(
        system
            .count("SELECT count(*) FROM inventory.reservations WHERE status = 'RELEASED'")
            .await?,
        1
    );
    // Cancelling again is refused, and changes nothing.
    assert_eq!(system.cancel(&id).await.status, 409);
    assert_eq!(system.get_order(&id).await["status"], "CANCELLED");
    system.stop().await
}

#[tokio::test]
async fn the_same_event_delivered_twice_takes_effect_once() -> anyhow::Result<()> {
    let system = System::start(1, 1).await?;
    system.set_stock("WIDGET-1", 10).await?;
    let id = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":3,"unit_price_cents":100}]))
        .await?;
    let short = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":30,"unit_price_cents":100}]))
        .await?;
    system.wait_for_status(&id, "CONFIRMED").await?;
    system.wait_for_status(&short, "REJECTED").await?;
    system.wait_settled(&short).await?;
    // Publish the very same events again, as a relay crash would.
    let streams = tests::read_streams(&redis_url(), &system.ns).await?;
    let of_type = |t: &str| -> Vec<shared::envelope::EventEnvelope> {
        streams
            .values()
            .flatten()
            .filter(|e| e.event_type.as_str() == t)
            .cloned()
            .collect()
    };
    let created = of_type("OrderCreated");
    assert_eq!(created.len(), 2);
    let stream = &system.streams("Order")[0];
    append(stream, &created).await?;
    let mut answers = of_type("InventoryReserved");
    answers.extend(of_type("InventoryRejected"));
    append(&system.streams("Reservation")[0], &answers).await?;
    wait_until(WAIT, "the copies are consumed", || async {
        Ok(
            tests::source::pending_count(stream, inventory_consumer::GROUP).await? == 0
                && tests::source::pending_count(
                    &system.streams("Reservation")[0],
                    order_saga::GROUP,
                )
                .await?
                    == 0,
        )
    })
    .await?;
    // Give a wrongly written second answer time to be relayed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(system.stock("WIDGET-1").await?, (7, 3), "reserved once");
    assert_eq!(
        system
            .count("SELECT count(*) FROM inventory.reservations")
            .await?,
        1
    );
    // The inventory's inbox: the two OrderCreated and the rejected order's
    // compensation (OrderCancelled); the saga's: each participant's answer to
    // each order and its release of the rejected one.
    assert_eq!(
        system
            .count("SELECT count(*) FROM inventory.processed_events")
            .await?,
        3
    );
    assert_eq!(
        system
            .count("SELECT count(*) FROM orders.processed_events")
            .await?,
        6
    );
    assert_eq!(
        system
            .count("SELECT count(*) FROM inventory.outbox")
            .await?,
        0,
        "all relayed"
    );
    // One answer per order, sent three times under one event id: the original,
    // the copy this test appended, and the inventory's answer to the repeated
    // request (its recorded answer, not a new decision).
    wait_until(WAIT, "the repeated answers are consumed", || async {
        Ok(
            tests::source::pending_count(&system.streams("Reservation")[0], order_saga::GROUP)
                .await?
                == 0,
        )
    })
    .await?;
    let streams = tests::read_streams(&redis_url(), &system.ns).await?;
    let sent = |t: &str| {
        let of_type: Vec<_> = streams
            .values()
            .flatten()
            .filter(|e| e.event_type.as_str() == t)
            .collect();
        let ids: std::collections::HashSet<_> = of_type.iter().map(|e| e.event_id).collect();
        (of_type.len(), ids.len())
    };
    assert_eq!(sent("InventoryReserved"), (3, 1));
    assert_eq!(sent("InventoryRejected"), (3, 1));
    assert_eq!(system.get_order(&id).await["status"], "CONFIRMED");
    assert_eq!(system.get_order(&short).await["status"], "REJECTED");
    system.stop().await
}

#[tokio::test]
async fn an_order_created_event_after_its_cancellation_reserves_nothing() -> anyhow::Result<()> {
    // As when an OrderCreated is redriven from the dead-letter stream late.
    let db = TestDb::fresh().await?;
    sqlx::query("INSERT INTO inventory.stock (sku, available, price_cents) VALUES ('W-1', 5, 100)")
        .execute(&db.pool)
        .await?;
    let order = contracts::OrderId::new();
    let cancel = inventory_consumer::Job {
        event_id: uuid::Uuid::now_v7(),
        traceparent: None,
        command: inventory_consumer::Command::Release { order_id: order },
    };
    let create = inventory_consumer::Job {
        event_id: uuid::Uuid::now_v7(),
        traceparent: None,
        command: inventory_consumer::Command::Reserve {
            order_id: order,
            lines: vec![inventory_consumer::Line {
                sku: contracts::Sku::parse("W-1")?,
                quantity: contracts::Quantity::try_from(2_i64)?,
                unit_price_cents: 100,
            }],
        },
    };
    inventory_consumer::apply(&db.pool, &[cancel]).await?;
    let applied = inventory_consumer::apply(&db.pool, &[create]).await?;
    assert_eq!(applied.rejected, 1);
    let (available, reserved): (i32, i32) =
        sqlx::query_as("SELECT available, reserved FROM inventory.stock WHERE sku = 'W-1'")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!((available, reserved), (5, 0));
    let reason: String = sqlx::query_scalar(
        "SELECT payload->>'reason' FROM inventory.outbox WHERE event_type = 'InventoryRejected'",
    )
    .fetch_one(&db.pool)
    .await?;
    assert!(reason.contains("cancelled"), "{reason}");
    Ok(())
}

/// A price changed after the inventory decided an order changes nothing for it,
/// either way: an OrderCreated asked again (under its own event id, as the
/// reconciler sends it, or another) gets the recorded answer, never a new
/// decision at today's price.
#[tokio::test]
async fn an_order_asked_again_after_a_price_change_gets_its_recorded_answer() -> anyhow::Result<()>
{
    let db = TestDb::fresh().await?;
    sqlx::query("INSERT INTO inventory.stock (sku, available, price_cents) VALUES ('W-1', 5, 100)")
        .execute(&db.pool)
        .await?;
    let reserve = |order: contracts::OrderId, event_id: uuid::Uuid, price: i64| {
        anyhow::Ok(inventory_consumer::Job {
            event_id,
            traceparent: None,
            command: inventory_consumer::Command::Reserve {
                order_id: order,
                lines: vec![inventory_consumer::Line {
                    sku: contracts::Sku::parse("W-1")?,
                    quantity: contracts::Quantity::try_from(2_i64)?,
                    unit_price_cents: price,
                }],
            },
        })
    };
    let stock = || async {
        let levels: (i32, i32) =
            sqlx::query_as("SELECT available, reserved FROM inventory.stock WHERE sku = 'W-1'")
                .fetch_one(&db.pool)
                .await?;
        anyhow::Ok(levels)
    };
    let answer = |order: contracts::OrderId| {
        let pool = db.pool.clone();
        async move {
            let recorded: (String, String) = sqlx::query_as(
                "SELECT event_type, payload::text FROM inventory.answers WHERE order_id = $1",
            )
            .bind(order.as_uuid())
            .fetch_one(&pool)
            .await?;
            anyhow::Ok(recorded)
        }
    };
    let set_price = |price: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query("UPDATE inventory.stock SET price_cents = $1 WHERE sku = 'W-1'")
                .bind(price)
                .execute(&pool)
                .await?;
            anyhow::Ok(())
        }
    };

    // Reserved at 100; the price goes up to 150.
    let (reserved, first) = (contracts::OrderId::new(), uuid::Uuid::now_v7());
    let applied = inventory_consumer::apply(&db.pool, &[reserve(reserved, first, 100)?]).await?;
    assert_eq!(applied.reserved, 1);
    let recorded = answer(reserved).await?;
    assert_eq!(recorded.0, "InventoryReserved");
    set_price(150).await?;
    for event_id in [first, uuid::Uuid::now_v7()] {
        let again =
            inventory_consumer::apply(&db.pool, &[reserve(reserved, event_id, 100)?]).await?;
        assert_eq!(
            (again.reserved, again.rejected, again.answered_again),
            (0, 0, 1)
        );
        assert_eq!(answer(reserved).await?, recorded, "the recorded answer");
    }
    assert_eq!(stock().await?, (3, 2), "reserved once");

    // Rejected at 100 (the catalog says 150); the price comes down to 100.
    let (rejected, first) = (contracts::OrderId::new(), uuid::Uuid::now_v7());
    let applied = inventory_consumer::apply(&db.pool, &[reserve(rejected, first, 100)?]).await?;
    assert_eq!(applied.rejected, 1);
    let recorded = answer(rejected).await?;
    assert_eq!(recorded.0, "InventoryRejected");
    assert!(
        recorded
            .1
            .contains("price of W-1 is 150 cents in the catalog, not 100 as ordered"),
        "{}",
        recorded.1
    );
    set_price(100).await?;
    for event_id in [first, uuid::Uuid::now_v7()] {
        let again =
            inventory_consumer::apply(&db.pool, &[reserve(rejected, event_id, 100)?]).await?;
        assert_eq!(
            (again.reserved, again.rejected, again.answered_again),
            (0, 0, 1)
        );
        assert_eq!(answer(rejected).await?, recorded, "the recorded answer");
    }
    assert_eq!(
        stock().await?,
        (3, 2),
        "nothing reserved for the rejected order"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_event_types_and_invalid_payloads_go_to_the_dead_letter_stream(
) -> anyhow::Result<()> {
    let system = System::start(1, 1).await?;
    let stream = system.streams("Order")[0].clone();
    let mut unknown = tests::source::event("x", 0);
    unknown.event_type = shared::envelope::EventType::parse("OrderTeleported")?;
    let mut invalid = tests::source::event("y", 0);
    invalid.event_type = shared::envelope::EventType::parse("OrderCreated")?;
    let mut future = tests::source::event("z", 0);
    future.event_type = shared::envelope::EventType::parse("OrderCreated")?;
    future.schema_version = 9;
    append(&stream, &[unknown, invalid, future]).await?;
    let probe = source(fast_settings(&system.ns, inventory_consumer::GROUP, vec![])).await?;
    let dead = probe.dead_letters();
    wait_until(WAIT, "three dead letters", || async {
        Ok(dead.count().await? == 3)
    })
    .await?;
    let errors: Vec<String> = dead
        .list(None, 10)
        .await?
        .into_iter()
        .map(|l| l.error)
        .collect();
    assert!(errors[0].contains("unknown event type"), "{errors:?}");
    assert!(
        errors[1].contains("invalid OrderCreated payload"),
        "{errors:?}"
    );
    assert!(
        errors[2].contains("unsupported schema version 9"),
        "{errors:?}"
    );
    system.stop().await
}

// ---------------------------------------------------------------- stuck sagas

/// The entries of `stream`, oldest first: (entry id, fields).
async fn entries(stream: &str) -> anyhow::Result<Vec<(String, HashMap<String, String>)>> {
    let mut conn = tests::source::connection().await?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|e| {
            let fields = e
                .map
                .iter()
                .filter_map(|(k, v)| {
                    redis::from_redis_value::<String>(v.clone())
                        .ok()
                        .map(|v| (k.clone(), v))
                })
                .collect();
            (e.id, fields)
        })
        .collect())
}

/// Waits for `stream` to hold at least `n` entries, then deletes them all
/// (`XDEL`), as a Redis failover that lost them would; returns them.
async fn lose_entries(
    stream: &str,
    n: usize,
) -> anyhow::Result<Vec<(String, HashMap<String, String>)>> {
    wait_until(WAIT, &format!("{n} entries on {stream}"), || async {
        Ok(entries(stream).await?.len() >= n)
    })
    .await?;
    let lost = entries(stream).await?;
    let mut conn = tests::source::connection().await?;
    let ids: Vec<&str> = lost.iter().map(|(id, _)| id.as_str()).collect();
    let _: u64 = redis::cmd("XDEL")
        .arg(stream)
        .arg(&ids)
        .query_async(&mut conn)
        .await?;
    Ok(lost)
}

impl System {
    /// One reconciler run as if at `now + ahead`.
    async fn reconcile(&self, ahead: Duration) -> anyhow::Result<order_reconciler::Summary> {
        let retention =
            shared::retention::RetentionConfig::from_env(&shared::config::Env::default())?;
        Ok(order_reconciler::reconcile(
            &self.db.pool,
            &order_reconciler::Settings::default(),
            &retention,
            shared::envelope::now_utc() + ahead,
        )
        .await?)
    }

    async fn awaiting_release(&self, id: &str) -> anyhow::Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT awaiting_release_since IS NOT NULL FROM orders.orders WHERE id = $1::uuid",
        )
        .bind(id)
        .fetch_one(&self.db.pool)
        .await?)
    }
}

#[tokio::test]
async fn a_lost_answer_is_sent_again_by_the_inventory_and_the_order_confirmed_exactly_once(
) -> anyhow::Result<()> {
    let mut system = System::start(1, 0).await?;
    system.start_inventory("inv-0").await?;
    system.start_customers("cust-0").await?;
    system.set_stock("WIDGET-1", 10).await?;
    let id = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":3,"unit_price_cents":100}]))
        .await?;
    // The inventory reserves and answers; the answer is lost before the saga reads it.
    let lost = lose_entries(&system.streams("Reservation")[0], 1).await?;
    assert_eq!(lost[0].1["event_type"], "InventoryReserved");
    system.start_saga("saga-0").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(system.get_order(&id).await["status"], "PENDING");

    // Before the timeout the reconciler leaves it alone.
    assert_eq!(system.reconcile(Duration::ZERO).await?.created_resent, 0);
    // After it: OrderCreated again under its first event id; the inventory,
    // which already decided, answers again with its recorded answer.
    let run = system.reconcile(Duration::from_secs(61)).await?;
    assert_eq!(run.created_resent, 1, "{run:?}");
    system.wait_for_status(&id, "CONFIRMED").await?;
    let orders = entries(&system.streams("Order")[0]).await?;
    assert_eq!(orders.len(), 2, "OrderCreated, then again");
    assert_eq!(orders[0].1["event_id"], orders[1].1["event_id"]);
    assert_eq!(orders[0].1["payload"], orders[1].1["payload"]);
    let answers = entries(&system.streams("Reservation")[0]).await?;
    assert_eq!(answers.len(), 1, "the answer again");
    assert_eq!(answers[0].1["event_id"], lost[0].1["event_id"]);
    assert_eq!(answers[0].1["payload"], lost[0].1["payload"]);

    // Reserved once; a second run within the timeout sends nothing more.
    assert_eq!(system.stock("WIDGET-1").await?, (7, 3));
    assert_eq!(
        system
            .count("SELECT count(*) FROM inventory.reservations")
            .await?,
        1
    );
    let again = system.reconcile(Duration::from_secs(62)).await?;
    assert_eq!((again.created_resent, again.stuck), (0, 0), "{again:?}");
    system.stop().await
}

#[tokio::test]
async fn an_order_nobody_answers_is_rejected_at_its_deadline_and_its_stock_released(
) -> anyhow::Result<()> {
    let mut system = System::start(1, 0).await?;
    system.start_inventory("inv-0").await?;
    system.start_customers("cust-0").await?;
    system.set_stock("WIDGET-1", 10).await?;
    let id = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":4,"unit_price_cents":100}]))
        .await?;
    // Every event of the order is lost after the inventory reserved its stock.
    lose_entries(&system.streams("Reservation")[0], 1).await?;
    lose_entries(&system.streams("Order")[0], 1).await?;
    assert_eq!(system.stock("WIDGET-1").await?, (6, 4));
    system.start_saga("saga-0").await?;

    let run = system.reconcile(Duration::from_secs(601)).await?;
    assert_eq!(run.timed_out, 1, "{run:?}");
    let order = system.wait_for_status(&id, "REJECTED").await?;
    assert_eq!(order["status_reason"], "timed out");
    // OrderCancelled releases the reservation; InventoryReleased confirms it.
    wait_until(WAIT, "the release is confirmed", || async {
        Ok(!system.awaiting_release(&id).await?)
    })
    .await?;
    assert_eq!(system.stock("WIDGET-1").await?, (10, 0));
    assert_eq!(
        system
            .count("SELECT count(*) FROM inventory.reservations WHERE status = 'RELEASED'")
            .await?,
        1
    );
    // Settled: later runs send nothing.
    let later = system.reconcile(Duration::from_secs(700)).await?;
    assert_eq!(
        (
            later.timed_out,
            later.created_resent,
            later.cancelled_resent
        ),
        (0, 0, 0),
        "{later:?}"
    );
    system.stop().await
}

#[tokio::test]
async fn a_lost_cancellation_is_sent_again_until_the_inventory_confirms_the_release(
) -> anyhow::Result<()> {
    let mut system = System::start(1, 0).await?;
    system.start_inventory("inv-0").await?;
    system.start_customers("cust-0").await?;
    system.start_saga("saga-0").await?;
    system.set_stock("WIDGET-1", 10).await?;
    let id = system
        .post_order(json!([{"sku":"WIDGET-1","quantity":2,"unit_price_cents":100}]))
        .await?;
    system.wait_for_status(&id, "CONFIRMED").await?;
    // The inventory is away while the order is cancelled, and the event is lost.
    system.consumers.remove(0).stop().await?;
    assert_eq!(system.cancel(&id).await.status, 200);
    let stream = system.streams("Order")[0].clone();
    wait_until(WAIT, "OrderCancelled is published", || async {
        Ok(entries(&stream).await?.len() == 2)
    })
    .await?;
    let cancelled = entries(&stream).await?.remove(1);
    let mut conn = tests::source::connection().await?;
    let _: u64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&cancelled.0)
        .query_async(&mut conn)
        .await?;
    system.start_inventory("inv-1").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        system.stock("WIDGET-1").await?,
        (8, 2),
        "nothing released yet"
    );
    assert!(system.awaiting_release(&id).await?);

    let run = system.reconcile(Duration::from_secs(61)).await?;
    assert_eq!(run.cancelled_resent, 1, "{run:?}");
    wait_until(WAIT, "the release is confirmed", || async {
        Ok(!system.awaiting_release(&id).await?)
    })
    .await?;
    assert_eq!(system.stock("WIDGET-1").await?, (10, 0));
    let resent = entries(&stream).await?.pop().expect("an entry");
    assert_eq!(resent.1["event_id"], cancelled.1["event_id"]);
    let later = system.reconcile(Duration::from_secs(200)).await?;
    assert_eq!(later.cancelled_resent, 0, "{later:?}");
    system.stop().await
}

/// Sessions of `db`'s database waiting on a lock of this kind (`transactionid`,
/// `advisory`, …).
async fn waiting_on(db: &TestDb, lock: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = $1",
    )
    .bind(lock)
    .fetch_one(&db.pool)
    .await?)
}

/// Runs `reserve` and `cancel` (one participant's batches for one order) as
/// two consumers would with one order's events at once (a lease lost in a
/// Redis failover can hand a stream to a second reader while the first still
/// works). A test transaction holds an answer to the order's `OrderCreated`
/// in `schema`'s answers uncommitted, so the reserving batch stops at the end
/// of its write, after its reads, until the test rolls it back; the
/// cancelling batch runs meanwhile. Returns what each applied.
async fn reserve_beside_a_cancellation<R, C>(
    db: &TestDb,
    schema: &str,
    order: uuid::Uuid,
    reserve: R,
    cancel: C,
) -> anyhow::Result<String>
where
    R: std::future::Future + Send + 'static,
    C: std::future::Future + Send + 'static,
    R::Output: std::fmt::Debug + Send,
    C::Output: std::fmt::Debug + Send,
{
    let mut blocker = db.pool.begin().await?;
    sqlx::query(&format!(
        "INSERT INTO {schema}.answers (order_id, request, event_id, event_type, schema_version,
                                       aggregate_type, aggregate_id, occurred_at, payload)
         VALUES ($1, 'OrderCreated', gen_random_uuid(), 'Answer', 1, 'Answer', $1::text, now(),
                 '{{}}')"
    ))
    .bind(order)
    .execute(&mut *blocker)
    .await?;
    let reserving = tokio::spawn(reserve);
    wait_until(
        Duration::from_secs(10),
        "the reserving batch waits inside its write",
        || async { Ok(waiting_on(db, "transactionid").await? == 1) },
    )
    .await?;
    let cancelling = tokio::spawn(cancel);
    // It waits for the order's lock, or (without one) decides at once.
    wait_until(
        Duration::from_secs(10),
        "the cancelling batch decides or waits for the order",
        || async { Ok(cancelling.is_finished() || waiting_on(db, "advisory").await? == 1) },
    )
    .await?;
    blocker.rollback().await?;
    let reserved = reserving.await?;
    let released = cancelling.await?;
    Ok(format!("{reserved:?}, then {released:?}"))
}

/// The inventory's batches for one order at once: the cancellation waits for
/// the reservation's transaction, then releases it. Without the order lock it
/// decides meanwhile, finds nothing to release, and the stock stays held for a
/// cancelled order.
#[tokio::test]
async fn a_cancellation_beside_its_order_s_uncommitted_reservation_releases_it(
) -> anyhow::Result<()> {
    let db = TestDb::fresh().await?;
    sqlx::query("INSERT INTO inventory.stock (sku, available, price_cents) VALUES ('W-1', 5, 100)")
        .execute(&db.pool)
        .await?;
    let order = contracts::OrderId::new();
    let create = inventory_consumer::Job {
        event_id: uuid::Uuid::now_v7(),
        traceparent: None,
        command: inventory_consumer::Command::Reserve {
            order_id: order,
            lines: vec![inventory_consumer::Line {
                sku: contracts::Sku::parse("W-1")?,
                quantity: contracts::Quantity::try_from(2_i64)?,
                unit_price_cents: 100,
            }],
        },
    };
    let cancel = inventory_consumer::Job {
        event_id: uuid::Uuid::now_v7(),
        traceparent: None,
        command: inventory_consumer::Command::Release { order_id: order },
    };
    let (a, b) = (db.pool.clone(), db.pool.clone());
    let applied = reserve_beside_a_cancellation(
        &db,
        "inventory",
        order.as_uuid(),
        async move { inventory_consumer::apply(&a, &[create]).await },
        async move { inventory_consumer::apply(&b, &[cancel]).await },
    )
    .await?;
    let (available, held): (i32, i32) =
        sqlx::query_as("SELECT available, reserved FROM inventory.stock WHERE sku = 'W-1'")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(
        (available, held),
        (5, 0),
        "no stock held for the cancelled order ({applied})"
    );
    Ok(())
}

/// The same for the customer service's credit.
#[tokio::test]
async fn a_cancellation_beside_its_order_s_uncommitted_credit_releases_it() -> anyhow::Result<()> {
    let db = TestDb::fresh().await?;
    let order = contracts::OrderId::new();
    let create = customers_consumer::Job {
        event_id: uuid::Uuid::now_v7(),
        traceparent: None,
        command: customers_consumer::Command::Reserve {
            order_id: order,
            customer: contracts::CustomerId::parse("race-1")?,
            total_cents: 300,
        },
    };
    let cancel = customers_consumer::Job {
        event_id: uuid::Uuid::now_v7(),
        traceparent: None,
        command: customers_consumer::Command::Release { order_id: order },
    };
    let (a, b) = (db.pool.clone(), db.pool.clone());
    let applied = reserve_beside_a_cancellation(
        &db,
        "customers",
        order.as_uuid(),
        async move { customers_consumer::apply(&a, &[create], 1_000).await },
        async move { customers_consumer::apply(&b, &[cancel], 1_000).await },
    )
    .await?;
    let reserved: i64 = sqlx::query_scalar(
        "SELECT reserved_cents FROM customers.credit WHERE customer_id = 'race-1'",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(
        reserved, 0,
        "no credit held for the cancelled order ({applied})"
    );
    Ok(())
}
