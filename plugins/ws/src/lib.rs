//! Mist's WebSocket listener: `ws://host:port` serves the protocol of the
//! spec at `/subscribe/websocket` (and `/`), one JSON message per text
//! frame, both ways; `wss://host:port` the same over TLS (certificate
//! parameters in [`mist_sdk::tls`]).
//!
//! Written against [`mist_sdk`] exactly as a third-party listener would be.
//! The parts that upgrade a request ([`accept`]) and serve the WebSocket
//! ([`serve`]) are public: the HTTP plugin upgrades `GET
//! /subscribe/websocket` on its own port with them, so both ports speak
//! exactly the same protocol.
//!
//! - The handshake is an HTTP/1.1 request read by hyper, within the
//!   broker's handshake timeout; a client that never finishes it is closed.
//! - A token comes from the `X-AUTH-TOKEN` header or the `x-auth-token`
//!   query parameter at upgrade time ([`connect_token`]); a missing or wrong
//!   one still upgrades and the client is then anonymous.
//! - A message over the broker's message limit gets an error reply and is
//!   skipped without being buffered; the connection stays. So does a binary
//!   message; a text message that is not a protocol message is answered by
//!   the broker.
//! - Ping frames are answered with pongs; a close frame is answered and ends
//!   the session after its queued output has been sent. A client breaking
//!   the framing rules is closed with status 1002.
//! - When the broker is full, the client gets `503` and a JSON error.
//! - A client that offers the subprotocol [`LINES_PROTOCOL`]
//!   (`Sec-WebSocket-Protocol: mist.lines`) gets it ([`Framing::Lines`]):
//!   its text frames then carry the TCP listener's lines, several to a
//!   frame, both ways. Without it, one message per frame, as the spec says.
//!
//! ```no_run
//! // What `mist` does with it, in short:
//! let module = mist_plugin_ws::module();
//! let info = (module.describe())();
//! assert_eq!(info.listeners[0].as_str(), "ws");
//! ```

mod frames;
mod lazy;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use mist_sdk::abi::ModuleRef;
use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::net::{drive_connection, stopping, Refusal, Serve, Stream};
use mist_sdk::{async_trait, Broker, Host, Listener, Plugin, SdkError, Session, SessionInfo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use frames::{FrameReader, Incoming as Frame, WireError};
use lazy::LazyBufReader;

/// The header that carries a token.
pub const TOKEN_HEADER: &str = "x-auth-token";
/// The query parameter that carries a token (browsers cannot set headers
/// on a WebSocket).
pub const TOKEN_QUERY: &str = "x-auth-token";

/// The subprotocol a client offers to send and receive several lines per
/// frame ([`Framing::Lines`]).
pub const LINES_PROTOCOL: &str = "mist.lines";

/// How messages sit in text frames on one WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON message per text frame, both ways: the spec's WebSocket,
    /// what every client gets unless it asks for [`Framing::Lines`].
    Message,
    /// The subprotocol [`LINES_PROTOCOL`]: each text frame holds one or
    /// more whole lines of the TCP protocol, each ended by `\n` (a
    /// client's last one may omit it), both ways. A subscriber's
    /// deliveries then arrive many to a frame: one frame, one `onmessage`
    /// in a browser, per batch rather than per message.
    Lines,
}

/// Bytes of lines the broker puts in one frame at most under
/// [`Framing::Lines`] (a single longer line still goes whole).
const LINES_FRAME: usize = 64 * 1024;

