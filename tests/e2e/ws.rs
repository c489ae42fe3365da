//! The WebSocket listener (docs/protocol.md, "Framing"): one JSON message
//! per text frame, on the ws port and through the http port's upgrade.

use mist_e2e::client::{delivery, error_of};
use mist_e2e::web::{
    await_sessions, masked_text_frame, server_with_all_listeners as server, sessions_on, who,
    WsClient,
};
use mist_e2e::Client;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn text_frames_carry_the_protocol_on_both_paths() {
    let server = server(&[]);
    let ws = server.addr("ws");
    let mut subscriber = WsClient::connect(&format!("ws://{ws}/subscribe/websocket")).await;
    let mut publisher = WsClient::connect(&format!("ws://{ws}/")).await;
    subscriber.subscribe(&["fish", "red"]).await;
    publisher
        .send(json!({"command": "publish", "tags": ["red", "fish", "blue"], "data": "one\ntwo"}))
        .await;
    publisher
        .send(json!({"command": "publish", "tags": ["fish"], "data": "no"}))
        .await;
    assert!(
        publisher.sync().await.is_empty(),
        "the publisher gets nothing back"
    );
    assert_eq!(
        subscriber.recv().await,
        delivery(&["red", "fish", "blue"], "one\ntwo")
    );
    let list = subscriber.sync().await;
    assert!(list.is_empty(), "{list:?}");
    subscriber.send(json!({"command": "list"})).await;
    assert_eq!(
        subscriber.recv().await,
        json!({"command": "list", "data": "[[\"fish\",\"red\"]]"})
    );
}

#[tokio::test]
async fn bad_frames_get_error_replies_and_the_connection_stays() {
    let server = server(&[]);
    let mut client =
        WsClient::connect(&format!("ws://{}/subscribe/websocket", server.addr("ws"))).await;
    client
        .send_frame(Message::binary(b"{\"command\":\"ping\"}".to_vec()))
        .await;
    let reply = client.recv().await;
    assert!(error_of(&reply).contains("binary frames"), "{reply}");
    client.send_frame(Message::text("not json")).await;
    let reply = client.recv().await;
    assert!(error_of(&reply).contains("invalid JSON"), "{reply}");
    client.send(json!({"command": "dance"})).await;
    let reply = client.recv().await;
    assert_eq!(reply["command"], "dance");
    assert!(error_of(&reply).contains("unknown command"), "{reply}");
    client
        .send(json!({"command": "subscribe", "tags": []}))
        .await;
    assert!(error_of(&client.recv().await).contains("missing tags"));
    // Still serving, in order.
    assert!(client.sync().await.is_empty());
}

/// Frames read together are fed to the broker together (one batch), but
/// each is still one message: one with newlines between its tokens and a
/// binary one in between are answered in order.
#[tokio::test]
async fn frames_read_together_stay_messages_in_order() {
    let server = server(&[]);
    let ws = server.addr("ws");
    let mut subscriber = WsClient::connect(&format!("ws://{ws}/subscribe/websocket")).await;
    let mut client = WsClient::connect(&format!("ws://{ws}/")).await;
    subscriber.subscribe(&["batch"]).await;
    let publish = |n: u32| {
        Message::text(
            json!({"command": "publish", "tags": ["batch"], "data": n.to_string()}).to_string(),
        )
    };
    client
        .send_frames(vec![
            publish(1),
            Message::text("{\"command\":\n\"list\"\n}"),
            publish(2),
            publish(3),
            Message::binary(b"{}".to_vec()),
            publish(4),
            Message::text(json!({"command": "ping"}).to_string()),
        ])
        .await;
    assert_eq!(
        client.recv().await,
        json!({"command": "list", "data": "[]"})
    );
    let binary = client.recv().await;
    assert!(error_of(&binary).contains("binary frames"), "{binary}");
    assert_eq!(
        client.recv().await,
        json!({"command": "ping", "data": "pong"})
    );
    for n in 1..=4 {
        assert_eq!(
            subscriber.recv().await,
            delivery(&["batch"], &n.to_string())
        );
    }
    assert!(client.sync().await.is_empty());
}

/// Messages read together with the start of a frame are delivered before
/// that frame is finished: a frame on its way holds nothing back.
#[tokio::test]
async fn messages_before_a_half_sent_frame_are_not_held_back() {
    let server = server(&[]);
    let ws = server.addr("ws");
    let mut subscriber = WsClient::connect(&format!("ws://{ws}/subscribe/websocket")).await;
    let mut client = WsClient::connect(&format!("ws://{ws}/")).await;
    subscriber.subscribe(&["half"]).await;
    let publish =
        |n: u32| json!({"command": "publish", "tags": ["half"], "data": n.to_string()}).to_string();
    let third = masked_text_frame(&publish(3));
    let mut first_write = masked_text_frame(&publish(1));
    first_write.extend(masked_text_frame(&publish(2)));
    first_write.extend_from_slice(&third[..third.len() / 2]);
    client.send_raw(&first_write).await;
    for n in 1..=2 {
        assert_eq!(subscriber.recv().await, delivery(&["half"], &n.to_string()));
    }
    client.send_raw(&third[third.len() / 2..]).await;
    assert_eq!(subscriber.recv().await, delivery(&["half"], "3"));
    assert!(client.sync().await.is_empty());
}

