//! Signed tokens (docs/protocol.md, "Signed tokens (JWT)"): the `jwt`
//! authenticator against tokens minted here with `ring` from keys the
//! `openssl` binary made (HS256, RS256, PS256, ES256, EdDSA), key sets
//! served by a local HTTP(S) server, permissions by claim on every
//! listener, each refusal reason, expiry on open connections, refresh,
//! and two cluster nodes with no shared store.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mist_e2e::client::{delivery, error_of};
use mist_e2e::jwt::{claims, now, KeyServer, Signer};
use mist_e2e::redis::Redis;
use mist_e2e::tls::Pki;
use mist_e2e::web::{http, http_publish, server_with_all_listeners, EventStream, WsClient};
use mist_e2e::{artifacts, Client, MistServer, TIMEOUT};
use serde_json::{json, Value};

const ADMIN: &str = "jwt-admin-token";

fn subscribe(tags: &[&str]) -> Value {
    json!({"command": "subscribe", "tags": tags})
}

fn publish(tags: &[&str], data: &str) -> Value {
    json!({"command": "publish", "tags": tags, "data": data})
}

fn auth(token: &str) -> Value {
    json!({"command": "auth", "data": token})
}

/// A broker with every listener and the authenticator `uri`.
fn server(uri: &str) -> MistServer {
    server_with_all_listeners(&[
        "--authenticator",
        uri,
        "--token",
        ADMIN,
        "--log-level",
        "debug",
    ])
}

async fn admin(server: &MistServer) -> Client {
    let mut admin = Client::connect(&server.tcp()).await;
    admin.send(auth(ADMIN)).await;
    assert!(admin.sync().await.is_empty());
    admin
}

/// Sends `request` and asserts nothing but the pong comes back.
async fn ok(client: &mut Client, request: Value) {
    client.send(request.clone()).await;
    let replies = client.sync().await;
    assert!(replies.is_empty(), "{request} got {replies:?}");
}

/// Sends `request` and returns its one error reply's text.
async fn refused(client: &mut Client, request: Value) -> String {
    client.send(request.clone()).await;
    let replies = client.sync().await;
    assert_eq!(replies.len(), 1, "{request} got {replies:?}");
    assert_eq!(replies[0]["command"], request["command"], "{replies:?}");
    error_of(&replies[0])
}

/// A TCP connection authenticated with `token`.
async fn authed(server: &MistServer, token: &str) -> Client {
    let mut client = Client::connect(&server.tcp()).await;
    ok(&mut client, auth(token)).await;
    client
}

