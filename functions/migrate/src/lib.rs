//! The migrate function: applies the embedded migrations ([`migrations`]: the
//! toolkit's, then every service's folder `services/*/migrations`, found at
//! build time) at deploy time, so cold starts never do. A migration that
//! replaces earlier ones (`-- toolkit:replaces ...`, [`shared::db::REPLACES`])
//! is recorded, not run, where those were applied.
//!
//! CloudFormation invokes it for the `DatabaseMigrations` custom resource of
//! `template.yaml` and waits for the answer this function PUTs to the request's
//! `ResponseURL`; invoked directly (`aws lambda invoke` with `{}` or any event
//! that is not a CloudFormation request) it applies the migrations and returns
//! what it applied ([`Applied`]).
//!
//! - Create / Update: apply, answer `SUCCESS` with the versions in `Data`, or
//!   `FAILED` with the reason: a database that cannot be reached, a migration
//!   that fails, a panic, or the function's time running out (the migrations get
//!   the time left less [`Config::safety_margin`], which is kept for the answer).
//!   CloudFormation is never left waiting for an answer that will not come.
//! - Delete: `SUCCESS`, and the database is not touched: migrations are never
//!   reverted.
//!
//! After the migrations it sets the passwords of the services' database roles
//! given in its environment ([`roles`]).
//!
//! It never logs the `ResponseURL`'s query string (its signature lets anyone
//! answer for the stack) nor any database password.

pub mod roles;

include!(concat!(env!("OUT_DIR"), "/services.rs"));

/// Every migration this function applies, in the order it applies them: the
/// toolkit's, then each service's folder by name.
pub fn migrations() -> Vec<sqlx::migrate::Migrator> {
    let mut sets = vec![shared::db::toolkit_migrations()];
    sets.extend(service_migrations().into_iter().map(|(_, m)| m));
    sets
}

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::cloudformation::{
    CloudFormationCustomResourceRequest, CloudFormationCustomResourceResponse,
    CloudFormationCustomResourceResponseStatus as Status,
};
use lambda_runtime::LambdaEvent;
use serde::Serialize;
use serde_json::Value;
use shared::config::{ConfigError, DatabaseConfig, Env};
use shared::telemetry::Invocation;
use sqlx::migrate::{Migrate as _, MigrateError};
use sqlx::{Connection as _, PgPool};
use tracing::{error, info, warn, Instrument as _};

use crate::roles::RolePassword;

/// The binary's name: the `service` of its logs and metrics.
pub const SERVICE: &str = "migrate";

/// The function's settings, read once at cold start.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    /// `SAFETY_MARGIN_MS` (10000): the migrations stop this long before the
    /// function's timeout, so the answer always goes out.
    pub safety_margin: Duration,
    /// `RESPONSE_TIMEOUT_MS` (5000): one attempt at delivering the answer.
    pub response_timeout: Duration,
    /// The service roles' passwords (`ORDER_SERVICE_DATABASE_PASSWORD`, ...).
    pub role_passwords: Vec<RolePassword>,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseConfig::from_env(env)?,
            safety_margin: env.millis_or("SAFETY_MARGIN_MS", Duration::from_secs(10))?,
            response_timeout: env.millis_or("RESPONSE_TIMEOUT_MS", Duration::from_secs(5))?,
            role_passwords: RolePassword::from_env(env)?,
        })
    }
}

/// What the handler borrows: the pool, and the HTTP client for the answers.
#[derive(Debug)]
pub struct Deps {
    pub pool: PgPool,
    http: reqwest::Client,
    safety_margin: Duration,
    response_timeout: Duration,
    /// `orders at db.internal:5432`, for reasons and logs (no credentials).
    database: String,
    /// The physical resource id a Create answers with.
    physical_id: String,
    role_passwords: Vec<RolePassword>,
}

impl Deps {
    /// Builds the lazy pool and the HTTP client; connects to nothing yet.
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let options = config.database.connect_options();
        let name = options.get_database().unwrap_or("postgres").to_owned();
        let http = reqwest::Client::builder()
            // A pre-signed URL is answered where it points; a redirect would
            // be something else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(reqwest::Error::without_url)?;
        Ok(Self {
            pool: shared::db::lazy_pool(&config.database),
            http,
            safety_margin: config.safety_margin,
            response_timeout: config.response_timeout,
            database: format!("{name} at {}:{}", options.get_host(), options.get_port()),
            physical_id: format!("{name}-migrations"),
            role_passwords: config.role_passwords.clone(),
        })
    }
}

