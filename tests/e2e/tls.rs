//! TLS on every listener (SPEC §8), spoken to by clients no one here wrote:
//! `openssl s_client`, `curl`, headless Chromium; and by the CLI and the
//! client library. Certificates are made by the tests (rcgen) and trusted
//! explicitly: nothing here turns verification off.

use std::process::Stdio;
use std::time::{Duration, Instant};

use mist_e2e::browser::{Chromium, PageServer};
use mist_e2e::client::delivery;
use mist_e2e::tls::{
    client_config, connect, der_of, line_client, openssl, openssl_fingerprint, openssl_says_ca,
    openssl_self_signed, openssl_spki_hash, served_certificate, served_certificate_with, Ca, Pki,
};
use mist_e2e::web::await_figure;
use mist_e2e::{artifacts, Client, MistServer, TIMEOUT};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::browser::{data_of, PAGE};

/// `mist --server` with `listeners` and `extra` flags, waiting for `count`
/// listeners.
fn start(listeners: &str, pki: &Pki, extra: &[&str], count: usize) -> MistServer {
    let flags = pki.flags();
    let mut args = vec!["--listeners", listeners];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(extra);
    MistServer::start_with(&args, count)
}

/// `openssl s_client` to `addr` with `flags`, sending `line` and returning
/// the first line it prints back (None if it ends first).
async fn s_client_line(addr: &str, flags: &[&str], line: &str) -> (Option<String>, String) {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            addr,
            "-quiet",
            "-verify_return_error",
        ])
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running openssl (scripts/test installs it)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(line.as_bytes()).await.unwrap();
    stdin.write_all(b"\n").await.unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let got = tokio::time::timeout(TIMEOUT, stdout.next_line())
        .await
        .expect("openssl printed nothing in time")
        .unwrap();
    let _ = child.kill().await;
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await;
    (got, stderr)
}

#[tokio::test]
async fn openssl_s_client_speaks_the_line_protocol_over_tls_1_2_and_1_3_only() {
    let pki = Pki::new();
    let server = start("tcp://127.0.0.1:0,tls://127.0.0.1:0", &pki, &[], 2);
    let addr = server.addr("tls");
    let ca = pki.ca.cert.display().to_string();
    for version in ["-tls1_3", "-tls1_2"] {
        let (line, log) = s_client_line(
            &addr,
            &[version, "-CAfile", &ca, "-verify_ip", "127.0.0.1"],
            r#"{"command":"ping"}"#,
        )
        .await;
        assert_eq!(
            line.as_deref(),
            Some(r#"{"command":"ping","data":"pong"}"#),
            "{version}: {log}"
        );
    }
    // TLS 1.1 is refused by the server: the client offers only it (at a
    // security level that lets it), and the handshake fails.
    let (line, log) = s_client_line(
        &addr,
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", &ca],
        r#"{"command":"ping"}"#,
    )
    .await;
    assert_eq!(line, None, "TLS 1.1 got an answer: {log}");
    assert!(
        log.contains("alert") || log.contains("protocol version"),
        "{log}"
    );

    // A subscriber over TLS gets a publish from plain TCP.
    let mut subscriber = line_client(&addr, &pki.ca.cert).await;
    subscriber.subscribe(&["secure"]).await;
    let mut publisher = Client::connect(&server.tcp()).await;
    publisher.publish(&["secure", "x"], "over tls").await;
    assert_eq!(
        subscriber.recv().await,
        delivery(&["secure", "x"], "over tls")
    );
    await_figure(&server, "/listeners/tls", 1).await;
}

#[tokio::test]
async fn curl_pings_publishes_and_streams_events_over_https() {
    let pki = Pki::new();
    let server = start("tcp://127.0.0.1:0,https://127.0.0.1:0", &pki, &[], 2);
    let base = format!("https://{}", server.addr("https"));
    let ca = pki.ca.cert.display().to_string();
    let curl = |args: &[&str]| {
        let mut all = vec!["-sS", "--max-time", "10", "--cacert", &ca];
        all.extend_from_slice(args);
        std::process::Command::new("curl")
            .args(&all)
            .output()
            .expect("curl runs")
    };

    let ping = curl(&["-w", " %{http_version}", &format!("{base}/ping")]);
    assert!(ping.status.success(), "{ping:?}");
    assert_eq!(
        String::from_utf8_lossy(&ping.stdout),
        "pong 1.1",
        "HTTP/1.1, as ALPN agreed"
    );

    // Server-Sent Events through curl, while a TCP client publishes.
    let mut events = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "20", "--cacert", &ca])
        .arg(format!("{base}/subscribe?tags=news"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs");
    let mut lines = BufReader::new(events.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("no event in time")
        .unwrap();
    assert_eq!(first.as_deref(), Some(": subscribed"));

    let publish = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"tags":["news","today"],"data":"from curl over tls"}"#,
        &format!("{base}/publish"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&publish.stdout),
        "204",
        "{publish:?}"
    );
    let event = loop {
        let line = tokio::time::timeout(TIMEOUT, lines.next_line())
            .await
            .expect("no event in time")
            .unwrap()
            .expect("the stream ended");
        if let Some(data) = line.strip_prefix("data: ") {
            break serde_json::from_str::<serde_json::Value>(data).unwrap();
        }
    };
    assert_eq!(event, delivery(&["news", "today"], "from curl over tls"));
    let _ = events.kill().await;

    // Without the CA, curl refuses the certificate.
    let untrusted = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", &format!("{base}/ping")])
        .output()
        .unwrap();
    assert_eq!(untrusted.status.code(), Some(60), "{untrusted:?}");
}

