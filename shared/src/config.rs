//! Typed configuration read from the environment once, at cold start.
//!
//! Every error names the variable and says what is wrong with it. Secrets
//! (database and Redis passwords) are held in [`SecretString`]s and never appear
//! in `Debug` output, errors or logs.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;

/// A snapshot of environment variables. Tests build one from pairs instead of
/// touching the process environment.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, OsString>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: values may be secrets.
        let mut names: Vec<_> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("Env").field("names", &names).finish()
    }
}

/// A variable that is missing or cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {var} is not set ({hint})")]
    Missing {
        var: &'static str,
        hint: &'static str,
    },
    #[error("environment variable {var} is malformed: {reason}")]
    Malformed { var: &'static str, reason: String },
}

impl Env {
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| k.into_string().ok().map(|k| (k, v)))
                .collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<OsString>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// This environment with `var` set to `value` (a command line flag over
    /// the process's variable).
    #[must_use]
    pub fn with(mut self, var: &str, value: impl Into<OsString>) -> Self {
        self.vars.insert(var.to_owned(), value.into());
        self
    }

    /// The names of the variables set, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// [`Env::get`] for a name found at run time (see [`Env::names`]); `None`
    /// for a value that is not UTF-8.
    pub fn get_named(&self, var: &str) -> Option<&str> {
        self.vars
            .get(var)
            .and_then(|v| v.to_str())
            .filter(|v| !v.is_empty())
    }

    /// The variable's value; unset and empty are the same, as in most shells' intent.
    pub fn get(&self, var: &'static str) -> Result<Option<&str>, ConfigError> {
        match self.vars.get(var) {
            None => Ok(None),
            Some(v) => match v.to_str() {
                Some("") => Ok(None),
                Some(s) => Ok(Some(s)),
                None => Err(ConfigError::Malformed {
                    var,
                    reason: "not valid UTF-8".into(),
                }),
            },
        }
    }

    pub fn require(&self, var: &'static str, hint: &'static str) -> Result<&str, ConfigError> {
        self.get(var)?.ok_or(ConfigError::Missing { var, hint })
    }

    /// Parses the variable if set, or returns `default`.
    pub fn parse_or<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(var)? {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Malformed {
                    var,
                    reason: format!("{text:?}: {e}"),
                }),
        }
    }

    /// A whole number within `lo..=hi`, or `default` when unset.
    pub fn in_range<T>(&self, var: &'static str, default: T, lo: T, hi: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display,
        T::Err: fmt::Display,
    {
        let value = self.parse_or(var, default)?;
        if lo <= value && value <= hi {
            Ok(value)
        } else {
            Err(ConfigError::Malformed {
                var,
                reason: format!("must be between {lo} and {hi} (got {value})"),
            })
        }
    }

    /// A whole number of milliseconds, at least 1.
    pub fn millis_or(&self, var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let default_ms = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
        match self.parse_or::<u64>(var, default_ms)? {
            0 => Err(ConfigError::Malformed {
                var,
                reason: "must be at least 1 (milliseconds)".into(),
            }),
            ms => Ok(Duration::from_millis(ms)),
        }
    }
}

/// The Amazon RDS global CA bundle (every region's root and intermediate CAs), as
/// published at <https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem>.
/// `DATABASE_SSL_ROOT_CERT=rds` verifies the server's certificate against it.
pub const RDS_CA_BUNDLE: &[u8] = include_bytes!("../certs/rds-global-bundle.pem");

/// Which certificate authorities a TLS connection to PostgreSQL trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SslRootCert {
    /// The bundled [`RDS_CA_BUNDLE`].
    Rds,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

/// How to reach PostgreSQL.
#[derive(Clone)]
pub struct DatabaseConfig {
    options: PgConnectOptions,
    password: Option<SecretString>,
    /// Overrides the URL's user (`DATABASE_USER`): the function's service role.
    user: Option<String>,
    ssl_root_cert: Option<SslRootCert>,
    /// Connections per process. One Lambda instance serves one request at a
    /// time, so a small pool suffices there; the emulator runs many at once.
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered "unavailable".
    pub acquire_timeout: Duration,
    /// Server-side limit per statement, so a stuck query cannot hang a request.
    pub statement_timeout: Duration,
    /// A pooled connection idle this long is pinged before it is handed out
    /// (see [`crate::db::pool_options`]); zero pings every one, sqlx's default.
    pub ping_after_idle: Duration,
}