/// Pongs waiting to be written; a client sending pings faster than it
/// reads loses the extra pongs, nothing else.
const CONTROL_QUEUE: usize = 8;
/// Bytes read from a client at a time.
const READ_BUFFER: usize = 16 * 1024;
/// Text messages fed to the broker in one batch, at most about this many
/// bytes of them: one batch is one feed, and a subscriber is written to
/// once per batch. Not charged to the memory budget: a connection's fixed
/// cost while it reads, given back once fed.
const BATCH_LINES: usize = 64 * 1024;

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
    const LISTENERS: &'static [&'static str] = &["ws", "wss"];

    fn init(host: Host) -> Result<Self, SdkError> {
        Ok(Ws {
            broker: host.broker().clone(),
        })
    }

    fn start_listener(&self, uri: &str) -> Result<Box<dyn Listener>, SdkError> {
        let broker = self.broker.clone();
        let tls = uri.starts_with("wss://");
        let scheme = if tls { "wss" } else { "ws" };
        let mut listener = Serve::new(uri, &self.broker).refusal(Refusal::Http);
        if tls {
            listener = listener.tls(&["http/1.1"]);
        }
        listener
            .start(move |stream, peer, stop| connection(stream, peer, broker.clone(), scheme, stop))
    }
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

/// Serves one connection of the ws listener: its handshake request, read
/// within the handshake timeout, then the WebSocket.
///
/// A plain function returning the future: an `async fn` would keep its
/// arguments in the connection's state for as long as the WebSocket is
/// open, though the handshake consumed them.
fn connection(
    stream: Stream,
    peer: SocketAddr,
    broker: Broker,
    scheme: &'static str,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    let upgrades = Upgrades::default();
    // The HTTP part in a future of its own, boxed: once the handshake is
    // done, the connection's task keeps only the WebSocket's state.
    let handshake = Box::pin(handshake(
        stream,
        peer,
        broker,
        scheme,
        stop,
        upgrades.clone(),
    ));
    async move {
        handshake.await;
        upgrades.serve().await;
    }
}

