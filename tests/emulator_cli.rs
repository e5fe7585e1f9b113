//! The emulator's operator commands against a running system: a record that
//! keeps failing ends in the dead-letter stream, `dlq list` / `show` /
//! `summary` show it, `dlq redrive` counts its redrives, refuses one too many,
//! and brings it back once the cause is fixed; `streams` and `outbox` report.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::time::Duration;

use emulator::cli::Format;
use serde_json::json;
use shared::source::{RedrivePolicy, Selection};
use tests::wait_until;
use tests::{redis_url, Answer, ApiRequest, TestDb};

#[tokio::test]
async fn a_dead_lettered_event_is_listed_shown_and_redriven() -> anyhow::Result<()> {
    let db = TestDb::fresh().await?;
    sqlx::query(
        "INSERT INTO inventory.stock (sku, available, price_cents) VALUES ('LAMP-1', 5, 10)",
    )
    .execute(&db.pool)
    .await?;
    // The inventory database fails every write for now, retryably, and the
    // failure is the record's (a lock not available), not a store outage, which
    // the source would wait out instead of using up attempts.
    sqlx::raw_sql(
        "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'disk trouble' USING ERRCODE = '55P03'; END $$;
         CREATE TRIGGER fail BEFORE INSERT ON inventory.processed_events
           FOR EACH ROW EXECUTE FUNCTION fail();",
    )
    .execute(&db.pool)
    .await?;
    let running = tests::emulated::start(
        &db,
        emulator::system::Mode::InProcess,
        &[("MAXIMUM_RETRY_ATTEMPTS", "1")],
    )
    .await?;
    let ns = running.namespace.clone();
    let api = create_order::Deps {
        pool: db.pool.clone(),
        idempotency_ttl: Duration::from_secs(60),
    };
    let body = json!({"items":[{"sku":"LAMP-1","quantity":1,"unit_price_cents":10}]});
    let created = Answer::from(
        create_order::handle(&api, ApiRequest::post_orders(&body.to_string()).build()).await,
    );
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap_or_default().to_owned();

    let redis = shared::relay::connect_redis(&redis_url(), Duration::from_secs(5)).await?;
    let dead = shared::source::DeadLetters::new(redis.clone(), &ns, inventory_consumer::GROUP);
    wait_until(
        Duration::from_secs(30),
        "the event is dead-lettered",
        || async { Ok(dead.count().await? == 1) },
    )
    .await?;
    let mut out = Vec::new();
    emulator::cli::dlq_list(
        &redis,
        &ns,
        &[inventory_consumer::GROUP, order_saga::GROUP],
        10,
        Format::Text,
        &mut out,
    )
    .await?;
    let listed = String::from_utf8(out)?;
    assert!(listed.contains("(1 dead letters)"), "{listed}");
    assert!(listed.contains("OrderCreated"), "{listed}");
    assert!(listed.contains("disk trouble"), "{listed}");
    assert!(listed.contains("attempts 2"), "{listed}");
    // The same, as JSON for scripts.
    let mut out = Vec::new();
    emulator::cli::dlq_list(
        &redis,
        &ns,
        &[inventory_consumer::GROUP],
        10,
        Format::Json,
        &mut out,
    )
    .await?;
    let listed: serde_json::Value = serde_json::from_slice(&out)?;
    let group = &listed["groups"][0];
    assert_eq!(group["group"], inventory_consumer::GROUP, "{listed}");
    assert_eq!(group["total"], 1, "{listed}");
    let letter = &group["letters"][0];
    assert_eq!(letter["event_type"], "OrderCreated", "{listed}");
    assert_eq!(letter["aggregate_id"], id.as_str(), "{listed}");
    assert_eq!(letter["attempts"], 2, "{listed}");
    assert!(
        letter["error"]
            .as_str()
            .is_some_and(|e| e.contains("disk trouble")),
        "{listed}"
    );
    assert!(
        listed["streams"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["length"] == 1)),
        "{listed}"
    );
    let letter = dead.list(None, 1).await?.remove(0);
    let mut out = Vec::new();
    emulator::cli::dlq_show(&redis, &ns, inventory_consumer::GROUP, &letter.id, &mut out).await?;
    let shown = String::from_utf8(out)?;
    assert!(shown.contains(&format!("aggregate_id = {id}")), "{shown}");

    // A summary groups the dead letters by kind.
    let mut out = Vec::new();
    emulator::cli::dlq_summary(
        &redis,
        &ns,
        inventory_consumer::GROUP,
        Format::Json,
        &mut out,
    )
    .await?;
    let kinds: serde_json::Value = serde_json::from_slice(&out)?;
    assert_eq!(kinds.as_array().map(Vec::len), Some(1), "{kinds}");
    assert_eq!(kinds[0]["event_type"], "OrderCreated", "{kinds}");
    assert_eq!(kinds[0]["count"], 1, "{kinds}");
    let error = kinds[0]["error"].as_str().unwrap_or_default().to_owned();
    let hour = kinds[0]["hour"].as_str().unwrap_or_default().to_owned();

    // A dry run of that kind changes nothing and says what would happen.
    let of_kind = Selection::Where(shared::source::Filter {
        error: Some(error.clone()),
        event_type: Some("OrderCreated".into()),
        hour: Some(hour),
    });
    let once = RedrivePolicy::new(1);
    let dry = RedrivePolicy {
        dry_run: true,
        ..once
    };
    let (mut out, mut progress) = (Vec::new(), Vec::new());
    let report = emulator::cli::dlq_redrive(
        &redis,
        &ns,
        inventory_consumer::GROUP,
        &of_kind,
        &dry,
        &mut out,
        &mut progress,
    )
    .await?;
    assert_eq!(report.total(), 1);
    let said = String::from_utf8(out)?;
    assert!(said.contains("would be redriven (dry run"), "{said}");
    assert!(said.contains(&format!("1 to {ns}:{{Order:0}}")), "{said}");
    assert_eq!(dead.count().await?, 1, "a dry run changes nothing");
    assert_eq!(dead.list(None, 1).await?[0].redrives, 0);

    // Redriven before the cause is fixed, it fails again: it comes back
    // dead-lettered, counted once. DLQ_MAX_REDRIVES 1 then refuses it...
    let redriven = dead.redrive(&of_kind, &once, |_, _| {}).await?;
    assert_eq!(redriven.total(), 1);
    wait_until(
        Duration::from_secs(30),
        "the event is dead-lettered again",
        || async { Ok(dead.count().await? == 1) },
    )
    .await?;
    let again = dead.list(None, 1).await?.remove(0);
    assert_eq!(again.redrives, 1, "the count follows the record");
    assert_eq!(again.error, error);
    let (mut out, mut progress) = (Vec::new(), Vec::new());
    let refused = emulator::cli::dlq_redrive(
        &redis,
        &ns,
        inventory_consumer::GROUP,
        &Selection::All,
        &once,
        &mut out,
        &mut progress,
    )
    .await?;
    assert_eq!(refused.total(), 0);
    assert_eq!(refused.refused.len(), 1);
    assert!(
        String::from_utf8(out)?.contains("1 refused: redriven 1 times already"),
        "{refused:?}"
    );
    assert_eq!(dead.count().await?, 1, "a refused record stays");

    // ...until the cause is fixed and the operator forces it.
    sqlx::query("DROP TRIGGER fail ON inventory.processed_events")
        .execute(&db.pool)
        .await?;
    let forced = RedrivePolicy {
        force: true,
        ..once
    };
    let (mut out, mut progress) = (Vec::new(), Vec::new());
    let report = emulator::cli::dlq_redrive(
        &redis,
        &ns,
        inventory_consumer::GROUP,
        &Selection::All,
        &forced,
        &mut out,
        &mut progress,
    )
    .await?;
    assert_eq!(report.total(), 1);
    assert!(String::from_utf8(progress)?.contains("looked at 1/1"));
    wait_until(
        Duration::from_secs(30),
        "the order is confirmed",
        || async {
            let got =
                Answer::from(create_order::handle(&api, ApiRequest::get_order(&id).build()).await);
            Ok(got.json()["status"] == "CONFIRMED")
        },
    )
    .await?;
    assert_eq!(dead.count().await?, 0);

    let mut out = Vec::new();
    emulator::cli::streams(&redis, &ns, Format::Text, &mut out).await?;
    let streams = String::from_utf8(out)?;
    assert!(streams.contains(&format!("{ns}:{{Order:0}}")), "{streams}");
    assert!(streams.contains("group inventory"), "{streams}");
    let mut out = Vec::new();
    emulator::cli::streams(&redis, &ns, Format::Json, &mut out).await?;
    let streams: serde_json::Value = serde_json::from_slice(&out)?;
    let order = streams
        .as_array()
        .and_then(|s| s.iter().find(|s| s["key"] == format!("{ns}:{{Order:0}}")))
        .expect("the Order stream");
    let inventory = order["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "inventory"))
        .expect("the inventory group");
    assert_eq!(inventory["pending"], 0, "{streams}");
    assert_eq!(inventory["lag"], 0, "{streams}");
    let relay = shared::relay::Relay::new(db.pool.clone(), redis.clone(), tests::relay_options());
    let mut out = Vec::new();
    emulator::cli::outbox(&relay, Format::Text, &mut out).await?;
    let outbox = String::from_utf8(out)?;
    assert!(
        outbox.contains("orders.outbox") && outbox.contains("pending 0"),
        "{outbox}"
    );
    let mut out = Vec::new();
    emulator::cli::outbox(&relay, Format::Json, &mut out).await?;
    let outbox: serde_json::Value = serde_json::from_slice(&out)?;
    assert_eq!(outbox[0]["outbox"], "orders.outbox", "{outbox}");
    assert_eq!(outbox[0]["pending"], 0, "{outbox}");
    assert_eq!(outbox[0]["failed"], 0, "{outbox}");
    // Purging what is not there purges nothing; an unknown group is one clear error.
    let mut out = Vec::new();
    let purged =
        emulator::cli::dlq_purge(&redis, &ns, "inventory", &Selection::All, true, &mut out).await?;
    assert_eq!(purged, 0);
    let template = emulator::template::parse(include_str!("../template.yaml"))?;
    let groups = emulator::cli::groups(&template);
    assert_eq!(groups, ["inventory", "customers", "order-saga"]);
    let err = emulator::cli::check_group("nope", &groups).expect_err("unknown group");
    assert!(err.to_string().contains("unknown consumer group"), "{err}");
    running.stop().await
}

