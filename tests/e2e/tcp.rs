//! The model, the wire protocol and the size limit (docs/protocol.md), over
//! TCP against the real binary.

use mist_e2e::client::{delivery, error_of};
use mist_e2e::{Client, MistServer};
use serde_json::json;

async fn clients(server: &MistServer, n: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Client::connect(&server.tcp()).await);
    }
    out
}

#[tokio::test]
async fn the_seeds_table_holds() {
    let server = MistServer::start(&[]);
    let mut c = clients(&server, 4).await;
    c[0].subscribe(&["onefish"]).await;
    c[1].subscribe(&["onefish", "twofish"]).await;
    c[2].subscribe(&["onefish", "twofish", "redfish"]).await;
    let publisher = &mut c[3];
    publisher.publish(&["onefish"], "1").await;
    publisher.publish(&["onefish", "twofish"], "2").await;
    publisher
        .publish(&["onefish", "twofish", "redfish"], "3")
        .await;
    publisher.expect_nothing().await;

    assert_eq!(
        c[0].sync().await,
        [
            delivery(&["onefish"], "1"),
            delivery(&["onefish", "twofish"], "2"),
            delivery(&["onefish", "twofish", "redfish"], "3")
        ]
    );
    assert_eq!(
        c[1].sync().await,
        [
            delivery(&["onefish", "twofish"], "2"),
            delivery(&["onefish", "twofish", "redfish"], "3")
        ]
    );
    assert_eq!(
        c[2].sync().await,
        [delivery(&["onefish", "twofish", "redfish"], "3")]
    );
}

#[tokio::test]
async fn a_subscription_matches_any_superset_not_a_prefix() {
    // A prefix trie keyed on sorted tags gets this wrong: [b,d] ⊆ [a,b,d].
    let server = MistServer::start(&[]);
    let mut c = clients(&server, 3).await;
    c[0].subscribe(&["a", "c"]).await;
    c[1].subscribe(&["d", "b"]).await;
    c[2].publish(&["a", "b", "d"], "x").await;
    c[2].expect_nothing().await;
    c[0].expect_nothing().await;
    assert_eq!(c[1].sync().await, [delivery(&["a", "b", "d"], "x")]);
}

#[tokio::test]
async fn a_client_gets_a_message_once_however_many_subscriptions_match() {
    let server = MistServer::start(&[]);
    let mut c = clients(&server, 2).await;
    c[0].subscribe(&["a"]).await;
    c[0].subscribe(&["b"]).await;
    c[0].subscribe(&["a", "b"]).await;
    c[1].publish(&["a", "b", "c"], "once").await;
    c[1].expect_nothing().await;
    assert_eq!(c[0].sync().await, [delivery(&["a", "b", "c"], "once")]);
}

#[tokio::test]
async fn a_publisher_never_receives_its_own_message() {
    let server = MistServer::start(&[]);
    let mut c = clients(&server, 2).await;
    c[0].subscribe(&["news"]).await;
    c[1].subscribe(&["news"]).await;
    c[0].publish(&["news"], "from 0").await;
    c[0].expect_nothing().await;
    assert_eq!(c[1].sync().await, [delivery(&["news"], "from 0")]);
}

#[tokio::test]
async fn messages_are_not_stored() {
    let server = MistServer::start(&[]);
    let mut c = clients(&server, 2).await;
    c[1].publish(&["later"], "lost").await;
    c[1].expect_nothing().await;
    c[0].subscribe(&["later"]).await;
    c[0].expect_nothing().await;
    c[1].publish(&["later"], "kept").await;
    c[1].expect_nothing().await;
    assert_eq!(c[0].sync().await, [delivery(&["later"], "kept")]);
}

#[tokio::test]
async fn deliveries_keep_the_publishers_tags_and_data_exactly() {
    let server = MistServer::start(&[]);
    let mut c = clients(&server, 2).await;
    c[0].subscribe(&["b", "a"]).await;
    let data = "line one\nline \"two\" \u{e9}\u{1F600} \\ end";
    c[1].publish(&["z", "a", "b", "a"], data).await;
    c[1].expect_nothing().await;
    let got = c[0].sync().await;
    assert_eq!(got, [delivery(&["z", "a", "b", "a"], data)]);
    // And without data: delivered with empty data.
    c[1].send(json!({"command": "publish", "tags": ["a", "b"]}))
        .await;
    c[1].expect_nothing().await;
    assert_eq!(c[0].sync().await, [delivery(&["a", "b"], "")]);
}

