//! `GET /subscribe?tags=a,b`: deliveries as Server-Sent Events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::{Request, Response, StatusCode};
use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::net::stopping;
use mist_sdk::{Broker, Session, SessionInfo};
use tokio::sync::{mpsc, watch, Notify};

use crate::reply::{self, json_error, Body};

/// A comment line this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Chunks waiting for a slow client; beyond them the broker's own bounded
/// queue holds (and, when full, drops) that client's deliveries.
const IN_FLIGHT: usize = 8;
/// How every delivery the broker writes begins.
const DELIVERY: &[u8] = br#"{"command":"publish""#;

pub(crate) async fn subscribe(
    request: Request<Incoming>,
    broker: Broker,
    scheme: &'static str,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    abort: Arc<Notify>,
) -> Response<Body> {
    let tags: Vec<String> = request
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .filter(|(key, _)| key == "tags")
                .flat_map(|(_, value)| value.split(',').map(str::to_owned).collect::<Vec<_>>())
                .filter(|tag| !tag.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if tags.is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "missing tags: subscribe with /subscribe?tags=a,b",
        );
    }
    let token = crate::header_token(&request);
    let session = broker.open_session(SessionInfo::new(scheme, peer).with_token(token));
    let line = serde_json::json!({"command": "subscribe", "tags": tags}).to_string();
    let timeout = Duration::from_millis(broker.limits().request_timeout_ms);
    match tokio::time::timeout(timeout, session.execute(line.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(refused)) => {
            session.close();
            return reply::refusal(&refused);
        }
        Err(_) => {
            session.close();
            return json_error(
                StatusCode::GATEWAY_TIMEOUT,
                "the broker did not take the subscription in time",
            );
        }
    }

    let (events, receiver) = mpsc::channel(IN_FLIGHT);
    // Room for one is certain: the channel is new.
    let _ = events.try_send(Bytes::from_static(b": subscribed\n\n"));
    tokio::spawn(forward(session, events, stop, abort));
    let body = StreamBody::new(futures_util::stream::unfold(
        receiver,
        |mut receiver| async {
            let chunk = receiver.recv().await?;
            Some((Ok(Frame::data(chunk)), receiver))
        },
    ));
    let mut response = reply::with_type(StatusCode::OK, body.boxed_unsync(), "text/event-stream");
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Moves the session's deliveries into the response body until the client
/// goes away (the body, and with it the receiver, is dropped), the session
/// ends, its subscription is revoked, or the listener stops (after writing
/// what is queued).
async fn forward(
    session: Session,
    events: mpsc::Sender<Bytes>,
    mut stop: watch::Receiver<bool>,
    abort: Arc<Notify>,
) {
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await; // the first tick is immediate
    let mut output = RVec::new();
    loop {
        let (chunk, last) = tokio::select! {
            open = session.output(&mut output) => {
                let (chunk, revoked) = event_lines(&output);
                output.clear();
                (chunk, revoked || !open)
            }
            _ = keep_alive.tick() => (Bytes::from_static(b": keep-alive\n\n"), false),
            _ = events.closed() => break,
            // The broker ended the session (a slow consumer): the whole
            // connection goes, even if a write to the client is stuck.
            () = session.closed() => {
                abort.notify_one();
                break;
            }
            _ = stopping(&mut stop) => {
                session.try_output(&mut output);
                (event_lines(&output).0, true)
            }
        };
        if (!chunk.is_empty() && events.send(chunk).await.is_err()) || last {
            break;
        }
    }
    session.close();
}

/// `data: <line>\n\n` for each delivery the session handed over; a
/// revocation notice becomes an `event: revoked` and ends the batch (and
/// the stream: it was the stream's only subscription). Other lines are not
/// for an event stream and are left out.
fn event_lines(output: &[u8]) -> (Bytes, bool) {
    let mut chunk = Vec::with_capacity(output.len() + output.len() / 8 + 16);
    for line in mist_sdk::output_lines(output) {
        if line.starts_with(DELIVERY) {
            chunk.extend_from_slice(b"data: ");
            chunk.extend_from_slice(line);
            chunk.extend_from_slice(b"\n\n");
        } else if is_revocation(line) {
            chunk.extend_from_slice(b"event: revoked\ndata: ");
            chunk.extend_from_slice(line);
            chunk.extend_from_slice(b"\n\n");
            return (Bytes::from(chunk), true);
        }
    }
    (Bytes::from(chunk), false)
}

fn is_revocation(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Command<'a> {
        #[serde(borrow)]
        command: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Command<'_>>(line)
        .is_ok_and(|c| c.command.as_deref() == Some("revoked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_delivery_is_one_event() {
        let (chunk, revoked) = event_lines(
            b"{\"command\":\"publish\",\"tags\":[\"a\"],\"data\":\"1\"}\n{\"command\":\"publish\",\"tags\":[\"b\"]}\n",
        );
        assert_eq!(
            &chunk[..],
            b"data: {\"command\":\"publish\",\"tags\":[\"a\"],\"data\":\"1\"}\n\ndata: {\"command\":\"publish\",\"tags\":[\"b\"]}\n\n"
        );
        assert!(!revoked);
        assert!(event_lines(b"").0.is_empty());
    }

    #[test]
    fn a_revocation_ends_the_stream_after_what_came_before() {
        let (chunk, revoked) = event_lines(
            b"{\"command\":\"publish\",\"tags\":[\"a\"]}\n{\"command\":\"revoked\",\"tags\":[\"a\"],\"error\":\"tag a was taken away\"}\n{\"command\":\"publish\",\"tags\":[\"a\"]}\n",
        );
        assert!(revoked);
        assert_eq!(
            &chunk[..],
            &b"data: {\"command\":\"publish\",\"tags\":[\"a\"]}\n\nevent: revoked\ndata: {\"command\":\"revoked\",\"tags\":[\"a\"],\"error\":\"tag a was taken away\"}\n\n"[..]
        );
        // Other replies are not events.
        let (chunk, revoked) = event_lines(b"{\"command\":\"\",\"error\":\"x\"}\n");
        assert!(chunk.is_empty() && !revoked);
    }
}
