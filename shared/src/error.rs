//! Errors that say whether retrying can help. The retry and dead-letter
//! machinery decides from [`Failure`] (and its coarser [`Retry`]), never from
//! an error's text.
//!
//! **The classification table lives here and only here**: [`Failure::of_sqlx`],
//! [`Failure::of_sqlstate`] and [`Failure::of_redis`] sort every PostgreSQL and
//! Redis error into an *outage* of the store (wait it out: it says nothing
//! about the record), a *transient* failure of this one operation (retry it a
//! few times), or a *permanent* one.

/// Whether the same operation may succeed if tried again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// I/O, timeouts, lost connections, an overloaded or restarting server,
    /// serialization conflicts: try again.
    Retryable,
    /// Invalid input, undecodable data, a violated constraint: trying again
    /// gives the same answer.
    Permanent,
}

/// Why an operation on a store failed: what a consumer does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The store itself is away or refusing everyone: refused or lost
    /// connections, I/O, TLS, a pool that cannot connect, a failover, a server
    /// starting up or shutting down, a password being rotated, too many
    /// connections. It says nothing about the record: wait, without using up
    /// the record's attempts.
    Outage,
    /// This operation lost a race or ran out of time (serialization failure,
    /// deadlock, lock or statement timeout): retrying it may succeed.
    Transient,
    /// Trying again gives the same answer.
    Permanent,
}

impl Failure {
    /// The coarse answer the HTTP edge and the relay use: an outage is retryable
    /// (a `503`), like a transient failure.
    pub fn retry(self) -> Retry {
        match self {
            Failure::Outage | Failure::Transient => Retry::Retryable,
            Failure::Permanent => Retry::Permanent,
        }
    }

    pub fn is_outage(self) -> bool {
        self == Failure::Outage
    }

    /// Sorts a sqlx error.
    pub fn of_sqlx(error: &sqlx::Error) -> Self {
        use sqlx::Error as E;
        match error {
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
                Failure::Outage
            }
            // Unexpected bytes from the server: usually a connection cut mid-message.
            // Not an outage: a deterministic one must not stall a stream for ever.
            E::Protocol(_) => Failure::Transient,
            E::Database(db) => db
                .code()
                .as_deref()
                .map_or(Failure::Permanent, Failure::of_sqlstate),
            _ => Failure::Permanent,
        }
    }

    /// Sorts a PostgreSQL SQLSTATE.
    pub fn of_sqlstate(code: &str) -> Self {
        let class = code.get(..2).unwrap_or(code);
        match (class, code) {
            // 08 connection exception, 28 invalid authorization (a rotated
            // password), 53 insufficient resources (too many connections, disk full).
            ("08" | "28" | "53", _) => Failure::Outage,
            // admin_shutdown, crash_shutdown, cannot_connect_now (starting up, recovering).
            (_, "57P01" | "57P02" | "57P03") => Failure::Outage,
            (
                _,
                "40001" // serialization_failure
                | "40P01" // deadlock_detected
                | "55P03" // lock_not_available
                | "57014" // query_canceled (statement_timeout)
                | "25P04", // transaction_timeout
            ) => Failure::Transient,
            _ => Failure::Permanent,
        }
    }

    /// Sorts a Redis error.
    pub fn of_redis(error: &redis::RedisError) -> Self {
        use redis::ErrorKind as K;
        match error.kind() {
            // Refused, dropped, reset, response timeouts (all I/O to the crate),
            // an AUTH token being rotated, no node of a cluster reachable.
            K::Io | K::AuthenticationFailed | K::ClusterConnectionNotFound => Failure::Outage,
            _ if redis_error_codes(error)
                .iter()
                .any(|code| is_redis_outage_code(code)) =>
            {
                Failure::Outage
            }
            _ => Failure::Permanent,
        }
    }
}

/// Redis error codes that mean the server cannot serve anyone right now.
fn is_redis_outage_code(code: &str) -> bool {
    matches!(
        code,
        "LOADING" // loading its data set after a restart
            | "BUSY" // a script or function running too long
            | "MASTERDOWN" // a replica that lost its primary
            | "READONLY" // a primary demoted to replica by a failover
            | "TRYAGAIN" // a cluster resharding
            | "CLUSTERDOWN"
            | "NOAUTH" // credentials being rotated
            | "WRONGPASS"
    )
}

/// Every error code in a Redis error: one for a command, one per failed
/// command of a pipeline (whose [`redis::RedisError::code`] is `None` for codes
/// the crate does not know, such as `NOGROUP`).
pub fn redis_error_codes(error: &redis::RedisError) -> Vec<String> {
    let mut codes: Vec<String> = error
        .clone()
        .into_server_errors()
        .map(|errors| errors.iter().map(|(_, e)| e.code().to_owned()).collect())
        .unwrap_or_default();
    if let Some(code) = error.code() {
        if !codes.iter().any(|c| c == code) {
            codes.push(code.to_owned());
        }
    }
    codes
}

/// A failure talking to PostgreSQL, with what we were doing at the time.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Database {
        context: &'static str,
        failure: Failure,
        source: sqlx::Error,
    },
    /// A stored row that does not hold a valid value (a bug or a hand edit).
    #[error("{context}: stored data is invalid: {reason}")]
    Corrupt {
        context: &'static str,
        reason: String,
    },
}

impl StoreError {
    pub fn database(context: &'static str, source: sqlx::Error) -> Self {
        Self::Database {
            context,
            failure: Failure::of_sqlx(&source),
            source,
        }
    }

