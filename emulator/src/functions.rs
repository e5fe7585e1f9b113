//! The template's functions, ready to invoke: linked into the emulator and
//! called in-process (the default), or run as their real binaries behind the
//! emulator's Runtime API (`--runtime-api`). Either way an invocation is an
//! event in and a response (or an [`InvokeError`]) out, under the function's
//! `Timeout`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_lambda_events::apigw::ApiGatewayV2httpResponse;
use aws_lambda_events::cloudwatch_events::CloudWatchEvent;
use bytes::Bytes;
use lambda_http::http::{header::SET_COOKIE, HeaderMap, HeaderValue};
use lambda_runtime::LambdaEvent;
use serde::Serialize;
use shared::config::Env;

use crate::invoke::{deadline_ms, Invocation, InvokeError};
use crate::runtime;
use crate::template::FunctionSpec;

/// The binaries the emulator can link in-process.
pub const LINKED: [&str; 8] = [
    "create-order",
    "inventory-api",
    "outbox-relay",
    "inventory-consumer",
    "order-saga",
    "inventory-retention",
    "order-reconciler",
    "migrate",
];

/// `arn:aws:lambda:us-east-1:000000000000:function:<name>`.
pub fn arn(name: &str) -> String {
    format!("arn:aws:lambda:us-east-1:000000000000:function:{name}")
}

/// A function linked into the emulator, built from its environment as its
/// binary's `main` builds it at cold start.
#[derive(Debug)]
pub enum Linked {
    CreateOrder(create_order::Deps),
    InventoryApi(inventory_api::Deps),
    OutboxRelay(outbox_relay::Deps),
    InventoryConsumer(Arc<inventory_consumer::Deps>),
    OrderSaga(Arc<order_saga::Deps>),
    InventoryRetention(inventory_retention::Deps),
    OrderReconciler(order_reconciler::Deps),
    /// Deploy-time only: nothing drives it; the Invoke API can run it.
    Migrate(migrate::Deps),
}

impl Linked {
    /// What `binary`'s `main` does before its first invocation.
    pub async fn build(binary: &str, env: &Env) -> anyhow::Result<Self> {
        Ok(match binary {
            "create-order" => Self::CreateOrder(create_order::Deps::new(
                &create_order::Config::from_env(env)?,
            )),
            "inventory-api" => Self::InventoryApi(inventory_api::Deps::new(
                &inventory_api::Config::from_env(env)?,
            )),
            "outbox-relay" => Self::OutboxRelay(
                outbox_relay::Deps::connect(&outbox_relay::Config::from_env(env)?).await?,
            ),
            "inventory-consumer" => {
                let config = local(inventory_consumer::config(env)?);
                let handler = inventory_consumer::handler(&config);
                Self::InventoryConsumer(Arc::new(
                    inventory_consumer::Deps::connect(&config, handler).await?,
                ))
            }
            "order-saga" => {
                let config = local(order_saga::config(env)?);
                let handler = order_saga::handler(&config);
                Self::OrderSaga(Arc::new(order_saga::Deps::connect(&config, handler).await?))
            }
            "order-reconciler" => Self::OrderReconciler(order_reconciler::Deps::new(
                &order_reconciler::Config::from_env(env)?,
            )),
            "inventory-retention" => Self::InventoryRetention(inventory_retention::Deps::new(
                &inventory_retention::Config::from_env(env)?,
            )),
            "migrate" => Self::Migrate(migrate::Deps::new(&migrate::Config::from_env(env)?)?),
            other => anyhow::bail!(
                "{other} is not linked into the emulator (linked: {}); run it with --runtime-api",
                LINKED.join(", ")
            ),
        })
    }

