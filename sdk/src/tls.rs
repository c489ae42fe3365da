//! TLS for listeners: the certificate a TLS listener serves, read from the
//! parameters of its URI, and reloaded on request.
//!
//! Every TLS listener of Mist (`tls://`, `wss://`, `https://`) and any
//! third-party one built on [`crate::net::Serve::tls`] takes its certificate
//! from these query parameters of its URI:
//!
//! | parameter | meaning |
//! |---|---|
//! | `cert=FILE` | the certificate chain, PEM, leaf first |
//! | `key=FILE` | its private key, PEM (PKCS#8, PKCS#1 or SEC1) |
//! | `self-signed=true` | without `cert`/`key`: generate a self-signed certificate at start for `localhost`, `127.0.0.1` and the listener's host, and log its SHA-256 fingerprint |
//! | `client-ca=FILE` | require a client certificate signed by a CA in this PEM file |
//!
//! Values are percent-encoded (`%20` for a space); `+` is a plus sign. The
//! host writes its global `--tls-cert`, `--tls-key`, `--tls-self-signed`
//! and `--tls-client-ca` into each TLS listener's URI with
//! [`TlsParams::apply`], unless the URI names its own certificate source.
//!
//! Only TLS 1.2 and 1.3 are offered, with the `ring` cipher suites of
//! rustls.
//!
//! ```no_run
//! # fn demo() -> Result<(), mist_sdk::tls::TlsError> {
//! use mist_sdk::tls::TlsAcceptor;
//! let acceptor = TlsAcceptor::from_uri(
//!     "wss://0.0.0.0:8443?cert=/etc/mist/cert.pem&key=/etc/mist/key.pem",
//!     &["http/1.1"],
//! )?;
//! // On SIGHUP: new connections get the new certificate; a failure keeps the old one.
//! acceptor.reload()?;
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::SdkError;

/// The URI parameter naming the certificate chain file.
pub const CERT_PARAM: &str = "cert";
/// The URI parameter naming the private key file.
pub const KEY_PARAM: &str = "key";
/// The URI parameter asking for a generated self-signed certificate.
pub const SELF_SIGNED_PARAM: &str = "self-signed";
/// The URI parameter naming the CA file that client certificates must be signed by.
pub const CLIENT_CA_PARAM: &str = "client-ca";

/// Why a TLS listener cannot have the certificate it asks for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The URI names no certificate source.
    #[error("no TLS certificate for {uri}: give --tls-cert FILE --tls-key FILE, ?cert=FILE&key=FILE in the listener URI, or --tls-self-signed")]
    NoCertificate {
        /// The listener URI (without its query).
        uri: String,
    },
    /// `cert` without `key`, or the other way round.
    #[error("{given} without {missing} for {uri}: a certificate needs its key")]
    Incomplete {
        /// The listener URI (without its query).
        uri: String,
        /// The parameter given.
        given: &'static str,
        /// The parameter missing.
        missing: &'static str,
    },
    /// A file could not be read.
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        /// `certificate`, `key` or `client CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("the TLS {what} file {} {reason}", path.display())]
    Unusable {
        /// `certificate`, `key` or `client CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("the TLS key {} does not match the certificate {}: {reason}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(String),
    /// A parameter's value is not understood.
    #[error("bad TLS parameter in {uri}: {reason}")]
    BadParameter {
        /// The listener URI (without its query).
        uri: String,
        /// Why.
        reason: String,
    },
}

impl From<TlsError> for SdkError {
    fn from(e: TlsError) -> SdkError {
        SdkError::invalid_input(e.to_string())
    }
}

/// The TLS parameters a host writes into listener URIs (see the module docs).
///
/// ```
/// use mist_sdk::tls::TlsParams;
/// let params = TlsParams {
///     cert: Some("/etc/mist/my cert.pem".into()),
///     key: Some("/etc/mist/key.pem".into()),
///     ..TlsParams::default()
/// };
/// assert_eq!(
///     params.apply("tls://0.0.0.0:1446"),
///     "tls://0.0.0.0:1446?cert=/etc/mist/my%20cert.pem&key=/etc/mist/key.pem"
/// );
/// // A listener that names its own certificate keeps it.
/// assert_eq!(params.apply("tls://h:1?self-signed=true"), "tls://h:1?self-signed=true");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsParams {
    /// The certificate chain file.
    pub cert: Option<PathBuf>,
    /// The private key file.
    pub key: Option<PathBuf>,
    /// Generate a self-signed certificate when no files are given.
    pub self_signed: bool,
    /// Require client certificates signed by a CA in this file.
    pub client_ca: Option<PathBuf>,
}

