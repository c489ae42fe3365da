//! Who may do what: a session's standing with the authenticator, the index
//! of open sessions by token, and revocation.
//!
//! Permissions are looked up in the token store at each command, but a
//! subscription outlives the command that made it. So when an admin takes
//! tags from a token (`unset`, `unregister`), every open session
//! authenticated with that token loses, at once, each subscription that
//! holds one of those tags, and is told so with a notice line. The sessions
//! of a token are found through [`Tokens`] without scanning all sessions.
//!
//! A permission check takes a round trip to the store, during which a
//! revocation may happen. Every revocation bumps an epoch before it prunes;
//! a checked subscribe is applied only if the epoch is unchanged since its
//! check began (else it is checked again), all under the router's write
//! lock, so a grant can never land after the revocation that should have
//! removed it.
//!
//! A signed token (a JWT, from an authenticator that keeps no tokens) is
//! not in any store: its grant is kept by its session (`state`'s
//! `Credential`), it is never revoked by an admin, and it ends at its
//! expiry (`expiry`) or when a later `auth` replaces it (`cmd/auth.rs`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use smallvec::SmallVec;
use subtle::ConstantTimeEq;

use super::id::SessionId;

/// A token's identity for indexing and for cluster events: its SHA-256.
/// The token itself never leaves the node.
pub(crate) type TokenKey = [u8; 32];

/// A registered token a session authenticated with. Never logged.
#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) secret: String,
    pub(crate) key: TokenKey,
}

impl Token {
    pub(crate) fn new(secret: String) -> Token {
        let key = Sha256::digest(secret.as_bytes()).into();
        Token { secret, key }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Compares in constant time: the comparison must not tell an attacker how
/// much of a guess was right.
pub(crate) fn is_server_token(server_token: &str, token: &str) -> bool {
    bool::from(token.as_bytes().ct_eq(server_token.as_bytes()))
}

/// Open sessions by the token they authenticated with.
#[derive(Default)]
pub(crate) struct Tokens {
    holders: Mutex<HashMap<TokenKey, Holders>>,
    /// Bumped by every revocation, before it prunes.
    epoch: AtomicU64,
}

struct Holders {
    /// The token, to ask the store again when another node says it changed.
    secret: String,
    sessions: SmallVec<[SessionId; 2]>,
}

impl Tokens {
    /// `session` is now authenticated with `token`.
    pub(crate) fn enter(&self, token: &Token, session: SessionId) {
        let mut holders = self.holders.lock();
        let entry = holders.entry(token.key).or_insert_with(|| Holders {
            secret: token.secret.clone(),
            sessions: SmallVec::new(),
        });
        if !entry.sessions.contains(&session) {
            entry.sessions.push(session);
        }
    }

    /// `session` is closed.
    pub(crate) fn leave(&self, key: &TokenKey, session: SessionId) {
        let mut holders = self.holders.lock();
        if let Some(entry) = holders.get_mut(key) {
            entry.sessions.retain(|s| *s != session);
            if entry.sessions.is_empty() {
                holders.remove(key);
            }
        }
    }

    /// The sessions holding `key`, and the token.
    pub(crate) fn holders(&self, key: &TokenKey) -> Option<(String, Vec<SessionId>)> {
        let holders = self.holders.lock();
        let entry = holders.get(key)?;
        Some((entry.secret.clone(), entry.sessions.to_vec()))
    }

    /// Whether an open session holds `key`.
    pub(crate) fn holds(&self, key: &TokenKey) -> bool {
        self.holders.lock().contains_key(key)
    }

    /// The token of `key`, while an open session holds it.
    pub(crate) fn secret(&self, key: &TokenKey) -> Option<String> {
        self.holders.lock().get(key).map(|h| h.secret.clone())
    }

    /// Every token an open session holds.
    pub(crate) fn keys(&self) -> Vec<TokenKey> {
        self.holders.lock().keys().copied().collect()
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

/// What a token lost.
#[derive(Debug)]
pub(crate) enum Revoked<'a> {
    /// `unset`: these tags.
    Tags(&'a [String]),
    /// `unregister`: the token itself, and with it every tag.
    Everything,
    /// Another node changed the token: keep what the store still allows.
    AllowedNow(&'a [String]),
    /// The store could not say what the token holds (fail closed).
    Unconfirmed,
}