#[tokio::test]
async fn ping_frames_are_answered_and_close_is_a_handshake() {
    let server = server(&[]);
    let mut client = WsClient::connect(&format!("ws://{}/", server.addr("ws"))).await;
    client
        .send_frame(Message::Ping(b"hello".to_vec().into()))
        .await;
    match client.recv_frame().await {
        Message::Pong(payload) => assert_eq!(&payload[..], b"hello"),
        other => panic!("expected a pong frame, got {other:?}"),
    }
    client.close().await;
    await_sessions(&server, "ws", 0).await;
}

#[tokio::test]
async fn other_paths_are_not_upgraded() {
    let server = server(&[]);
    let url = format!("ws://{}/elsewhere", server.addr("ws"));
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404);
        }
        other => panic!("expected a 404 refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_token_in_header_or_query_is_accepted_without_an_authenticator() {
    let server = server(&[]);
    let ws = server.addr("ws");
    let mut by_header = WsClient::connect_with(
        &format!("ws://{ws}/subscribe/websocket"),
        &[("X-AUTH-TOKEN", "whatever")],
    )
    .await;
    let mut by_query = WsClient::connect(&format!(
        "ws://{ws}/subscribe/websocket?x-auth-token=whatever"
    ))
    .await;
    // Without an authenticator a token means nothing: both are ordinary
    // clients.
    by_header.subscribe(&["t"]).await;
    by_query
        .send(json!({"command": "publish", "tags": ["t"], "data": "d"}))
        .await;
    assert!(by_query.sync().await.is_empty());
    assert_eq!(by_header.recv().await, delivery(&["t"], "d"));
}

#[tokio::test]
async fn the_http_port_upgrades_to_the_same_protocol() {
    let server = server(&[]);
    let mut ws = WsClient::connect(&format!(
        "ws://{}/subscribe/websocket?x-auth-token=token",
        server.addr("http")
    ))
    .await;
    let mut tcp = Client::connect(&server.tcp()).await;
    ws.subscribe(&["web"]).await;
    tcp.publish(&["web"], "from tcp").await;
    assert_eq!(ws.recv().await, delivery(&["web"], "from tcp"));
    ws.send_frame(Message::binary(vec![1, 2])).await;
    assert!(error_of(&ws.recv().await).contains("binary frames"));
    tcp.subscribe(&["back"]).await;
    ws.send(json!({"command": "publish", "tags": ["back"], "data": "from ws"}))
        .await;
    assert_eq!(tcp.recv().await, delivery(&["back"], "from ws"));
    assert_eq!(sessions_on(&server, "http").await, 1);
}

#[tokio::test]
async fn a_client_that_vanishes_leaves_no_session() {
    let server = server(&[]);
    let mut publisher = Client::connect(&server.tcp()).await;
    let mut clients = Vec::new();
    for path in ["/", "/subscribe/websocket"] {
        let mut client = WsClient::connect(&format!("ws://{}{path}", server.addr("ws"))).await;
        client.subscribe(&["stream"]).await;
        clients.push(client);
    }
    let mut upgraded =
        WsClient::connect(&format!("ws://{}/subscribe/websocket", server.addr("http"))).await;
    upgraded.subscribe(&["stream"]).await;
    assert_eq!(sessions_on(&server, "ws").await, 2);
    assert_eq!(sessions_on(&server, "http").await, 1);
    // Mid-stream: deliveries are flowing when the clients drop their sockets.
    for i in 0..200 {
        publisher.publish(&["stream"], &format!("m{i}")).await;
    }
    for client in clients {
        client.vanish();
    }
    upgraded.vanish();
    for i in 0..200 {
        publisher.publish(&["stream"], &format!("n{i}")).await;
    }
    publisher.expect_nothing().await;
    await_sessions(&server, "ws", 0).await;
    await_sessions(&server, "http", 0).await;
    let figures = who(&server).await;
    assert_eq!(figures["subscriptions"], 0, "{figures}");
}