#[tokio::test]
async fn the_seed_javascript_runs_over_wss_in_chromium_trusting_only_this_key() {
    let pki = Pki::new();
    let server = start("tcp://127.0.0.1:0,wss://127.0.0.1:0", &pki, &[], 2);
    let page = PAGE.replace(
        "ws://MIST_HTTP",
        &format!(
            "wss://127.0.0.1:{}",
            server.addr("wss").rsplit(':').next().unwrap()
        ),
    );
    let spki = openssl_spki_hash(&pki.server.cert);

    // Without trust in the key, the browser refuses the connection.
    let mut pages = PageServer::start(page.clone()).await;
    let browser = Chromium::open(&format!("http://{}/", pages.addr));
    let report = pages.next_report(&browser).await;
    assert!(
        report.starts_with("/error") || report.starts_with("/closed"),
        "an untrusted certificate was accepted: {report}"
    );
    drop(browser);

    let mut pages = PageServer::start(page).await;
    let trust = format!("--ignore-certificate-errors-spki-list={spki}");
    let browser = Chromium::open_with(&format!("http://{}/", pages.addr), &[&trust]);
    let ready = pages.next_report(&browser).await;
    assert_eq!(
        data_of(&ready, "/ready"),
        json!({"command": "list", "data": "[[\"hello\",\"world\"]]"}),
        "the browser's subscription over wss"
    );
    let mut publisher = Client::connect(&server.tcp()).await;
    publisher
        .publish(&["world", "hello"], "hi over wss, é")
        .await;
    assert!(publisher.sync().await.is_empty());
    let got = pages.next_report(&browser).await;
    assert_eq!(
        data_of(&got, "/got"),
        delivery(&["world", "hello"], "hi over wss, é")
    );
}

/// Runs `mist args...` to its end.
async fn mist(args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        TIMEOUT,
        Command::new(artifacts().mist())
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the mist command did not end in time")
    .expect("mist ran")
}

