//! Certificates for tests, made with rcgen and written as PEM files into a
//! temporary directory; a TLS line client; and what real TLS tools
//! (`openssl`) say about a served certificate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use crate::{Client, TIMEOUT};

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test certificate authority, its certificate in `cert`.
pub struct Ca {
    pub cert: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new CA named `name`, written to `dir/name.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        Ca {
            cert: path,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (`localhost`, `127.0.0.1`, ...),
    /// written to `dir/name.pem` and `dir/name.key`.
    pub fn server(&self, dir: &Path, name: &str, names: &[&str]) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(dir, name, params)
    }

    /// A client certificate, written to `dir/name.pem` and `dir/name.key`.
    pub fn client(&self, dir: &Path, name: &str) -> CertFiles {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(dir, name, params)
    }

    fn issue(&self, dir: &Path, name: &str, params: CertificateParams) -> CertFiles {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files = CertFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }
}

/// A CA and a server certificate for `localhost` and `127.0.0.1`, in a
/// temporary directory that lives as long as this.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub server: CertFiles,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "test-ca");
        let server = ca.server(dir.path(), "server", &["localhost", "127.0.0.1"]);
        Pki { dir, ca, server }
    }

    /// `--tls-cert FILE --tls-key FILE`.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.server.cert.display().to_string(),
            "--tls-key".into(),
            self.server.key.display().to_string(),
        ]
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A rustls client config trusting `ca` (and presenting `client` if given).
pub fn client_config(ca: &Path, client: Option<&CertFiles>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let chain = CertificateDer::pem_file_iter(&files.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(config)
}

/// Opens a TLS connection to `addr` (`127.0.0.1:port`) verified against
/// `config`, and returns the stream with the server's leaf certificate.
pub async fn connect(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>)> {
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")?;
    let host = addr.rsplit_once(':').unwrap().0.to_owned();
    let name = ServerName::try_from(host).unwrap();
    let stream = tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake timed out")?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    Ok((stream, leaf))
}

/// A line-protocol client over TLS, trusting `ca`.
pub async fn line_client(addr: &str, ca: &Path) -> Client {
    let (stream, _) = connect(addr, client_config(ca, None))
        .await
        .expect("TLS connect");
    let (reader, writer) = tokio::io::split(stream);
    Client::from_parts(Box::new(reader), Box::new(writer))
}

/// The DER of a PEM certificate file's first certificate.
pub fn der_of(cert: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(cert).unwrap().to_vec()
}

/// `openssl`, run to its end with `stdin`; panics if it cannot start.
pub fn openssl(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl (scripts/test installs it)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// What `openssl x509 -fingerprint -sha256` says of a PEM certificate:
/// `AB:CD:...`.
pub fn openssl_fingerprint(pem: &[u8]) -> String {
    let out = openssl(&["x509", "-noout", "-fingerprint", "-sha256"], pem);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .rsplit_once('=')
        .map(|(_, f)| f.to_owned())
        .unwrap_or_else(|| panic!("no fingerprint in {text:?}"))
}

/// Base64 of the SHA-256 of a PEM certificate's public key, computed by
/// openssl: what Chromium's `--ignore-certificate-errors-spki-list` takes.
pub fn openssl_spki_hash(cert: &Path) -> String {
    let pem = std::fs::read(cert).unwrap();
    let public = openssl(&["x509", "-noout", "-pubkey"], &pem);
    assert!(public.status.success(), "{public:?}");
    let der = openssl(&["pkey", "-pubin", "-outform", "der"], &public.stdout);
    assert!(der.status.success(), "{der:?}");
    let digest = openssl(&["dgst", "-sha256", "-binary"], &der.stdout);
    let base64 = openssl(&["base64", "-A"], &digest.stdout);
    String::from_utf8_lossy(&base64.stdout).trim().to_owned()
}

/// The certificate `addr` serves, as PEM, as `openssl s_client` sees it.
pub fn served_certificate(addr: &str) -> Vec<u8> {
    served_certificate_with(addr, &[])
}

/// [`served_certificate`], with more `openssl s_client` flags (`-cert`,
/// `-key` for a server that wants a client certificate).
pub fn served_certificate_with(addr: &str, flags: &[&str]) -> Vec<u8> {
    let mut args = vec!["s_client", "-connect", addr, "-showcerts"];
    args.extend_from_slice(flags);
    let out = openssl(&args, b"");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from {addr}: {out:?}"));
    let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin + 25;
    text[begin..end].as_bytes().to_vec()
}

/// A self-signed certificate and key made the way people make them, by
/// the real `openssl`: `openssl req -x509 -newkey rsa:2048 -nodes -keyout
/// dir/name.key -out dir/name.pem -subj /CN=localhost -addext
/// subjectAltName=...`, with `names` (`DNS:localhost,IP:127.0.0.1`) as the
/// subject alternative names. OpenSSL marks it `CA:TRUE`.
pub fn openssl_self_signed(dir: &Path, name: &str, names: &str) -> CertFiles {
    let files = CertFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    let (cert, key) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    let san = format!("subjectAltName={names}");
    let out = openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-subj",
            "/CN=localhost",
            "-addext",
            &san,
        ],
        b"",
    );
    assert!(out.status.success(), "openssl req -x509: {out:?}");
    files
}

/// A server certificate for `names` issued by `ca` (an [`openssl_self_signed`]
/// certificate) with `openssl x509 -req`, as a small private CA would.
pub fn openssl_issue(ca: &CertFiles, dir: &Path, name: &str, names: &str) -> CertFiles {
    let files = CertFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    let (cert, key) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    let csr = dir.join(format!("{name}.csr")).display().to_string();
    let out = openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
        b"",
    );
    assert!(out.status.success(), "openssl req -new: {out:?}");
    let extensions = dir.join(format!("{name}.ext"));
    std::fs::write(&extensions, format!("subjectAltName={names}\n")).unwrap();
    let out = openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca.cert.display().to_string(),
            "-CAkey",
            &ca.key.display().to_string(),
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            &cert,
            "-extfile",
            &extensions.display().to_string(),
        ],
        b"",
    );
    assert!(out.status.success(), "openssl x509 -req: {out:?}");
    files
}

/// Whether openssl reads `cert` as a CA certificate (`CA:TRUE`).
pub fn openssl_says_ca(cert: &Path) -> bool {
    let pem = std::fs::read(cert).unwrap();
    let out = openssl(&["x509", "-noout", "-ext", "basicConstraints"], &pem);
    String::from_utf8_lossy(&out.stdout).contains("CA:TRUE")
}
