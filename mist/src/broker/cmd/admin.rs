//! The admin commands (SPEC §3): `register`, `unregister`, `set`, `unset`
//! and `tags`, for a session in admin mode. A change that takes tags away
//! (`unset`, `unregister`) is revoked on this node before the admin's next
//! reply, then passed on to the other nodes of a cluster.

use abi_stable::std_types::{RErr, ROk, RString, RVec};
use mist_sdk::{Access, ErrorKind};

use super::{store_failed, Context, Effect, Pending, Refusal, Step};
use crate::broker::access::{is_server_token, Revoked, Token};
use crate::broker::protocol::{self, Request};
use crate::broker::shared::Shared;

/// The admin commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminOp {
    Register,
    Unregister,
    Set,
    Unset,
    Tags,
}

impl AdminOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            AdminOp::Register => "register",
            AdminOp::Unregister => "unregister",
            AdminOp::Set => "set",
            AdminOp::Unset => "unset",
            AdminOp::Tags => "tags",
        }
    }

    pub(super) fn from_name(name: &str) -> Option<AdminOp> {
        Some(match name {
            "register" => AdminOp::Register,
            "unregister" => AdminOp::Unregister,
            "set" => AdminOp::Set,
            "unset" => AdminOp::Unset,
            "tags" => AdminOp::Tags,
            _ => return None,
        })
    }
}

/// A change to (or a read of) the token store.
pub(crate) struct Change {
    op: AdminOp,
    token: String,
    tags: Vec<String>,
}

pub(super) fn run(
    cx: &mut Context<'_>,
    op: AdminOp,
    request: &Request<'_>,
) -> Result<Step, Refusal> {
    let command = op.name();
    let Some(auth) = cx.shared.auth.get() else {
        return Err(Refusal::invalid(
            command,
            "admin commands need the server to run with an authenticator",
        ));
    };
    if cx.state.standing.access != Access::ADMIN {
        return Err(Refusal::new(
            command,
            ErrorKind::PERMISSION_DENIED,
            "admin commands need admin mode: auth with the server token first",
        ));
    }
    let token = match protocol::data_string(request.data) {
        Ok(token) if !token.is_empty() => token,
        _ => {
            return Err(Refusal::invalid(
                command,
                "missing data: the token, a non-empty string",
            ))
        }
    };
    if op == AdminOp::Register && is_server_token(&auth.server_token, &token) {
        return Err(Refusal::invalid(command, "that token is the server token"));
    }
    let tags = match op {
        AdminOp::Register => protocol::parse_optional_tags(request.tags),
        AdminOp::Set | AdminOp::Unset => protocol::parse_tags(request.tags),
        AdminOp::Unregister | AdminOp::Tags => Ok(Default::default()),
    }
    .map_err(|e| Refusal::protocol(command, e))?;
    Ok(Step::Wait(Pending::Admin(Change {
        op,
        token,
        tags: tags.iter().map(|t| t.to_string()).collect(),
    })))
}

fn rstrings(tags: &[String]) -> RVec<RString> {
    tags.iter().map(|t| RString::from(t.as_str())).collect()
}

impl Change {
    pub(super) async fn perform(self, shared: &Shared) -> Effect {
        let Some(auth) = shared.auth.get() else {
            return Effect::Nothing;
        };
        let Change { op, token, tags } = self;
        let store = &auth.store;
        let secret = RString::from(token.as_str());
        let result = match op {
            AdminOp::Register => store.add_token(secret, rstrings(&tags)).await.map(|_| None),
            AdminOp::Unregister => store.remove_token(secret).await.map(|_| None),
            AdminOp::Set => store.add_tags(secret, rstrings(&tags)).await.map(|_| None),
            AdminOp::Unset => store
                .remove_tags(secret, rstrings(&tags))
                .await
                .map(|_| None),
            AdminOp::Tags => store.tags(secret).await.map(Some),
        };
        match result {
            ROk(None) => {
                // Revoked before this step completes, so before the admin's
                // next reply: the admin sees the change in effect.
                let key = Token::new(token).key;
                let revoked = match op {
                    AdminOp::Unset => Some(Revoked::Tags(&tags)),
                    AdminOp::Unregister => Some(Revoked::Everything),
                    AdminOp::Register | AdminOp::Set | AdminOp::Tags => None,
                };
                if let Some(revoked) = revoked {
                    shared.revoke(&key, revoked);
                    shared.token_changed(&key);
                }
                Effect::Nothing
            }
            ROk(Some(tags)) => {
                let mut tags: Vec<String> = tags.into_iter().map(RString::into_string).collect();
                tags.sort();
                let mut out = Vec::new();
                protocol::reply_tags(&mut out, "tags", &tags);
                Effect::Reply(out)
            }
            RErr(e) if e.kind == ErrorKind::NOT_FOUND || e.kind == ErrorKind::ALREADY_EXISTS => {
                Effect::Refused(Refusal::new(op.name(), e.kind, &e.message))
            }
            RErr(e) => Effect::Refused(store_failed(shared, op.name(), &e)),
        }
    }
}
