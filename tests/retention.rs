//! Retention against real PostgreSQL and Redis: every purge removes what is old,
//! keeps what is not, and deletes at most its bound per run; the inboxes outlive
//! every copy of an event that can still be redriven; dead letters are trimmed
//! by age; failed outbox rows are counted and deleted only when asked.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::time::{Duration, Instant};

use anyhow::Result;
use order_service::retention::purge_order_service;
use shared::config::Env;
use shared::inbox;
use shared::relay::RelayOptions;
use shared::retention::RetentionConfig;
use tests::{redis_url, unique_namespace, TestDb};
use uuid::Uuid;

/// A small bound, so a test can reach it: 10 rows a statement, 2 statements a run.
fn bounded() -> RetentionConfig {
    RetentionConfig {
        batch_size: 10,
        max_batches: 2,
        ..RetentionConfig::default()
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

/// Adds `n` rows to each retained table, all `hours` old (idempotency keys:
/// expired `hours` ago; a negative `hours` is in the future), as literal SQL
/// of the test only.
async fn seed(db: &TestDb, n: i64, hours: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO orders.idempotency_keys
             (key, fingerprint, response_status, response_headers, response_body, expires_at)
         SELECT gen_random_uuid()::text, '\\x00', 201, '[]', '', now() - make_interval(hours => $2::int)
         FROM generate_series(1, $1)",
    )
    .bind(n)
    .bind(hours)
    .execute(&db.pool)
    .await?;
    for table in ["orders.processed_events", "inventory.processed_events"] {
        sqlx::query(&format!(
            "INSERT INTO {table} (consumer, event_id, processed_at)
             SELECT 'c', gen_random_uuid(), now() - make_interval(hours => $2::int)
             FROM generate_series(1, $1)"
        ))
        .bind(n)
        .bind(hours)
        .execute(&db.pool)
        .await?;
    }
    sqlx::query(
        "INSERT INTO inventory.cancelled_orders (order_id, cancelled_at)
         SELECT gen_random_uuid(), now() - make_interval(hours => $2::int)
         FROM generate_series(1, $1)",
    )
    .bind(n)
    .bind(hours)
    .execute(&db.pool)
    .await?;
    sqlx::query(
        "INSERT INTO inventory.answers (order_id, request, event_id, event_type, schema_version,
                                        aggregate_type, aggregate_id, occurred_at, payload, answered_at)
         SELECT gen_random_uuid(), 'OrderCreated', gen_random_uuid(), 'InventoryReserved', 1,
                'Reservation', 'x', now(), '{}', now() - make_interval(hours => $2::int)
         FROM generate_series(1, $1)",
    )
    .bind(n)
    .bind(hours)
    .execute(&db.pool)
    .await?;
    Ok(())
}

const TABLES: [&str; 5] = [
    "orders.idempotency_keys",
    "orders.processed_events",
    "inventory.processed_events",
    "inventory.cancelled_orders",
    "inventory.answers",
];

async fn counts(db: &TestDb) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for table in TABLES {
        out.push(db.count(table).await?);
    }
    Ok(out)
}

/// A scheduled invocation of inventory-retention with a minute left.
fn scheduled(
) -> Result<lambda_runtime::LambdaEvent<aws_lambda_events::cloudwatch_events::CloudWatchEvent>> {
    let payload = serde_json::from_str(include_str!("fixtures/scheduled-event.json"))?;
    let now_ms = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)?;
    let mut context = lambda_runtime::Context::default();
    context.deadline = now_ms + 60_000;
    Ok(lambda_runtime::LambdaEvent::new(payload, context))
}

