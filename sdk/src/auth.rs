//! The authenticator interface as an author implements it.

use std::sync::Arc;

use abi_stable::std_types::{RResult, RString, RVec};
use async_ffi::FfiFuture;

use crate::abi::AuthenticatorApi;
use crate::error::{ErrorKind, SdkError};
use crate::runtime::{spawn_ffi, InRuntime};

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
}
