//! What the broker's unit tests share: a broker in-process, sessions with
//! their output read back as JSON lines, and a token store whose answers a
//! test can hold back, to pin down what happens while a step waits.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RErr, ROk, RResult, RString, RVec};
use async_ffi::{FfiFuture, FutureExt};
use mist_sdk::abi::{AuthenticatorApi, AuthenticatorApi_TO, OutputWakerApi, OutputWakerApi_TO};
use mist_sdk::{SdkError, SessionInfo};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::limits::Limits;
use super::session::Session;
use super::shared::Shared;
use super::Broker;

pub(crate) const ADMIN: &str = "admin-token";

/// A broker without an authenticator.
pub(crate) fn open_broker(limits: Limits) -> Arc<Shared> {
    Broker::new(limits).shared
}

/// A broker in admin mode over a [`Store`].
pub(crate) fn admin_broker(limits: Limits) -> (Arc<Shared>, Store) {
    let broker = Broker::new(limits);
    let store = Store::default();
    let api = AuthenticatorApi_TO::from_ptr(RArc::new(store.clone()), TD_Opaque);
    broker
        .set_authenticator(api, ADMIN.into(), "test-store")
        .expect("first authenticator");
    (broker.shared, store)
}

/// A session and the lines it was sent.
pub(crate) struct Client {
    pub(crate) session: Arc<Session>,
    pub(crate) closes: Arc<AtomicUsize>,
}

struct Waker(Arc<AtomicUsize>);

impl OutputWakerApi for Waker {
    fn wake(&self) {}

    fn closed(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Client {
    pub(crate) fn open(shared: &Arc<Shared>, token: Option<&str>) -> Client {
        let closes = Arc::new(AtomicUsize::new(0));
        let waker = OutputWakerApi_TO::from_value(Waker(closes.clone()), TD_Opaque);
        let info = SessionInfo::new("test", "127.0.0.1:1").with_token(token.map(String::from));
        Client {
            session: Session::open(shared.clone(), info, waker),
            closes,
        }
    }

    /// Feeds `lines`, each a JSON request, and awaits what the feed asks.
    pub(crate) async fn send(&self, lines: &[Value]) {
        let mut bytes = Vec::new();
        for line in lines {
            bytes.extend_from_slice(line.to_string().as_bytes());
            bytes.push(b'\n');
        }
        if let Some(wait) = self.session.feed(&bytes) {
            wait.await;
        }
    }

    /// Everything queued for the client, one JSON value per line.
    pub(crate) fn received(&self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let before = out.len();
            if !self.session.drain(&mut out, false) || out.len() == before {
                break;
            }
        }
        lines(&out)
    }

    /// Sends `lines` then a ping, and returns what came before the pong.
    pub(crate) async fn request(&self, lines: &[Value]) -> Vec<Value> {
        let mut all = lines.to_vec();
        all.push(serde_json::json!({"command": "ping"}));
        self.send(&all).await;
        let mut replies = self.received();
        let pong = serde_json::json!({"command": "ping", "data": "pong"});
        assert_eq!(replies.pop(), Some(pong), "the ping barrier");
        replies
    }

    pub(crate) async fn subscriptions(&self) -> Value {
        let replies = self
            .request(&[serde_json::json!({"command": "list"})])
            .await;
        let data = replies[0]["data"].as_str().expect("list data");
        serde_json::from_str(data).expect("list JSON")
    }
}

pub(crate) fn lines(bytes: &[u8]) -> Vec<Value> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("a JSON line"))
        .collect()
}

/// A token store in memory whose `may_use` answers can be held back: the
/// answer is decided when the call starts (as a database read would be),
/// and returned once a permit is given.
#[derive(Clone, Default)]
pub(crate) struct Store {
    tokens: Arc<Mutex<HashMap<String, HashSet<String>>>>,
    /// When set, each `may_use` waits for one permit of this semaphore.
    hold: Arc<Mutex<Option<Arc<Semaphore>>>>,
    /// `may_use` calls that have started.
    pub(crate) checks: Arc<AtomicUsize>,
}

impl Store {
    pub(crate) fn set(&self, token: &str, tags: &[&str]) {
        self.tokens
            .lock()
            .insert(token.into(), tags.iter().map(|t| t.to_string()).collect());
    }

    /// From now on `may_use` answers wait for [`Store::release`].
    pub(crate) fn hold(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *self.hold.lock() = Some(gate.clone());
        gate
    }

    fn strings(tags: RVec<RString>) -> Vec<String> {
        tags.into_iter().map(RString::into_string).collect()
    }

    fn done<T: Send + 'static>(result: RResult<T, SdkError>) -> FfiFuture<RResult<T, SdkError>> {
        async move { result }.into_ffi()
    }
}

impl AuthenticatorApi for Store {
    fn add_token(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
        let mut tokens = self.tokens.lock();
        if tokens.contains_key(token.as_str()) {
            return Self::done(RErr(SdkError::already_exists("token exists")));
        }
        tokens.insert(
            token.into_string(),
            Self::strings(tags).into_iter().collect(),
        );
        Self::done(ROk(()))
    }

    fn remove_token(&self, token: RString) -> FfiFuture<RResult<(), SdkError>> {
        let removed = self.tokens.lock().remove(token.as_str()).is_some();
        Self::done(if removed {
            ROk(())
        } else {
            RErr(SdkError::not_found("no such token"))
        })
    }

    fn add_tags(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
        let mut tokens = self.tokens.lock();
        let result = match tokens.get_mut(token.as_str()) {
            Some(held) => {
                held.extend(Self::strings(tags));
                ROk(())
            }
            None => RErr(SdkError::not_found("no such token")),
        };
        Self::done(result)
    }

    fn remove_tags(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
        let mut tokens = self.tokens.lock();
        let result = match tokens.get_mut(token.as_str()) {
            Some(held) => {
                for tag in Self::strings(tags) {
                    held.remove(&tag);
                }
                ROk(())
            }
            None => RErr(SdkError::not_found("no such token")),
        };
        Self::done(result)
    }

    fn tags(&self, token: RString) -> FfiFuture<RResult<RVec<RString>, SdkError>> {
        let result = match self.tokens.lock().get(token.as_str()) {
            Some(held) => {
                let mut tags: Vec<&String> = held.iter().collect();
                tags.sort();
                ROk(tags
                    .into_iter()
                    .map(|t| RString::from(t.as_str()))
                    .collect())
            }
            None => RErr(SdkError::not_found("no such token")),
        };
        Self::done(result)
    }

    fn may_use(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<bool, SdkError>> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        let allowed = self
            .tokens
            .lock()
            .get(token.as_str())
            .is_some_and(|held| Self::strings(tags).iter().all(|t| held.contains(t)));
        let gate = self.hold.lock().clone();
        async move {
            if let Some(gate) = gate {
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
            }
            ROk(allowed)
        }
        .into_ffi()
    }

    fn check(&self) -> FfiFuture<RResult<(), SdkError>> {
        Self::done(ROk(()))
    }
}
