//! What every handler reads from an API Gateway request besides its body: the path
//! as sent, the request id, the trace to continue.

use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};
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

/// The caller's `traceparent` header, if it holds a valid one.
pub fn incoming_traceparent(request: &Request) -> Option<TraceParent> {
    let value = request.headers().get("traceparent")?.to_str().ok()?;
    TraceParent::parse(value).ok()
}

/// The trace this request's work belongs to: the caller's, continued with a new span
/// of ours, or a new trace when the caller sent none (or a malformed one).
pub fn traceparent(request: &Request) -> TraceParent {
    incoming_traceparent(request).map_or_else(TraceParent::new_root, |tp| tp.child())
}

/// A path segment percent-decoded, as API Gateway decodes path parameters. Bytes that
/// are not UTF-8 become U+FFFD, which no identifier accepts.
pub fn decode_path_segment(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
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
        assert!(TraceParent::parse(&traceparent(&with("garbage")).to_string()).is_ok());
    }
}