/// The value of one series of `/metrics` (scraped with the server token).
async fn metric(server: &MistServer, series: &str) -> f64 {
    let answer = http(
        &server.addr("http"),
        "GET",
        "/metrics",
        &[("X-AUTH-TOKEN", ADMIN)],
        b"",
    )
    .await;
    assert_eq!(answer.status, 200);
    answer
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{}", answer.text()))
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// A token's claim grants exactly its tags, on TCP, WebSocket (header and
/// query), SSE and HTTP publish; nothing of the token or its claims is
/// logged, even at debug level.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_grants_exactly_its_claim_on_every_listener() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::hs256(dir.path(), "hs");
    let server = server(&signer.uri(""));
    let token = signer.sign(&claims(&["orders", "eu-7f3c"], 600));
    let mut admin = admin(&server).await;

    let mut tcp = authed(&server, &token).await;
    ok(&mut tcp, subscribe(&["orders"])).await;
    ok(&mut tcp, subscribe(&["orders", "eu-7f3c"])).await;
    ok(&mut tcp, publish(&["eu-7f3c"], "from tcp")).await;
    assert!(refused(&mut tcp, subscribe(&["orders", "us"]))
        .await
        .starts_with("permission denied"));
    assert!(refused(&mut tcp, publish(&["us"], "x"))
        .await
        .starts_with("permission denied"));

    let ws_url = format!("ws://{}/", server.addr("ws"));
    let mut by_header = WsClient::connect_with(&ws_url, &[("X-AUTH-TOKEN", &token)]).await;
    by_header.subscribe(&["orders"]).await;
    let mut by_query = WsClient::connect(&format!("{ws_url}?x-auth-token={token}")).await;
    by_query.subscribe(&["eu-7f3c"]).await;
    by_query.send(subscribe(&["secret"])).await;
    let replies = by_query.sync().await;
    assert!(
        error_of(&replies[0]).starts_with("permission denied"),
        "{replies:?}"
    );

    let mut sse = EventStream::open(
        &server.addr("http"),
        "/subscribe?tags=orders",
        &[("X-AUTH-TOKEN", &token)],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_line().await, ": subscribed");
    let forbidden = EventStream::open(
        &server.addr("http"),
        "/subscribe?tags=secret",
        &[("X-AUTH-TOKEN", &token)],
    )
    .await;
    assert_eq!(forbidden.status, 403);

    let posted = http_publish(
        &server.addr("http"),
        publish(&["orders"], "from http"),
        Some(&token),
    )
    .await;
    assert_eq!(posted.status, 204, "{}", posted.text());
    let denied = http_publish(
        &server.addr("http"),
        publish(&["secret"], "x"),
        Some(&token),
    )
    .await;
    assert_eq!(denied.status, 403);

    let expected = delivery(&["orders"], "from http");
    assert_eq!(tcp.recv().await, expected);
    assert_eq!(by_header.recv().await, expected);
    assert_eq!(sse.next_event().await, expected);
    ok(&mut admin, publish(&["eu-7f3c"], "to the query one")).await;
    assert_eq!(
        by_query.recv().await,
        delivery(&["eu-7f3c"], "to the query one")
    );

    let log = server.log();
    for secret in [token.as_str(), "user-42", "eu-7f3c"] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
    // TCP, two WebSockets, two SSE requests, two HTTP publishes.
    assert_eq!(metric(&server, "mist_tokens_accepted_total").await, 7.0);
}

/// RS256, PS256, ES256 and EdDSA, each checked by the key type's
/// algorithm; the EdDSA broker loads the plugin from its shared library.
#[tokio::test(flavor = "multi_thread")]
async fn every_key_type_verifies_its_own_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.toml");
    std::fs::write(
        &plugins,
        format!("[[plugin]]\npath = {:?}\n", artifacts().library("mist_jwt")),
    )
    .unwrap();
    let stranger = Signer::es256(dir.path(), "stranger");
    for (signer, from_library) in [
        (Signer::rsa(dir.path(), "rs", false), false),
        (Signer::rsa(dir.path(), "ps", true), false),
        (Signer::es256(dir.path(), "es"), false),
        (Signer::eddsa(dir.path(), "ed"), true),
    ] {
        let uri = signer.uri("");
        let mut args = vec!["--authenticator", &uri, "--token", ADMIN];
        let plugins = plugins.display().to_string();
        if from_library {
            args.extend(["--plugins", &plugins]);
        }
        let server = MistServer::start(&args);
        if from_library {
            server.wait_for_log("loaded plugin");
        }
        let mut client = authed(&server, &signer.sign(&claims(&["a"], 60))).await;
        ok(&mut client, subscribe(&["a"])).await;
        let mut other = Client::connect(&server.tcp()).await;
        let forged = stranger.sign_raw(&json!({"alg": signer.alg}), &claims(&["a"], 60));
        let error = refused(&mut other, auth(&forged)).await;
        // A P-256 signature under another key type's algorithm is no
        // valid signature of that type: refused either way, never accepted.
        assert!(
            error.starts_with("bad signature") || error.starts_with("malformed"),
            "{}: {error}",
            signer.alg
        );
        assert!(refused(&mut other, subscribe(&["a"]))
            .await
            .starts_with("not authenticated"));
    }
}

