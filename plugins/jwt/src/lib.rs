//! Mist's JWT authenticator: `jwt://`. Tokens are JSON Web Tokens signed
//! by the application's own backend; the broker keeps none of them, and
//! checks each on its own: its signature against a configured key, its
//! `exp`, `nbf`, `aud` and `iss`, and the tags of one claim. Every node of
//! a cluster does so by itself, with no shared store.
//!
//! | URI | keys |
//! |---|---|
//! | `jwt://?secret-file=FILE` | an HMAC secret (HS256, HS384, HS512) |
//! | `jwt://?public-key=FILE` | a PEM public key: RSA (RS256/384/512, PS256/384/512), EC P-256 (ES256), P-384 (ES384), Ed25519 (EdDSA) |
//! | `jwt://?jwks=URL` | a JSON Web Key Set fetched over HTTP(S), keys chosen by `kid` |
//!
//! The algorithm is fixed by the key: a token's `alg` must be one its key
//! verifies, and `none` never is. Options: `aud=`, `iss=` (checked when
//! given), `claim=` (the claim holding the tags, default `tags`),
//! `leeway=` (clock skew allowed on `exp` and `nbf`, default `30s`); for
//! a key set `jwks-refetch=` (default `10s`), `jwks-timeout=` (`5s`),
//! `jwks-max-age=` (`5m`) and `ca-file=` (see [`config`]).
//!
//! A grant lasts until `exp` plus the leeway: the host then takes every
//! subscription of the connection away. The registry commands (`register`,
//! `set`, ...) have nothing to act on: this store keeps no tokens.

pub mod config;
pub mod jwks;
pub mod keys;
pub mod verify;

use std::sync::Arc;

use mist_sdk::abi::ModuleRef;
use mist_sdk::{async_trait, AuthError, Authenticator, Grant, Host, Plugin, SdkError};

use config::{Config, KeySource};
use jwks::Jwks;
use keys::VerifyKey;
use verify::{Keys, Verifier};

/// The plugin.
pub struct Jwt;

/// The root module, for linking the plugin into a host.
pub fn module() -> ModuleRef {
    mist_sdk::module::<Jwt>()
}

#[async_trait]
impl Plugin for Jwt {
    const NAME: &'static str = "jwt";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const AUTHENTICATORS: &'static [&'static str] = &["jwt"];

    fn init(_host: Host) -> Result<Self, SdkError> {
        Ok(Jwt)
    }

    async fn open_authenticator(&self, uri: &str) -> Result<Arc<dyn Authenticator>, SdkError> {
        Ok(Arc::new(Tokens::open(uri).await?))
    }
}

/// What the registry commands are answered with.
pub const KEEPS_NO_TOKENS: &str =
    "the jwt authenticator keeps no tokens: a JWT signed by the issuer's key is checked on its own, there is nothing to register";

/// The store that keeps no tokens: a [`Verifier`].
pub struct Tokens {
    verifier: Verifier,
}

impl Tokens {
    /// Reads the keys `uri` names (a missing or unusable key file is an
    /// error naming it) and, for a key set, fetches it once.
    pub async fn open(uri: &str) -> Result<Tokens, SdkError> {
        let config = Config::from_uri(uri).map_err(|e| SdkError::invalid_input(e.to_string()))?;
        let key_error = |e: keys::KeyError| SdkError::invalid_input(e.to_string());
        let keys = match config.source {
            KeySource::Secret(path) => {
                Keys::Fixed(Arc::new(VerifyKey::secret_file(&path).map_err(key_error)?))
            }
            KeySource::PublicKey(path) => Keys::Fixed(Arc::new(
                VerifyKey::public_key_file(&path).map_err(key_error)?,
            )),
            KeySource::Jwks(url) => Keys::Set(
                Jwks::open(url, config.jwks)
                    .await
                    .map_err(|e| SdkError::invalid_input(e.to_string()))?,
            ),
        };
        Ok(Tokens {
            verifier: Verifier {
                keys,
                audience: config.audience,
                issuer: config.issuer,
                claim: config.claim,
                leeway: config.leeway,
            },
        })
    }

    /// Requests sent to the key server, for a key set.
    pub fn key_set_fetches(&self) -> Option<u64> {
        match &self.verifier.keys {
            Keys::Set(jwks) => Some(jwks.fetches()),
            Keys::Fixed(_) => None,
        }
    }
}

fn keeps_no_tokens() -> SdkError {
    SdkError::unsupported(KEEPS_NO_TOKENS)
}

#[async_trait]
impl Authenticator for Tokens {
    async fn add_token(&self, _token: &str, _tags: &[String]) -> Result<(), SdkError> {
        Err(keeps_no_tokens())
    }

    async fn remove_token(&self, _token: &str) -> Result<(), SdkError> {
        Err(keeps_no_tokens())
    }

    async fn add_tags(&self, _token: &str, _tags: &[String]) -> Result<(), SdkError> {
        Err(keeps_no_tokens())
    }

    async fn remove_tags(&self, _token: &str, _tags: &[String]) -> Result<(), SdkError> {
        Err(keeps_no_tokens())
    }

    /// The tags a valid token grants; `NOT_FOUND` for any other.
    async fn tags(&self, token: &str) -> Result<Vec<String>, SdkError> {
        match self.verifier.verify(token).await {
            Ok(grant) => Ok(grant.tag_strings()),
            Err(e) if e.is_rejection() => Err(SdkError::not_found(e.error.message)),
            Err(e) => Err(e.error),
        }
    }

    async fn check(&self) -> Result<(), SdkError> {
        match &self.verifier.keys {
            Keys::Fixed(_) => Ok(()),
            Keys::Set(jwks) => jwks.health().map_err(SdkError::unavailable),
        }
    }

    async fn authenticate(&self, token: &str) -> Result<Grant, AuthError> {
        self.verifier.verify(token).await
    }

    fn keeps_tokens(&self) -> bool {
        false
    }
}
