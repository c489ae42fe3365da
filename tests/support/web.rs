//! WebSocket, HTTP and Server-Sent-Events clients for tests, every read
//! bounded by [`TIMEOUT`]. HTTP is spoken by hand over a `TcpStream`: the
//! tests must see exactly what goes over the wire.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use std::time::{Duration, Instant};

use crate::{Client, MistServer, TIMEOUT};

/// One WebSocket connection to mist.
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol mist agreed to (`Sec-WebSocket-Protocol` in its
    /// `101`), if any.
    protocol: Option<String>,
}

impl WsClient {
    /// Connects to `url` (`ws://host:port/path?query`) with extra headers.
    pub async fn connect_with(url: &str, headers: &[(&'static str, &str)]) -> WsClient {
        let mut request = url.into_client_request().expect("a WebSocket URL");
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("a header value"));
        }
        let (socket, response) =
            tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
                .await
                .expect("WebSocket connect timed out")
                .expect("WebSocket connect");
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|value| value.to_str().expect("an ASCII subprotocol").to_owned());
        WsClient { socket, protocol }
    }

    /// The subprotocol mist agreed to, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Connects to `url`.
    pub async fn connect(url: &str) -> WsClient {
        Self::connect_with(url, &[]).await
    }

    /// Sends one frame.
    pub async fn send_frame(&mut self, frame: Message) {
        self.socket.send(frame).await.expect("WebSocket send");
    }

    /// Sends `frames` in one write: the broker reads them together.
    pub async fn send_frames(&mut self, frames: Vec<Message>) {
        for frame in frames {
            self.socket.feed(frame).await.expect("WebSocket send");
        }
        self.socket.flush().await.expect("WebSocket flush");
    }

    /// Writes `bytes` to the socket as they are, past the WebSocket codec:
    /// for frames cut short. Build them with [`masked_text_frame`].
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let MaybeTlsStream::Plain(tcp) = self.socket.get_mut() else {
            panic!("send_raw speaks plain ws:// only");
        };
        tcp.write_all(bytes).await.expect("raw WebSocket write");
    }

    /// Sends `message` as one text frame.
    pub async fn send(&mut self, message: Value) {
        self.send_frame(Message::text(message.to_string())).await;
    }

    /// The next frame of any kind. Panics on timeout or end of stream.
    pub async fn recv_frame(&mut self) -> Message {
        tokio::time::timeout(TIMEOUT, self.socket.next())
            .await
            .expect("no frame from mist in time")
            .expect("mist closed the WebSocket")
            .expect("WebSocket read")
    }

    /// The next message, from a text frame.
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.recv_frame().await {
                Message::Text(text) => {
                    assert!(!text.ends_with('\n'), "a frame with a newline: {text:?}");
                    return serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("mist sent a frame that is not JSON ({e}): {text:?}")
                    });
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Sends a ping command and returns every message before its pong.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.send(json!({"command": "ping"})).await;
        let mut before = Vec::new();
        loop {
            let message = self.recv().await;
            if message == json!({"command": "ping", "data": "pong"}) {
                return before;
            }
            before.push(message);
        }
    }

    /// Subscribes and waits until the subscription is live.
    pub async fn subscribe(&mut self, tags: &[&str]) {
        self.send(json!({"command": "subscribe", "tags": tags}))
            .await;
        let extra = self.sync().await;
        assert!(extra.is_empty(), "unexpected messages: {extra:?}");
    }

    /// Sends a close frame and waits for the server's close frame.
    pub async fn close(mut self) {
        self.socket.close(None).await.expect("sending close");
        loop {
            match tokio::time::timeout(TIMEOUT, self.socket.next())
                .await
                .expect("no close from mist in time")
            {
                Some(Ok(Message::Close(_))) | None => return,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("WebSocket failed while closing: {e}"),
            }
        }
    }

    /// Drops the TCP connection without a close handshake.
    pub fn vanish(self) {
        drop(self.socket);
    }
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of header `name`, if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the whole
/// response.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("HTTP connect timed out")
        .expect("HTTP connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("no HTTP response in time")
        .expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// `POST /publish` with a JSON body.
pub async fn http_publish(addr: &str, body: Value, token: Option<&str>) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(token) = token {
        headers.push(("X-AUTH-TOKEN", token));
    }
    http(
        addr,
        "POST",
        "/publish",
        &headers,
        body.to_string().as_bytes(),
    )
    .await
}

