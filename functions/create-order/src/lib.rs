//! The create-order function: `POST /orders` and `GET /orders/{id}` behind an API
//! Gateway HTTP API (payload format 2.0).
//!
//! [`handle`] is the whole function; `main.rs` only builds its [`Deps`] once and
//! hands it to the Lambda runtime. The emulator and the tests call [`handle`]
//! directly. Every answer, success or failure, is an HTTP response: the function
//! never reports an invocation error to Lambda for a request it understood.

mod body;
mod problem;
mod view;

use std::time::Duration;

use lambda_http::http::{header, HeaderValue, Method, StatusCode};
use lambda_http::{Body, Request, RequestExt, Response};
use shared::config::{ConfigError, DatabaseConfig, Env};
use shared::domain::{EventId, OrderId};
use shared::envelope::now_utc;
use shared::events::OrderCreatedV1;
use shared::idempotency::{self, Fingerprint, IdempotencyKey, Lookup, StoredResponse};
use shared::outbox::{self, Outbox};
use shared::trace::TraceParent;
use shared::{orders, StoreError};
use sqlx::{PgConnection, PgPool};
use tracing::{error, info, warn, Instrument};

pub use body::CreateOrder;
pub use problem::{FieldError, Problem};
pub use view::OrderView;

/// Bodies larger than this are refused with `413` before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The function's settings, read once at cold start.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    /// How long a stored `Idempotency-Key` response is replayed (`IDEMPOTENCY_TTL_SECS`, 86400).
    pub idempotency_ttl: Duration,
}

impl Config {
    pub const IDEMPOTENCY_TTL_SECS: &'static str = "IDEMPOTENCY_TTL_SECS";

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseConfig::from_env(env)?,
            idempotency_ttl: Self::idempotency_ttl(env)?,
        })
    }

    /// `IDEMPOTENCY_TTL_SECS`, at least 1; 24 hours when unset.
    pub fn idempotency_ttl(env: &Env) -> Result<Duration, ConfigError> {
        match env.parse_or::<u64>(Self::IDEMPOTENCY_TTL_SECS, 24 * 60 * 60)? {
            0 => Err(ConfigError::Malformed {
                var: Self::IDEMPOTENCY_TTL_SECS,
                reason: "must be at least 1 (seconds)".into(),
            }),
            secs => Ok(Duration::from_secs(secs)),
        }
    }
}

/// What the handler borrows: built once per process, never per request.
#[derive(Debug, Clone)]
pub struct Deps {
    pub pool: PgPool,
    pub idempotency_ttl: Duration,
}

impl Deps {
    /// Builds the (lazily connecting) pool for `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            pool: shared::db::lazy_pool(&config.database),
            idempotency_ttl: config.idempotency_ttl,
        }
    }
}

/// The route a request matched.
enum Route {
    Orders,
    Order(String),
}

fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/orders")?;
    if rest.is_empty() {
        return Some(Route::Orders);
    }
    let id = rest.strip_prefix('/')?;
    (!id.is_empty() && !id.contains('/')).then(|| Route::Order(id.to_owned()))
}

/// Answers one HTTP request.
pub async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    let path = match request.raw_http_path() {
        "" => request.uri().path().to_owned(),
        raw => raw.to_owned(),
    };
    let traceparent =
        incoming_traceparent(&request).map_or_else(TraceParent::new_root, |tp| tp.child());
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %path,
        request_id = request_id(&request).unwrap_or_default(),
        trace_id = %traceparent.trace_id(),
        order_id = tracing::field::Empty,
    );
    async move {
        let response = match (route(&path), request.method()) {
            (Some(Route::Orders), &Method::POST) => create(deps, &request, traceparent).await,
            (Some(Route::Orders), _) => Problem::method_not_allowed("POST").into_response(),
            (Some(Route::Order(id)), &Method::GET) => get(deps, &id).await,
            (Some(Route::Order(_)), _) => Problem::method_not_allowed("GET").into_response(),
            (None, _) => Problem::not_found(format!("no route for {path}")).into_response(),
        };
        info!(status = response.status().as_u16(), "answered");
        response
    }
    .instrument(span)
    .await
}

