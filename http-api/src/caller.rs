//! Who is calling: the claims of the token API Gateway's JWT authorizer verified,
//! as it hands them to the function (`requestContext.authorizer.jwt`).
//!
//! The function trusts them because only API Gateway (or the emulator, which
//! checks tokens the same way) can put them there. A request without them reached
//! the function through a route without an authorizer: a deployment mistake,
//! answered `401`, never served as some default customer.

use std::collections::BTreeSet;

use lambda_http::http::{header, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};
use shared::domain::CustomerId;

use crate::Problem;

/// The scope that lets a caller read and cancel any customer's orders.
pub const ADMIN_SCOPE: &str = "orders:admin";

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's subject: the customer the request acts for.
    pub subject: CustomerId,
    /// The token's scopes (`scopes`, and the `scope` / `scp` claims).
    pub scopes: BTreeSet<String>,
}

impl Caller {
    /// The caller of `request`, or the `401` to answer.
    pub fn of(request: &Request) -> Result<Self, Problem> {
        let Some(RequestContext::ApiGatewayV2(context)) = request.request_context_ref() else {
            return Err(unauthenticated("the request carries no authorizer context"));
        };
        let Some(jwt) = context.authorizer.as_ref().and_then(|a| a.jwt.as_ref()) else {
            return Err(unauthenticated(
                "the request carries no verified token claims",
            ));
        };
        let subject = jwt
            .claims
            .get("sub")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unauthenticated("the token has no subject (sub)"))?;
        let subject = CustomerId::parse(subject).map_err(|e| {
            unauthenticated(format!("the token's subject is not a customer id: {e}"))
        })?;
        let mut scopes: Vec<String> = jwt.scopes.iter().flatten().cloned().collect();
        for name in ["scope", "scp"] {
            if let Some(value) = jwt.claims.get(name) {
                scopes.extend(claim_list(value));
            }
        }
        // Cognito spells a resource server's scope `orders/admin`; others `orders:admin`.
        let scopes = scopes
            .into_iter()
            .map(|s| s.replacen('/', ":", 1))
            .collect();
        Ok(Self { subject, scopes })
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// Whether the caller may see and change a resource that `owner` owns:
    /// the owner, or an `orders:admin`.
    pub fn may_act_for(&self, owner: &CustomerId) -> bool {
        self.only_owner().is_none_or(|subject| subject == owner)
    }

    /// The same decision for a query that filters by owner: `None` for an
    /// `orders:admin` (any customer's orders), else `Some(subject)` (only its own).
    pub fn only_owner(&self) -> Option<&CustomerId> {
        (!self.has_scope(ADMIN_SCOPE)).then_some(&self.subject)
    }
}

/// A claim holding a list, as API Gateway passes it: space-separated
/// (`a b`), or a stringified array (`[a b]`, `["a","b"]`).
fn claim_list(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|s| s.trim_matches('"'))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// `401`, with the challenge API Gateway would send.
fn unauthenticated(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "/problems/unauthenticated",
        "The request is not authenticated",
        detail,
    )
    .with_header(header::WWW_AUTHENTICATE, "Bearer")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorizer: Option<serde_json::Value>) -> Request {
        let mut event = serde_json::json!({
            "version": "2.0", "routeKey": "GET /orders/{id}", "rawPath": "/orders/x",
            "rawQueryString": "", "headers": {},
            "requestContext": {
                "accountId": "1", "apiId": "a", "domainName": "d", "domainPrefix": "d",
                "http": {"method": "GET", "path": "/orders/x", "protocol": "HTTP/1.1",
                         "sourceIp": "127.0.0.1", "userAgent": "t"},
                "requestId": "r", "routeKey": "GET /orders/{id}", "stage": "$default",
                "time": "24/Nov/2026:10:15:30 +0000", "timeEpoch": 0
            },
            "isBase64Encoded": false
        });
        if let Some(authorizer) = authorizer {
            event["requestContext"]["authorizer"] = authorizer;
        }
        lambda_http::request::from_str(&event.to_string()).expect("an API Gateway event")
    }

    #[test]
    fn the_subject_and_every_form_of_scopes_are_read() {
        let caller = Caller::of(&request(Some(serde_json::json!({"jwt": {
            "claims": {"sub": "cust-1", "scope": "orders:read orders/write", "scp": "[inventory:read]"},
            "scopes": ["extra:one"]
        }}))))
        .expect("a caller");
        assert_eq!(caller.subject.as_str(), "cust-1");
        assert_eq!(
            caller.scopes.iter().map(String::as_str).collect::<Vec<_>>(),
            ["extra:one", "inventory:read", "orders:read", "orders:write"]
        );
        assert!(!caller.has_scope(ADMIN_SCOPE));
    }

    #[test]
    fn without_claims_or_subject_it_is_401_never_a_default_customer() {
        for authorizer in [
            None,
            Some(serde_json::json!({"jwt": {"claims": {"scope": "orders:read"}, "scopes": null}})),
            Some(serde_json::json!({"jwt": {"claims": {"sub": ""}, "scopes": null}})),
            Some(serde_json::json!({"jwt": {"claims": {"sub": "has space"}, "scopes": null}})),
        ] {
            let problem = Caller::of(&request(authorizer.clone())).expect_err("refused");
            assert_eq!(problem.status, 401, "{authorizer:?}");
        }
    }

    #[test]
    fn owners_and_admins_may_act() {
        let owner = CustomerId::parse("cust-1").expect("valid");
        let other = CustomerId::parse("cust-2").expect("valid");
        let caller = |subject: &str, scopes: &[&str]| Caller {
            subject: CustomerId::parse(subject).expect("valid"),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert!(caller("cust-1", &[]).may_act_for(&owner));
        assert!(!caller("cust-1", &["orders:read"]).may_act_for(&other));
        assert!(caller("ops", &[ADMIN_SCOPE]).may_act_for(&other));
        assert!(caller("ops", &["orders:read", ADMIN_SCOPE]).may_act_for(&owner));
        // A scope that merely looks like the admin's is not it.
        assert!(!caller("cust-2", &["orders:admin2", "orders"]).may_act_for(&owner));
        // The filter a query applies says the same.
        assert_eq!(
            caller("cust-1", &["orders:read"]).only_owner(),
            Some(&owner)
        );
        assert_eq!(caller("ops", &[ADMIN_SCOPE]).only_owner(), None);
    }
}