/// Each refusal is a failed `auth` saying which, the connection stays and
/// is anonymous, and `/metrics` counts it under its reason.
#[tokio::test(flavor = "multi_thread")]
async fn each_refusal_says_why_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::hs256(dir.path(), "hs");
    let server = server(&signer.uri("&aud=mist&iss=https://issuer.example&leeway=0s"));
    let good = |change: Value| {
        let mut c = json!({"tags": ["a"], "exp": now() + 600, "aud": "mist", "iss": "https://issuer.example", "sub": "user-42"});
        for (k, v) in change.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let rsa = Signer::rsa(dir.path(), "rsa", false);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            signer.sign(&good(json!({"exp": now() - 5}))),
            "token expired",
            "expired",
        ),
        (
            signer.sign(&good(json!({"nbf": now() + 600}))),
            "token not valid yet",
            "not_yet_valid",
        ),
        (
            signer.sign(&good(json!({"aud": "someone-else"}))),
            "wrong audience",
            "wrong_audience",
        ),
        (
            signer.sign(&good(json!({"iss": "https://evil.example"}))),
            "wrong issuer",
            "wrong_issuer",
        ),
        (
            rsa.sign_raw(&json!({"alg": "HS256"}), &good(json!({}))),
            "bad signature",
            "bad_signature",
        ),
        (
            signer.sign_raw(&json!({"alg": "none"}), &good(json!({}))),
            "algorithm none not allowed",
            "algorithm",
        ),
        (
            rsa.sign(&good(json!({}))),
            "algorithm RS256 not allowed",
            "algorithm",
        ),
        ("not-a-jwt".into(), "malformed token", "malformed"),
        ("x".repeat(100_000), "token too large", "malformed"),
        (
            signer.sign(&good(json!({"exp": "tomorrow"}))),
            "malformed token",
            "malformed",
        ),
    ];
    let mut client = Client::connect(&server.tcp()).await;
    for (token, says, _) in &cases {
        let mut client = Client::connect(&server.tcp()).await;
        let error = refused(&mut client, auth(token)).await;
        assert!(error.starts_with(says), "{says}: {error}");
        assert!(!error.contains("user-42") && !error.contains(token.as_str()));
        assert!(refused(&mut client, subscribe(&["a"]))
            .await
            .starts_with("not authenticated"));
    }
    // The same token at connect over WebSocket: anonymous, and told why.
    let mut ws = WsClient::connect_with(
        &format!("ws://{}/", server.addr("ws")),
        &[("X-AUTH-TOKEN", &cases[0].0)],
    )
    .await;
    ws.send(subscribe(&["a"])).await;
    let replies = ws.sync().await;
    assert_eq!(
        error_of(&replies[0]),
        "not authenticated: the token given at connect was refused (token expired)"
    );
    let expected = |reason: &str| {
        cases.iter().filter(|(_, _, r)| *r == reason).count() as f64
            + if reason == "expired" { 1.0 } else { 0.0 }
    };
    for reason in [
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "bad_signature",
        "algorithm",
        "malformed",
    ] {
        assert_eq!(
            metric(
                &server,
                &format!("mist_tokens_refused_total{{reason=\"{reason}\"}}")
            )
            .await,
            expected(reason),
            "{reason}"
        );
    }
    // Garbage of every shape leaves the broker serving.
    for junk in [
        "",
        ".",
        "..",
        "a.b.c",
        "\u{0}",
        "eyJ.eyJ.eyJ",
        &"é".repeat(5000),
    ] {
        client.send(auth(junk)).await;
        assert_eq!(client.sync().await.len(), 1);
        client = Client::connect(&server.tcp()).await;
    }
    ok(&mut client, json!({"command": "ping"})).await;
    // The registry commands have nothing to act on.
    let mut admin = admin(&server).await;
    for op in ["register", "set", "unset", "unregister", "tags"] {
        let error = refused(
            &mut admin,
            json!({"command": op, "tags": ["a"], "data": "t"}),
        )
        .await;
        assert!(error.contains("keeps no tokens"), "{op}: {error}");
    }
}

/// Waits for the next line of `client` and returns it with the wall time
/// it arrived at.
async fn recv_timed(client: &mut Client) -> (Value, u128) {
    let line = client.recv().await;
    (line, unix_ms())
}

