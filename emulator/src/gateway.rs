//! What API Gateway (HTTP API, payload format 2.0) does around a function: the
//! event it sends and how it maps the function's response back to HTTP.

use std::net::SocketAddr;

use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::routes::Matched;

/// API Gateway's own payload limit.
pub const MAX_PAYLOAD_BYTES: usize = 10 * 1024 * 1024;

/// The event API Gateway would send for this request.
pub fn event(parts: &Parts, body: &[u8], matched: &Matched, peer: SocketAddr) -> Value {
    // Header names are lower-cased; repeated headers are joined with commas;
    // cookies travel in their own field.
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == header::COOKIE {
            cookies.extend(
                value
                    .split(';')
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty()),
            );
            continue;
        }
        match headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    let now = OffsetDateTime::now_utc();
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let (body, is_base64) = encode_body(parts, body);
    let mut event = json!({
        "version": "2.0",
        "routeKey": matched.route_key,
        "rawPath": parts.uri.path(),
        "rawQueryString": parts.uri.query().unwrap_or_default(),
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": parts.headers.get(header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()).unwrap_or_else(|| "localhost".into()),
            "domainPrefix": "local",
            "http": {
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "protocol": format!("{:?}", parts.version),
                "sourceIp": peer.ip().to_string(),
                "userAgent": user_agent,
            },
            "requestId": uuid::Uuid::now_v7().to_string(),
            "routeKey": matched.route_key,
            "stage": "$default",
            "time": request_time(now),
            "timeEpoch": now.unix_timestamp_nanos() / 1_000_000,
        },
        "isBase64Encoded": is_base64,
    });
    if !matched.path_parameters.is_empty() {
        event["pathParameters"] = json!(matched.path_parameters);
    }
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if let Some(query) = parts.uri.query().filter(|q| !q.is_empty()) {
        event["queryStringParameters"] = json!(query_parameters(query));
    }
    if let Some(body) = body {
        event["body"] = json!(body);
    }
    event
}

/// Text bodies travel as they are; anything else (or invalid UTF-8) as base64.
fn encode_body(parts: &Parts, body: &[u8]) -> (Option<String>, bool) {
    if body.is_empty() {
        return (None, false);
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let textual = content_type.starts_with("text/")
        || content_type.contains("json")
        || content_type.contains("xml")
        || content_type.contains("x-www-form-urlencoded")
        || content_type.contains("javascript");
    match std::str::from_utf8(body) {
        Ok(text) if textual => (Some(text.to_owned()), false),
        _ => (
            Some(base64::engine::general_purpose::STANDARD.encode(body)),
            true,
        ),
    }
}

/// Repeated names are joined with commas, as API Gateway does.
fn query_parameters(query: &str) -> Map<String, Value> {
    let mut params = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match params.get_mut(name) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(value);
            }
            _ => {
                params.insert(name.to_owned(), Value::String(value.to_owned()));
            }
        }
    }
    params
}

/// `24/Nov/2026:10:15:30 +0000`, API Gateway's request time format.
fn request_time(now: OffsetDateTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        now.day(),
        MONTHS[usize::from(u8::from(now.month())) - 1],
        now.year(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// The function's response as HTTP.
pub fn response(response: lambda_http::Response<lambda_http::Body>) -> axum::response::Response {
    let (parts, body) = response.into_parts();
    let mut out = axum::response::Response::new(axum::body::Body::from(body.to_vec()));
    *out.status_mut() = parts.status;
    *out.headers_mut() = parts.headers;
    out
}

fn gateway_error(status: StatusCode, message: &str) -> axum::response::Response {
    let mut out = axum::response::Response::new(axum::body::Body::from(
        json!({ "message": message }).to_string(),
    ));
    *out.status_mut() = status;
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}

/// No route matched: API Gateway answers itself.
pub fn not_found() -> axum::response::Response {
    gateway_error(StatusCode::NOT_FOUND, "Not Found")
}

pub fn payload_too_large() -> axum::response::Response {
    gateway_error(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large")
}

/// The function failed (an invocation error): `500`, and the emulator keeps serving.
pub fn function_failed(detail: &str) -> axum::response::Response {
    tracing::error!(detail, "function invocation failed");
    gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
}