#[tokio::test]
async fn the_cli_connects_over_tls_and_wss_and_refuses_what_does_not_verify() {
    let pki = Pki::new();
    let server = start(
        "tcp://127.0.0.1:0,tls://127.0.0.1:0,wss://127.0.0.1:0",
        &pki,
        &[],
        3,
    );
    let ca = pki.ca.cert.display().to_string();
    let tls = format!("tls://{}", server.addr("tls"));
    let wss = format!("wss://{}/", server.addr("wss"));
    for host in [&tls, &wss] {
        let out = mist(&["ping", "--host", host, "--ca", &ca]).await;
        assert!(out.status.success(), "{host}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "pong\n");
    }

    // A subscriber over wss, a publisher over tls, both through the CLI.
    let mut subscriber = Command::new(artifacts().mist())
        .args(["subscribe", "--tags", "cli", "--host", &wss, "--ca", &ca])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    await_figure(&server, "/subscriptions", 1).await;
    let out = mist(&[
        "publish", "--tags", "cli,tls", "--data", "across", "--host", &tls, "--ca", &ca,
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("nothing printed in time")
        .unwrap();
    assert_eq!(line.as_deref(), Some("across"));
    let _ = subscriber.kill().await;

    // The system's roots do not include the test CA; another CA is not
    // this one: both are clear errors, exit 1.
    let dir = tempfile::tempdir().unwrap();
    let other = Ca::new(dir.path(), "other-ca");
    for (host, ca) in [
        (&tls, None),
        (&wss, None),
        (&tls, Some(&other.cert)),
        (&wss, Some(&other.cert)),
    ] {
        let ca = ca.map(|p| p.display().to_string());
        let mut args = vec!["ping", "--host", host.as_str()];
        if let Some(ca) = &ca {
            args.extend(["--ca", ca.as_str()]);
        }
        let out = mist(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{host} {ca:?}: {out:?}");
        assert!(
            stderr.contains("TLS") && stderr.contains("certificate"),
            "{host} {ca:?}: {stderr}"
        );
    }
    let missing = mist(&["ping", "--host", &tls, "--ca", "/nonexistent/ca.pem"]).await;
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/ca.pem"),
        "{missing:?}"
    );
}

/// `mist ping` failing with exit 1 and a message in words (no Rust enum);
/// the message.
async fn refused_ping(args: &[&str]) -> String {
    let out = mist(args).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    for enum_like in [
        "Other(",
        "OtherError",
        "CaUsedAsEndEntity",
        "AlertReceived",
        "CertificateRequired",
    ] {
        assert!(!stderr.contains(enum_like), "{args:?}: {stderr}");
    }
    stderr
}

#[tokio::test]
async fn the_cli_trusts_the_openssl_self_signed_certificate_given_with_ca() {
    let dir = tempfile::tempdir().unwrap();
    // The certificate of the issue, made by the command people use.
    let made = openssl_self_signed(dir.path(), "cert", "DNS:localhost,IP:127.0.0.1");
    assert!(openssl_says_ca(&made.cert), "openssl marks it CA:TRUE");
    let (cert, key) = (
        made.cert.display().to_string(),
        made.key.display().to_string(),
    );
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0,tls://127.0.0.1:0,wss://127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        3,
    );
    let port = |scheme: &str| server.addr(scheme).rsplit_once(':').unwrap().1.to_owned();
    let tls = format!("tls://localhost:{}", port("tls"));
    let wss = format!("wss://localhost:{}/", port("wss"));
    for host in [&tls, &wss] {
        let out = mist(&["ping", "--host", host, "--ca", &cert]).await;
        assert!(out.status.success(), "{host}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "pong\n");
    }

    // Another self-signed certificate is not this one; a plain port is not
    // TLS. Both say what to do.
    let other = openssl_self_signed(dir.path(), "other", "DNS:localhost,IP:127.0.0.1");
    let other = other.cert.display().to_string();
    for host in [&tls, &wss] {
        let stderr = refused_ping(&["ping", "--host", host, "--ca", &other]).await;
        assert!(
            stderr.contains("other.pem") && stderr.contains("--ca FILE"),
            "{host}: {stderr}"
        );
    }
    let plain = format!("tls://{}", server.addr("tcp"));
    let stderr = refused_ping(&["ping", "--host", &plain, "--ca", &cert]).await;
    assert!(stderr.contains("is a TLS listener"), "{stderr}");

    // A server that wants a client certificate, which the CLI has none of.
    let strict = MistServer::start_with(
        &[
            "--listeners",
            "tls://127.0.0.1:0,wss://127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &cert,
        ],
        2,
    );
    for host in [
        format!("tls://{}", strict.addr("tls")),
        format!("wss://{}/", strict.addr("wss")),
    ] {
        let stderr = refused_ping(&["ping", "--host", &host, "--ca", &cert]).await;
        assert!(
            stderr.contains("requires a client certificate"),
            "{host}: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_start_without_a_usable_certificate_fails_naming_the_file() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let cert = pki.server.cert.display().to_string();
    let key = pki.server.key.display().to_string();
    let other = pki.ca.server(dir, "other", &["localhost"]);
    let other_key = other.key.display().to_string();
    let missing = dir.join("missing.pem").display().to_string();
    let a_directory = dir.display().to_string();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.display().to_string();

    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec![
                "--listeners",
                "tls://127.0.0.1:0",
                "--tls-cert",
                &missing,
                "--tls-key",
                &key,
            ],
            vec!["missing.pem", "No such file"],
        ),
        (
            vec![
                "--listeners",
                "wss://127.0.0.1:0",
                "--tls-cert",
                &a_directory,
                "--tls-key",
                &key,
            ],
            vec![&a_directory, "certificate"],
        ),
        (
            vec![
                "--listeners",
                "https://127.0.0.1:0",
                "--tls-cert",
                &cert,
                "--tls-key",
                &other_key,
            ],
            vec!["does not match", "other.key"],
        ),
        (
            vec![
                "--listeners",
                "tls://127.0.0.1:0",
                "--tls-cert",
                &garbage,
                "--tls-key",
                &key,
            ],
            vec!["garbage.pem", "no PEM certificate"],
        ),
        (
            vec!["--listeners", "tcp://127.0.0.1:0,wss://127.0.0.1:0"],
            vec!["no TLS certificate", "--tls-self-signed"],
        ),
        (
            vec!["--listeners", "tls://127.0.0.1:0", "--tls-cert", &cert],
            vec!["--tls-cert needs --tls-key"],
        ),
    ];
    let per_listener = format!("tls://127.0.0.1:0?cert={cert}&key={missing}");
    let mut cases = cases;
    cases.push((
        vec!["--listeners", &per_listener, "--tls-self-signed"],
        vec!["missing.pem"],
    ));
    for (args, expected) in cases {
        let (status, log) = MistServer::run_to_exit(&args);
        assert!(!status.success(), "{args:?} started:\n{log}");
        for needle in expected {
            assert!(log.contains(needle), "{args:?}: no {needle:?} in:\n{log}");
        }
    }
}

#[tokio::test]
async fn a_self_signed_certificate_is_logged_and_trusted_by_its_fingerprint() {
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tls://127.0.0.1:0,https://localhost:0",
            "--tls-self-signed",
        ],
        2,
    );
    let line = server.wait_for_log("SHA-256 fingerprint");
    let served = served_certificate(&server.addr("tls"));
    let fingerprint = openssl_fingerprint(&served);
    let logged = server.log();
    assert!(
        logged.contains(&fingerprint),
        "openssl sees {fingerprint}; the log says:\n{line}"
    );
    // Its names: localhost, 127.0.0.1 and the listener's host.
    let text = openssl(&["x509", "-noout", "-ext", "subjectAltName"], &served);
    let names = String::from_utf8_lossy(&text.stdout);
    assert!(
        names.contains("DNS:localhost") && names.contains("IP Address:127.0.0.1"),
        "{names}"
    );

    // Trusted as its own CA, the CLI connects to it.
    let dir = tempfile::tempdir().unwrap();
    let pinned = dir.path().join("self-signed.pem");
    std::fs::write(&pinned, &served).unwrap();
    let out = mist(&[
        "ping",
        "--host",
        &format!("tls://{}", server.addr("tls")),
        "--ca",
        &pinned.display().to_string(),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_connections_only() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    // The server reads these paths; the test replaces what is in them.
    let live = pki.ca.server(dir, "live", &["localhost", "127.0.0.1"]);
    let first_der = der_of(&live.cert);
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0,tls://127.0.0.1:0",
            "--tls-cert",
            &live.cert.display().to_string(),
            "--tls-key",
            &live.key.display().to_string(),
        ],
        2,
    );
    let addr = server.addr("tls");
    let mut before = line_client(&addr, &pki.ca.cert).await;
    before.subscribe(&["reload"]).await;

    // A new certificate from another CA, written over the old files.
    let other_dir = tempfile::tempdir().unwrap();
    let second_ca = Ca::new(other_dir.path(), "second-ca");
    let second = second_ca.server(other_dir.path(), "second", &["localhost", "127.0.0.1"]);
    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    hangup(&server);
    server.wait_for_log("TLS certificate reloaded");

    let (_, leaf) = connect(&addr, client_config(&second_ca.cert, None))
        .await
        .expect("the new certificate verifies against its CA");
    assert_eq!(leaf, der_of(&second.cert));
    assert_ne!(leaf, first_der);
    assert!(
        connect(&addr, client_config(&pki.ca.cert, None))
            .await
            .is_err(),
        "new connections no longer get the old certificate"
    );
    // The connection opened before the reload is untouched.
    let mut publisher = Client::connect(&server.tcp()).await;
    publisher.publish(&["reload"], "still here").await;
    assert_eq!(before.recv().await, delivery(&["reload"], "still here"));

    // A reload that fails keeps the certificate it had, and says why.
    std::fs::write(&live.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    hangup(&server);
    let error = server.wait_for_log("reloading failed");
    assert!(error.contains("live.pem"), "{error}");
    let (_, leaf) = connect(&addr, client_config(&second_ca.cert, None))
        .await
        .expect("the old certificate is still served");
    assert_eq!(leaf, der_of(&second.cert));
}

#[tokio::test]
async fn sighup_keeps_a_self_signed_certificate_with_or_without_a_client_ca() {
    let pki = Pki::new();
    let client = pki.ca.client(pki.dir.path(), "client");
    let (client_cert, client_key) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    let client_ca = pki.ca.cert.display().to_string();
    let alone: &[&str] = &["--listeners", "tls://127.0.0.1:0", "--tls-self-signed"];
    let with_ca: &[&str] = &[
        "--listeners",
        "tls://127.0.0.1:0",
        "--tls-self-signed",
        "--tls-client-ca",
        &client_ca,
    ];
    let presenting: &[&str] = &["-cert", &client_cert, "-key", &client_key];
    for (args, flags) in [(alone, &[][..]), (with_ca, presenting)] {
        let server = MistServer::start_with(args, 1);
        server.wait_for_log("SHA-256 fingerprint");
        let fingerprint_of = |pem: &[u8]| openssl_fingerprint(pem);
        let first = fingerprint_of(&served_certificate_with(&server.addr("tls"), flags));
        assert!(server.log().contains(&first), "{args:?}: {}", server.log());
        for reload in 1..=2 {
            hangup(&server);
            let deadline = Instant::now() + TIMEOUT;
            while server.log().matches("TLS certificate reloaded").count() < reload {
                assert!(Instant::now() < deadline, "{args:?}: no reload logged");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let served = fingerprint_of(&served_certificate_with(&server.addr("tls"), flags));
            assert_eq!(
                served, first,
                "{args:?}: the certificate changed at reload {reload}"
            );
        }
        let log = server.log();
        assert_eq!(
            log.matches("SHA-256 fingerprint").count(),
            1,
            "{args:?}: one certificate was ever generated:\n{log}"
        );
    }
}

fn hangup(server: &MistServer) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_client_ca_makes_tls_listeners_require_a_client_certificate() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let client = pki.ca.client(dir, "client");
    let stranger_ca = Ca::new(dir, "stranger-ca");
    let stranger = stranger_ca.client(dir, "stranger");
    let ca = pki.ca.cert.display().to_string();
    let server = start(
        "tls://127.0.0.1:0,https://127.0.0.1:0",
        &pki,
        &["--tls-client-ca", &ca],
        2,
    );
    let addr = server.addr("tls");

    let (line, log) = s_client_line(
        &addr,
        &[
            "-CAfile",
            &ca,
            "-cert",
            &client.cert.display().to_string(),
            "-key",
            &client.key.display().to_string(),
        ],
        r#"{"command":"ping"}"#,
    )
    .await;
    assert_eq!(
        line.as_deref(),
        Some(r#"{"command":"ping","data":"pong"}"#),
        "{log}"
    );

    for (name, cert) in [("no certificate", None), ("a stranger's", Some(&stranger))] {
        let config = client_config(&pki.ca.cert, cert);
        let refused = match connect(&addr, config).await {
            Err(_) => true,
            // TLS 1.3: the server's refusal arrives after the client's
            // handshake is done, with the first read.
            Ok((mut stream, _)) => {
                let _ = stream.write_all(b"{\"command\":\"ping\"}\n").await;
                let mut buf = [0; 64];
                !matches!(
                    tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await,
                    Ok(Ok(n)) if n > 0
                )
            }
        };
        assert!(refused, "{name} was let in");
    }
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &ca])
        .arg(format!("https://{}/ping", server.addr("https")))
        .output()
        .unwrap();
    assert!(!curl.status.success(), "{curl:?}");
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &ca, "--cert"])
        .arg(&client.cert)
        .arg("--key")
        .arg(&client.key)
        .arg(format!("https://{}/ping", server.addr("https")))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "pong", "{curl:?}");
}

