//! The local emulator: the functions of this repo on a laptop, with no AWS
//! account and no Docker.
//!
//! It serves the HTTP API: each request becomes an API Gateway HTTP API (payload
//! 2.0) event, is turned into a `lambda_http::Request` exactly as the Lambda
//! runtime does it, and is handed in-process to the function's `handle`; the
//! response is mapped back. Behind it run the outbox relay (woken by
//! `LISTEN/NOTIFY`) and the saga's consumers ([`workers`]). Schedules and the
//! template reader come with the emulator's own issue.
//!
//! - [`gateway`]: HTTP request ⇄ API Gateway v2 event and response.
//! - [`routes`]: the route table (`ANY /orders`, `ANY /orders/{id}`,
//!   `POST /orders/{id}/cancel`, `ANY /inventory/{sku}`).
//! - [`cli`]: the operator commands (`dlq`, `streams`, `outbox`).
//! - [`database`]: zero-configuration PostgreSQL: create the database, migrate.
//! - [`workers`]: the relay and the consumers, in the background.

pub mod cli;
pub mod database;
pub mod gateway;
pub mod routes;
pub mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{ConnectInfo, State};
use axum::Router;

/// What the emulator serves.
#[derive(Debug, Clone)]
pub struct Emulator {
    pub create_order: Arc<create_order::Deps>,
    pub inventory_api: Arc<inventory_api::Deps>,
    pub routes: routes::RouteTable,
}

/// Serves HTTP on `listener` until `shutdown` completes; in-flight requests finish first.
pub async fn serve(
    emulator: Emulator,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .fallback(dispatch)
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
    let Some(matched) = emulator
        .routes
        .find(parts.method.as_str(), parts.uri.path())
    else {
        return gateway::not_found();
    };
    let body = match axum::body::to_bytes(body, gateway::MAX_PAYLOAD_BYTES).await {
        Ok(body) => body,
        Err(_) => return gateway::payload_too_large(),
    };
    let event = gateway::event(&parts, &body, &matched, peer);
    let request = match lambda_http::request::from_str(&event.to_string()) {
        Ok(request) => request,
        Err(e) => return gateway::function_failed(&format!("building the event: {e}")),
    };
    let response = match matched.function {
        routes::Function::CreateOrder => {
            create_order::handle(&emulator.create_order, request).await
        }
        routes::Function::InventoryApi => {
            inventory_api::handle(&emulator.inventory_api, request).await
        }
    };
    gateway::response(response)
}
