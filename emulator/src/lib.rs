//! The local emulator: the functions of `template.yaml` on a laptop, with no
//! AWS account and no Docker.
//!
//! The template is the single source of truth ([`template`]): its `HttpApi`
//! events become routes on one listener, where each request becomes an API
//! Gateway HTTP API (payload 2.0) event ([`gateway`]); its `Schedule` events
//! become timers ([`schedule`]); a consumer's stream source reads Redis Streams
//! continuously; the outbox relay wakes on `LISTEN/NOTIFY` ([`system`]).
//! Functions are linked in-process, or run as their real binaries behind the
//! emulator's own Lambda Runtime API ([`runtime`]); [`functions`] hides which.
//! The same listener answers the Lambda Invoke API.
//!
//! - [`cli`]: the operator commands (`dlq`, `streams`, `outbox`, `generate-event`).
//! - [`database`] and [`servers`]: zero-configuration PostgreSQL and Redis.
//! - [`invoke`]: an invocation and its errors, as AWS reports them.
//! - [`watch`] and [`supervise`]: `up --watch`, in both run modes.

pub mod app;
pub mod auth;
pub mod cli;
pub mod console;
pub mod cors;
pub mod database;
pub mod functions;
pub mod gateway;
pub mod invoke;
pub mod logs;
pub mod metrics;
pub mod routes;
pub mod runtime;
pub mod schedule;
pub mod servers;
pub mod status;
pub mod stores;
pub mod supervise;
pub mod system;
pub mod template;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse as _;
use axum::Router;

