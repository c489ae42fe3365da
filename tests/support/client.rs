//! A line-protocol client for tests: every read has a timeout.

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use crate::TIMEOUT;

/// One line-protocol connection to mist: TCP, or a Unix socket.
pub struct Client {
    reader: BufReader<Box<dyn AsyncRead + Unpin + Send>>,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
}

impl Client {
    /// Connects to `addr` over TCP.
    pub async fn connect(addr: &str) -> Client {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let (reader, writer) = stream.into_split();
        Client::new(Box::new(reader), Box::new(writer))
    }

    /// Connects to the Unix-domain socket at `path`.
    pub async fn connect_unix(path: &str) -> Client {
        let stream = tokio::time::timeout(TIMEOUT, UnixStream::connect(path))
            .await
            .expect("connect timed out")
            .expect("connect to the Unix socket");
        let (reader, writer) = stream.into_split();
        Client::new(Box::new(reader), Box::new(writer))
    }

    /// A client over any byte stream's two halves (TLS, say).
    pub fn from_parts(
        reader: Box<dyn AsyncRead + Unpin + Send>,
        writer: Box<dyn AsyncWrite + Unpin + Send>,
    ) -> Client {
        Client::new(reader, writer)
    }

    fn new(
        reader: Box<dyn AsyncRead + Unpin + Send>,
        writer: Box<dyn AsyncWrite + Unpin + Send>,
    ) -> Client {
        Client {
            reader: BufReader::new(reader),
            writer,
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// Writes `message` as one line.
    pub async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.send_raw(line.as_bytes()).await;
    }

    /// The next line, raw. Panics on timeout or end of stream.
    pub async fn recv_line(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut line))
            .await
            .expect("no line from mist in time")
            .expect("read");
        assert!(n > 0, "mist closed the connection");
        line
    }

    /// The next line, raw, or `None` once the server has closed the
    /// connection (end of stream or an error). Panics on timeout.
    pub async fn next_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut line))
            .await
            .expect("no line from mist in time")
        {
            Ok(n) if n > 0 => Some(line),
            _ => None,
        }
    }

    /// The next message.
    pub async fn recv(&mut self) -> Value {
        let line = self.recv_line().await;
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("mist sent a line that is not JSON ({e}): {line:?}"))
    }

    /// Whether the server closes the connection (reads EOF) in time.
    pub async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut line)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// Sends a ping and returns every message that arrives before its pong:
    /// the barrier that shows everything sent before it has taken effect.
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

    /// Asserts that nothing is waiting for this client.
    pub async fn expect_nothing(&mut self) {
        let extra = self.sync().await;
        assert!(extra.is_empty(), "unexpected messages: {extra:?}");
    }

    /// Subscribes and waits until the subscription is live.
    pub async fn subscribe(&mut self, tags: &[&str]) {
        self.send(json!({"command": "subscribe", "tags": tags}))
            .await;
        self.expect_nothing().await;
    }

    /// Publishes (without waiting).
    pub async fn publish(&mut self, tags: &[&str], data: &str) {
        self.send(json!({"command": "publish", "tags": tags, "data": data}))
            .await;
    }

    /// Sends `message` and returns the one reply it gets.
    pub async fn request(&mut self, message: Value) -> Value {
        self.send(message).await;
        self.recv().await
    }

    /// Closes the writing half: the server sees end of input.
    pub async fn shutdown(&mut self) {
        let _ = self.writer.shutdown().await;
    }
}

/// A delivery as mist writes it.
pub fn delivery(tags: &[&str], data: &str) -> Value {
    json!({"command": "publish", "tags": tags, "data": data})
}

/// An error reply's text, or a panic naming what arrived instead.
pub fn error_of(reply: &Value) -> String {
    reply["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
        .to_string()
}