/// The HTTP part of a ws connection: the handshake request, answered with
/// an upgrade queued on `upgrades`, or an error.
async fn handshake(
    stream: Stream,
    peer: SocketAddr,
    broker: Broker,
    scheme: &'static str,
    mut stop: watch::Receiver<bool>,
    upgrades: Upgrades,
) {
    let handshake = Duration::from_millis(broker.limits().handshake_timeout_ms);
    let service = {
        let (upgrades, stop) = (upgrades.clone(), stop.clone());
        service_fn(move |mut request: Request<Incoming>| {
            let response = if is_websocket_path(request.uri().path()) {
                accept(&mut request, &broker, scheme, peer, &stop, &upgrades)
            } else {
                json_error(
                    StatusCode::NOT_FOUND,
                    "no WebSocket here: connect to /subscribe/websocket",
                )
            };
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopping(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "WebSocket handshake failed: {e}");
    }
}

/// The WebSockets a connection's requests were upgraded to. They are served
/// in the connection's own task once its HTTP part has ended, so that the
/// connection keeps its place in the broker's connection limit for as long
/// as the WebSocket is open.
#[derive(Clone, Default)]
pub struct Upgrades(Arc<Mutex<Option<Upgrade>>>);

/// The upgraded connection, waiting to be served (at most one: after a
/// `101` the connection is no longer HTTP): what its session needs,
/// not a boxed future. The connection's task then holds the WebSocket's
/// state inline (a box would be a second allocation per connection, and
/// the future in it stored what this holds again).
struct Upgrade {
    upgrading: OnUpgrade,
    broker: Broker,
    info: SessionInfo,
    stop: watch::Receiver<bool>,
    framing: Framing,
}

impl Upgrades {
    /// Serves the upgraded WebSocket, if there is one, until it ends.
    /// Await it after the HTTP connection's future has completed.
    pub async fn serve(self) {
        // In a block of its own, awaited before the WebSocket's future
        // starts: what opening needs can share its place in this future's
        // state with what serving needs.
        let serving = {
            let upgrade = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
            // The last handle (hyper's service, which held the other, is
            // gone): an open WebSocket keeps no empty slot.
            drop(self);
            match upgrade {
                Some(upgrade) => upgrade.open().await,
                None => None,
            }
        }
        .map(|(io, session, limit, stop, framing)| serve(io, session, limit, stop, framing));
        // Pinned where it is and awaited through a reference: taken out of
        // the `Option`, the future would be stored twice (104 B more).
        let mut serving = pin!(serving);
        if let Some(serving) = serving.as_mut().as_pin_mut() {
            serving.await;
        }
    }
}

impl Upgrade {
    /// Waits for hyper to hand over the upgraded connection, and opens its
    /// session.
    async fn open(
        self,
    ) -> Option<(
        TokioIo<Upgraded>,
        Session,
        usize,
        watch::Receiver<bool>,
        Framing,
    )> {
        match self.upgrading.await {
            Ok(upgraded) => {
                let limits = self.broker.limits();
                let limit = usize::try_from(limits.max_message_bytes).unwrap_or(usize::MAX);
                let session = self.broker.open_session(self.info);
                // Lines may be cut between drains: sent as fragments.
                session.write_in_pieces();
                Some((
                    TokioIo::new(upgraded),
                    session,
                    limit,
                    self.stop,
                    self.framing,
                ))
            }
            Err(e) => {
                tracing::debug!(peer = %self.info.peer, "WebSocket upgrade failed: {e}");
                None
            }
        }
    }
}

/// Answers a WebSocket handshake request: `101 Switching Protocols`, with
/// the WebSocket then served by [`Upgrades::serve`] as a session of
/// listener `scheme`; or a JSON error (`400`, `405`) if the request is not
/// a valid handshake.
pub fn accept(
    request: &mut Request<Incoming>,
    broker: &Broker,
    scheme: &'static str,
    peer: SocketAddr,
    stop: &watch::Receiver<bool>,
    upgrades: &Upgrades,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket handshake is a GET request",
        );
    }
    let headers = request.headers();
    let is_upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version_13 = headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = headers
        .get(SEC_WEBSOCKET_KEY)
        .filter(|_| is_upgrade && version_13)
    else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (Upgrade: websocket, Sec-WebSocket-Version: 13, Sec-WebSocket-Key)",
        );
    };
    let accept_key = derive_accept_key(key.as_bytes());
    let framing = framing_offered(headers);
    let token = connect_token(request.headers(), request.uri());
    *upgrades.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Upgrade {
        upgrading: hyper::upgrade::on(request),
        broker: broker.clone(),
        info: SessionInfo::new(scheme, peer).with_token(token),
        stop: stop.clone(),
        framing,
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept_key) = HeaderValue::from_str(&accept_key) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept_key);
    }
    if framing == Framing::Lines {
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(LINES_PROTOCOL),
        );
    }
    response
}

/// [`Framing::Lines`] if the client's `Sec-WebSocket-Protocol` headers
/// offer [`LINES_PROTOCOL`] (among others or alone); otherwise
/// [`Framing::Message`], and the response names no subprotocol (RFC 6455
/// §4.2.2: a client that required one of its others then gives up).
fn framing_offered(headers: &HeaderMap) -> Framing {
    let offered = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|name| name.trim() == LINES_PROTOCOL);
    if offered {
        Framing::Lines
    } else {
        Framing::Message
    }
}

/// `{"error": message}` with `status`.
fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Serves one upgraded WebSocket (`io`, after the handshake) as a broker
/// session until either side ends it or `stop` turns true. Messages over
/// `limit` bytes get an error reply. Output queued before the end is still
/// sent; on `stop`, what is queued is written before the session closes.
///
/// A plain function returning the future, the stream split before it
/// starts: an `async fn` would keep `io` in its state for as long as the
/// WebSocket is open.
pub fn serve<S>(
    io: S,
    session: Session,
    limit: usize,
    stop: watch::Receiver<bool>,
    framing: Framing,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    let shared = Shared {
        pongs: Pongs::default(),
        close: AtomicU16::new(frames::NORMAL),
        framing,
    };
    serve_split(read, write, session, limit, stop, shared)
}