/// What the emulator serves over HTTP.
#[derive(Debug, Clone)]
pub struct Emulator {
    pub functions: Arc<functions::Functions>,
    pub routes: routes::RouteTable,
    /// The HTTP APIs' authorizers and the keys they trust.
    pub gate: Arc<auth::Gate>,
    /// Where `GET /_emulator/status` reads its figures; without it, that path
    /// answers 404.
    pub status: Option<Arc<status::Source>>,
    /// What `GET /_emulator/logs` reads; without it, that path answers 404.
    pub logs: Option<Arc<shared::logbook::LogBook>>,
    /// The web console at `/_console/`; without it, that path answers 404.
    pub console: Option<Arc<console::Console>>,
    /// The address clients reach the emulator at, when it is not the
    /// listener's own (behind `up --watch`'s proxy): the `Host` checks use it.
    pub public: Option<SocketAddr>,
    /// Set once shutdown begins: endless responses (the console's events) end.
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Emulator {
    pub fn of(system: &system::System) -> Self {
        let _installed = metrics::handle();
        Self {
            functions: Arc::clone(&system.functions),
            routes: system.routes.clone(),
            gate: Arc::clone(&system.gate),
            status: None,
            logs: None,
            console: None,
            public: None,
            stopping: None,
        }
    }

    /// Answering as `public`, the address clients reach it at.
    #[must_use]
    pub fn with_public(mut self, public: SocketAddr) -> Self {
        self.public = Some(public);
        self
    }

    /// With `GET /_emulator/status` reading from `source`.
    #[must_use]
    pub fn with_status(mut self, source: Arc<status::Source>) -> Self {
        self.status = Some(source);
        self
    }

    /// With the web console at `/_console/`.
    #[must_use]
    pub fn with_console(mut self, console: console::Console) -> Self {
        self.console = Some(Arc::new(console));
        self
    }

    /// With `GET /_emulator/logs` reading `book`.
    #[must_use]
    pub fn with_logs(mut self, book: Arc<shared::logbook::LogBook>) -> Self {
        self.logs = Some(book);
        self
    }
}

/// Serves HTTP on `listener` until `shutdown` completes; in-flight requests finish first.
pub async fn serve(
    mut emulator: Emulator,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = match emulator.public {
        Some(public) => public,
        None => listener.local_addr().context("the listener's address")?,
    };
    let (stop, stopping) = tokio::sync::watch::channel(false);
    emulator.stopping = Some(stopping);
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let app = Router::new()
        .route(
            "/2015-03-31/functions/{name}/invocations",
            axum::routing::post(invoke_api),
        )
        .route("/metrics", axum::routing::get(metrics))
        .route("/_emulator/status", axum::routing::get(status_api))
        .route("/_emulator/logs", axum::routing::get(logs_api))
        .route("/_console", axum::routing::get(console_home))
        .route("/_console/", axum::routing::get(console_page))
        .route("/_console/{file}", axum::routing::get(console_asset))
        .route("/_console/api/events", axum::routing::get(console_events))
        .route(
            "/_console/api/dlq/{group}/{name}",
            axum::routing::get(console_letter).post(console_act),
        )
        .route(
            "/_console/api/outbox/{outbox}/redrive",
            axum::routing::post(console_outbox_redrive),
        )
        .fallback(dispatch)
        .layer(axum::Extension(Listener(local)))
        .with_state(Arc::new(emulator));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving HTTP")
}

async fn dispatch(
    State(emulator): State<Arc<Emulator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let cors = emulator.routes.cors.as_ref();
    if let Some(cors) = cors.filter(|_| cors::is_preflight(&parts.method, &parts.headers)) {
        return cors::preflight(cors, &parts.headers);
    }
    let mut response = route(&emulator, &parts, body, peer).await;
    if let Some(cors) = cors {
        cors::decorate(cors, &parts.headers, &mut response);
    }
    response
}

/// What API Gateway does for a request of a route: throttling, the
/// authorizer, then the function.
async fn route(
    emulator: &Emulator,
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
    peer: SocketAddr,
) -> axum::response::Response {
    let Some(matched) = emulator
        .routes
        .find(parts.method.as_str(), parts.uri.path())
    else {
        return gateway::not_found();
    };
    if !matched.guard.admit() {
        return gateway::too_many_requests();
    }
    let authorizer = match &matched.guard.authorizer {
        None => None,
        Some(name) => match emulator
            .gate
            .authorize(name, &matched.guard.scopes, &parts.headers)
        {
            Ok(context) => Some(context),
            Err(denied) => return denied.response(),
        },
    };
    let body = match axum::body::to_bytes(body, gateway::MAX_PAYLOAD_BYTES).await {
        Ok(body) => body,
        Err(_) => return gateway::payload_too_large(),
    };
    let mut event = gateway::event(parts, &body, &matched, peer);
    if let Some(context) = authorizer {
        event["requestContext"]["authorizer"] = context;
    }
    let mut invocation = invoke::Invocation::new(event.to_string());
    if let Some(id) = event["requestContext"]["requestId"].as_str() {
        id.clone_into(&mut invocation.request_id);
    }
    // An upstream X-Ray trace continues in the invocation, as with active tracing.
    invocation.trace_id = parts
        .headers
        .get("x-amzn-trace-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.contains("Root="))
        .map(str::to_owned);
    match emulator
        .functions
        .invoke(&matched.function, invocation)
        .await
    {
        Ok(payload) => gateway::response_from_payload(&payload),
        Err(e) => gateway::invocation_failed(&matched.function, &e),
    }
}

/// `GET /metrics`: the functions' metrics in Prometheus' text format: what they
/// record in process, and what the function processes publish as EMF lines.
/// A route of the template's own on `/metrics` wins.
async fn metrics(
    state: State<Arc<Emulator>>,
    peer: ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> axum::response::Response {
    if state.routes.find("GET", "/metrics").is_some() {
        return dispatch(state, peer, request).await;
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(),
    )
        .into_response()
}

/// `GET /_emulator/status`: whether the system has work in hand, with the
/// figures ([`status::Status`]); `emulator wait-idle` asks it.
async fn status_api(State(emulator): State<Arc<Emulator>>) -> axum::response::Response {
    use axum::http::StatusCode;
    let (code, body) = match &emulator.status {
        None => (
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "this emulator reports no status"}).to_string(),
        ),
        Some(source) => match source.read(&emulator.functions).await {
            Ok(status) => (
                StatusCode::OK,
                serde_json::to_string(&status).unwrap_or_default(),
            ),
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"message": format!("{e:#}")}).to_string(),
            ),
        },
    };
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// `GET /_emulator/logs?function=F&trace=T&order=O&from=N&limit=L`: the
/// kept log lines that match ([`logs::read`]).
async fn logs_api(
    State(emulator): State<Arc<Emulator>>,
    axum::extract::Query(query): axum::extract::Query<logs::Query>,
) -> axum::response::Response {
    match &emulator.logs {
        None => (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"message": "this emulator keeps no logs"})),
        )
            .into_response(),
        Some(book) => axum::Json(logs::read(book, &query)).into_response(),
    }
}