/// Each purge (idempotency keys, both inboxes, cancelled orders, answers)
/// deletes what is past its retention, at most `batch_size × max_batches`
/// rows per table per run, says which tables it left unfinished, and keeps
/// every row within retention, however close to the limit.
#[tokio::test]
async fn each_purge_removes_the_old_keeps_the_recent_and_stops_at_its_bound() -> Result<()> {
    let db = TestDb::fresh().await?;
    seed(&db, 25, 600).await?; // 25 old rows per table: past 552 h, keys expired
    seed(&db, 7, 551).await?; // 7 within 552 h; keys expired too (551 h ago)
    seed(&db, 3, -1).await?; // 3 fresh rows; keys that expire in an hour
    assert_eq!(counts(&db).await?, vec![35; 5]);
    let config = bounded();

    // The order service's purges, one run: 20 rows each, no more.
    let order = purge_order_service(&db.pool, &config).await?;
    assert_eq!(order.deleted["orders.idempotency_keys"], 20);
    assert_eq!(order.deleted["orders.processed_events"], 20);
    assert_eq!(
        order.unfinished,
        ["orders.idempotency_keys", "orders.processed_events"]
    );
    // The inventory service's, through its function's handler.
    let deps = inventory_retention::Deps {
        pool: db.pool.clone(),
        retention: config.clone(),
        safety_margin: Duration::from_secs(3),
    };
    let inventory = inventory_retention::handle(&deps, scheduled()?).await?;
    for table in [
        "inventory.processed_events",
        "inventory.cancelled_orders",
        "inventory.answers",
    ] {
        assert_eq!(inventory.deleted[table], 20, "{table}");
    }
    assert_eq!(inventory.unfinished.len(), 3);
    assert_eq!(counts(&db).await?, vec![15; 5]);

    // The next runs finish: every key past `expires_at` goes (old and 551 h),
    // and of the other tables only what is past 552 h.
    let order = purge_order_service(&db.pool, &config).await?;
    assert_eq!(order.deleted["orders.idempotency_keys"], 12);
    assert_eq!(order.deleted["orders.processed_events"], 5);
    assert!(order.unfinished.is_empty(), "{order:?}");
    let inventory = inventory_retention::handle(&deps, scheduled()?).await?;
    assert_eq!(inventory.total(), 15);
    assert!(inventory.unfinished.is_empty(), "{inventory:?}");
    assert_eq!(counts(&db).await?, vec![3, 10, 10, 10, 10]);

    // Nothing old is left: a run deletes nothing more.
    assert_eq!(purge_order_service(&db.pool, &config).await?.total(), 0);
    let summary = inventory_retention::handle(&deps, scheduled()?).await?;
    assert_eq!(summary.total(), 0);
    let json = serde_json::to_value(&summary)?;
    assert_eq!(json["deleted"]["inventory.answers"], 0);
    Ok(())
}

/// A run starts no statement once its stop time has come: with no time
/// left, nothing is deleted and every table is left for the next run.
#[tokio::test]
async fn a_run_without_time_left_deletes_nothing() -> Result<()> {
    let db = TestDb::fresh().await?;
    seed(&db, 5, 600).await?;
    let summary = inventory_consumer::retention::purge_inventory_service(
        &db.pool,
        &RetentionConfig::default(),
        Instant::now(),
    )
    .await?;
    assert_eq!(summary.total(), 0);
    assert_eq!(summary.unfinished.len(), 3);
    assert_eq!(counts(&db).await?, vec![5; 5]);
    Ok(())
}

/// The configuration refuses an inbox retention that a redrive could outlive
/// (not longer than stream retention plus dead-letter retention, both read
/// from the same environment), naming the three variables.
#[test]
fn the_config_refuses_an_inbox_retention_a_redrive_could_outlive() {
    let refused = |pairs: &[(&str, &str)]| {
        let env = Env::from_pairs(pairs.iter().copied());
        let err = RetentionConfig::from_env(&env).expect_err("must be refused");
        let text = err.to_string();
        for var in [
            "INBOX_RETENTION_HOURS",
            "STREAM_RETENTION_HOURS",
            "DLQ_RETENTION_HOURS",
        ] {
            assert!(text.contains(var), "{var} not named in {text}");
        }
    };
    refused(&[("INBOX_RETENTION_HOURS", "504")]); // exactly 168 + 336
    refused(&[("INBOX_RETENTION_HOURS", "100")]);
    // The default inbox retention against longer stream and dead-letter retentions.
    refused(&[
        ("STREAM_RETENTION_HOURS", "300"),
        ("DLQ_RETENTION_HOURS", "300"),
    ]);
    refused(&[
        ("STREAM_RETENTION_HOURS", "24"),
        ("DLQ_RETENTION_HOURS", "48"),
        ("INBOX_RETENTION_HOURS", "72"),
    ]);

    let accepted = |pairs: &[(&str, &str)]| {
        RetentionConfig::from_env(&Env::from_pairs(pairs.iter().copied()))
            .expect("a retention no redrive can outlive")
    };
    assert_eq!(
        accepted(&[]).inbox_retention,
        Duration::from_secs(552 * 3600)
    );
    assert_eq!(
        accepted(&[("INBOX_RETENTION_HOURS", "505")]).inbox_retention,
        Duration::from_secs(505 * 3600)
    );
    accepted(&[
        ("STREAM_RETENTION_HOURS", "24"),
        ("DLQ_RETENTION_HOURS", "48"),
        ("INBOX_RETENTION_HOURS", "73"),
    ]);
}

