//! API Gateway's route matching: `{name}` segments capture one path segment.

use std::collections::BTreeMap;

/// One HTTP API route: `METHOD /path/{param}` (`ANY` matches every method).
#[derive(Debug, Clone)]
pub struct Route {
    pub method: String,
    pub path: String,
    /// The function's logical id in the template.
    pub function: String,
}

/// A route that matched a request, with its path parameters.
#[derive(Debug, Clone)]
pub struct Matched {
    pub route_key: String,
    pub path_parameters: BTreeMap<String, String>,
    pub function: String,
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// The `HttpApi` events of the template's functions, in template order.
    pub fn from_template(template: &crate::template::Template) -> Self {
        Self {
            routes: template
                .functions
                .iter()
                .flat_map(|f| {
                    f.http_routes.iter().map(|r| Route {
                        method: r.method.to_ascii_uppercase(),
                        path: r.path.clone(),
                        function: f.logical_id.clone(),
                    })
                })
                .collect(),
        }
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

    fn standard() -> RouteTable {
        let template = crate::template::parse(include_str!("../../template.yaml")).expect("parses");
        RouteTable::from_template(&template)
    }

    #[test]
    fn matches_templates_and_extracts_parameters() {
        let table = standard();
        let m = table.find("GET", "/orders/abc%20d").expect("matches");
        assert_eq!(m.route_key, "ANY /orders/{id}");
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
        assert_eq!(m.route_key, "ANY /inventory/{sku}");
        assert_eq!(m.function, "InventoryApiFunction");
        assert_eq!(
            m.path_parameters.get("sku").map(String::as_str),
            Some("A:1")
        );
        assert!(table.find("GET", "/inventory").is_none());
        assert!(table.find("GET", "/inventory/a/b").is_none());
    }
}
