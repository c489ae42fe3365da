//! The client library against the real `mist` binary, over TCP and
//! WebSocket. Every wait is bounded by `TIMEOUT`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use mist_client::{Client, Error, Message};
use mist_e2e::web::server_with_all_listeners;
use mist_e2e::{MistServer, TIMEOUT};

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .expect("the client did not answer in time")
}

fn message(tags: &[&str], data: &str) -> Message {
    Message {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        data: data.into(),
    }
}

#[tokio::test]
async fn the_commands_work_over_tcp_and_websocket() {
    let server = server_with_all_listeners(&[]);
    let tcp = within(Client::connect(&server.tcp(), None)).await.unwrap();
    let ws_url = format!("ws://{}/subscribe/websocket", server.addr("ws"));
    let ws = within(Client::connect(&ws_url, None)).await.unwrap();

    within(tcp.ping()).await.unwrap();
    within(ws.ping()).await.unwrap();
    within(tcp.subscribe(&["b", "a"])).await.unwrap();
    within(tcp.subscribe(&["c"])).await.unwrap();
    assert_eq!(
        within(tcp.list()).await.unwrap(),
        [vec!["a", "b"], vec!["c"]]
    );

    within(ws.publish(&["a", "b", "x"], "over ws"))
        .await
        .unwrap();
    assert_eq!(
        within(tcp.next_message()).await.unwrap(),
        message(&["a", "b", "x"], "over ws")
    );

    within(ws.subscribe(&["back"])).await.unwrap();
    within(tcp.publish(&["back"], "line\nbreak \"quoted\""))
        .await
        .unwrap();
    assert_eq!(
        within(ws.next_message()).await.unwrap(),
        message(&["back"], "line\nbreak \"quoted\"")
    );

    within(tcp.unsubscribe(&["a", "b"])).await.unwrap();
    assert_eq!(within(tcp.list()).await.unwrap(), [vec!["c"]]);
    within(ws.publish(&["a", "b"], "gone")).await.unwrap();
    within(tcp.ping()).await.unwrap();

    let who = within(tcp.who()).await.unwrap();
    assert_eq!(who.connections, 2, "{who:?}");
    assert_eq!(who.listeners.get("ws"), Some(&1), "{who:?}");
    assert_eq!(who.subscriptions, 2, "{who:?}");
    assert_eq!(tcp.dropped(), 0);
}

#[tokio::test]
async fn answers_reach_their_callers_while_deliveries_stream_in() {
    let server = MistServer::start(&[]);
    let subscriber = Arc::new(within(Client::connect(&server.tcp(), None)).await.unwrap());
    within(subscriber.subscribe(&["flood"])).await.unwrap();
    let publisher = within(Client::connect(&server.tcp(), None)).await.unwrap();

    const COUNT: usize = 2000;
    let flood = tokio::spawn(async move {
        for i in 0..COUNT {
            publisher.publish(&["flood"], &i.to_string()).await.unwrap();
        }
    });
    // Commands on the subscriber interleave with the deliveries.
    let asker = {
        let subscriber = subscriber.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                assert_eq!(subscriber.list().await.unwrap(), [vec!["flood"]]);
                subscriber.ping().await.unwrap();
            }
        })
    };
    for i in 0..COUNT {
        let got = within(subscriber.next_message()).await.unwrap();
        assert_eq!(got, message(&["flood"], &i.to_string()));
    }
    within(flood).await.unwrap();
    within(asker).await.unwrap();
}

#[tokio::test]
async fn error_replies_become_typed_errors_and_the_connection_stays() {
    let server = MistServer::start(&["--max-message-bytes", "200"]);
    let client = within(Client::connect(&server.tcp(), None)).await.unwrap();
    let error = within(client.publish(&["a"], &"x".repeat(500)))
        .await
        .unwrap_err();
    match &error {
        Error::Server { message, .. } => assert!(message.contains("too large"), "{error}"),
        other => panic!("expected a server error, got {other:?}"),
    }
    assert!(matches!(
        within(client.subscribe::<&str>(&[])).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        within(client.publish(&["a", ""], "x")).await,
        Err(Error::Invalid(_))
    ));
    within(client.ping()).await.unwrap();
}

#[tokio::test]
async fn a_refused_token_is_an_auth_error() {
    let server = MistServer::start(&["--authenticator", "memory://", "--token", "s3cret"]);
    let error = within(Client::connect(&server.tcp(), Some("wrong")))
        .await
        .err()
        .expect("a wrong token is refused");
    assert!(matches!(error, Error::Auth(_)), "{error:?}");

    let admin = within(Client::connect(&server.tcp(), Some("s3cret")))
        .await
        .unwrap();
    assert!(within(admin.who()).await.unwrap().connections >= 1);

    let anonymous = within(Client::connect(&server.tcp(), None)).await.unwrap();
    within(anonymous.ping()).await.unwrap();
    let error = within(anonymous.who()).await.unwrap_err();
    assert!(matches!(error, Error::Server { .. }), "{error:?}");
}

