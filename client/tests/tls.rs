//! The client library over TLS (`tls://`, `wss://`) against the real `mist`
//! binary: with a test CA; with certificates made by the real `openssl` the
//! way people make them (a self-signed certificate, which OpenSSL marks
//! `CA:TRUE`, trusted as itself; a small CA's certificate trusted through
//! the CA); and what a person reads when the trust is wrong. Every wait is
//! bounded by `TIMEOUT`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use mist_client::{Client, ConnectOptions, Error, Message};
use mist_e2e::tls::{openssl_issue, openssl_says_ca, openssl_self_signed, Ca, CertFiles, Pki};
use mist_e2e::{MistServer, TIMEOUT};

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .expect("the client did not answer in time")
}

#[tokio::test]
async fn the_client_works_over_tls_and_wss_with_a_private_ca() {
    let pki = Pki::new();
    let flags = pki.flags();
    let mut args = vec!["--listeners", "tls://127.0.0.1:0,wss://127.0.0.1:0"];
    args.extend(flags.iter().map(String::as_str));
    let server = MistServer::start_with(&args, 2);
    let tls = format!("tls://{}", server.addr("tls"));
    let wss = format!("wss://{}/subscribe/websocket", server.addr("wss"));
    let trusted = ConnectOptions::new().ca_file(&pki.ca.cert);

    let subscriber = within(Client::connect_with(&tls, &trusted)).await.unwrap();
    let publisher = within(Client::connect_with(&wss, &trusted)).await.unwrap();
    within(subscriber.subscribe(&["secure"])).await.unwrap();
    within(publisher.publish(&["secure", "x"], "sealed"))
        .await
        .unwrap();
    assert_eq!(
        within(subscriber.next_message()).await.unwrap(),
        Message {
            tags: vec!["secure".into(), "x".into()],
            data: "sealed".into()
        }
    );

    // Not trusted: the system's roots, or another CA.
    let dir = tempfile::tempdir().unwrap();
    let other = Ca::new(dir.path(), "other");
    for options in [
        ConnectOptions::new(),
        ConnectOptions::new().ca_file(&other.cert),
    ] {
        for target in [&tls, &wss] {
            match within(Client::connect_with(target, &options)).await {
                Err(Error::Tls { reason, .. }) => {
                    assert!(reason.contains("certificate"), "{target}: {reason}")
                }
                Err(other) => panic!("{target}: expected a TLS error, got {other}"),
                Ok(_) => panic!("{target}: a certificate that does not verify was accepted"),
            }
        }
    }
    let missing = ConnectOptions::new().ca_file("/nonexistent/ca.pem");
    assert!(matches!(
        within(Client::connect_with(&tls, &missing)).await,
        Err(Error::Certificate { .. })
    ));
}

/// mist on `tls://` and `wss://` serving `cert`.
fn serve(cert: &CertFiles) -> MistServer {
    MistServer::start_with(
        &[
            "--listeners",
            "tls://127.0.0.1:0,wss://127.0.0.1:0",
            "--tls-cert",
            &cert.cert.display().to_string(),
            "--tls-key",
            &cert.key.display().to_string(),
        ],
        2,
    )
}

/// The `tls://` and `wss://` targets of `server`, dialled by `host`.
fn targets(server: &MistServer, host: &str) -> [String; 2] {
    let port = |scheme: &str| {
        let addr = server.addr(scheme);
        addr.rsplit_once(':').unwrap().1.to_owned()
    };
    [
        format!("tls://{host}:{}", port("tls")),
        format!("wss://{host}:{}/", port("wss")),
    ]
}

async fn ping(target: &str, ca: &CertFiles) -> Result<(), Error> {
    let options = ConnectOptions::new().ca_file(&ca.cert);
    let client = within(Client::connect_with(target, &options)).await?;
    within(client.ping()).await
}

/// The reason of a TLS error, checked to be words: no Rust enum, no debug
/// dump.
fn tls_reason(target: &str, result: Result<(), Error>) -> String {
    let error = result
        .err()
        .unwrap_or_else(|| panic!("{target}: connected"));
    let Error::Tls { reason, .. } = &error else {
        panic!("{target}: not a TLS error: {error:?}");
    };
    for enum_like in [
        "Other(",
        "OtherError",
        "CaUsedAsEndEntity",
        "UnknownIssuer",
        "Context {",
    ] {
        assert!(!reason.contains(enum_like), "{target}: {reason}");
    }
    reason.clone()
}

#[tokio::test]
async fn a_self_signed_openssl_certificate_is_trusted_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let cert = openssl_self_signed(dir.path(), "pinned", "DNS:localhost,IP:127.0.0.1");
    assert!(
        openssl_says_ca(&cert.cert),
        "openssl marks its self-signed certificates CA:TRUE; this test is about that"
    );
    let server = serve(&cert);
    for host in ["localhost", "127.0.0.1"] {
        for target in targets(&server, host) {
            ping(&target, &cert)
                .await
                .unwrap_or_else(|e| panic!("{target}: {e}"));
        }
    }

    // Pinning is not "anything goes": another self-signed certificate is
    // not this one.
    let other = openssl_self_signed(dir.path(), "other", "DNS:localhost,IP:127.0.0.1");
    for target in targets(&server, "localhost") {
        let reason = tls_reason(&target, ping(&target, &other).await);
        assert!(
            reason.contains("CA certificate (CA:TRUE) as its own")
                && reason.contains("not a certificate in the CA file")
                && reason.contains("other.pem")
                && reason.contains("--ca"),
            "{target}: {reason}"
        );
    }
}

#[tokio::test]
async fn a_pinned_certificate_must_still_carry_the_name_dialled() {
    let dir = tempfile::tempdir().unwrap();
    let cert = openssl_self_signed(dir.path(), "named", "DNS:localhost");
    let server = serve(&cert);
    for target in targets(&server, "localhost") {
        ping(&target, &cert)
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"));
    }
    for target in targets(&server, "127.0.0.1") {
        let reason = tls_reason(&target, ping(&target, &cert).await);
        assert!(
            reason.contains("is for localhost, not for 127.0.0.1"),
            "{target}: {reason}"
        );
    }
}

#[tokio::test]
async fn a_certificate_issued_by_an_openssl_ca_is_trusted_through_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = openssl_self_signed(dir.path(), "small-ca", "DNS:small-ca.invalid");
    let leaf = openssl_issue(&ca, dir.path(), "server", "DNS:localhost,IP:127.0.0.1");
    assert!(!openssl_says_ca(&leaf.cert));
    let server = serve(&leaf);
    for target in targets(&server, "localhost") {
        ping(&target, &ca)
            .await
            .unwrap_or_else(|e| panic!("{target}: trusting the CA: {e}"));
        ping(&target, &leaf)
            .await
            .unwrap_or_else(|e| panic!("{target}: trusting the leaf itself: {e}"));
    }
}

#[tokio::test]
async fn tls_to_a_plain_listener_says_so() {
    let server = MistServer::start_with(&["--listeners", "tcp://127.0.0.1:0"], 1);
    let dir = tempfile::tempdir().unwrap();
    let cert = openssl_self_signed(dir.path(), "any", "DNS:localhost");
    let target = format!("tls://{}", server.addr("tcp"));
    let reason = tls_reason(&target, ping(&target, &cert).await);
    assert!(reason.contains("TLS listener"), "{target}: {reason}");
}
