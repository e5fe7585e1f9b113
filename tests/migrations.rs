//! The migrations: the toolkit's, then each service's own folder, applied by the
//! migrate function into one database; and a database built by the shop's first
//! eight migrations (before services had folders of their own) adopted as it is.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::path::Path;

use anyhow::{ensure, Context as _, Result};
use sqlx::migrate::Migrator;
use tests::TestDb;

/// The schema of `db` as `pg_dump` writes it, without sqlx's history table.
fn schema(db: &TestDb) -> Result<String> {
    let out = std::process::Command::new("pg_dump")
        .args([
            "--schema-only",
            "--exclude-table=_sqlx_migrations",
            "--dbname",
        ])
        .arg(db.url())
        .output()
        .context("running pg_dump (PostgreSQL's client tools)")?;
    ensure!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `\restrict KEY` lines carry a random key per run.
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The first lines where `a` and `b` differ, for a failure message.
fn first_difference(a: &str, b: &str) -> String {
    a.lines()
        .zip(b.lines())
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map_or_else(
            || "one is a prefix of the other".to_owned(),
            |(n, (x, y))| format!("line {}: {x:?} vs {y:?}", n + 1),
        )
}

/// A database that the shop's first eight migrations built (one folder for
/// every service, before each service had its own) is adopted: the services'
/// baselines that replace those eight are recorded, not run; the toolkit's
/// migration runs; and the schema is then exactly a fresh database's. A second
/// run has nothing to do.
#[tokio::test]
async fn a_database_of_the_first_migrations_is_adopted_with_the_same_schema() -> Result<()> {
    let legacy = TestDb::empty().await?;
    let first =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/migrate/tests/legacy-migrations");
    Migrator::new(first).await?.run(&legacy.pool).await?;
    sqlx::query(
        "INSERT INTO inventory.stock (sku, available, price_cents) VALUES ('KEPT-1', 3, 100)",
    )
    .execute(&legacy.pool)
    .await?;

    let applied = migrate::apply(&legacy.pool, "legacy").await?;
    let baselines: Vec<i64> = migrate::service_migrations()
        .iter()
        .flat_map(|(_, m)| m.iter().map(|m| m.version))
        .collect();
    let toolkit: Vec<i64> = shared::db::toolkit_migrations()
        .iter()
        .map(|m| m.version)
        .collect();
    let mut expected: Vec<i64> = toolkit.iter().chain(&baselines).copied().collect();
    expected.sort_unstable();
    assert_eq!(applied.applied, expected);
    // Recorded, not run: a run would have failed on the existing tables, and
    // the row is still there.
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory.stock WHERE sku = 'KEPT-1'")
        .fetch_one(&legacy.pool)
        .await?;
    assert_eq!(kept, 1);

    let fresh = TestDb::fresh().await?;
    let (adopted, new) = (schema(&legacy)?, schema(&fresh)?);
    assert!(
        adopted == new,
        "the adopted schema differs from a fresh one: {}",
        first_difference(&adopted, &new)
    );

    let again = migrate::apply(&legacy.pool, "legacy").await?;
    assert!(again.applied.is_empty(), "{again:?}");
    Ok(())
}

/// A fresh database gets every folder, the toolkit's first; running the
/// migrations again changes nothing.
#[tokio::test]
async fn every_folder_is_applied_once() -> Result<()> {
    let db = TestDb::empty().await?;
    let applied = migrate::apply(&db.pool, "fresh").await?;
    let all: Vec<i64> = shared::db::versions(&migrate::migrations())
        .into_iter()
        .collect();
    assert_eq!(applied.applied, all);
    assert!(migrate::service_migrations()
        .iter()
        .any(|(name, _)| *name == "orders"));
    let outboxes: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables
         WHERE table_name = 'outbox' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await?;
    assert_eq!(
        outboxes,
        ["customers.outbox", "inventory.outbox", "orders.outbox"]
    );
    assert!(migrate::apply(&db.pool, "fresh").await?.applied.is_empty());
    Ok(())
}

/// Every session opened after the migrations plans each statement for its own
/// parameters (`20261130000200_custom_plans.sql`): a server setting, so the
/// functions' pools take it without a client `SET` (which would pin their
/// connections behind RDS Proxy). Measured under load, without it the saga's
/// batch statements on `orders.orders` ran as sequential scans
/// (BENCHMARKS.md, "Issue 14, part three").
#[tokio::test]
async fn sessions_plan_each_statement_for_its_own_parameters() -> Result<()> {
    let db = TestDb::fresh().await?;
    let mut conn = db.pool.acquire().await?;
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(&mut *conn)
        .await?;
    assert_eq!(mode, "force_custom_plan");
    Ok(())
}