/// Reads text frames of a `mist.lines` WebSocket until `count` lines have
/// come: each frame must be whole `\n`-ended lines of JSON. Returns the
/// lines and how many frames carried them.
async fn read_lines(client: &mut WsClient, count: usize) -> (Vec<serde_json::Value>, usize) {
    let (mut lines, mut frames) = (Vec::new(), 0);
    while lines.len() < count {
        let Message::Text(text) = client.recv_frame().await else {
            continue;
        };
        frames += 1;
        assert!(text.ends_with('\n'), "a frame cut mid-line: {text:?}");
        for line in text.lines() {
            lines.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}")),
            );
        }
    }
    assert_eq!(lines.len(), count, "more lines than asked for: {lines:?}");
    (lines, frames)
}

/// A client offering the `mist.lines` subprotocol (among others) gets it,
/// on the ws port and through the http port's upgrade: its frames then
/// carry many lines each, both ways, read exactly as the TCP listener reads
/// lines (a bad one answered on its own, the rest served); a client that
/// did not ask, subscribed to the same messages, still gets one JSON
/// message per frame.
#[tokio::test]
async fn the_lines_subprotocol_carries_many_lines_per_frame_both_ways() {
    let server = server(&[]);
    let offer = [("sec-websocket-protocol", "chat, mist.lines")];
    let ws = server.addr("ws");
    let mut lines = WsClient::connect_with(&format!("ws://{ws}/subscribe/websocket"), &offer).await;
    assert_eq!(lines.protocol(), Some("mist.lines"));
    let through_http = WsClient::connect_with(
        &format!("ws://{}/subscribe/websocket", server.addr("http")),
        &offer,
    )
    .await;
    assert_eq!(through_http.protocol(), Some("mist.lines"));
    // Only mist.lines is agreed to: a client that required another gives up.
    let mut chat = format!("ws://{ws}/").into_client_request().unwrap();
    chat.headers_mut()
        .insert("sec-websocket-protocol", "chat".parse().unwrap());
    match tokio_tungstenite::connect_async(chat).await {
        Err(tokio_tungstenite::tungstenite::Error::Protocol(
            ProtocolError::SecWebSocketSubProtocolError(SubProtocolError::NoSubProtocol),
        )) => {}
        other => panic!(
            "expected no subprotocol agreed, got {:?}",
            other.map(|_| ())
        ),
    }
    let mut plain = WsClient::connect(&format!("ws://{ws}/")).await;
    assert_eq!(plain.protocol(), None);
    plain.subscribe(&["many"]).await;

    // Two commands in one frame, the last without its newline, a bad line
    // between them.
    lines
        .send_frame(Message::text(
            "{\"command\":\"subscribe\",\"tags\":[\"many\"]}\n{not json\n{\"command\":\"ping\"}",
        ))
        .await;
    let (replies, _) = read_lines(&mut lines, 2).await;
    assert!(
        error_of(&replies[0]).contains("invalid JSON"),
        "{replies:?}"
    );
    assert_eq!(replies[1], json!({"command": "ping", "data": "pong"}));
    // A frame over the size limit is refused whole, and the connection
    // stays.
    let huge = format!("{{\"command\":\"ping\"}}\n{}", "x".repeat(1_100_000));
    lines.send_frame(Message::text(huge)).await;
    lines
        .send_frame(Message::text("{\"command\":\"ping\"}"))
        .await;
    let (replies, _) = read_lines(&mut lines, 2).await;
    assert!(
        error_of(&replies[0]).contains("message too large"),
        "{replies:?}"
    );
    assert_eq!(replies[1], json!({"command": "ping", "data": "pong"}));

    // A publisher in the same mode: 100 publishes and a 20 KB one (past the
    // size fed in batches) in one frame each.
    let mut publisher =
        WsClient::connect_with(&format!("ws://{ws}/subscribe/websocket"), &offer).await;
    let mut frame = String::new();
    for n in 0..100 {
        frame +=
            &json!({"command": "publish", "tags": ["many"], "data": n.to_string()}).to_string();
        frame.push('\n');
    }
    publisher.send_frame(Message::text(frame)).await;
    let big = "x".repeat(20_000);
    let publish_big = json!({"command": "publish", "tags": ["many"], "data": big}).to_string();
    publisher
        .send_frame(Message::text(publish_big + "\n{\"command\":\"ping\"}\n"))
        .await;
    let (replies, _) = read_lines(&mut publisher, 1).await;
    assert_eq!(replies, [json!({"command": "ping", "data": "pong"})]);

    let (deliveries, frames) = read_lines(&mut lines, 101).await;
    for (n, message) in deliveries[..100].iter().enumerate() {
        assert_eq!(message, &delivery(&["many"], &n.to_string()));
    }
    assert_eq!(deliveries[100], delivery(&["many"], &big));
    assert!(
        frames < 50,
        "101 deliveries fed as two batches came in {frames} frames"
    );
    for n in 0..100 {
        assert_eq!(plain.recv().await, delivery(&["many"], &n.to_string()));
    }
    assert_eq!(plain.recv().await, delivery(&["many"], &big));
    assert!(plain.sync().await.is_empty());
}