/// Characters escaped in a parameter value: what would end it or the URI.
const VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'%')
    .add(b'&')
    .add(b'#')
    .add(b'+')
    .add(b'=')
    .add(b'"');

impl TlsParams {
    /// Reads the parameters of `uri` (absent ones stay `None`/`false`).
    pub fn from_uri(uri: &str) -> Result<TlsParams, TlsError> {
        let mut params = TlsParams::default();
        for (name, value) in query_pairs(uri) {
            match name.as_ref() {
                CERT_PARAM => params.cert = Some(PathBuf::from(value.into_owned())),
                KEY_PARAM => params.key = Some(PathBuf::from(value.into_owned())),
                CLIENT_CA_PARAM => params.client_ca = Some(PathBuf::from(value.into_owned())),
                SELF_SIGNED_PARAM => {
                    params.self_signed = match value.as_ref() {
                        "" | "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        other => {
                            return Err(TlsError::BadParameter {
                                uri: without_query(uri).to_owned(),
                                reason: format!("self-signed={other:?}: expected true or false"),
                            })
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(params)
    }

    /// `uri` with these parameters added where it sets none of its own: the
    /// certificate source (`cert`, `key`, `self-signed`) as a whole, and
    /// `client-ca` on its own.
    pub fn apply(&self, uri: &str) -> String {
        let own: Vec<String> = query_pairs(uri).map(|(n, _)| n.into_owned()).collect();
        let has = |name: &str| own.iter().any(|n| n == name);
        let mut added = Vec::new();
        if !has(CERT_PARAM) && !has(KEY_PARAM) && !has(SELF_SIGNED_PARAM) {
            if let Some(cert) = &self.cert {
                added.push((CERT_PARAM, cert.to_string_lossy().into_owned()));
            }
            if let Some(key) = &self.key {
                added.push((KEY_PARAM, key.to_string_lossy().into_owned()));
            }
            if self.self_signed {
                added.push((SELF_SIGNED_PARAM, "true".to_owned()));
            }
        }
        if !has(CLIENT_CA_PARAM) {
            if let Some(ca) = &self.client_ca {
                added.push((CLIENT_CA_PARAM, ca.to_string_lossy().into_owned()));
            }
        }
        let mut out = uri.to_owned();
        for (name, value) in added {
            out.push(if out.contains('?') { '&' } else { '?' });
            let _ = write!(out, "{name}={}", utf8_percent_encode(&value, VALUE));
        }
        out
    }
}

/// The `name=value` pairs of `uri`'s query, percent-decoded.
fn query_pairs(uri: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    let query = uri
        .split_once('?')
        .map_or("", |(_, q)| q.split('#').next().unwrap_or_default());
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (
            percent_decode_str(name).decode_utf8_lossy(),
            percent_decode_str(value).decode_utf8_lossy(),
        )
    })
}

fn without_query(uri: &str) -> &str {
    uri.split(['?', '#']).next().unwrap_or(uri)
}

/// Where a listener's certificate comes from.
#[derive(Debug)]
enum Source {
    /// Files, read again at each reload.
    Files { cert: PathBuf, key: PathBuf },
    /// Generated once, at start: kept across reloads (whatever else a
    /// reload re-reads, such as the client CA), since clients pin it by the
    /// fingerprint logged then.
    SelfSigned(Generated),
}

/// A generated certificate and its key.
struct Generated {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fingerprint = self.chain.first().map(|der| fingerprint(der));
        f.debug_struct("Generated")
            .field("fingerprint", &fingerprint)
            .finish_non_exhaustive()
    }
}

/// The server side of TLS for one listener: its configuration, swapped
/// whole on [`reload`](TlsAcceptor::reload) so that connections being
/// accepted never see half of a change.
pub struct TlsAcceptor {
    uri: String,
    source: Source,
    client_ca: Option<PathBuf>,
    alpn: Vec<Vec<u8>>,
    config: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("uri", &self.uri)
            .field("source", &self.source)
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

/// A TLS server connection.
pub type TlsStream<S> = tokio_rustls::server::TlsStream<S>;

impl TlsAcceptor {
    /// Reads the certificate `uri` asks for (see the module docs) and
    /// offers the ALPN protocols `alpn` (`["http/1.1"]` for HTTP and
    /// WebSocket, none for a line protocol). Errors name the file at fault.
    pub fn from_uri(uri: &str, alpn: &[&str]) -> Result<TlsAcceptor, TlsError> {
        let params = TlsParams::from_uri(uri)?;
        let shown = without_query(uri).to_owned();
        let source = match (params.cert, params.key) {
            (Some(cert), Some(key)) => Source::Files { cert, key },
            (Some(_), None) => {
                return Err(TlsError::Incomplete {
                    uri: shown,
                    given: "cert",
                    missing: "key",
                })
            }
            (None, Some(_)) => {
                return Err(TlsError::Incomplete {
                    uri: shown,
                    given: "key",
                    missing: "cert",
                })
            }
            (None, None) if params.self_signed => {
                let (chain, key) = self_signed(&shown)?;
                Source::SelfSigned(Generated { chain, key })
            }
            (None, None) => return Err(TlsError::NoCertificate { uri: shown }),
        };
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let config = build(&source, params.client_ca.as_deref(), &alpn)?;
        Ok(TlsAcceptor {
            uri: shown,
            source,
            client_ca: params.client_ca,
            alpn,
            config: ArcSwap::from_pointee(config),
        })
    }

