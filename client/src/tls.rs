//! TLS for the client: which certificates it trusts, how it verifies the
//! server's, and what it tells a person when that fails.
//!
//! With a CA file, the server's certificate is accepted when it chains to a
//! certificate in the file (a private CA), or when it *is* one of them
//! (pinning: a self-signed certificate, or a leaf whose CA is not given).
//! The second is what `curl --cacert`, `openssl s_client -CAfile` and
//! Python's `ssl` do with a self-signed certificate made the usual way (`openssl req -x509 ...`, which marks it `CA:TRUE`), and what
//! webpki alone refuses as "a CA certificate used as an end entity" (and
//! a leaf without its CA as "unknown issuer"; curl accepts that too). A
//! pinned certificate must still be in its validity period and carry the
//! name dialled, and the server must prove it holds its key, as for any
//! other. Without a CA file, the system's roots are trusted, and nothing is
//! pinned.
//!
//! Every failure is said in words, with what to do about it: never a
//! rustls or webpki enum.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_name, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};

use crate::Error;

/// TLS 1.2 and 1.3 with `ring`, trusting `ca_file` if given (its
/// certificates as CAs and as pins), else the system's roots.
pub(crate) fn config(
    target: &str,
    ca_file: Option<&Path>,
    alpn: &[&str],
) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (roots, pinned) = match ca_file {
        Some(path) => {
            let pinned = read_ca_file(path)?;
            let mut roots = RootCertStore::empty();
            for cert in &pinned {
                roots.add(cert.clone()).map_err(|_| Error::Certificate {
                    path: path.to_owned(),
                    reason: "holds a certificate that cannot be read as X.509: give the PEM \
                             certificate of the CA that issued the server's, or the server's own"
                        .to_owned(),
                })?;
            }
            (roots, pinned)
        }
        None => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            (roots, Vec::new())
        }
    };
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|_| Error::Tls {
            target: target.to_owned(),
            reason: "this system trusts no certificate authority (no CA certificates are \
                     installed): give the CA that issued the server's certificate, or the \
                     server's own certificate, as the CA file (mist --ca FILE)"
                .to_owned(),
        })?;
    let verifier = Arc::new(Verifier {
        webpki,
        pinned,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls {
            target: target.to_owned(),
            reason: format!("this client cannot offer TLS 1.2 or 1.3 ({e})"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// The certificates of a PEM file; at least one.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let unusable = |reason: String| Error::Certificate {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| unusable(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            unusable(format!(
                "is not valid PEM ({e}): give the PEM file of a certificate \
                 (-----BEGIN CERTIFICATE-----)"
            ))
        })?;
    if certs.is_empty() {
        return Err(unusable(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the certificate of \
             the CA that issued the server's, or the server's own"
                .into(),
        ));
    }
    Ok(certs)
}

/// webpki's verification, and pinning: a server certificate that is
/// byte for byte one of the CA file's is accepted though it is marked as a
/// CA, or its issuer is not given.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// The CA file's certificates.
    pinned: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    /// `end_entity`, one of the pinned certificates, for `server_name` at
    /// `now`, verified by webpki with itself as the only trust anchor.
    /// webpki checks what a certificate says of itself (validity period,
    /// basic constraints, key usage) before it looks for its issuer, so of
    /// its refusals two mean that only the chain is in question, which
    /// pinning settles: "CA used as end entity" (a self-signed certificate
    /// OpenSSL marked `CA:TRUE`; the dates passed, and the constraints are
    /// the question) and "unknown issuer" (a pinned leaf of some CA: the
    /// dates and key usage passed). The name is then checked here.
    fn verify_pinned(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(end_entity.clone().into_owned())?;
        let alone =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        match alone.verify_server_cert(end_entity, &[], server_name, &[], now) {
            Ok(verified) => Ok(verified),
            Err(e)
                if is_ca_used_as_end_entity(&e)
                    || e == rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) =>
            {
                verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            // The pinned certificate's own verdict: "not valid for this
            // name" or "expired" says more than "unknown issuer".
            Err(_)
                if self
                    .pinned
                    .iter()
                    .any(|pin| pin.as_ref() == end_entity.as_ref()) =>
            {
                self.verify_pinned(end_entity, server_name, now)
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// webpki's "a CA certificate used as an end entity", which rustls passes
/// on as an opaque error.
fn is_ca_used_as_end_entity(error: &rustls::Error) -> bool {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// The name the certificate must carry: the host of `host:port`.
pub(crate) fn server_name(target: &str, addr: &str) -> Result<ServerName<'static>, Error> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| Error::Tls {
        target: target.to_owned(),
        reason: format!("{host:?} is not a host name or an IP address: dial host:port"),
    })
}

/// Whether an I/O error is rustls's.
pub(crate) fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
}

