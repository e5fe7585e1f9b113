//! The services' database roles (created by each service's migrations) and their passwords.
//!
//! In AWS each role's password is generated in Secrets Manager and resolved into
//! this function's environment as `<ROLE>_DATABASE_PASSWORD`
//! (`ORDER_SERVICE_DATABASE_PASSWORD` for the role `order_service`); after the
//! migrations, each role named so gets its password. A new service's role needs
//! only its variable. The password never reaches the
//! server in clear text: as psql's `\password` does, the SCRAM-SHA-256 verifier is
//! computed here and `ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'` sends only
//! that, so a server that logs DDL statements logs no password.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest as _, Sha256};
use shared::config::{ConfigError, Env};
use sqlx::PgPool;

/// The end of a role's password variable: `ORDER_SERVICE` + this.
pub const PASSWORD_SUFFIX: &str = "_DATABASE_PASSWORD";

/// PostgreSQL's default iteration count (`scram_iterations`).
const ITERATIONS: u32 = 4096;

/// A role and the password it is to have.
#[derive(Clone)]
pub struct RolePassword {
    pub role: String,
    password: SecretString,
}

impl fmt::Debug for RolePassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RolePassword")
            .field("role", &self.role)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl RolePassword {
    pub fn new(role: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            password: SecretString::from(password.into()),
        }
    }

    /// The roles whose password variable is set, by role (locally, none:
    /// trust on loopback). `DATABASE_PASSWORD` itself is the master user's.
    pub fn from_env(env: &Env) -> Result<Vec<Self>, ConfigError> {
        let mut roles = Vec::new();
        for var in env.names() {
            let Some(role) = var.strip_suffix(PASSWORD_SUFFIX) else {
                continue;
            };
            if role.is_empty() {
                continue;
            }
            if !role
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(ConfigError::Malformed {
                    var: "<ROLE>_DATABASE_PASSWORD",
                    reason: format!("{var}: a role's name is upper-case letters, digits and _"),
                });
            }
            if let Some(password) = env.get_named(var) {
                roles.push(Self::new(role.to_ascii_lowercase(), password));
            }
        }
        roles.sort_by(|a, b| a.role.cmp(&b.role));
        Ok(roles)
    }
}

/// Sets each role's password (the roles exist once the migrations ran); an error
/// names the role.
pub async fn set_passwords(
    pool: &PgPool,
    roles: &[RolePassword],
) -> Result<(), (String, sqlx::Error)> {
    for role in roles {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let verifier = scram_verifier(role.password.expose_secret(), &salt, ITERATIONS);
        // A utility statement takes no parameters. The role is one of ours (an
        // identifier without quotes); the verifier is base64, digits, `$` and `:`.
        sqlx::raw_sql(&format!(
            "ALTER ROLE \"{}\" PASSWORD '{verifier}'",
            role.role
        ))
        .execute(pool)
        .await
        .map_err(|e| (role.role.clone(), e))?;
        tracing::info!(role = role.role, "service role password set");
    }
    Ok(())
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores (RFC 5802 / 7677):
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
pub fn scram_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    let salted = hi(password.as_bytes(), salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    )
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one block: RFC 5802's `Hi`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut result = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (r, b) in result.iter_mut().zip(u) {
            *r ^= b;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_has_postgresqls_shape() {
        let verifier = scram_verifier("pencil", b"0123456789abcdef", 4096);
        // Computed independently (Python's hashlib.pbkdf2_hmac and hmac).
        assert_eq!(
            verifier,
            "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$\
             nQpbZ77WudtqufPwikHXGRt6g2QJ4zns8bZLw273DRM=:\
             jn2amWP1q1h+jgjy0YTO14S6/F02SV7taipOeB7ef20="
        );
        assert!(!verifier.contains("pencil") && !verifier.contains('\''));
    }

    #[test]
    fn passwords_come_from_their_variables_and_stay_out_of_debug() {
        let env = Env::from_pairs([
            ("ORDER_SERVICE_DATABASE_PASSWORD", "hunter2"),
            ("OUTBOX_RELAY_DATABASE_PASSWORD", "relaypw"),
        ]);
        let roles = RolePassword::from_env(&env).expect("valid");
        let names: Vec<_> = roles.iter().map(|r| r.role.as_str()).collect();
        assert_eq!(names, ["order_service", "outbox_relay"]);
        let env = Env::from_pairs([
            ("DATABASE_PASSWORD", "master"),
            ("CUSTOMER_SERVICE_DATABASE_PASSWORD", "c"),
        ]);
        let roles = RolePassword::from_env(&env).expect("valid");
        let names: Vec<_> = roles.iter().map(|r| r.role.as_str()).collect();
        assert_eq!(names, ["customer_service"]);
        let bad = Env::from_pairs([("x-y_DATABASE_PASSWORD", "p")]);
        assert!(RolePassword::from_env(&bad).is_err());
        let shown = format!("{roles:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("relaypw"));
    }
}
