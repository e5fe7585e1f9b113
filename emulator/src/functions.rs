//! The template's functions, ready to invoke: linked into the emulator's
//! process by the binary that runs it (a [`Registry`] of [`Linked`] functions)
//! and called directly (the default), or run as their real binaries behind the
//! emulator's Runtime API (`--runtime-api`, and any function the registry does
//! not link). Either way an invocation is an event in and a response (or an
//! [`InvokeError`]) out, under the function's `Timeout`.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_lambda_events::apigw::ApiGatewayV2httpResponse;
use bytes::Bytes;
use lambda_http::http::{header::SET_COOKIE, HeaderMap, HeaderValue};
use lambda_runtime::LambdaEvent;
use serde::Serialize;
use shared::config::Env;
use tracing::Instrument as _;

use crate::invoke::{deadline_ms, Invocation, InvokeError};
use crate::runtime;
use crate::template::FunctionSpec;

/// A boxed future, for the object-safe traits below.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `arn:aws:lambda:us-east-1:000000000000:function:<name>`.
pub fn arn(name: &str) -> String {
    format!("arn:aws:lambda:us-east-1:000000000000:function:{name}")
}

/// A function linked into the emulator's process: what its binary's `main`
/// builds before the first invocation, called directly.
pub trait Linked: fmt::Debug + Send + Sync + 'static {
    /// One invocation, as the function's `lambda_runtime` loop would run it:
    /// the event's JSON in, the response's JSON (or the function's error) out.
    fn invoke(
        &self,
        payload: Bytes,
        context: lambda_runtime::Context,
    ) -> BoxFuture<'_, Result<Bytes, InvokeError>>;

    /// Runs what stands behind the function for the emulator's lifetime, until
    /// `shutdown`: a relay woken by `LISTEN/NOTIFY`, a consumer's stream
    /// source. Returns how it stopped; `None` (the default) for a function
    /// that only runs when invoked.
    fn serve(&self, shutdown: BoxFuture<'static, ()>) -> BoxFuture<'_, Option<String>> {
        drop(shutdown);
        Box::pin(async { None })
    }

    /// Ends a running invocation early once its work is settled (what SIGTERM
    /// does to the binary); nothing by default.
    fn stop(&self) {}
}

/// What a binary links into the emulator: its functions, by binary name, and
/// the migrations the emulator applies to its database. The emulator knows no
/// function itself; a function the registry does not link runs as its real
/// binary behind the emulator's Runtime API.
pub trait Registry: fmt::Debug + Send + Sync {
    /// The binaries [`Registry::link`] knows.
    fn binaries(&self) -> Vec<&'static str>;

    /// `binary` built from its environment, as its `main` builds it at cold
    /// start; `None` for a binary this registry does not link.
    fn link<'a>(
        &'a self,
        binary: &'a str,
        env: &'a Env,
    ) -> BoxFuture<'a, Option<anyhow::Result<Arc<dyn Linked>>>>;

    /// The migration folders, in the order they are applied.
    fn migrations(&self) -> Vec<sqlx::migrate::Migrator>;

    /// Tables the services add to the web console (none by default).
    fn console_views(&self) -> Vec<ConsoleView> {
        Vec::new()
    }
}

/// A table a service adds to the web console: a title and a query whose rows
/// (the first 50, each as a JSON object of its columns) the page shows live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleView {
    pub title: &'static str,
    pub sql: &'static str,
}

/// A registry that links nothing and migrates nothing: every function runs as
/// its binary.
#[derive(Debug, Default, Clone, Copy)]
pub struct NothingLinked;

impl Registry for NothingLinked {
    fn binaries(&self) -> Vec<&'static str> {
        Vec::new()
    }

    fn link<'a>(
        &'a self,
        _binary: &'a str,
        _env: &'a Env,
    ) -> BoxFuture<'a, Option<anyhow::Result<Arc<dyn Linked>>>> {
        Box::pin(async { None })
    }

    fn migrations(&self) -> Vec<sqlx::migrate::Migrator> {
        Vec::new()
    }
}

/// One local process: a short lease lets a restarted emulator resume at once,
/// and a crashed batch comes back within seconds.
pub fn local(mut config: shared::source::ConsumerConfig) -> shared::source::ConsumerConfig {
    config.source.lease_ttl = Duration::from_secs(3);
    config.source.visibility_timeout = config.source.visibility_timeout.min(Duration::from_secs(5));
    config
}

/// An HTTP function's invocation: the API Gateway v2 event as `lambda_http`
/// reads it, the handler's response as `lambda_http` sends it back.
pub async fn http<F, Fut>(payload: &[u8], handler: F) -> Result<Bytes, InvokeError>
where
    F: FnOnce(lambda_http::Request) -> Fut,
    Fut: Future<Output = lambda_http::Response<lambda_http::Body>>,
{
    http_response(handler(http_request(payload)?).await)
}

