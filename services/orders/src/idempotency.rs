//! Stored responses for requests that carry an `Idempotency-Key` (IETF draft
//! "The Idempotency-Key HTTP Header Field"): the table `orders.idempotency_keys`.
//!
//! How it stays exact without an "in flight" row that a crash could strand: the
//! whole request runs in one transaction that first takes a transaction-scoped
//! advisory lock on the key. A second request with the key while the first is
//! running fails to take the lock and is told so ([`Lookup::InFlight`]); once the
//! first commits, its stored response is visible to anyone who takes the lock.
//! If the first fails, its transaction rolls back and leaves nothing behind.

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor};

use contracts::{CustomerId, InvalidValue};
use shared::StoreError;

/// Advisory-lock namespace (the first key of the two-key form) for idempotency
/// keys, so these locks never collide with other advisory locks of the system.
const LOCK_NAMESPACE: i32 = 0x1de0_0001;

/// A client's idempotency key: 1 to 255 visible ASCII characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    /// Parses a header value: a Structured Field string (`"abc"`, as the draft
    /// specifies) or, as many clients send it, the bare characters.
    pub fn parse_header(value: &[u8]) -> Result<Self, InvalidValue> {
        let text = std::str::from_utf8(value)
            .map_err(|_| InvalidValue::new("Idempotency-Key must be ASCII"))?
            .trim();
        let key = match text.strip_prefix('"') {
            Some(rest) => unquote(rest)?,
            None => {
                if text.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
                    return Err(InvalidValue::new(
                        "Idempotency-Key must be visible ASCII characters without spaces (or a quoted string)",
                    ));
                }
                text.to_owned()
            }
        };
        if key.is_empty() || key.len() > Self::MAX_LEN {
            return Err(InvalidValue::new(format!(
                "Idempotency-Key must be 1 to {} characters",
                Self::MAX_LEN
            )));
        }
        Ok(Self(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&self.0).finish()
    }
}

/// The rest of an sf-string after its opening quote (RFC 8941 §3.3.3).
fn unquote(rest: &str) -> Result<String, InvalidValue> {
    let bad = || InvalidValue::new("Idempotency-Key is not a valid quoted string");
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => out.push(e),
                _ => return Err(bad()),
            },
            '"' => {
                return if chars.next().is_none() {
                    Ok(out)
                } else {
                    Err(bad())
                };
            }
            c if (' '..='~').contains(&c) => out.push(c),
            _ => return Err(bad()),
        }
    }
    Err(bad())
}

/// What identifies "the same request": a SHA-256 over its canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(canonical_request: &[u8]) -> Self {
        Self(Sha256::digest(canonical_request).into())
    }
}

/// A response as first sent, to be sent again for a repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a key means for the request at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Never used (or expired): process the request and [`record`] its response.
    Fresh,
    /// Already processed with the same request: send this again.
    Replay(StoredResponse),
    /// Already used for a different request.
    Mismatch,
    /// A request with this key is being processed right now.
    InFlight,
}

/// Takes the lock of `owner`'s key and looks it up. `conn` must be inside the
/// transaction that will also make the request's changes and [`record`] its
/// response. Keys are per customer: another customer's use of the same key is
/// another key ([`scoped_key`]).
pub async fn begin(
    conn: &mut PgConnection,
    owner: &CustomerId,
    key: &IdempotencyKey,
    fingerprint: Fingerprint,
) -> Result<Lookup, StoreError> {
    let scoped = scoped_key(owner, key);
    let locked = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock($1, hashtext($2)) AS "locked!""#,
        LOCK_NAMESPACE,
        scoped,
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| StoreError::database("locking the idempotency key", e))?;
    if !locked {
        return Ok(Lookup::InFlight);
    }
    // A statement after the lock sees everything committed before the lock was granted.
    let row = sqlx::query!(
        r#"SELECT fingerprint, response_status, response_headers, response_body
           FROM orders.idempotency_keys
           WHERE key = $1 AND customer_id = $2 AND expires_at > now()"#,
        scoped,
        owner.as_str(),
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| StoreError::database("reading the idempotency key", e))?;
    let Some(row) = row else {
        return Ok(Lookup::Fresh);
    };
    if row.fingerprint != fingerprint.0 {
        return Ok(Lookup::Mismatch);
    }
    let corrupt = |e| StoreError::corrupt("reading the idempotency key", e);
    Ok(Lookup::Replay(StoredResponse {
        status: u16::try_from(row.response_status).map_err(corrupt)?,
        headers: serde_json::from_value(row.response_headers)
            .map_err(|e| StoreError::corrupt("reading the idempotency key", e))?,
        body: row.response_body,
    }))
}

