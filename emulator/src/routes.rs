//! API Gateway's route matching: `{name}` segments capture one path segment.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::template::{CorsSpec, Throttle};

/// One HTTP API route: `METHOD /path/{param}` (`ANY` matches every method).
#[derive(Debug, Clone)]
pub struct Route {
    pub method: String,
    pub path: String,
    /// The function's logical id in the template.
    pub function: String,
    pub guard: Arc<Guard>,
}

/// What API Gateway checks before a route's function runs.
#[derive(Debug, Default)]
pub struct Guard {
    /// The JWT authorizer, as `Api/Name`; `None` for an open route.
    pub authorizer: Option<String>,
    /// Any one of these scopes is needed (none: any valid token).
    pub scopes: Vec<String>,
    /// The route's throttling (`RouteSettings`, else `DefaultRouteSettings`).
    pub throttle: Option<Throttle>,
    limiter: Option<governor::DefaultDirectRateLimiter>,
}

impl Guard {
    fn new(authorizer: Option<String>, scopes: Vec<String>, throttle: Option<Throttle>) -> Self {
        let limiter = throttle.and_then(|t| {
            let burst = NonZeroU32::new(t.burst)?;
            let period = Duration::try_from_secs_f64(1.0 / t.rate).ok()?;
            let quota = governor::Quota::with_period(period)?.allow_burst(burst);
            Some(governor::RateLimiter::direct(quota))
        });
        Self {
            authorizer,
            scopes,
            throttle,
            limiter,
        }
    }

    /// Whether one more request may pass now (API Gateway's token bucket): a
    /// burst or rate of 0 lets nothing through.
    pub fn admit(&self) -> bool {
        match (&self.limiter, self.throttle) {
            (Some(limiter), _) => limiter.check().is_ok(),
            (None, Some(t)) => t.burst > 0 && t.rate > 0.0,
            (None, None) => true,
        }
    }
}

/// A route that matched a request, with its path parameters.
#[derive(Debug, Clone)]
pub struct Matched {
    pub route_key: String,
    pub path_parameters: BTreeMap<String, String>,
    pub function: String,
    pub guard: Arc<Guard>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// The HTTP API's `CorsConfiguration` (the first API that has one).
    pub cors: Option<CorsSpec>,
}

impl RouteTable {
    /// The `HttpApi` events of the template's functions, in template order.
    pub fn from_template(template: &crate::template::Template) -> Self {
        let guard = |route: &crate::template::HttpRoute| {
            let api = route
                .auth
                .api
                .as_ref()
                .and_then(|id| template.http_apis.get(id));
            let authorizer = match route.auth.authorizer.as_deref() {
                Some("NONE") => None,
                Some(name) => Some(name),
                None => api.and_then(|a| a.default_authorizer.as_deref()),
            };
            let authorizer = authorizer
                .zip(route.auth.api.as_deref())
                .map(|(name, api)| format!("{api}/{name}"));
            let throttle = route.auth.throttle.or(api.and_then(|a| a.throttle));
            Arc::new(Guard::new(authorizer, route.auth.scopes.clone(), throttle))
        };
        Self {
            routes: template
                .functions
                .iter()
                .flat_map(|f| {
                    f.http_routes.iter().map(|r| Route {
                        method: r.method.to_ascii_uppercase(),
                        path: r.path.clone(),
                        function: f.logical_id.clone(),
                        guard: guard(r),
                    })
                })
                .collect(),
            cors: template.http_apis.values().find_map(|a| a.cors.clone()),
        }
    }

