//! An HTTP API's `CorsConfiguration`, applied as API Gateway applies it: it
//! answers preflight requests itself (no route, no authorizer, no function), and
//! adds the CORS headers to the answers of requests from an allowed origin.

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::template::CorsSpec;

/// A preflight request: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn allowed_origin<'a>(cors: &CorsSpec, headers: &'a HeaderMap) -> Option<&'a str> {
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    cors.allow_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        .then_some(origin)
}

fn origin_value(cors: &CorsSpec, origin: &str) -> String {
    // A wildcard is answered as `*` unless credentials are allowed, which needs the origin.
    if cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials {
        "*".to_owned()
    } else {
        origin.to_owned()
    }
}

/// The answer to a preflight request: `204`, with the CORS headers when the
/// origin, method and headers asked for are allowed, and without them otherwise.
pub fn preflight(cors: &CorsSpec, headers: &HeaderMap) -> axum::response::Response {
    let mut out = axum::response::Response::new(axum::body::Body::empty());
    *out.status_mut() = StatusCode::NO_CONTENT;
    let Some(origin) = allowed_origin(cors, headers) else {
        return out;
    };
    let method = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_uppercase();
    let method_ok = cors.allow_methods.iter().any(|m| m == "*" || *m == method);
    let requested: Vec<String> = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    let headers_ok = requested
        .iter()
        .all(|h| cors.allow_headers.iter().any(|a| a == "*" || a == h));
    if !(method_ok && headers_ok) {
        return out;
    }
    let answer = out.headers_mut();
    let mut put = |name: header::HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            answer.insert(name, value);
        }
    };
    put(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        &origin_value(cors, origin),
    );
    put(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        &cors.allow_methods.join(","),
    );
    if !cors.allow_headers.is_empty() {
        put(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            &cors.allow_headers.join(","),
        );
    }
    if let Some(max_age) = cors.max_age {
        put(header::ACCESS_CONTROL_MAX_AGE, &max_age.to_string());
    }
    if cors.allow_credentials {
        put(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    out
}

/// Adds the CORS headers to the answer of a request from an allowed origin.
pub fn decorate(cors: &CorsSpec, request: &HeaderMap, response: &mut axum::response::Response) {
    let Some(origin) = allowed_origin(cors, request) else {
        return;
    };
    let answer = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&origin_value(cors, origin)) {
        answer.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    if !cors.expose_headers.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&cors.expose_headers.join(",")) {
            answer.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, value);
        }
    }
    if cors.allow_credentials {
        answer.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    answer.append(header::VARY, HeaderValue::from_static("origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CorsSpec {
        CorsSpec {
            allow_origins: vec!["https://shop.example".into()],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["authorization".into(), "content-type".into()],
            expose_headers: vec!["location".into()],
            max_age: Some(600),
            allow_credentials: false,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn an_allowed_preflight_gets_the_headers_and_another_origin_none() {
        let asked = headers(&[
            ("origin", "https://shop.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "Authorization, Content-Type",
            ),
        ]);
        assert!(is_preflight(&Method::OPTIONS, &asked));
        let answer = preflight(&spec(), &asked);
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        let h = answer.headers();
        assert_eq!(h["access-control-allow-origin"], "https://shop.example");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(h["access-control-max-age"], "600");

        let elsewhere = headers(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ]);
        let answer = preflight(&spec(), &elsewhere);
        assert!(!answer.headers().contains_key("access-control-allow-origin"));
        let delete = headers(&[
            ("origin", "https://shop.example"),
            ("access-control-request-method", "DELETE"),
        ]);
        assert!(!preflight(&spec(), &delete)
            .headers()
            .contains_key("access-control-allow-origin"));
    }

    #[test]
    fn answers_to_allowed_origins_expose_headers() {
        let mut answer = axum::response::Response::new(axum::body::Body::empty());
        decorate(
            &spec(),
            &headers(&[("origin", "https://shop.example")]),
            &mut answer,
        );
        assert_eq!(
            answer.headers()["access-control-allow-origin"],
            "https://shop.example"
        );
        assert_eq!(
            answer.headers()["access-control-expose-headers"],
            "location"
        );
        let mut other = axum::response::Response::new(axum::body::Body::empty());
        decorate(
            &spec(),
            &headers(&[("origin", "https://evil.example")]),
            &mut other,
        );
        assert!(other.headers().is_empty());
    }
}