impl DatabaseConfig {
    pub const URL: &'static str = "DATABASE_URL";
    pub const PASSWORD: &'static str = "DATABASE_PASSWORD";
    pub const USER: &'static str = "DATABASE_USER";
    pub const SSL_ROOT_CERT: &'static str = "DATABASE_SSL_ROOT_CERT";
    pub const MAX_CONNECTIONS: &'static str = "DATABASE_MAX_CONNECTIONS";
    pub const ACQUIRE_TIMEOUT_MS: &'static str = "DATABASE_ACQUIRE_TIMEOUT_MS";
    pub const STATEMENT_TIMEOUT_MS: &'static str = "DATABASE_STATEMENT_TIMEOUT_MS";
    pub const PING_AFTER_IDLE_MS: &'static str = "DATABASE_PING_AFTER_IDLE_MS";

    /// Reads `DATABASE_URL` (required), `DATABASE_USER` (overrides the URL's user:
    /// the service's role), `DATABASE_PASSWORD` (overrides the URL's password, e.g.
    /// from Secrets Manager), `DATABASE_SSL_ROOT_CERT` (`rds`: the bundled RDS CA
    /// bundle; else a PEM file; for `sslmode=verify-full`), `DATABASE_MAX_CONNECTIONS` (10),
    /// `DATABASE_ACQUIRE_TIMEOUT_MS` (3000), `DATABASE_STATEMENT_TIMEOUT_MS` (5000),
    /// `DATABASE_PING_AFTER_IDLE_MS` (1000).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = env.require(
            Self::URL,
            "e.g. postgres://postgres@127.0.0.1:5432/postgres",
        )?;
        Self::from_url(url)?.with_env_overrides(env)
    }

    /// A configuration for `url` with the default pool settings.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::Malformed {
                var: Self::URL,
                reason: "must start with postgres:// or postgresql://".into(),
            });
        }
        // sqlx's parse errors describe the part that is wrong, never echo the URL.
        let options = PgConnectOptions::from_str(url).map_err(|e| ConfigError::Malformed {
            var: Self::URL,
            reason: e.to_string(),
        })?;
        Ok(Self {
            options,
            password: None,
            user: None,
            ssl_root_cert: None,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(5),
            ping_after_idle: Duration::from_secs(1),
        })
    }

    fn with_env_overrides(mut self, env: &Env) -> Result<Self, ConfigError> {
        self.password = env
            .get(Self::PASSWORD)?
            .map(|p| SecretString::from(p.to_owned()));
        self.user = env.get(Self::USER)?.map(str::to_owned);
        self.ssl_root_cert = env.get(Self::SSL_ROOT_CERT)?.map(|v| {
            if v.eq_ignore_ascii_case("rds") {
                SslRootCert::Rds
            } else {
                SslRootCert::File(PathBuf::from(v))
            }
        });
        self.max_connections = env.parse_or(Self::MAX_CONNECTIONS, self.max_connections)?;
        if self.max_connections == 0 {
            return Err(ConfigError::Malformed {
                var: Self::MAX_CONNECTIONS,
                reason: "must be at least 1".into(),
            });
        }
        self.acquire_timeout = env.millis_or(Self::ACQUIRE_TIMEOUT_MS, self.acquire_timeout)?;
        self.statement_timeout =
            env.millis_or(Self::STATEMENT_TIMEOUT_MS, self.statement_timeout)?;
        self.ping_after_idle = Duration::from_millis(env.parse_or::<u64>(
            Self::PING_AFTER_IDLE_MS,
            u64::try_from(self.ping_after_idle.as_millis()).unwrap_or(u64::MAX),
        )?);
        Ok(self)
    }

    /// The options to connect with, including the secret: hand them to sqlx only.
    pub fn connect_options(&self) -> PgConnectOptions {
        let mut options = self.options.clone().options([(
            "statement_timeout",
            format!("{}ms", self.statement_timeout.as_millis()),
        )]);
        if let Some(user) = &self.user {
            options = options.username(user);
        }
        options = match &self.ssl_root_cert {
            Some(SslRootCert::Rds) => options.ssl_root_cert_from_pem(RDS_CA_BUNDLE.to_vec()),
            Some(SslRootCert::File(path)) => options.ssl_root_cert(path),
            None => options,
        };
        match &self.password {
            Some(p) => options.password(p.expose_secret()),
            None => options,
        }
    }

    /// The same server, another database (e.g. a fresh one per test).
    pub fn with_database(mut self, name: &str) -> Self {
        self.options = self.options.database(name);
        self
    }

    /// The same server and database as another user (e.g. a service role), without
    /// the password of the previous one.
    pub fn with_user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self.password = None;
        self
    }

    /// The user connections log in as: `DATABASE_USER`, else the URL's.
    pub fn user(&self) -> &str {
        self.user
            .as_deref()
            .unwrap_or_else(|| self.options.get_username())
    }

    pub fn ssl_root_cert(&self) -> Option<&SslRootCert> {
        self.ssl_root_cert.as_ref()
    }

    pub fn database_name(&self) -> Option<&str> {
        self.options.get_database()
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // PgConnectOptions' own Debug prints the password: never use it here.
        f.debug_struct("DatabaseConfig")
            .field("host", &self.options.get_host())
            .field("port", &self.options.get_port())
            .field("user", &self.user())
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("database", &self.options.get_database())
            .field("password", &"[redacted]")
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("ping_after_idle", &self.ping_after_idle)
            .finish()
    }
}

