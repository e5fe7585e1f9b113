//! Tokens for the emulator's JWT authorizers: one development key per test
//! process, trusted by every emulator the harness starts, and bearer tokens
//! signed with it (one per subject and scopes, made once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use emulator::auth::{DevKey, TokenRequest, Trust, DEV_AUDIENCE, DEV_ISSUER};

/// Every scope a customer's client and a stock operator need, but not `orders:admin`.
pub const ALL_SCOPES: &str =
    "orders:read orders:write inventory:read inventory:write customers:read customers:write";

static KEY: OnceLock<Arc<DevKey>> = OnceLock::new();

/// The process's development key: a new one, unless [`use_state_dir_key`] chose one.
pub fn key() -> Arc<DevKey> {
    Arc::clone(KEY.get_or_init(|| Arc::new(DevKey::generate().expect("a development key"))))
}

/// Signs with the key of an emulator's state directory (a running `emulator up`'s),
/// before any token is made.
pub fn use_state_dir_key(state_dir: &std::path::Path) -> anyhow::Result<()> {
    let key = Arc::new(DevKey::load_or_create(state_dir)?);
    KEY.set(key)
        .map_err(|_| anyhow::anyhow!("a development key is already in use"))
}

/// What the harness's emulators trust: the process's development key.
pub fn trust() -> Trust {
    Trust::DevKey(key())
}

/// A token for `subject` with `scopes` (space-separated), valid for an hour.
pub fn token(subject: &str, scopes: &str) -> String {
    static MADE: OnceLock<Mutex<HashMap<(String, String), String>>> = OnceLock::new();
    let made = MADE.get_or_init(Mutex::default);
    let mut made = made
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    made.entry((subject.to_owned(), scopes.to_owned()))
        .or_insert_with(|| {
            key()
                .token(&TokenRequest {
                    subject: subject.to_owned(),
                    scopes: scopes.split_whitespace().map(str::to_owned).collect(),
                    ttl: Duration::from_secs(3600),
                    issuer: DEV_ISSUER.to_owned(),
                    audience: DEV_AUDIENCE.to_owned(),
                })
                .expect("a token")
        })
        .clone()
}

/// `Bearer <token>` for `subject` with [`ALL_SCOPES`].
pub fn bearer(subject: &str) -> String {
    format!("Bearer {}", token(subject, ALL_SCOPES))
}

/// A client whose every request carries [`bearer`] for `subject`.
pub fn client_as(subject: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        bearer(subject).parse().expect("a header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}
