//! API Gateway's JWT authorizers, as an HTTP API runs them in front of its
//! routes, and the keys the emulator trusts.
//!
//! The checks follow API Gateway's documented workflow: the token is read from
//! the identity source (bare, or after `Bearer `); its `kid` must name a trusted
//! key and its signature verify (RS256/384/512, PS256/384/512, ES256/384: API
//! Gateway itself accepts only the RSA ones); `iss` must be the authorizer's
//! issuer; `aud`, or `client_id` when there is no `aud`, one of its audiences;
//! `exp` after now, `nbf` and `iat` not after now; then the route's scopes:
//! any one of them in `scope` / `scp`. A request without a valid token gets
//! `401 {"message":"Unauthorized"}`, one without a scope `403
//! {"message":"Forbidden"}`, both with API Gateway's `www-authenticate` header;
//! the function is not invoked. The claims reach the function as
//! `requestContext.authorizer.jwt`.
//!
//! Keys: by default a development key of the emulator's own (ES256, kept in its
//! state directory; `emulator token` signs with it), or the public keys of a
//! JWKS file (`--jwks`), or none at all (`--no-auth`, for experiments).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};

use crate::template::Template;

/// The issuer of the development key's tokens, when the template's authorizer
/// names none that is known locally (a user pool the stack creates).
pub const DEV_ISSUER: &str = "https://order-emulator.local";
/// Their audience, likewise.
pub const DEV_AUDIENCE: &str = "order-emulator";
/// The development key's `kid`.
const DEV_KID: &str = "order-emulator-dev";
/// The subject `--no-auth` gives a request that carries no token.
pub const NO_AUTH_SUBJECT: &str = "local-developer";

/// The development key: ES256 (P-256), PKCS#8 PEM on disk.
pub struct DevKey {
    encoding: EncodingKey,
    jwk: Jwk,
    /// Where it is kept, if on disk.
    pub path: Option<PathBuf>,
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevKey")
            .field("kid", &DEV_KID)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DevKey {
    /// Its file under a state directory.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join("auth").join("dev-signing-key.pem")
    }

    /// A new key, in memory.
    pub fn generate() -> anyhow::Result<Self> {
        Self::from_pem(generate_pem()?.as_bytes(), None)
    }

    fn from_pem(pem: &[u8], path: Option<PathBuf>) -> anyhow::Result<Self> {
        let encoding = EncodingKey::from_ec_pem(pem).context("reading the development key")?;
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256)
            .context("the development key's public part")?;
        jwk.common.key_id = Some(DEV_KID.to_owned());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(Self {
            encoding,
            jwk,
            path,
        })
    }

    /// The key kept under `state_dir`, made on first use (readable by its owner only).
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path_in(state_dir);
        if let Ok(pem) = std::fs::read(&path) {
            return Self::from_pem(&pem, Some(path.clone()))
                .with_context(|| format!("{} is not the emulator's key", path.display()));
        }
        let dir = path.parent().context("the key's directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pem = generate_pem()?;
        let pem = pem.as_bytes();
        // Written aside, then linked into place: two processes starting at once
        // both end up with the one key that won.
        let aside = dir.join(format!(".dev-signing-key.{}.pem", std::process::id()));
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&aside)
                .with_context(|| format!("writing {}", aside.display()))?;
            file.write_all(pem)?;
            file.sync_all()?;
        }
        let linked = std::fs::hard_link(&aside, &path);
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => Self::from_pem(pem, Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let pem = std::fs::read(&path)?;
                Self::from_pem(&pem, Some(path))
            }
            Err(e) => Err(e).with_context(|| format!("storing {}", path.display())),
        }
    }

    /// The public key, as a JWKS document would list it.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    /// A signed token for `request`.
    pub fn token(&self, request: &TokenRequest) -> anyhow::Result<String> {
        let now = now_secs();
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(request.subject));
        claims.insert("iss".into(), json!(request.issuer));
        claims.insert("aud".into(), json!(request.audience));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        let ttl = i64::try_from(request.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        claims.insert("exp".into(), json!(now.saturating_add(ttl)));
        claims.insert("jti".into(), json!(uuid::Uuid::now_v7().to_string()));
        if !request.scopes.is_empty() {
            claims.insert("scope".into(), json!(request.scopes.join(" ")));
        }
        self.sign(&claims)
    }

    /// A token with exactly these claims (tests make expired or foreign ones).
    pub fn sign(&self, claims: &Map<String, Value>) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(DEV_KID.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).context("signing the token")
    }
}

