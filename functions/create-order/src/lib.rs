//! The create-order function: `POST /orders`, `GET /orders/{id}` and
//! `POST /orders/{id}/cancel` behind an API Gateway HTTP API (payload format 2.0).
//!
//! The caller is the verified token's subject ([`http_api::Caller`]): orders are
//! created for it, and only its own orders can be read or cancelled (another
//! customer's answer `404`, as a missing order does), unless its token has
//! `orders:admin`. Its idempotency keys are its own.
//!
//! [`handle`] is the whole function; `main.rs` only builds its [`Deps`] once and
//! hands it to the Lambda runtime. The emulator and the tests call [`handle`]
//! directly. Every answer, success or failure, is an HTTP response: the function
//! never reports an invocation error to Lambda for a request it understood. The
//! HTTP conventions (problem details, JSON bodies, storage failures) are
//! `http-api`'s, shared with the other API functions.

mod body;
mod view;

use std::time::Duration;

use contracts::events::{OrderCancelledV1, OrderCreatedV1};
use contracts::{CustomerId, OrderId, OrderStatus};
use http_api::{
    check_body_size, check_content_type, decode_path_segment, end_transaction, json_response,
    request_path, store_failure, Caller,
};
use lambda_http::http::{header, HeaderValue, Method, StatusCode};
use lambda_http::{Body, Request, Response};
use order_service::idempotency::{self, Fingerprint, IdempotencyKey, Lookup, StoredResponse};
use order_service::orders::{self, Cancellation, Order};
use shared::config::{ConfigError, DatabaseConfig, Env};
use shared::envelope::now_utc;
use shared::metrics::{Metric, Recorder};
use shared::outbox;
use shared::trace::TraceParent;
use shared::value::EventId;
use shared::StoreError;
use sqlx::{PgConnection, PgPool};
use tracing::{error, info};

pub use body::CreateOrder;
pub use http_api::{FieldError, Problem, MAX_BODY_BYTES};
pub use view::OrderView;

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
        shared::metrics::describe(&[ORDERS_CREATED]);
        Self {
            pool: shared::db::lazy_pool(&config.database),
            idempotency_ttl: config.idempotency_ttl,
        }
    }
}

/// The route a request matched.
enum Route {
    /// `/orders`
    Orders,
    /// `/orders/{id}`
    Order(String),
    /// `/orders/{id}/cancel`
    Cancel(String),
}

fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/orders")?;
    if rest.is_empty() {
        return Some(Route::Orders);
    }
    let rest = rest.strip_prefix('/')?;
    let (id, action) = match rest.split_once('/') {
        None => (rest, None),
        Some((id, action)) => (id, Some(action)),
    };
    if id.is_empty() {
        return None;
    }
    match action {
        None => Some(Route::Order(id.to_owned())),
        Some("cancel") => Some(Route::Cancel(id.to_owned())),
        Some(_) => None,
    }
}

/// The function's name: the `service` of its logs and metrics.
pub const SERVICE: &str = "create-order";

/// Answers one HTTP request, as one invocation (see [`shared::telemetry::Invocation`]).
pub async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    http_api::invocation(SERVICE, &request)
        .run(answer(deps, request))
        .await
}

async fn answer(deps: &Deps, request: Request) -> Response<Body> {
    let path = request_path(&request);
    let traceparent = http_api::traceparent(&request);
    let span = http_api::request_span!(request, path, traceparent, order_id);
    // Before anything is read or written: who is calling.
    let (request, path) = (&request, &path);
    http_api::answer_for(request, span, |caller| async move {
        let caller = &caller;
        match (route(path), request.method()) {
            (Some(Route::Orders), &Method::POST) => {
                create(deps, caller, request, traceparent).await
            }
            (Some(Route::Orders), _) => Problem::method_not_allowed("POST").into_response(),
            (Some(Route::Order(id)), &Method::GET) => get(deps, caller, &id).await,
            (Some(Route::Order(_)), _) => Problem::method_not_allowed("GET").into_response(),
            (Some(Route::Cancel(id)), &Method::POST) => {
                cancel(deps, caller, &id, traceparent).await
            }
            (Some(Route::Cancel(_)), _) => Problem::method_not_allowed("POST").into_response(),
            (None, _) => Problem::not_found(format!("no route for {path}")).into_response(),
        }
    })
    .await
}

