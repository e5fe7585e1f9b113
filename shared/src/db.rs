//! The PostgreSQL pool and the embedded migrations.
//!
//! Pools are built once per process (in `main`, or by the emulator and the
//! tests) and borrowed by handlers; a handler never builds one.

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::DatabaseConfig;

/// Every service's schema, embedded in the binary. Applying it is idempotent:
/// sqlx records what ran and takes a lock so concurrent runs do not collide.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A pool that connects on first use, so a cold start does not fail (or wait)
/// while the database is briefly away; the first query reports that instead.
pub fn lazy_pool(config: &DatabaseConfig) -> PgPool {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_lazy_with(config.connect_options())
}

/// Applies every migration not yet applied.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}