/// 404: this emulator has no console.
fn no_console() -> axum::response::Response {
    axum::http::StatusCode::NOT_FOUND.into_response()
}

async fn console_home() -> axum::response::Response {
    axum::response::Redirect::permanent("/_console/").into_response()
}

async fn console_page(State(emulator): State<Arc<Emulator>>) -> axum::response::Response {
    match &emulator.console {
        Some(_) => console::asset(axum::extract::Path(String::new())).await,
        None => no_console(),
    }
}

async fn console_asset(
    State(emulator): State<Arc<Emulator>>,
    file: axum::extract::Path<String>,
) -> axum::response::Response {
    match &emulator.console {
        Some(_) => console::asset(file).await,
        None => no_console(),
    }
}

async fn console_events(State(emulator): State<Arc<Emulator>>) -> axum::response::Response {
    match &emulator.console {
        Some(c) => console::events(
            Arc::clone(c),
            Arc::clone(&emulator.functions),
            emulator.stopping.clone(),
        ),
        None => no_console(),
    }
}

async fn console_letter(
    State(emulator): State<Arc<Emulator>>,
    axum::extract::Path((group, id)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    match &emulator.console {
        Some(c) => console::letter(c, &group, &id).await,
        None => no_console(),
    }
}

async fn console_act(
    State(emulator): State<Arc<Emulator>>,
    axum::Extension(Listener(listener)): axum::Extension<Listener>,
    axum::extract::Path((group, verb)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    match &emulator.console {
        Some(c) => console::act(c, listener, &headers, &group, &verb, &body).await,
        None => no_console(),
    }
}

async fn console_outbox_redrive(
    State(emulator): State<Arc<Emulator>>,
    axum::Extension(Listener(listener)): axum::Extension<Listener>,
    axum::extract::Path(outbox): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    match &emulator.console {
        Some(c) => console::redrive_outbox(c, listener, &headers, &outbox, &body).await,
        None => no_console(),
    }
}

/// The address the emulator listens on.
#[derive(Debug, Clone, Copy)]
struct Listener(SocketAddr);

/// Whether a request's `Host` names the listener: a loopback name (or its
/// address) and its port. Anything else came through DNS rebinding.
pub(crate) fn own_address(host: &str, listener: SocketAddr) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && !port.contains(']') => (name, port.parse().ok()),
        _ => (host, Some(80)),
    };
    let loopback = matches!(name, "localhost" | "127.0.0.1" | "[::1]")
        || name.trim_start_matches('[').trim_end_matches(']') == listener.ip().to_string();
    loopback && port == Some(listener.port())
}

/// Why an Invoke API request is refused as cross-site, if it is: a web page
/// open in the developer's browser can send requests to loopback (with an
/// `Origin`), or reach it under a name of its own through DNS rebinding (a
/// `Host` that is not the listener's). The AWS CLI and SDKs send neither.
fn cross_site(headers: &axum::http::HeaderMap, listener: SocketAddr) -> Option<String> {
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        return Some(format!(
            "the Invoke API does not answer browsers (Origin: {})",
            origin.to_str().unwrap_or("?")
        ));
    }
    let host = headers.get(axum::http::header::HOST)?;
    let host = host.to_str().unwrap_or_default();
    if own_address(host, listener) {
        None
    } else {
        Some(format!(
            "the Invoke API answers only requests for its own address (Host: {host})"
        ))
    }
}

