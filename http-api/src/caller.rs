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
use shared::value::{check_identifier, InvalidValue};

use crate::Problem;

/// A token's subject (`sub`): 1 to 64 of ASCII letters, digits and `-_.:@`,
/// so it is safe in logs, URLs and stream fields as it is. A service reads its
/// own meaning into it (the shop: a customer id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(String);

impl Subject {
    pub fn parse(value: &str) -> Result<Self, InvalidValue> {
        check_identifier("a token's subject", value, 64)?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's subject: whom the request acts for.
    pub subject: Subject,
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
        let subject = Subject::parse(subject)
            .map_err(|e| unauthenticated(format!("the token's subject is refused: {e}")))?;
        let mut scopes: Vec<String> = jwt.scopes.iter().flatten().cloned().collect();
        for name in ["scope", "scp"] {
            if let Some(value) = jwt.claims.get(name) {
                scopes.extend(claim_list(value));
            }
        }
        // Cognito spells a resource server's scope `orders/read`; others `orders:read`.
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
    /// the owner, or a holder of `admin_scope` (e.g. `orders:admin`).
    pub fn may_act_for(&self, owner: &str, admin_scope: &str) -> bool {
        self.only_owner(admin_scope)
            .is_none_or(|subject| subject.as_str() == owner)
    }

    /// The same decision for a query that filters by owner: `None` for a
    /// holder of `admin_scope` (anyone's resources), else `Some(subject)`
    /// (only its own).
    pub fn only_owner(&self, admin_scope: &str) -> Option<&Subject> {
        (!self.has_scope(admin_scope)).then_some(&self.subject)
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

    const ADMIN: &str = "orders:admin";

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
        assert!(!caller.has_scope(ADMIN));
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
        let (owner, other) = ("cust-1", "cust-2");
        let caller = |subject: &str, scopes: &[&str]| Caller {
            subject: Subject::parse(subject).expect("valid"),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert!(caller("cust-1", &[]).may_act_for(owner, ADMIN));
        assert!(!caller("cust-1", &["orders:read"]).may_act_for(other, ADMIN));
        assert!(caller("ops", &[ADMIN]).may_act_for(other, ADMIN));
        assert!(caller("ops", &["orders:read", ADMIN]).may_act_for(owner, ADMIN));
        // A scope that merely looks like the admin's is not it, nor another's admin.
        assert!(!caller("cust-2", &["orders:admin2", "orders"]).may_act_for(owner, ADMIN));
        assert!(!caller("ops", &["customers:admin"]).may_act_for(owner, ADMIN));
        // The filter a query applies says the same.
        assert_eq!(
            caller("cust-1", &["orders:read"])
                .only_owner(ADMIN)
                .map(Subject::as_str),
            Some(owner)
        );
        assert_eq!(caller("ops", &[ADMIN]).only_owner(ADMIN), None);
    }
}