/// A JSON event (a schedule's, a custom resource's) with its context, as
/// `lambda_runtime` hands it to the handler.
pub fn event<T: serde::de::DeserializeOwned>(
    payload: &[u8],
    context: lambda_runtime::Context,
) -> Result<LambdaEvent<T>, InvokeError> {
    let event: T = serde_json::from_slice(payload).map_err(|e| runtime_error(&e))?;
    Ok(LambdaEvent::new(event, context))
}

/// A handler's answer as the runtime sends it: its JSON, or its error as a
/// function error (`errorType`, `errorMessage`).
pub fn answer<T: Serialize, E: Into<lambda_runtime::Diagnostic>>(
    result: Result<T, E>,
) -> Result<Bytes, InvokeError> {
    match result {
        Ok(value) => to_json(&value),
        Err(e) => Err(function_error(e.into())),
    }
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

pub fn to_json(value: &impl Serialize) -> Result<Bytes, InvokeError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| runtime_error(&e))
}

/// The event could not be read as the function's event type: what
/// `lambda_runtime` reports as `Runtime.UnmarshalError`.
pub fn runtime_error(e: &dyn std::fmt::Display) -> InvokeError {
    InvokeError::Function {
        error_type: "Runtime.UnmarshalError".into(),
        error_message: e.to_string(),
    }
}

pub fn function_error(d: lambda_runtime::Diagnostic) -> InvokeError {
    InvokeError::Function {
        error_type: d.error_type,
        error_message: d.error_message,
    }
}

/// How one function runs.
#[derive(Debug)]
pub enum Runner {
    Linked(Arc<dyn Linked>),
    Process(runtime::Pool),
}

/// A function of the template with its runner.
#[derive(Debug)]
pub struct Function {
    pub spec: FunctionSpec,
    /// The environment it runs with: template, overrides, and what the emulator supplies.
    pub env: BTreeMap<String, String>,
    pub runner: Runner,
    /// Invocations started and not yet ended.
    pub in_flight: InFlight,
    /// Invocations through [`Function::invoke`] that ended in an error.
    pub errors: std::sync::atomic::AtomicU64,
}

/// A count of invocations in flight.
#[derive(Debug, Default)]
pub struct InFlight(std::sync::atomic::AtomicU64);

impl InFlight {
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts one until the guard is dropped.
    fn enter(&self) -> InFlightGuard<'_> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlightGuard(self)
    }
}

struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Function {
    /// One invocation under the function's `Timeout`.
    pub async fn invoke(&self, invocation: Invocation) -> Result<Bytes, InvokeError> {
        let result = self.run(invocation).await;
        if result.is_err() {
            self.errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    async fn run(&self, invocation: Invocation) -> Result<Bytes, InvokeError> {
        let _counted = self.in_flight.enter();
        match &self.runner {
            Runner::Process(pool) => pool.invoke(invocation).await,
            Runner::Linked(linked) => {
                let timeout = self.spec.timeout;
                let context = self.context(&invocation, timeout);
                let linked = Arc::clone(linked);
                let payload = invocation.payload;
                // A task of its own: a panic is the invocation's failure, not the emulator's.
                let span = shared::telemetry::function_span(&self.spec.logical_id);
                let mut task = tokio::spawn(
                    async move { linked.invoke(payload, context).await }.instrument(span),
                );
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

    /// Invocations in flight that are work in hand: over every function but
    /// those with a stream source, whose invocation under `--runtime-api` is a
    /// long poll that never ends while the emulator runs (the records it
    /// works on show as lag or pending instead).
    /// By function, those with none left out.
    pub fn in_flight(&self) -> BTreeMap<String, u64> {
        self.by_id
            .values()
            .filter(|f| f.spec.stream_source().is_none())
            .map(|f| (f.spec.logical_id.clone(), f.in_flight.get()))
            .filter(|(_, n)| *n > 0)
            .collect()
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

/// The function linked by `registry`, or `None` when it does not link its binary.
pub async fn link(
    spec: FunctionSpec,
    env: BTreeMap<String, String>,
    registry: &dyn Registry,
) -> anyhow::Result<Option<Function>> {
    let Some(linked) = registry.link(&spec.binary, &env_of(&env)).await else {
        return Ok(None);
    };
    let linked =
        linked.with_context(|| format!("starting {} ({})", spec.logical_id, spec.binary))?;
    Ok(Some(Function {
        spec,
        env,
        runner: Runner::Linked(linked),
        in_flight: InFlight::default(),
        errors: std::sync::atomic::AtomicU64::new(0),
    }))
}