/// A new P-256 private key, PKCS#8 PEM.
fn generate_pem() -> anyhow::Result<p256::pkcs8::der::zeroize::Zeroizing<String>> {
    use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
    // A random scalar; `from_slice` refuses zero and values past the group
    // order, which a retry replaces.
    let secret = loop {
        if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
            break key;
        }
    };
    secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow!("encoding the development key: {e}"))
}

/// `emulator token`: a token from `key` for `subject`, with `scopes` (space-separated)
/// or else every scope the template's routes ask for, and the issuer and audience
/// of the template's authorizer when known locally, else the development ones.
pub fn dev_token(
    template: &Template,
    key: &DevKey,
    subject: &str,
    scopes: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<String> {
    let scopes = match scopes {
        Some(scopes) => scopes.split_whitespace().map(str::to_owned).collect(),
        None => {
            let mut all: Vec<String> = template
                .functions
                .iter()
                .flat_map(|f| f.http_routes.iter())
                // A route's first scope: the others are other spellings of it
                // (Cognito's `orders/read` beside `orders:read`).
                .filter_map(|r| r.auth.scopes.first().cloned())
                .collect();
            all.sort();
            all.dedup();
            all
        }
    };
    let (issuer, audience) = Gate::token_audience(template);
    key.token(&TokenRequest {
        subject: subject.to_owned(),
        scopes,
        ttl,
        issuer,
        audience,
    })
}

/// What `emulator token` puts in a token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub subject: String,
    pub scopes: Vec<String>,
    pub ttl: Duration,
    pub issuer: String,
    pub audience: String,
}

/// The keys the authorizers trust.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The emulator's development key.
    DevKey(Arc<DevKey>),
    /// The keys of a JWKS document, from `source` (a file name).
    Jwks { source: String, keys: JwkSet },
    /// Nothing is verified: `--no-auth`.
    Off,
}

impl Trust {
    /// The keys of the JWKS file at `path`.
    pub fn jwks_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the JWKS file {}", path.display()))?;
        let keys: JwkSet = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JWKS document", path.display()))?;
        if keys.keys.is_empty() {
            bail!("{} lists no keys", path.display());
        }
        Ok(Self::Jwks {
            source: path.display().to_string(),
            keys,
        })
    }
}

/// Why a request was refused, as API Gateway answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// `401`: no token, or one that does not verify; why, for `www-authenticate`.
    Unauthorized(String),
    /// `403`: a valid token without any of the route's scopes.
    Forbidden { scopes: Vec<String> },
}

impl Denied {
    pub fn response(&self) -> axum::response::Response {
        let (status, message, challenge) = match self {
            Self::Unauthorized(why) => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                format!(
                    r#"Bearer scope="" error="invalid_token" error_description="{}""#,
                    why.replace('"', "'")
                ),
            ),
            Self::Forbidden { scopes } => (
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    r#"Bearer scope="{}" error="insufficient_scope" error_description="the token does not have any of the route's scopes""#,
                    scopes.join(" ")
                ),
            ),
        };
        let mut out = axum::response::Response::new(axum::body::Body::from(
            json!({ "message": message }).to_string(),
        ));
        *out.status_mut() = status;
        let headers = out.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        out
    }
}

/// One JWT authorizer with the values it checks.
#[derive(Debug)]
struct Authorizer {
    header: String,
    issuer: String,
    audiences: Vec<String>,
    /// Tokens already verified for this authorizer: their claims. A token's
    /// signature is checked once; its times on every request.
    verified: Mutex<HashMap<String, Arc<Verified>>>,
}

/// A verified token's claims, and the times checked on each use.
#[derive(Debug)]
struct Verified {
    claims: Map<String, Value>,
    exp: i64,
    nbf: Option<i64>,
    iat: Option<i64>,
}

/// How many verified tokens an authorizer remembers before it forgets them all.
const VERIFIED_CAPACITY: usize = 10_000;

