//! Error answers as `application/problem+json` (RFC 9457). Every problem names
//! what is wrong; field errors carry the offending field as a path
//! (`items[0].quantity`) and a JSON Pointer (`/items/0/quantity`).
//!
//! The constructors here are the problems every API function shares; a function
//! builds its own (e.g. `/problems/order-not-cancellable`) with [`Problem::new`].

use lambda_http::http::{header, HeaderValue, StatusCode};
use lambda_http::{Body, Response};
use serde::Serialize;

/// One invalid field of a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub pointer: String,
    pub detail: String,
}

impl FieldError {
    /// `field` is a path such as `items[2].sku`; the pointer is derived from it.
    pub fn new(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            pointer: json_pointer(&field),
            field,
            detail: detail.into(),
        }
    }

    /// An invalid path parameter such as `id`: named, with no pointer (it is not
    /// in the body).
    pub fn path_parameter(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: name.into(),
            pointer: String::new(),
            detail: detail.into(),
        }
    }
}

/// `items[2].sku` → `/items/2/sku`; `.` (the whole body) → ``.
fn json_pointer(path: &str) -> String {
    let mut pointer = String::new();
    for part in path.split(['.', '[', ']']).filter(|p| !p.is_empty()) {
        pointer.push('/');
        pointer.push_str(&part.replace('~', "~0").replace('/', "~1"));
    }
    pointer
}

/// A problem details object.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    extra_headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem of type `kind` (a URI reference such as `/problems/invalid-id`, or
    /// `about:blank` when the status says it all) with a fixed `title`.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            extra_headers: Vec::new(),
        }
    }

    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "/problems/malformed-json",
            "The body is not valid JSON",
            detail,
        )
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "/problems/bad-request",
            "The request is malformed",
            detail,
        )
    }

    pub fn invalid_fields(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.detail),
            many => format!("{} fields are invalid; see `errors`", many.len()),
        };
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/invalid-fields",
                "The request breaks the rules of the API",
                detail,
            )
        }
    }

    pub fn idempotency_key_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/idempotency-key-reused",
            "The Idempotency-Key was used for a different request",
            "this Idempotency-Key was already used with a different request body; use a new key",
        )
    }

    pub fn idempotency_key_in_flight() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "/problems/idempotency-key-in-flight",
            "A request with this Idempotency-Key is still being processed",
            "retry after the first request with this key has finished",
        )
        .with_header(header::RETRY_AFTER, "1")
    }

    /// `400`: a path parameter that does not parse; `errors` names it.
    pub fn invalid_path_parameter(
        kind: &'static str,
        title: &'static str,
        error: FieldError,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, title, detail).with_errors(vec![error])
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "about:blank", "Not Found", detail)
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "about:blank",
            "Method Not Allowed",
            format!("this resource supports {allow} only"),
        )
        .with_header(header::ALLOW, allow)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "about:blank",
            "Content Too Large",
            format!("the body must be at most {limit} bytes"),
        )
    }

    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        let detail = match got {
            Some(ct) => format!("the body must be application/json, not {ct:?}"),
            None => "the body must be application/json; send a Content-Type header".to_owned(),
        };
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "about:blank",
            "Unsupported Media Type",
            detail,
        )
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "/problems/unavailable",
            "The service is temporarily unavailable",
            "the database did not answer in time; nothing was changed, retry shortly",
        )
        .with_header(header::RETRY_AFTER, "1")
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "about:blank",
            "Internal Server Error",
            "the request failed unexpectedly; it has been logged",
        )
    }

    /// Adds a response header (e.g. `retry-after`, `allow`).
    pub fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.extra_headers
            .push((name, HeaderValue::from_static(value)));
        self
    }

    /// Replaces the field errors.
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn into_response(self) -> Response<Body> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // Serializing a struct of strings and numbers cannot fail.
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.extra_headers {
            headers.insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_follow_rfc_6901() {
        assert_eq!(json_pointer("items[2].sku"), "/items/2/sku");
        assert_eq!(json_pointer("customer_id"), "/customer_id");
        assert_eq!(json_pointer("."), "");
    }
}
