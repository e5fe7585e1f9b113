//! The operator commands as a script runs them: results on stdout (as text or
//! `--json`) and nothing else there, logs on stderr; a command that reads (`outbox`) changes no
//! schema, and says what to run when the database is not ready.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::process::{Command, Output};

use sqlx::{Connection as _, PgConnection};

mod common;

use common::{fresh_database, BIN, TEMPLATE};

/// `emulator ARGS` against `database_url`, logging at info.
fn emulator(database_url: &str, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info")
        .output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn tables(database_url: &str) -> anyhow::Result<i64> {
    let mut conn = PgConnection::connect(database_url).await?;
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_one(&mut conn)
    .await?)
}

#[tokio::test]
async fn outbox_reads_without_migrating_and_prints_only_its_report_on_stdout() -> anyhow::Result<()>
{
    let url = fresh_database().await?;

    // Not migrated: a clear error, and the database is left as it was.
    let refused = emulator(&url, &["outbox", "--template", TEMPLATE])?;
    let stderr = text(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("lacks") && stderr.contains("emulator migrate"),
        "{stderr}"
    );
    assert_eq!(text(&refused.stdout), "", "nothing on stdout");
    assert_eq!(tables(&url).await?, 0, "the command created tables");

    let migrated = emulator(&url, &["migrate"])?;
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    assert_eq!(text(&migrated.stdout), "", "migrate's logs go to stderr");
    let tables_after_migrate = tables(&url).await?;
    assert!(tables_after_migrate > 0);

    // Migrated: the report, one line per outbox of the template, and only it.
    let report = emulator(&url, &["outbox", "--template", TEMPLATE])?;
    let stdout = text(&report.stdout);
    assert!(report.status.success(), "{}", text(&report.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (line, outbox) in
        lines
            .iter()
            .zip(["orders.outbox", "inventory.outbox", "customers.outbox"])
    {
        assert!(
            line.starts_with(outbox) && line.contains("pending 0"),
            "{stdout}"
        );
    }
    assert!(
        !stdout.contains("INFO") && !stdout.contains("NOTICE"),
        "{stdout}"
    );
    assert_eq!(tables(&url).await?, tables_after_migrate);

    // The same figures as JSON, and nothing else on stdout.
    let report = emulator(&url, &["outbox", "--json", "--template", TEMPLATE])?;
    assert!(report.status.success(), "{}", text(&report.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&report.stdout)?;
    let names: Vec<&str> = rows
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["outbox"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        ["orders.outbox", "inventory.outbox", "customers.outbox"]
    );
    assert!(rows
        .as_array()
        .is_some_and(|rows| rows.iter().all(|r| r["pending"] == 0 && r["failed"] == 0)));
    Ok(())
}