fn request_id(request: &Request) -> Option<String> {
    match request.request_context_ref()? {
        lambda_http::request::RequestContext::ApiGatewayV2(ctx) => ctx.request_id.clone(),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

fn incoming_traceparent(request: &Request) -> Option<TraceParent> {
    let value = request.headers().get("traceparent")?.to_str().ok()?;
    TraceParent::parse(value).ok()
}

async fn create(deps: &Deps, request: &Request, traceparent: TraceParent) -> Response<Body> {
    match create_order(deps, request, traceparent).await {
        Ok(response) | Err(response) => response,
    }
}

/// `POST /orders`. `Err` holds the (error) response too; it only lets `?` stop early.
async fn create_order(
    deps: &Deps,
    request: &Request,
    traceparent: TraceParent,
) -> Result<Response<Body>, Response<Body>> {
    check_content_type(request).map_err(Problem::into_response)?;
    let bytes: &[u8] = request.body().as_ref();
    if bytes.len() > MAX_BODY_BYTES {
        return Err(Problem::payload_too_large(MAX_BODY_BYTES).into_response());
    }
    let key = match request.headers().get("idempotency-key") {
        None => None,
        Some(value) => Some(
            IdempotencyKey::parse_header(value.as_bytes())
                .map_err(|e| Problem::bad_request(e.to_string()).into_response())?,
        ),
    };
    let command = CreateOrder::parse(bytes, now_utc()).map_err(Problem::into_response)?;
    let order = &command.order;
    let fingerprint = Fingerprint::of(&command.canonical_bytes());

    let mut tx = deps
        .pool
        .begin()
        .await
        .map_err(|e| store_failure(StoreError::database("starting a transaction", e)))?;
    let outcome = write_order(
        deps,
        &mut tx,
        &command,
        key.as_ref(),
        fingerprint,
        traceparent,
    )
    .await;
    match outcome {
        Ok(Written::Created { response, event_id }) => {
            tx.commit()
                .await
                .map_err(|e| store_failure(StoreError::database("committing the order", e)))?;
            tracing::Span::current().record("order_id", tracing::field::display(order.id()));
            info!(%event_id, total_cents = order.total().cents(), "order created");
            Ok(to_response(response))
        }
        Ok(Written::Replay(stored)) => {
            end_transaction(tx).await;
            info!("replayed the stored response for this Idempotency-Key");
            Ok(replay(stored))
        }
        Err(response) => {
            end_transaction(tx).await;
            Err(response)
        }
    }
}

/// What the transaction of a `POST /orders` produced.
enum Written {
    /// Order, lines, event (and the stored response) are written: commit.
    Created {
        response: StoredResponse,
        event_id: EventId,
    },
    /// The key was used before for this request: nothing written.
    Replay(StoredResponse),
}

/// Everything a `POST /orders` writes, on `tx`. `Err` is the error response.
async fn write_order(
    deps: &Deps,
    tx: &mut PgConnection,
    command: &CreateOrder,
    key: Option<&IdempotencyKey>,
    fingerprint: Fingerprint,
    traceparent: TraceParent,
) -> Result<Written, Response<Body>> {
    if let Some(key) = key {
        match idempotency::begin(tx, key, fingerprint)
            .await
            .map_err(store_failure)?
        {
            Lookup::Fresh => {}
            Lookup::Replay(stored) => return Ok(Written::Replay(stored)),
            Lookup::Mismatch => return Err(Problem::idempotency_key_reused().into_response()),
            Lookup::InFlight => return Err(Problem::idempotency_key_in_flight().into_response()),
        }
    }
    let order = &command.order;
    let stored = orders::insert(tx, order).await.map_err(store_failure)?;
    let event = OrderCreatedV1::envelope(order, Some(traceparent)).map_err(|e| {
        error!(error = %e, "could not build the OrderCreated event");
        Problem::internal().into_response()
    })?;
    outbox::append(tx, Outbox::Orders, &event)
        .await
        .map_err(store_failure)?;
    let response = created_response(&OrderView::from(&stored));
    if let Some(key) = key {
        idempotency::record(tx, key, fingerprint, &response, deps.idempotency_ttl)
            .await
            .map_err(store_failure)?;
    }
    Ok(Written::Created {
        response,
        event_id: event.event_id,
    })
}

/// Rolls back now, so the key's advisory lock is free before the answer leaves:
/// a dropped transaction rolls back only when its connection is next used, and a
/// client's immediate retry on another connection would meet the lock (`409`).
async fn end_transaction(tx: sqlx::Transaction<'_, sqlx::Postgres>) {
    if let Err(e) = tx.rollback().await {
        // The connection is broken; closing it releases the lock just the same.
        warn!(error = %e, "rolling back failed");
    }
}

/// `GET /orders/{id}`.
async fn get(deps: &Deps, id: &str) -> Response<Body> {
    let Ok(id) = OrderId::parse(id) else {
        return Problem::invalid_path_id().into_response();
    };
    tracing::Span::current().record("order_id", tracing::field::display(id));
    match orders::find(&deps.pool, id).await {
        Ok(Some(order)) => json_response(StatusCode::OK, &OrderView::from(&order)),
        Ok(None) => Problem::not_found(format!("there is no order {id}")).into_response(),
        Err(e) => store_failure(e),
    }
}

/// `application/json` (any `+json` type too), in UTF-8.
fn check_content_type(request: &Request) -> Result<(), Problem> {
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        return Err(Problem::unsupported_media_type(None));
    };
    let text = value.to_str().unwrap_or("(not ASCII)");
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    let utf8 = parts.all(|param| match param.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    });
    if json && utf8 {
        Ok(())
    } else {
        Err(Problem::unsupported_media_type(Some(text)))
    }
}

/// Maps a storage failure to `503` (retryable: nothing was changed, try again)
/// or `500` (a bug or corrupt data), logging the cause.
fn store_failure(error: StoreError) -> Response<Body> {
    if error.is_retryable() {
        warn!(error = %error, "database unavailable");
        Problem::unavailable().into_response()
    } else {
        error!(error = %error, "database operation failed");
        Problem::internal().into_response()
    }
}

fn created_response(view: &OrderView) -> StoredResponse {
    StoredResponse {
        status: StatusCode::CREATED.as_u16(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("location".into(), format!("/orders/{}", view.id)),
        ],
        // A view of strings and integers always serializes.
        body: serde_json::to_vec(view).unwrap_or_default(),
    }
}

fn to_response(stored: StoredResponse) -> Response<Body> {
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() =
        StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(name),
            HeaderValue::try_from(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn replay(stored: StoredResponse) -> Response<Body> {
    let mut response = to_response(stored);
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            error!(error = %e, "could not serialize a response");
            Problem::internal().into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_exactly() {
        assert!(matches!(route("/orders"), Some(Route::Orders)));
        assert!(matches!(route("/orders/abc"), Some(Route::Order(id)) if id == "abc"));
        assert!(route("/orders/").is_none());
        assert!(route("/orders/a/b").is_none());
        assert!(route("/ordersx").is_none());
        assert!(route("/").is_none());
    }
}
