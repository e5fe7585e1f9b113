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

/// The function's result as HTTP, as API Gateway maps a payload 2.0 response:
/// an object with `statusCode` gives status, headers, `cookies` and the body
/// (base64-decoded when `isBase64Encoded`); anything else is a `200` JSON body.
pub fn response_from_payload(payload: &[u8]) -> axum::response::Response {
    let Ok(value) = serde_json::from_slice::<Value>(payload) else {
        return function_failed("the function's response is not JSON");
    };
    let Some(status) = value.get("statusCode") else {
        let mut out = axum::response::Response::new(axum::body::Body::from(payload.to_vec()));
        out.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return out;
    };
    let Some(status) = status
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
    else {
        return function_failed("the function's statusCode is not an HTTP status");
    };
    let body = match value.get("body").and_then(Value::as_str) {
        None => Vec::new(),
        Some(text) if value["isBase64Encoded"] == true => {
            match base64::engine::general_purpose::STANDARD.decode(text) {
                Ok(bytes) => bytes,
                Err(_) => return function_failed("the function's base64 body does not decode"),
            }
        }
        Some(text) => text.as_bytes().to_vec(),
    };
    let mut out = axum::response::Response::new(axum::body::Body::from(body));
    *out.status_mut() = status;
    let headers = out.headers_mut();
    let mut put = |name: &str, value: &str| {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(name),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    };
    if let Some(Value::Object(map)) = value.get("multiValueHeaders") {
        for (name, values) in map {
            for v in values
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                put(name, v);
            }
        }
    }
    if let Some(Value::Object(map)) = value.get("headers") {
        for (name, v) in map {
            if let Some(v) = v.as_str() {
                put(name, v);
            }
        }
    }
    for cookie in value["cookies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        put("set-cookie", cookie);
    }
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

/// Past the route's throttling limits.
pub fn too_many_requests() -> axum::response::Response {
    gateway_error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
}

pub fn payload_too_large() -> axum::response::Response {
    gateway_error(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large")
}

/// The function's response cannot be mapped: `500`, as API Gateway answers.
fn function_failed(detail: &str) -> axum::response::Response {
    tracing::error!(detail, "malformed function response");
    gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
}

/// The invocation failed: API Gateway's `500` (or `503` for a timeout, `429`
/// when throttled) with a JSON message; the emulator keeps serving.
pub fn invocation_failed(
    function: &str,
    error: &crate::invoke::InvokeError,
) -> axum::response::Response {
    use crate::invoke::InvokeError;
    tracing::error!(function, %error, "function invocation failed");
    match error {
        InvokeError::Timeout { .. } => {
            gateway_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
        }
        InvokeError::Throttled => too_many_requests(),
        _ => gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
    }
}
