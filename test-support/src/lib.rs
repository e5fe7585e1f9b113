//! What tests need, in the function crates and the integration tests alike:
//! a database of their own ([`TestDb`], on the real PostgreSQL at
//! `TEST_DATABASE_URL`), the Redis at `TEST_REDIS_URL` with a namespace of
//! their own, stream records as a consumer receives them ([`record`]), and
//! [`wait_until`]. Nothing is mocked.

#![allow(clippy::expect_used)] // Test code: `expect` says what it relies on.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use shared::config::DatabaseConfig;
use shared::envelope::{AggregateId, AggregateType, EventEnvelope, EventType, Payload};
use shared::source::StreamRecord;
use shared::trace::TraceParent;
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};

/// The server tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own for one test, migrated, dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub pool: PgPool,
    pub config: DatabaseConfig,
    name: String,
}

/// The test's own pool on the database `config` names.
async fn pool(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let mut config = config.clone();
    config.max_connections = 20;
    config.acquire_timeout = Duration::from_secs(10);
    Ok(shared::db::pool_options(&config)
        .connect_with(config.connect_options())
        .await?)
}

impl TestDb {
    /// A database with every migration the migrate function applies: the
    /// toolkit's, then every service's folder.
    pub async fn fresh() -> anyhow::Result<Self> {
        Self::migrated(migrate::migrations()).await
    }

    /// A database with `sets` applied, in order.
    pub async fn migrated(sets: Vec<sqlx::migrate::Migrator>) -> anyhow::Result<Self> {
        let mut db = Self::empty().await?;
        shared::db::migrate(&db.pool, sets).await?;
        // Sessions opened after the migrations, as a deployment's functions
        // are: they take the database's settings (`plan_cache_mode`).
        db.pool.close().await;
        db.pool = pool(&db.config).await?;
        Ok(db)
    }

    /// A database of its own with nothing in it, not even the migrations.
    pub async fn empty() -> anyhow::Result<Self> {
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&admin_url()).await.with_context(|| {
            format!(
                "connecting to PostgreSQL at {} (is it running?)",
                admin_url()
            )
        })?;
        // The name is ours and alphanumeric; identifiers cannot be bound parameters.
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let config = DatabaseConfig::from_url(&admin_url())?.with_database(&name);
        let pool = pool(&config).await?;
        Ok(Self { pool, config, name })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL, for what connects by itself (the emulator's functions).
    pub fn url(&self) -> String {
        let admin = admin_url();
        let server = admin.rsplit_once('/').map_or(admin.as_str(), |(s, _)| s);
        format!("{server}/{}", self.name)
    }

    /// A counted `SELECT count(*) FROM <table>`.
    pub async fn count(&self, table: &str) -> anyhow::Result<i64> {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on; a thread
        // with a runtime of its own removes the database.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&admin_url()).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        });
        let _ = dropped.join();
    }
}

/// The Redis tests use: `TEST_REDIS_URL` or the local default.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A stream namespace no other test uses.
pub fn unique_namespace() -> String {
    format!("test-{}", uuid::Uuid::now_v7().simple())
}

/// A free TCP port on loopback (bound, then released).
pub fn spare_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `done()` holds, or fails after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("timed out after {timeout:?} waiting until {what}")
}

/// A record of `aggregate` as a consumer's handler receives it: an event of
/// `event_type` at `schema_version` with `payload`, on the aggregate's first
/// stream, first delivery.
pub fn record(
    aggregate: &str,
    event_type: &str,
    schema_version: u32,
    payload: Payload,
) -> StreamRecord {
    let event = EventEnvelope::new(
        EventType::parse(event_type).expect("a valid event type"),
        schema_version,
        AggregateType::parse(aggregate).expect("a valid aggregate type"),
        AggregateId::parse("o-1").expect("a valid aggregate id"),
        None,
        payload,
    );
    StreamRecord {
        stream: format!("events:{{{aggregate}:0}}"),
        id: "1-0".into(),
        attempt: 1,
        event,
        trace: TraceParent::new_root(),
    }
}

/// Runs the function binary at `path` (`env!("CARGO_BIN_EXE_<name>")`) with an
/// empty environment and checks that it stops at once, failing, with an error
/// on stderr that names `variable`: outside Lambda, without its configuration,
/// a function refuses to start rather than guess. (Such a test also makes
/// `cargo test` build the binary, which the emulator's Runtime API tests run.)
pub fn assert_exits_asking_for(path: &str, variable: &str) {
    let out = std::process::Command::new(path)
        .env_clear()
        .output()
        .expect("the binary runs");
    assert!(!out.status.success(), "{path} exited {}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(variable), "{variable} in {stderr}");
}

/// JSON shaped like an event payload, with any values: objects whose keys are
/// mostly `names` (a payload's fields), arrays, and leaves of every JSON kind.
/// For property tests of the consumers' record decoders.
pub fn payload_like(
    names: &'static [&'static str],
) -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use serde_json::Value;

    let name = prop_oneof![
        proptest::sample::select(names).prop_map(str::to_owned),
        "[a-z_]{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1_i64..70_000).prop_map(Value::from),
        any::<u128>().prop_map(|u| Value::from(uuid::Uuid::from_u128(u).to_string())),
        "[A-Za-z0-9 -]{0,70}".prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((name.clone(), inner), 0..7).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}