/// A token expiring while subscribed: at `exp` + leeway every listener's
/// connection gets the `revoked` notice (within 1 s), nothing after it;
/// an SSE stream ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_expiring_while_subscribed_is_revoked_on_every_listener() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::es256(dir.path(), "es");
    let server = server(&signer.uri("&leeway=1s"));
    let exp = now() + 2;
    let ends_ms = u128::from(exp + 1) * 1000;
    let token = signer.sign(&json!({"tags": ["live"], "exp": exp}));
    let mut admin = admin(&server).await;
    let mut tcp = authed(&server, &token).await;
    ok(&mut tcp, subscribe(&["live"])).await;
    let mut ws = WsClient::connect_with(
        &format!("ws://{}/", server.addr("ws")),
        &[("X-AUTH-TOKEN", &token)],
    )
    .await;
    ws.subscribe(&["live"]).await;
    let mut sse = EventStream::open(
        &server.addr("http"),
        "/subscribe?tags=live",
        &[("X-AUTH-TOKEN", &token)],
    )
    .await;
    assert_eq!(sse.next_line().await, ": subscribed");
    ok(&mut admin, publish(&["live"], "before")).await;
    assert_eq!(tcp.recv().await, delivery(&["live"], "before"));
    assert_eq!(ws.recv().await, delivery(&["live"], "before"));
    assert_eq!(sse.next_event().await, delivery(&["live"], "before"));

    let notice = json!({"command": "revoked", "tags": ["live"], "error": "subscription revoked: the token expired"});
    let (line, at) = recv_timed(&mut tcp).await;
    assert_eq!(line, notice);
    assert!(
        at + 50 >= ends_ms,
        "the notice came {} ms early",
        ends_ms - at
    );
    assert!(
        at <= ends_ms + 1000,
        "the notice came {} ms late",
        at - ends_ms
    );
    assert_eq!(ws.recv().await, notice);
    assert!(unix_ms() <= ends_ms + 1000);
    assert_eq!(
        sse.rest_until_end().await,
        [notice],
        "the stream says why, then ends"
    );

    ok(&mut admin, publish(&["live"], "after")).await;
    tcp.expect_nothing().await;
    assert!(ws.sync().await.is_empty(), "nothing after the notice");
    assert!(refused(&mut tcp, subscribe(&["live"]))
        .await
        .starts_with("token expired"));
    assert_eq!(metric(&server, "mist_tokens_expired_total").await, 3.0);
}

/// A later `auth` with a valid JWT replaces the token: subscriptions
/// outside its tags go (with a notice), the rest keep delivering with no
/// gap; an invalid one changes nothing; an expired connection comes back.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_narrows_the_tags_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::eddsa(dir.path(), "ed");
    let server = server(&signer.uri("&leeway=0s"));
    let mut admin = admin(&server).await;
    let wide = signer.sign(&claims(&["a", "b"], 600));
    let narrow = signer.sign(&claims(&["b"], 600));
    let mut client = authed(&server, &wide).await;
    ok(&mut client, subscribe(&["a"])).await;
    ok(&mut client, subscribe(&["b"])).await;

    // A flood on `b` runs across the refresh: every message arrives, in order.
    let addr = server.tcp();
    let flood = tokio::spawn(async move {
        let mut publisher = Client::connect(&addr).await;
        publisher.send(auth(ADMIN)).await;
        for i in 0..300 {
            publisher.send(publish(&["b"], &i.to_string())).await;
        }
        assert!(publisher.sync().await.is_empty());
    });
    client.send(auth(&narrow)).await;
    flood.await.unwrap();
    let mut next = 0;
    let mut notices = Vec::new();
    while next < 300 {
        let line = client.recv().await;
        match line["command"].as_str() {
            Some("publish") => {
                assert_eq!(line["data"], next.to_string(), "no gap, no reordering");
                next += 1;
            }
            Some("revoked") => notices.push(line),
            _ => panic!("unexpected {line}"),
        }
    }
    notices.extend(client.sync().await);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0]["tags"], json!(["a"]));
    assert_eq!(
        client.request(json!({"command": "list"})).await["data"],
        "[[\"b\"]]"
    );

    // A bad token changes nothing.
    let error = refused(&mut client, auth("forged.token.here")).await;
    assert!(error.starts_with("malformed"), "{error}");
    ok(&mut admin, publish(&["b"], "still b")).await;
    assert_eq!(client.recv().await, delivery(&["b"], "still b"));
    // The server token cannot follow a JWT.
    assert!(refused(&mut client, auth(ADMIN))
        .await
        .contains("only with another JWT"));

    // Expired, then refreshed: back in business. (Over WebSocket, whose
    // first token came with the upgrade.)
    // `exp` is in whole seconds: 2 s from now is at least 1 s away. The
    // notice may come before the subscribe's pong on a loaded machine.
    let short = signer.sign(&claims(&["b"], 2));
    let mut ws = WsClient::connect_with(
        &format!("ws://{}/", server.addr("ws")),
        &[("X-AUTH-TOKEN", &short)],
    )
    .await;
    ws.send(json!({"command": "subscribe", "tags": ["b"]}))
        .await;
    let mut seen = ws.sync().await;
    if seen.is_empty() {
        seen.push(ws.recv().await);
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["command"], "revoked", "{seen:?}");
    assert_eq!(seen[0]["tags"], json!(["b"]), "{seen:?}");
    ws.send(auth(&narrow)).await;
    ws.subscribe(&["b"]).await;
    ok(&mut admin, publish(&["b"], "again")).await;
    assert_eq!(ws.recv().await, delivery(&["b"], "again"));
}