/// The algorithms a trusted key may sign with: asymmetric ones only.
const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// The authorizers of a template's HTTP APIs, and the keys they trust.
#[derive(Debug)]
pub struct Gate {
    trust: Trust,
    /// By `Api/Authorizer`.
    authorizers: BTreeMap<String, Authorizer>,
    /// Trusted keys by `kid`.
    keys: HashMap<String, (DecodingKey, Option<Algorithm>)>,
}

impl Gate {
    /// The authorizers of `template`. An issuer or audience known only to AWS
    /// becomes the development key's ([`DEV_ISSUER`], [`DEV_AUDIENCE`]), which
    /// only the development key's tokens carry; with `--jwks`, give them with
    /// `--parameter-overrides`.
    pub fn new(template: &Template, trust: Trust) -> anyhow::Result<Self> {
        let mut authorizers = BTreeMap::new();
        for (api, spec) in &template.http_apis {
            for (name, jwt) in &spec.authorizers {
                let (issuer, audiences) = match (&jwt.issuer, &jwt.audiences) {
                    (Some(issuer), Some(audiences)) => (issuer.clone(), audiences.clone()),
                    _ if matches!(trust, Trust::Jwks { .. }) => bail!(
                        "{api}.{name}: its issuer or audience is known only to AWS; with --jwks \
                         give them as --parameter-overrides (AuthIssuer=... AuthAudience=...)"
                    ),
                    _ => (DEV_ISSUER.to_owned(), vec![DEV_AUDIENCE.to_owned()]),
                };
                authorizers.insert(
                    format!("{api}/{name}"),
                    Authorizer {
                        header: jwt.identity_header.clone(),
                        issuer,
                        audiences,
                        verified: Mutex::new(HashMap::new()),
                    },
                );
            }
        }
        let jwks = match &trust {
            Trust::DevKey(key) => key.jwks(),
            Trust::Jwks { keys, .. } => keys.clone(),
            Trust::Off => JwkSet { keys: Vec::new() },
        };
        let mut keys = HashMap::new();
        for (i, jwk) in jwks.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                bail!("key {i} (kid `{kid}`) of the trusted keys is not a usable public key");
            };
            let algorithm = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            keys.insert(kid, (key, algorithm));
        }
        Ok(Self {
            trust,
            authorizers,
            keys,
        })
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The issuer and audience `emulator token` should write for `template`'s
    /// first authorizer: the template's when known, else the development ones.
    pub fn token_audience(template: &Template) -> (String, String) {
        template
            .http_apis
            .values()
            .flat_map(|api| api.authorizers.values())
            .find_map(|jwt| {
                Some((
                    jwt.issuer.clone()?,
                    jwt.audiences.as_ref()?.first()?.clone(),
                ))
            })
            .unwrap_or_else(|| (DEV_ISSUER.to_owned(), DEV_AUDIENCE.to_owned()))
    }

    /// One line per authorizer for the banner, and what is trusted.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        match &self.trust {
            Trust::Off => {
                let _ = writeln!(
                    out,
                    "!! AUTHORIZERS OFF (--no-auth): tokens are NOT verified; a request without \
                     one runs as `{NO_AUTH_SUBJECT}` with the route's scopes. Never expose this port."
                );
                return out;
            }
            Trust::DevKey(key) => {
                let _ = writeln!(
                    out,
                    "Tokens: the emulator's development key{} (`emulator token --sub ID` makes one)",
                    key.path
                        .as_ref()
                        .map(|p| format!(" {}", p.display()))
                        .unwrap_or_default()
                );
            }
            Trust::Jwks { source, keys } => {
                let _ = writeln!(out, "Tokens: the {} key(s) of {source}", keys.keys.len());
            }
        }
        for (name, authorizer) in &self.authorizers {
            let _ = writeln!(
                out,
                "  {name}: iss {} aud {}",
                authorizer.issuer,
                authorizer.audiences.join(",")
            );
        }
        out
    }

    /// Checks a request for a route guarded by `authorizer` (`Api/Name`) with
    /// `scopes`: the `requestContext.authorizer` to send, or why not.
    pub fn authorize(
        &self,
        authorizer: &str,
        scopes: &[String],
        headers: &HeaderMap,
    ) -> Result<Value, Denied> {
        let Some(authorizer) = self.authorizers.get(authorizer) else {
            return Err(Denied::Unauthorized("unknown authorizer".into()));
        };
        let token = headers
            .get(authorizer.header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let v = v.trim();
                match v.get(..7) {
                    Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => v[7..].trim(),
                    _ => v,
                }
            })
            .filter(|t| !t.is_empty());
        if matches!(self.trust, Trust::Off) {
            return Ok(unverified(token, scopes));
        }
        let Some(token) = token else {
            return Err(Denied::Unauthorized(
                "the request has no token in its identity source".into(),
            ));
        };
        let verified = self.verified(authorizer, token)?;
        let now = now_secs();
        if verified.exp <= now {
            return Err(Denied::Unauthorized("the token has expired".into()));
        }
        if verified.nbf.is_some_and(|nbf| nbf > now) {
            return Err(Denied::Unauthorized("the token is not valid yet".into()));
        }
        if verified.iat.is_some_and(|iat| iat > now) {
            return Err(Denied::Unauthorized(
                "the token was issued in the future".into(),
            ));
        }
        let granted = token_scopes(&verified.claims);
        if !scopes.is_empty() && !scopes.iter().any(|s| granted.contains(s)) {
            return Err(Denied::Forbidden {
                scopes: scopes.to_vec(),
            });
        }
        Ok(context(&verified.claims, &granted))
    }

    /// The token's claims once its signature, issuer and audience are checked
    /// (remembered per token); its times are checked by the caller.
    fn verified(&self, authorizer: &Authorizer, token: &str) -> Result<Arc<Verified>, Denied> {
        if let Some(hit) = lock(&authorizer.verified).get(token) {
            return Ok(Arc::clone(hit));
        }
        let denied = |why: &str| Denied::Unauthorized(why.to_owned());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| denied("the token is not a well-formed JWT"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(denied("the token's algorithm is not supported"));
        }
        let kid = header.kid.as_deref().unwrap_or_default();
        let Some((key, algorithm)) = self.keys.get(kid) else {
            return Err(denied("the token's kid does not match a trusted key"));
        };
        if algorithm.is_some_and(|a| a != header.alg) {
            return Err(denied("the token's algorithm is not its key's"));
        }
        let mut validation = Validation::new(header.alg);
        // Times, issuer and audience are checked below, as API Gateway does.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|_| denied("the token's signature does not verify"))?;
        let claims = data.claims;
        if claims.get("iss").and_then(Value::as_str) != Some(authorizer.issuer.as_str()) {
            return Err(denied("the token does not have a valid issuer"));
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => authorizer.audiences.contains(aud),
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .any(|a| authorizer.audiences.iter().any(|x| x == a)),
            Some(_) => false,
            None => claims
                .get("client_id")
                .and_then(Value::as_str)
                .is_some_and(|c| authorizer.audiences.iter().any(|a| a == c)),
        };
        if !audience_ok {
            return Err(denied("the token does not have a valid audience"));
        }
        let time = |name: &str| claims.get(name).and_then(Value::as_i64);
        let Some(exp) = time("exp") else {
            return Err(denied("the token has no exp"));
        };
        let verified = Arc::new(Verified {
            exp,
            nbf: time("nbf"),
            iat: time("iat"),
            claims,
        });
        let mut cache = lock(&authorizer.verified);
        if cache.len() >= VERIFIED_CAPACITY {
            cache.clear();
        }
        cache.insert(token.to_owned(), Arc::clone(&verified));
        Ok(verified)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `scope` (space-separated) and `scp` (a list, or space-separated).
fn token_scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut scopes = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(text)) => scopes.extend(text.split_whitespace().map(str::to_owned)),
            Some(Value::Array(items)) => {
                scopes.extend(items.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            _ => {}
        }
    }
    scopes.dedup();
    scopes
}

