//! Access control that holds (docs/protocol.md, "Tokens and admin mode"):
//! revocation reaches open connections at once, on every listener and with
//! every store; a closed connection leaves nothing a later one could
//! inherit; an unsubscribe is ordered with the deliveries around it.

use std::time::Duration;

use mist_e2e::client::delivery;
use mist_e2e::web::{await_sessions, server_with_all_listeners, EventStream, WsClient};
use mist_e2e::{artifacts, Client, MistServer, TIMEOUT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::auth::Store;

const ADMIN: &str = "admin-secret-access";

fn publish(tags: &[&str], data: &str) -> Value {
    json!({"command": "publish", "tags": tags, "data": data})
}

async fn authed(server: &MistServer, token: &str) -> Client {
    let mut client = Client::connect(&server.tcp()).await;
    client.send(json!({"command": "auth", "data": token})).await;
    assert!(client.sync().await.is_empty());
    client
}

/// A registered token's connections on TCP, WebSocket and SSE each lose
/// what `unset` takes, before the admin's next reply; `unregister` takes
/// the rest. Nothing published afterwards reaches them.
async fn revocation_is_immediate_on_every_listener(store: Store) {
    let server = server_with_all_listeners(&["--authenticator", &store.uri, "--token", ADMIN]);
    let mut admin = authed(&server, ADMIN).await;
    admin
        .send(json!({"command": "register", "tags": ["a", "b"], "data": "user"}))
        .await;
    assert!(admin.sync().await.is_empty());

    let mut tcp = authed(&server, "user").await;
    tcp.subscribe(&["a"]).await;
    tcp.subscribe(&["b"]).await;
    let ws_url = format!("ws://{}/subscribe/websocket", server.addr("ws"));
    let mut ws = WsClient::connect_with(&ws_url, &[("X-AUTH-TOKEN", "user")]).await;
    ws.subscribe(&["a", "b"]).await;
    let mut sse = EventStream::open(
        &server.addr("http"),
        "/subscribe?tags=a",
        &[("X-AUTH-TOKEN", "user")],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_line().await, ": subscribed");

    admin
        .send(json!({"command": "unset", "tags": ["a"], "data": "user"}))
        .await;
    assert!(admin.sync().await.is_empty(), "unset succeeds");
    // The admin has its pong: the revocation is done. Each connection was
    // told, and `list` shows what is left.
    let notice = tcp.recv().await;
    assert_eq!(
        (notice["command"].as_str(), &notice["tags"]),
        (Some("revoked"), &json!(["a"])),
        "{notice}"
    );
    assert_eq!(
        tcp.request(json!({"command": "list"})).await["data"],
        "[[\"b\"]]"
    );
    assert_eq!(ws.recv().await["tags"], json!(["a", "b"]));
    assert_eq!(
        ws.sync().await.len(),
        0,
        "nothing else queued for the WebSocket"
    );
    let last = sse.rest_until_end().await;
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(
        last[0]["command"], "revoked",
        "the SSE stream says why, then ends"
    );

    admin.send(publish(&["a"], "after unset")).await;
    assert!(admin.sync().await.is_empty());
    tcp.expect_nothing().await;
    assert!(ws.sync().await.is_empty());
    admin.send(publish(&["b"], "b still allowed")).await;
    assert!(admin.sync().await.is_empty());
    assert_eq!(tcp.recv().await, delivery(&["b"], "b still allowed"));

    admin
        .send(json!({"command": "unregister", "data": "user"}))
        .await;
    assert!(admin.sync().await.is_empty());
    assert_eq!(tcp.recv().await["tags"], json!(["b"]));
    assert_eq!(tcp.request(json!({"command": "list"})).await["data"], "[]");
    admin.send(publish(&["b"], "after unregister")).await;
    assert!(admin.sync().await.is_empty());
    tcp.expect_nothing().await;
}

macro_rules! for_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test(flavor = "multi_thread")]
               async fn $case() { super::$case(super::Store::memory()).await } )*
        }
        mod scribble {
            $( #[tokio::test(flavor = "multi_thread")]
               async fn $case() { super::$case(super::Store::scribble()).await } )*
        }
        mod postgres_store {
            $( #[tokio::test(flavor = "multi_thread")]
               async fn $case() { super::$case(super::Store::postgres()).await } )*
        }
    };
}

for_every_store!(revocation_is_immediate_on_every_listener);

