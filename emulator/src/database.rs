//! Zero-configuration PostgreSQL for local runs: without `DATABASE_URL`, use the
//! server on 127.0.0.1:5432 and a database of the emulator's own, created on
//! first run; migrations are applied on every start (idempotent).

use anyhow::Context as _;
use shared::config::{DatabaseConfig, Env};
use sqlx::migrate::MigrateDatabase;
use sqlx::PgPool;

/// Where the emulator keeps its data when nothing is configured.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/orders_local";

/// `DATABASE_URL` and the other `DATABASE_*` variables, or the local default.
pub fn config(env: &Env) -> anyhow::Result<DatabaseConfig> {
    if env.get(DatabaseConfig::URL)?.is_some() {
        return Ok(DatabaseConfig::from_env(env)?);
    }
    let mut pairs = vec![(DatabaseConfig::URL, DEFAULT_DATABASE_URL.to_owned())];
    for var in [
        DatabaseConfig::PASSWORD,
        DatabaseConfig::MAX_CONNECTIONS,
        DatabaseConfig::ACQUIRE_TIMEOUT_MS,
        DatabaseConfig::STATEMENT_TIMEOUT_MS,
    ] {
        if let Some(value) = env.get(var)? {
            pairs.push((var, value.to_owned()));
        }
    }
    Ok(DatabaseConfig::from_env(&Env::from_pairs(pairs))?)
}

/// The database as `emulator up` or `emulator migrate` left it, for a command
/// that only reads or tidies: it creates nothing and migrates nothing, and says
/// so when the database or one of `migrations` is missing.
pub async fn open(
    config: &DatabaseConfig,
    local_url: Option<&str>,
    migrations: &[sqlx::migrate::Migrator],
) -> anyhow::Result<PgPool> {
    if let Some(url) = local_url {
        let exists = sqlx::Postgres::database_exists(url)
            .await
            .with_context(unreachable_hint)?;
        anyhow::ensure!(
            exists,
            "there is no local database yet: `emulator up` or `emulator migrate` creates it"
        );
    }
    let pool = shared::db::lazy_pool(config);
    let missing = shared::db::missing(&pool, migrations)
        .await
        .with_context(unreachable_hint)?;
    if let Some(first) = missing.first() {
        anyhow::bail!(
            "the database lacks {} of the template's migrations (the first is {first}); \
             this command changes no schema: run `emulator migrate` first",
            missing.len()
        );
    }
    Ok(pool)
}

/// Creates the database if it is missing and applies the migrations.
pub async fn prepare(
    config: &DatabaseConfig,
    url_for_create: Option<&str>,
    migrations: Vec<sqlx::migrate::Migrator>,
) -> anyhow::Result<PgPool> {
    if let Some(url) = url_for_create {
        let exists = sqlx::Postgres::database_exists(url)
            .await
            .with_context(unreachable_hint)?;
        if !exists {
            sqlx::Postgres::create_database(url)
                .await
                .context("creating the local database")?;
        }
    }
    let pool = shared::db::lazy_pool(config);
    shared::db::migrate(&pool, migrations)
        .await
        .with_context(unreachable_hint)?;
    Ok(pool)
}

fn unreachable_hint() -> String {
    "PostgreSQL is not reachable. Start it (Debian: `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`; \
     install: `apt-get install postgresql`) or point DATABASE_URL at a server"
        .to_owned()
}
