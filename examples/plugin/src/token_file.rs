//! `tokenfile:///path/tokens.toml`: tokens and their tags read once, at
//! start, from a TOML file the operator writes:
//!
//! ```toml
//! [tokens]
//! alice = ["chat", "news"]
//! bob = ["chat"]
//! ```
//!
//! The file is the truth: admin commands that would change it are refused.

use std::collections::{BTreeMap, BTreeSet};

use mist_sdk::{async_trait, Authenticator, SdkError};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    tokens: BTreeMap<String, BTreeSet<String>>,
}

/// The tokens of one file.
pub struct TokenFile {
    tokens: BTreeMap<String, BTreeSet<String>>,
}

impl TokenFile {
    /// Reads the file `uri` names. A missing or malformed file is an error
    /// that stops the broker's start.
    pub fn open(uri: &str) -> Result<TokenFile, SdkError> {
        let path = uri
            .strip_prefix("tokenfile://")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| SdkError::invalid_input("expected tokenfile:///path/to/tokens.toml"))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| SdkError::invalid_input(format!("cannot read {path}: {e}")))?;
        let file: File = toml::from_str(&text)
            .map_err(|e| SdkError::invalid_input(format!("{path} is not a token file: {e}")))?;
        tracing::info!(tokens = file.tokens.len(), "read the token file {path}");
        Ok(TokenFile {
            tokens: file.tokens,
        })
    }
}

fn read_only() -> SdkError {
    SdkError::unsupported("the token file is read-only: edit it and restart mist")
}

#[async_trait]
impl Authenticator for TokenFile {
    async fn add_token(&self, _token: &str, _tags: &[String]) -> Result<(), SdkError> {
        Err(read_only())
    }

    async fn remove_token(&self, _token: &str) -> Result<(), SdkError> {
        Err(read_only())
    }

    async fn add_tags(&self, _token: &str, _tags: &[String]) -> Result<(), SdkError> {
        Err(read_only())
    }

    async fn remove_tags(&self, _token: &str, _tags: &[String]) -> Result<(), SdkError> {
        Err(read_only())
    }

    async fn tags(&self, token: &str) -> Result<Vec<String>, SdkError> {
        self.tokens
            .get(token)
            .map(|tags| tags.iter().cloned().collect())
            .ok_or_else(|| SdkError::not_found("no such token"))
    }
}
