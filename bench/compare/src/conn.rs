//! How the driver reaches a target: plain TCP, TLS over it, or WebSocket.
//! Every scenario reads lines and writes bytes through [`Reader`] and
//! [`Writer`], so the transport is the only thing that changes between a
//! plain run and a TLS or WebSocket one.
//!
//! TLS: one certificate, trusted as the only root, for the name
//! `localhost`. nats-server sends its INFO line in the clear before the
//! handshake; it is read (and dropped) before the handshake starts.
//!
//! WebSocket: Mist takes one JSON command per text frame and sends one per
//! frame (a newline is added where a frame has none); nats-server's
//! protocol is a byte stream carried in binary frames, one per write.
//! `ws-lines`: Mist with the `mist.lines` subprotocol, its lines many to a
//! text frame both ways (one frame per write); nats-server as with `ws`.

use std::io;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::ValueEnum;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::proto::Proto;

/// The transports a run can use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain TCP.
    #[default]
    Plain,
    /// TLS: Mist's `tls://` listener, `nats-server --tls`.
    Tls,
    /// WebSocket: Mist's `ws://` listener, nats-server's websocket block.
    Ws,
    /// WebSocket, Mist's lines many to a frame (`mist.lines`).
    #[value(name = "ws-lines")]
    #[serde(rename = "ws-lines")]
    WsLines,
}

impl Transport {
    /// The name `--transport` takes.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::WsLines => "ws-lines",
        }
    }
}

/// The name the test certificate is made for and checked against.
pub const TLS_NAME: &str = "localhost";

/// Bytes a reader buffers.
const READ_BUFFER: usize = 256 * 1024;

/// What a connection is made with.
#[derive(Clone)]
pub enum Dialer {
    Plain,
    Tls(TlsConnector),
    Ws {
        /// The path to upgrade on.
        path: String,
        /// Ask for `mist.lines`.
        lines: bool,
    },
}

impl Dialer {
    /// The dialer of `transport` for a target speaking `proto`: `ca` is
    /// the certificate to trust (TLS), `ws_path` overrides the upgrade
    /// path (WebSocket; Mist's is `/subscribe/websocket`, nats-server's `/`).
    pub fn new(
        transport: Transport,
        proto: Proto,
        ca: Option<&Path>,
        ws_path: Option<&str>,
    ) -> anyhow::Result<Dialer> {
        Ok(match transport {
            Transport::Plain => Dialer::Plain,
            Transport::Tls => {
                let ca = ca.context("--transport tls needs --tls-ca")?;
                Dialer::Tls(TlsConnector::from(client_config(ca)?))
            }
            Transport::Ws | Transport::WsLines => Dialer::Ws {
                path: ws_path.map_or_else(
                    || match proto {
                        Proto::Mist => "/subscribe/websocket".to_owned(),
                        _ => "/".to_owned(),
                    },
                    str::to_owned,
                ),
                lines: transport == Transport::WsLines && proto == Proto::Mist,
            },
        })
    }

    /// Connects to `addr`; a greeting the target sends first (nats's
    /// INFO) has been read when this returns.
    pub async fn dial(&self, proto: Proto, addr: &str) -> anyhow::Result<(Reader, Writer)> {
        let mut sock = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        sock.set_nodelay(true)?;
        let (mut reader, writer) = match self {
            Dialer::Plain => {
                let (read, write) = sock.into_split();
                (
                    Reader::Plain(BufReader::with_capacity(READ_BUFFER, read)),
                    Writer::Plain(write),
                )
            }
            Dialer::Tls(connector) => {
                if proto.greets() {
                    // The INFO line comes before the handshake, in the clear.
                    let mut byte = [0u8; 1];
                    loop {
                        sock.read_exact(&mut byte)
                            .await
                            .context("reading the greeting")?;
                        if byte[0] == b'\n' {
                            break;
                        }
                    }
                }
                let name = ServerName::try_from(TLS_NAME)?;
                let tls = connector
                    .connect(name, sock)
                    .await
                    .with_context(|| format!("TLS handshake with {addr}"))?;
                let (read, write) = tokio::io::split(tls);
                let reader = Reader::Tls(BufReader::with_capacity(READ_BUFFER, read));
                return Ok((reader, Writer::Tls(write)));
            }
            Dialer::Ws { path, lines } => {
                let mut request = format!("ws://{addr}{path}").into_client_request()?;
                if *lines {
                    request.headers_mut().insert(
                        "sec-websocket-protocol",
                        HeaderValue::from_static("mist.lines"),
                    );
                }
                let (ws, _) = tokio_tungstenite::client_async(request, sock)
                    .await
                    .with_context(|| format!("WebSocket upgrade at {addr}{path}"))?;
                let (tx, rx) = ws.split();
                (
                    Reader::Ws {
                        rx,
                        buf: Vec::with_capacity(64 * 1024),
                        pos: 0,
                    },
                    Writer::Ws {
                        tx,
                        send: match (proto, lines) {
                            (Proto::Mist, true) => WsSend::Lines,
                            (Proto::Mist, false) => WsSend::TextPerLine,
                            _ => WsSend::Binary,
                        },
                    },
                )
            }
        };
        if proto.greets() {
            let mut greeting = Vec::new();
            reader
                .read_line(&mut greeting)
                .await
                .context("reading the greeting")?;
        }
        Ok((reader, writer))
    }
}

