//! Opening what a connection runs on: TCP or TLS for the line protocol, a
//! WebSocket (`ws://` or `wss://`) for frames. Certificates are verified
//! against the system's roots, or against a CA file the caller names;
//! nothing unverified is ever accepted.

use std::path::Path;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::TlsError;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::{tls, Error};

/// A byte stream the line protocol runs on.
pub(crate) trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// A line-protocol connection: TCP, or TLS over TCP.
pub(crate) type LineStream = Box<dyn ByteStream>;

/// A WebSocket connection, with or without TLS.
pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects to `target`: `host:port`, `tcp://host:port` or `tls://host:port`.
pub(crate) async fn line_stream(target: &str, ca_file: Option<&Path>) -> Result<LineStream, Error> {
    let (tls, addr) = match target.strip_prefix("tls://") {
        Some(addr) => (true, addr),
        None => (false, target.strip_prefix("tcp://").unwrap_or(target)),
    };
    let addr = addr.trim_end_matches('/');
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| Error::Connect {
            target: target.to_owned(),
            source,
        })?;
    // Requests are small and each waits for its answer: no Nagle delay.
    let _ = stream.set_nodelay(true);
    if !tls {
        return Ok(Box::new(stream));
    }
    let config = tls::config(target, ca_file, &[])?;
    let name = tls::server_name(target, addr)?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| tls::failure(target, ca_file, &e))?;
    Ok(Box::new(stream))
}

/// Opens the WebSocket of `request` (its URL `ws://` or `wss://`).
pub(crate) async fn websocket(
    url: &str,
    request: Request<()>,
    config: WebSocketConfig,
    ca_file: Option<&Path>,
) -> Result<WsStream, Error> {
    let connector = if url.starts_with("wss://") {
        Some(Connector::Rustls(tls::config(url, ca_file, &["http/1.1"])?))
    } else {
        None
    };
    let request = request.into_client_request()?;
    match tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector)
        .await
    {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Io(source)) => {
            if tls::rustls_error(&source).is_some() {
                return Err(tls::failure(url, ca_file, &source));
            }
            Err(Error::Connect {
                target: url.to_owned(),
                source,
            })
        }
        Err(WsError::Tls(TlsError::Rustls(e))) => Err(Error::Tls {
            target: url.to_owned(),
            reason: tls::words(&e, ca_file),
        }),
        Err(WsError::Tls(TlsError::InvalidDnsName)) => Err(Error::Tls {
            target: url.to_owned(),
            reason: "the URL's host is not a host name or an IP address".to_owned(),
        }),
        Err(WsError::Tls(e)) => Err(Error::Tls {
            target: url.to_owned(),
            reason: e.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}
