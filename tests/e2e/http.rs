//! The HTTP listener (docs/protocol.md, "HTTP endpoints"): `/ping`,
//! `POST /publish`, Server-Sent Events on `/subscribe`, JSON errors, and
//! traffic across listeners.

use mist_e2e::client::delivery;
use mist_e2e::web::{
    await_sessions, http, http_publish, server_with_all_listeners as server, EventStream, WsClient,
};
use mist_e2e::Client;
use serde_json::json;
use std::process::Command;

#[tokio::test]
async fn ping_answers_pong() {
    let server = server(&[]);
    let response = http(&server.addr("http"), "GET", "/ping", &[], b"").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "pong");
}

#[tokio::test]
async fn curl_can_ping_and_publish() {
    let server = server(&[]);
    let http_addr = server.addr("http");
    let mut subscriber = Client::connect(&server.tcp()).await;
    subscriber.subscribe(&["curl"]).await;

    let ping = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{http_addr}/ping"),
        ])
        .output()
        .expect("curl runs");
    assert!(ping.status.success(), "{ping:?}");
    assert_eq!(String::from_utf8_lossy(&ping.stdout), "pong");

    let publish = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"tags":["curl","x"],"data":"from curl"}"#,
            &format!("http://{http_addr}/publish"),
        ])
        .output()
        .expect("curl runs");
    assert_eq!(
        String::from_utf8_lossy(&publish.stdout),
        "204",
        "{publish:?}"
    );
    assert_eq!(
        subscriber.recv().await,
        delivery(&["curl", "x"], "from curl")
    );
}

#[tokio::test]
async fn publish_reaches_tcp_and_websocket_subscribers() {
    let server = server(&[]);
    let mut tcp = Client::connect(&server.tcp()).await;
    tcp.subscribe(&["news"]).await;
    let mut ws = WsClient::connect(&format!("ws://{}/", server.addr("ws"))).await;
    ws.subscribe(&["news", "sport"]).await;
    let mut web =
        WsClient::connect(&format!("ws://{}/subscribe/websocket", server.addr("http"))).await;
    web.subscribe(&["sport"]).await;

    let response = http_publish(
        &server.addr("http"),
        json!({"tags": ["sport", "news"], "data": "goal"}),
        None,
    )
    .await;
    assert_eq!(response.status, 204, "{}", response.text());
    assert!(response.body.is_empty());

    let expected = delivery(&["sport", "news"], "goal");
    assert_eq!(tcp.recv().await, expected);
    assert_eq!(ws.recv().await, expected);
    assert_eq!(web.recv().await, expected);

    // A `command` field is allowed and ignored: still a publish.
    let response = http_publish(
        &server.addr("http"),
        json!({"command": "subscribe", "tags": ["news"], "data": "still a publish"}),
        None,
    )
    .await;
    assert_eq!(response.status, 204, "{}", response.text());
    assert_eq!(tcp.recv().await, delivery(&["news"], "still a publish"));
    assert!(tcp.sync().await.is_empty(), "it subscribed nobody");
    // Exactly once each: nothing else is queued before a pong.
    assert!(tcp.sync().await.is_empty());
    assert!(ws.sync().await.is_empty());
    assert!(web.sync().await.is_empty());
}