/// A connection dies while one of its commands is still in flight (a
/// plugin command that waits) with a subscribe queued behind it; a new
/// connection takes its place. When the old command completes, nothing of
/// the old connection may reach the new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_connection_leaves_nothing_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.toml");
    std::fs::write(
        &plugins,
        format!(
            "[[plugin]]\npath = {:?}\n",
            artifacts().library("mist_fixture_faulty")
        ),
    )
    .unwrap();
    let server = server_with_all_listeners(&["--plugins", plugins.to_str().unwrap()]);
    let mut publisher = Client::connect(&server.tcp()).await;

    let old = tokio::net::TcpStream::connect(server.tcp()).await.unwrap();
    // Closing with linger 0 sends a reset, as a crashed client's host would.
    // (Deprecated because a non-zero linger blocks the dropping thread; a
    // zero linger never does.)
    #[allow(deprecated)]
    old.set_linger(Some(Duration::ZERO)).unwrap();
    let mut old = tokio::io::BufReader::new(old);
    old.write_all(b"{\"command\":\"subscribe\",\"tags\":[\"noise\"]}\n{\"command\":\"ping\"}\n")
        .await
        .unwrap();
    let mut pong = String::new();
    tokio::time::timeout(TIMEOUT, old.read_line(&mut pong))
        .await
        .expect("pong in time")
        .unwrap();
    assert!(pong.contains("pong"), "{pong}");
    old.write_all(b"{\"command\":\"hold\"}\n{\"command\":\"subscribe\",\"tags\":[\"secret\"]}\n")
        .await
        .unwrap();
    // `held` says the step is in flight, with the subscribe (read in the
    // same chunk) waiting behind it.
    let mut held = String::new();
    tokio::time::timeout(TIMEOUT, old.read_line(&mut held))
        .await
        .expect("held in time")
        .unwrap();
    assert!(held.contains("held"), "{held}");
    drop(old);
    // The broker notices when it next writes to the dead socket, and closes
    // the session while `hold` is still pending.
    publisher
        .send(publish(&["noise"], "to a dead socket"))
        .await;
    assert!(publisher.sync().await.is_empty());
    await_sessions(&server, "tcp", 2).await;

    let mut new = Client::connect(&server.tcp()).await;
    assert!(new.sync().await.is_empty());
    publisher.send(json!({"command": "release"})).await;
    assert!(publisher.sync().await.is_empty());
    // Give the released step a chance to misbehave (a sleep only widens the
    // window; no assertion waits on it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    publisher
        .send(publish(&["secret"], "for the old connection only"))
        .await;
    assert!(publisher.sync().await.is_empty());
    assert_eq!(new.request(json!({"command": "list"})).await["data"], "[]");
    new.expect_nothing().await;
}

/// Once the reply to a ping sent after an unsubscribe has arrived, no
/// delivery for that set follows it, even while another client floods.
#[tokio::test(flavor = "multi_thread")]
async fn an_unsubscribe_is_ordered_with_deliveries_under_a_flood() {
    // A small queue keeps the backlog the subscriber reads through short.
    let server = MistServer::start(&["--max-queue-bytes", "64KiB"]);
    for round in 0..10 {
        let mut subscriber = Client::connect(&server.tcp()).await;
        subscriber.subscribe(&["flood"]).await;
        let addr = server.tcp();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flooding = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut flooder = Client::connect(&addr).await;
                let line = "{\"command\":\"publish\",\"tags\":[\"flood\"],\"data\":\"x\"}\n";
                let chunk = line.repeat(200);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    flooder.send_raw(chunk.as_bytes()).await;
                }
            }
        });
        // Some deliveries arrive first: the flood is on.
        assert_eq!(subscriber.recv().await["command"], "publish");
        subscriber
            .send(json!({"command": "unsubscribe", "tags": ["flood"]}))
            .await;
        subscriber.send(json!({"command": "ping"})).await;
        // Everything up to the pong may be deliveries; nothing after it.
        loop {
            let line = subscriber.recv().await;
            if line["command"] == "ping" {
                break;
            }
            assert_eq!(line["command"], "publish", "round {round}: {line}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::timeout(TIMEOUT, flooding)
            .await
            .expect("flood stops")
            .expect("flooder");
        subscriber.expect_nothing().await;
    }
}

/// An SSE stream whose client is not reading, its queue full and dropping,
/// loses its subscription: the `revoked` notice is not dropped like a
/// delivery (it was, and the stream then never ended, receiving nothing),
/// so once the client reads again the stream ends with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_sse_stream_behind_a_full_queue_ends() {
    let server = server_with_all_listeners(&[
        "--authenticator",
        "memory://",
        "--token",
        ADMIN,
        "--max-queue-bytes",
        "64KiB",
    ]);
    let mut admin = authed(&server, ADMIN).await;
    admin
        .send(json!({"command": "register", "tags": ["a"], "data": "user"}))
        .await;
    assert!(admin.sync().await.is_empty());
    // A stream whose reader stops after the head: a small receive buffer,
    // so the broker's queue for it fills.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(server.addr("http").parse().unwrap())
        .await
        .unwrap();
    let mut stream = tokio::io::BufReader::new(stream);
    stream
        .write_all(b"GET /subscribe?tags=a HTTP/1.1\r\nHost: mist\r\nX-AUTH-TOKEN: user\r\n\r\n")
        .await
        .unwrap();
    let mut head = String::new();
    while !head.contains(": subscribed") {
        let read = tokio::time::timeout(TIMEOUT, stream.read_line(&mut head))
            .await
            .expect("head in time")
            .unwrap();
        assert!(read > 0, "closed early: {head}");
    }
    // Flood until deliveries to it are dropped: its queue is full.
    let payload = "f".repeat(8_000);
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        for _ in 0..20 {
            admin.send(publish(&["a"], &payload)).await;
        }
        admin.sync().await;
        let who = admin.request(json!({"command": "who"})).await;
        let who: Value = serde_json::from_str(who["data"].as_str().unwrap()).unwrap();
        if who["dropped"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never full: {who}");
    }
    admin
        .send(json!({"command": "unset", "tags": ["a"], "data": "user"}))
        .await;
    assert!(admin.sync().await.is_empty());
    // The client reads again: what was queued, the revocation, the end.
    let mut rest = Vec::new();
    tokio::time::timeout(
        TIMEOUT,
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest),
    )
    .await
    .expect("the stream ends")
    .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("event: revoked"),
        "{}",
        &rest[rest.len().saturating_sub(300)..]
    );
}
