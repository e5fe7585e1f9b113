//! The inventory-api function: `PUT /inventory/{sku}` sets a SKU's available
//! units, `GET /inventory/{sku}` shows its stock, behind an API Gateway HTTP API
//! (payload format 2.0).
//!
//! [`handle`] is the whole function; `main.rs` only builds its [`Deps`] once. Every
//! answer is an HTTP response, errors as problem details (`http-api`). Reserving
//! stock for orders is not done here but by the inventory consumer, from events:
//! this API never changes `reserved`.

mod body;

use contracts::Sku;
use http_api::{decode_path_segment, json_response, request_path, store_failure};
use http_api::{FieldError, Problem};
use inventory_service::{self as inventory, StockLevel};
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use shared::config::{ConfigError, DatabaseConfig, Env};
use sqlx::PgPool;
use tracing::info;

pub use body::{SetAvailable, MAX_AVAILABLE};
pub use http_api::MAX_BODY_BYTES;

/// The function's settings, read once at cold start.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseConfig::from_env(env)?,
        })
    }
}

/// What the handler borrows: built once per process, never per request.
#[derive(Debug, Clone)]
pub struct Deps {
    pub pool: PgPool,
}

impl Deps {
    /// Builds the (lazily connecting) pool for `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            pool: shared::db::lazy_pool(&config.database),
        }
    }
}

/// `{"sku","available","reserved","price_cents"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StockView {
    pub sku: String,
    pub available: i32,
    pub reserved: i32,
    /// The catalog's unit price; `null` for a SKU stocked before prices existed.
    pub price_cents: Option<i64>,
}

impl From<&StockLevel> for StockView {
    fn from(stock: &StockLevel) -> Self {
        Self {
            sku: stock.sku.to_string(),
            available: stock.available,
            reserved: stock.reserved,
            price_cents: stock.price_cents,
        }
    }
}

/// The `{sku}` of `/inventory/{sku}`, still percent-encoded; `None` for any other path.
fn route(path: &str) -> Option<&str> {
    let sku = path.strip_prefix("/inventory/")?;
    (!sku.is_empty() && !sku.contains('/')).then_some(sku)
}

/// Answers one HTTP request.
pub async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    http_api::invocation(SERVICE, &request)
        .run(answer(deps, request))
        .await
}

/// The function's name: the `service` of its logs and metrics.
pub const SERVICE: &str = "inventory-api";

async fn answer(deps: &Deps, request: Request) -> Response<Body> {
    let path = request_path(&request);
    let span = http_api::request_span!(request, path, http_api::traceparent(&request), sku);
    // The route's authorizer checked the token and its scope.
    let (request, path) = (&request, &path);
    http_api::answer_for(request, span, |_caller| async move {
        let Some(segment) = route(path) else {
            return Problem::not_found(format!("no route for {path}")).into_response();
        };
        match (request.method(), parse_sku(segment)) {
            (&Method::GET, Ok(sku)) => get(deps, &sku).await,
            (&Method::PUT, Ok(sku)) => put(deps, request, &sku).await,
            (&Method::GET | &Method::PUT, Err(problem)) => problem.into_response(),
            _ => Problem::method_not_allowed("GET, PUT").into_response(),
        }
    })
    .await
}

/// The SKU of the path (percent-decoded, as API Gateway decodes path parameters).
fn parse_sku(segment: &str) -> Result<Sku, Problem> {
    let sku = Sku::parse(&decode_path_segment(segment)).map_err(|e| {
        Problem::invalid_path_parameter(
            "/problems/invalid-sku",
            "The SKU in the path is not valid",
            FieldError::path_parameter("sku", e.to_string()),
            format!("sku: {e}"),
        )
    })?;
    tracing::Span::current().record("sku", sku.as_str());
    Ok(sku)
}

/// `GET /inventory/{sku}`.
async fn get(deps: &Deps, sku: &Sku) -> Response<Body> {
    match inventory::find(&deps.pool, sku).await {
        Ok(Some(stock)) => json_response(StatusCode::OK, &StockView::from(&stock)),
        Ok(None) => Problem::not_found(format!("the inventory has no SKU {sku}")).into_response(),
        Err(e) => store_failure(e),
    }
}

/// `PUT /inventory/{sku}`: validated in full before anything is written.
async fn put(deps: &Deps, request: &Request, sku: &Sku) -> Response<Body> {
    let command = match SetAvailable::from_request(request) {
        Ok(command) => command,
        Err(problem) => return problem.into_response(),
    };
    match inventory::set_stock(&deps.pool, sku, command.available, command.price_cents).await {
        Ok(Some(stock)) => {
            info!(
                available = stock.available,
                reserved = stock.reserved,
                price_cents = stock.price_cents,
                "stock set"
            );
            json_response(StatusCode::OK, &StockView::from(&stock))
        }
        Ok(None) => body::price_required(sku).into_response(),
        Err(e) => store_failure(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_exactly() {
        assert_eq!(route("/inventory/WIDGET-1"), Some("WIDGET-1"));
        assert_eq!(route("/inventory/a%3Ab"), Some("a%3Ab"));
        assert_eq!(route("/inventory/"), None);
        assert_eq!(route("/inventory"), None);
        assert_eq!(route("/inventory/a/b"), None);
        assert_eq!(route("/inventoryx/a"), None);
    }

    #[test]
    fn skus_in_the_path_are_decoded_then_validated() {
        assert_eq!(
            parse_sku("a%3Ab%40c").map(|s| s.to_string()).ok(),
            Some("a:b@c".to_owned())
        );
        for bad in ["A%20B", "a%2Fb", "%ff"] {
            let problem = parse_sku(bad).expect_err(bad);
            assert_eq!(problem.status, 400);
            assert_eq!(problem.errors[0].field, "sku");
        }
    }
}