/// `GET /_emulator/status` (and so `emulator wait-idle`) sees each place work
/// can be: an outbox row, a stream entry not yet read, one read and not yet
/// acknowledged; and only then says idle.
#[tokio::test]
async fn the_status_sees_work_in_the_outbox_unread_and_unacknowledged() -> anyhow::Result<()> {
    let db = TestDb::fresh().await?;
    let ns = tests::unique_namespace();
    let redis = shared::relay::connect_redis(&redis_url(), Duration::from_secs(5)).await?;
    let options = shared::relay::RelayOptions {
        stream_namespace: ns.clone(),
        ..tests::relay_options()
    };
    let source = emulator::status::Source {
        relay: shared::relay::Relay::new(db.pool.clone(), redis.clone(), options),
        redis: redis.clone(),
        namespace: ns.clone(),
    };
    let functions = emulator::functions::Functions::default();
    let idle = |status: &emulator::status::Status| status.idle;
    assert!(idle(&source.read(&functions).await?), "nothing yet");

    tests::raw_create_order(&db.pool, "c-1").await?;
    let status = source.read(&functions).await?;
    assert!(!idle(&status), "{status:?}");
    assert_eq!(status.outboxes[0].pending, 1, "{status:?}");
    sqlx::query("DELETE FROM orders.outbox")
        .execute(&db.pool)
        .await?;

    let stream = format!("{ns}:{{Order:0}}");
    let mut conn = redis.clone();
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("inventory")
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(&mut conn)
        .await?;
    let id: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await?;
    let status = source.read(&functions).await?;
    assert!(!idle(&status), "unread: {status:?}");
    assert_eq!(status.groups[0].lag, Some(1), "{status:?}");

    redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("inventory")
        .arg("c")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async::<redis::Value>(&mut conn)
        .await?;
    let status = source.read(&functions).await?;
    assert!(!idle(&status), "unacknowledged: {status:?}");
    assert_eq!(status.groups[0].pending, 1, "{status:?}");

    redis::cmd("XACK")
        .arg(&stream)
        .arg("inventory")
        .arg(&id)
        .query_async::<()>(&mut conn)
        .await?;
    assert!(idle(&source.read(&functions).await?), "all done");
    redis::cmd("DEL")
        .arg(&stream)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}