/// `requestContext.authorizer` as API Gateway sends it: every claim as a string
/// (lists as `[a b]`), and the token's scopes.
fn context(claims: &Map<String, Value>, scopes: &[String]) -> Value {
    let claims: Map<String, Value> = claims
        .iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Array(items) => format!(
                    "[{}]",
                    items
                        .iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                other => other.to_string(),
            };
            (name.clone(), Value::String(text))
        })
        .collect();
    json!({
        "jwt": {
            "claims": claims,
            "scopes": if scopes.is_empty() { Value::Null } else { json!(scopes) },
        }
    })
}

/// The `requestContext.authorizer` a valid development token for `subject` with
/// `scopes` produces (`emulator generate-event http --sub`).
pub fn claims_context(subject: &str, scopes: &[String]) -> Value {
    let now = now_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(subject));
    claims.insert("iss".into(), json!(DEV_ISSUER));
    claims.insert("aud".into(), json!(DEV_AUDIENCE));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + 3600));
    if !scopes.is_empty() {
        claims.insert("scope".into(), json!(scopes.join(" ")));
    }
    context(&claims, scopes)
}

/// `--no-auth`: the token's claims read without any check, or, without a token,
/// [`NO_AUTH_SUBJECT`] with the route's scopes.
fn unverified(token: Option<&str>, scopes: &[String]) -> Value {
    let claims = token
        .and_then(|t| t.split('.').nth(1))
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok());
    match claims {
        Some(claims) => context(&claims, &token_scopes(&claims)),
        None => {
            let mut claims = Map::new();
            claims.insert("sub".into(), json!(NO_AUTH_SUBJECT));
            claims.insert("scope".into(), json!(scopes.join(" ")));
            context(&claims, scopes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
Resources:
  Api:
    Type: AWS::Serverless::HttpApi
    Properties:
      Auth:
        DefaultAuthorizer: Jwt
        Authorizers:
          Jwt:
            JwtConfiguration:
              issuer: !Sub "https://cognito-idp.${AWS::Region}.amazonaws.com/${Pool}"
              audience: [!Ref Client]
"#;

    fn gate() -> (Gate, Arc<DevKey>) {
        let template = crate::template::parse(TEMPLATE).expect("parses");
        let key = Arc::new(DevKey::generate().expect("a key"));
        (
            Gate::new(&template, Trust::DevKey(Arc::clone(&key))).expect("a gate"),
            key,
        )
    }

    fn request(subject: &str, scopes: &[&str]) -> TokenRequest {
        TokenRequest {
            subject: subject.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ttl: Duration::from_secs(60),
            issuer: DEV_ISSUER.into(),
            audience: DEV_AUDIENCE.into(),
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("a header"),
        );
        headers
    }

    #[test]
    fn a_dev_token_passes_with_its_claims_and_scopes() {
        let (gate, key) = gate();
        let token = key
            .token(&request("c-1", &["orders:read", "orders:write"]))
            .expect("a token");
        let scopes = ["orders:write".to_owned()];
        let context = gate
            .authorize("Api/Jwt", &scopes, &bearer(&token))
            .expect("passes");
        assert_eq!(context["jwt"]["claims"]["sub"], "c-1");
        assert_eq!(
            context["jwt"]["claims"]["scope"],
            "orders:read orders:write"
        );
        assert_eq!(
            context["jwt"]["scopes"],
            json!(["orders:read", "orders:write"])
        );
        // The bare token works too, and the second check is the remembered one.
        let mut bare = HeaderMap::new();
        bare.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&token).expect("a header"),
        );
        assert!(gate.authorize("Api/Jwt", &scopes, &bare).is_ok());
    }

    #[test]
    fn refusals_name_their_reason() {
        let (gate, key) = gate();
        let scopes = ["orders:write".to_owned()];
        let check = |headers: &HeaderMap| gate.authorize("Api/Jwt", &scopes, headers);
        let unauthorized = |r: Result<Value, Denied>, why: &str| match r {
            Err(Denied::Unauthorized(reason)) => assert!(reason.contains(why), "{reason}"),
            other => panic!("expected 401 ({why}), got {other:?}"),
        };
        unauthorized(check(&HeaderMap::new()), "no token");
        unauthorized(check(&bearer("not.a.jwt")), "well-formed");

        let other = DevKey::generate().expect("a key");
        let forged = other.token(&request("c-1", &["orders:write"])).expect("t");
        unauthorized(check(&bearer(&forged)), "signature");

        let mut wrong = request("c-1", &["orders:write"]);
        wrong.issuer = "https://elsewhere".into();
        unauthorized(check(&bearer(&key.token(&wrong).expect("t"))), "issuer");
        let mut wrong = request("c-1", &["orders:write"]);
        wrong.audience = "someone-else".into();
        unauthorized(check(&bearer(&key.token(&wrong).expect("t"))), "audience");
        let mut wrong = request("c-1", &["orders:write"]);
        wrong.ttl = Duration::ZERO;
        unauthorized(check(&bearer(&key.token(&wrong).expect("t"))), "expired");

        let reader = key.token(&request("c-1", &["orders:read"])).expect("t");
        assert_eq!(
            check(&bearer(&reader)),
            Err(Denied::Forbidden {
                scopes: scopes.to_vec()
            })
        );
    }

    /// Cognito's access tokens carry `client_id` instead of `aud`, and Okta's
    /// and Azure's `scp` instead of `scope`; a token issued in the future is
    /// refused, as API Gateway does.
    #[test]
    fn client_id_stands_for_aud_scp_for_scope_and_a_future_iat_is_refused() {
        let (gate, key) = gate();
        let scopes = ["orders:write".to_owned()];
        let now = now_secs();
        let sign = |extra: Value| {
            let mut claims = json!({"iss": DEV_ISSUER, "sub": "c-1", "exp": now + 60});
            for (name, value) in extra.as_object().cloned().unwrap_or_default() {
                claims[name] = value;
            }
            let claims = claims.as_object().cloned().unwrap_or_default();
            bearer(&key.sign(&claims).expect("signed"))
        };
        let check = |headers: &HeaderMap| gate.authorize("Api/Jwt", &scopes, headers);

        let cognito = sign(json!({"client_id": DEV_AUDIENCE, "scp": ["orders:write"]}));
        let context = check(&cognito).expect("client_id is the audience; scp a list");
        assert_eq!(context["jwt"]["scopes"], json!(["orders:write"]));
        let text = sign(json!({"aud": DEV_AUDIENCE, "scp": "orders:read orders:write"}));
        assert!(check(&text).is_ok(), "scp space-separated");
        let readers = sign(json!({"aud": DEV_AUDIENCE, "scp": ["orders:read"]}));
        assert!(matches!(check(&readers), Err(Denied::Forbidden { .. })));

        let refused = |headers: &HeaderMap, why: &str| match check(headers) {
            Err(Denied::Unauthorized(reason)) => assert!(reason.contains(why), "{reason}"),
            other => panic!("expected 401 ({why}), got {other:?}"),
        };
        refused(
            &sign(json!({"client_id": "another-client", "scope": "orders:write"})),
            "audience",
        );
        refused(&sign(json!({"scope": "orders:write"})), "audience");
        refused(
            &sign(json!({"aud": DEV_AUDIENCE, "scope": "orders:write", "iat": now + 300})),
            "future",
        );
        refused(
            &sign(json!({"aud": DEV_AUDIENCE, "scope": "orders:write", "exp": null})),
            "no exp",
        );
    }

    #[test]
    fn the_key_is_kept_and_reused() {
        let dir = std::env::temp_dir().join(format!("emulator-auth-{}", uuid::Uuid::now_v7()));
        let first = DevKey::load_or_create(&dir).expect("made");
        let second = DevKey::load_or_create(&dir).expect("read");
        assert_eq!(first.jwks(), second.jwks());
        let path = DevKey::path_in(&dir);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path)
            .expect("a file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is its owner's only");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_auth_passes_unverified_claims_or_a_developer() {
        let template = crate::template::parse(TEMPLATE).expect("parses");
        let gate = Gate::new(&template, Trust::Off).expect("a gate");
        let scopes = ["orders:write".to_owned()];
        let anonymous = gate
            .authorize("Api/Jwt", &scopes, &HeaderMap::new())
            .expect("passes");
        assert_eq!(anonymous["jwt"]["claims"]["sub"], NO_AUTH_SUBJECT);
        let key = DevKey::generate().expect("a key");
        let mut wrong = request("c-9", &[]);
        wrong.issuer = "https://anyone".into();
        let token = key.token(&wrong).expect("t");
        let context = gate
            .authorize("Api/Jwt", &scopes, &bearer(&token))
            .expect("passes");
        assert_eq!(context["jwt"]["claims"]["sub"], "c-9");
    }
}