#[tokio::test]
async fn a_closed_connection_ends_the_stream_and_every_call() {
    let mut server = MistServer::start(&[]);
    let client = within(Client::connect(&server.tcp(), None)).await.unwrap();
    within(client.subscribe(&["x"])).await.unwrap();
    server.terminate();
    assert!(matches!(
        within(client.next_message()).await,
        Err(Error::Closed)
    ));
    let error = within(client.ping()).await.unwrap_err();
    assert!(matches!(error, Error::Closed | Error::Io(_)), "{error:?}");
    assert!(matches!(within(client.ping()).await, Err(Error::Closed)));
}

#[tokio::test]
async fn an_unreachable_broker_is_a_connect_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    for target in [
        format!("127.0.0.1:{port}"),
        format!("ws://127.0.0.1:{port}/"),
    ] {
        let error = within(Client::connect(&target, None))
            .await
            .err()
            .expect("nothing listens there");
        assert!(matches!(error, Error::Connect { .. }), "{error:?}");
        assert!(error.to_string().contains(&target), "{error}");
    }
}

#[tokio::test]
async fn dropping_the_client_closes_its_session() {
    let server = server_with_all_listeners(&[]);
    let ws_url = format!("ws://{}/", server.addr("ws"));
    let client = within(Client::connect(&ws_url, None)).await.unwrap();
    within(client.ping()).await.unwrap();
    mist_e2e::web::await_sessions(&server, "ws", 1).await;
    drop(client);
    mist_e2e::web::await_sessions(&server, "ws", 0).await;
}

/// A TCP proxy to `upstream` for one connection: the broker's bytes flow at
/// once, the client's only after the returned gate is opened, so a test can
/// hold the client's writes mid-way.
async fn gated_proxy(upstream: String) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (gate, opened) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let broker = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_broker, mut to_broker) = broker.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut from_broker, &mut to_client).await });
        if opened.await.is_ok() {
            let _ = tokio::io::copy(&mut from_client, &mut to_broker).await;
        }
    });
    (addr, gate)
}

/// Polls `future` once and drops it, asserting it had not finished.
async fn poll_once_and_drop<T>(future: impl std::future::Future<Output = T>) {
    tokio::select! {
        biased;
        _ = future => panic!("the request finished although the broker cannot have answered"),
        () = std::future::ready(()) => {}
    }
}

#[tokio::test]
async fn a_dropped_request_does_not_shift_later_answers() {
    let server = MistServer::start(&[]);
    let (addr, gate) = gated_proxy(server.tcp()).await;
    let client = within(Client::connect(&addr, None)).await.unwrap();
    // More than the socket buffers hold: while the proxy holds the client's
    // bytes back, this request is still being written when its caller gives
    // up. (The broker refuses it as too large; nobody hears that.)
    let big = "x".repeat(32 << 20);
    poll_once_and_drop(client.publish(&["big"], &big)).await;
    // Given up on before its turn to be written.
    poll_once_and_drop(client.list()).await;
    poll_once_and_drop(client.ping()).await;
    gate.send(()).unwrap();

    within(client.subscribe(&["mine"])).await.unwrap();
    assert_eq!(within(client.list()).await.unwrap(), [vec!["mine"]]);
    within(client.ping()).await.unwrap();
    within(client.subscribe(&["also"])).await.unwrap();
    assert_eq!(
        within(client.list()).await.unwrap(),
        [vec!["also"], vec!["mine"]]
    );
}

#[tokio::test]
async fn a_request_dropped_while_waiting_for_its_answer_leaves_the_next_one_its_own() {
    let server = MistServer::start(&[]);
    let (addr, gate) = gated_proxy(server.tcp()).await;
    let client = within(Client::connect(&addr, None)).await.unwrap();
    // Written (the proxy holds it) but unanswered when dropped.
    let mut list = Box::pin(client.list());
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), list.as_mut())
            .await
            .is_err(),
        "no answer can come while the proxy holds the request"
    );
    drop(list);
    gate.send(()).unwrap();
    within(client.subscribe(&["s"])).await.unwrap();
    within(client.ping()).await.unwrap();
    assert_eq!(within(client.list()).await.unwrap(), [vec!["s"]]);
}

/// Reads newline-terminated lines from a test's fake broker socket.
async fn read_line(
    reader: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> Option<String> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    match reader.read_line(&mut line).await.unwrap() {
        0 => None,
        _ => Some(line.trim_end().to_string()),
    }
}

