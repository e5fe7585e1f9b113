//! One invocation of a function, whichever way it runs (in-process or as a
//! child process behind the Runtime API), and how its failures look to callers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::json;

/// What a caller hands a function: the event and the context Lambda gives it.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// `Lambda-Runtime-Aws-Request-Id`.
    pub request_id: String,
    /// The event, JSON.
    pub payload: Bytes,
    /// `Lambda-Runtime-Trace-Id` (X-Ray format), when the caller has one.
    pub trace_id: Option<String>,
}

impl Invocation {
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            request_id: uuid::Uuid::now_v7().to_string(),
            payload: payload.into(),
            trace_id: None,
        }
    }
}

/// The deadline Lambda would give an invocation starting now: epoch milliseconds.
pub fn deadline_ms(timeout: Duration) -> u64 {
    let deadline = SystemTime::now() + timeout;
    deadline
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A fresh `Lambda-Runtime-Trace-Id` in the X-Ray format Lambda uses:
/// `Root=1-{epoch seconds, 8 hex}-{24 hex};Parent={16 hex};Sampled=1`.
pub fn new_trace_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The random tails of two v7 UUIDs (32 hex digits each, leading ones are the clock).
    let root = uuid::Uuid::now_v7().simple().to_string();
    let parent = uuid::Uuid::now_v7().simple().to_string();
    let root = root.get(8..).unwrap_or_default();
    let parent = parent.get(16..).unwrap_or_default();
    format!("Root=1-{secs:08x}-{root};Parent={parent};Sampled=1")
}

/// Why an invocation produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The handler returned an error (`/invocation/{id}/error`), or panicked.
    #[error("{error_type}: {error_message}")]
    Function {
        error_type: String,
        error_message: String,
    },
    /// The function ran past its `Timeout`; its instance was stopped.
    #[error("Task timed out after {:.2} seconds", .after.as_secs_f64())]
    Timeout { after: Duration },
    /// The function could not start (`/init/error`, or its process exited first).
    #[error("{error_type}: {error_message}")]
    Init {
        error_type: String,
        error_message: String,
    },
    /// The process died during the invocation.
    #[error("Runtime exited: {0}")]
    Exited(String),
    /// Every instance the concurrency limit allows is busy.
    #[error("Rate Exceeded.")]
    Throttled,
    /// No function of that name.
    #[error("Function not found: {0}")]
    NotFound(String),
}

impl InvokeError {
    /// The error payload AWS returns for it (`errorType`, `errorMessage`).
    pub fn payload(&self, request_id: &str) -> serde_json::Value {
        match self {
            Self::Function {
                error_type,
                error_message,
            }
            | Self::Init {
                error_type,
                error_message,
            } => json!({"errorType": error_type, "errorMessage": error_message}),
            Self::Timeout { .. } => json!({
                "errorType": "Sandbox.Timedout",
                "errorMessage": format!("RequestId: {request_id} Error: {self}"),
            }),
            Self::Exited(_) => json!({
                "errorType": "Runtime.ExitError",
                "errorMessage": format!("RequestId: {request_id} Error: {self}"),
            }),
            Self::Throttled => json!({"Type": "User", "message": "Rate Exceeded."}),
            Self::NotFound(name) => json!({
                "Type": "User",
                "message": format!("Function not found: {name}"),
            }),
        }
    }
}
