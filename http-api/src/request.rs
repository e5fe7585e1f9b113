//! What every handler reads from an API Gateway request besides its body: the path
//! as sent, the request id, the trace to continue.

use std::future::Future;

use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use tracing::Instrument as _;

use crate::Caller;
use shared::telemetry::Invocation;
use shared::trace::TraceParent;

/// The path as the client sent it (still percent-encoded), without the stage.
pub fn request_path(request: &Request) -> String {
    match request.raw_http_path() {
        "" => request.uri().path().to_owned(),
        raw => raw.to_owned(),
    }
}

/// API Gateway's id of this request, for the logs.
pub fn request_id(request: &Request) -> Option<String> {
    match request.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.request_id.clone(),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The caller's trace, if it sent one: a valid W3C `traceparent` header, else
/// an `X-Amzn-Trace-Id` header (API Gateway and load balancers add it).
pub fn incoming_traceparent(request: &Request) -> Option<TraceParent> {
    let header = |name| request.headers().get(name)?.to_str().ok();
    header("traceparent")
        .and_then(|value| TraceParent::parse(value).ok())
        .or_else(|| header("x-amzn-trace-id").and_then(TraceParent::from_xray))
}

/// Lambda's X-Ray trace header of this invocation (`Lambda-Runtime-Trace-Id`,
/// which the runtime also puts in `_X_AMZN_TRACE_ID`), when tracing is active.
pub fn xray_trace_id(request: &Request) -> Option<String> {
    request
        .lambda_context_ref()
        .and_then(|context| context.xray_trace_id.clone())
        .or_else(|| std::env::var("_X_AMZN_TRACE_ID").ok())
        .filter(|id| !id.is_empty())
}

/// The trace this request's work belongs to: the caller's, continued with a new
/// span of ours; else the invocation's X-Ray trace; else a new trace.
pub fn traceparent(request: &Request) -> TraceParent {
    match incoming_traceparent(request) {
        Some(caller) => caller.child(),
        None => Invocation::fallback_trace(xray_trace_id(request).as_deref()).child(),
    }
}

/// The invocation that answers `request`, for `service` (the function's name):
/// its span carries the Lambda request id, the cold start flag and the X-Ray id.
pub fn invocation(service: &str, request: &Request) -> Invocation {
    let request_id = request
        .lambda_context_ref()
        .map(|context| context.request_id.clone())
        .filter(|id| !id.is_empty())
        .or_else(|| request_id(request))
        .unwrap_or_default();
    Invocation::start(service, &request_id, xray_trace_id(request).as_deref())
}

/// A path segment percent-decoded, as API Gateway decodes path parameters. Bytes that
/// are not UTF-8 become U+FFFD, which no identifier accepts.
pub fn decode_path_segment(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// The span of one request: `method`, `path`, `request_id`, `trace_id` (of
/// `$traceparent`), and the handler's own `$field`, empty until the handler
/// records it (`Span::current().record(...)`) once it has parsed the path.
/// `request_span!(request, path, traceparent, order_id)`.
#[macro_export]
macro_rules! request_span {
    ($request:expr, $path:expr, $traceparent:expr, $field:ident) => {
        $crate::tracing::info_span!(
            "request",
            method = %$request.method(),
            path = %$path,
            request_id = $crate::request_id(&$request).unwrap_or_default(),
            trace_id = %$traceparent.trace_id(),
            $field = $crate::tracing::field::Empty,
        )
    };
}

/// Answers `request` inside `span` ([`request_span!`]): first who is calling
/// ([`Caller::of`]: a request that came through a route without an authorizer
/// has no claims and is refused, never given a default caller), then `work`
/// for that caller. Logs the status as `answered`.
pub async fn answer_for<W, F>(request: &Request, span: tracing::Span, work: W) -> Response<Body>
where
    W: FnOnce(Caller) -> F,
    F: Future<Output = Response<Body>>,
{
    async move {
        let response = match Caller::of(request) {
            Ok(caller) => work(caller).await,
            Err(problem) => problem.into_response(),
        };
        tracing::info!(status = response.status().as_u16(), "answered");
        response
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_decoded() {
        assert_eq!(decode_path_segment("WIDGET-1"), "WIDGET-1");
        assert_eq!(decode_path_segment("a%3Ab%40c"), "a:b@c");
        assert_eq!(decode_path_segment("a%2Fb"), "a/b");
        assert_eq!(decode_path_segment("100%"), "100%");
        assert_eq!(decode_path_segment("%zz"), "%zz");
        assert_eq!(decode_path_segment("%ff"), "\u{fffd}");
    }

    #[test]
    fn a_valid_traceparent_is_continued_and_a_bad_one_replaced() {
        let with = |value: &str| {
            lambda_http::http::Request::builder()
                .header("traceparent", value)
                .body(lambda_http::Body::Empty)
                .expect("a valid request")
        };
        let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let continued = traceparent(&with(sent)).to_string();
        assert!(
            continued.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{continued}"
        );
        assert_ne!(continued, sent);
        assert!(incoming_traceparent(&with("garbage")).is_none());
        let xray = lambda_http::http::Request::builder()
            .header(
                "x-amzn-trace-id",
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
            )
            .body(lambda_http::Body::Empty)
            .expect("a valid request");
        assert_eq!(
            traceparent(&xray).trace_id(),
            "5759e988bd862e3fe1be46a994272793",
            "X-Amzn-Trace-Id is honoured when there is no traceparent"
        );
        assert!(TraceParent::parse(&traceparent(&with("garbage")).to_string()).is_ok());
    }
}