/// An event that can still be redriven (its inbox row as old as stream
/// retention plus dead-letter retention) is still recognised after a purge:
/// applied once, purged, applied again, it is not fresh. One past the inbox
/// retention is forgotten (so the purge did run).
#[tokio::test]
async fn a_redriven_event_is_still_recognised_after_the_purge() -> Result<()> {
    let db = TestDb::fresh().await?;
    let config = RetentionConfig::default();
    let redrivable = config.stream_retention + config.dlq_retention;
    assert_eq!(redrivable, Duration::from_secs(504 * 3600));
    for inbox in [&order_service::INBOX, &inventory_service::INBOX] {
        let (redriven, forgotten) = (Uuid::now_v7(), Uuid::now_v7());
        let mut tx = db.pool.begin().await?;
        let fresh = inbox::record(&mut tx, inbox, "consumer", &[redriven, forgotten]).await?;
        tx.commit().await?;
        assert_eq!(fresh.len(), 2);
        // Time passes: the first was applied as long ago as a redrive can come.
        let aging = format!(
            "UPDATE {} SET processed_at = now() - make_interval(hours => $2::int)
             WHERE event_id = $1",
            inbox.table()
        );
        let age = |id: Uuid, hours: i64| sqlx::query(&aging).bind(id).bind(hours).execute(&db.pool);
        age(redriven, 504).await?;
        age(forgotten, 553).await?;

        if *inbox == order_service::INBOX {
            purge_order_service(&db.pool, &config).await?;
        } else {
            inventory_consumer::retention::purge_inventory_service(&db.pool, &config, far())
                .await?;
        }

        // The same events again, as a redrive delivers them.
        let mut tx = db.pool.begin().await?;
        let fresh = inbox::record(&mut tx, inbox, "consumer", &[redriven, forgotten]).await?;
        tx.commit().await?;
        assert!(
            !fresh.contains(&redriven),
            "{}: a redriven event was applied twice",
            inbox.table()
        );
        assert!(
            fresh.contains(&forgotten),
            "{}: the purge left a row past retention",
            inbox.table()
        );
    }
    Ok(())
}

/// Dead letters within `DLQ_RETENTION_HOURS` are kept, older ones trimmed,
/// in every dead-letter stream of the namespace (and only there); `dlq list`
/// shows each stream with its length and the age of its oldest entry.
#[tokio::test]
async fn dead_letters_are_trimmed_by_age() -> Result<()> {
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    let client = redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let now_ms = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)?;
    let hours_ago = |h: u64| format!("{}-0", now_ms - h * 3_600_000);
    let (inventory, saga) = (
        shared::source::dead_letter_key(&ns, "inventory"),
        shared::source::dead_letter_key(&ns, "order-saga"),
    );
    // 15 days and 14 days + 1 h old: past retention; 13 days old: within.
    for (key, id) in [
        (&inventory, hours_ago(360)),
        (&inventory, hours_ago(337)),
        (&inventory, hours_ago(312)),
        (&saga, hours_ago(400)),
    ] {
        let _: String = redis::cmd("XADD")
            .arg(key)
            .arg(id)
            .arg("f")
            .arg("v")
            .query_async(&mut conn)
            .await?;
    }
    // An event stream as old: its own retention (and groups) decide, not this one.
    let events = format!("{ns}:{{Order:0}}");
    let _: String = redis::cmd("XADD")
        .arg(&events)
        .arg(hours_ago(400))
        .arg("f")
        .arg("v")
        .query_async(&mut conn)
        .await?;

    let redis = shared::relay::connect_redis(&redis_url(), Duration::from_secs(5)).await?;
    let overview = shared::source::dead_letter_streams(&mut redis.clone(), &ns).await?;
    assert_eq!(overview.len(), 2, "{overview:?}");
    assert_eq!(
        (overview[0].group.as_str(), overview[0].length),
        ("inventory", 3)
    );
    let relay = tests::relay(
        &db.pool,
        &redis_url(),
        RelayOptions {
            stream_namespace: ns.clone(),
            stream_retention: Duration::from_secs(10_000 * 3600),
            ..tests::relay_options()
        },
    )
    .await?;
    assert_eq!(
        relay.options().dlq_retention,
        Duration::from_secs(336 * 3600)
    );
    assert_eq!(relay.trim_streams().await?, 3);

    let len = |key: String| {
        let client = client.clone();
        async move {
            let mut conn = client.get_multiplexed_async_connection().await?;
            anyhow::Ok(
                redis::cmd("XLEN")
                    .arg(key)
                    .query_async::<u64>(&mut conn)
                    .await?,
            )
        }
    };
    assert_eq!(
        len(inventory.clone()).await?,
        1,
        "the 13-day-old dead letter stays"
    );
    assert_eq!(len(saga.clone()).await?, 0);
    assert_eq!(
        len(events.clone()).await?,
        1,
        "event streams keep their own retention"
    );
    let overview = shared::source::dead_letter_streams(&mut redis.clone(), &ns).await?;
    let oldest = overview[0].oldest_age_ms.unwrap_or_default();
    assert!(
        (312 * 3_600_000..313 * 3_600_000).contains(&oldest),
        "oldest {oldest} ms"
    );

    let mut out = Vec::new();
    emulator::cli::dlq_list(
        &redis,
        &ns,
        &[inventory_consumer::GROUP, order_saga::GROUP],
        5,
        emulator::cli::Format::Text,
        &mut out,
    )
    .await?;
    let listed = String::from_utf8(out)?;
    assert!(listed.contains(&inventory), "{listed}");
    assert!(listed.contains("length 1"), "{listed}");
    assert!(listed.contains("oldest 13d 0h"), "{listed}");

    let _: u64 = redis::cmd("DEL")
        .arg(&inventory)
        .arg(&saga)
        .arg(&events)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Failed outbox rows are kept by every run, counted per outbox in
