//! Where a run's connections go and come from: the brokers (`--host`),
//! the local addresses they are opened from (`--source-addrs`), and the
//! open-files limit that many connections need.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use crate::BenchError;

/// One broker to connect to.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// As given on the command line, for messages.
    pub name: String,
    /// Resolved once: a run may open 100,000 connections.
    pub addr: SocketAddr,
    /// The URL of the WebSocket handshake; `None` for plain TCP.
    pub ws_url: Option<String>,
    /// For `tls://` hosts: the connector (verifying against `--ca` or the
    /// system's roots) and the name the certificate must carry.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("ws_url", &self.ws_url)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Any byte stream a line connection runs over: TCP, or TLS over TCP.
pub(crate) trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// Wraps `stream` in TLS when `endpoint` is a `tls://` host.
pub(crate) async fn secure(
    endpoint: &Endpoint,
    stream: TcpStream,
) -> Result<Box<dyn ByteStream>, BenchError> {
    let Some((connector, name)) = &endpoint.tls else {
        return Ok(Box::new(stream));
    };
    let stream = connector
        .connect(name.clone(), stream)
        .await
        .map_err(|source| BenchError::Connect {
            host: endpoint.name.clone(),
            from: None,
            source,
        })?;
    Ok(Box::new(stream))
}

/// A TLS connector trusting `ca` (a PEM file) or the system's roots.
fn tls_connector(host: &str, ca: Option<&Path>) -> Result<tokio_rustls::TlsConnector, BenchError> {
    let usage = BenchError::Usage;
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
        .map_err(|e| usage(format!("{host}: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl Endpoint {
    /// Parses and resolves every `--host`. A `ws://` URL is WebSocket; a
    /// bare `host:port` is WebSocket with `--websocket`, else TCP.
    pub async fn resolve_all(
        hosts: &[String],
        websocket: bool,
        ca: Option<&Path>,
    ) -> Result<Vec<Endpoint>, BenchError> {
        if hosts.is_empty() {
            return Err(BenchError::Usage("--host needs at least one broker".into()));
        }
        let mut endpoints = Vec::with_capacity(hosts.len());
        for host in hosts {
            let (authority, ws_url, tls) = split_host(host, websocket)?;
            let tls = match tls {
                false => None,
                true => {
                    let name = authority
                        .rsplit_once(':')
                        .map_or(authority, |(name, _)| name)
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned();
                    let name = ServerName::try_from(name)
                        .map_err(|e| BenchError::Usage(format!("{host}: {e}")))?;
                    Some((tls_connector(host, ca)?, name))
                }
            };
            let addr = tokio::net::lookup_host(authority)
                .await
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| BenchError::Connect {
                    host: host.clone(),
                    from: None,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not a host:port this machine can resolve",
                    ),
                })?;
            endpoints.push(Endpoint {
                name: host.clone(),
                addr,
                ws_url,
                tls,
            });
        }
        Ok(endpoints)
    }
}

/// `host:port`, `tls://host:port` or `ws://host:port/path` → the address
/// to dial, for WebSocket the URL of the handshake, and whether it is TLS.
fn split_host(host: &str, websocket: bool) -> Result<(&str, Option<String>, bool), BenchError> {
    if host.starts_with("wss://") || host.starts_with("https://") {
        return Err(BenchError::Usage(format!(
            "{host}: mist bench speaks TCP, tls:// and ws://, not wss://"
        )));
    }
    if let Some(authority) = host.strip_prefix("tls://") {
        let authority = authority.trim_end_matches('/');
        if websocket {
            return Err(BenchError::Usage(format!(
                "{host}: --websocket over TLS is not supported"
            )));
        }
        return Ok((authority, None, true));
    }
    if let Some(rest) = host.strip_prefix("ws://") {
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(BenchError::Usage(format!(
                "{host}: no host:port in the URL"
            )));
        }
        let url = if rest.contains('/') {
            host.to_owned()
        } else {
            format!("{host}/")
        };
        return Ok((authority, Some(url), false));
    }
    if host.contains("://") || host.contains('/') {
        return Err(BenchError::Usage(format!(
            "{host}: a host is host:port, or a ws://host:port/path URL"
        )));
    }
    Ok((host, websocket.then(|| format!("ws://{host}/")), false))
}

/// Hands out local addresses in turn, one per connection.
pub(crate) struct Sources {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl Sources {
    pub fn new(addrs: &[IpAddr]) -> Sources {
        Sources {
            addrs: addrs.to_vec(),
            next: AtomicUsize::new(0),
        }
    }

    /// The address the next connection comes from; `None` lets the kernel
    /// choose.
    pub fn next(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.addrs[i % self.addrs.len()])
    }

    /// Checks, before any connection opens, that every source can reach
    /// every broker and that `connections` fit in the ephemeral ports.
    pub fn check(&self, endpoints: &[Endpoint], connections: usize) -> Result<(), BenchError> {
        for source in &self.addrs {
            if let Some(e) = endpoints
                .iter()
                .find(|e| e.addr.is_ipv4() != source.is_ipv4())
            {
                return Err(BenchError::Usage(format!(
                    "source address {source} cannot reach {} (one is IPv4, the other IPv6)",
                    e.name
                )));
            }
        }
        let Some(ports) = ephemeral_ports() else {
            return Ok(());
        };
        // A socket bound to a source address takes a port of that address
        // whatever it dials; without one, the kernel picks a port per
        // broker address.
        let per = if self.addrs.is_empty() {
            connections.div_ceil(endpoints.len().max(1))
        } else {
            connections.div_ceil(self.addrs.len())
        };
        if per > ports {
            return Err(BenchError::Usage(format!(
                "{connections} connections would need {per} ports from one local address, \
                 but the ephemeral port range has {ports}: spread them with \
                 --source-addrs 127.0.0.2,127.0.0.3,... ({} addresses at least)",
                connections.div_ceil(ports)
            )));
        }
        Ok(())
    }
}