/// A failed handshake (or a TLS failure after it) with `target`, in words.
pub(crate) fn failure(target: &str, ca_file: Option<&Path>, error: &std::io::Error) -> Error {
    let reason = match rustls_error(error) {
        Some(e) => words(e, ca_file),
        None if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the TLS handshake: check that this port \
             is a TLS listener (tls://, wss://, https://) and, if the server asks for client \
             certificates (--tls-client-ca), that this client may connect"
                .to_owned()
        }
        None => format!("the TLS handshake failed: {error}"),
    };
    Error::Tls {
        target: target.to_owned(),
        reason,
    }
}

/// What the CA file is, for messages.
fn trusted(ca_file: Option<&Path>) -> String {
    match ca_file {
        Some(path) => format!("the CA file {}", path.display()),
        None => "this system's certificate authorities".to_owned(),
    }
}

/// `error` in words, with what to do about it.
pub(crate) fn words(error: &rustls::Error, ca_file: Option<&Path>) -> String {
    let trusted = trusted(ca_file);
    let give = "give the certificate of the CA that issued it, or the server's own certificate \
                (pinning it), as the CA file (mist --ca FILE)";
    match error {
        rustls::Error::InvalidCertificate(e) => certificate_words(e, &trusted, give),
        rustls::Error::AlertReceived(alert) => alert_words(*alert),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the server did not answer in TLS: check that this port is a TLS listener \
             (tls://, wss://, https://); a plain one is dialled with tcp:// or ws://"
                .to_owned()
        }
        rustls::Error::PeerIncompatible(_) => {
            "the server offers no TLS version or cipher suite this client accepts (TLS 1.2 or \
             1.3 with modern ciphers): upgrade the server's TLS configuration"
                .to_owned()
        }
        rustls::Error::NoCertificatesPresented => {
            "the server presented no certificate: give it one (--tls-cert and --tls-key, or \
             --tls-self-signed)"
                .to_owned()
        }
        rustls::Error::DecryptError | rustls::Error::PeerMisbehaved(_) => {
            "the TLS connection was corrupted or tampered with on the way: try again, and \
             check what sits between this client and the server"
                .to_owned()
        }
        other => {
            format!("the TLS handshake failed ({other}): check that this port is a TLS listener")
        }
    }
}

fn certificate_words(error: &CertificateError, trusted: &str, give: &str) -> String {
    match error {
        CertificateError::UnknownIssuer => format!(
            "the server's certificate is not issued by {trusted}, nor is it a certificate \
             in it: {give}"
        ),
        CertificateError::NotValidForName => "the server's certificate is not for the name \
                                               dialled: dial one of the names it was issued \
                                               for, or issue it for this one"
            .to_owned(),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names = if presented.is_empty() {
                "no name at all".to_owned()
            } else {
                let names: Vec<&str> = presented.iter().map(|n| presented_name(n)).collect();
                names.join(", ")
            };
            format!(
                "the server's certificate is for {names}, not for {}: dial one of those \
                 names, or issue the certificate for this one",
                expected.to_str()
            )
        }
        CertificateError::Expired => {
            "the server's certificate has expired: the server needs a new one".to_owned()
        }
        CertificateError::ExpiredContext { not_after, .. } => format!(
            "the server's certificate expired at {}: the server needs a new one (or this \
             machine's clock is wrong)",
            date(*not_after)
        ),
        CertificateError::NotValidYet => {
            "the server's certificate is not valid yet: check this machine's clock".to_owned()
        }
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "the server's certificate is not valid before {}: check this machine's clock and \
             the server's",
            date(*not_before)
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the server's certificate is not for TLS servers (its extended key usage lacks \
             serverAuth): issue one for a server"
                .to_owned()
        }
        CertificateError::Revoked => {
            "the server's certificate has been revoked: the server needs a new one".to_owned()
        }
        CertificateError::BadSignature | CertificateError::BadEncoding => format!(
            "the server's certificate is damaged or not signed by the CA it names: check the \
             server's certificate file, and that {trusted} holds the right CA"
        ),
        CertificateError::Other(other)
            if matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            ) =>
        {
            format!(
                "the server presents a CA certificate (CA:TRUE) as its own, and it is not a \
                 certificate in {trusted}: give that very certificate as the CA file (mist --ca \
                 FILE) to pin it, or give the server a certificate made for a server"
            )
        }
        other => format!(
            "the server's certificate cannot be verified against {trusted} ({}): {give}",
            other_words(other)
        ),
    }
}

