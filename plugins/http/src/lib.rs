//! Mist's HTTP listener: `http://host:port`, on hyper.
//!
//! | request | answer |
//! |---|---|
//! | `GET /ping` | `200 pong` |
//! | `POST /publish`, body `{"tags":[..],"data":".."}` | `204` once the broker has taken it; `4xx` with `{"error":".."}` if it refused it |
//! | `GET /subscribe?tags=a,b` | Server-Sent Events: `: subscribed` once live, then `data: <delivery JSON>` per message |
//! | `GET /subscribe/websocket` | a WebSocket upgrade, the same protocol as the ws listener |
//! | anything else | `404` (or `405`) with `{"error":".."}` |
//!
//! A token goes in the `X-AUTH-TOKEN` header (or, for the WebSocket, the
//! `x-auth-token` query parameter). Each publish and each event stream is a
//! broker session of its own, so the broker checks the token's permissions
//! and the message exactly as it does for TCP: the plugin itself knows
//! nothing of the protocol beyond building one request line.
//!
//! ```no_run
//! // What `mist` does with it, in short:
//! let module = mist_plugin_http::module();
//! let info = (module.describe())();
//! assert_eq!(info.listeners[0].as_str(), "http");
//! ```

mod events;
mod reply;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mist_sdk::abi::ModuleRef;
use mist_sdk::{async_trait, Broker, Host, Listener, Plugin, SdkError, SessionInfo};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use reply::{json_error, text, Body};

/// Publish bodies larger than this are refused with `413` before reading
/// further; the broker's own message limit applies below it.
const MAX_BODY: usize = 16 << 20;

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
    const LISTENERS: &'static [&'static str] = &["http"];

    fn init(host: Host) -> Result<Self, SdkError> {
        Ok(Http {
            broker: host.broker().clone(),
        })
    }

    fn start_listener(&self, uri: &str) -> Result<Box<dyn Listener>, SdkError> {
        let broker = self.broker.clone();
        mist_sdk::net::serve_tcp(uri, move |stream, peer, stop| {
            serve(stream, peer, broker.clone(), stop)
        })
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Broker,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let requests_stop = stop.clone();
    let service = service_fn(move |request| {
        let (broker, stop) = (broker.clone(), requests_stop.clone());
        async move { Ok::<_, Infallible>(route(request, broker, peer, stop).await) }
    });
    let connection = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(%peer, "HTTP connection failed: {e}");
            }
        }
        _ = stop.changed() => {}
    }
}

async fn route(
    request: Request<Incoming>,
    broker: Broker,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    match (&method, path.as_str()) {
        (&Method::GET, "/ping") => text(StatusCode::OK, "pong"),
        (&Method::POST, "/publish") => publish(request, &broker, peer).await,
        (&Method::GET, "/subscribe") => events::subscribe(request, broker, peer, stop).await,
        (&Method::GET, "/subscribe/websocket") => websocket(request, broker, peer, stop),
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

async fn publish(request: Request<Incoming>, broker: &Broker, peer: SocketAddr) -> Response<Body> {
    let token = header_token(&request);
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is over {MAX_BODY} bytes"),
            )
        }
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
    };
    let line = match publish_line(&body) {
        Ok(line) => line,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    let session = broker.open_session(SessionInfo::new("http", peer).with_token(token));
    let answer = reply::ask(&session, line.as_bytes()).await;
    session.close();
    match answer {
        Ok(()) => reply::empty(StatusCode::NO_CONTENT),
        Err(refusal) => refusal.response(),
    }
}

/// The request line a `POST /publish` body stands for, or why the body
/// cannot be one (the `400` answer's words). Public for the fuzz target
/// that feeds it arbitrary bodies; not part of the plugin's interface.
#[doc(hidden)]
pub fn publish_line(body: &[u8]) -> Result<String, String> {
    let mut message = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(message)) => message,
        Ok(_) => {
            return Err(r#"the body must be a JSON object: {"tags":[...],"data":"..."}"#.to_owned())
        }
        Err(e) => return Err(format!("the body is not JSON: {e}")),
    };
    // A `command` field is allowed and means nothing: this is a publish.
    message.insert("command".into(), "publish".into());
    Ok(serde_json::Value::Object(message).to_string())
}

fn websocket(
    mut request: Request<Incoming>,
    broker: Broker,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Response<Body> {
    let is_upgrade = request
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = request
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .filter(|_| is_upgrade)
    else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (Upgrade: websocket, Sec-WebSocket-Key)",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let token = mist_plugin_ws::connect_token(request.headers(), request.uri());
    let upgrading = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrading.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(mist_plugin_ws::config()),
                )
                .await;
                let session = broker.open_session(SessionInfo::new("http", peer).with_token(token));
                mist_plugin_ws::serve(socket, session, stop).await;
            }
            Err(e) => tracing::debug!(%peer, "WebSocket upgrade failed: {e}"),
        }
    });
    let mut response = reply::empty(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// A body of bytes known up front.
fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
