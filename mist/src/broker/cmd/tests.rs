//! The commands' behaviour through whole sessions: revocation, permission
//! checks overtaken by a revocation, caps, and what parsing refuses.

use serde_json::{json, Value};

use crate::broker::access::Token;
use crate::broker::limits::Limits;
use crate::broker::shared::Shared;
use crate::broker::testing::{admin_broker, open_broker, Client, ADMIN};

fn subscribe(tags: &[&str]) -> Value {
    json!({"command": "subscribe", "tags": tags})
}

fn publish(tags: &[&str], data: &str) -> Value {
    json!({"command": "publish", "tags": tags, "data": data})
}

async fn user(shared: &std::sync::Arc<Shared>, token: &str) -> Client {
    let client = Client::open(shared, None);
    assert!(client
        .request(&[json!({"command": "auth", "data": token})])
        .await
        .is_empty());
    client
}

#[tokio::test]
async fn unset_revokes_at_once_and_tells_the_session() {
    let (shared, store) = admin_broker(Limits::default());
    store.set("t", &["a", "b"]);
    let admin = Client::open(&shared, Some(ADMIN));
    let user = user(&shared, "t").await;
    user.request(&[subscribe(&["a"]), subscribe(&["a", "b"]), subscribe(&["b"])])
        .await;
    let replies = admin
        .request(&[json!({"command": "unset", "tags": ["a"], "data": "t"})])
        .await;
    assert!(replies.is_empty(), "{replies:?}");
    // Before the admin's pong, the user lost both sets holding `a`.
    let notices = user.received();
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert_eq!(notices[0]["command"], "revoked");
    assert_eq!(notices[0]["tags"], json!(["a"]));
    assert_eq!(notices[1]["tags"], json!(["a", "b"]));
    assert_eq!(user.subscriptions().await, json!([["b"]]));
    admin.request(&[publish(&["a"], "after")]).await;
    assert!(
        user.received().is_empty(),
        "nothing on `a` after the revocation"
    );
    // Unregister takes the rest.
    admin
        .request(&[json!({"command": "unregister", "data": "t"})])
        .await;
    assert_eq!(user.received()[0]["tags"], json!(["b"]));
    assert_eq!(shared.router.read().subscription_count(), 0);
}

#[tokio::test]
async fn unsubscribe_is_never_refused_for_want_of_permission() {
    let (shared, store) = admin_broker(Limits::default());
    store.set("t", &["a"]);
    let user = user(&shared, "t").await;
    user.request(&[subscribe(&["a"])]).await;
    store.set("t", &[]); // the store no longer allows `a`
    let replies = user
        .request(&[
            json!({"command": "unsubscribe", "tags": ["a"]}),
            json!({"command": "unsubscribe", "tags": ["never", "held"]}),
        ])
        .await;
    assert!(replies.is_empty(), "{replies:?}");
    assert_eq!(user.subscriptions().await, json!([]));
    assert_eq!(
        store.checks.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the subscribe asked the store"
    );
}

#[tokio::test]
async fn a_grant_overtaken_by_a_revocation_is_checked_again() {
    let (shared, store) = admin_broker(Limits::default());
    store.set("t", &["a"]);
    let admin = Client::open(&shared, Some(ADMIN));
    let user = user(&shared, "t").await;
    let gate = store.hold();
    // The store says yes now, but the answer is held back...
    let wait = user
        .session
        .feed(b"{\"command\":\"subscribe\",\"tags\":[\"a\"]}\n")
        .expect("waits on the store");
    let step = tokio::spawn(wait);
    while store.checks.load(std::sync::atomic::Ordering::SeqCst) < 1 {
        tokio::task::yield_now().await;
    }
    // ...while the admin takes `a` away.
    let unset = tokio::spawn(async move {
        admin
            .request(&[json!({"command": "unset", "tags": ["a"], "data": "t"})])
            .await
    });
    assert!(unset.await.expect("admin").is_empty());
    gate.add_permits(2); // the stale answer, then the second check's
    step.await.expect("step");
    let replies = user.received();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0]["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("permission denied")));
    assert_eq!(user.subscriptions().await, json!([]));
}

#[tokio::test]
async fn another_nodes_change_is_rechecked_against_the_store() {
    let (shared, store) = admin_broker(Limits::default());
    store.set("t", &["a", "b"]);
    let user = user(&shared, "t").await;
    user.request(&[subscribe(&["a"]), subscribe(&["b"])]).await;
    store.set("t", &["b"]); // changed behind this node's back
    shared.recheck(&Token::new("t".into()).key).await;
    assert_eq!(user.received()[0]["tags"], json!(["a"]));
    assert_eq!(user.subscriptions().await, json!([["b"]]));
}

#[tokio::test]
async fn caps_on_tags_and_subscriptions_are_answered() {
    let limits = Limits {
        max_tags: 2,
        max_subscriptions: 2,
        ..Limits::default()
    };
    let shared = open_broker(limits);
    let client = Client::open(&shared, None);
    let replies = client
        .request(&[
            subscribe(&["a", "b", "c"]),
            publish(&["a", "b", "c"], "x"),
            subscribe(&["a"]),
            subscribe(&["b"]),
            subscribe(&["a"]),
            subscribe(&["c"]),
        ])
        .await;
    let errors: Vec<&str> = replies.iter().filter_map(|r| r["error"].as_str()).collect();
    assert_eq!(
        errors,
        [
            "too many tags: 3, the limit is 2",
            "too many tags: 3, the limit is 2",
            "too many subscriptions: a connection may hold 2"
        ]
    );
    assert_eq!(client.subscriptions().await, json!([["a"], ["b"]]));
}

#[tokio::test]
async fn refuses_what_no_session_could_use() {
    let shared = open_broker(Limits {
        max_tags: 3,
        ..Limits::default()
    });
    let client = Client::open(&shared, None);
    assert!(client.session.feed(b"nope\n{\"tags\":[\"a\"]}\n").is_none());
    let replies = client.received();
    assert_eq!(replies[0]["command"], "");
    assert!(replies[0]["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("invalid JSON")));
    assert_eq!(
        replies[1],
        json!({"command": "", "error": "missing command"})
    );
    let replies = client
        .request(&[
            subscribe(&[]),
            subscribe(&["a", "b", "c", "d"]),
            json!({"command": "unsubscribe", "tags": [""]}),
        ])
        .await;
    assert_eq!(
        replies,
        [
            json!({"command": "subscribe", "error": "missing tags"}),
            json!({"command": "subscribe", "error": "too many tags: 4, the limit is 3"}),
            json!({"command": "unsubscribe", "error": "empty tag: every tag must be a non-empty string"}),
        ]
    );
}

#[tokio::test]
async fn a_publish_forwards_its_data_raw_and_its_tags_without_whitespace() {
    let shared = open_broker(Limits::default());
    let subscriber = Client::open(&shared, None);
    subscriber.request(&[subscribe(&["a"])]).await;
    let publisher = Client::open(&shared, None);
    assert!(publisher
        .session
        .feed(b"{\"command\":\"publish\",\"tags\":[\"a\", \"b\"],\"data\":\"x\\ny\\u0021\"}\n")
        .is_none());
    let mut out = Vec::new();
    subscriber.session.drain(&mut out, false);
    assert_eq!(
        String::from_utf8(out).unwrap_or_default(),
        "{\"command\":\"publish\",\"tags\":[\"a\",\"b\"],\"data\":\"x\\ny\\u0021\"}\n"
    );
}
