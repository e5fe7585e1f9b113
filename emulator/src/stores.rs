//! The PostgreSQL and Redis a command needs, with zero configuration:
//! `DATABASE_URL` / `REDIS_URL` when set; else the servers on 127.0.0.1 when
//! they answer; else private servers under the state directory ([`servers`]),
//! stopped again by [`Stores::stop`]. The database is created and migrated
//! ([`Stores::prepare`]), or found as those left it ([`Stores::open`]).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use shared::config::Env;
use sqlx::PgPool;

use crate::servers::{self, Origin};

/// PostgreSQL's and Redis's usual local addresses.
pub const DEFAULT_POSTGRES: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5432);
pub const DEFAULT_REDIS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6379);

/// The database the emulator keeps its data in on a server it was not told about.
pub const LOCAL_DATABASE: &str = "orders_local";

/// Which stores a command talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Database,
    Redis,
    Both,
}

/// Whether a command brings the database's schema up to date or expects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    Migrate,
    Expect,
}

/// The stores of one emulator command.
#[derive(Debug)]
pub struct Stores {
    /// Migrated; `None` when the command needs no database.
    pool: Option<PgPool>,
    pub database_url: String,
    pub redis_url: String,
    /// `REDIS_CLUSTER=true` with a configured `REDIS_URL`: a Redis Cluster.
    pub redis_cluster: bool,
    postgres: Option<servers::Postgres>,
    redis: Option<servers::Redis>,
}

impl Stores {
    /// The stores `needs`, the database migrated with `migrations` (the
    /// registry's folders, in order).
    pub async fn prepare(
        env: &Env,
        state_dir: Option<&Path>,
        needs: Needs,
        migrations: Vec<sqlx::migrate::Migrator>,
    ) -> anyhow::Result<Self> {
        Self::with_schema(env, state_dir, needs, migrations, Schema::Migrate).await
    }

    /// The stores `needs`, the database as `emulator up` or `emulator migrate`
    /// left it: for commands that read or tidy, which create no database and
    /// apply no migration (an error says what is missing).
    pub async fn open(
        env: &Env,
        needs: Needs,
        migrations: Vec<sqlx::migrate::Migrator>,
    ) -> anyhow::Result<Self> {
        Self::with_schema(env, None, needs, migrations, Schema::Expect).await
    }

    async fn with_schema(
        env: &Env,
        state_dir: Option<&Path>,
        needs: Needs,
        migrations: Vec<sqlx::migrate::Migrator>,
        schema: Schema,
    ) -> anyhow::Result<Self> {
        let state = match state_dir {
            Some(dir) => servers::StateDir::new(dir)?,
            None => servers::StateDir::default_location(env)?,
        };
        let mut stores = Self {
            pool: None,
            database_url: String::new(),
            redis_url: String::new(),
            redis_cluster: false,
            postgres: None,
            redis: None,
        };
        if needs != Needs::Database {
            // A configured REDIS_URL with REDIS_USERNAME / REDIS_PASSWORD applied, as
            // the functions apply them (e.g. ElastiCache's AUTH token for `dlq`).
            let configured = match env.get("REDIS_URL")? {
                Some(_) => {
                    let config = shared::config::RedisConfig::from_env(env)?;
                    stores.redis_cluster = config.cluster();
                    Some(secrecy::ExposeSecret::expose_secret(config.url()).to_owned())
                }
                None => None,
            };
            let redis = servers::redis(configured.as_deref(), DEFAULT_REDIS, &state).await?;
            stores.redis_url.clone_from(&redis.url);
            stores.redis = Some(redis);
        }
        if needs != Needs::Redis {
            if let Err(e) = stores
                .prepare_database(env, &state, migrations, schema)
                .await
            {
                let _ = stores.stop_servers().await;
                return Err(e);
            }
        }
        Ok(stores)
    }

    async fn prepare_database(
        &mut self,
        env: &Env,
        state: &servers::StateDir,
        migrations: Vec<sqlx::migrate::Migrator>,
        schema: Schema,
    ) -> anyhow::Result<()> {
        let configured = env.get(shared::config::DatabaseConfig::URL)?;
        let postgres = servers::postgres(configured, DEFAULT_POSTGRES, state).await?;
        let (config, create_url) = if configured.is_some() {
            (crate::database::config(env)?, None)
        } else {
            let url = format!("{}/{LOCAL_DATABASE}", postgres.url.trim_end_matches('/'));
            let local = Env::from_pairs([(shared::config::DatabaseConfig::URL, url.as_str())]);
            (crate::database::config(&local)?, Some(url))
        };
        self.database_url = create_url
            .clone()
            .or_else(|| configured.map(str::to_owned))
            .unwrap_or_default();
        self.postgres = Some(postgres);
        self.pool = Some(match schema {
            Schema::Migrate => {
                crate::database::prepare(&config, create_url.as_deref(), migrations).await?
            }
            Schema::Expect => {
                crate::database::open(&config, create_url.as_deref(), &migrations).await?
            }
        });
        Ok(())
    }

    /// The migrated pool.
    pub fn pool(&self) -> anyhow::Result<&PgPool> {
        self.pool
            .as_ref()
            .context("this command prepared no database")
    }

    /// One line per store: where it is and where it came from.
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        if let Some(p) = &self.postgres {
            lines.push(format!(
                "PostgreSQL: {} ({})",
                redact(&self.database_url),
                origin(&p.origin)
            ));
        }
        if let Some(r) = &self.redis {
            lines.push(format!("Redis: {} ({})", redact(&r.url), origin(&r.origin)));
        }
        lines.join("\n")
    }

    /// Closes the pool and stops the private servers this command started.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        self.stop_servers().await
    }

    async fn stop_servers(&mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        if let Some(p) = self.postgres.take() {
            result = p.stop().await;
        }
        if let Some(r) = self.redis.take() {
            result = result.and(r.stop().await);
        }
        result
    }
}

fn origin(origin: &Origin) -> &'static str {
    match origin {
        Origin::Configured => "configured",
        Origin::Running => "already running",
        Origin::Private => "private, started by the emulator",
    }
}

/// A URL without its password.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                if userinfo.contains(':') {
                    format!("{scheme}://{user}:***@{host}")
                } else {
                    format!("{scheme}://{user}@{host}")
                }
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
