//! Checks of ARCHITECTURE.md's invariants that a build alone does not enforce.

/// The shared core knows no AWS event shapes: it depends on no Lambda crate.
#[test]
fn the_shared_core_depends_on_no_lambda_crate() {
    let manifest = include_str!("../shared/Cargo.toml");
    for forbidden in [
        "lambda_runtime",
        "lambda_http",
        "aws_lambda_events",
        "aws-lambda-events",
    ] {
        assert!(
            !manifest.contains(forbidden),
            "shared/Cargo.toml mentions {forbidden}"
        );
    }
}

/// Money never goes through a float in the domain or the core.
#[test]
fn no_float_on_a_money_path() {
    for (file, text) in [
        (
            "shared/src/domain/money.rs",
            include_str!("../shared/src/domain/money.rs"),
        ),
        (
            "shared/src/domain/order.rs",
            include_str!("../shared/src/domain/order.rs"),
        ),
        (
            "shared/src/events.rs",
            include_str!("../shared/src/events.rs"),
        ),
        (
            "functions/create-order/src/body.rs",
            include_str!("../functions/create-order/src/body.rs"),
        ),
    ] {
        for float in ["f32", "f64"] {
            assert!(!text.contains(float), "{file} uses {float}");
        }
    }
}

/// Every service's outbox has one shape (names, types, nullability, defaults,
/// order), so one relay can drain them all.
#[tokio::test]
async fn every_outbox_table_has_the_same_shape() -> anyhow::Result<()> {
    let db = tests::TestDb::fresh().await?;
    let shape = |schema: &'static str| {
        sqlx::query_as::<_, (String, String, String, Option<String>)>(
            "SELECT column_name::text, data_type::text, is_nullable::text, column_default::text
             FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = 'outbox'
             ORDER BY ordinal_position",
        )
        .bind(schema)
        .fetch_all(&db.pool)
    };
    let orders = shape("orders").await?;
    assert!(orders.len() >= 9, "{orders:?}");
    assert_eq!(orders, shape("inventory").await?);
    Ok(())
}

/// Migrations run at deploy time (the migrate function, a CloudFormation custom
/// resource), never on a function's cold start.
#[test]
fn no_function_migrates_at_cold_start() {
    for (file, text) in [
        (
            "functions/create-order/src/main.rs",
            include_str!("../functions/create-order/src/main.rs"),
        ),
        (
            "functions/create-order/src/lib.rs",
            include_str!("../functions/create-order/src/lib.rs"),
        ),
        (
            "functions/inventory-api/src/main.rs",
            include_str!("../functions/inventory-api/src/main.rs"),
        ),
        (
            "functions/inventory-api/src/lib.rs",
            include_str!("../functions/inventory-api/src/lib.rs"),
        ),
        (
            "functions/outbox-relay/src/main.rs",
            include_str!("../functions/outbox-relay/src/main.rs"),
        ),
        (
            "functions/outbox-relay/src/lib.rs",
            include_str!("../functions/outbox-relay/src/lib.rs"),
        ),
        (
            "functions/inventory-consumer/src/main.rs",
            include_str!("../functions/inventory-consumer/src/main.rs"),
        ),
        (
            "functions/inventory-consumer/src/lib.rs",
            include_str!("../functions/inventory-consumer/src/lib.rs"),
        ),
        (
            "functions/order-saga/src/main.rs",
            include_str!("../functions/order-saga/src/main.rs"),
        ),
        (
            "functions/order-saga/src/lib.rs",
            include_str!("../functions/order-saga/src/lib.rs"),
        ),
        (
            "functions/order-reconciler/src/main.rs",
            include_str!("../functions/order-reconciler/src/main.rs"),
        ),
        (
            "functions/order-reconciler/src/lib.rs",
            include_str!("../functions/order-reconciler/src/lib.rs"),
        ),
        (
            "functions/inventory-retention/src/main.rs",
            include_str!("../functions/inventory-retention/src/main.rs"),
        ),
        (
            "functions/inventory-retention/src/lib.rs",
            include_str!("../functions/inventory-retention/src/lib.rs"),
        ),
    ] {
        for migrating in ["db::migrate", "MIGRATOR"] {
            assert!(!text.contains(migrating), "{file} uses {migrating}");
        }
    }
    let template = include_str!("../template.yaml");
    assert_eq!(
        template.matches("DependsOn: DatabaseMigrations").count(),
        7,
        "every function but MigrateFunction waits for the migrations"
    );
}
