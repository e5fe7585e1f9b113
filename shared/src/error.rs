//! Errors that say whether retrying can help. The retry and dead-letter
//! machinery decides from [`Retry`], never from an error's text.

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

/// A failure talking to PostgreSQL, with what we were doing at the time.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Database {
        context: &'static str,
        retry: Retry,
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
            retry: classify(&source),
            source,
        }
    }

    pub fn corrupt(context: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            context,
            reason: reason.to_string(),
        }
    }

    pub fn retry(&self) -> Retry {
        match self {
            Self::Database { retry, .. } => *retry,
            Self::Corrupt { .. } => Retry::Permanent,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.retry() == Retry::Retryable
    }
}

/// Sorts a sqlx error into retryable or permanent.
pub fn classify(error: &sqlx::Error) -> Retry {
    use sqlx::Error as E;
    match error {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => Retry::Retryable,
        E::Database(db) => match db.code().as_deref() {
            Some(code) if is_transient_sqlstate(code) => Retry::Retryable,
            _ => Retry::Permanent,
        },
        _ => Retry::Permanent,
    }
}

/// SQLSTATEs after which the same statement can succeed later.
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources
        || matches!(
            code,
            "40001" // serialization_failure
            | "40P01" // deadlock_detected
            | "55P03" // lock_not_available
            | "57014" // query_canceled (statement_timeout)
            | "57P01" // admin_shutdown
            | "57P02" // crash_shutdown
            | "57P03" // cannot_connect_now (starting up, recovering)
            | "25P04" // transaction_timeout
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_level_failures_are_retryable() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&io), Retry::Retryable);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Retry::Retryable);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Retry::Permanent);
        assert!(is_transient_sqlstate("08006"));
        assert!(is_transient_sqlstate("57014"));
        assert!(!is_transient_sqlstate("23505"));
    }
}