/// A client configuration trusting only the certificates in `ca` (PEM).
fn client_config(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("a certificate in {}", ca.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

type Ws = WebSocketStream<TcpStream>;

/// The receiving side of a connection, read as lines.
pub enum Reader {
    Plain(BufReader<OwnedReadHalf>),
    Tls(BufReader<ReadHalf<TlsStream<TcpStream>>>),
    /// Frames, read as one byte stream; `buf[pos..]` is not yet read.
    Ws {
        rx: SplitStream<Ws>,
        buf: Vec<u8>,
        pos: usize,
    },
}

impl Reader {
    /// Appends the next line, its newline included, to `line`; 0 at the
    /// end. Cancel-safe: dropped before it returns, it loses nothing, and
    /// a partial line stays in `line` for the next call to finish.
    pub async fn read_until_newline(&mut self, line: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Reader::Plain(r) => r.read_until(b'\n', line).await,
            Reader::Tls(r) => r.read_until(b'\n', line).await,
            Reader::Ws { rx, buf, pos } => loop {
                if let Some(i) = buf[*pos..].iter().position(|&b| b == b'\n') {
                    line.extend_from_slice(&buf[*pos..*pos + i + 1]);
                    *pos += i + 1;
                    return Ok(i + 1);
                }
                buf.drain(..*pos);
                *pos = 0;
                match rx.next().await {
                    Some(Ok(Message::Text(text))) => {
                        buf.extend_from_slice(text.as_bytes());
                        if !text.as_bytes().ends_with(b"\n") {
                            buf.push(b'\n');
                        }
                    }
                    Some(Ok(Message::Binary(bytes))) => buf.extend_from_slice(&bytes),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(io::Error::other(e)),
                    None => {
                        // What is left has no newline: give it back as the
                        // last line.
                        let n = buf.len();
                        line.append(buf);
                        return Ok(n);
                    }
                }
            },
        }
    }

    /// Clears `line` and reads the next line into it.
    pub async fn read_line(&mut self, line: &mut Vec<u8>) -> io::Result<usize> {
        line.clear();
        self.read_until_newline(line).await
    }

    /// Reads and drops everything until the connection ends.
    pub async fn drain(self) {
        async fn sink(mut r: impl tokio::io::AsyncRead + Unpin) {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        match self {
            Reader::Plain(r) => sink(r).await,
            Reader::Tls(r) => sink(r).await,
            Reader::Ws { mut rx, .. } => while let Some(Ok(_)) = rx.next().await {},
        }
    }
}

/// The sending side of a connection.
pub enum Writer {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
    Ws {
        tx: SplitSink<Ws, Message>,
        send: WsSend,
    },
}

/// How a write goes out over a WebSocket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WsSend {
    /// Mist: one text frame per line.
    TextPerLine,
    /// Mist under `mist.lines`: one text frame per write, its lines and all.
    Lines,
    /// nats: one binary frame per write.
    Binary,
}

impl Writer {
    /// Sends `data`, all of it on the wire when this returns.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Writer::Plain(w) => w.write_all(data).await,
            Writer::Tls(w) => {
                w.write_all(data).await?;
                w.flush().await
            }
            Writer::Ws {
                tx,
                send: WsSend::TextPerLine,
            } => {
                for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let text = std::str::from_utf8(line).map_err(io::Error::other)?;
                    tx.feed(Message::text(text))
                        .await
                        .map_err(io::Error::other)?;
                }
                tx.flush().await.map_err(io::Error::other)
            }
            Writer::Ws { tx, send } => {
                if data.is_empty() {
                    return Ok(());
                }
                let frame = if *send == WsSend::Lines {
                    let text = std::str::from_utf8(data).map_err(io::Error::other)?;
                    Message::text(text)
                } else {
                    Message::binary(data.to_vec())
                };
                tx.send(frame).await.map_err(io::Error::other)
            }
        }
    }
}
