//! One benchmark connection, over TCP or WebSocket: the line protocol read
//! by hand, because the bench shares the machine's cores with the broker it
//! measures and must not spend them on parsing every delivery.
//!
//! Over WebSocket each text frame is one JSON message; the reader appends
//! each to the same buffer followed by a newline, so the rest of the bench
//! sees lines whatever the transport (Mist writes compact JSON: a message
//! never holds a raw newline).

use std::net::IpAddr;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use memchr::memchr;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::net::{self, Endpoint};
use crate::BenchError;

/// How long a command's reply may take before the bench gives up.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines longer than this are refused by a default broker anyway.
const MAX_LINE: usize = 2 << 20;

/// How much a connection reads at once.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Buffers {
    /// For connections that carry a flood: fewer, larger reads.
    Busy,
    /// For 100,000 idle connections: little memory each; the buffer still
    /// grows for a long line.
    Idle,
}

impl Buffers {
    fn bytes(self) -> usize {
        match self {
            Buffers::Busy => 64 * 1024,
            Buffers::Idle => 4 * 1024,
        }
    }
}

type Ws = WebSocketStream<TcpStream>;

enum Source {
    Tcp(ReadHalf<Box<dyn net::ByteStream>>),
    Ws(SplitStream<Ws>, String),
}

/// The read half: a buffer of bytes split into lines as they arrive.
pub(crate) struct Lines {
    source: Source,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// The write half.
pub(crate) enum Writer {
    Tcp(WriteHalf<Box<dyn net::ByteStream>>),
    Ws(SplitSink<Ws, Message>, String),
}

/// What a line from the broker is, as far as the bench cares.
pub(crate) enum Line<'a> {
    /// A delivery: `{"command":"publish","tags":[..],"data":".."}`.
    Delivery(&'a [u8]),
    /// The answer to a `ping`.
    Pong,
    /// An error reply.
    Error { command: String, error: String },
    /// Any other reply.
    Other,
}

impl Lines {
    fn new(source: Source, buffers: Buffers) -> Lines {
        Lines {
            source,
            buf: vec![0; buffers.bytes()],
            start: 0,
            end: 0,
        }
    }

    /// Makes room for `more` bytes after what is unread.
    fn reserve(&mut self, more: usize) -> Result<(), BenchError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let wanted = self.end + more;
        if wanted > self.buf.len() {
            if wanted > MAX_LINE + 1 {
                return Err(BenchError::Io(std::io::Error::other(
                    "a line from the broker is longer than 2 MiB",
                )));
            }
            self.buf.resize(wanted.max(self.buf.len() * 2), 0);
        }
        Ok(())
    }

    /// Reads more. `Ok(false)` means the broker closed the connection.
    /// Cancel-safe: nothing is lost when the future is dropped.
    pub(crate) async fn fill(&mut self) -> Result<bool, BenchError> {
        match &mut self.source {
            Source::Tcp(_) => {
                let more = if self.end - self.start == self.buf.len() {
                    self.buf.len()
                } else {
                    0
                };
                self.reserve(more)?;
                let Source::Tcp(read) = &mut self.source else {
                    return Ok(false);
                };
                let n = read.read(&mut self.buf[self.end..]).await?;
                self.end += n;
                Ok(n > 0)
            }
            Source::Ws(frames, host) => loop {
                let text = match frames.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(false),
                    Some(Err(e)) => {
                        return Err(BenchError::WebSocket {
                            host: host.clone(),
                            source: Box::new(e),
                        })
                    }
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        return Err(BenchError::Io(std::io::Error::other(
                            "the broker sent a binary WebSocket frame",
                        )))
                    }
                    // Pings are answered by tungstenite itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                };
                let bytes = text.as_bytes();
                self.reserve(bytes.len() + 1)?;
                self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
                self.buf[self.end + bytes.len()] = b'\n';
                self.end += bytes.len() + 1;
                return Ok(true);
            },
        }
    }

    /// The next complete line already read, without its newline.
    pub(crate) fn next_line(&mut self) -> Option<Line<'_>> {
        let n = memchr(b'\n', &self.buf[self.start..self.end])?;
        let line = &self.buf[self.start..self.start + n];
        self.start += n + 1;
        Some(classify(line))
    }

    /// Reads until the reply to a `ping`; an error reply first is the
    /// broker refusing an earlier command.
    pub(crate) async fn until_pong(&mut self) -> Result<(), BenchError> {
        let wait = async {
            loop {
                while let Some(line) = self.next_line() {
                    match line {
                        Line::Pong => return Ok(()),
                        Line::Error { command, error } => {
                            return Err(BenchError::Refused { command, error })
                        }
                        Line::Delivery(_) | Line::Other => {}
                    }
                }
                if !self.fill().await? {
                    return Err(BenchError::Closed);
                }
            }
        };
        tokio::time::timeout(REPLY_TIMEOUT, wait)
            .await
            .map_err(|_| BenchError::Timeout(REPLY_TIMEOUT))?
    }
}