#[tokio::test]
async fn unsubscribe_removes_exactly_that_tag_set() {
    let server = MistServer::start(&[]);
    let mut c = clients(&server, 2).await;
    c[0].subscribe(&["a"]).await;
    c[0].subscribe(&["a", "b"]).await;
    c[0].send(json!({"command": "unsubscribe", "tags": ["b", "a", "b"]}))
        .await;
    c[0].expect_nothing().await;
    assert_eq!(
        c[0].request(json!({"command": "list"})).await,
        json!({"command": "list", "data": "[[\"a\"]]"})
    );
    c[1].publish(&["a", "b"], "x").await;
    c[1].expect_nothing().await;
    assert_eq!(
        c[0].sync().await,
        [delivery(&["a", "b"], "x")],
        "[a] still matches"
    );
    // Unsubscribing a set not held changes nothing and is not an error.
    c[0].send(json!({"command": "unsubscribe", "tags": ["q"]}))
        .await;
    c[0].expect_nothing().await;
    c[0].send(json!({"command": "unsubscribe", "tags": ["a"]}))
        .await;
    c[0].expect_nothing().await;
    c[1].publish(&["a"], "y").await;
    c[1].expect_nothing().await;
    c[0].expect_nothing().await;
}

#[tokio::test]
async fn list_is_sorted_deduplicated_and_empty_when_nothing_is_held() {
    let server = MistServer::start(&[]);
    let mut c = Client::connect(&server.tcp()).await;
    assert_eq!(
        c.request(json!({"command": "list"})).await,
        json!({"command": "list", "data": "[]"})
    );
    c.subscribe(&["c"]).await;
    c.subscribe(&["b", "a", "a"]).await;
    c.subscribe(&["a"]).await;
    c.subscribe(&["a", "b"]).await;
    let reply = c.request(json!({"command": "list"})).await;
    assert_eq!(reply["command"], "list");
    let data: serde_json::Value = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!([["a"], ["a", "b"], ["c"]]));
}

#[tokio::test]
async fn messages_from_one_publisher_arrive_in_order() {
    let server = MistServer::start(&[]);
    let mut c = clients(&server, 2).await;
    c[0].subscribe(&["seq"]).await;
    let mut burst = String::new();
    for i in 0..2000 {
        // Alternate tag sets so ordering holds across different matches too.
        let tags = if i % 3 == 0 {
            json!(["seq", "x"])
        } else {
            json!(["seq"])
        };
        burst.push_str(
            &json!({"command": "publish", "tags": tags, "data": i.to_string()}).to_string(),
        );
        burst.push('\n');
    }
    c[1].send_raw(burst.as_bytes()).await;
    c[1].expect_nothing().await;
    let got = c[0].sync().await;
    let data: Vec<String> = got
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    assert_eq!(data, want);
}

#[tokio::test]
async fn every_bad_input_is_answered_and_the_connection_stays_usable() {
    let server = MistServer::start(&[]);
    let mut c = Client::connect(&server.tcp()).await;
    let cases = [
        ("not json at all", ""),
        ("{\"command\":", ""),
        ("[1,2]", ""),
        ("{\"tags\":[\"a\"]}", ""),
        ("{\"command\":\"dance\"}", "dance"),
        ("{\"command\":\"subscribe\"}", "subscribe"),
        ("{\"command\":\"subscribe\",\"tags\":[]}", "subscribe"),
        ("{\"command\":\"subscribe\",\"tags\":[\"\"]}", "subscribe"),
        (
            "{\"command\":\"unsubscribe\",\"tags\":\"a\"}",
            "unsubscribe",
        ),
        ("{\"command\":\"publish\",\"data\":\"x\"}", "publish"),
        (
            "{\"command\":\"publish\",\"tags\":[\"a\",\"\"],\"data\":\"x\"}",
            "publish",
        ),
        (
            "{\"command\":\"publish\",\"tags\":[\"a\"],\"data\":5}",
            "publish",
        ),
        (
            "{\"command\":\"publish\",\"tags\":[1],\"data\":\"x\"}",
            "publish",
        ),
    ];
    for (line, command) in cases {
        c.send_raw(format!("{line}\n").as_bytes()).await;
        let reply = c.recv().await;
        assert_eq!(reply["command"], command, "reply to {line}: {reply}");
        assert!(!error_of(&reply).is_empty(), "reply to {line}: {reply}");
    }
    // Invalid UTF-8 is not JSON either.
    c.send_raw(b"{\"command\":\"ping\xff\"}\n").await;
    assert_eq!(c.recv().await["command"], "");
    // Blank lines and CRLF line ends are tolerated.
    c.send_raw(b"\n\r\n{\"command\":\"ping\"}\r\n").await;
    assert_eq!(c.recv().await, json!({"command": "ping", "data": "pong"}));
    c.expect_nothing().await;
}

