//! The HTTP conventions the API functions (`create-order`, `inventory-api`, `customers-api`) share,
//! so that every endpoint answers alike.
//!
//! - [`problem`]: every error is `application/problem+json` (RFC 9457), naming what
//!   is wrong and, for a body, which field.
//! - [`body`]: JSON request bodies: content type, size limit, strict parsing with
//!   field-named errors.
//! - [`caller`]: who is calling: the verified token's subject and scopes, or `401`.
//! - [`request`]: the path as sent, the request id, the `traceparent` to continue,
//!   path segments.
//! - [`response`]: JSON answers, and storage failures as `503` (retryable) or `500`.
//!
//! This crate knows API Gateway requests (through `lambda_http`) and nothing of any
//! one function's resources; it never touches a database table.

pub mod body;
pub mod caller;
pub mod problem;
pub mod request;
pub mod response;

pub use body::{check_body_size, check_content_type, json_body, parse_json, MAX_BODY_BYTES};
pub use caller::{Caller, Subject};
pub use problem::{FieldError, Problem};
pub use request::{
    answer_for, decode_path_segment, incoming_traceparent, invocation, request_id, request_path,
    traceparent, xray_trace_id,
};

pub use response::{end_transaction, json_response, store_failure};
#[doc(hidden)]
pub use tracing;