fn set(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

/// Keys by `kid` from a key server: a rotated-in key is found, a stopped
/// server leaves the keys fetched before in use, and a flood of unknown
/// `kid`s costs it one request per interval.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_set_rotates_survives_its_server_and_resists_a_flood() {
    let dir = tempfile::tempdir().unwrap();
    let first = Signer::rsa(dir.path(), "first", false);
    let second = Signer::es256(dir.path(), "second");
    let mut keys = KeyServer::start(set(&[first.jwk("k1")])).await;
    let uri = format!("jwt://?jwks={}&jwks-refetch=2s&leeway=0s", keys.url());
    let server = server(&uri);
    server.wait_for_log("fetched the JWT key set");
    assert_eq!(keys.requests(), 1);
    authed(&server, &first.sign_kid("k1", &claims(&["a"], 60))).await;

    // Rotation: k2 appears. Its first token may come within the interval
    // of the start-up fetch; retried, it is accepted once the set is
    // fetched again.
    keys.set(set(&[first.jwk("k1"), second.jwk("k2")]));
    let rotated = second.sign_kid("k2", &claims(&["b"], 60));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut client = Client::connect(&server.tcp()).await;
        client.send(auth(&rotated)).await;
        let replies = client.sync().await;
        if replies.is_empty() {
            break;
        }
        assert!(
            error_of(&replies[0]).starts_with("unknown signing key"),
            "{replies:?}"
        );
        assert!(Instant::now() < deadline, "the rotated key was never found");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(keys.requests(), 2, "one more fetch found k2");

    // A flood of made-up kids: refused, and at most one request per interval.
    let before = keys.requests();
    let started = Instant::now();
    let mut floods = Vec::new();
    for n in 0..20 {
        let addr = server.tcp();
        let token = second.sign_kid(&format!("made-up-{n}"), &claims(&["b"], 60));
        floods.push(tokio::spawn(async move {
            for _ in 0..10 {
                let mut client = Client::connect(&addr).await;
                client.send(auth(&token)).await;
                let replies = client.sync().await;
                assert!(error_of(&replies[0]).starts_with("unknown signing key"));
            }
        }));
    }
    for flood in floods {
        flood.await.unwrap();
    }
    let intervals = started.elapsed().as_secs() / 2 + 1;
    let made = keys.requests() - before;
    assert!(
        made as u64 <= intervals,
        "200 unknown kids made {made} requests in {:?}",
        started.elapsed()
    );

    // The server goes down: the keys fetched before stay in use.
    keys.stop();
    for token in [
        first.sign_kid("k1", &claims(&["a"], 60)),
        second.sign_kid("k2", &claims(&["b"], 60)),
    ] {
        authed(&server, &token).await;
    }
    let mut client = Client::connect(&server.tcp()).await;
    let error = refused(
        &mut client,
        auth(&second.sign_kid("k3", &claims(&["b"], 60))),
    )
    .await;
    assert!(error.starts_with("unknown signing key"), "{error}");
    let ready = http(&server.addr("http"), "GET", "/readyz", &[], b"").await;
    assert_eq!(ready.status, 200, "keys are held: {}", ready.text());
}

