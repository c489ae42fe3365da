//! Mist's HTTP listener: `http://host:port`, on hyper, and `https://host:port`
//! the same over TLS (certificate parameters in [`mist_sdk::tls`]).
//!
//! | request | answer |
//! |---|---|
//! | `GET /ping` | `200 pong` |
//! | `POST /publish`, body `{"tags":[..],"data":".."}` | `204` once the broker has taken it; `4xx`/`5xx` with `{"error":".."}` if it refused it |
//! | `GET /subscribe?tags=a,b` | Server-Sent Events: `: subscribed` once live, then `data: <delivery JSON>` per message |
//! | `GET /subscribe/websocket` | a WebSocket upgrade, the same protocol as the ws listener |
//! | `GET /metrics`, `/healthz`, `/readyz`, `/dashboard` | for operators: see the `ops` module |
//! | anything else | `404` (or `405`) with `{"error":".."}` |
//!
//! A token goes in the `X-AUTH-TOKEN` header (or, for the WebSocket, the
//! `x-auth-token` query parameter). Each publish and each event stream is a
//! broker session of its own, so the broker checks the token's permissions
//! and the message exactly as it does for TCP: the plugin itself knows
//! nothing of the protocol beyond building one request line. A refusal
//! comes back typed ([`mist_sdk::Session::execute`]) and its kind is the
//! status: `401`, `403`, `413`, `503` when the token store cannot be
//! reached, `504` when the exchange (body, token check and all) takes
//! longer than the broker's request timeout.
//!
//! A request header must arrive within the broker's header timeout, and a
//! body may be as large as its message limit. When the broker is full, a
//! new connection gets `503` before any request is read.
//!
//! A connection whose first request is `GET /subscribe` is served without
//! hyper, so that an idle event stream costs little more than a TCP
//! connection (`head` reads the first request head; `events` writes the
//! stream); every other request is hyper's.
//!
//! ```no_run
//! // What `mist` does with it, in short:
//! let module = mist_plugin_http::module();
//! let info = (module.describe())();
//! assert_eq!(info.listeners[0].as_str(), "http");
//! ```

mod events;
mod head;
mod ops;
mod reply;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use mist_plugin_ws::Upgrades;
use mist_sdk::abi::ModuleRef;
use mist_sdk::net::{stopping, Refusal, Serve, Stream};
use mist_sdk::{async_trait, Broker, Host, Listener, Plugin, SdkError, Session, SessionInfo};
use serde_json::value::RawValue;
use tokio::sync::{watch, Notify};

use head::{Head, Replay};
use reply::{json_error, text, Body};

/// The plugin.
pub struct Http {
    broker: Broker,
}

/// The root module, for linking the plugin into a host.
pub fn module() -> ModuleRef {
    mist_sdk::module::<Http>()
}

