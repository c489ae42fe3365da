//! The commands' behaviour through whole sessions: revocation, permission
//! checks overtaken by a revocation, caps, what parsing refuses, and the
//! grants of signed tokens (expiry, refresh).

use std::time::Duration;

use serde_json::{json, Value};

use crate::broker::access::Token;
use crate::broker::limits::Limits;
use crate::broker::shared::Shared;
use crate::broker::testing::{admin_broker, open_broker, signed_broker, Client, ADMIN};

fn subscribe(tags: &[&str]) -> Value {
    json!({"command": "subscribe", "tags": tags})
}

fn auth(token: &str) -> Value {
    json!({"command": "auth", "data": token})
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

// Signed tokens (JWT): grants kept by the session, expiry, refresh.

/// Reads what arrives until `n` lines have, for at most 5 s.
async fn lines(client: &Client, n: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while all.len() < n {
        assert!(std::time::Instant::now() < deadline, "only {all:?}");
        all.extend(client.received());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expiring_token_loses_every_subscription_with_a_notice() {
    let (shared, store) = signed_broker(Limits::default());
    store.grant("jwt", &["a", "b"], Some(Duration::from_millis(300)));
    let user = Client::open(&shared, None);
    assert!(user
        .request(&[auth("jwt"), subscribe(&["a"]), subscribe(&["a", "b"])])
        .await
        .is_empty());
    let started = std::time::Instant::now();
    let notices = lines(&user, 2).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    for (notice, tags) in notices.iter().zip([json!(["a"]), json!(["a", "b"])]) {
        assert_eq!(
            notice,
            &json!({"command": "revoked", "tags": tags, "error": "subscription revoked: the token expired"})
        );
    }
    assert_eq!(shared.router.read().subscription_count(), 0);
    let replies = user
        .request(&[
            subscribe(&["a"]),
            json!({"command": "publish", "tags": ["a"], "data": "x"}),
        ])
        .await;
    let errors: Vec<&str> = replies.iter().filter_map(|r| r["error"].as_str()).collect();
    assert_eq!(errors, [super::EXPIRED; 2]);
    assert_eq!(user.subscriptions().await, json!([]));
    assert_eq!(shared.figures().tokens_expired, 1);
    assert_eq!(shared.expiry.pending().0, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_narrows_the_tags_and_keeps_the_rest() {
    let (shared, store) = signed_broker(Limits::default());
    store.grant("wide", &["a", "b"], Some(Duration::from_secs(3600)));
    store.grant("narrow", &["b"], None);
    let admin = Client::open(&shared, Some(ADMIN));
    let user = Client::open(&shared, None);
    assert!(user
        .request(&[
            auth("wide"),
            subscribe(&["a"]),
            subscribe(&["b"]),
            subscribe(&["a", "b"])
        ])
        .await
        .is_empty());
    let replies = user.request(&[auth("narrow")]).await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0]["tags"], json!(["a"]));
    assert_eq!(replies[1]["tags"], json!(["a", "b"]));
    assert!(replies[0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("new token")));
    assert_eq!(user.subscriptions().await, json!([["b"]]));
    admin
        .request(&[json!({"command": "publish", "tags": ["b"], "data": "still"})])
        .await;
    assert_eq!(
        user.received(),
        [json!({"command": "publish", "tags": ["b"], "data": "still"})]
    );
    let denied = user.request(&[subscribe(&["a"])]).await;
    assert!(denied[0]["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("permission denied")));
    // The first token's deadline no longer counts: nothing comes due,
    // even an hour on.
    assert_eq!(shared.expiry.pending().0, 0);
    let later = std::time::Instant::now() + Duration::from_secs(3601);
    assert!(shared.expiry.take_due(later).is_empty());
    assert!(user.received().is_empty());
    assert_eq!(user.subscriptions().await, json!([["b"]]));
    assert_eq!(shared.figures().tokens_accepted, 2);
}

#[tokio::test]
async fn what_a_store_without_tokens_refuses() {
    let (shared, store) = signed_broker(Limits::default());
    store.grant("jwt", &["a"], None);
    let admin = Client::open(&shared, Some(ADMIN));
    for op in ["register", "unregister", "set", "unset", "tags"] {
        let replies = admin
            .request(&[json!({"command": op, "tags": ["a"], "data": "jwt"})])
            .await;
        let error = replies[0]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("test-jwt authenticator keeps no tokens"),
            "{op}: {replies:?}"
        );
    }
    // The server token cannot follow a JWT; a bad one is refused with
    // its reason, and counted by it.
    let user = Client::open(&shared, None);
    user.request(&[auth("jwt")]).await;
    let replies = user.request(&[auth(ADMIN), auth("forged")]).await;
    assert!(replies[0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("only with another JWT")));
    assert_eq!(replies[1]["error"], "bad signature: made up");
    assert_eq!(shared.figures().tokens_refused["bad_signature"], 1);
    // An anonymous connection's first command stays the only auth.
    let anonymous = Client::open(&shared, None);
    let replies = anonymous
        .request(&[json!({"command": "list"}), auth("jwt")])
        .await;
    assert!(replies[1]["error"]
        .as_str()
        .is_some_and(|e| e.contains("must be the first")));
    // A refused connect token's reason reaches the commands' errors.
    let refused = Client::open(&shared, Some("forged"));
    let replies = refused.request(&[subscribe(&["a"])]).await;
    assert_eq!(
        replies[0]["error"],
        "not authenticated: the token given at connect was refused (bad signature: made up)"
    );
}

#[tokio::test]
async fn closed_sessions_leave_no_deadline_behind() {
    let (shared, store) = signed_broker(Limits::default());
    store.grant("jwt", &["a"], Some(Duration::from_secs(3600)));
    for _ in 0..500 {
        let client = Client::open(&shared, Some("jwt"));
        client.request(&[]).await;
        client.session.close();
    }
    let (current, heap) = shared.expiry.pending();
    assert_eq!(current, 0);
    assert!(heap <= 65, "{heap} heap entries");
}

#[tokio::test]
async fn a_signed_token_uses_exactly_the_tag_sets_its_grant_holds() {
    let (shared, store) = signed_broker(Limits::default());
    store.grant("jwt", &["b", "a", "a"], None);
    let admin = Client::open(&shared, Some(ADMIN));
    admin.request(&[subscribe(&["a"])]).await;
    let user = user(&shared, "jwt").await;
    let replies = user
        .request(&[
            subscribe(&["a", "b"]),
            subscribe(&["a", "c"]),
            publish(&["a"], "in"),
            publish(&["c", "a"], "out"),
        ])
        .await;
    let errors: Vec<(&str, &str)> = replies
        .iter()
        .map(|r| {
            (
                r["command"].as_str().unwrap_or(""),
                r["error"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            ("subscribe", super::PERMISSION_DENIED),
            ("publish", super::PERMISSION_DENIED)
        ]
    );
    // The canonical form takes the publish fast path: checked all the same.
    let fast = user
        .session
        .feed(b"{\"command\":\"publish\",\"tags\":[\"a\",\"z\"],\"data\":\"x\"}\n");
    assert!(fast.is_none(), "decided at once, without a store");
    assert_eq!(
        user.request(&[]).await[0]["error"],
        super::PERMISSION_DENIED
    );
    assert_eq!(user.subscriptions().await, json!([["a", "b"]]));
    assert_eq!(
        admin.received(),
        [json!({"command": "publish", "tags": ["a"], "data": "in"})]
    );
}
