//! The customers-api function: `PUT /customers/{id}/credit` sets a customer's
//! credit limit (`customers:write`), `GET /customers/{id}/credit` shows it
//! (`customers:read`; a customer sees only their own, `customers:admin` any),
//! behind an API Gateway HTTP API (payload format 2.0).
//!
//! Reserving credit for orders is not done here but by the customers consumer,
//! from events: this API never changes what is reserved.

use contracts::CustomerId;
use customer_service::{Credit, MAX_LIMIT_CENTS};
use http_api::{decode_path_segment, json_response, request_path, store_failure};
use http_api::{Caller, FieldError, Problem};
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize};
use shared::config::{ConfigError, DatabaseConfig, Env};
use sqlx::PgPool;
use tracing::info;

/// The function's name: the `service` of its logs and metrics.
pub const SERVICE: &str = "customers-api";

/// The scope that lets a caller read any customer's credit.
pub const ADMIN_SCOPE: &str = "customers:admin";

/// The function's settings, read once at cold start.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    /// `DEFAULT_CREDIT_LIMIT_CENTS` (0): the limit of a customer without a record.
    pub default_limit_cents: i64,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseConfig::from_env(env)?,
            default_limit_cents: customer_service::default_limit(env)?,
        })
    }
}

/// What the handler borrows: built once per process, never per request.
#[derive(Debug, Clone)]
pub struct Deps {
    pub pool: PgPool,
    pub default_limit_cents: i64,
}

impl Deps {
    /// Builds the (lazily connecting) pool for `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            pool: shared::db::lazy_pool(&config.database),
            default_limit_cents: config.default_limit_cents,
        }
    }
}

/// `{"customer_id","limit_cents","reserved_cents","available_cents"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreditView {
    pub customer_id: String,
    pub limit_cents: i64,
    pub reserved_cents: i64,
    pub available_cents: i64,
}

impl CreditView {
    fn of(customer: &CustomerId, credit: Credit) -> Self {
        Self {
            customer_id: customer.to_string(),
            limit_cents: credit.limit_cents,
            reserved_cents: credit.reserved_cents,
            available_cents: credit.available_cents(),
        }
    }
}

/// The `{id}` of `/customers/{id}/credit`, still percent-encoded; `None` for any
/// other path.
fn route(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/customers/")?.strip_suffix("/credit")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Answers one HTTP request.
pub async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    http_api::invocation(SERVICE, &request)
        .run(answer(deps, request))
        .await
}

async fn answer(deps: &Deps, request: Request) -> Response<Body> {
    let path = request_path(&request);
    let span = http_api::request_span!(request, path, http_api::traceparent(&request), customer_id);
    let (request, path) = (&request, &path);
    http_api::answer_for(request, span, |caller| async move {
        let Some(segment) = route(path) else {
            return Problem::not_found(format!("no route for {path}")).into_response();
        };
        match (request.method(), parse_customer(segment)) {
            (&Method::GET, Ok(customer)) => get(deps, &caller, &customer).await,
            (&Method::PUT, Ok(customer)) => put(deps, request, &customer).await,
            (&Method::GET | &Method::PUT, Err(problem)) => problem.into_response(),
            _ => Problem::method_not_allowed("GET, PUT").into_response(),
        }
    })
    .await
}

/// The customer of the path (percent-decoded, as API Gateway decodes path parameters).
fn parse_customer(segment: &str) -> Result<CustomerId, Problem> {
    let customer = CustomerId::parse(&decode_path_segment(segment)).map_err(|e| {
        Problem::invalid_path_parameter(
            "/problems/invalid-customer-id",
            "The customer id in the path is not valid",
            FieldError::path_parameter("id", e.to_string()),
            format!("id: {e}"),
        )
    })?;
    tracing::Span::current().record("customer_id", customer.as_str());
    Ok(customer)
}

/// `GET /customers/{id}/credit`: the owner's, or any for `customers:admin`.
/// Another customer's credit is `404`, as if there were no such customer.
async fn get(deps: &Deps, caller: &Caller, customer: &CustomerId) -> Response<Body> {
    if !caller.may_act_for(customer.as_str(), ADMIN_SCOPE) {
        return Problem::not_found(format!("no customer {customer}")).into_response();
    }
    match customer_service::find(&deps.pool, customer).await {
        Ok(credit) => {
            let credit = credit.unwrap_or(Credit {
                limit_cents: deps.default_limit_cents,
                reserved_cents: 0,
            });
            json_response(StatusCode::OK, &CreditView::of(customer, credit))
        }
        Err(e) => store_failure(e),
    }
}

/// `PUT /customers/{id}/credit` with `{"limit_cents": n}`.
async fn put(deps: &Deps, request: &Request, customer: &CustomerId) -> Response<Body> {
    let limit_cents = match http_api::json_body(request).and_then(validate) {
        Ok(limit) => limit,
        Err(problem) => return problem.into_response(),
    };
    match customer_service::set_limit(&deps.pool, customer, limit_cents).await {
        Ok(credit) => {
            info!(
                limit_cents = credit.limit_cents,
                reserved_cents = credit.reserved_cents,
                "credit limit set"
            );
            json_response(StatusCode::OK, &CreditView::of(customer, credit))
        }
        Err(e) => store_failure(e),
    }
}

/// The body as sent: the field is optional here so that a missing one is
/// reported by name; unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetLimitBody {
    // A JSON value, so that `null`, `1.5` and `"5"` get our message.
    limit_cents: Option<serde_json::Value>,
}

fn validate(body: SetLimitBody) -> Result<i64, Problem> {
    let refused =
        |detail: String| Problem::invalid_fields(vec![FieldError::new("limit_cents", detail)]);
    match body.limit_cents {
        None => Err(refused("is required".into())),
        Some(value) => match value.as_i64() {
            Some(n) if (0..=MAX_LIMIT_CENTS).contains(&n) => Ok(n),
            _ => Err(refused(format!(
                "a credit limit must be an integer number of cents from 0 to {MAX_LIMIT_CENTS} (got {value})"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_exactly() {
        assert_eq!(route("/customers/c-1/credit"), Some("c-1"));
        assert_eq!(route("/customers/a%3Ab/credit"), Some("a%3Ab"));
        for other in [
            "/customers//credit",
            "/customers/c-1",
            "/customers/a/b/credit",
            "/customers/c-1/credits",
        ] {
            assert_eq!(route(other), None, "{other}");
        }
    }

    #[test]
    fn a_limit_is_a_whole_number_of_cents_in_range() {
        let parse =
            |body: &str| http_api::parse_json::<SetLimitBody>(body.as_bytes()).and_then(validate);
        assert_eq!(parse(r#"{"limit_cents": 0}"#).ok(), Some(0));
        assert_eq!(parse(r#"{"limit_cents": 50000}"#).ok(), Some(50_000));
        for bad in [
            r#"{}"#,
            r#"{"limit_cents": -1}"#,
            r#"{"limit_cents": 1.5}"#,
            r#"{"limit_cents": "5"}"#,
            r#"{"limit_cents": null}"#,
            r#"{"limit_cents": 100000000000001}"#,
        ] {
            let problem = parse(bad).expect_err(bad);
            assert_eq!(
                (problem.status, problem.errors[0].field.as_str()),
                (422, "limit_cents"),
                "{bad}"
            );
        }
        let unknown =
            parse(r#"{"limit_cents": 1, "reserved_cents": 0}"#).expect_err("unknown field");
        assert_eq!(unknown.status, 422);
    }
}