/// The Lambda Invoke API (`aws lambda invoke --endpoint-url …`): `200` with the
/// payload, or with `X-Amz-Function-Error: Unhandled` and the error payload.
/// Requests from a browser page are refused ([`cross_site`]).
async fn invoke_api(
    State(emulator): State<Arc<Emulator>>,
    axum::Extension(Listener(listener)): axum::Extension<Listener>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::{HeaderValue, StatusCode};
    use axum::response::IntoResponse as _;
    if let Some(reason) = cross_site(&headers, listener) {
        tracing::warn!(%reason, "Invoke API request refused");
        return aws_error_message(StatusCode::FORBIDDEN, "AccessDeniedException", &reason);
    }
    let invocation_type = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse")
        .to_owned();
    let Some(function) = emulator.functions.get(&name).cloned() else {
        let error = invoke::InvokeError::NotFound(functions::arn(&name));
        return aws_error(StatusCode::NOT_FOUND, "ResourceNotFoundException", &error);
    };
    let payload = if body.is_empty() {
        axum::body::Bytes::from_static(b"{}")
    } else {
        body
    };
    if serde_json::from_slice::<serde_json::Value>(&payload).is_err() {
        return aws_error_message(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json",
        );
    }
    let invocation = invoke::Invocation::new(payload);
    let request_id = invocation.request_id.clone();
    match invocation_type.as_str() {
        "DryRun" => return StatusCode::NO_CONTENT.into_response(),
        "Event" => {
            tokio::spawn(async move {
                if let Err(e) = function.invoke(invocation).await {
                    tracing::warn!(function = %function.spec.logical_id, error = %e, "asynchronous invocation failed");
                }
            });
            let mut r = StatusCode::ACCEPTED.into_response();
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                r.headers_mut().insert("x-amzn-requestid", v);
            }
            return r;
        }
        "RequestResponse" => {}
        other => {
            return aws_error_message(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                &format!("unsupported X-Amz-Invocation-Type {other}"),
            )
        }
    }
    let (body, function_error) = match function.invoke(invocation).await {
        Ok(payload) => (payload.to_vec(), false),
        Err(invoke::InvokeError::Throttled) => {
            return aws_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                &invoke::InvokeError::Throttled,
            )
        }
        Err(e) => (e.payload(&request_id).to_string().into_bytes(), true),
    };
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert(
        "x-amz-executed-version",
        HeaderValue::from_static("$LATEST"),
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-amzn-requestid", v);
    }
    if function_error {
        h.insert(
            "x-amz-function-error",
            HeaderValue::from_static("Unhandled"),
        );
    }
    r
}

fn aws_error(
    status: axum::http::StatusCode,
    error_type: &'static str,
    error: &invoke::InvokeError,
) -> axum::response::Response {
    aws_response(status, error_type, error.payload("").to_string())
}

fn aws_error_message(
    status: axum::http::StatusCode,
    error_type: &'static str,
    message: &str,
) -> axum::response::Response {
    aws_response(
        status,
        error_type,
        serde_json::json!({"Type": "User", "message": message}).to_string(),
    )
}

fn aws_response(
    status: axum::http::StatusCode,
    error_type: &'static str,
    body: String,
) -> axum::response::Response {
    use axum::http::HeaderValue;
    use axum::response::IntoResponse as _;
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert("x-amzn-errortype", HeaderValue::from_static(error_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_requests_for_the_listener_itself_reach_the_invoke_api() {
        let listener: SocketAddr = "127.0.0.1:3000".parse().expect("address");
        for ok in ["127.0.0.1:3000", "localhost:3000", "[::1]:3000"] {
            assert_eq!(
                cross_site(&headers(&[("host", ok)]), listener),
                None,
                "{ok}"
            );
        }
        assert_eq!(
            cross_site(&HeaderMap::new(), listener),
            None,
            "no Host (HTTP/1.0)"
        );
        for refused in [
            "evil.example:3000",
            "127.0.0.1:3001",
            "localhost",
            "127.0.0.1.evil.example:3000",
            "[::1]",
        ] {
            assert!(
                cross_site(&headers(&[("host", refused)]), listener).is_some(),
                "{refused}"
            );
        }
        let from_a_page = headers(&[
            ("host", "127.0.0.1:3000"),
            ("origin", "https://evil.example"),
        ]);
        assert!(
            cross_site(&from_a_page, listener).is_some_and(|r| r.contains("https://evil.example"))
        );
        let any: SocketAddr = "0.0.0.0:3000".parse().expect("address");
        assert_eq!(
            cross_site(&headers(&[("host", "localhost:3000")]), any),
            None
        );
    }
}