    /// Reads the certificate, key and client CA files again; connections
    /// accepted from now on use them, open ones are not touched. On error
    /// the old configuration stays. A self-signed certificate is kept, with
    /// or without a client CA (which is re-read).
    pub fn reload(&self) -> Result<(), TlsError> {
        if matches!(self.source, Source::SelfSigned(_)) && self.client_ca.is_none() {
            return Ok(()); // nothing to read again
        }
        let config = build(&self.source, self.client_ca.as_deref(), &self.alpn)?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// The configuration new connections get.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Performs the server side of the handshake on `stream`. Bound it
    /// with a timeout: a client may never finish.
    pub async fn accept<S>(&self, stream: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        tokio_rustls::TlsAcceptor::from(self.config())
            .accept(stream)
            .await
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(
    source: &Source,
    client_ca: Option<&Path>,
    alpn: &[Vec<u8>],
) -> Result<ServerConfig, TlsError> {
    let (chain, key, files) = match source {
        Source::Files { cert, key } => (read_chain(cert)?, read_key(key)?, Some((cert, key))),
        Source::SelfSigned(generated) => (generated.chain.clone(), generated.key.clone_key(), None),
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::SelfSigned(format!("rustls refused TLS 1.2/1.3: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_chain_as(path, "client CA")? {
                roots.add(cert).map_err(|e| TlsError::Unusable {
                    what: "client CA",
                    path: path.to_owned(),
                    reason: format!("holds a certificate rustls cannot use: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Unusable {
                    what: "client CA",
                    path: path.to_owned(),
                    reason: format!("cannot verify clients: {e}"),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| match files {
            Some((cert, key)) => TlsError::Mismatch {
                cert: cert.clone(),
                key: key.clone(),
                reason: e.to_string(),
            },
            None => TlsError::SelfSigned(e.to_string()),
        })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_chain_as(path, "certificate")
}

fn read_chain_as(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path, what)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Unusable {
            what,
            path: path.to_owned(),
            reason: format!("is not valid PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Unusable {
            what,
            path: path.to_owned(),
            reason: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path, "key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Unusable {
        what: "key",
        path: path.to_owned(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".into()
            }
            e => format!("is not a valid PEM private key: {e}"),
        },
    })
}

/// A certificate for `localhost`, `127.0.0.1` and the host of `uri`, with a
/// new key; its fingerprints are logged so that a client can pin it.
fn self_signed(
    uri: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if let Some(host) = listener_host(uri) {
        if !names.contains(&host) {
            names.push(host);
        }
    }
    let certified = rcgen::generate_simple_self_signed(names.clone())
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let der = certified.cert.der().clone();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&certified.signing_key);
    tracing::info!(
        "{uri}: self-signed TLS certificate for {}; SHA-256 fingerprint {}; SPKI SHA-256 (base64) {}",
        names.join(", "),
        fingerprint(&der),
        spki_hash(&spki),
    );
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    Ok((vec![der], key))
}

/// The host of a listener URI, for the certificate's names; none for an
/// unspecified address (`0.0.0.0`, `[::]`), which no client dials.
fn listener_host(uri: &str) -> Option<String> {
    let address = crate::uri::socket_address(uri).ok()?;
    let (host, _) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => None,
        _ => Some(host.to_owned()),
    }
}

/// The SHA-256 fingerprint of a DER certificate, as `AB:CD:...` (what
/// `openssl x509 -fingerprint -sha256` and browsers show).
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::with_capacity(95);
    for (i, byte) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{byte:02X}");
    }
    out
}

/// Base64 of the SHA-256 of a SubjectPublicKeyInfo: the form Chromium's
/// `--ignore-certificate-errors-spki-list` and HTTP key pinning take.
pub fn spki_hash(spki_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    base64(digest.as_ref())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_and_writes_parameters() {
        let params = TlsParams::from_uri(
            "wss://h:1/p?x-auth-token=t&cert=/a%20b/c+d.pem&key=/k&self-signed=false&client-ca=/ca",
        )
        .unwrap();
        assert_eq!(params.cert.as_deref(), Some(Path::new("/a b/c+d.pem")));
        assert_eq!(params.key.as_deref(), Some(Path::new("/k")));
        assert_eq!(params.client_ca.as_deref(), Some(Path::new("/ca")));
        assert!(!params.self_signed);
        assert!(TlsParams::from_uri("tls://h:1?self-signed=maybe").is_err());

        let global = TlsParams {
            cert: Some("/etc/c&d.pem".into()),
            key: Some("/etc/k.pem".into()),
            self_signed: true,
            client_ca: Some("/etc/ca.pem".into()),
        };
        let applied = global.apply("https://h:1");
        assert_eq!(TlsParams::from_uri(&applied).unwrap(), global);
        // Per listener wins as a whole; the client CA is separate.
        let own = global.apply("tls://h:1?cert=/mine&key=/mine-key");
        let own = TlsParams::from_uri(&own).unwrap();
        assert_eq!(own.cert.as_deref(), Some(Path::new("/mine")));
        assert!(!own.self_signed);
        assert_eq!(own.client_ca.as_deref(), Some(Path::new("/etc/ca.pem")));
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        (cert, key, certified.cert.der().to_vec())
    }

    #[test]
    fn errors_name_the_file_and_reload_keeps_the_old_config() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = write_pair(dir.path(), "a");
        let (cert_b, key_b, _) = write_pair(dir.path(), "b");
        let uri = |c: &Path, k: &Path| {
            format!("tls://127.0.0.1:0?cert={}&key={}", c.display(), k.display())
        };

        let missing = dir.path().join("missing.pem");
        let e = TlsAcceptor::from_uri(&uri(&missing, &key), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.pem") && e.contains("certificate"),
            "{e}"
        );
        let e = TlsAcceptor::from_uri(&uri(&cert, &key_b), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match") && e.contains("b.key"), "{e}");
        let e = TlsAcceptor::from_uri(&uri(&key, &key), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.key") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = TlsAcceptor::from_uri("tls://127.0.0.1:0", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tls-self-signed"), "{e}");
        let e = TlsAcceptor::from_uri(&format!("tls://h:1?cert={}", cert.display()), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("without key"), "{e}");

        let live = dir.path().join("live.pem");
        let live_key = dir.path().join("live.key");
        std::fs::copy(&cert, &live).unwrap();
        std::fs::copy(&key, &live_key).unwrap();
        let acceptor = TlsAcceptor::from_uri(&uri(&live, &live_key), &["http/1.1"]).unwrap();
        assert_eq!(acceptor.config().alpn_protocols, vec![b"http/1.1".to_vec()]);
        let before = acceptor.config();
        std::fs::write(&live, b"garbage").unwrap();
        let e = acceptor.reload().unwrap_err().to_string();
        assert!(e.contains("live.pem"), "{e}");
        assert!(
            Arc::ptr_eq(&before, &acceptor.config()),
            "a failed reload keeps the old config"
        );
        std::fs::copy(&cert_b, &live).unwrap();
        std::fs::copy(&key_b, &live_key).unwrap();
        acceptor.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &acceptor.config()));
    }

    #[test]
    fn self_signed_names_the_listener_host() {
        assert_eq!(listener_host("wss://0.0.0.0:8443"), None);
        assert_eq!(listener_host("wss://[::]:8443"), None);
        assert_eq!(
            listener_host("wss://example.test:8443/x"),
            Some("example.test".into())
        );
        assert_eq!(listener_host("tls://[::1]:1"), Some("::1".into()));
        let acceptor = TlsAcceptor::from_uri("tls://127.0.0.2:0?self-signed=true", &[]).unwrap();
        acceptor.reload().unwrap();
    }
}