async fn create(
    deps: &Deps,
    caller: &Caller,
    request: &Request,
    traceparent: TraceParent,
) -> Response<Body> {
    match create_order(deps, caller, request, traceparent).await {
        Ok(response) | Err(response) => response,
    }
}

/// `POST /orders`. `Err` holds the (error) response too; it only lets `?` stop early.
async fn create_order(
    deps: &Deps,
    caller: &Caller,
    request: &Request,
    traceparent: TraceParent,
) -> Result<Response<Body>, Response<Body>> {
    check_content_type(request).map_err(Problem::into_response)?;
    let bytes: &[u8] = request.body().as_ref();
    check_body_size(bytes, MAX_BODY_BYTES).map_err(Problem::into_response)?;
    let key = match request.headers().get("idempotency-key") {
        None => None,
        Some(value) => Some(
            IdempotencyKey::parse_header(value.as_bytes())
                .map_err(|e| Problem::bad_request(e.to_string()).into_response())?,
        ),
    };
    let command = CreateOrder::parse(
        bytes,
        customer(caller).map_err(Problem::into_response)?,
        now_utc(),
    )
    .map_err(Problem::into_response)?;
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
            Recorder::new(SERVICE).count(ORDERS_CREATED, 1);
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
        match idempotency::begin(tx, command.order.customer_id(), key, fingerprint)
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
    let event = OrderCreatedV1::envelope(order, Some(traceparent)).map_err(|e| {
        error!(error = %e, "could not build the OrderCreated event");
        Problem::internal().into_response()
    })?;
    let stored = orders::insert(tx, order, &event)
        .await
        .map_err(store_failure)?;
    outbox::append(tx, &order_service::OUTBOX, &event)
        .await
        .map_err(store_failure)?;
    let response = created_response(&OrderView::from(&stored));
    if let Some(key) = key {
        idempotency::record(
            tx,
            command.order.customer_id(),
            key,
            fingerprint,
            &response,
            deps.idempotency_ttl,
        )
        .await
        .map_err(store_failure)?;
    }
    Ok(Written::Created {
        response,
        event_id: event.event_id,
    })
}

/// `GET /orders/{id}`: the caller's own order, or any for an admin.
/// Orders accepted (not replays of an `Idempotency-Key`).
pub const ORDERS_CREATED: Metric = Metric::counter(
    "OrdersCreated",
    "orders_created_total",
    "Orders accepted by create-order.",
);

/// The scope that lets a caller read and cancel any customer's orders.
pub const ADMIN_SCOPE: &str = "orders:admin";

/// The customer a caller acts as: the token's subject (a subject is always a
/// valid customer id: both are the same kind of identifier).
fn customer(caller: &Caller) -> Result<CustomerId, Problem> {
    CustomerId::parse(caller.subject.as_str()).map_err(|e| Problem::bad_request(e.to_string()))
}

async fn get(deps: &Deps, caller: &Caller, id: &str) -> Response<Body> {
    let Ok(id) = parse_order_id(id) else {
        return invalid_order_id().into_response();
    };
    tracing::Span::current().record("order_id", tracing::field::display(id));
    match orders::find(&deps.pool, id).await {
        Ok(Some(order)) if caller.may_act_for(order.customer_id.as_str(), ADMIN_SCOPE) => {
            json_response(StatusCode::OK, &OrderView::from(&order))
        }
        // Another customer's order does not exist for this caller.
        Ok(Some(_) | None) => no_such_order(id).into_response(),
        Err(e) => store_failure(e),
    }
}

async fn cancel(
    deps: &Deps,
    caller: &Caller,
    id: &str,
    traceparent: TraceParent,
) -> Response<Body> {
    match cancel_order(deps, caller, id, traceparent).await {
        Ok(response) | Err(response) => response,
    }
}

