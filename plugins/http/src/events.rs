//! `GET /subscribe?tags=a,b`: deliveries as Server-Sent Events.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::{Request, Response, StatusCode};
use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::{Broker, Session, SessionInfo};
use tokio::sync::{mpsc, watch};

use crate::reply::{self, json_error, Body};

/// A comment line this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Chunks waiting for a slow client; beyond them the broker's own bounded
/// queue holds (and, when full, drops) that client's deliveries.
const IN_FLIGHT: usize = 8;

pub(crate) async fn subscribe(
    request: Request<Incoming>,
    broker: Broker,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
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
    let session = broker.open_session(SessionInfo::new("http", peer).with_token(token));
    let line = serde_json::json!({"command": "subscribe", "tags": tags}).to_string();
    if let Err(refusal) = reply::ask(&session, line.as_bytes()).await {
        session.close();
        return refusal.response();
    }

    let (events, receiver) = mpsc::channel(IN_FLIGHT);
    // Room for one is certain: the channel is new.
    let _ = events.try_send(Bytes::from_static(b": subscribed\n\n"));
    tokio::spawn(forward(session, events, stop));
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
/// goes away (the body, and with it the receiver, is dropped).
async fn forward(session: Session, events: mpsc::Sender<Bytes>, mut stop: watch::Receiver<bool>) {
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await; // the first tick is immediate
    let mut output = RVec::new();
    loop {
        let chunk = tokio::select! {
            open = session.output(&mut output) => {
                let chunk = event_lines(&output);
                // The stream's one subscription was revoked: the client
                // gets the notice as an event, then the stream ends.
                let revoked = is_revocation(&output);
                output.clear();
                if !open || revoked {
                    let _ = events.send(chunk).await;
                    break;
                }
                chunk
            }
            _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
            _ = events.closed() => break,
            _ = stop.changed() => break,
        };
        if events.send(chunk).await.is_err() {
            break;
        }
    }
    session.close();
}

/// Whether the broker revoked a subscription: a `revoked` notice, which
/// the broker writes with `command` first.
fn is_revocation(output: &[u8]) -> bool {
    output
        .split(|&b| b == b'\n')
        .any(|line| line.starts_with(br#"{"command":"revoked""#))
}

/// `data: <line>\n\n` for each JSON line the session handed over.
fn event_lines(output: &[u8]) -> Bytes {
    let mut chunk = Vec::with_capacity(output.len() + output.len() / 8 + 16);
    for line in output.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        chunk.extend_from_slice(b"data: ");
        chunk.extend_from_slice(line);
        chunk.extend_from_slice(b"\n\n");
    }
    Bytes::from(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_is_one_event() {
        let chunk = event_lines(b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(&chunk[..], b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n");
        assert!(event_lines(b"").is_empty());
    }
}