/// What one run applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The versions this run applied, in order.
    pub applied: Vec<i64>,
    /// How many migrations were waiting when the run started.
    pub pending_before: usize,
    /// The newest version now applied; `None` on a database without migrations.
    pub latest_version: Option<i64>,
}

impl Applied {
    fn between(before: &BTreeSet<i64>, after: &BTreeSet<i64>) -> Self {
        let known = shared::db::versions(&migrations());
        Self {
            applied: known
                .iter()
                .copied()
                .filter(|v| after.contains(v) && !before.contains(v))
                .collect(),
            pending_before: known.difference(before).count(),
            latest_version: after.last().copied(),
        }
    }

    fn summary(&self) -> String {
        let latest = self
            .latest_version
            .map_or_else(|| "none".to_owned(), |v| v.to_string());
        match self.applied.len() {
            0 => format!("the database is up to date (latest migration {latest})"),
            n => format!("applied {n} migration(s), latest {latest}"),
        }
    }

    /// `Data` of the answer: `!GetAtt DatabaseMigrations.LatestVersion` and so on.
    fn data(&self) -> HashMap<String, String> {
        let applied: Vec<String> = self.applied.iter().map(i64::to_string).collect();
        HashMap::from([
            ("Applied".to_owned(), applied.join(",")),
            ("PendingBefore".to_owned(), self.pending_before.to_string()),
            (
                "LatestVersion".to_owned(),
                self.latest_version
                    .map_or_else(String::new, |v| v.to_string()),
            ),
        ])
    }
}

/// Why the migrations were not applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot connect to the database {database} (is it up, and does its security group admit the functions' security group?): {source}")]
    Connect {
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying the migrations to {database} failed: {source}")]
    Migrate {
        database: String,
        #[source]
        source: MigrateError,
    },
    #[error("setting the password of the database role {role} in {database} failed: {source}")]
    RolePassword {
        database: String,
        role: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the migrations did not finish in the {}s left before the function's timeout (less its safety margin); what was in progress is rolled back", .0.as_secs())]
    TimedOut(Duration),
    #[error("the migration step panicked: {0}")]
    Panicked(String),
}

/// Why CloudFormation could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("the ResponseURL is not an HTTPS URL")]
    InvalidUrl,
    #[error("encoding the answer: {0}")]
    Encode(#[from] serde_json::Error),
    /// The URL is removed from the error: its query string is a credential.
    #[error("sending the answer to {to} failed: {}", causes(.source))]
    Send {
        to: ResponseUrl,
        #[source]
        source: reqwest::Error,
    },
    #[error("{to} refused the answer with HTTP {status}")]
    Refused {
        to: ResponseUrl,
        status: reqwest::StatusCode,
    },
}

/// `error: cause: cause`, as reqwest's own message says only "error sending request".
fn causes(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A failed invocation: Lambda records it (a direct invocation's caller sees it).
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// A direct invocation whose migrations failed.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// A CloudFormation request that could not be answered.
    #[error("CloudFormation was not answered: {0}")]
    Response(#[from] ResponseError),
}

impl From<InvocationError> for lambda_runtime::Diagnostic {
    fn from(error: InvocationError) -> Self {
        Self {
            error_type: match error {
                InvocationError::Migration(_) => "Migrate.Failed",
                InvocationError::Response(_) => "Migrate.NotAnswered",
            }
            .to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// What an invocation returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// Invoked directly: what was applied.
    Direct(Applied),
    /// A CloudFormation request: what it was told.
    CloudFormation(Answered),
}

/// The answer delivered to CloudFormation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Answered {
    pub status: Status,
    pub reason: String,
    pub physical_resource_id: String,
}

/// The `ResponseURL`, shown without its query string (the signature).
#[derive(Clone)]
pub struct ResponseUrl(reqwest::Url);

impl ResponseUrl {
    /// HTTPS, or plain HTTP to this machine (a stand-in server in tests).
    pub fn parse(text: &str) -> Result<Self, ResponseError> {
        let url = reqwest::Url::parse(text).map_err(|_| ResponseError::InvalidUrl)?;
        let loopback = match url.host_str() {
            Some("localhost") => true,
            Some(host) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        };
        match url.scheme() {
            "https" => Ok(Self(url)),
            "http" if loopback => Ok(Self(url)),
            _ => Err(ResponseError::InvalidUrl),
        }
    }
}

impl fmt::Display for ResponseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        write!(f, "{shown}")
    }
}

impl fmt::Debug for ResponseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseUrl({self})")
    }
}

