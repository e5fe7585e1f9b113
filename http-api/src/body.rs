//! JSON request bodies: `application/json` in UTF-8, at most [`MAX_BODY_BYTES`],
//! parsed strictly. Malformed JSON is a `400`; valid JSON of the wrong shape (a
//! wrong type, an unknown field) a `422` naming the field.

use lambda_http::http::{header, Method};
use lambda_http::Request;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::problem::{FieldError, Problem};

/// Bodies larger than this are refused with `413` before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `application/json` (any `+json` type too), in UTF-8; otherwise `415`. A `415`
/// to a `POST` says what it accepts in `accept-post`.
pub fn check_content_type(request: &Request) -> Result<(), Problem> {
    let refuse = |got: Option<&str>| {
        let problem = Problem::unsupported_media_type(got);
        if request.method() == Method::POST {
            problem.with_header(
                header::HeaderName::from_static("accept-post"),
                "application/json",
            )
        } else {
            problem
        }
    };
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        return Err(refuse(None));
    };
    let text = value.to_str().unwrap_or("(not ASCII)");
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    let utf8 = parts.all(|param| match param.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    });
    if json && utf8 {
        Ok(())
    } else {
        Err(refuse(Some(text)))
    }
}

/// `413` for a body over `limit` bytes.
pub fn check_body_size(bytes: &[u8], limit: usize) -> Result<(), Problem> {
    if bytes.len() > limit {
        Err(Problem::payload_too_large(limit))
    } else {
        Ok(())
    }
}

/// Parses `bytes` as one JSON object of type `T`: an empty body, a syntax error or
/// trailing data is a `400`; a value of the wrong shape a `422` naming the field
/// (`items[0].quantity`, or `(body)` for the whole body).
///
/// Declare every field of `T` as an `Option` and `#[serde(deny_unknown_fields)]`,
/// so that a missing field is reported by the caller's validation, by name.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let Some(&first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Err(Problem::malformed_json(
            "the body is empty; send a JSON object",
        ));
    };
    if first != b'{' {
        // serde reads a struct from an array too (`[10]`); a body is an object.
        return Err(not_an_object(bytes));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(json_problem)?;
    de.end()
        .map_err(|e| Problem::malformed_json(e.to_string()))?;
    Ok(value)
}

/// The whole edge of a JSON request: [`check_content_type`], [`check_body_size`]
/// with [`MAX_BODY_BYTES`], then [`parse_json`].
pub fn json_body<T: DeserializeOwned>(request: &Request) -> Result<T, Problem> {
    check_content_type(request)?;
    let bytes: &[u8] = request.body().as_ref();
    check_body_size(bytes, MAX_BODY_BYTES)?;
    parse_json(bytes)
}

/// `400` if `bytes` is not JSON at all, else `422`: valid JSON, but not an object.
fn not_an_object(bytes: &[u8]) -> Problem {
    match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        Err(e) if e.classify() != Category::Data => Problem::malformed_json(e.to_string()),
        _ => Problem::invalid_fields(vec![FieldError::new(
            "(body)",
            "the body must be a JSON object",
        )]),
    }
}

fn json_problem(error: serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let path = error.path().to_string();
    let inner = error.into_inner();
    match inner.classify() {
        Category::Data => {
            let field = if path == "." {
                "(body)".to_owned()
            } else {
                path
            };
            Problem::invalid_fields(vec![FieldError::new(field, strip_position(&inner))])
        }
        Category::Syntax | Category::Eof | Category::Io => {
            Problem::malformed_json(inner.to_string())
        }
    }
}

/// serde_json appends " at line L column C" to data errors; the field path says more.
fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // Read by the Debug output of failed assertions only.
    struct Body {
        count: Option<i64>,
    }

    fn refused(body: &str) -> Problem {
        parse_json::<Body>(body.as_bytes()).expect_err("must be refused")
    }

    fn request(content_type: Option<&str>, method: &str) -> Request {
        let mut builder = lambda_http::http::Request::builder().method(method);
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        builder
            .body(lambda_http::Body::Empty)
            .expect("a valid request")
    }

    #[test]
    fn syntax_errors_are_400_and_shape_errors_422_at_their_path() {
        for body in ["", "  ", "{", r#"{"count":1} x"#, "nope"] {
            assert_eq!(refused(body).status, 400, "{body:?}");
        }
        let p = refused(r#"{"count":"1"}"#);
        assert_eq!((p.status, p.errors[0].field.as_str()), (422, "count"));
        let p = refused(r#"{"count":1,"extra":2}"#);
        assert_eq!(p.status, 422);
        assert!(p.detail.contains("extra"), "{}", p.detail);
        for body in ["[1]", "1", r#""count""#, "null"] {
            let p = refused(body);
            assert_eq!((p.status, p.errors[0].field.as_str()), (422, "(body)"));
        }
        assert_eq!(refused("[1").status, 400);
        assert_eq!(
            parse_json::<Body>(br#" {"count": 3} "#)
                .map(|b| b.count)
                .ok(),
            Some(Some(3))
        );
    }

    #[test]
    fn json_in_utf8_is_the_only_content_type() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=UTF-8",
            "application/merge+json",
        ] {
            assert!(
                check_content_type(&request(Some(ok), "PUT")).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            Some("text/plain"),
            Some("application/json; charset=latin1"),
            Some("application/jsonx"),
            None,
        ] {
            let p = check_content_type(&request(bad, "PUT")).expect_err("refused");
            assert_eq!(p.status, 415, "{bad:?}");
        }
    }

    #[test]
    fn only_a_post_is_told_accept_post() {
        let header_of = |method: &str| {
            check_content_type(&request(Some("text/plain"), method))
                .expect_err("refused")
                .into_response()
                .headers()
                .get("accept-post")
                .map(|v| v.as_bytes().to_vec())
        };
        assert_eq!(header_of("POST"), Some(b"application/json".to_vec()));
        assert_eq!(header_of("PUT"), None);
    }

    #[test]
    fn the_size_limit_is_inclusive() {
        assert!(check_body_size(&[b' '; 10], 10).is_ok());
        assert_eq!(
            check_body_size(&[b' '; 11], 10).map_err(|p| p.status),
            Err(413)
        );
    }
}
