//! One benchmark connection: the line protocol read by hand, because the
//! bench shares two cores with the broker it measures and must not spend
//! them on parsing every delivery.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use memchr::memchr;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::BenchError;

/// A connection's read half: TCP, or TLS over TCP.
pub(super) type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// A connection's write half.
pub(super) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Where and how the bench connects: `host:port` in plain TCP, or
/// `tls://host:port` with the certificate verified against `--ca` (or the
/// system's roots).
#[derive(Clone)]
pub(super) struct Dialer {
    addr: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl Dialer {
    pub(super) fn new(host: &str, ca: Option<&Path>) -> Result<Dialer, BenchError> {
        let Some(addr) = host.strip_prefix("tls://") else {
            let addr = host.strip_prefix("tcp://").unwrap_or(host);
            return Ok(Dialer {
                addr: addr.to_owned(),
                tls: None,
            });
        };
        let addr = addr.trim_end_matches('/').to_owned();
        let usage = |why: String| BenchError::Usage(why);
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| usage(format!("cannot read --ca {}: {e}", path.display())))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| usage(format!("--ca {}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| usage(format!("--ca {}: {e}", path.display())))?;
                }
            }
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| usage(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let host = addr
            .rsplit_once(':')
            .map_or(addr.as_str(), |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name = ServerName::try_from(host).map_err(|e| usage(e.to_string()))?;
        Ok(Dialer {
            addr,
            tls: Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name)),
        })
    }

    async fn dial(&self) -> Result<(Reader, Writer), BenchError> {
        let connect = |source| BenchError::Connect {
            host: self.addr.clone(),
            source,
        };
        let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| BenchError::Timeout(REPLY_TIMEOUT))?
            .map_err(connect)?;
        // Small replies and paced publishes must not wait for Nagle.
        stream.set_nodelay(true)?;
        match &self.tls {
            None => {
                let (read, write) = stream.into_split();
                Ok((Box::new(read), Box::new(write)))
            }
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(connect)?;
                let (read, write) = tokio::io::split(stream);
                Ok((Box::new(read), Box::new(write)))
            }
        }
    }
}

/// How long a command's reply may take before the bench gives up.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines longer than this are refused by a default broker anyway.
const MAX_LINE: usize = 2 << 20;

/// The read half: a buffer of bytes split into lines as they arrive.
pub(super) struct Lines {
    read: Reader,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// What a line from the broker is, as far as the bench cares.
pub(super) enum Line<'a> {
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
    /// Reads more bytes. `Ok(false)` means the broker closed the connection.
    pub(super) async fn fill(&mut self) -> Result<bool, BenchError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_LINE {
                return Err(BenchError::Io(std::io::Error::other(
                    "a line from the broker is longer than 2 MiB",
                )));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.read.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// The next complete line already read, without its newline.
    pub(super) fn next_line(&mut self) -> Option<Line<'_>> {
        let n = memchr(b'\n', &self.buf[self.start..self.end])?;
        let line = &self.buf[self.start..self.start + n];
        self.start += n + 1;
        Some(classify(line))
    }

    /// Reads until the reply to a `ping`; an error reply first is the
    /// broker refusing an earlier command.
    pub(super) async fn until_pong(&mut self) -> Result<(), BenchError> {
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

/// Connects, authenticates when a token is given and checks the broker
/// took it.
pub(super) async fn open(
    dialer: &Dialer,
    token: Option<&str>,
) -> Result<(Lines, Writer), BenchError> {
    let (read, mut write) = dialer.dial().await?;
    let mut lines = Lines {
        read,
        buf: vec![0; 64 * 1024],
        start: 0,
        end: 0,
    };
    if let Some(token) = token {
        let auth = serde_json::json!({"command": "auth", "data": token});
        let mut line = auth.to_string().into_bytes();
        line.extend_from_slice(b"\n{\"command\":\"ping\"}\n");
        write.write_all(&line).await?;
        lines.until_pong().await?;
    }
    Ok((lines, write))
}

/// Subscribes to each of `tag_sets` and waits until they are live.
pub(super) async fn subscribe(
    lines: &mut Lines,
    write: &mut Writer,
    tag_sets: &[Vec<String>],
) -> Result<(), BenchError> {
    let mut out = Vec::new();
    for tags in tag_sets {
        let request = serde_json::json!({"command": "subscribe", "tags": tags});
        out.extend_from_slice(request.to_string().as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"{\"command\":\"ping\"}\n");
    write.write_all(&out).await?;
    lines.until_pong().await
}