#[async_trait]
impl Plugin for Http {
    const NAME: &'static str = "http";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const LISTENERS: &'static [&'static str] = &["http", "https"];

    fn init(host: Host) -> Result<Self, SdkError> {
        Ok(Http {
            broker: host.broker().clone(),
        })
    }

    fn start_listener(&self, uri: &str) -> Result<Box<dyn Listener>, SdkError> {
        let broker = self.broker.clone();
        if ops::ops_only(uri) {
            return ops::start(uri, broker);
        }
        let tls = uri.starts_with("https://");
        let scheme = if tls { "https" } else { "http" };
        let mut listener = Serve::new(uri, &self.broker).refusal(Refusal::Http);
        if tls {
            listener = listener.tls(&["http/1.1"]);
        }
        listener.start(move |stream, peer, stop| serve(stream, peer, broker.clone(), scheme, stop))
    }
}

/// What a request handler knows about its connection.
#[derive(Clone)]
struct Connection {
    broker: Broker,
    scheme: &'static str,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    upgrades: Upgrades,
    /// Notified when the connection must close at once: the broker ended
    /// an event stream's session while a write to its client was stuck.
    abort: Arc<Notify>,
}

/// Serves one connection: its first request head is read here, within the
/// header timeout; an event stream is served without hyper, anything else
/// by hyper ([`head`] says why).
async fn serve(
    mut stream: Stream,
    peer: SocketAddr,
    broker: Broker,
    scheme: &'static str,
    mut stop: watch::Receiver<bool>,
) {
    let header_timeout = Duration::from_millis(broker.limits().header_timeout_ms);
    let head = tokio::select! {
        head = tokio::time::timeout(header_timeout, head::read(&mut stream)) => head,
        _ = stopping(&mut stop) => return,
    };
    match head {
        Ok(Ok(Head::Subscribe(request))) => {
            events::stream(stream, request, broker, scheme, peer, stop).await;
        }
        // Boxed: an event stream's task need not have room for hyper.
        Ok(Ok(Head::Other(read))) => {
            let stream = Replay::new(read, stream);
            Box::pin(serve_http(
                stream,
                peer,
                broker,
                scheme,
                header_timeout,
                stop,
            ))
            .await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, "reading a request failed: {e}"),
        Err(_) => {
            tracing::debug!(%peer, "no request head within {header_timeout:?}: closed");
        }
    }
}

/// A connection served by hyper, the bytes the listener read from it
/// first replayed in front.
async fn serve_http(
    stream: Replay<Stream>,
    peer: SocketAddr,
    broker: Broker,
    scheme: &'static str,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let upgrades = Upgrades::default();
    let abort = Arc::new(Notify::new());
    let connection = Connection {
        broker,
        scheme,
        peer,
        stop: stop.clone(),
        upgrades: upgrades.clone(),
        abort: abort.clone(),
    };
    let service = service_fn(move |request| {
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(route(request, connection).await) }
    });
    let http = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut http = std::pin::pin!(http);
    // On stop, answers in progress (event streams, which end once they
    // have written what is queued) finish; idle connections close.
    let result = tokio::select! {
        result = http.as_mut() => result,
        () = abort.notified() => return,
        _ = stopping(&mut stop) => {
            http.as_mut().graceful_shutdown();
            tokio::select! {
                result = http => result,
                () = abort.notified() => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "HTTP connection failed: {e}");
    }
    upgrades.serve().await;
}

async fn route(mut request: Request<Incoming>, connection: Connection) -> Response<Body> {
    if let Some(response) = ops::route(&request, &connection.broker, true).await {
        return response;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let Connection {
        broker,
        scheme,
        peer,
        stop,
        upgrades,
        abort,
    } = connection;
    match (&method, path.as_str()) {
        (&Method::GET, "/ping") => text(StatusCode::OK, "pong"),
        (&Method::POST, "/publish") => publish(request, &broker, scheme, peer).await,
        (&Method::GET, "/subscribe") => {
            events::subscribe(request, broker, scheme, peer, stop, abort).await
        }
        (&Method::GET, "/subscribe/websocket") => {
            mist_plugin_ws::accept(&mut request, &broker, scheme, peer, &stop, &upgrades)
                .map(|body| body.map_err(|never| match never {}).boxed_unsync())
        }
        (_, "/ping" | "/publish" | "/subscribe" | "/subscribe/websocket") => json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not allowed on {path}"),
        ),
        _ => json_error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint: {method} {path}"),
        ),
    }
}