/// One invocation: a CloudFormation custom resource request, or anything else
/// (applied directly).
pub async fn handle(deps: &Deps, event: LambdaEvent<Value>) -> Result<Answer, InvocationError> {
    let (payload, context) = event.into_parts();
    let time = TimeBudget::new(context.deadline, deps.safety_margin);
    let invocation = Invocation::start(
        SERVICE,
        &context.request_id,
        context.xray_trace_id.as_deref(),
    );
    invocation.run(async move {
        match Request::classify(payload) {
            Request::Direct => {
                info!(database = %deps.database, "applying the migrations (direct invocation)");
                let applied = apply_within(deps, time.for_work()).await?;
                info!(applied = ?applied.applied, latest_version = ?applied.latest_version, "migrations applied");
                Ok(Answer::Direct(applied))
            }
            Request::CloudFormation { target, action } => {
                let log_stream = context.env_config.log_stream.clone();
                answer(deps, target, action, &time, &log_stream).await
            }
        }
    })
    .await
}

/// Applies every pending migration and says which ones it applied.
///
/// The work runs on a connection of its own that is closed afterwards, never
/// returned to the pool: sqlx holds a session-level advisory lock while it
/// migrates and does not release it when a migration fails, so a pooled
/// connection would keep the lock and make every later run wait forever.
pub async fn apply(pool: &PgPool, database: &str) -> Result<Applied, MigrationError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|source| MigrationError::Connect {
            database: database.to_owned(),
            source,
        })?
        .detach();
    let migrate = |source| MigrationError::Migrate {
        database: database.to_owned(),
        source,
    };
    // Under the migrator's own lock (advisory locks stack, so `migrate_on`
    // takes it again), so "before" and "after" see no other run's work.
    conn.lock().await.map_err(migrate)?;
    let result = async {
        conn.ensure_migrations_table().await?;
        let before = versions(conn.list_applied_migrations().await?);
        shared::db::migrate_on(&mut conn, migrations()).await?;
        let after = versions(conn.list_applied_migrations().await?);
        Ok((before, after))
    }
    .await;
    conn.unlock().await.map_err(migrate)?;
    let (before, after) = result.map_err(migrate)?;
    if let Err(e) = conn.close().await {
        warn!(error = %e, "closing the migration connection");
    }
    Ok(Applied::between(&before, &after))
}

fn versions(applied: Vec<sqlx::migrate::AppliedMigration>) -> BTreeSet<i64> {
    applied.into_iter().map(|m| m.version).collect()
}

/// [`apply`] in a task of its own, under `budget`; then the service roles' passwords.
async fn apply_within(deps: &Deps, budget: Duration) -> Result<Applied, MigrationError> {
    let pool = deps.pool.clone();
    let database = deps.database.clone();
    let applied = guarded(budget, async move { apply(&pool, &database).await }).await?;
    set_role_passwords(&deps.pool, &deps.database, &deps.role_passwords).await?;
    Ok(applied)
}

/// Sets the service roles' passwords (statements of a few milliseconds, under
/// the pool's statement timeout).
pub async fn set_role_passwords(
    pool: &PgPool,
    database: &str,
    roles: &[RolePassword],
) -> Result<(), MigrationError> {
    roles::set_passwords(pool, roles)
        .await
        .map_err(|(role, source)| MigrationError::RolePassword {
            database: database.to_owned(),
            role,
            source,
        })
}

/// Runs `work` as a task: a panic becomes [`MigrationError::Panicked`], running
/// past `budget` aborts it (dropping its connection, which rolls back and
/// unlocks on the server) and becomes [`MigrationError::TimedOut`].
pub async fn guarded<T, F>(budget: Duration, work: F) -> Result<T, MigrationError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, MigrationError>> + Send + 'static,
{
    if budget.is_zero() {
        return Err(MigrationError::TimedOut(budget));
    }
    // In the invocation's span, so its lines keep the request id.
    let mut task = tokio::spawn(work.in_current_span());
    match tokio::time::timeout(budget, &mut task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(MigrationError::Panicked(panic_message(join))),
        Err(_) => {
            task.abort();
            Err(MigrationError::TimedOut(budget))
        }
    }
}

fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// The invocation's time: the work must end [`Config::safety_margin`] before
/// the deadline; the answer may use what is left until the deadline.
#[derive(Debug, Clone, Copy)]
struct TimeBudget {
    work_ends: Instant,
    deadline: Instant,
}