#[tokio::test]
async fn a_line_may_arrive_in_pieces() {
    let server = MistServer::start(&[]);
    let mut c = Client::connect(&server.tcp()).await;
    for piece in [
        &b"{\"comm"[..],
        b"and\":\"pi",
        b"ng\"}",
        b"\n{\"command\":\"ping\"}\n",
    ] {
        c.send_raw(piece).await;
    }
    assert_eq!(c.recv().await["data"], "pong");
    assert_eq!(c.recv().await["data"], "pong");
}

#[tokio::test]
async fn an_oversized_line_is_refused_and_discarded_and_the_connection_goes_on() {
    let server = MistServer::start(&["--max-message-bytes", "1000"]);
    let mut c = clients(&server, 2).await;
    c[0].subscribe(&["big"]).await;

    // 2,000 bytes without its newline: over the limit, arriving in pieces.
    let data = "x".repeat(2000 - r#"{"command":"publish","tags":["big"],"data":""}"#.len());
    let line = json!({"command": "publish", "tags": ["big"], "data": data}).to_string();
    assert_eq!(line.len(), 2000);
    c[1].send_raw(&line.as_bytes()[..700]).await;
    c[1].send_raw(&line.as_bytes()[700..]).await;
    c[1].send_raw(b"\n").await;
    let reply = c[1].recv().await;
    assert_eq!(reply["command"], "");
    assert!(error_of(&reply).contains("2000 bytes"), "{reply}");
    assert!(error_of(&reply).contains("1000"), "{reply}");

    // Exactly the limit is accepted.
    let data = "y".repeat(1000 - r#"{"command":"publish","tags":["big"],"data":""}"#.len());
    let line = json!({"command": "publish", "tags": ["big"], "data": data}).to_string();
    assert_eq!(line.len(), 1000);
    c[1].send_raw(format!("{line}\n").as_bytes()).await;
    c[1].expect_nothing().await;
    assert_eq!(
        c[0].sync().await,
        [delivery(&["big"], &data)],
        "nothing of the oversized line leaked"
    );
}

#[tokio::test]
async fn commands_take_effect_in_order_and_replies_keep_their_order() {
    let server = MistServer::start(&[]);
    let mut c = clients(&server, 2).await;
    // Everything in one write: the subscription is live before the ping's reply.
    c[0].send_raw(b"{\"command\":\"subscribe\",\"tags\":[\"o\"]}\n{\"command\":\"list\"}\n{\"command\":\"ping\"}\n").await;
    assert_eq!(
        c[0].recv().await,
        json!({"command": "list", "data": "[[\"o\"]]"})
    );
    assert_eq!(
        c[0].recv().await,
        json!({"command": "ping", "data": "pong"})
    );
    c[1].send_raw(b"{\"command\":\"publish\",\"tags\":[\"o\"],\"data\":\"1\"}\n{\"command\":\"nope\"}\n{\"command\":\"publish\",\"tags\":[\"o\"],\"data\":\"2\"}\n").await;
    assert_eq!(c[1].recv().await["command"], "nope");
    c[1].expect_nothing().await;
    c[0].send(json!({"command": "list"})).await;
    // Deliveries queued before the list request come before its reply.
    assert_eq!(c[0].recv().await, delivery(&["o"], "1"));
    assert_eq!(c[0].recv().await, delivery(&["o"], "2"));
    assert_eq!(c[0].recv().await["command"], "list");
}

#[tokio::test]
async fn without_an_authenticator_auth_is_ignored_and_who_answers() {
    let server = MistServer::start(&[]);
    let mut c = clients(&server, 2).await;
    c[0].send(json!({"command": "auth", "data": "anything"}))
        .await;
    c[0].expect_nothing().await;
    c[0].subscribe(&["a"]).await;
    c[0].send(json!({"command": "auth", "data": "later"})).await;
    c[0].expect_nothing().await;
    let who = c[1].request(json!({"command": "who"})).await;
    assert_eq!(who["command"], "who");
    let stats: serde_json::Value = serde_json::from_str(who["data"].as_str().unwrap()).unwrap();
    assert_eq!(stats["connections"], 2);
    assert_eq!(stats["listeners"]["tcp"], 2);
    assert_eq!(stats["subscriptions"], 1);
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_no_session_behind() {
    let server = MistServer::start(&[]);
    let mut watcher = Client::connect(&server.tcp()).await;
    {
        let mut gone = Client::connect(&server.tcp()).await;
        gone.subscribe(&["x"]).await;
        let who = watcher.request(json!({"command": "who"})).await;
        assert!(
            who["data"].as_str().unwrap().contains("\"connections\":2"),
            "{who}"
        );
    }
    // The connection is closed; the broker notices within a bounded time.
    let deadline = std::time::Instant::now() + mist_e2e::TIMEOUT;
    loop {
        let who = watcher.request(json!({"command": "who"})).await;
        let stats: serde_json::Value = serde_json::from_str(who["data"].as_str().unwrap()).unwrap();
        if stats["connections"] == 1 && stats["subscriptions"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "session not removed: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn replies_are_written_before_the_connection_closes() {
    // `printf ... | nc`: all input, then end of input; every reply still arrives.
    let server = MistServer::start(&[]);
    let mut c = Client::connect(&server.tcp()).await;
    c.send_raw(b"{\"command\":\"ping\"}\n{\"command\":\"list\"}\n{\"command\":\"bad\"}\n")
        .await;
    c.shutdown().await;
    assert_eq!(c.recv().await["command"], "ping");
    assert_eq!(c.recv().await["command"], "list");
    assert_eq!(c.recv().await["command"], "bad");
    assert!(c.closed().await);
}

#[tokio::test]
async fn a_slow_subscriber_loses_only_its_own_newest_messages() {
    // A 1 MiB queue and a subscriber that never reads, while 30 MB go
    // out, far past what socket buffers absorb. The publisher is paced by
    // the fast subscriber only: it is never held up by the slow one, the
    // fast one gets everything, and the slow one's drops are counted and
    // logged.
    let server = MistServer::start(&["--max-queue-bytes", "1048576"]);
    let mut c = clients(&server, 3).await;
    c[0].subscribe(&["flood"]).await; // never reads again
    c[1].subscribe(&["flood"]).await;
    let total = 30_000;
    let chunk = 300;
    let line = format!(
        "{}\n",
        json!({"command": "publish", "tags": ["flood"], "data": "p".repeat(1000)})
    );
    let mut fast = c.remove(1);
    let (progress, mut received) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        for n in 1..=total {
            assert_eq!(fast.recv().await["command"], "publish");
            progress.send_replace(n);
        }
        fast.expect_nothing().await;
    });
    let publisher = &mut c[1];
    let burst = line.repeat(chunk);
    for sent in (chunk..=total).step_by(chunk) {
        publisher.send_raw(burst.as_bytes()).await;
        tokio::time::timeout(mist_e2e::TIMEOUT, received.wait_for(|&n| n >= sent))
            .await
            .expect("the fast subscriber keeps receiving")
            .unwrap();
    }
    reader.await.unwrap();
    let who = publisher.request(json!({"command": "who"})).await;
    let stats: serde_json::Value = serde_json::from_str(who["data"].as_str().unwrap()).unwrap();
    assert_eq!(stats["messages_in"], total);
    let dropped = stats["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "drops are counted: {stats}");
    assert_eq!(
        stats["messages_out"].as_u64().unwrap() + dropped,
        2 * total as u64,
        "{stats}"
    );
    server.wait_for_log("not keeping up");
}