impl Writer {
    /// Sends `\n`-terminated JSON lines: as they are over TCP, one text
    /// frame each over WebSocket.
    pub(crate) async fn send(&mut self, lines: &[u8]) -> Result<(), BenchError> {
        match self {
            Writer::Tcp(write) => Ok(write.write_all(lines).await?),
            Writer::Ws(sink, host) => {
                let failed = |e| BenchError::WebSocket {
                    host: host.clone(),
                    source: Box::new(e),
                };
                for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let text = Utf8Bytes::try_from(line.to_vec()).map_err(|_| {
                        BenchError::Usage("a tag or token is not valid UTF-8".into())
                    })?;
                    sink.feed(Message::Text(text)).await.map_err(failed)?;
                }
                sink.flush().await.map_err(failed)
            }
        }
    }
}

fn classify(line: &[u8]) -> Line<'_> {
    // Mist writes deliveries in exactly this form; error replies to a
    // publish carry `"error"` right after the command instead.
    if line.starts_with(br#"{"command":"publish","tags":"#) {
        return Line::Delivery(line);
    }
    if line.starts_with(br#"{"command":"ping","data":"pong"}"#) {
        return Line::Pong;
    }
    match serde_json::from_slice::<Value>(line) {
        Ok(reply) => match reply.get("error").and_then(Value::as_str) {
            Some(error) => Line::Error {
                command: reply
                    .get("command")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                error: error.to_owned(),
            },
            None => Line::Other,
        },
        Err(_) => Line::Error {
            command: String::new(),
            error: format!(
                "the broker sent a line that is not JSON: {}",
                String::from_utf8_lossy(line)
            ),
        },
    }
}

/// Connects to `endpoint` (from `source` when given), upgrades to
/// WebSocket when it is a `ws://` endpoint, authenticates when a token is
/// given and checks the broker took it.
pub(crate) async fn open(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
    token: Option<&str>,
    buffers: Buffers,
) -> Result<(Lines, Writer), BenchError> {
    let connect = async {
        let stream = net::dial(endpoint, source).await?;
        match &endpoint.ws_url {
            None => {
                let stream = net::secure(endpoint, stream).await?;
                let (read, write) = tokio::io::split(stream);
                Ok::<_, BenchError>((Lines::new(Source::Tcp(read), buffers), Writer::Tcp(write)))
            }
            Some(url) => {
                let config = match buffers {
                    Buffers::Busy => WebSocketConfig::default(),
                    Buffers::Idle => WebSocketConfig::default()
                        .read_buffer_size(buffers.bytes())
                        .write_buffer_size(0),
                };
                let (socket, _) =
                    tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
                        .await
                        .map_err(|e| BenchError::WebSocket {
                            host: endpoint.name.clone(),
                            source: Box::new(e),
                        })?;
                let (sink, frames) = socket.split();
                Ok((
                    Lines::new(Source::Ws(frames, endpoint.name.clone()), buffers),
                    Writer::Ws(sink, endpoint.name.clone()),
                ))
            }
        }
    };
    let (mut lines, mut writer) = tokio::time::timeout(REPLY_TIMEOUT, connect)
        .await
        .map_err(|_| BenchError::Timeout(REPLY_TIMEOUT))??;
    if let Some(token) = token {
        let auth = serde_json::json!({"command": "auth", "data": token});
        let mut line = auth.to_string().into_bytes();
        line.extend_from_slice(b"\n{\"command\":\"ping\"}\n");
        writer.send(&line).await?;
        lines.until_pong().await?;
    }
    Ok((lines, writer))
}

/// Subscribes to each of `tag_sets` and waits until they are live.
pub(crate) async fn subscribe(
    lines: &mut Lines,
    writer: &mut Writer,
    tag_sets: &[Vec<String>],
) -> Result<(), BenchError> {
    let mut out = Vec::new();
    for tags in tag_sets {
        let request = serde_json::json!({"command": "subscribe", "tags": tags});
        out.extend_from_slice(request.to_string().as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"{\"command\":\"ping\"}\n");
    writer.send(&out).await?;
    lines.until_pong().await
}