    /// Whether any route matches `path`, whatever its method.
    pub fn has_path(&self, path: &str) -> bool {
        self.routes
            .iter()
            .any(|r| match_path(&r.path, path).is_some())
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The most specific route for `method` and `path`: an exact method wins over `ANY`.
    pub fn find(&self, method: &str, path: &str) -> Option<Matched> {
        let mut best: Option<(bool, Matched)> = None;
        for route in &self.routes {
            let exact = route.method.eq_ignore_ascii_case(method);
            if !(exact || route.method == "ANY") {
                continue;
            }
            let Some(path_parameters) = match_path(&route.path, path) else {
                continue;
            };
            if best
                .as_ref()
                .is_some_and(|(was_exact, _)| *was_exact && !exact)
            {
                continue;
            }
            best = Some((
                exact,
                Matched {
                    route_key: format!("{} {}", route.method, route.path),
                    path_parameters,
                    function: route.function.clone(),
                    guard: Arc::clone(&route.guard),
                },
            ));
        }
        best.map(|(_, m)| m)
    }
}

fn match_path(template: &str, path: &str) -> Option<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    let mut want = template.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(g)) => {
                if let Some(name) = w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                    if g.is_empty() {
                        return None;
                    }
                    params.insert(name.to_owned(), percent_decode(g));
                } else if w != g {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// API Gateway hands path parameters to the function percent-decoded.
fn percent_decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP API with a JWT authorizer, and two functions behind its routes.
    const TEMPLATE: &str = r#"
Resources:
  OrdersApi:
    Type: AWS::Serverless::HttpApi
    Properties:
      Auth:
        DefaultAuthorizer: OrdersJwt
        Authorizers:
          OrdersJwt:
            IdentitySource: $request.header.Authorization
            JwtConfiguration:
              issuer: https://issuer.example
              audience: [shop]
  CreateOrderFunction:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        Post:
          Type: HttpApi
          Properties:
            ApiId: !Ref OrdersApi
            Path: /orders
            Method: POST
            Auth: { AuthorizationScopes: [orders:write] }
        Get:
          Type: HttpApi
          Properties:
            ApiId: !Ref OrdersApi
            Path: /orders/{id}
            Method: GET
            Auth: { AuthorizationScopes: [orders:read, orders/read] }
        Cancel:
          Type: HttpApi
          Properties:
            ApiId: !Ref OrdersApi
            Path: /orders/{id}/cancel
            Method: POST
            Auth: { AuthorizationScopes: [orders:write] }
  InventoryApiFunction:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        Set:
          Type: HttpApi
          Properties:
            ApiId: !Ref OrdersApi
            Path: /inventory/{sku}
            Method: PUT
            Auth: { AuthorizationScopes: [inventory:write] }
"#;

    fn standard() -> RouteTable {
        let template = crate::template::parse(TEMPLATE).expect("parses");
        RouteTable::from_template(&template)
    }

    #[test]
    fn matches_templates_and_extracts_parameters() {
        let table = standard();
        let m = table.find("GET", "/orders/abc%20d").expect("matches");
        assert_eq!(m.route_key, "GET /orders/{id}");
        assert_eq!(m.guard.authorizer.as_deref(), Some("OrdersApi/OrdersJwt"));
        assert_eq!(m.guard.scopes, ["orders:read", "orders/read"]);
        assert!(
            table.find("DELETE", "/orders/abc").is_none(),
            "no route: 404"
        );
        assert_eq!(
            m.path_parameters.get("id").map(String::as_str),
            Some("abc d")
        );
        assert!(table.find("POST", "/orders").is_some());
        assert!(table.find("GET", "/orders/").is_none());
        assert!(table.find("GET", "/orders/a/b").is_none());
        assert!(table.find("GET", "/").is_none());
    }

    #[test]
    fn cancel_is_post_only_and_inventory_goes_to_its_function() {
        let table = standard();
        let m = table.find("POST", "/orders/abc/cancel").expect("matches");
        assert_eq!(m.route_key, "POST /orders/{id}/cancel");
        assert_eq!(m.function, "CreateOrderFunction");
        assert!(table.find("GET", "/orders/abc/cancel").is_none());
        let m = table.find("PUT", "/inventory/A%3A1").expect("matches");
        assert_eq!(m.route_key, "PUT /inventory/{sku}");
        assert_eq!(m.function, "InventoryApiFunction");
        assert_eq!(
            m.path_parameters.get("sku").map(String::as_str),
            Some("A:1")
        );
        assert!(table.find("GET", "/inventory").is_none());
        assert!(table.find("GET", "/inventory/a/b").is_none());
    }
}