#[tokio::test]
async fn a_line_longer_than_the_limit_ends_the_connection_with_a_clear_error() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // A hostile broker: answers the first request with a line that never
    // ends, until the client hangs up or 256 MiB have gone out.
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        let mut read = tokio::io::BufReader::new(read);
        read_line(&mut read).await.unwrap();
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0usize;
        while sent < 256 << 20 && write.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let client = within(Client::connect(&addr, None)).await.unwrap();
    let error = within(client.ping()).await.unwrap_err();
    assert!(
        matches!(error, Error::LineTooLong { limit } if limit == mist_client::MAX_LINE_BYTES),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("longer than 16777216 bytes"),
        "{error}"
    );
    assert!(matches!(within(client.ping()).await, Err(Error::Closed)));
    assert!(matches!(
        within(client.next_message()).await,
        Err(Error::Closed)
    ));
    drop(client);
    let sent = within(server).await.unwrap();
    // The limit plus what the socket buffers held: the client stopped
    // reading at the limit instead of buffering the whole line.
    assert!(sent < 64 << 20, "the client took {sent} bytes of one line");
}

#[tokio::test]
async fn a_revoked_notice_is_not_an_answer_and_can_be_read() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // A broker that, as a token's tags are revoked, sends its notices in
    // between the lines of answers: one before any request, one inside the
    // answer to `list`, one between an answer and its pong.
    let revoked = |tag: &str| {
        format!(r#"{{"command":"revoked","tags":["{tag}"],"error":"permission revoked"}}"#)
    };
    let first = revoked("early");
    let (inside, before_pong) = (revoked("inside"), revoked("late"));
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        let mut read = tokio::io::BufReader::new(read);
        write
            .write_all(format!("{first}\n").as_bytes())
            .await
            .unwrap();
        while let Some(line) = read_line(&mut read).await {
            let out = match line.as_str() {
                r#"{"command":"list"}"# => {
                    format!("{inside}\n{{\"command\":\"list\",\"data\":\"[[\\\"b\\\"]]\"}}\n")
                }
                r#"{"command":"ping"}"# => {
                    format!("{before_pong}\n{{\"command\":\"ping\",\"data\":\"pong\"}}\n")
                }
                other => panic!("unexpected request {other}"),
            };
            write.write_all(out.as_bytes()).await.unwrap();
        }
    });
    let client = within(Client::connect(&addr, None)).await.unwrap();
    within(client.ping()).await.unwrap();
    assert_eq!(within(client.list()).await.unwrap(), [vec!["b"]]);
    within(client.ping()).await.unwrap();
    let mut tags = Vec::new();
    for _ in 0..5 {
        let notice = within(client.next_notice()).await.unwrap();
        assert_eq!(notice.command, "revoked");
        assert_eq!(notice.error, "permission revoked");
        tags.extend(notice.tags);
    }
    assert_eq!(tags, ["early", "late", "inside", "late", "late"]);
    assert_eq!(client.notices_dropped(), 0);
}

#[tokio::test]
async fn a_revocation_by_the_broker_arrives_as_a_notice_and_answers_stay_in_place() {
    use serde_json::json;
    let server = MistServer::start(&["--authenticator", "memory://", "--token", "admin-7e1d"]);
    let mut admin = mist_e2e::Client::connect(&server.tcp()).await;
    admin
        .send(json!({"command": "auth", "data": "admin-7e1d"}))
        .await;
    admin
        .send(json!({"command": "register", "tags": ["a", "b"], "data": "user-5c2f"}))
        .await;
    assert!(admin.sync().await.is_empty());

    let user = within(Client::connect(&server.tcp(), Some("user-5c2f")))
        .await
        .unwrap();
    within(user.subscribe(&["a"])).await.unwrap();
    within(user.subscribe(&["a", "b"])).await.unwrap();
    within(user.subscribe(&["b"])).await.unwrap();
    admin
        .send(json!({"command": "unset", "tags": ["a"], "data": "user-5c2f"}))
        .await;
    assert!(admin.sync().await.is_empty());

    // The notices arrived before this answer: it is list's own, not an error.
    assert_eq!(within(user.list()).await.unwrap(), [vec!["b"]]);
    let mut revoked = Vec::new();
    for _ in 0..2 {
        let notice = within(user.next_notice()).await.unwrap();
        assert_eq!(notice.command, "revoked", "{notice:?}");
        assert!(!notice.error.is_empty(), "{notice:?}");
        revoked.push(notice.tags);
    }
    revoked.sort();
    assert_eq!(revoked, [vec!["a"], vec!["a", "b"]]);
    within(user.ping()).await.unwrap();
    assert_eq!(user.notices_dropped(), 0);
}
