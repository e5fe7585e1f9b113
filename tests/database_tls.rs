//! `sslmode=verify-full` with `DATABASE_SSL_ROOT_CERT=rds` (the RDS CA bundle built
//! into the binaries): the bundle loads, and a server whose certificate no RDS CA
//! signed (the local one, when it has TLS on) is refused, where `require` connects.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use anyhow::{ensure, Result};
use shared::config::{DatabaseConfig, Env};
use sqlx::Connection as _;

fn config(sslmode: &str, root: Option<&str>) -> Result<DatabaseConfig> {
    let url = format!("{}?sslmode={sslmode}", tests::admin_url());
    let mut pairs = vec![("DATABASE_URL", url)];
    if let Some(root) = root {
        pairs.push(("DATABASE_SSL_ROOT_CERT", root.to_owned()));
    }
    Ok(DatabaseConfig::from_env(&Env::from_pairs(pairs))?)
}

#[tokio::test]
async fn verify_full_checks_the_server_against_the_rds_bundle() -> Result<()> {
    // Only meaningful against a server with TLS on (the CI's PostgreSQL has it).
    let Ok(conn) =
        sqlx::PgConnection::connect_with(&config("require", None)?.connect_options()).await
    else {
        eprintln!("skipped: the test server does not speak TLS");
        return Ok(());
    };
    conn.close().await?;

    let refused =
        sqlx::PgConnection::connect_with(&config("verify-full", Some("rds"))?.connect_options())
            .await
            .map(|_| ())
            .expect_err("the local certificate is not signed by an RDS CA");
    let text = refused.to_string();
    ensure!(
        text.contains("UnknownIssuer") || text.contains("unknown issuer"),
        "refused for another reason than the issuer (a bundle that did not load?): {text}"
    );
    Ok(())
}
