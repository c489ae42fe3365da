//! Mist's WebSocket listener: `ws://host:port` serves the protocol of the
//! spec at `/subscribe/websocket` (and `/`), one JSON message per text
//! frame, both ways.
//!
//! Written against [`mist_sdk`] exactly as a third-party listener would be.
//! The part that serves an upgraded connection, [`serve`], is public: the
//! HTTP plugin upgrades `GET /subscribe/websocket` on its own port and hands
//! the socket to it, so both ports speak exactly the same protocol.
//!
//! - A token comes from the `X-AUTH-TOKEN` header or the `x-auth-token`
//!   query parameter at upgrade time ([`connect_token`]); a missing or wrong
//!   one still upgrades and the client is then anonymous.
//! - A binary frame gets an error reply and the connection stays open; a
//!   text frame that is not a protocol message is answered by the broker.
//! - Ping frames are answered with pongs; a close frame is answered and ends
//!   the session after its queued output has been sent.
//!
//! ```no_run
//! // What `mist` does with it, in short:
//! let module = mist_plugin_ws::module();
//! let info = (module.describe())();
//! assert_eq!(info.listeners[0].as_str(), "ws");
//! ```

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use mist_sdk::abi::ModuleRef;
use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::{async_trait, Broker, Host, Listener, Plugin, SdkError, Session, SessionInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, StatusCode, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The header that carries a token.
pub const TOKEN_HEADER: &str = "x-auth-token";
/// The query parameter that carries a token (browsers cannot set headers
/// on a WebSocket).
pub const TOKEN_QUERY: &str = "x-auth-token";

/// Frames larger than this close the connection; the broker's own (smaller,
/// configurable) message limit answers anything between with an error.
const MAX_FRAME: usize = 16 << 20;

/// The plugin.
pub struct Ws {
    broker: Broker,
}

/// The root module, for linking the plugin into a host.
pub fn module() -> ModuleRef {
    mist_sdk::module::<Ws>()
}

#[async_trait]
impl Plugin for Ws {
    const NAME: &'static str = "ws";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const LISTENERS: &'static [&'static str] = &["ws"];

    fn init(host: Host) -> Result<Self, SdkError> {
        Ok(Ws {
            broker: host.broker().clone(),
        })
    }

    fn start_listener(&self, uri: &str) -> Result<Box<dyn Listener>, SdkError> {
        let broker = self.broker.clone();
        mist_sdk::net::serve_tcp(uri, move |stream, peer, stop| {
            upgrade(stream, peer, broker.clone(), stop)
        })
    }
}

/// The configuration every Mist WebSocket uses.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
}

/// Whether `path` is where the WebSocket protocol is served.
pub fn is_websocket_path(path: &str) -> bool {
    matches!(path, "/" | "/subscribe/websocket")
}

/// The token a client presented at connect time: the `X-AUTH-TOKEN`
/// header, else the `x-auth-token` query parameter.
pub fn connect_token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(value) = headers.get(TOKEN_HEADER) {
        return value.to_str().ok().map(str::to_owned);
    }
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key.eq_ignore_ascii_case(TOKEN_QUERY))
        .map(|(_, value)| value.into_owned())
}

async fn upgrade(stream: TcpStream, peer: SocketAddr, broker: Broker, stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let mut token = None;
    // The signature is tungstenite's `Callback`; its error type is its own.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| {
        if !is_websocket_path(request.uri().path()) {
            let mut refusal = ErrorResponse::new(Some(
                r#"{"error":"no WebSocket here: connect to /subscribe/websocket"}"#.to_owned(),
            ));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        token = connect_token(request.headers(), request.uri());
        Ok(response)
    };
    let socket = match tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        check,
        Some(config()),
    )
    .await
    {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!(%peer, "WebSocket handshake failed: {e}");
            return;
        }
    };
    let session = broker.open_session(SessionInfo::new("ws", peer).with_token(token));
    serve(socket, session, stop).await;
}

/// Serves one upgraded WebSocket as a broker session until either side
/// ends it or `stop` changes. Output queued before the end is still sent.
pub async fn serve<S>(socket: WebSocketStream<S>, session: Session, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, frames) = socket.split();
    let writing = tokio::spawn(write_output(session.clone(), sink));
    tokio::select! {
        result = read_frames(&session, frames) => {
            if let Err(e) = result {
                tracing::debug!(session = session.id(), "WebSocket read failed: {e}");
            }
        }
        _ = stop.changed() => {}
    }
    session.close();
    let _ = writing.await;
}

async fn read_frames<S>(
    session: &Session,
    mut frames: futures_util::stream::SplitStream<WebSocketStream<S>>,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(frame) = frames.next().await {
        match frame? {
            Message::Text(text) => session.feed_message(text.as_bytes()).await,
            Message::Binary(_) => session.refuse(
                "binary frames are not part of the protocol: send each JSON message as a text frame",
            ),
            Message::Close(_) => return Ok(()),
            // tungstenite answers pings itself, while frames are read.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    Ok(())
}

async fn write_output<S>(
    session: Session,
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buffer = RVec::new();
    while session.output(&mut buffer).await {
        // The session hands over whole `\n`-terminated JSON lines; each is
        // one text frame.
        for line in buffer.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let text = String::from_utf8_lossy(line).into_owned();
            if sink.feed(Message::text(text)).await.is_err() {
                session.close();
                return;
            }
        }
        if sink.flush().await.is_err() {
            session.close();
            return;
        }
        buffer.clear();
    }
    // Sends a close frame; a client that already left makes this fail, and
    // there is nobody left to tell.
    let _ = sink.close().await;
}