/// A plain function returning an `async move` block: an `async fn` would
/// keep each argument twice in its state, as it came and as a local.
#[allow(clippy::manual_async_fn)] // the arguments once, not twice
fn serve_split<S>(
    read: ReadHalf<S>,
    write: WriteHalf<S>,
    session: Session,
    limit: usize,
    stop: watch::Receiver<bool>,
    shared: Shared,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    async move {
        // The writer runs in the connection's own task: an idle WebSocket is
        // one task, not two.
        // Pinned here and lent to `drive_connection`: passed by value, each
        // future would be stored again in this one's state (a kilobyte more per
        // idle connection).
        let writing = pin!(write_output(&session, write, &shared, stop.clone()));
        let reading = pin!(async {
            if let Err(e) = read_frames(&session, read, limit, &shared).await {
                match e {
                    WireError::Protocol(_) => shared
                        .close
                        .store(frames::PROTOCOL_ERROR, Ordering::Relaxed),
                    WireError::NoRoom(_) => shared
                        .close
                        .store(frames::TRY_AGAIN_LATER, Ordering::Relaxed),
                    WireError::Io(_) => {}
                }
                tracing::debug!(session = session.id(), "WebSocket read failed: {e}");
            }
        });
        drive_connection(&session, reading, writing, stop).await;
    }
}

/// What the reading and the writing half of one WebSocket share.
struct Shared {
    /// Pongs the reader owes, for the writer to send.
    pongs: Pongs,
    /// The status the closing frame carries.
    close: AtomicU16,
    framing: Framing,
}

/// Pongs waiting to be written (at most `CONTROL_QUEUE`). A plain queue
/// and a `Notify` rather than a channel: a channel allocates a block of
/// slots up front, a kilobyte per idle connection.
#[derive(Default)]
struct Pongs {
    queue: Mutex<Vec<Vec<u8>>>,
    ready: Notify,
}

impl Pongs {
    fn push(&self, payload: Vec<u8>) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() < CONTROL_QUEUE {
            queue.push(payload);
            drop(queue);
            self.ready.notify_one();
        }
    }

    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Like `serve_split`, a function returning an `async move` block: it