/// `OutboxFailedRows`, and deleted only by an explicit, confirmed purge,
/// which never touches a pending row.
#[tokio::test]
async fn failed_outbox_rows_are_counted_and_purged_only_when_asked() -> Result<()> {
    // The recorder `/metrics` reads, before the relay records.
    let _installed = emulator::metrics::handle();
    let db = TestDb::fresh().await?;
    let ns = unique_namespace();
    // Three rows in the orders outbox, two of them set aside as failed.
    let mut ids = Vec::new();
    for i in 0..3 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO orders.outbox (event_id, event_type, schema_version, aggregate_type,
                                        aggregate_id, occurred_at, payload)
             VALUES (gen_random_uuid(), 'TestHappened', 1, 'Order', $1, now(), '{}')
             RETURNING id",
        )
        .bind(format!("agg-{i}"))
        .fetch_one(&db.pool)
        .await?;
        ids.push(id);
    }
    sqlx::query(
        "UPDATE orders.outbox SET failed_at = now(), attempts = 1, last_error = 'too big'
         WHERE id = ANY($1)",
    )
    .bind(&ids[..2])
    .execute(&db.pool)
    .await?;
    let relay = tests::relay(
        &db.pool,
        &redis_url(),
        RelayOptions {
            stream_namespace: ns.clone(),
            ..tests::relay_options()
        },
    )
    .await?;
    let summary = relay.drain_until(far()).await?;
    assert_eq!(summary.published, 1);
    assert_eq!(summary.backlog["orders.outbox"].failed, 2);
    // The gauge, as the emulator's `/metrics` shows it.
    let failed = |outbox: &str, n: u32| {
        let text = emulator::metrics::render();
        let line =
            format!("outbox_failed_rows{{service=\"outbox-relay\",outbox=\"{outbox}\"}} {n}\n");
        assert!(text.contains(&line), "lacks {line}:\n{text}");
    };
    failed("orders.outbox", 2);
    failed("inventory.outbox", 0);

    // Unconfirmed, the command only says what it would do.
    let mut out = Vec::new();
    let rows = emulator::cli::FailedRows::Ids(vec![ids[0]]);
    let n =
        emulator::cli::outbox_purge_failed(&relay, &order_service::OUTBOX, &rows, false, &mut out)
            .await?;
    assert_eq!(n, 0);
    assert!(String::from_utf8(out)?.contains("--yes"));
    assert_eq!(db.count("orders.outbox").await?, 2);

    // A pending row's id is ignored; the failed one goes.
    let pending: i64 = sqlx::query_scalar(
        "INSERT INTO orders.outbox (event_id, event_type, schema_version, aggregate_type,
                                    aggregate_id, occurred_at, payload)
         VALUES (gen_random_uuid(), 'TestHappened', 1, 'Order', 'agg-9', now(), '{}')
         RETURNING id",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(
        relay
            .purge_failed(&order_service::OUTBOX, &[ids[0], pending])
            .await?,
        1
    );
    let mut out = Vec::new();
    let n = emulator::cli::outbox_purge_failed(
        &relay,
        &order_service::OUTBOX,
        &emulator::cli::FailedRows::All,
        true,
        &mut out,
    )
    .await?;
    assert_eq!(n, 1);
    assert_eq!(db.count("orders.outbox").await?, 1, "the pending row stays");
    relay.drain_until(far()).await?;
    failed("orders.outbox", 0);
    let _: u64 = redis::cmd("DEL")
        .arg(format!("{ns}:{{Order:0}}"))
        .query_async(
            &mut redis::Client::open(redis_url())?
                .get_multiplexed_async_connection()
                .await?,
        )
        .await?;
    Ok(())
}