/// Stores the response for `owner`'s `key` until `ttl` from now, in the request's
/// transaction.
pub async fn record(
    conn: &mut PgConnection,
    owner: &CustomerId,
    key: &IdempotencyKey,
    fingerprint: Fingerprint,
    response: &StoredResponse,
    ttl: Duration,
) -> Result<(), StoreError> {
    let headers = serde_json::to_value(&response.headers)
        .map_err(|e| StoreError::corrupt("storing the idempotency key", e))?;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    // An expired row under the same key is replaced; a live one cannot exist here,
    // because `begin` saw none while holding the key's lock.
    let stored = sqlx::query!(
        r#"INSERT INTO orders.idempotency_keys
               (key, customer_id, fingerprint, response_status, response_headers, response_body, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7::bigint / 1000.0))
           ON CONFLICT (key) DO UPDATE
           SET fingerprint = EXCLUDED.fingerprint,
               response_status = EXCLUDED.response_status,
               response_headers = EXCLUDED.response_headers,
               response_body = EXCLUDED.response_body,
               created_at = now(),
               expires_at = EXCLUDED.expires_at
           WHERE orders.idempotency_keys.expires_at <= now()"#,
        scoped_key(owner, key),
        owner.as_str(),
        &fingerprint.0[..],
        i16::try_from(response.status).unwrap_or(i16::MAX),
        headers,
        &response.body,
        ttl_ms,
    )
    .execute(conn)
    .await
    .map_err(|e| StoreError::database("storing the idempotency key", e))?;
    if stored.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::corrupt(
            "storing the idempotency key",
            "a live record appeared while the key was locked",
        ))
    }
}

/// The table's key for `owner`'s `key`: the customer id, the unit separator
/// (U+001F), the client's key. Customer ids never contain the separator, so two
/// customers' uses of one key are two rows; and since a client's key is printable
/// ASCII, these never meet the raw keys that code from before per-customer keys
/// stored (with `customer_id` `''`). `key` stays the primary key so that an
/// insert with `ON CONFLICT (key)` keeps its meaning (see the table's comment in
/// `services/orders/migrations`).
pub fn scoped_key(owner: &CustomerId, key: &IdempotencyKey) -> String {
    format!("{}\u{1f}{}", owner.as_str(), key.as_str())
}

/// Deletes up to `limit` expired records, oldest first (through the
/// `expires_at` index); returns how many. One short statement: a retention run
/// ([`crate::retention::purge_order_service`]) calls it a bounded number of times.
pub async fn purge_expired(db: impl PgExecutor<'_>, limit: i64) -> Result<u64, StoreError> {
    sqlx::query!(
        r#"DELETE FROM orders.idempotency_keys
           WHERE key IN (SELECT key FROM orders.idempotency_keys
                         WHERE expires_at <= now()
                         ORDER BY expires_at
                         LIMIT $1
                         FOR UPDATE SKIP LOCKED)"#,
        limit,
    )
    .execute(db)
    .await
    .map(|r| r.rows_affected())
    .map_err(|e| StoreError::database("purging expired idempotency keys", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_to_their_customer() {
        let customer = |c: &str| CustomerId::parse(c).expect("valid");
        let key = |k: &str| IdempotencyKey::parse_header(k.as_bytes()).expect("valid");
        let a = scoped_key(&customer("cust-a"), &key("k-1"));
        assert_eq!(a, "cust-a\u{1f}k-1");
        assert_ne!(a, scoped_key(&customer("cust-b"), &key("k-1")));
        // No pair of (customer, key) runs into another: customer ids have no separator.
        assert_ne!(
            scoped_key(&customer("a"), &key("b.c")),
            scoped_key(&customer("a.b"), &key("c"))
        );
        // Never a key that code from before per-customer keys stored (printable ASCII).
        assert!(a.bytes().any(|b| !(0x20..=0x7e).contains(&b)));
        assert!(scoped_key(&customer(&"c".repeat(64)), &key(&"k".repeat(255))).len() <= 320);
    }

    #[test]
    fn keys_parse_as_sf_strings_or_bare_tokens() {
        let parse =
            |v: &str| IdempotencyKey::parse_header(v.as_bytes()).map(|k| k.as_str().to_owned());
        assert_eq!(
            parse("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"")
                .ok()
                .as_deref(),
            Some("8e03978e-40d5-43e8-bc93-6894a57f9324")
        );
        assert_eq!(parse("abc-123").ok().as_deref(), Some("abc-123"));
        assert_eq!(
            parse(r#""a \"quoted\" key""#).ok().as_deref(),
            Some(r#"a "quoted" key"#)
        );
        for bad in [
            "",
            "\"\"",
            "\"unterminated",
            "\"x\"y",
            "has space",
            "\"tab\there\"",
            &"k".repeat(256),
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(IdempotencyKey::parse_header(&[0xff, 0x41]).is_err());
    }

    #[test]
    fn fingerprints_differ_for_different_requests() {
        assert_eq!(Fingerprint::of(b"a"), Fingerprint::of(b"a"));
        assert_ne!(Fingerprint::of(b"a"), Fingerprint::of(b"b"));
    }
}
