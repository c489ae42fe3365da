//! One benchmark connection, over TCP or WebSocket: the line protocol read
//! by hand, because the bench shares the machine's cores with the broker it
//! measures and must not spend them on parsing every delivery.
//!
//! Over WebSocket each text frame is one JSON message; frames are parsed in
//! place in the same read buffer (see `ws.rs`), so the rest of the bench
//! sees one message at a time whatever the transport.

use std::net::IpAddr;
use std::time::Duration;

use memchr::memchr;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::net::{self, Endpoint};
use crate::ws::{self, Frame, Masker};
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

type Read = ReadHalf<Box<dyn net::ByteStream>>;
type Write = WriteHalf<Box<dyn net::ByteStream>>;

/// How a connection's bytes are cut into messages.
enum Framing {
    /// `\n`-terminated lines.
    Lines,
    /// WebSocket frames; `host` for messages.
    Ws {
        host: String,
        /// Why the broker's frames can no longer be read.
        broken: Option<String>,
        /// The broker sent a close frame.
        closed: bool,
    },
}

/// The read half: a buffer of bytes split into messages as they arrive.
pub(crate) struct Lines {
    read: Read,
    framing: Framing,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// The write half.
pub(crate) enum Writer {
    Tcp(Write),
    Ws(Write, Masker, Vec<u8>),
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
    fn new(read: Read, framing: Framing, buffers: Buffers) -> Lines {
        Lines {
            read,
            framing,
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
            // A WebSocket frame of the longest line has a header too.
            if wanted > MAX_LINE + 16 {
                return Err(BenchError::Io(std::io::Error::other(
                    "a line from the broker is longer than 2 MiB",
                )));
            }
            self.buf
                .resize(wanted.max(self.buf.len() * 2).min(MAX_LINE + 16), 0);
        }
        Ok(())
    }

    /// Reads more. `Ok(false)` means the broker closed the connection.
    /// Cancel-safe: nothing is lost when the future is dropped.
    pub(crate) async fn fill(&mut self) -> Result<bool, BenchError> {
        if let Framing::Ws {
            host,
            broken,
            closed,
        } = &self.framing
        {
            if let Some(why) = broken {
                return Err(BenchError::WebSocket {
                    host: host.clone(),
                    reason: why.clone(),
                });
            }
            if *closed {
                return Ok(false);
            }
        }
        self.read_more().await
    }

    /// Reads whatever bytes come next into the buffer.
    async fn read_more(&mut self) -> Result<bool, BenchError> {
        let more = if self.end - self.start == self.buf.len() {
            self.buf.len()
        } else {
            0
        };
        self.reserve(more)?;
        let n = self.read.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// The next complete message already read (over TCP a line, without
    /// its newline; over WebSocket a text frame's payload).
    pub(crate) fn next_line(&mut self) -> Option<Line<'_>> {
        let Framing::Ws { broken, closed, .. } = &mut self.framing else {
            let n = memchr(b'\n', &self.buf[self.start..self.end])?;
            let line = &self.buf[self.start..self.start + n];
            self.start += n + 1;
            return Some(classify(line));
        };
        while broken.is_none() && !*closed {
            let at = self.start;
            match ws::parse(&self.buf[at..self.end], MAX_LINE) {
                Ok(None) => return None,
                Ok(Some((frame, length))) => {
                    self.start += length;
                    match frame {
                        Frame::Text(payload) => {
                            return Some(classify(&self.buf[at + payload.start..at + payload.end]))
                        }
                        Frame::Control => {}
                        Frame::Close => *closed = true,
                    }
                }
                Err(why) => *broken = Some(why),
            }
        }
        None
    }

    /// Upgrades a fresh connection to `url`: sends the handshake through
    /// `writer` and reads the response; frames that came with it stay in
    /// the buffer.
    async fn upgrade(&mut self, writer: &mut Writer, url: &str) -> Result<(), String> {
        let (request, key) = ws::request(url);
        writer.raw(&request).await.map_err(|e| e.to_string())?;
        loop {
            if let Some(length) = ws::response(&self.buf[self.start..self.end], &key)? {
                self.start += length;
                return Ok(());
            }
            if self.end - self.start >= ws::MAX_RESPONSE {
                return Err("a handshake response without an end".into());
            }
            if !self.read_more().await.map_err(|e| e.to_string())? {
                return Err("closed during the handshake".into());
            }
        }
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
    /// frame each over WebSocket (all in one write).
    pub(crate) async fn send(&mut self, lines: &[u8]) -> Result<(), BenchError> {
        match self {
            Writer::Tcp(write) => Ok(write.write_all(lines).await?),
            Writer::Ws(write, masker, out) => {
                out.clear();
                for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    if std::str::from_utf8(line).is_err() {
                        return Err(BenchError::Usage(
                            "a tag or token is not valid UTF-8".into(),
                        ));
                    }
                    masker.text_frame(out, line);
                }
                Ok(write.write_all(out).await?)
            }
        }
    }

    /// Writes bytes as they are (the WebSocket handshake).
    async fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Tcp(write) | Writer::Ws(write, ..) => write.write_all(bytes).await,
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
        let stream = net::secure(endpoint, stream).await?;
        let (read, write) = tokio::io::split(stream);
        match &endpoint.ws_url {
            None => Ok::<_, BenchError>((
                Lines::new(read, Framing::Lines, buffers),
                Writer::Tcp(write),
            )),
            Some(url) => {
                let framing = Framing::Ws {
                    host: endpoint.name.clone(),
                    broken: None,
                    closed: false,
                };
                let mut lines = Lines::new(read, framing, buffers);
                let mut writer = Writer::Ws(write, Masker::new(), Vec::new());
                lines
                    .upgrade(&mut writer, url)
                    .await
                    .map_err(|reason| BenchError::WebSocket {
                        host: endpoint.name.clone(),
                        reason,
                    })?;
                Ok((lines, writer))
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
