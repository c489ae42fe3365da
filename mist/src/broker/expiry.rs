//! Tokens that expire while their connection is open (a JWT's `exp`).
//!
//! When a session's grant ends, it loses every subscription at once, with a
//! `revoked` notice each. One task serves every session: the deadlines sit
//! in a heap, and the task sleeps until the earliest. A session with a
//! deadline costs an entry in a map and one in the heap (about 50 bytes);
//! a session without one costs nothing, and no session has a timer of its
//! own.
//!
//! A deadline is a monotonic [`Instant`]: the time the authenticator gave
//! is turned into one when the token is accepted, so the clock being set
//! back cannot lengthen a grant. The timer removes subscriptions under the
//! router's write lock, and a subscribe checks the deadline under that same
//! lock (`commands`), so a subscription can never land after the expiry
//! that should have removed it. A refresh (a later `auth` with a new token)
//! replaces the session's deadline under that lock too; an entry in the
//! heap whose generation is no longer the session's is ignored when it
//! comes up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::Mutex;

use super::access::{prune_with_notice, EXPIRED_NOTICE};
use super::router::{Router, SessionId};
use super::Shared;

/// Every session's deadline.
#[derive(Default)]
pub(crate) struct Expiry {
    deadlines: Mutex<Deadlines>,
    /// Wakes the task when a deadline earlier than the ones it knows
    /// comes, and when the broker is dropped.
    wake: Arc<tokio::sync::Notify>,
}

impl Drop for Expiry {
    fn drop(&mut self) {
        self.wake.notify_one(); // the task sees the broker gone and ends
    }
}

#[derive(Default)]
struct Deadlines {
    /// The current deadline of each session that has one, and its generation.
    current: HashMap<SessionId, (Instant, u64)>,
    /// Every deadline set, earliest first; stale entries are skipped.
    heap: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    generation: u64,
}

impl Deadlines {
    /// Drops stale entries once they are most of the heap: connections
    /// that authenticate and close again cannot grow it without bound.
    fn compact(&mut self) {
        if self.heap.len() > 64 && self.heap.len() > 2 * self.current.len() {
            self.heap = self
                .current
                .iter()
                .map(|(id, &(at, generation))| Reverse((at, generation, id.to_u64())))
                .collect();
        }
    }
}

impl Expiry {
    /// `session`'s grant ends at `until` (`None`: it does not end). Call it
    /// with the router's write lock held (the `_router` argument), so that
    /// the timer cannot act on the session between the change of its grant
    /// and this.
    pub(crate) fn set(&self, _router: &mut Router, session: SessionId, until: Option<Instant>) {
        let mut deadlines = self.deadlines.lock();
        let Some(at) = until else {
            deadlines.current.remove(&session);
            return;
        };
        deadlines.generation += 1;
        let generation = deadlines.generation;
        let earliest = deadlines.heap.peek().map(|Reverse((at, ..))| *at);
        deadlines.current.insert(session, (at, generation));
        deadlines
            .heap
            .push(Reverse((at, generation, session.to_u64())));
        deadlines.compact();
        drop(deadlines);
        if earliest.is_none_or(|earliest| at < earliest) {
            self.wake.notify_one();
        }
    }

    /// What the task waits on.
    pub(crate) fn waker(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// `session` closed.
    pub(crate) fn forget(&self, session: SessionId) {
        let mut deadlines = self.deadlines.lock();
        if deadlines.current.remove(&session).is_some() {
            deadlines.compact();
        }
    }

    /// The earliest deadline, stale or not.
    fn next(&self) -> Option<Instant> {
        self.deadlines
            .lock()
            .heap
            .peek()
            .map(|Reverse((at, ..))| *at)
    }

    /// Takes the sessions whose deadline is at or before `now`.
    fn take_due(&self, now: Instant) -> Vec<SessionId> {
        let mut deadlines = self.deadlines.lock();
        let mut due = Vec::new();
        while let Some(&Reverse((at, generation, id))) = deadlines.heap.peek() {
            if at > now {
                break;
            }
            deadlines.heap.pop();
            let session = SessionId::from_u64(id);
            if deadlines.current.get(&session) == Some(&(at, generation)) {
                deadlines.current.remove(&session);
                due.push(session);
            }
        }
        due
    }

    /// Sessions with a deadline, for tests.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> (usize, usize) {
        let deadlines = self.deadlines.lock();
        (deadlines.current.len(), deadlines.heap.len())
    }
}

/// The task that expires grants, for as long as the broker exists.
/// `wake` is the broker's [`Expiry::waker`]: a `set` that comes before
/// this task waits leaves a permit, so no earlier deadline is missed.
pub(crate) async fn run(shared: Weak<Shared>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let next = match shared.upgrade() {
            Some(shared) => shared.expiry.next(),
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.expire_due();
    }
}

impl Shared {
    /// Takes every subscription of each session whose grant has ended.
    pub(crate) fn expire_due(&self) {
        let mut router = self.router.write();
        let now = Instant::now();
        let due = self.expiry.take_due(now);
        for session in due {
            if !router.is_open(session) {
                continue;
            }
            let removed = prune_with_notice(&mut router, session, |_| false, EXPIRED_NOTICE);
            self.stats
                .tokens_expired
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(session = %session, subscriptions = removed, "a session's token expired: its subscriptions were revoked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::super::testing::{signed_broker, Client, ADMIN};
    use super::super::Limits;

    fn subscribe(tags: &[&str]) -> Value {
        json!({"command": "subscribe", "tags": tags})
    }

    fn auth(token: &str) -> Value {
        json!({"command": "auth", "data": token})
    }

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
        assert_eq!(errors, [super::super::commands::EXPIRED; 2]);
        assert_eq!(user.subscriptions().await, json!([]));
        assert_eq!(shared.figures().tokens_expired, 1);
        assert_eq!(shared.expiry.pending().0, 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_refresh_narrows_the_tags_and_keeps_the_rest() {
        let (shared, store) = signed_broker(Limits::default());
        store.grant("wide", &["a", "b"], Some(Duration::from_millis(400)));
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
        // The first token's deadline no longer counts.
        tokio::time::sleep(Duration::from_millis(450)).await;
        shared.expire_due();
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
}
