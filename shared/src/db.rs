//! The PostgreSQL pool, and migrations from several folders into one database.
//!
//! Pools are built once per process (in `main`, or by the emulator and the
//! tests) and borrowed by handlers; a handler never builds one.

use std::collections::BTreeSet;

use sqlx::migrate::{Migrate as _, MigrateError, Migration, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::PgConnection;

use crate::config::DatabaseConfig;

/// The toolkit's own migrations (`shared/migrations`): the `toolkit` schema's
/// `install_outbox` and `install_inbox`, the relay's role. Apply them before
/// the services' migrations, which call them.
pub fn toolkit_migrations() -> Migrator {
    sqlx::migrate!("./migrations")
}

/// The line with which a migration says that it replaces earlier ones:
/// `-- toolkit:replaces 20261124000001 20261124000002`. A database that applied
/// every one of those is recorded as having applied this migration, which is
/// not run there (a baseline, as when a service's migrations are squashed or
/// moved to a folder of its own).
pub const REPLACES: &str = "-- toolkit:replaces ";

/// A pool that connects on first use, so a cold start does not fail (or wait)
/// while the database is briefly away; the first query reports that instead.
pub fn lazy_pool(config: &DatabaseConfig) -> PgPool {
    pool_options(config).connect_lazy_with(config.connect_options())
}

/// The pool's options: `max_connections`, `acquire_timeout`, and a ping only
/// for a connection idle `ping_after_idle` or longer. sqlx pings every
/// connection it hands out by default: a round trip before every transaction,
/// one in five of create-order's. A connection in use under load is known to
/// be alive (one that broke since fails its statement, retryably, and is
/// discarded); one idle through an outage is still checked.
pub fn pool_options(config: &DatabaseConfig) -> PgPoolOptions {
    let ping_after_idle = config.ping_after_idle;
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= ping_after_idle {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// Applies every migration of `sets`, one set after the other, each in version
/// order: the toolkit's first, then each service's folder. They share sqlx's
/// history table (versions are timestamps, unique across folders), so each
/// set ignores the versions of the others. Idempotent; sqlx's lock keeps
/// concurrent runs apart.
pub async fn migrate(pool: &PgPool, sets: Vec<Migrator>) -> Result<(), MigrateError> {
    let mut conn = pool.acquire().await?;
    migrate_on(&mut conn, sets).await
}

/// [`migrate`] on one connection (a detached one: sqlx keeps its lock when a
/// migration fails).
pub async fn migrate_on(conn: &mut PgConnection, sets: Vec<Migrator>) -> Result<(), MigrateError> {
    conn.lock().await?;
    let result = async {
        conn.ensure_migrations_table().await?;
        let applied = conn.list_applied_migrations().await?;
        let done: BTreeSet<i64> = applied.iter().map(|m| m.version).collect();
        for baseline in baselines(sets.iter().flat_map(|s| s.iter()), &done) {
            adopt(conn, baseline).await?;
        }
        for mut set in sets {
            set.set_ignore_missing(true);
            set.run_direct(&mut *conn).await?;
        }
        Ok(())
    }
    .await;
    conn.unlock().await?;
    result
}

/// The up migrations of `sets` that the database has not applied: all of them
/// when it has no migration history at all. Reads only: for the commands that
/// must not change a schema.
pub async fn missing(pool: &PgPool, sets: &[Migrator]) -> Result<BTreeSet<i64>, sqlx::Error> {
    let history: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(pool)
            .await?;
    let applied: BTreeSet<i64> = match history {
        Some(_) => sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect(),
        None => BTreeSet::new(),
    };
    Ok(versions(sets).difference(&applied).copied().collect())
}

/// Every up migration's version in `sets`.
pub fn versions(sets: &[Migrator]) -> BTreeSet<i64> {
    sets.iter()
        .flat_map(|s| s.iter())
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .collect()
}

/// The migrations not applied whose `toolkit:replaces` line names only
/// versions `done` holds: the decision, apart from the database.
fn baselines<'a>(
    migrations: impl Iterator<Item = &'a Migration>,
    done: &BTreeSet<i64>,
) -> Vec<&'a Migration> {
    migrations
        .filter(|m| m.migration_type.is_up_migration() && !done.contains(&m.version))
        .filter(|m| matches!(replaced(&m.sql), Some(r) if !r.is_empty() && r.is_subset(done)))
        .collect()
}

/// The versions a migration's `toolkit:replaces` line names.
fn replaced(sql: &str) -> Option<BTreeSet<i64>> {
    let line = sql.lines().find_map(|l| l.strip_prefix(REPLACES))?;
    line.split_whitespace().map(|v| v.parse().ok()).collect()
}

/// Records `migration` as applied without running it, as sqlx records one.
async fn adopt(conn: &mut PgConnection, migration: &Migration) -> Result<(), MigrateError> {
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, $2, TRUE, $3, 0)",
    )
    .bind(migration.version)
    .bind(&*migration.description)
    .bind(&*migration.checksum)
    .execute(conn)
    .await?;
    tracing::info!(
        version = migration.version,
        description = %migration.description,
        "migration recorded as applied: the ones it replaces are"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baseline_is_adopted_only_where_all_it_replaces_was_applied() {
        let m = |version: i64, sql: &'static str| {
            let simple = sqlx::migrate::MigrationType::Simple;
            Migration::new(version, "m".into(), simple, sql.into(), false)
        };
        let set = [
            m(10, "-- toolkit:replaces 1 2\nCREATE TABLE a ();"),
            m(11, "CREATE TABLE b ();"),
            m(12, "-- note\n-- toolkit:replaces 3\nCREATE TABLE c ();"),
            m(13, "-- toolkit:replaces 1 x\n"),
        ];
        let adopted = |done: &[i64]| -> Vec<i64> {
            let done = done.iter().copied().collect();
            baselines(set.iter(), &done)
                .iter()
                .map(|m| m.version)
                .collect()
        };
        assert_eq!(adopted(&[1, 2, 3]), [10, 12]);
        assert_eq!(adopted(&[1]), Vec::<i64>::new());
        assert_eq!(adopted(&[]), Vec::<i64>::new());
        // Already applied: nothing to record.
        assert_eq!(adopted(&[1, 2, 10]), Vec::<i64>::new());
        assert_eq!(replaced("-- toolkit:replaces 1 x"), None);
    }
}
