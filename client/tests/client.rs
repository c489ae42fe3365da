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
