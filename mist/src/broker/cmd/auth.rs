//! `auth`, and a token presented at connect (a WebSocket or HTTP header):
//! the server token gives admin mode at once; any other token is looked up
//! in the store, and a registered one lets the session use its tags.
//! `auth` must be a connection's first command; a connect-time token is
//! checked before the first command, and a wrong one leaves the session
//! anonymous rather than failing a command the client did not send.

use std::sync::atomic::Ordering;

use abi_stable::std_types::{RErr, ROk};
use mist_sdk::{Access, ErrorKind};
use serde_json::value::RawValue;

use super::{store_failed, Context, Effect, Pending, Refusal, Step};
use crate::broker::access::{is_server_token, Token};
use crate::broker::id::SessionId;
use crate::broker::protocol;
use crate::broker::shared::Shared;
use crate::broker::state::Standing;

/// A token to look up in the store.
pub(crate) struct Login {
    token: String,
    /// Given at connect, not in an `auth` command.
    at_connect: bool,
}

impl Pending {
    /// The store lookup of `token`, given at connect or by `auth`.
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
    if !first {
        return Err(Refusal::invalid(
            "auth",
            "auth must be the first command of a connection",
        ));
    }
    let token = protocol::data_string(data)
        .map_err(|_| Refusal::invalid("auth", "auth needs the token as a string in data"))?;
    if is_server_token(&auth.server_token, &token) {
        cx.state.standing = Standing::new(Access::ADMIN);
        return Ok(Step::Done);
    }
    Ok(Step::Wait(Pending::auth(token, false)))
}

impl Login {
    pub(super) async fn perform(self, shared: &Shared, session: SessionId) -> Effect {
        let Some(auth) = shared.auth.get() else {
            return Effect::Nothing;
        };
        match auth.store.tags(self.token.as_str().into()).await {
            ROk(_) => Effect::Authenticated(Token::new(self.token)),
            RErr(e) if e.kind == ErrorKind::NOT_FOUND => {
                shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                if self.at_connect {
                    tracing::debug!(session = %session, "token given at connect refused: session is anonymous");
                    Effect::Nothing
                } else {
                    Effect::Refused(Refusal::new(
                        "auth",
                        ErrorKind::UNAUTHENTICATED,
                        "invalid token",
                    ))
                }
            }
            RErr(e) => Effect::Refused(store_failed(shared, "auth", &e)),
        }
    }
}

/// The session is now authenticated with a registered token.
pub(super) fn authenticated(cx: &mut Context<'_>, token: Token) {
    cx.shared.tokens.enter(&token, cx.id);
    cx.state.standing = Standing {
        access: Access::TOKEN,
        token: Some(Box::new(token)),
    };
    cx.state.commands_seen = true;
}