    pub fn corrupt(context: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            context,
            reason: reason.to_string(),
        }
    }

    pub fn failure(&self) -> Failure {
        match self {
            Self::Database { failure, .. } => *failure,
            Self::Corrupt { .. } => Failure::Permanent,
        }
    }

    pub fn retry(&self) -> Retry {
        self.failure().retry()
    }

    pub fn is_retryable(&self) -> bool {
        self.retry() == Retry::Retryable
    }

    /// The database itself is away (see [`Failure::Outage`]).
    pub fn is_outage(&self) -> bool {
        self.failure().is_outage()
    }
}

/// Sorts a sqlx error into retryable or permanent ([`Failure::of_sqlx`], coarsely).
pub fn classify(error: &sqlx::Error) -> Retry {
    Failure::of_sqlx(error).retry()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A database error with a SQLSTATE, as PostgreSQL would send it.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "test"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn sqlstate(code: &'static str) -> Failure {
        Failure::of_sqlx(&sqlx::Error::Database(Box::new(Sqlstate(code))))
    }

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }

    #[test]
    fn a_database_that_is_away_is_an_outage() {
        use std::io::ErrorKind as Io;
        for kind in [
            Io::ConnectionRefused,
            Io::ConnectionReset,
            Io::UnexpectedEof,
        ] {
            assert_eq!(
                Failure::of_sqlx(&sqlx::Error::Io(io(kind))),
                Failure::Outage
            );
        }
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Tls("handshake failed".into()),
        ] {
            assert_eq!(Failure::of_sqlx(&e), Failure::Outage, "{e}");
        }
        for code in [
            "08000", "08001", "08003", "08006", "08P01", // connection
            "28000", "28P01", // authentication: a rotated password
            "53000", "53100", "53200", "53300", // insufficient resources
            "57P01", "57P02", "57P03", // shutting down, starting up
        ] {
            assert_eq!(sqlstate(code), Failure::Outage, "{code}");
            assert_eq!(Failure::of_sqlstate(code).retry(), Retry::Retryable);
        }
        // Still a 503 at the HTTP edge.
        let e = StoreError::database("reading", sqlx::Error::PoolTimedOut);
        assert!(e.is_retryable() && e.is_outage());
    }

    #[test]
    fn a_lost_race_or_a_timeout_is_transient() {
        for code in ["40001", "40P01", "55P03", "57014", "25P04"] {
            assert_eq!(sqlstate(code), Failure::Transient, "{code}");
        }
        assert_eq!(
            Failure::of_sqlx(&sqlx::Error::Protocol("unexpected message".into())),
            Failure::Transient
        );
        let e = StoreError::database(
            "locking",
            sqlx::Error::Database(Box::new(Sqlstate("40P01"))),
        );
        assert!(e.is_retryable() && !e.is_outage());
    }

    #[test]
    fn everything_else_from_the_database_is_permanent() {
        for code in [
            "23505", "23514", "22P02", "42P01", "40002", "57000", "57P04", "XX000",
        ] {
            assert_eq!(sqlstate(code), Failure::Permanent, "{code}");
        }
        assert_eq!(
            Failure::of_sqlx(&sqlx::Error::RowNotFound),
            Failure::Permanent
        );
        assert_eq!(
            Failure::of_sqlx(&sqlx::Error::ColumnNotFound("x".into())),
            Failure::Permanent
        );
        assert_eq!(
            StoreError::corrupt("reading", "bad").retry(),
            Retry::Permanent
        );
        assert_eq!(classify(&sqlx::Error::RowNotFound), Retry::Permanent);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Retry::Retryable);
    }

    #[test]
    fn a_redis_that_is_away_is_an_outage() {
        use redis::{ErrorKind as K, RedisError, ServerErrorKind as S};
        use std::io::ErrorKind as Io;
        for kind in [
            Io::ConnectionRefused,
            Io::ConnectionReset,
            Io::BrokenPipe,
            Io::UnexpectedEof,
            Io::TimedOut, // the crate's response timeout
        ] {
            assert_eq!(
                Failure::of_redis(&RedisError::from(io(kind))),
                Failure::Outage
            );
        }
        for kind in [
            K::Io,
            K::AuthenticationFailed,
            K::Server(S::BusyLoading),
            K::Server(S::MasterDown),
            K::Server(S::ReadOnly),
            K::Server(S::TryAgain),
            K::Server(S::ClusterDown),
        ] {
            let e = RedisError::from((kind, "test"));
            assert_eq!(Failure::of_redis(&e), Failure::Outage, "{e}");
        }
        for code in ["BUSY", "LOADING", "READONLY", "MASTERDOWN", "NOAUTH"] {
            let e = redis::make_extension_error(code.into(), Some("test".into()));
            assert_eq!(Failure::of_redis(&e), Failure::Outage, "{code}");
        }
    }

    #[test]
    fn other_redis_errors_are_permanent() {
        use redis::{ErrorKind as K, RedisError, ServerErrorKind as S};
        for kind in [
            K::Server(S::ResponseError),
            K::Server(S::NoScript),
            K::Server(S::CrossSlot),
            K::Server(S::NoPerm),
            K::Parse,
            K::UnexpectedReturnType,
            K::InvalidClientConfig,
            K::Client,
        ] {
            let e = RedisError::from((kind, "test"));
            assert_eq!(Failure::of_redis(&e), Failure::Permanent, "{e}");
        }
        let nogroup = redis::make_extension_error("NOGROUP".into(), Some("no group".into()));
        assert_eq!(Failure::of_redis(&nogroup), Failure::Permanent);
        assert_eq!(redis_error_codes(&nogroup), ["NOGROUP"]);
        let wrongtype = redis::make_extension_error("WRONGTYPE".into(), None);
        assert_eq!(Failure::of_redis(&wrongtype), Failure::Permanent);
    }
}