impl TimeBudget {
    /// Lambda's longest timeout, when the context gives no deadline.
    const UNKNOWN: Duration = Duration::from_secs(15 * 60);

    fn new(deadline_epoch_ms: u64, margin: Duration) -> Self {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let left = if deadline_epoch_ms == 0 {
            Self::UNKNOWN
        } else {
            Duration::from_millis(deadline_epoch_ms.saturating_sub(now_ms))
        };
        let now = Instant::now();
        Self {
            work_ends: now + left.saturating_sub(margin),
            deadline: now + left,
        }
    }

    fn for_work(&self) -> Duration {
        self.work_ends.saturating_duration_since(Instant::now())
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Where an answer goes and what it must echo: the fields every request type shares.
#[derive(Debug)]
struct Target {
    url: String,
    stack_id: String,
    request_id: String,
    logical_resource_id: String,
    /// `None` on Create: this function names the resource.
    physical_resource_id: Option<String>,
}

#[derive(Debug)]
enum Action {
    /// Create or Update.
    Apply(&'static str),
    /// Delete.
    Keep,
    /// A request this function cannot read.
    Refuse(String),
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Self::Apply(name) => name,
            Self::Keep => "Delete",
            Self::Refuse(_) => "unreadable",
        }
    }
}

#[derive(Debug)]
enum Request {
    Direct,
    CloudFormation { target: Target, action: Action },
}

impl Request {
    /// A payload with a `ResponseURL` is CloudFormation's, and is answered even
    /// when it cannot be read (`FAILED`); anything else is a direct invocation.
    fn classify(payload: Value) -> Self {
        let Some(url) = payload.get("ResponseURL").and_then(Value::as_str) else {
            return Self::Direct;
        };
        let field = |name: &str| {
            payload
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let mut target = Target {
            url: url.to_owned(),
            stack_id: field("StackId"),
            request_id: field("RequestId"),
            logical_resource_id: field("LogicalResourceId"),
            physical_resource_id: payload
                .get("PhysicalResourceId")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        let action =
            match serde_json::from_value::<CloudFormationCustomResourceRequest>(payload.clone()) {
                Ok(CloudFormationCustomResourceRequest::Create(_)) => Action::Apply("Create"),
                Ok(CloudFormationCustomResourceRequest::Update(r)) => {
                    target.physical_resource_id = Some(r.physical_resource_id);
                    Action::Apply("Update")
                }
                Ok(CloudFormationCustomResourceRequest::Delete(r)) => {
                    target.physical_resource_id = Some(r.physical_resource_id);
                    Action::Keep
                }
                Ok(_) => Action::Refuse("unsupported custom resource request type".to_owned()),
                Err(e) => Action::Refuse(format!("malformed custom resource request: {e}")),
            };
        Self::CloudFormation { target, action }
    }
}

/// CloudFormation's limit is 4 KiB for the whole answer; the reason is kept well under it.
const MAX_REASON_CHARS: usize = 1500;

async fn answer(
    deps: &Deps,
    target: Target,
    action: Action,
    time: &TimeBudget,
    log_stream: &str,
) -> Result<Answer, InvocationError> {
    // Validated first: a URL this function will not answer must not cost a migration.
    let to = ResponseUrl::parse(&target.url)?;
    info!(
        request_type = action.name(),
        stack_id = %target.stack_id,
        logical_resource_id = %target.logical_resource_id,
        cloudformation_request_id = %target.request_id,
        response_to = %to,
        "custom resource request"
    );
    let physical_resource_id = target
        .physical_resource_id
        .clone()
        .unwrap_or_else(|| deps.physical_id.clone());
    let (status, reason, data) = match action {
        Action::Apply(_) => match apply_within(deps, time.for_work()).await {
            Ok(applied) => {
                info!(applied = ?applied.applied, latest_version = ?applied.latest_version, "migrations applied");
                (Status::Success, applied.summary(), applied.data())
            }
            Err(e) => {
                error!(error = %e, "migrations failed");
                (Status::Failed, e.to_string(), HashMap::new())
            }
        },
        Action::Keep => (
            Status::Success,
            "nothing to do on Delete: migrations are never reverted".to_owned(),
            HashMap::new(),
        ),
        Action::Refuse(reason) => {
            error!(%reason, "refusing the request");
            (Status::Failed, reason, HashMap::new())
        }
    };
    let reason = if log_stream.is_empty() || status == Status::Success {
        reason
    } else {
        format!("{reason} (log stream {log_stream})")
    };
    let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();

    let mut response = CloudFormationCustomResourceResponse::default();
    response.status = status.clone();
    response.reason = Some(reason.clone());
    response
        .physical_resource_id
        .clone_from(&physical_resource_id);
    response.stack_id = target.stack_id;
    response.request_id = target.request_id;
    response.logical_resource_id = target.logical_resource_id;
    response.data = data;
    send(deps, &to, &response, time).await?;
    info!(status = ?status, %physical_resource_id, "answered CloudFormation");
    Ok(Answer::CloudFormation(Answered {
        status,
        reason,
        physical_resource_id,
    }))
}

/// PUTs the answer, retrying briefly (up to 3 attempts while time is left).
async fn send(
    deps: &Deps,
    to: &ResponseUrl,
    response: &CloudFormationCustomResourceResponse,
    time: &TimeBudget,
) -> Result<(), ResponseError> {
    let body = serde_json::to_vec(response)?;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let timeout = deps
            .response_timeout
            .min(time.left())
            .max(Duration::from_millis(250));
        // No Content-Type: the pre-signed URL was signed without one, and S3
        // checks what is sent against the signature.
        let sent = deps
            .http
            .put(to.0.clone())
            .timeout(timeout)
            .body(body.clone())
            .send()
            .await;
        let error = match sent {
            Ok(reply) if reply.status().is_success() => return Ok(()),
            Ok(reply) => ResponseError::Refused {
                to: to.clone(),
                status: reply.status(),
            },
            Err(e) => ResponseError::Send {
                to: to.clone(),
                source: e.without_url(),
            },
        };
        warn!(attempt, error = %error, "answering CloudFormation failed");
        if attempt >= 3 || time.left() < Duration::from_secs(1) {
            return Err(error);
        }
        tokio::time::sleep(Duration::from_millis(200) * attempt).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in the work is an error with its message, not a lost answer.
    #[tokio::test]
    async fn a_panic_becomes_an_error() {
        let result: Result<(), _> = guarded(Duration::from_secs(5), async {
            panic!("boom");
        })
        .await;
        let message = result.expect_err("a panic").to_string();
        assert_eq!(message, "the migration step panicked: boom");
    }

    /// Work past its budget is stopped and reported.
    #[tokio::test]
    async fn running_out_of_time_becomes_an_error() {
        let result: Result<(), _> = guarded(Duration::from_millis(20), async {
            std::future::pending::<()>().await;
            Ok(())
        })
        .await;
        assert!(matches!(result, Err(MigrationError::TimedOut(_))));
        let none: Result<(), _> = guarded(Duration::ZERO, async { Ok(()) }).await;
        assert!(matches!(none, Err(MigrationError::TimedOut(_))));
    }

    /// The response URL is shown without its signature, and only HTTPS (or
    /// loopback HTTP) is accepted.
    #[test]
    fn response_urls() {
        let url = ResponseUrl::parse(
            "https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/arn%3Aaws/req?AWSAccessKeyId=AKIA&Expires=1&Signature=sekrit",
        )
        .expect("https");
        let shown = format!("{url} {url:?}");
        assert!(
            !shown.contains("sekrit") && !shown.contains("AKIA"),
            "{shown}"
        );
        assert!(
            shown.contains("useast1.s3.amazonaws.com/arn%3Aaws/req"),
            "{shown}"
        );
        assert!(ResponseUrl::parse("http://127.0.0.1:9/x?s=1").is_ok());
        assert!(ResponseUrl::parse("http://localhost:9/x").is_ok());
        for refused in ["http://example.com/x?s=1", "ftp://127.0.0.1/x", "not a url"] {
            let err = ResponseUrl::parse(refused).expect_err(refused).to_string();
            assert_eq!(err, "the ResponseURL is not an HTTPS URL");
        }
    }

    /// CloudFormation requests are recognised by their `ResponseURL`; anything
    /// else is a direct invocation.
    #[test]
    fn classification() {
        assert!(matches!(
            Request::classify(serde_json::json!({})),
            Request::Direct
        ));
        assert!(matches!(
            Request::classify(serde_json::json!({"RequestType": "Create"})),
            Request::Direct
        ));
        let Request::CloudFormation { target, action } = Request::classify(serde_json::json!({
            "RequestType": "Bogus", "ResponseURL": "https://x/y", "StackId": "s",
            "RequestId": "r", "LogicalResourceId": "L"
        })) else {
            panic!("a CloudFormation request");
        };
        assert_eq!(target.stack_id, "s");
        assert!(matches!(action, Action::Refuse(reason) if reason.starts_with("malformed")));
    }
}