/// keeps its arguments once.
#[allow(clippy::manual_async_fn)] // the arguments once, not twice
fn read_frames<'a, R>(
    session: &'a Session,
    read: R,
    limit: usize,
    shared: &'a Shared,
) -> impl Future<Output = Result<(), WireError>> + 'a
where
    R: AsyncRead + Unpin + 'a,
{
    async move {
        let framing = shared.framing;
        // No read buffer while the client is silent: it is allocated when bytes
        // arrive and released once they are read.
        let mut frames = FrameReader::new(LazyBufReader::with_capacity(READ_BUFFER, read), limit);
        // Text messages already read, as lines: fed to the broker together once
        // the next message is not already here. One feed is one batch, and a
        // subscriber is queued to and woken once per batch: fed one message at
        // a time, a flooding publisher's every message cost each subscriber a
        // queue push and a wake (the broker's fan-out was a fifth of its time).
        let mut lines = Vec::new();
        loop {
            // Most messages: a whole small text frame already read goes
            // straight into the batch, unmasked on the way. One message per
            // frame: only if it is a line of its own (not empty, no newline).
            let taken = match framing {
                Framing::Message => frames.take_buffered_text(&mut lines, |text| {
                    !text.is_empty() && memchr::memchr(b'\n', text).is_none()
                }),
                Framing::Lines => frames.take_buffered_text(&mut lines, |_| true),
            };
            if taken {
                if lines.last() != Some(&b'\n') {
                    lines.push(b'\n');
                }
                if lines.len() < BATCH_LINES && frames.message_ready().await {
                    continue;
                }
                session.feed(&std::mem::take(&mut lines)).await;
                continue;
            }
            // A message arriving that is larger than a small buffer counts
            // against the broker's memory budget until it is handed over.
            let next = frames.next(session).await;
            if frames.take_held() && !matches!(next, Err(WireError::NoRoom(_))) {
                // Handed over below (or dropped): no longer held here.
                session.hold(0);
            }
            let frame = match next {
                Ok(Some(frame)) => frame,
                // What came before the end, or before a broken frame, still
                // counts.
                end => {
                    if !lines.is_empty() {
                        session.feed(&lines).await;
                    }
                    if let Err(WireError::NoRoom(_)) = &end {
                        // The broker has logged and counted it; the client is
                        // told before the connection closes.
                        session.refuse(
                            "the broker has no memory left for a message this long: closing the connection",
                        );
                        session.hold(0);
                    }
                    return end.map(|_| ());
                }
            };
            let mut frame = frame;
            if let (Frame::Text(text), Framing::Lines) = (&mut frame, framing) {
                // Lines already: read as the TCP listener reads them; a big
                // frame goes on its own below, not copied into the batch.
                if !text.ends_with(b"\n") {
                    text.push(b'\n');
                }
                if text.len() <= frames::HOLD_FREE {
                    lines.extend_from_slice(text);
                    if lines.len() < BATCH_LINES && frames.message_ready().await {
                        continue;
                    }
                    session.feed(&std::mem::take(&mut lines)).await;
                    continue;
                }
            }
            if let (Frame::Text(text), Framing::Message) = (&frame, framing) {
                // A line is one message only if it holds no newline of its own
                // (JSON may have some between tokens) and is not empty; a big
                // message goes on its own, not copied into the batch.
                if !text.is_empty()
                    && text.len() <= frames::HOLD_FREE
                    && memchr::memchr(b'\n', text).is_none()
                {
                    lines.extend_from_slice(text);
                    lines.push(b'\n');
                    // Fed now if the next message is not already here (read
                    // or waiting in the socket): what was read is never held
                    // back by a frame still on its way.
                    if lines.len() < BATCH_LINES && frames.message_ready().await {
                        continue;
                    }
                    // Taken, not cleared: an idle connection keeps no buffer of
                    // the last batch.
                    session.feed(&std::mem::take(&mut lines)).await;
                    continue;
                }
            }
            // Anything else comes after the lines before it.
            if !lines.is_empty() {
                session.feed(&std::mem::take(&mut lines)).await;
            }
            match frame {
            Frame::Text(text) => match framing {
                Framing::Message => session.feed_message(&text).await,
                Framing::Lines => session.feed(&text).await,
            },
            Frame::TooLarge(size) => session.refuse(&format!(
                "message too large: {size} bytes, the limit is {limit} bytes"
            )),
            Frame::Binary => session.refuse(
                "binary frames are not part of the protocol: send each JSON message as a text frame",
            ),
            Frame::Ping(payload) => {
                shared.pongs.push(payload);
            }
            Frame::Pong => {}
            Frame::Close(_) => return Ok(()),
        }
        }
    }
}

/// Like `read_frames`, a function returning an `async move` block.
#[allow(clippy::manual_async_fn)] // the arguments once, not twice
fn write_output<'a, W>(
    session: &'a Session,
    mut writer: W,
    shared: &'a Shared,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + 'a
