//! `auth`, and a token presented at connect (a WebSocket or HTTP header):
//! the server token gives admin mode at once; any other token is checked
//! by the authenticator ([`AuthenticatorApi::authenticate`]), and an
//! accepted one lets the session use its tags. `auth` must be a
//! connection's first command, except on a connection authenticated with a
//! signed token (a JWT), where a later `auth` with another one replaces it
//! (a refresh). A connect-time token is checked before the first command,
//! and a wrong one leaves the session anonymous rather than failing a
//! command the client did not send; its commands' errors then say why.
//!
//! [`AuthenticatorApi::authenticate`]: mist_sdk::abi::AuthenticatorApi::authenticate

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use abi_stable::std_types::{RErr, ROk};
use mist_sdk::{Access, ErrorKind, Rejection};
use serde_json::value::RawValue;

use super::{store_failed, Context, Effect, Pending, Refusal, Step};
use crate::broker::access::is_server_token;
use crate::broker::id::SessionId;
use crate::broker::protocol;
use crate::broker::shared::{revoke_from, Shared};
use crate::broker::state::{Credential, Standing};

/// When a connection's new token (a refresh) holds fewer tags.
pub(crate) const REFRESH_NOTICE: &str =
    "subscription revoked: the new token does not hold every tag of this subscription";

/// A token to check with the authenticator.
pub(crate) struct Login {
    token: String,
    /// Given at connect, not in an `auth` command.
    at_connect: bool,
}

impl Pending {
    /// The check of `token`, given at connect or by `auth`.
    pub(crate) fn auth(token: String, at_connect: bool) -> Pending {
        Pending::Auth(Login { token, at_connect })
    }
}

pub(super) fn run(
    cx: &mut Context<'_>,
    data: Option<&RawValue>,
    first: bool,
) -> Result<Step, Refusal> {
    let Some(auth) = cx.shared.auth.get() else {
        return Ok(Step::Done); // without an authenticator, auth is accepted and ignored
    };
    // A connection of a signed token (a JWT) may replace it: a refresh.
    let refresh = !first && cx.state.standing.is_signed();
    if !first && !refresh {
        return Err(Refusal::invalid(
            "auth",
            "auth must be the first command of a connection",
        ));
    }
    let token = protocol::data_string(data)
        .map_err(|_| Refusal::invalid("auth", "auth needs the token as a string in data"))?;
    if is_server_token(&auth.server_token, &token) {
        if refresh {
            return Err(Refusal::invalid(
                "auth",
                "a connection authenticated with a JWT may auth again only with another JWT",
            ));
        }
        cx.state.standing = Standing::new(Access::ADMIN);
        return Ok(Step::Done);
    }
    Ok(Step::Wait(Pending::auth(token, false)))
}

/// Why a token did not authenticate.
enum Denied {
    /// The authenticator refused it; the words for the client.
    Refused(String),
    /// The store failed.
    Failed(Refusal),
}

impl Login {
    pub(super) async fn perform(self, shared: &Shared, session: SessionId) -> Effect {
        match authenticate(shared, self.token).await {
            Ok(credential) => Effect::Authenticated(credential),
            Err(Denied::Refused(why)) if self.at_connect => {
                tracing::debug!(session = %session, "token given at connect refused: session is anonymous");
                Effect::ConnectRefused(why.into())
            }
            Err(Denied::Refused(why)) => {
                Effect::Refused(Refusal::new("auth", ErrorKind::UNAUTHENTICATED, why))
            }
            Err(Denied::Failed(refusal)) => Effect::Refused(refusal),
        }
    }
}

/// Asks the authenticator about `token`, counts the answer, and turns a
/// grant into the session's credential (its end a monotonic instant, so
/// that the clock being set back cannot lengthen it).
async fn authenticate(shared: &Shared, token: String) -> Result<Credential, Denied> {
    let Some(auth) = shared.auth.get() else {
        return Err(Denied::Refused("no authenticator".into()));
    };
    let grant = match auth.store.authenticate(token.as_str().into()).await {
        ROk(grant) => grant,
        RErr(e)
            if e.error.kind == ErrorKind::UNAUTHENTICATED
                || e.error.kind == ErrorKind::NOT_FOUND =>
        {
            shared.stats.token_refused(e.rejection);
            // The reason only: never the token or a claim's value.
            tracing::debug!(reason = e.rejection.name(), "token refused");
            return Err(Denied::Refused(e.error.message.into_string()));
        }
        RErr(e) => return Err(Denied::Failed(store_failed(shared, "auth", &e.error))),
    };
    let until = match grant.expires_at_ms.into_option() {
        None => None,
        Some(ms) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            if ms <= now {
                // Accepted, but over already (the store's clock is ours).
                shared.stats.token_refused(Rejection::EXPIRED);
                return Err(Denied::Refused("token expired".into()));
            }
            // A grant too far ahead for the clock's arithmetic never ends.
            Instant::now().checked_add(Duration::from_millis(ms - now))
        }
    };
    shared.stats.tokens_accepted.fetch_add(1, Ordering::Relaxed);
    Ok(Credential::new(auth.keeps_tokens, token, grant, until))
}

/// The session is authenticated with `credential`: a first token, or a
/// signed token replacing one (a refresh), which takes away the
/// subscriptions outside its tags and keeps the rest, without a gap.
pub(super) fn authenticated(cx: &mut Context<'_>, credential: Credential) {
    let refresh = cx.state.standing.is_signed();
    if let Credential::Registered { token, .. } = &credential {
        cx.shared.tokens.enter(token, cx.id);
    }
    {
        // One lock for the pruning and the new deadline: the expiry task
        // sees the old grant or the new one, never a mix.
        let mut router = cx.shared.router.write();
        if refresh {
            let keep = |set: &[String]| credential.holds(set);
            let removed = revoke_from(&mut router, cx.id, keep, REFRESH_NOTICE);
            if removed > 0 {
                tracing::debug!(session = %cx.id, subscriptions = removed, "a refreshed token holds fewer tags");
            }
        }
        cx.shared.expiry.set(&mut router, cx.id, credential.until());
    }
    cx.state.standing = Standing {
        access: Access::TOKEN,
        credential: Some(Box::new(credential)),
    };
    cx.state.commands_seen = true;
}

/// A token given at connect was refused: the session stays anonymous, and
/// its commands' errors say `why`.
pub(super) fn refused_at_connect(cx: &mut Context<'_>, why: Box<str>) {
    cx.state.standing.credential = Some(Box::new(Credential::Refused(why)));
}
