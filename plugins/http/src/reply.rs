//! Responses: fixed bodies, JSON errors, and a broker's typed refusal as
//! its HTTP status.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use mist_sdk::SdkError;

/// Every response body this plugin sends: fixed bytes, or an event stream.
pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// A body of bytes known up front.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_type(status, full(body), "text/plain; charset=utf-8")
}

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// `{"error": message}` with `status`.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    with_type(status, full(body), "application/json")
}

/// The broker's refusal: its kind decides the status (`401`, `403`, `413`,
/// `503` for a store that cannot be reached, ...), its message the body.
pub(crate) fn refusal(error: &SdkError) -> Response<Body> {
    let status =
        StatusCode::from_u16(error.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_error(status, error.message.as_str())
}

pub(crate) fn with_type(
    status: StatusCode,
    body: Body,
    content_type: &'static str,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