where
    W: AsyncWrite + Unpin + 'a,
{
    async move {
        let mut output = RVec::new();
        let mut wire = Vec::new();
        let mut stopped = false;
        // A message begun in fragments, its rest still to come.
        let mut open_message = false;
        loop {
            if stopped {
                // Only what is queued now; then the session closes.
                session.try_output(&mut output);
                if output.is_empty() {
                    shared.close.store(frames::GOING_AWAY, Ordering::Relaxed);
                    break;
                }
            } else {
                let open = session.try_output(&mut output);
                if output.is_empty() {
                    if !open {
                        break;
                    }
                    // Nothing waiting: an idle WebSocket holds no buffers.
                    output = RVec::new();
                    wire = Vec::new();
                    tokio::select! {
                        open = session.output(&mut output) => if !open && output.is_empty() {
                            break;
                        },
                        () = shared.pongs.ready.notified() => {
                            for payload in shared.pongs.take() {
                                frames::pong_frame(&mut wire, &payload);
                            }
                        }
                        _ = stopping(&mut stop) => {
                            stopped = true;
                            continue;
                        }
                    }
                } else {
                    // Output all the time (a flood) must not starve pongs.
                    for payload in shared.pongs.take() {
                        frames::pong_frame(&mut wire, &payload);
                    }
                }
            }
            // Each `\n`-terminated JSON line the session handed over is one
            // text message (found with memchr: a byte-at-a-time split was a
            // third of a WebSocket fan-out's time). The session hands output
            // over in pieces (`write_in_pieces`): a line cut at the end of one
            // goes out as the first fragments of its message, the rest as
            // continuation frames with the next.
            wire.reserve(output.len() + output.len() / 16 + 16);
            let mut rest = &output[..];
            while !rest.is_empty() {
                // The end of the next message: a line, or under `mist.lines`
                // as many whole lines as fit a frame (a single longer line
                // whole).
                let end = match shared.framing {
                    Framing::Message => memchr::memchr(b'\n', rest),
                    Framing::Lines => memchr::memrchr(b'\n', &rest[..rest.len().min(LINES_FRAME)])
                        .or_else(|| memchr::memchr(b'\n', rest)),
                };
                match end {
                    Some(end) => {
                        // One message per frame goes without its newline (an
                        // empty line is no message); lines keep theirs.
                        let piece = match shared.framing {
                            Framing::Message => &rest[..end],
                            Framing::Lines => &rest[..=end],
                        };
                        if open_message || !piece.is_empty() {
                            frames::text_piece(&mut wire, !open_message, true, piece);
                        }
                        open_message = false;
                        rest = &rest[end + 1..];
                    }
                    None => {
                        frames::text_piece(&mut wire, !open_message, false, rest);
                        open_message = true;
                        rest = &[];
                    }
                }
            }
            // Framed: the session's copy goes (it is charged to the broker's
            // memory budget until the next drain; `wire` is what is held).
            output = RVec::new();
            let written = tokio::select! {
                written = writer.write_all(&wire) => written.is_ok(),
                () = session.closed() => false,
            };
            if !written {
                // The client is gone (its reading side will notice too), or
                // the broker ended the session while the write was stuck.
                session.close();
                return;
            }
            wire.clear();
            if wire.capacity() > READ_BUFFER * 16 {
                wire = Vec::new();
            }
        }
        frames::close_frame(&mut wire, shared.close.load(Ordering::Relaxed));
        // A client that already left makes this fail, and there is nobody left
        // to tell.
        let _ = writer.write_all(&wire).await;
        let _ = writer.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, F: Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle WebSocket's task holds this future (inside the sdk's): a
    /// future stored twice, or a buffer held across an await, shows here.
    /// It was 2,968 bytes (boxed, beside a 768-byte task) before the reader
    /// and writer were pinned in place, the upgrade stopped being a boxed
    /// future and no argument was kept once moved on.
    #[test]
    fn an_upgraded_connection_future_stays_small() {
        let serve: fn(Upgrades) -> _ = Upgrades::serve;
        let size = future_size(serve);
        eprintln!("Upgrades::serve future: {size} bytes");
        // 1,560 bytes, debug and release (1,544 before the framing a
        // client may choose; 1,856 in release while the reader
        // polled its next frame beside the feed and `serve_split`,
        // `read_frames` and `write_output` stored their arguments twice;
        // 1,488 before the reader asked the memory budget for big messages
        // and the writer sent lines in fragments).
        assert!(size <= 1568, "{size} bytes");
    }
}