/// `POST /orders/{id}/cancel`: the status change and its `OrderCancelled` event in
/// one transaction. `Err` holds the (error) response too; it only lets `?` stop early.
async fn cancel_order(
    deps: &Deps,
    caller: &Caller,
    id: &str,
    traceparent: TraceParent,
) -> Result<Response<Body>, Response<Body>> {
    let id = parse_order_id(id).map_err(|_| invalid_order_id().into_response())?;
    tracing::Span::current().record("order_id", tracing::field::display(id));
    let mut tx = deps
        .pool
        .begin()
        .await
        .map_err(|e| store_failure(StoreError::database("starting a transaction", e)))?;
    // An admin cancels any order; anyone else only their own.
    let owner = match caller.only_owner(ADMIN_SCOPE) {
        Some(_) => Some(customer(caller).map_err(Problem::into_response)?),
        None => None,
    };
    match write_cancellation(&mut tx, id, owner.as_ref(), traceparent).await {
        Ok((order, event_id)) => {
            tx.commit().await.map_err(|e| {
                store_failure(StoreError::database("committing the cancellation", e))
            })?;
            info!(%event_id, "order cancelled");
            Ok(json_response(StatusCode::OK, &OrderView::from(&order)))
        }
        Err(response) => {
            end_transaction(tx).await;
            Err(response)
        }
    }
}

/// Everything a `POST /orders/{id}/cancel` writes, on `tx`. `Err` is the error response.
async fn write_cancellation(
    tx: &mut PgConnection,
    id: OrderId,
    owner: Option<&contracts::CustomerId>,
    traceparent: TraceParent,
) -> Result<(Order, EventId), Response<Body>> {
    let event = OrderCancelledV1::envelope(id, Some(traceparent)).map_err(|e| {
        error!(error = %e, "could not build the OrderCancelled event");
        Problem::internal().into_response()
    })?;
    match orders::cancel(tx, id, owner, &event)
        .await
        .map_err(store_failure)?
    {
        Cancellation::Cancelled(order) => {
            outbox::append(tx, &order_service::OUTBOX, &event)
                .await
                .map_err(store_failure)?;
            Ok((order, event.event_id))
        }
        Cancellation::NotCancellable(status) => {
            info!(%status, "order not cancellable");
            Err(order_not_cancellable(id, status).into_response())
        }
        Cancellation::NotFound => Err(no_such_order(id).into_response()),
    }
}

/// The `{id}` of the path, percent-decoded as API Gateway decodes path parameters
/// (and as inventory-api decodes its SKU): `%30` is `0`.
fn parse_order_id(segment: &str) -> Result<OrderId, shared::value::InvalidValue> {
    OrderId::parse(&decode_path_segment(segment))
}

/// `400`: the `{id}` of the path is not an order id.
fn invalid_order_id() -> Problem {
    Problem::invalid_path_parameter(
        "/problems/invalid-id",
        "The order id in the path is not valid",
        FieldError::path_parameter("id", "an order id must be a UUID"),
        "an order id must be a UUID, e.g. 0193a3e2-7c1a-7000-8000-000000000001",
    )
}

fn no_such_order(id: OrderId) -> Problem {
    Problem::not_found(format!("there is no order {id}"))
}

/// `409`: only `PENDING` and `CONFIRMED` orders can be cancelled.
fn order_not_cancellable(id: OrderId, status: OrderStatus) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "/problems/order-not-cancellable",
        "The order cannot be cancelled in its current status",
        format!("order {id} is {status}; only PENDING or CONFIRMED orders can be cancelled"),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_in_the_path_are_percent_decoded() {
        let id = "0193a3e2-7c1a-7000-8000-000000000001";
        assert!(parse_order_id(id).is_ok());
        assert_eq!(
            parse_order_id("%30193a3e2-7c1a-7000-8000-000000000001").ok(),
            parse_order_id(id).ok()
        );
        assert!(parse_order_id("%ff").is_err());
        assert!(parse_order_id("0193a3e2%2F7c1a").is_err());
    }

    #[test]
    fn routes_match_exactly() {
        assert!(matches!(route("/orders"), Some(Route::Orders)));
        assert!(matches!(route("/orders/abc"), Some(Route::Order(id)) if id == "abc"));
        assert!(route("/orders/").is_none());
        assert!(route("/orders/a/b").is_none());
        assert!(matches!(route("/orders/abc/cancel"), Some(Route::Cancel(id)) if id == "abc"));
        assert!(route("/orders//cancel").is_none());
        assert!(route("/orders/abc/cancel/x").is_none());
        assert!(route("/orders/abc/cancelx").is_none());
        assert!(route("/ordersx").is_none());
        assert!(route("/").is_none());
    }
}
