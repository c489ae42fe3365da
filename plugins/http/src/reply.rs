//! Responses, and asking a session for its verdict on one request.

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::Session;

/// Every response body this plugin sends: fixed bytes, or an event stream.
pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// How long the broker may take to answer one request (an authenticator
/// round trip included) before the client gets a `504`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_type(status, crate::full(body), "text/plain; charset=utf-8")
}

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(crate::full(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// `{"error": message}` with `status`.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    with_type(status, crate::full(body), "application/json")
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

/// Why the broker did not take a request.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    error: String,
}

impl Refusal {
    fn new(error: String) -> Refusal {
        // The broker answers in words; these are the ones that are about
        // who is asking rather than what was asked.
        let status = if error.starts_with("not authenticated") {
            StatusCode::UNAUTHORIZED
        } else if error.starts_with("permission denied") {
            StatusCode::FORBIDDEN
        } else if error.starts_with("message too large") {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        Refusal { status, error }
    }

    pub(crate) fn response(&self) -> Response<Body> {
        json_error(self.status, &self.error)
    }
}

/// Feeds `request` to `session`, then a `ping`, and waits for the `pong`:
/// the broker answers in order, so an error reply before it is the
/// request's refusal, and none means the request took effect.
pub(crate) async fn ask(session: &Session, request: &[u8]) -> Result<(), Refusal> {
    session.feed_message(request).await;
    session.feed_message(br#"{"command":"ping"}"#).await;
    let answer = async {
        let mut output = RVec::new();
        loop {
            let open = session.output(&mut output).await;
            for line in output.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(reply) = serde_json::from_slice::<serde_json::Value>(line) else {
                    continue;
                };
                if let Some(error) = reply.get("error").and_then(|e| e.as_str()) {
                    return Err(Refusal::new(error.to_owned()));
                }
                if reply.get("command").and_then(|c| c.as_str()) == Some("ping") {
                    return Ok(());
                }
            }
            output.clear();
            if !open {
                return Err(Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    error: "the broker closed the session".into(),
                });
            }
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .unwrap_or_else(|_| {
            Err(Refusal {
                status: StatusCode::GATEWAY_TIMEOUT,
                error: "the broker did not answer in time".into(),
            })
        })
}
