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

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use mist_sdk::Access;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use smallvec::SmallVec;
use subtle::ConstantTimeEq;

use super::protocol;
use super::router::{Router, SessionId};
use super::Shared;

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

/// What a session may do.
#[derive(Debug, Clone)]
pub(crate) struct Standing {
    pub(crate) access: Access,
    /// The token of an `Access::TOKEN` session, or why an anonymous
    /// session's token was refused (boxed: most sessions have none).
    pub(crate) credential: Option<Box<Credential>>,
}

impl Standing {
    pub(crate) fn new(access: Access) -> Standing {
        Standing {
            access,
            credential: None,
        }
    }

    /// The registered token of a session that has one.
    pub(crate) fn registered(&self) -> Option<&Token> {
        match self.credential.as_deref() {
            Some(Credential::Registered { token, .. }) => Some(token),
            _ => None,
        }
    }

    /// Whether the session authenticated with a signed token (a JWT),
    /// which a later `auth` may replace.
    pub(crate) fn is_signed(&self) -> bool {
        matches!(self.credential.as_deref(), Some(Credential::Signed { .. }))
    }

    /// When the session's grant ends, if it does.
    pub(crate) fn until(&self) -> Option<Instant> {
        match self.credential.as_deref() {
            Some(Credential::Registered { until, .. } | Credential::Signed { until, .. }) => *until,
            _ => None,
        }
    }

    /// Whether the session's grant has ended.
    pub(crate) fn expired(&self) -> bool {
        self.until().is_some_and(|until| Instant::now() >= until)
    }
}

/// What a session authenticated with.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    /// A token registered in the store: its tags are looked up in the
    /// store at each command, so an admin's change applies at once.
    Registered {
        token: Token,
        until: Option<Instant>,
    },
    /// A token that carries its grant (a JWT, from an authenticator that
    /// keeps no tokens): checked once; its tags hold until `until`.
    Signed {
        /// Sorted, each once.
        tags: Box<[String]>,
        until: Option<Instant>,
    },
    /// An anonymous session's token given at connect, refused: why, for
    /// the errors its commands get.
    Refused(Box<str>),
}

impl Credential {
    /// What `grant` of an authenticator gives, `until` the monotonic
    /// instant it ends. `token` is kept only for a store that keeps tokens.
    pub(crate) fn new(
        keeps_tokens: bool,
        token: String,
        grant: mist_sdk::Grant,
        until: Option<Instant>,
    ) -> Credential {
        if keeps_tokens {
            return Credential::Registered {
                token: Token::new(token),
                until,
            };
        }
        let mut tags: Vec<String> = grant.tags.into_iter().map(|t| t.into_string()).collect();
        tags.sort_unstable();
        tags.dedup();
        Credential::Signed {
            tags: tags.into_boxed_slice(),
            until,
        }
    }

    /// For a signed token: whether it holds every one of `tags`.
    pub(crate) fn holds<S: AsRef<str>>(&self, tags: &[S]) -> bool {
        match self {
            Credential::Signed { tags: held, .. } => tags.iter().all(|t| {
                held.binary_search_by(|h| h.as_str().cmp(t.as_ref()))
                    .is_ok()
            }),
            _ => false,
        }
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
    fn holders(&self, key: &TokenKey) -> Option<(String, Vec<SessionId>)> {
        let holders = self.holders.lock();
        let entry = holders.get(key)?;
        Some((entry.secret.clone(), entry.sessions.to_vec()))
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn bump(&self) {
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
}

const NOTICE: &str =
    "subscription revoked: the token no longer holds every tag of this subscription";
/// When a connection's token expires.
pub(crate) const EXPIRED_NOTICE: &str = "subscription revoked: the token expired";
/// When a connection's new token (a refresh) holds fewer tags.
pub(crate) const REFRESH_NOTICE: &str =
    "subscription revoked: the new token does not hold every tag of this subscription";

impl Shared {
    /// Takes from every open session of `key` each subscription that holds
    /// a tag no longer allowed, and tells it so. Returns how many
    /// subscriptions went.
    pub(crate) fn revoke(&self, key: &TokenKey, revoked: Revoked<'_>) -> usize {
        self.tokens.bump();
        let Some((_, sessions)) = self.tokens.holders(key) else {
            return 0;
        };
        let keep = |set: &[String]| match &revoked {
            Revoked::Tags(tags) => !set.iter().any(|t| tags.contains(t)),
            Revoked::Everything => false,
            Revoked::AllowedNow(allowed) => set.iter().all(|t| allowed.contains(t)),
        };
        let mut count = 0;
        let mut router = self.router.write();
        for session in sessions {
            let removed = prune_with_notice(&mut router, session, keep, NOTICE);
            if removed == 0 {
                continue;
            }
            count += removed;
            tracing::info!(session = %session, subscriptions = removed, "revoked subscriptions of a session whose token lost tags");
        }
        count
    }

    /// Another node says the token with `key` changed: ask the store what
    /// it allows now and revoke the rest.
    pub(crate) async fn recheck(&self, key: &TokenKey) {
        let (Some(auth), Some((secret, _))) = (self.auth.get(), self.tokens.holders(key)) else {
            return;
        };
        let allowed: Vec<String> = match auth.store.tags(secret.as_str().into()).await {
            abi_stable::std_types::ROk(tags) => tags.into_iter().map(|t| t.into_string()).collect(),
            abi_stable::std_types::RErr(e) if e.kind == mist_sdk::ErrorKind::NOT_FOUND => {
                Vec::new()
            }
            abi_stable::std_types::RErr(e) => {
                tracing::warn!(kind = %e.kind, "cannot recheck a changed token: {}", e.message);
                return;
            }
        };
        self.revoke(key, Revoked::AllowedNow(&allowed));
    }
}

/// Takes from `session` every subscription `keep` refuses, and queues a
/// `revoked` notice saying `why` for each. Returns how many went.
pub(crate) fn prune_with_notice(
    router: &mut Router,
    session: SessionId,
    keep: impl Fn(&[String]) -> bool,
    why: &str,
) -> usize {
    let removed = router.prune(session, keep);
    if removed.is_empty() {
        return 0;
    }
    if let Some(output) = router.output(session) {
        let mut out = Vec::new();
        for set in &removed {
            protocol::notice(&mut out, "revoked", set, why);
        }
        // A notice like any other line: queued in order after the
        // deliveries already queued, dropped if the client is not reading
        // at all.
        output.push_notice(&out);
    }
    removed.len()
}