/// The size of the kernel's ephemeral port range (Linux).
fn ephemeral_ports() -> Option<usize> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = range.split_whitespace().map(str::parse::<usize>);
    let (low, high) = (bounds.next()?.ok()?, bounds.next()?.ok()?);
    Some(high.checked_sub(low)? + 1)
}

/// Opens a TCP connection to `endpoint`, from `source` when given.
pub(crate) async fn dial(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
) -> Result<TcpStream, BenchError> {
    let failed = |source_error: std::io::Error| BenchError::Connect {
        host: endpoint.name.clone(),
        from: source,
        source: source_error,
    };
    let socket = if endpoint.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(failed)?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).map_err(failed)?;
    }
    let stream = socket.connect(endpoint.addr).await.map_err(failed)?;
    // Small replies and paced publishes must not wait for Nagle.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Raises the open-files limit to fit `connections` (plus a margin), up to
/// the hard limit and beyond it when the process may (root).
pub(crate) fn raise_fd_limit(connections: usize) -> Result<(), BenchError> {
    use rlimit::Resource;
    let needed = connections as u64 + 256;
    let Ok((soft, hard)) = Resource::NOFILE.get() else {
        return Ok(());
    };
    if soft >= needed {
        return Ok(());
    }
    let result = if hard >= needed {
        Resource::NOFILE.set(hard, hard)
    } else {
        Resource::NOFILE.set(needed, needed)
    };
    result.map_err(|e| BenchError::FileLimit {
        needed,
        limit: soft,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_tcp_or_websocket() {
        assert_eq!(
            split_host("127.0.0.1:1445", false).unwrap(),
            ("127.0.0.1:1445", None, false)
        );
        assert_eq!(
            split_host("tls://localhost:1446", false).unwrap(),
            ("localhost:1446", None, true)
        );
        assert_eq!(
            split_host("127.0.0.1:8888", true).unwrap(),
            ("127.0.0.1:8888", Some("ws://127.0.0.1:8888/".into()), false)
        );
        assert_eq!(
            split_host("ws://localhost:8080/subscribe/websocket", false).unwrap(),
            (
                "localhost:8080",
                Some("ws://localhost:8080/subscribe/websocket".into()),
                false
            )
        );
        assert_eq!(
            split_host("ws://localhost:8888", false).unwrap(),
            ("localhost:8888", Some("ws://localhost:8888/".into()), false)
        );
        for bad in ["wss://a:1/", "http://a:1", "ws:///x", "a:1/x"] {
            assert!(split_host(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn sources_take_turns() {
        let sources = Sources::new(&["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()]);
        let got: Vec<_> = (0..4)
            .map(|_| sources.next().unwrap().to_string())
            .collect();
        assert_eq!(got, ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]);
        assert_eq!(Sources::new(&[]).next(), None);
    }

    #[tokio::test]
    async fn connections_come_from_the_source_addresses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let endpoints = Endpoint::resolve_all(&[host], false, None).await.unwrap();
        let sources = Sources::new(&["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()]);
        sources.check(&endpoints, 10).unwrap();
        let mut held = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..4 {
            held.push(dial(&endpoints[0], sources.next()).await.unwrap());
            let (_, peer) = listener.accept().await.unwrap();
            peers.push(peer.ip().to_string());
        }
        assert_eq!(peers, ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]);
    }

    #[tokio::test]
    async fn impossible_sources_are_refused_before_dialling() {
        let endpoints = Endpoint::resolve_all(&["127.0.0.1:9".into()], false, None)
            .await
            .unwrap();
        let v6 = Sources::new(&["::1".parse().unwrap()]);
        let err = v6.check(&endpoints, 1).unwrap_err().to_string();
        assert!(err.contains("IPv4"), "{err}");
        if let Some(ports) = ephemeral_ports() {
            let err = Sources::new(&[])
                .check(&endpoints, ports + 1)
                .unwrap_err()
                .to_string();
            assert!(err.contains("--source-addrs"), "{err}");
            Sources::new(&["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()])
                .check(&endpoints, ports + 1)
                .unwrap();
        }
        // An address this machine does not have: binding fails at once,
        // nothing is sent.
        let err = dial(&endpoints[0], Some("192.0.2.1".parse().unwrap()))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("from 192.0.2.1"), "{err}");
    }

    #[tokio::test]
    async fn unresolvable_and_tls_hosts_fail_clearly() {
        // No port: refused without asking any resolver.
        let err = Endpoint::resolve_all(&["127.0.0.1".into()], false, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot connect to 127.0.0.1:"), "{err}");
        let err = Endpoint::resolve_all(&["wss://127.0.0.1:1/".into()], false, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not TLS"), "{err}");
    }
}
