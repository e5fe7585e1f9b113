//! The customer service's store: each customer's credit limit and what orders
//! hold of it (`customers.credit`), its outbox and inbox. Its schema is
//! `services/customers/migrations`; the consumer's batch SQL (reservations,
//! answers) lives with the consumer (`functions/customers-consumer`).

use contracts::CustomerId;
use shared::config::{ConfigError, Env};
use shared::StoreError;
use sqlx::PgExecutor;

/// The customer service's outbox, `customers.outbox`.
pub const OUTBOX: shared::outbox::Outbox = shared::outbox::Outbox::in_schema("customers");

/// The customer service's inbox, `customers.processed_events`.
pub const INBOX: shared::inbox::Inbox = shared::inbox::Inbox::in_schema("customers");

/// The customer service's recorded answers, `customers.answers`.
pub const ANSWERS: shared::answers::Answers = shared::answers::Answers::in_schema("customers");

/// The largest credit limit, in cents (a trillion currency units).
pub const MAX_LIMIT_CENTS: i64 = 100_000_000_000_000;

/// `DEFAULT_CREDIT_LIMIT_CENTS` (0, up to [`MAX_LIMIT_CENTS`]): the credit
/// limit of a customer without a record, as customers-api shows it and the
/// customers consumer applies it. A customer's record is written with it at
/// their first reservation; from then on their limit is the record's.
pub fn default_limit(env: &Env) -> Result<i64, ConfigError> {
    env.in_range("DEFAULT_CREDIT_LIMIT_CENTS", 0, 0, MAX_LIMIT_CENTS)
}

/// A customer's credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    pub limit_cents: i64,
    pub reserved_cents: i64,
}

impl Credit {
    /// What a new order may still reserve (never below zero: a limit lowered
    /// below what is reserved leaves nothing).
    pub fn available_cents(&self) -> i64 {
        (self.limit_cents - self.reserved_cents).max(0)
    }
}

/// The customer's credit; `None` for a customer without a record (who has the
/// default limit and nothing reserved).
pub async fn find(
    db: impl PgExecutor<'_>,
    customer: &CustomerId,
) -> Result<Option<Credit>, StoreError> {
    sqlx::query_as!(
        Credit,
        "SELECT limit_cents, reserved_cents FROM customers.credit WHERE customer_id = $1",
        customer.as_str()
    )
    .fetch_optional(db)
    .await
    .map_err(|e| StoreError::database("reading a customer's credit", e))
}

/// Sets the customer's limit (creating the record); what is reserved stays.
pub async fn set_limit(
    db: impl PgExecutor<'_>,
    customer: &CustomerId,
    limit_cents: i64,
) -> Result<Credit, StoreError> {
    sqlx::query_as!(
        Credit,
        r#"INSERT INTO customers.credit (customer_id, limit_cents) VALUES ($1, $2)
           ON CONFLICT (customer_id) DO UPDATE SET limit_cents = EXCLUDED.limit_cents, updated_at = now()
           RETURNING limit_cents, reserved_cents"#,
        customer.as_str(),
        limit_cents
    )
    .fetch_one(db)
    .await
    .map_err(|e| StoreError::database("setting a customer's credit limit", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_credit_is_never_negative() {
        let credit = |limit_cents, reserved_cents| Credit {
            limit_cents,
            reserved_cents,
        };
        assert_eq!(credit(100, 30).available_cents(), 70);
        assert_eq!(credit(100, 100).available_cents(), 0);
        assert_eq!(credit(50, 80).available_cents(), 0);
    }
}
