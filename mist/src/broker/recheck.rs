//! Rechecking tokens against the store when this node may have missed a
//! change made on another node: a token change announced by the cluster,
//! or the cluster's backplane coming (back) up, after which every token
//! is rechecked. The cluster asks through [`FromCluster`](super::cluster),
//! which owns the [`Rechecks`] under way.
//!
//! A recheck that the store cannot answer (an error, or no answer within
//! [`ATTEMPT_TIMEOUT`]) is tried again with a backoff; when there is still
//! no answer [`GIVE_UP_AFTER`] after the recheck began, the token's
//! sessions lose every subscription (each is told with a `revoked` notice):
//! fail closed. They may subscribe again, which asks the store again.
//!
//! Rechecks of one token never run side by side: one asked while another
//! runs makes that one run again once done (the change may be newer than
//! its answer). At most [`CONCURRENT`] rechecks ask the store at once, and
//! a recheck's clock starts when it gets its turn, so a node with many
//! tokens does not fail closed only for waiting its turn.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::{RErr, ROk};
use mist_sdk::ErrorKind;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::access::{Revoked, TokenKey};
use super::shared::Shared;

/// How long one question to the store may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a recheck goes on asking before it fails closed.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(5);
/// The first wait between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Rechecks asking the store at once at most.
pub const CONCURRENT: usize = 32;

/// The rechecks under way.
pub(crate) struct Rechecks {
    /// Per token under recheck: whether it must run again once done.
    running: Mutex<HashMap<TokenKey, bool>>,
    turns: Semaphore,
}

impl Default for Rechecks {
    fn default() -> Self {
        Rechecks {
            running: Mutex::new(HashMap::new()),
            turns: Semaphore::new(CONCURRENT),
        }
    }
}

/// How a recheck ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No session holds the token (any more).
    NoSession,
    /// The store answered; this many subscriptions went.
    Answered(usize),
    /// The store did not answer in time; this many subscriptions went.
    FailedClosed(usize),
}

impl Rechecks {
    /// Rechecks the token `key` of `shared` on `runtime`, coalesced with a
    /// recheck of it under way. Never waits.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        key: TokenKey,
        runtime: &tokio::runtime::Handle,
    ) {
        if !shared.tokens.holds(&key) {
            return; // a change of a token no session here holds
        }
        {
            let mut running = self.running.lock();
            if let Some(again) = running.get_mut(&key) {
                *again = true;
                return;
            }
            running.insert(key, false);
        }
        let (rechecks, shared) = (self.clone(), shared.clone());
        runtime.spawn(async move {
            loop {
                {
                    // Waiting for a turn does not count against the bound.
                    let _turn = rechecks.turns.acquire().await;
                    shared.recheck(&key).await;
                }
                let mut running = rechecks.running.lock();
                if running.get(&key) == Some(&true) {
                    running.insert(key, false);
                    continue;
                }
                running.remove(&key);
                break;
            }
        });
    }

    /// Rechecks every token an open session of `shared` holds.
    pub(crate) fn spawn_all(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        runtime: &tokio::runtime::Handle,
    ) {
        let keys = shared.tokens.keys();
        if !keys.is_empty() {
            tracing::info!(
                tokens = keys.len(),
                "rechecking every token against the store"
            );
        }
        for key in keys {
            self.spawn(shared, key, runtime);
        }
    }

    /// Whether no recheck is under way.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        self.running.lock().is_empty()
    }
}

impl Shared {
    /// Asks the store what the token `key` holds now and revokes the rest;
    /// fails closed past [`GIVE_UP_AFTER`] without an answer.
    pub(crate) async fn recheck(&self, key: &TokenKey) -> Outcome {
        let Some(auth) = self.auth.get() else {
            return Outcome::NoSession;
        };
        let deadline = Instant::now() + GIVE_UP_AFTER;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let Some(secret) = self.tokens.secret(key) else {
                return Outcome::NoSession;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let asked = auth.store.tags(secret.as_str().into());
            let why = match tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), asked).await {
                Ok(ROk(tags)) => {
                    let allowed: Vec<String> = tags.into_iter().map(|t| t.into_string()).collect();
                    return Outcome::Answered(self.revoke(key, Revoked::AllowedNow(&allowed)));
                }
                Ok(RErr(e)) if e.kind == ErrorKind::NOT_FOUND => {
                    return Outcome::Answered(self.revoke(key, Revoked::Everything));
                }
                Ok(RErr(e)) => format!("{}: {}", e.kind, e.message),
                Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            };
            let now = Instant::now();
            if now >= deadline {
                let gone = self.revoke(key, Revoked::Unconfirmed);
                tracing::warn!(
                    subscriptions = gone,
                    "the token store could not recheck a token for {GIVE_UP_AFTER:?} ({why}): \
                     its sessions lost their subscriptions (fail closed)"
                );
                return Outcome::FailedClosed(gone);
            }
            tracing::debug!("rechecking a token failed, trying again: {why}");
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use abi_stable::sabi_trait::TD_Opaque;
    use abi_stable::std_types::{RArc, RResult, RString, RVec};
    use async_ffi::{FfiFuture, FutureExt as _};
    use mist_sdk::abi::{AuthenticatorApi, AuthenticatorApi_TO};
    use mist_sdk::{AuthError, Grant, SdkError};
    use serde_json::json;

