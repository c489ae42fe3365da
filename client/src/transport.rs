//! Opening what a connection runs on: TCP or TLS for the line protocol, a
//! WebSocket (`ws://` or `wss://`) for frames. Certificates are verified
//! against the system's roots, or against a CA file the caller names;
//! nothing unverified is ever accepted.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::Error;

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
    let config = tls_config(target, ca_file, &[])?;
    let name = server_name(target, addr)?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| tls_error(target, e))?;
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
        Some(Connector::Rustls(tls_config(url, ca_file, &["http/1.1"])?))
    } else {
        None
    };
    let request = request.into_client_request()?;
    match tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector)
        .await
    {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Io(source)) => {
            if is_tls(&source) {
                return Err(tls_error(url, source));
            }
            Err(Error::Connect {
                target: url.to_owned(),
                source,
            })
        }
        Err(tokio_tungstenite::tungstenite::Error::Tls(e)) => Err(Error::Tls {
            target: url.to_owned(),
            reason: e.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// TLS 1.2 and 1.3 with `ring`, trusting `ca_file` if given, else the
/// system's roots.
fn tls_config(
    target: &str,
    ca_file: Option<&Path>,
    alpn: &[&str],
) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let unusable = |reason: String| Error::Certificate {
                path: path.to_owned(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| unusable(e.to_string()))?;
            let mut found = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| unusable(format!("not valid PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| unusable(format!("a certificate rustls cannot use: {e}")))?;
                found += 1;
            }
            if found == 0 {
                return Err(unusable(
                    "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls {
            target: target.to_owned(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name the certificate must carry: the host of `host:port`.
fn server_name(target: &str, addr: &str) -> Result<ServerName<'static>, Error> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| Error::Tls {
        target: target.to_owned(),
        reason: format!("{host:?} is not a host name: {e}"),
    })
}

fn is_tls(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
}

fn tls_error(target: &str, error: std::io::Error) -> Error {
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(why)) => Error::Tls {
            target: target.to_owned(),
            reason: format!("the server's certificate does not verify ({why:?})"),
        },
        Some(e) => Error::Tls {
            target: target.to_owned(),
            reason: e.to_string(),
        },
        None => Error::Tls {
            target: target.to_owned(),
            reason: error.to_string(),
        },
    }
}