    /// Runs what stands behind the function for the emulator's lifetime, until
    /// `shutdown`: the relay woken by `LISTEN/NOTIFY`, a consumer's stream
    /// source. `None` for functions that only run when invoked.
    pub async fn serve(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Option<String> {
        match self {
            Self::OutboxRelay(deps) => Some(
                match deps.relay.run(Duration::from_secs(1), shutdown).await {
                    Ok(()) => "stopped".to_owned(),
                    Err(e) => format!("stopped: {e}"),
                },
            ),
            Self::InventoryConsumer(c) => Some(format!("{:?}", c.run(shutdown).await)),
            Self::OrderSaga(c) => Some(format!("{:?}", c.run(shutdown).await)),
            Self::CreateOrder(_)
            | Self::InventoryApi(_)
            | Self::InventoryRetention(_)
            | Self::OrderReconciler(_)
            | Self::Migrate(_) => None,
        }
    }

    /// One invocation, as the function's `lambda_runtime` loop would run it.
    async fn invoke(
        &self,
        payload: Bytes,
        context: lambda_runtime::Context,
    ) -> Result<Bytes, InvokeError> {
        match self {
            Self::CreateOrder(deps) => {
                let request = http_request(&payload)?;
                http_response(create_order::handle(deps, request).await)
            }
            Self::InventoryApi(deps) => {
                let request = http_request(&payload)?;
                http_response(inventory_api::handle(deps, request).await)
            }
            Self::OutboxRelay(deps) => {
                let event = scheduled(&payload, context)?;
                let summary = outbox_relay::handle(deps, event)
                    .await
                    .map_err(|e| function_error(lambda_runtime::Diagnostic::from(e)))?;
                to_json(&summary)
            }
            Self::InventoryConsumer(deps) => {
                let event = scheduled(&payload, context)?;
                to_json(
                    &inventory_consumer::handle(deps, event)
                        .await
                        .map_err(boxed)?,
                )
            }
            Self::OrderSaga(deps) => {
                let event = scheduled(&payload, context)?;
                to_json(&order_saga::handle(deps, event).await.map_err(boxed)?)
            }
            Self::OrderReconciler(deps) => {
                let event = scheduled(&payload, context)?;
                let summary = order_reconciler::handle(deps, event)
                    .await
                    .map_err(|e| function_error(lambda_runtime::Diagnostic::from(e)))?;
                to_json(&summary)
            }
            Self::InventoryRetention(deps) => {
                let event = scheduled(&payload, context)?;
                let summary = inventory_retention::handle(deps, event)
                    .await
                    .map_err(|e| function_error(lambda_runtime::Diagnostic::from(e)))?;
                to_json(&summary)
            }
            Self::Migrate(deps) => {
                let event: serde_json::Value =
                    serde_json::from_slice(&payload).map_err(|e| runtime_error(&e))?;
                let answer = migrate::handle(deps, LambdaEvent::new(event, context))
                    .await
                    .map_err(|e| function_error(lambda_runtime::Diagnostic::from(e)))?;
                to_json(&answer)
            }
        }
    }

    /// Ends a consumer's running invocation once its batches are settled (what
    /// SIGTERM does to the binary).
    fn stop(&self) {
        match self {
            Self::InventoryConsumer(c) => c.stop(),
            Self::OrderSaga(c) => c.stop(),
            _ => {}
        }
    }
}

/// One local process: a short lease lets a restarted emulator resume at once,
/// and a crashed batch comes back within seconds.
fn local(mut config: shared::source::ConsumerConfig) -> shared::source::ConsumerConfig {
    config.source.lease_ttl = Duration::from_secs(3);
    config.source.visibility_timeout = config.source.visibility_timeout.min(Duration::from_secs(5));
    config
}

fn http_request(payload: &[u8]) -> Result<lambda_http::Request, InvokeError> {
    let text = std::str::from_utf8(payload).map_err(|e| runtime_error(&e))?;
    lambda_http::request::from_str(text).map_err(|e| runtime_error(&e))
}

/// What `lambda_http` sends back for an API Gateway v2 request.
fn http_response(response: lambda_http::Response<lambda_http::Body>) -> Result<Bytes, InvokeError> {
    let (parts, body) = response.into_parts();
    let mut headers: HeaderMap = parts.headers;
    let cookies = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v: &HeaderValue| v.to_str().ok().map(str::to_owned))
        .collect();
    headers.remove(SET_COOKIE);
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(parts.status.as_u16());
    out.is_base64_encoded = matches!(body, lambda_http::Body::Binary(_));
    out.body = match body {
        lambda_http::Body::Empty => None,
        other => Some(other),
    };
    out.headers = headers;
    out.cookies = cookies;
    to_json(&out)
}

fn scheduled(
    payload: &[u8],
    context: lambda_runtime::Context,
) -> Result<LambdaEvent<CloudWatchEvent>, InvokeError> {
    let event: CloudWatchEvent = serde_json::from_slice(payload).map_err(|e| runtime_error(&e))?;
    Ok(LambdaEvent::new(event, context))
}

fn to_json(value: &impl Serialize) -> Result<Bytes, InvokeError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| runtime_error(&e))
}

/// The event could not be read as the function's event type: what
/// `lambda_runtime` reports as `Runtime.UnmarshalError`.
fn runtime_error(e: &dyn std::fmt::Display) -> InvokeError {
    InvokeError::Function {
        error_type: "Runtime.UnmarshalError".into(),
        error_message: e.to_string(),
    }
}

fn function_error(d: lambda_runtime::Diagnostic) -> InvokeError {
    InvokeError::Function {
        error_type: d.error_type,
        error_message: d.error_message,
    }
}