#[tokio::test]
async fn bad_publishes_get_json_errors_and_deliver_nothing() {
    let server = server(&["--max-message-bytes", "1024"]);
    let addr = server.addr("http");
    let mut subscriber = Client::connect(&server.tcp()).await;
    subscriber.subscribe(&["a"]).await;

    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{not json", 400, "not JSON"),
        (b"[1,2]", 400, "JSON object"),
        (br#"{"data":"no tags"}"#, 400, "tags"),
        (br#"{"tags":[],"data":"empty tags"}"#, 400, "tags"),
        (br#"{"tags":["a"],"data":5}"#, 400, "data"),
    ];
    for (body, status, words) in cases {
        let response = http(
            &addr,
            "POST",
            "/publish",
            &[("Content-Type", "application/json")],
            body,
        )
        .await;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(response.status, status, "{shown}: {}", response.text());
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{shown}"
        );
        let error = response.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(words), "{shown}: {error}");
    }

    let big = json!({"tags": ["a"], "data": "x".repeat(2000)});
    let response = http_publish(&addr, big, None).await;
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(response.json()["error"]
        .as_str()
        .unwrap()
        .contains("too large"));

    assert!(
        subscriber.sync().await.is_empty(),
        "a refused publish delivered something"
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let server = server(&[]);
    let addr = server.addr("http");
    let response = http(&addr, "GET", "/nowhere", &[], b"").await;
    assert_eq!(response.status, 404);
    assert!(response.json()["error"]
        .as_str()
        .unwrap()
        .contains("/nowhere"));

    let response = http(&addr, "GET", "/publish", &[], b"").await;
    assert_eq!(response.status, 405);
    assert!(response.json()["error"].as_str().unwrap().contains("GET"));

    let response = http(&addr, "GET", "/subscribe/websocket", &[], b"").await;
    assert_eq!(response.status, 400);
    assert!(response.json()["error"]
        .as_str()
        .unwrap()
        .contains("WebSocket"));
}

#[tokio::test]
async fn server_sent_events_carry_deliveries() {
    let server = server(&[]);
    let mut events = EventStream::open(&server.addr("http"), "/subscribe?tags=red,fish", &[]).await;
    assert_eq!(events.status, 200);
    assert_eq!(
        events
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str()),
        Some("text/event-stream")
    );
    // The comment is sent once the subscription is live: the barrier.
    assert_eq!(events.next_line().await, ": subscribed");

    let mut publisher = Client::connect(&server.tcp()).await;
    publisher.publish(&["fish"], "not for it").await;
    publisher
        .publish(&["blue", "fish", "red"], "line one\nline two")
        .await;
    publisher.publish(&["red", "fish"], "second").await;
    assert!(publisher.sync().await.is_empty());

    assert_eq!(
        events.next_event().await,
        delivery(&["blue", "fish", "red"], "line one\nline two")
    );
    assert_eq!(
        events.next_event().await,
        delivery(&["red", "fish"], "second")
    );
}

#[tokio::test]
async fn server_sent_events_need_tags() {
    let server = server(&[]);
    let events = EventStream::open(&server.addr("http"), "/subscribe", &[]).await;
    assert_eq!(events.status, 400);
    let body = events.error_body().await;
    assert!(
        body["error"].as_str().unwrap().contains("missing tags"),
        "{body}"
    );
}

#[tokio::test]
async fn an_event_stream_client_that_goes_away_leaves_no_session() {
    let server = server(&[]);
    let mut events = EventStream::open(&server.addr("http"), "/subscribe?tags=gone", &[]).await;
    assert_eq!(events.next_line().await, ": subscribed");
    await_sessions(&server, "http", 1).await;
    drop(events);
    // The stream notices on its next write or poll of the connection.
    let mut publisher = Client::connect(&server.tcp()).await;
    publisher.publish(&["gone"], "anyone?").await;
    await_sessions(&server, "http", 0).await;
}

#[tokio::test]
async fn a_tcp_publish_reaches_event_stream_and_http_websocket() {
    let server = server(&[]);
    let mut events = EventStream::open(&server.addr("http"), "/subscribe?tags=x", &[]).await;
    assert_eq!(events.next_line().await, ": subscribed");
    let mut web =
        WsClient::connect(&format!("ws://{}/subscribe/websocket", server.addr("http"))).await;
    web.subscribe(&["x"]).await;
    let mut tcp = Client::connect(&server.tcp()).await;
    tcp.publish(&["x", "y"], "back").await;
    let reply = tcp.sync().await;
    assert!(reply.is_empty(), "{reply:?}");
    assert_eq!(events.next_event().await, delivery(&["x", "y"], "back"));
    assert_eq!(web.recv().await, delivery(&["x", "y"], "back"));

    // And the WebSocket on the http port can publish to the TCP client.
    tcp.subscribe(&["z"]).await;
    web.send(json!({"command": "publish", "tags": ["z"], "data": "to tcp"}))
        .await;
    assert!(web.sync().await.is_empty());
    assert_eq!(tcp.recv().await, delivery(&["z"], "to tcp"));
}