    use super::*;
    use crate::broker::access::Token;
    use crate::broker::testing::Client;
    use crate::broker::{Broker, Limits};

    /// A store holding one token `t` with tag `b` only, whose `tags`
    /// fails (or hangs) while `failing` is above zero, counting down.
    #[derive(Clone, Default)]
    struct Flaky(Arc<FlakyState>);

    #[derive(Default)]
    struct FlakyState {
        failing: AtomicUsize,
        hang: std::sync::atomic::AtomicBool,
        asked: AtomicUsize,
    }

    impl AuthenticatorApi for Flaky {
        fn authenticate(&self, _: RString) -> FfiFuture<RResult<Grant, AuthError>> {
            async { ROk(Grant::new(["b"])) }.into_ffi()
        }
        fn keeps_tokens(&self) -> bool {
            true
        }
        fn add_token(&self, _: RString, _: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
            async { ROk(()) }.into_ffi()
        }
        fn remove_token(&self, _: RString) -> FfiFuture<RResult<(), SdkError>> {
            async { ROk(()) }.into_ffi()
        }
        fn add_tags(&self, _: RString, _: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
            async { ROk(()) }.into_ffi()
        }
        fn remove_tags(&self, _: RString, _: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
            async { ROk(()) }.into_ffi()
        }
        fn tags(&self, _: RString) -> FfiFuture<RResult<RVec<RString>, SdkError>> {
            let state = &self.0;
            state.asked.fetch_add(1, Ordering::SeqCst);
            let failing = state
                .failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let hang = state.hang.load(Ordering::SeqCst);
            async move {
                if failing && hang {
                    std::future::pending::<()>().await;
                }
                if failing {
                    RErr(SdkError::unavailable("the store is down"))
                } else {
                    ROk(RVec::from(vec![RString::from("b")]))
                }
            }
            .into_ffi()
        }
        fn may_use(&self, _: RString, _: RVec<RString>) -> FfiFuture<RResult<bool, SdkError>> {
            async { ROk(true) }.into_ffi()
        }
        fn check(&self) -> FfiFuture<RResult<(), SdkError>> {
            async { ROk(()) }.into_ffi()
        }
    }

    /// A broker over `store` and a session of token `t` subscribed to
    /// `["a"]` and `["b"]`.
    async fn broker(store: &Flaky) -> (Arc<Shared>, Client) {
        let broker = Broker::new(Limits::default());
        let api = AuthenticatorApi_TO::from_ptr(RArc::new(store.clone()), TD_Opaque);
        broker
            .set_authenticator(api, "admin".into(), "flaky")
            .unwrap();
        let shared = broker.shared.clone();
        let user = Client::open(&shared, Some("t"));
        user.request(&[subscribe(&["a"]), subscribe(&["b"])]).await;
        assert_eq!(user.subscriptions().await, json!([["a"], ["b"]]));
        (shared, user)
    }

    fn subscribe(tags: &[&str]) -> serde_json::Value {
        json!({"command": "subscribe", "tags": tags})
    }

    fn key() -> TokenKey {
        Token::new("t".into()).key
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_fails_for_a_while_is_asked_again() {
        let store = Flaky::default();
        let (shared, user) = broker(&store).await;
        let asked = store.0.asked.load(Ordering::SeqCst);
        store.0.failing.store(3, Ordering::SeqCst);
        let started = Instant::now();
        assert_eq!(shared.recheck(&key()).await, Outcome::Answered(1));
        assert_eq!(store.0.asked.load(Ordering::SeqCst), asked + 4);
        assert!(started.elapsed() < GIVE_UP_AFTER);
        assert_eq!(user.received()[0]["tags"], json!(["a"]));
        assert_eq!(user.subscriptions().await, json!([["b"]]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_cannot_answer_fails_closed_at_the_bound() {
        for hang in [false, true] {
            let store = Flaky::default();
            let (shared, user) = broker(&store).await;
            store.0.hang.store(hang, Ordering::SeqCst);
            store.0.failing.store(usize::MAX, Ordering::SeqCst);
            let started = Instant::now();
            assert_eq!(shared.recheck(&key()).await, Outcome::FailedClosed(2));
            let took = started.elapsed();
            assert!(
                took >= GIVE_UP_AFTER && took <= GIVE_UP_AFTER + ATTEMPT_TIMEOUT,
                "hang {hang}: {took:?}"
            );
            let notices = user.received();
            assert_eq!(notices.len(), 2, "{notices:?}");
            assert!(notices.iter().all(|n| n["command"] == "revoked"));
            assert_eq!(user.subscriptions().await, json!([]));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rechecks_of_one_token_are_coalesced() {
        let store = Flaky::default();
        let (shared, _user) = broker(&store).await;
        let asked = store.0.asked.load(Ordering::SeqCst);
        store.0.failing.store(2, Ordering::SeqCst);
        let runtime = tokio::runtime::Handle::current();
        let rechecks = Arc::new(Rechecks::default());
        for _ in 0..100 {
            rechecks.spawn(&shared, key(), &runtime);
        }
        rechecks.spawn(&shared, [7; 32], &runtime); // nobody holds it
        while !rechecks.idle() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Two failures and an answer, then once more for the asks that
        // came while it ran: not a hundred.
        assert_eq!(store.0.asked.load(Ordering::SeqCst), asked + 4);
    }
}
