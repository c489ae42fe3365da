//! Mist's in-memory authenticator: `memory://`. Tokens and their tags live
//! in the broker's memory and are lost when it stops; for tests, demos and
//! brokers whose tokens are registered by a script at every start.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use mist_sdk::Authenticator;
//! let store = mist_plugin_memory::Tokens::default();
//! store.add_token("t", &["a".into()]).await.unwrap();
//! assert!(store.may_use("t", &["a".into()]).await.unwrap());
//! assert!(!store.may_use("t", &["b".into()]).await.unwrap());
//! # });
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use mist_sdk::abi::ModuleRef;
use mist_sdk::{async_trait, Authenticator, Host, Plugin, SdkError};

/// The plugin.
pub struct Memory;

/// The root module, for linking the plugin into a host.
pub fn module() -> ModuleRef {
    mist_sdk::module::<Memory>()
}

#[async_trait]
impl Plugin for Memory {
    const NAME: &'static str = "memory";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const AUTHENTICATORS: &'static [&'static str] = &["memory"];

    fn init(_host: Host) -> Result<Self, SdkError> {
        Ok(Memory)
    }

    async fn open_authenticator(&self, _uri: &str) -> Result<Arc<dyn Authenticator>, SdkError> {
        Ok(Arc::new(Tokens::default()))
    }
}

/// The store: each token's set of tags.
#[derive(Default)]
pub struct Tokens {
    tokens: RwLock<HashMap<String, BTreeSet<String>>>,
}

fn no_such_token() -> SdkError {
    // Never the token itself: error messages end up in logs.
    SdkError::not_found("no such token")
}

impl Tokens {
    fn with_token<T>(
        &self,
        token: &str,
        change: impl FnOnce(&mut BTreeSet<String>) -> T,
    ) -> Result<T, SdkError> {
        let mut tokens = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        tokens.get_mut(token).map(change).ok_or_else(no_such_token)
    }
}

#[async_trait]
impl Authenticator for Tokens {
    async fn add_token(&self, token: &str, tags: &[String]) -> Result<(), SdkError> {
        let mut tokens = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        if tokens.contains_key(token) {
            return Err(SdkError::already_exists("the token is already registered"));
        }
        tokens.insert(token.to_owned(), tags.iter().cloned().collect());
        Ok(())
    }

    async fn remove_token(&self, token: &str) -> Result<(), SdkError> {
        let mut tokens = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        tokens.remove(token).map(drop).ok_or_else(no_such_token)
    }

    async fn add_tags(&self, token: &str, tags: &[String]) -> Result<(), SdkError> {
        self.with_token(token, |held| held.extend(tags.iter().cloned()))
    }

    async fn remove_tags(&self, token: &str, tags: &[String]) -> Result<(), SdkError> {
        self.with_token(token, |held| {
            for tag in tags {
                held.remove(tag);
            }
        })
    }

    async fn tags(&self, token: &str) -> Result<Vec<String>, SdkError> {
        let tokens = self.tokens.read().unwrap_or_else(PoisonError::into_inner);
        let held = tokens.get(token).ok_or_else(no_such_token)?;
        Ok(held.iter().cloned().collect())
    }

    async fn may_use(&self, token: &str, tags: &[String]) -> Result<bool, SdkError> {
        let tokens = self.tokens.read().unwrap_or_else(PoisonError::into_inner);
        Ok(tokens
            .get(token)
            .is_some_and(|held| tags.iter().all(|t| held.contains(t))))
    }
}
