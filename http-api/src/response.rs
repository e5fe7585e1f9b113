//! Answers: JSON bodies, and storage failures mapped to what a client can do about
//! them (`503`: retry; `500`: it is logged). No internals ever reach a body.

use lambda_http::http::{header, HeaderValue, StatusCode};
use lambda_http::{Body, Response};
use shared::StoreError;
use tracing::{error, warn};

use crate::problem::Problem;

/// `status` with `value` as `application/json`.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            error!(error = %e, "could not serialize a response");
            Problem::internal().into_response()
        }
    }
}

/// Maps a storage failure to `503` (retryable: nothing was changed, try again)
/// or `500` (a bug or corrupt data), logging the cause.
pub fn store_failure(error: StoreError) -> Response<Body> {
    if error.is_retryable() {
        warn!(error = %error, "database unavailable");
        Problem::unavailable().into_response()
    } else {
        error!(error = %error, "database operation failed");
        Problem::internal().into_response()
    }
}

/// Rolls back now, so the transaction's locks (e.g. an `Idempotency-Key`'s advisory
/// lock) are free before the answer leaves: a dropped transaction rolls back only
/// when its connection is next used, and a client's immediate retry on another
/// connection would still meet them.
pub async fn end_transaction(tx: sqlx::Transaction<'_, sqlx::Postgres>) {
    if let Err(e) = tx.rollback().await {
        // The connection is broken; closing it releases the locks just the same.
        warn!(error = %e, "rolling back failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_say_whether_to_retry() {
        let retryable = StoreError::database("reading", sqlx::Error::PoolTimedOut);
        let response = store_failure(retryable);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static("1"))
        );
        let corrupt = StoreError::corrupt("reading", "bad status");
        let response = store_failure(corrupt);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = String::from_utf8_lossy(response.body().as_ref()).into_owned();
        assert!(!body.contains("bad status"), "internals leaked: {body}");
    }

    #[test]
    fn json_responses_are_typed() {
        let response = json_response(StatusCode::OK, &serde_json::json!({"a": 1}));
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
        assert_eq!(response.body().as_ref(), br#"{"a":1}"#);
    }
}
