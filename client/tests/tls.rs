//! The client library over TLS (`tls://`, `wss://`) against the real `mist`
//! binary, with a test CA; and its refusal of a certificate that does not
//! verify. Every wait is bounded by `TIMEOUT`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use mist_client::{Client, ConnectOptions, Error, Message};
use mist_e2e::tls::{Ca, Pki};
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