/// A name as webpki presents it (`DnsName("localhost")`,
/// `IpAddress(127.0.0.1)`), as a person writes it.
fn presented_name(name: &str) -> &str {
    if let Some(dns) = name
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
    {
        return dns;
    }
    if let Some(ip) = name
        .strip_prefix("IpAddress(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        return ip;
    }
    name
}

/// A certificate error without a case of its own, as plain as it gets.
fn other_words(error: &CertificateError) -> String {
    match error {
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "it is signed with an algorithm this client does not support".to_owned()
        }
        CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::EndEntityUsedAsCa) => {
                "it is issued by a certificate that is not a CA".to_owned()
            }
            Some(webpki::Error::PathLenConstraintViolated)
            | Some(webpki::Error::MaximumPathDepthExceeded) => {
                "its chain is longer than its CA allows".to_owned()
            }
            Some(webpki::Error::UnsupportedCertVersion) => {
                "it is not an X.509 version 3 certificate".to_owned()
            }
            _ => format!("webpki says: {}", other.0),
        },
        other => format!("rustls says: {other}"),
    }
}

fn alert_words(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::CertificateRequired => {
            "the server requires a client certificate (it runs with --tls-client-ca), and this \
             client has none to present: connect through a listener without --tls-client-ca"
                .to_owned()
        }
        AlertDescription::BadCertificate
        | AlertDescription::UnknownCA
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateUnknown => {
            "the server refused this client's certificate (it runs with --tls-client-ca): \
             connect through a listener without --tls-client-ca"
                .to_owned()
        }
        AlertDescription::ProtocolVersion => {
            "the server speaks neither TLS 1.3 nor 1.2: upgrade its TLS configuration".to_owned()
        }
        AlertDescription::HandshakeFailure | AlertDescription::InsufficientSecurity => {
            "the server refused the handshake: it shares no cipher suite with this client, or \
             it requires a client certificate (--tls-client-ca) this client does not present"
                .to_owned()
        }
        AlertDescription::NoApplicationProtocol => {
            "the server speaks another protocol on this port: dial tls:// for a line-protocol \
             TLS listener, wss:// for a WebSocket one"
                .to_owned()
        }
        other => format!(
            "the server ended the TLS handshake with the alert {}: see the server's log",
            alert_name(other)
        ),
    }
}