#[tokio::test]
async fn a_listener_certificate_in_its_uri_wins_over_the_global_one() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let own_ca = Ca::new(dir, "own-ca");
    let own = own_ca.server(dir, "own", &["localhost", "127.0.0.1"]);
    let listeners = format!(
        "tls://127.0.0.1:0,wss://127.0.0.1:0?cert={}&key={}",
        own.cert.display(),
        own.key.display()
    );
    let server = start(&listeners, &pki, &[], 2);
    let (_, leaf) = connect(&server.addr("tls"), client_config(&pki.ca.cert, None))
        .await
        .unwrap();
    assert_eq!(leaf, der_of(&pki.server.cert));
    let (_, leaf) = connect(&server.addr("wss"), client_config(&own_ca.cert, None))
        .await
        .unwrap();
    assert_eq!(leaf, der_of(&own.cert));
}

#[tokio::test]
async fn a_tls_handshake_never_finished_is_closed_after_the_handshake_timeout() {
    let pki = Pki::new();
    let server = start("tls://127.0.0.1:0", &pki, &["--handshake-timeout", "1s"], 1);
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr("tls"))
        .await
        .unwrap();
    // Half a ClientHello's record header, then nothing.
    silent.write_all(&[0x16, 0x03]).await.unwrap();
    let mut buf = [0; 16];
    let read = tokio::time::timeout(TIMEOUT, silent.read(&mut buf))
        .await
        .expect("the server kept the connection past the test timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn mist_bench_loads_a_tls_listener_and_gets_everything_delivered() {
    let pki = Pki::new();
    let server = start("tls://127.0.0.1:0", &pki, &[], 1);
    let host = format!("tls://{}", server.addr("tls"));
    let ca = pki.ca.cert.display().to_string();
    let out = tokio::time::timeout(
        TIMEOUT * 3,
        Command::new(artifacts().mist())
            .args(["bench", "fanout", "--subscribers", "5", "-n", "2000"])
            .args(["--host", &host, "--ca", &ca, "--json"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mist bench did not finish in time")
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["messages_sent"], 2000, "{report}");
    assert_eq!(report["delivered"], 10_000, "{report}");
    assert_eq!(report["errors"], 0, "{report}");

    // Without the CA, the bench refuses the certificate.
    let out = mist(&["bench", "pubsub", "-n", "10", "--host", &host]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
}
