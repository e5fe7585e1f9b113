//! Observability of the real function binaries behind the emulator's Runtime
//! API: one trace id on every log line of an order's journey (create-order,
//! relay, inventory-consumer and customers-consumer, relay, order-saga), structured JSON lines with the
//! Lambda fields, X-Ray trace headers honoured, and the metrics they publish as
//! Embedded Metric Format shown on the emulator's `/metrics`.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use tests::TestDb;
use tokio::sync::broadcast::error::TryRecvError;

/// Every JSON line the function processes wrote so far, by function.
fn drain(
    output: &mut tokio::sync::broadcast::Receiver<emulator::runtime::FunctionLine>,
) -> Vec<(String, Value)> {
    let mut lines = Vec::new();
    loop {
        match output.try_recv() {
            Ok(line) if line.stream == "stdout" => {
                if let Ok(value) = serde_json::from_str::<Value>(&line.line) {
                    lines.push((line.function, value));
                }
            }
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty | TryRecvError::Closed) => return lines,
        }
    }
}

#[tokio::test]
async fn one_trace_id_follows_an_order_through_every_function() -> Result<()> {
    let mut output = emulator::runtime::function_output();
    let db = TestDb::fresh().await?;
    let running = tests::emulated::start(&db, tests::emulated::runtime_api()?, &[]).await?;
    let http = tests::client_as("c-trace");
    let put = http
        .put(format!("{}/inventory/DESK-1", running.base))
        .json(&json!({"available": 10, "price_cents": 9900}))
        .send()
        .await?;
    assert_eq!(put.status(), 200);

    let order = json!({"items":[{"sku":"DESK-1","quantity":1,"unit_price_cents":9900}]});
    let w3c_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let xray_trace = "5759e988bd862e3fe1be46a994272793";
    let mut orders: Vec<(&str, String)> = Vec::new();
    for (header, value, expected) in [
        (
            "traceparent",
            format!("00-{w3c_trace}-00f067aa0ba902b7-01"),
            w3c_trace,
        ),
        (
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1".into(),
            xray_trace,
        ),
        // No header: the invocation's own X-Ray trace (Lambda-Runtime-Trace-Id).
        ("x-no-trace", "none".into(), ""),
    ] {
        let created: Value = http
            .post(format!("{}/orders", running.base))
            .header(header, value)
            .json(&order)
            .send()
            .await?
            .json()
            .await?;
        let id = created["id"].as_str().context("an order id")?.to_owned();
        orders.push((expected, id));
    }
    for (_, id) in &orders {
        tests::wait_until(Duration::from_secs(30), "the order is confirmed", || {
            let url = format!("{}/orders/{id}", running.base);
            let http = http.clone();
            async move {
                let order: Value = http.get(url).send().await?.json().await?;
                Ok(order["status"] == "CONFIRMED")
            }
        })
        .await?;
    }
    // The saga's log line is written after its commit; give the last lines a moment.
    let mut lines = Vec::new();
    tests::wait_until(
        Duration::from_secs(10),
        "every order's journey is in the logs",
        || {
            lines.extend(drain(&mut output));
            let done = orders.iter().all(|(_, id)| {
                lines.iter().any(|(function, line)| {
                    function == "OrderSagaFunction" && line.to_string().contains(id.as_str())
                })
            });
            async move { Ok(done) }
        },
    )
    .await?;

    for (expected, id) in &orders {
        // The lines of this order's journey: every line that names the order,
        // but those of the test's own status requests (each a trace of its own).
        let journey: Vec<&(String, Value)> = lines
            .iter()
            .filter(|(_, line)| line.to_string().contains(id.as_str()) && line["method"] != "GET")
            .collect();
        let trace_ids: BTreeSet<&str> = journey
            .iter()
            .map(|(_, line)| line["trace_id"].as_str().unwrap_or("<none>"))
            .collect();
        assert_eq!(
            trace_ids.len(),
            1,
            "one trace id on every line of order {id}'s journey: {journey:#?}"
        );
        let trace_id = *trace_ids.first().context("a journey")?;
        if expected.is_empty() {
            // The create-order invocation's X-Ray trace, read from its own line.
            let created = journey
                .iter()
                .find(|(f, l)| f == "CreateOrderFunction" && l["message"] == "order created")
                .context("create-order's line")?;
            let xray = created.1["xray_trace_id"]
                .as_str()
                .context("the invocation's X-Ray id")?;
            let root = xray
                .split(';')
                .find_map(|p| p.strip_prefix("Root=1-"))
                .context("an X-Ray root")?
                .replace('-', "");
            assert_eq!(
                trace_id, root,
                "without a header, Lambda's trace is continued"
            );
        } else {
            assert_eq!(trace_id, *expected);
        }
        // Create-order, the relay three times (OrderCreated, InventoryReserved,
        // CreditReserved), both participants and the saga all logged on that trace.
        let mut by_function: HashMap<&str, Vec<&str>> = HashMap::new();
        for (function, line) in &journey {
            by_function
                .entry(function.as_str())
                .or_default()
                .push(line["message"].as_str().unwrap_or_default());
        }
        for function in [
            "CreateOrderFunction",
            "OutboxRelayFunction",
            "InventoryConsumerFunction",
            "CustomersConsumerFunction",
            "OrderSagaFunction",
        ] {
            assert!(
                by_function.contains_key(function),
                "{function} logged order {id}: {by_function:#?}"
            );
        }
        let published = &by_function["OutboxRelayFunction"];
        assert_eq!(
            published
                .iter()
                .filter(|m| **m == "event published")
                .count(),
            3,
            "the relay published OrderCreated, InventoryReserved and CreditReserved: {published:?}"
        );
        // The consumers continued the producer's trace with spans of their own.
        for (function, line) in &journey {
            if line["message"] == "event handled" {
                assert!(line["span_id"].is_string(), "{function}: {line}");
                assert!(line["parent_span_id"].is_string(), "{function}: {line}");
                assert_ne!(line["span_id"], line["parent_span_id"]);
            }
        }
    }

    // Every JSON line carries the Lambda fields, and nothing secret.
    for (function, line) in lines.iter().filter(|(_, l)| l.get("_aws").is_none()) {
        for key in ["timestamp", "level", "message", "service", "function_name"] {
            assert!(
                line.get(key).is_some(),
                "{function} line without {key}: {line}"
            );
        }
        assert_eq!(line["function_name"], function.as_str());
        let text = line.to_string();
        assert!(!text.contains("password"), "{text}");
    }
    let cold: Vec<&Value> = lines
        .iter()
        .filter(|(f, l)| f == "CreateOrderFunction" && l["message"] == "answered")
        .map(|(_, l)| l)
        .collect();
    assert!(
        cold.iter().any(|l| l["cold_start"] == true)
            && cold.iter().any(|l| l["cold_start"] == false),
        "the first invocation of an instance is cold, later ones warm: {cold:#?}"
    );

    // The metrics, as EMF lines, and on the emulator's /metrics.
    let emf: Vec<&Value> = lines
        .iter()
        .filter_map(|(_, l)| l.get("_aws").map(|_| l))
        .collect();
    assert!(
        emf.iter()
            .any(|l| l["service"] == "create-order" && l["OrdersCreated"].as_f64() >= Some(1.0)),
        "create-order published OrdersCreated: {emf:#?}"
    );
    let metrics = http
        .get(format!("{}/metrics", running.base))
        .send()
        .await?
        .text()
        .await?;
    for expected in [
        "orders_created_total{service=\"create-order\"}",
        "events_published_total{service=\"outbox-relay\"}",
        "events_processed_total{service=\"inventory-consumer\"}",
        "events_processed_total{service=\"order-saga\"}",
        "cold_starts_total{service=\"create-order\"}",
        "handler_duration_milliseconds_count{service=\"create-order\"}",
        "batch_size_count{service=\"order-saga\"}",
        "outbox_age_seconds{service=\"outbox-relay\"}",
    ] {
        assert!(
            metrics.contains(expected),
            "/metrics lacks {expected}:\n{metrics}"
        );
    }
    running.stop().await
}