/// A Server-Sent-Events stream, read off a chunked HTTP response.
pub struct EventStream {
    reader: BufReader<TcpStream>,
    /// Decoded body bytes not yet returned as lines.
    pending: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl EventStream {
    /// `GET path` and reads the response head. A non-200 response leaves the
    /// body unread: see [`EventStream::error_body`].
    pub async fn open(addr: &str, path: &str, headers: &[(&str, &str)]) -> EventStream {
        let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut reader = BufReader::new(stream);
        let mut status = 0;
        let mut response_headers = Vec::new();
        loop {
            let line = read_line(&mut reader).await;
            if line.is_empty() {
                break;
            }
            if status == 0 {
                status = line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            } else if let Some((n, v)) = line.split_once(':') {
                response_headers.push((n.trim().to_owned(), v.trim().to_owned()));
            }
        }
        EventStream {
            reader,
            pending: Vec::new(),
            status,
            headers: response_headers,
        }
    }

    /// The body of a non-streaming (error) response, read by its length.
    pub async fn error_body(mut self) -> Value {
        let length: usize = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .expect("an error response with a content-length");
        let mut body = vec![0; length];
        tokio::time::timeout(TIMEOUT, self.reader.read_exact(&mut body))
            .await
            .expect("no body in time")
            .expect("read");
        serde_json::from_slice(&body).expect("a JSON error body")
    }

    /// The next line of the event stream (without its newline), decoding
    /// the chunked transfer encoding as it goes.
    pub async fn next_line(&mut self) -> String {
        loop {
            if let Some(at) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                return String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            }
            let size = read_line(&mut self.reader).await;
            let size = usize::from_str_radix(size.trim(), 16)
                .unwrap_or_else(|_| panic!("not a chunk size: {size:?}"));
            assert!(size > 0, "the event stream ended");
            let mut chunk = vec![0; size + 2];
            tokio::time::timeout(TIMEOUT, self.reader.read_exact(&mut chunk))
                .await
                .expect("no chunk in time")
                .expect("read");
            self.pending.extend_from_slice(&chunk[..size]);
        }
    }

    /// Reads on until the stream ends (the last, empty chunk), returning
    /// the `data:` events met on the way.
    pub async fn rest_until_end(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            while let Some(at) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if let Some(data) = line.strip_prefix("data: ") {
                    events.push(serde_json::from_str(data).expect("an event with JSON data"));
                }
            }
            let size = read_line(&mut self.reader).await;
            let size = usize::from_str_radix(size.trim(), 16)
                .unwrap_or_else(|_| panic!("not a chunk size: {size:?}"));
            if size == 0 {
                return events;
            }
            let mut chunk = vec![0; size + 2];
            tokio::time::timeout(TIMEOUT, self.reader.read_exact(&mut chunk))
                .await
                .expect("no chunk in time")
                .expect("read");
            self.pending.extend_from_slice(&chunk[..size]);
        }
    }

    /// The next `data:` event's JSON, skipping comments and blank lines.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let line = self.next_line().await;
            if let Some(data) = line.strip_prefix("data: ") {
                return serde_json::from_str(data).expect("an event with JSON data");
            }
            assert!(
                line.is_empty() || line.starts_with(':'),
                "unexpected event-stream line {line:?}"
            );
        }
    }
}

async fn read_line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    let n = tokio::time::timeout(TIMEOUT, reader.read_line(&mut line))
        .await
        .expect("no line in time")
        .expect("read");
    assert!(n > 0, "the server closed the connection");
    line.trim_end_matches(['\r', '\n']).to_owned()
}

/// `mist --server` with tcp, http and ws listeners on free ports.
pub fn server_with_all_listeners(extra: &[&str]) -> MistServer {
    let mut args = vec![
        "--listeners",
        "tcp://127.0.0.1:0,http://127.0.0.1:0,ws://127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    MistServer::start_with(&args, 3)
}

/// The broker's `who` figures, asked over TCP.
pub async fn who(server: &MistServer) -> Value {
    let mut client = Client::connect(&server.tcp()).await;
    let reply = client.request(json!({"command": "who"})).await;
    serde_json::from_str(reply["data"].as_str().expect("who data")).expect("who JSON")
}

/// Sessions of `listener` other than the one asking (a TCP connection).
pub async fn sessions_on(server: &MistServer, listener: &str) -> u64 {
    let figures = who(server).await;
    figures["listeners"][listener].as_u64().unwrap_or(0)
}

/// Waits until `who`'s figure at `pointer` (a JSON pointer such as
/// `/listeners/ws`; absent counts as 0) is `count`. The broker notices a
/// vanished client only when its socket reports it, so this polls, within
/// the test timeout.
pub async fn await_figure(server: &MistServer, pointer: &str, count: u64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = who(server)
            .await
            .pointer(pointer)
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if now == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "who{pointer} is still {now}, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One client-to-server text frame carrying `text`, masked as a client's
/// must be (with a fixed key: the tests need no secrecy).
pub fn masked_text_frame(text: &str) -> Vec<u8> {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let len = text.len();
    let mut frame = vec![0x81];
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else {
        assert!(
            len <= usize::from(u16::MAX),
            "a frame this long is not needed"
        );
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    }
    frame.extend_from_slice(&KEY);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    frame
}

/// Waits until `listener` has `count` sessions.
pub async fn await_sessions(server: &MistServer, listener: &str, count: u64) {
    await_figure(server, &format!("/listeners/{listener}"), count).await;
}