fn boxed(e: lambda_runtime::Error) -> InvokeError {
    function_error(lambda_runtime::Diagnostic::from(e))
}

/// How one function runs.
#[derive(Debug)]
pub enum Runner {
    Linked(Arc<Linked>),
    Process(runtime::Pool),
}

/// A function of the template with its runner.
#[derive(Debug)]
pub struct Function {
    pub spec: FunctionSpec,
    /// The environment it runs with: template, overrides, and what the emulator supplies.
    pub env: BTreeMap<String, String>,
    pub runner: Runner,
}

impl Function {
    /// One invocation under the function's `Timeout`.
    pub async fn invoke(&self, invocation: Invocation) -> Result<Bytes, InvokeError> {
        match &self.runner {
            Runner::Process(pool) => pool.invoke(invocation).await,
            Runner::Linked(linked) => {
                let timeout = self.spec.timeout;
                let context = self.context(&invocation, timeout);
                let linked = Arc::clone(linked);
                let payload = invocation.payload;
                // A task of its own: a panic is the invocation's failure, not the emulator's.
                let mut task = tokio::spawn(async move { linked.invoke(payload, context).await });
                match tokio::time::timeout(timeout, &mut task).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(join)) => Err(InvokeError::Function {
                        error_type: "Runtime.Panic".into(),
                        error_message: panic_message(join),
                    }),
                    Err(_) => {
                        task.abort();
                        Err(InvokeError::Timeout { after: timeout })
                    }
                }
            }
        }
    }

    fn context(&self, invocation: &Invocation, timeout: Duration) -> lambda_runtime::Context {
        let mut headers = HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        };
        put(
            "lambda-runtime-deadline-ms",
            deadline_ms(timeout).to_string(),
        );
        put(
            "lambda-runtime-invoked-function-arn",
            arn(&self.spec.logical_id),
        );
        if let Some(trace) = &invocation.trace_id {
            put("lambda-runtime-trace-id", trace.clone());
        }
        let config = lambda_runtime::Config {
            function_name: self.spec.logical_id.clone(),
            memory: i32::try_from(self.spec.memory_mb).unwrap_or(i32::MAX),
            version: "$LATEST".into(),
            log_stream: String::new(),
            log_group: format!("/aws/lambda/{}", self.spec.logical_id),
        };
        lambda_runtime::Context::new(&invocation.request_id, Arc::new(config), &headers)
            .unwrap_or_default()
    }

    /// Stops taking invocations; running ones finish (consumers end theirs
    /// early, once their batches are acknowledged).
    pub async fn shutdown(&self, grace: Duration) {
        match &self.runner {
            Runner::Linked(linked) => linked.stop(),
            Runner::Process(pool) if self.spec.stream_source().is_some() => {
                pool.terminate(grace).await;
            }
            Runner::Process(pool) => pool.shutdown(grace).await,
        }
    }
}

fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the handler panicked".into()),
        Err(e) => e.to_string(),
    }
}

/// Every function of the template, by logical id.
#[derive(Debug, Default)]
pub struct Functions {
    by_id: BTreeMap<String, Arc<Function>>,
}

impl Functions {
    pub fn insert(&mut self, function: Function) {
        self.by_id
            .insert(function.spec.logical_id.clone(), Arc::new(function));
    }

    /// By logical id, binary name, or ARN (as the AWS CLI sends it).
    pub fn get(&self, name: &str) -> Option<&Arc<Function>> {
        let name = name.rsplit(':').next().unwrap_or(name);
        self.by_id
            .get(name)
            .or_else(|| self.by_id.values().find(|f| f.spec.binary == name))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Function>> {
        self.by_id.values()
    }

    pub async fn invoke(&self, name: &str, invocation: Invocation) -> Result<Bytes, InvokeError> {
        match self.get(name) {
            Some(f) => f.invoke(invocation).await,
            None => Err(InvokeError::NotFound(name.to_owned())),
        }
    }

    pub async fn shutdown(&self, grace: Duration) {
        futures::future::join_all(self.by_id.values().map(|f| f.shutdown(grace))).await;
    }
}

/// The environment a function runs with, as [`Env`].
pub fn env_of(vars: &BTreeMap<String, String>) -> Env {
    Env::from_pairs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// Builds a linked function.
pub async fn link(spec: FunctionSpec, env: BTreeMap<String, String>) -> anyhow::Result<Function> {
    let linked = Linked::build(&spec.binary, &env_of(&env))
        .await
        .with_context(|| format!("starting {} ({})", spec.logical_id, spec.binary))?;
    Ok(Function {
        spec,
        env,
        runner: Runner::Linked(Arc::new(linked)),
    })
}