/// The `X-AUTH-TOKEN` header.
fn header_token(request: &Request<Incoming>) -> Option<String> {
    request
        .headers()
        .get(mist_plugin_ws::TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `POST /publish`, the whole exchange bounded by the request timeout.
async fn publish(
    request: Request<Incoming>,
    broker: &Broker,
    scheme: &'static str,
    peer: SocketAddr,
) -> Response<Body> {
    let timeout = Duration::from_millis(broker.limits().request_timeout_ms);
    tokio::time::timeout(timeout, publish_within(request, broker, scheme, peer))
        .await
        .unwrap_or_else(|_| {
            json_error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("the publish did not complete within {timeout:?}"),
            )
        })
}

async fn publish_within(
    request: Request<Incoming>,
    broker: &Broker,
    scheme: &'static str,
    peer: SocketAddr,
) -> Response<Body> {
    let token = header_token(&request);
    let limit = usize::try_from(broker.limits().max_message_bytes).unwrap_or(usize::MAX);
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("message too large: the body is over the limit of {limit} bytes"),
        )
    };
    // A body announced over the limit is refused before any of it is read.
    let announced = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return too_large();
    }
    // Opened before the body is read: what the body holds counts against
    // the broker's memory budget (`Session::hold`) while it arrives.
    let session = broker.open_session(SessionInfo::new(scheme, peer).with_token(token));
    let answer = publish_body(request.into_body(), limit, &session).await;
    session.hold(0);
    session.close();
    answer
}

/// Reads a publish body and carries it out on `session`.
async fn publish_body(body: Incoming, limit: usize, session: &Session) -> Response<Body> {
    let body = match read_body(body, limit, session).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let line = match publish_line(&body) {
        Ok(line) => line,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, &why),
    };
    drop(body);
    if !session.hold(line.len()) {
        return no_room();
    }
    match session.execute(line.as_bytes()).await {
        Ok(()) => reply::empty(StatusCode::NO_CONTENT),
        Err(refused) => reply::refusal(&refused),
    }
}

/// A body past this size is charged to the broker's memory budget.
const HOLD_FREE: usize = 16 * 1024;

/// The body, at most `limit` bytes, charged to `session` as it grows.
async fn read_body(
    mut body: Incoming,
    limit: usize,
    session: &Session,
) -> Result<Vec<u8>, Response<Body>> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| json_error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let size = bytes.len() + data.len();
        if size > limit {
            return Err(json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("message too large: the body is over the limit of {limit} bytes"),
            ));
        }
        if size > HOLD_FREE && !session.hold(size) {
            return Err(no_room());
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes)
}

/// `503`: the broker's memory budget has no room for this request now.
fn no_room() -> Response<Body> {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the broker has no memory left for a body this large: try again later",
    )
}

/// The request line for a publish body: its fields as they are, with
/// `"command":"publish"` first (a `command` field of its own is allowed and
/// means nothing, SPEC §4). Values are copied raw, never re-encoded: a
/// large body costs one scan. Public for the fuzz target that feeds it
/// arbitrary bodies (`mist::fuzzing`); not part of the plugin's interface.
#[doc(hidden)]
pub fn publish_line(body: &[u8]) -> Result<String, String> {
    let fields: BTreeMap<String, &RawValue> = match serde_json::from_slice(body) {
        Ok(fields) => fields,
        Err(e) if e.is_data() => {
            return Err(r#"the body must be a JSON object: {"tags":[...],"data":"..."}"#.into())
        }
        Err(e) => return Err(format!("the body is not JSON: {e}")),
    };
    let mut line = String::with_capacity(body.len() + 24);
    line.push_str(r#"{"command":"publish""#);
    for (name, value) in fields.iter().filter(|(name, _)| *name != "command") {
        line.push(',');
        line.push_str(&serde_json::Value::String(name.clone()).to_string());
        line.push(':');
        line.push_str(value.get());
    }
    line.push('}');
    Ok(line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_publish_body_becomes_one_publish_line() {
        let line = publish_line(
            br#" {"data":"x\n\"y","command":"subscribe","tags":["a","b"],"odd \"key":1}"#,
        )
        .unwrap();
        assert_eq!(
            line,
            r#"{"command":"publish","data":"x\n\"y","odd \"key":1,"tags":["a","b"]}"#
        );
        assert!(publish_line(b"[1]").unwrap_err().contains("JSON object"));
        assert!(publish_line(b"{\"tags\":")
            .unwrap_err()
            .contains("not JSON"));
        assert!(publish_line(b"nope").unwrap_err().contains("not JSON"));
    }
}