/// How to reach Redis. The URL may hold a password, so it is a secret.
#[derive(Clone)]
pub struct RedisConfig {
    url: SecretString,
    cluster: bool,
}

impl RedisConfig {
    pub const URL: &'static str = "REDIS_URL";
    /// The AUTH token (ElastiCache) or the ACL user's password (MemoryDB, Redis 6+).
    pub const PASSWORD: &'static str = "REDIS_PASSWORD";
    /// The ACL user (MemoryDB, ElastiCache RBAC); unset: Redis's `default` user.
    pub const USERNAME: &'static str = "REDIS_USERNAME";

    /// `true`: a Redis Cluster (ElastiCache with cluster mode enabled, or any
    /// Redis Cluster), whose nodes `REDIS_URL` names, one or several
    /// comma-separated.
    pub const CLUSTER: &'static str = "REDIS_CLUSTER";

    /// Reads `REDIS_URL` (required), `REDIS_CLUSTER` (false) and
    /// `REDIS_USERNAME` / `REDIS_PASSWORD`, which replace the URL's credentials
    /// (e.g. resolved from Secrets Manager; on a cluster, every node's).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = env.require(Self::URL, "e.g. redis://127.0.0.1:6379")?;
        let cluster: bool = env.parse_or(Self::CLUSTER, false)?;
        let nodes: Vec<&str> = if cluster {
            url.split(',').map(str::trim).collect()
        } else {
            vec![url]
        };
        if nodes.iter().any(|u| {
            !(u.starts_with("redis://") || u.starts_with("rediss://"))
                || (!cluster && u.contains(','))
        }) {
            return Err(ConfigError::Malformed {
                var: Self::URL,
                reason: if cluster {
                    "each node's URL must start with redis:// or rediss://".into()
                } else {
                    "must start with redis:// or rediss:// (several nodes need REDIS_CLUSTER=true)"
                        .into()
                },
            });
        }
        let password = env.get(Self::PASSWORD)?;
        let username = env.get(Self::USERNAME)?;
        let url = match (username, password) {
            (None, None) => url.to_owned(),
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    var: Self::PASSWORD,
                    hint: "REDIS_USERNAME needs the user's password",
                })
            }
            (username, Some(password)) => nodes
                .iter()
                .map(|u| with_credentials(u, username, password))
                .collect::<Vec<_>>()
                .join(","),
        };
        Ok(Self {
            url: SecretString::from(url),
            cluster,
        })
    }

    /// One node's URL, or with [`RedisConfig::cluster`] the nodes' URLs,
    /// comma-separated.
    pub fn url(&self) -> &SecretString {
        &self.url
    }

    pub fn cluster(&self) -> bool {
        self.cluster
    }

    /// The client for this configuration.
    pub fn client(&self) -> Result<crate::redis_link::RedisClient, redis::RedisError> {
        use secrecy::ExposeSecret as _;
        crate::redis_link::RedisClient::open(self.url.expose_secret(), self.cluster)
    }
}