/// A key set over HTTPS from a private CA, trusted with `ca-file=`.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_set_over_https_with_a_private_ca() {
    let pki = Pki::new();
    let signer = Signer::eddsa(pki.dir.path(), "ed");
    let keys = KeyServer::start_tls(set(&[signer.jwk("only")]), &pki.server).await;
    let uri = format!(
        "jwt://?jwks={}&ca-file={}",
        keys.url(),
        pki.ca.cert.display()
    );
    let server = server(&uri);
    let mut client = authed(&server, &signer.sign_kid("only", &claims(&["a"], 60))).await;
    ok(&mut client, subscribe(&["a"])).await;
    // Without the CA the server's certificate is not trusted: no keys.
    let untrusted = MistServer::start(&[
        "--authenticator",
        &format!("jwt://?jwks={}", keys.url()),
        "--token",
        ADMIN,
    ]);
    untrusted.wait_for_log("the keys fetched before stay in use");
    let mut client = Client::connect(&untrusted.tcp()).await;
    let error = refused(
        &mut client,
        auth(&signer.sign_kid("only", &claims(&["a"], 60))),
    )
    .await;
    assert!(error.starts_with("unknown signing key"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_bad_key_file_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.pem");
    let not_a_key = dir.path().join("junk.pem");
    std::fs::write(&not_a_key, "not a key").unwrap();
    for (uri, file) in [
        (format!("jwt://?public-key={}", missing.display()), &missing),
        (
            format!("jwt://?public-key={}", not_a_key.display()),
            &not_a_key,
        ),
        (
            format!("jwt://?secret-file={}", missing.display()),
            &missing,
        ),
    ] {
        let (status, log) = MistServer::run_to_exit(&[
            "--listeners",
            "tcp://127.0.0.1:0",
            "--authenticator",
            &uri,
            "--token",
            ADMIN,
        ]);
        assert!(!status.success());
        assert!(log.contains(&file.display().to_string()), "{log}");
    }
}

/// Two nodes, a Redis backplane, no shared store: each checks the same
/// token by itself, the same way; expiry revokes on the node holding the
/// connection, and nothing crosses after it.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_without_a_shared_store_enforce_the_same_token() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::hs256(dir.path(), "hs");
    let redis = Redis::start();
    let uri = signer.uri("&leeway=0s");
    let nodes: Vec<MistServer> = (0..2)
        .map(|_| {
            MistServer::start_with(
                &[
                    "--listeners",
                    "tcp://127.0.0.1:0",
                    "--cluster",
                    &redis.uri(),
                    "--authenticator",
                    &uri,
                    "--token",
                    ADMIN,
                ],
                1,
            )
        })
        .collect();
    let exp = now() + 3;
    let token = signer.sign(&json!({"tags": ["a", "fence"], "exp": exp}));
    let mut subscriber = authed(&nodes[0], &token).await;
    ok(&mut subscriber, subscribe(&["a"])).await;
    let mut publisher = authed(&nodes[1], &token).await;
    assert!(refused(&mut publisher, publish(&["b"], "x"))
        .await
        .starts_with("permission denied"));
    ok(&mut publisher, publish(&["a"], "across")).await;
    assert_eq!(subscriber.recv().await, delivery(&["a"], "across"));

    let (notice, at) = recv_timed(&mut subscriber).await;
    assert_eq!(notice["command"], "revoked");
    assert!(at <= u128::from(exp) * 1000 + 1000);
    // Both nodes now refuse the token; a fresh one on the subscriber's
    // connection lets it fence.
    assert!(refused(&mut publisher, publish(&["a"], "x"))
        .await
        .starts_with("token expired"));
    let fresh = signer.sign(&claims(&["a", "fence"], 600));
    ok(&mut subscriber, auth(&fresh)).await;
    ok(&mut subscriber, subscribe(&["fence"])).await;
    let mut publisher = authed(&nodes[1], &fresh).await;
    ok(&mut publisher, publish(&["a"], "after expiry")).await;
    ok(&mut publisher, publish(&["fence"], "fence")).await;
    assert_eq!(subscriber.recv().await, delivery(&["fence"], "fence"));
}
