//! The authenticator interface as an author implements it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use abi_stable::std_types::{RErr, ROption, RResult, RString, RVec};
use async_ffi::{FfiFuture, FutureExt};

use crate::abi::{AuthError, AuthenticatorApi, Grant, Rejection};
use crate::error::{ErrorKind, SdkError};
use crate::runtime::{catch, spawn_ffi, InRuntime};

/// A token store. Tokens are secrets: never put one in a log line or an
/// error message.
///
/// Every method runs on the plugin's runtime, so a slow store (a database
/// round trip) only delays the session that asked.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Registers `token` with `tags`; [`SdkError::already_exists`] if it exists.
    async fn add_token(&self, token: &str, tags: &[String]) -> Result<(), SdkError>;
    /// Removes `token`; [`SdkError::not_found`] if there is no such token.
    async fn remove_token(&self, token: &str) -> Result<(), SdkError>;
    /// Adds `tags` to `token`; [`SdkError::not_found`] if there is no such token.
    async fn add_tags(&self, token: &str, tags: &[String]) -> Result<(), SdkError>;
    /// Removes `tags` from `token`; [`SdkError::not_found`] if there is no such token.
    async fn remove_tags(&self, token: &str, tags: &[String]) -> Result<(), SdkError>;
    /// The tags of `token`, sorted; [`SdkError::not_found`] if there is no such token.
    async fn tags(&self, token: &str) -> Result<Vec<String>, SdkError>;
    /// Whether `token` exists and holds every one of `tags`. The default asks
    /// [`Authenticator::tags`]; a store can answer it more cheaply.
    async fn may_use(&self, token: &str, tags: &[String]) -> Result<bool, SdkError> {
        match self.tags(token).await {
            Ok(held) => Ok(tags.iter().all(|t| held.contains(t))),
            Err(e) if e.kind == ErrorKind::NOT_FOUND => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `Ok` when the store can be reached, [`SdkError::unavailable`] with
    /// the reason when not; the host's readiness check asks it every few
    /// seconds. The default (a store in memory) is always reachable.
    async fn check(&self) -> Result<(), SdkError> {
        Ok(())
    }

    /// Checks `token` as a connection presents it: what it grants, or why
    /// it is refused ([`AuthError::rejected`]) or could not be checked
    /// ([`AuthError::failed`], or `?` on an [`SdkError`]). The default
    /// asks [`Authenticator::tags`]: a token the store does not know is
    /// refused as [`Rejection::UNKNOWN_TOKEN`], and the grant never
    /// expires. A store of signed tokens (JWT) overrides it.
    async fn authenticate(&self, token: &str) -> Result<Grant, AuthError> {
        match self.tags(token).await {
            Ok(tags) => Ok(Grant::new(tags)),
            Err(e) if e.kind == ErrorKind::NOT_FOUND => Err(AuthError::rejected(
                Rejection::UNKNOWN_TOKEN,
                "invalid token",
            )),
            Err(e) => Err(AuthError::failed(e)),
        }
    }

    /// `false` for an authenticator that keeps no tokens (signed tokens,
    /// each checked on its own by [`Authenticator::authenticate`]): the
    /// host answers the registry commands with an error without calling
    /// the registry methods, keeps each connection's grant instead of
    /// asking [`Authenticator::may_use`], and lets a connection replace
    /// its token with a later `auth`. The default is `true`.
    fn keeps_tokens(&self) -> bool {
        true
    }
}

impl Grant {
    /// A grant of `tags` that does not expire.
    pub fn new<T: Into<String>>(tags: impl IntoIterator<Item = T>) -> Grant {
        Grant {
            tags: tags.into_iter().map(|t| RString::from(t.into())).collect(),
            expires_at_ms: ROption::RNone,
        }
    }

    /// The same grant, ending at `at`.
    pub fn expiring_at(mut self, at: SystemTime) -> Grant {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.expires_at_ms = ROption::RSome(ms);
        self
    }

    /// When the grant ends, if it does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at_ms
            .into_option()
            .map(|ms| UNIX_EPOCH + std::time::Duration::from_millis(ms))
    }

    /// The tags as plain strings.
    pub fn tag_strings(&self) -> Vec<String> {
        self.tags.iter().map(|t| t.to_string()).collect()
    }
}

impl AuthError {
    /// The token is refused for `rejection`; `message` says why, for the
    /// client (never the token or a claim's value).
    pub fn rejected(rejection: Rejection, message: impl Into<String>) -> AuthError {
        AuthError {
            rejection,
            error: SdkError::unauthenticated(message),
        }
    }

    /// The token could not be checked: the store failed with `error`.
    pub fn failed(error: SdkError) -> AuthError {
        AuthError {
            rejection: Rejection::UNKNOWN_TOKEN,
            error,
        }
    }

    /// Whether the token itself was refused (rather than the store failing).
    pub fn is_rejection(&self) -> bool {
        self.error.kind == ErrorKind::UNAUTHENTICATED
    }
}

impl From<SdkError> for AuthError {
    fn from(error: SdkError) -> AuthError {
        AuthError::failed(error)
    }
}

#[derive(Clone)]
pub(crate) struct AuthenticatorAdapter(pub(crate) InRuntime<Arc<dyn Authenticator>>);

fn owned(tags: RVec<RString>) -> Vec<String> {
    tags.into_iter().map(RString::into_string).collect()
}

impl AuthenticatorApi for AuthenticatorAdapter {
    fn add_token(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
        let store = Arc::clone(&self.0);
        spawn_ffi(async move { store.add_token(&token, &owned(tags)).await })
    }

    fn remove_token(&self, token: RString) -> FfiFuture<RResult<(), SdkError>> {
        let store = Arc::clone(&self.0);
        spawn_ffi(async move { store.remove_token(&token).await })
    }

    fn add_tags(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
        let store = Arc::clone(&self.0);
        spawn_ffi(async move { store.add_tags(&token, &owned(tags)).await })
    }

    fn remove_tags(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
        let store = Arc::clone(&self.0);
        spawn_ffi(async move { store.remove_tags(&token, &owned(tags)).await })
    }

    fn tags(&self, token: RString) -> FfiFuture<RResult<RVec<RString>, SdkError>> {
        let store = Arc::clone(&self.0);
        spawn_ffi(async move {
            let tags = store.tags(&token).await?;
            Ok(tags.into_iter().map(RString::from).collect())
        })
    }

    fn may_use(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<bool, SdkError>> {
        let store = Arc::clone(&self.0);
        spawn_ffi(async move { store.may_use(&token, &owned(tags)).await })
    }

    fn check(&self) -> FfiFuture<RResult<(), SdkError>> {
        let store = Arc::clone(&self.0);
        spawn_ffi(async move { store.check().await })
    }

    fn authenticate(&self, token: RString) -> FfiFuture<RResult<Grant, AuthError>> {
        let store = Arc::clone(&self.0);
        // The outer result carries a panic, as for every other call.
        let checked = spawn_ffi(async move { Ok(store.authenticate(&token).await) });
        async move {
            match checked.await {
                RResult::ROk(result) => result.into(),
                RErr(error) => RErr(AuthError::failed(error)),
            }
        }
        .into_ffi()
    }

    fn keeps_tokens(&self) -> bool {
        // A panic in plugin code must not unwind into the host; a store
        // that cannot say is treated as the usual kind.
        catch(|| Ok(self.0.keeps_tokens())).unwrap_or(true)
    }
}