/// `url` with its user info replaced by `username:password`, both percent-encoded
/// (the redis crate decodes them).
fn with_credentials(url: &str, username: Option<&str>, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!(
        "{scheme}://{}:{}@{host}{path}",
        percent_encode(username.unwrap_or("")),
        percent_encode(password)
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_database_url_is_named() {
        let err = DatabaseConfig::from_env(&Env::default()).expect_err("must fail");
        assert!(matches!(
            err,
            ConfigError::Missing {
                var: "DATABASE_URL",
                ..
            }
        ));
        assert!(err.to_string().contains("DATABASE_URL"));
    }

    #[test]
    fn malformed_values_are_named_and_explained() {
        let env = Env::from_pairs([("DATABASE_URL", "mysql://x")]);
        let err = DatabaseConfig::from_env(&env).expect_err("must fail");
        assert!(
            matches!(
                err,
                ConfigError::Malformed {
                    var: "DATABASE_URL",
                    ..
                }
            ),
            "{err}"
        );

        let env = Env::from_pairs([
            ("DATABASE_URL", "postgres://u:pw@localhost/db"),
            ("DATABASE_MAX_CONNECTIONS", "many"),
        ]);
        let err = DatabaseConfig::from_env(&env).expect_err("must fail");
        assert!(
            err.to_string().contains("DATABASE_MAX_CONNECTIONS"),
            "{err}"
        );

        let env = Env::from_pairs([
            ("DATABASE_URL", "postgres://u:pw@localhost/db"),
            ("DATABASE_STATEMENT_TIMEOUT_MS", "0"),
        ]);
        assert!(DatabaseConfig::from_env(&env).is_err());
    }

    #[test]
    fn secrets_never_show_in_debug_output_or_errors() {
        let env = Env::from_pairs([
            (
                "DATABASE_URL",
                "postgres://app:hunter2@db.internal:6432/orders",
            ),
            ("DATABASE_PASSWORD", "s3cr3t-from-secrets-manager"),
            ("REDIS_URL", "redis://:redispw@cache:6379"),
        ]);
        let db = DatabaseConfig::from_env(&env).expect("valid");
        let redis = RedisConfig::from_env(&env).expect("valid");
        let shown = format!("{db:?} {redis:?} {env:?}");
        for secret in ["hunter2", "s3cr3t", "redispw"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("db.internal") && shown.contains("6432"));
        assert_eq!(db.database_name(), Some("orders"));

        let bad_port = Env::from_pairs([("DATABASE_URL", "postgres://app:hunter2@db:notaport/x")]);
        let err = DatabaseConfig::from_env(&bad_port)
            .expect_err("must fail")
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn the_user_and_the_root_certificates_come_from_the_environment() {
        let env = Env::from_pairs([
            ("DATABASE_URL", "postgres://master:pw@db.internal/orders"),
            ("DATABASE_USER", "order_service"),
            ("DATABASE_SSL_ROOT_CERT", "rds"),
        ]);
        let db = DatabaseConfig::from_env(&env).expect("valid");
        assert_eq!(db.user(), "order_service");
        assert_eq!(db.connect_options().get_username(), "order_service");
        assert_eq!(db.ssl_root_cert(), Some(&SslRootCert::Rds));

        let env = Env::from_pairs([
            ("DATABASE_URL", "postgres://master@db/orders"),
            ("DATABASE_SSL_ROOT_CERT", "/etc/ssl/ca.pem"),
        ]);
        let db = DatabaseConfig::from_env(&env).expect("valid");
        assert_eq!(db.user(), "master");
        assert_eq!(
            db.ssl_root_cert(),
            Some(&SslRootCert::File("/etc/ssl/ca.pem".into()))
        );
        assert_eq!(db.clone().with_user("relay").user(), "relay");
    }

    #[test]
    fn the_rds_bundle_holds_the_regions_root_certificates() {
        use rustls_pki_types::{pem::PemObject, CertificateDer};
        let certificates: Vec<_> = CertificateDer::pem_slice_iter(RDS_CA_BUNDLE)
            .collect::<Result<_, _>>()
            .expect("every block of the bundle is a certificate");
        // 2024's global bundle: every region's RSA2048, RSA4096 and ECC384 G1 roots,
        // and the 2019 CAs.
        assert!(certificates.len() >= 100, "{}", certificates.len());
        let text = std::str::from_utf8(RDS_CA_BUNDLE).expect("PEM is ASCII");
        assert_eq!(
            text.matches("-----BEGIN CERTIFICATE-----").count(),
            certificates.len()
        );
    }

    #[test]
    fn redis_credentials_replace_the_urls_and_are_encoded() {
        let env = Env::from_pairs([
            ("REDIS_URL", "rediss://old:secret@cache.internal:6379/0"),
            ("REDIS_USERNAME", "order-functions"),
            ("REDIS_PASSWORD", "p@ss/w:rd"),
        ]);
        let redis = RedisConfig::from_env(&env).expect("valid");
        assert_eq!(
            redis.url().expose_secret(),
            "rediss://order-functions:p%40ss%2Fw%3Ard@cache.internal:6379/0"
        );
        let env = Env::from_pairs([
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("REDIS_PASSWORD", "token"),
        ]);
        let redis = RedisConfig::from_env(&env).expect("valid");
        assert_eq!(redis.url().expose_secret(), "redis://:token@127.0.0.1:6379");
        let info = redis::IntoConnectionInfo::into_connection_info(redis.url().expose_secret())
            .expect("the redis crate reads it");
        assert_eq!(info.redis_settings().password(), Some("token"));

        let env = Env::from_pairs([
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("REDIS_USERNAME", "app"),
        ]);
        let err = RedisConfig::from_env(&env).expect_err("a user needs a password");
        assert!(err.to_string().contains("REDIS_PASSWORD"), "{err}");
        assert!(!format!("{redis:?}").contains("token"));
    }

    #[test]
    fn a_cluster_takes_several_nodes_and_one_node_one_url() {
        let env = Env::from_pairs([
            ("REDIS_URL", "redis://10.0.0.5:6379, redis://10.0.0.6:6379"),
            ("REDIS_CLUSTER", "true"),
            ("REDIS_PASSWORD", "token"),
        ]);
        let redis = RedisConfig::from_env(&env).expect("valid");
        assert!(redis.cluster());
        assert_eq!(
            redis.url().expose_secret(),
            "redis://:token@10.0.0.5:6379,redis://:token@10.0.0.6:6379"
        );
        assert!(redis.client().expect("a cluster client").is_cluster());
        let several = Env::from_pairs([("REDIS_URL", "redis://a:6379,redis://b:6379")]);
        let err = RedisConfig::from_env(&several).expect_err("several nodes need a cluster");
        assert!(err.to_string().contains("REDIS_CLUSTER=true"), "{err}");
        let bad = Env::from_pairs([
            ("REDIS_URL", "redis://a:6379,b:6379"),
            ("REDIS_CLUSTER", "true"),
        ]);
        let err = RedisConfig::from_env(&bad).expect_err("each node a URL");
        assert!(err.to_string().contains("each node"), "{err}");
        let flag = Env::from_pairs([("REDIS_URL", "redis://a:6379"), ("REDIS_CLUSTER", "yes")]);
        let err = RedisConfig::from_env(&flag).expect_err("true or false");
        assert!(err.to_string().contains("REDIS_CLUSTER"), "{err}");
    }

    #[test]
    fn defaults_apply_and_overrides_parse() {
        let env = Env::from_pairs([
            ("DATABASE_URL", "postgres://localhost/db"),
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "250"),
            ("DATABASE_MAX_CONNECTIONS", ""),
        ]);
        let db = DatabaseConfig::from_env(&env).expect("valid");
        assert_eq!(db.acquire_timeout, Duration::from_millis(250));
        assert_eq!(db.max_connections, 10);
        assert_eq!(db.statement_timeout, Duration::from_secs(5));
        assert_eq!(db.ping_after_idle, Duration::from_secs(1));
        let always = Env::from_pairs([
            ("DATABASE_URL", "postgres://localhost/db"),
            ("DATABASE_PING_AFTER_IDLE_MS", "0"),
        ]);
        let db = DatabaseConfig::from_env(&always).expect("0: ping every connection");
        assert_eq!(db.ping_after_idle, Duration::ZERO);
    }
}