/// An alert's name as the TLS standard writes it (`internal_error`).
fn alert_name(alert: AlertDescription) -> String {
    let debug = format!("{alert:?}");
    let mut out = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// A certificate's time, as UTC.
fn date(time: UnixTime) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(time.as_secs());
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    use super::*;

    /// 2030-01-01 plus `n` days.
    const BASE: u64 = 1_893_456_000;

    fn day(n: u64) -> std::time::Duration {
        std::time::Duration::from_secs(n * 86_400)
    }

    /// A self-signed certificate for `names`, marked a CA as OpenSSL marks
    /// its self-signed ones, valid from day `from` to day `to`.
    fn ca_marked(names: &[&str], from: u64, to: u64) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let base = rcgen::date_time_ymd(2030, 1, 1);
        params.not_before = base + day(from);
        params.not_after = base + day(to);
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .clone()
    }

    /// A leaf for `names` issued by a CA that is not given, valid from day
    /// `from` to day `to`.
    fn leaf_of_some_ca(names: &[&str], from: u64, to: u64) -> CertificateDer<'static> {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "some CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "leaf");
        let base = rcgen::date_time_ymd(2030, 1, 1);
        params.not_before = base + day(from);
        params.not_after = base + day(to);
        params
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap()
            .der()
            .clone()
    }

    /// Day `n`, as rustls sees the time.
    fn at(n: u64) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(BASE) + day(n))
    }

    fn verifier(pinned: &[CertificateDer<'static>]) -> Verifier {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in pinned {
            roots.add(cert.clone()).unwrap();
        }
        Verifier {
            webpki: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap(),
            pinned: pinned.to_vec(),
            provider,
        }
    }

    fn verify(
        verifier: &Verifier,
        cert: &CertificateDer<'_>,
        name: &str,
        now: UnixTime,
    ) -> Result<(), String> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(cert, &[], &name, &[], now)
            .map(drop)
            .map_err(|e| words(&e, Some(Path::new("ca.pem"))))
    }

    #[test]
    fn a_pinned_ca_marked_certificate_is_checked_for_its_dates_and_names() {
        let cert = ca_marked(&["localhost", "127.0.0.1"], 10, 40);
        let pinned = verifier(std::slice::from_ref(&cert));
        verify(&pinned, &cert, "localhost", at(11)).unwrap();
        verify(&pinned, &cert, "127.0.0.1", at(11)).unwrap();

        let wrong_name = verify(&pinned, &cert, "example.test", at(11)).unwrap_err();
        assert!(
            wrong_name.contains("is for localhost, 127.0.0.1, not for example.test"),
            "{wrong_name}"
        );
        let expired = verify(&pinned, &cert, "localhost", at(41)).unwrap_err();
        assert!(
            expired.contains("expired at") && expired.contains("needs a new one"),
            "{expired}"
        );
        let early = verify(&pinned, &cert, "localhost", at(9)).unwrap_err();
        assert!(early.contains("not valid before"), "{early}");
    }

    #[test]
    fn a_pinned_leaf_needs_no_ca_but_its_dates_and_names() {
        let leaf = leaf_of_some_ca(&["localhost"], 10, 40);
        let pinned = verifier(std::slice::from_ref(&leaf));
        verify(&pinned, &leaf, "localhost", at(11)).unwrap();
        let expired = verify(&pinned, &leaf, "localhost", at(41)).unwrap_err();
        assert!(expired.contains("expired at"), "{expired}");
        let wrong_name = verify(&pinned, &leaf, "127.0.0.1", at(11)).unwrap_err();
        assert!(
            wrong_name.contains("is for localhost, not for 127.0.0.1"),
            "{wrong_name}"
        );
        // Not pinned, it is a leaf of an unknown CA.
        let other = leaf_of_some_ca(&["localhost"], 10, 40);
        let unknown = verify(&pinned, &other, "localhost", at(11)).unwrap_err();
        assert!(
            unknown.contains("not issued by the CA file ca.pem"),
            "{unknown}"
        );
    }

    #[test]
    fn a_ca_marked_certificate_that_is_not_pinned_is_refused_in_words() {
        let pin = ca_marked(&["localhost"], 10, 40);
        let served = ca_marked(&["localhost"], 10, 40);
        let error = verify(&verifier(&[pin]), &served, "localhost", at(11)).unwrap_err();
        assert!(
            error.contains("a CA certificate (CA:TRUE) as its own")
                && error.contains("not a certificate in the CA file ca.pem")
                && error.contains("--ca FILE"),
            "{error}"
        );
    }

    #[test]
    fn names_are_written_as_people_write_them() {
        assert_eq!(presented_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(presented_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(presented_name("IpAddress(::1)"), "::1");
        assert_eq!(presented_name("anything else"), "anything else");
    }

    #[test]
    fn alerts_are_named_as_the_standard_names_them() {
        assert_eq!(
            alert_name(AlertDescription::InternalError),
            "internal_error"
        );
        assert!(words(
            &rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            None
        )
        .contains("requires a client certificate"));
    }
}
