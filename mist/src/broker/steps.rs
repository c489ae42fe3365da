//! The steps of a command that must wait: on the token store (a token
//! check, an admin change) or on a plugin (a custom command).
//!
//! A step is performed away from the session's lock and yields an
//! [`Effect`], which the session then applies in order with the rest of its
//! input (`commands::apply`). A step never touches the session itself, so
//! one that finishes after its connection closed can change nothing but
//! what the effect names, and applying checks the session is still open.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RErr, ROk, RString, RVec};
use mist_sdk::abi::{CommandContext, ReplierApi, ReplierApi_TO};
use mist_sdk::{Access, ErrorKind, Message, SdkError};

use super::access::{Credential, Revoked, Standing, Token};
use super::command::{AdminOp, Refusal};
use super::output::Output;
use super::protocol;
use super::router::SessionId;
use super::{CommandRoute, Shared};
use crate::cluster::Confirmation;

/// A command waiting on the token store or a plugin.
pub(crate) enum Pending {
    /// A token given at connect time (WebSocket, HTTP), checked before the
    /// session's first command.
    ConnectToken(String),
    Auth(String),
    /// A registered token's permission for `op`.
    Check {
        token: Token,
        op: Checked,
    },
    Admin {
        op: AdminOp,
        token: String,
        tags: Vec<String>,
    },
    /// Boxed: a message is large and custom commands are rare.
    Custom(Box<CustomCall>),
    /// In a cluster: a new subscription's backplane channel, until the
    /// backplane confirmed it (bounded by the cluster's confirmation
    /// timeout). The session's next command, its `ping`, waits for it: the
    /// ping barrier across nodes.
    Confirm(Confirmation),
}

/// A custom command on its way to its plugin.
pub(crate) struct CustomCall {
    pub(crate) route: CommandRoute,
    pub(crate) request: Message,
    pub(crate) standing: Standing,
}

/// A basic command of a registered token, carried out once its tags are
/// allowed. (`unsubscribe` needs no permission: it only narrows.)
pub(crate) enum Checked {
    Subscribe(Vec<String>),
    Publish { tags: Vec<String>, raw_data: String },
}

impl Checked {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Checked::Subscribe(_) => "subscribe",
            Checked::Publish { .. } => "publish",
        }
    }

    fn tags(&self) -> &[String] {
        match self {
            Checked::Subscribe(tags) | Checked::Publish { tags, .. } => tags,
        }
    }
}

/// What a finished step asks of its session.
pub(crate) enum Effect {
    Nothing,
    /// The session is now authenticated with this credential (a first
    /// token, or on a session of a signed token, its replacement).
    Authenticated(Credential),
    /// A token given at connect was refused: the session stays anonymous,
    /// and its commands' errors say why.
    ConnectRefused(String),
    /// `op` is allowed; `epoch` is the revocation epoch its check began at.
    Granted {
        token: Token,
        op: Checked,
        epoch: u64,
    },
    /// Reply lines to queue.
    Reply(Vec<u8>),
    Refused(Refusal),
}

pub(crate) const PERMISSION_DENIED: &str =
    "permission denied: the token does not hold every one of these tags";

fn rstrings(tags: &[String]) -> RVec<RString> {
    tags.iter().map(|t| RString::from(t.as_str())).collect()
}

impl Pending {
    /// Performs the step. `session` and `output` are its session's, for a
    /// custom command's context and replies.
    pub(crate) async fn perform(
        self,
        shared: &Shared,
        session: SessionId,
        output: &Arc<Output>,
    ) -> Effect {
        if let Pending::Confirm(confirmation) = self {
            // Refused or late only means cross-node delivery is not live
            // yet (the backplane is down): the local subscription stands,
            // and the cluster subscribes the channel when it is back.
            if let Err(e) = confirmation.await {
                tracing::debug!(session = %session, "subscribed without the cluster's confirmation: {e}");
            }
            return Effect::Nothing;
        }
        if let Pending::Custom(call) = self {
            let CustomCall {
                route,
                request,
                standing,
            } = *call;
            return call_plugin(shared, session, output, route, request, standing).await;
        }
        let Some(auth) = shared.auth.get() else {
            return Effect::Nothing; // every other step exists only with an authenticator
        };
        let store = &auth.store;
        match self {
            Pending::ConnectToken(token) => match authenticate(shared, token).await {
                Ok(credential) => Effect::Authenticated(credential),
                Err(TokenCheck::Refused(why)) => {
                    tracing::debug!(session = %session, "token given at connect refused: session is anonymous");
                    Effect::ConnectRefused(why)
                }
                Err(TokenCheck::Failed(refusal)) => Effect::Refused(refusal),
            },
            Pending::Auth(token) => match authenticate(shared, token).await {
                Ok(credential) => Effect::Authenticated(credential),
                Err(TokenCheck::Refused(why)) => {
                    Effect::Refused(Refusal::new("auth", ErrorKind::UNAUTHENTICATED, why))
                }
                Err(TokenCheck::Failed(refusal)) => Effect::Refused(refusal),
            },
            Pending::Check { token, op } => {
                let epoch = shared.tokens.epoch();
                let allowed = store
                    .may_use(token.secret.as_str().into(), rstrings(op.tags()))
                    .await;
                match allowed {
                    ROk(true) => Effect::Granted { token, op, epoch },
                    ROk(false) => Effect::Refused(Refusal::new(
                        op.name(),
                        ErrorKind::PERMISSION_DENIED,
                        PERMISSION_DENIED,
                    )),
                    RErr(e) => Effect::Refused(shared.store_failed(op.name(), &e)),
                }
            }
            Pending::Admin { op, token, tags } => admin(shared, op, token, tags).await,
            Pending::Custom(_) | Pending::Confirm(_) => Effect::Nothing,
        }
    }
}

/// Why a token did not authenticate.
enum TokenCheck {
    /// The authenticator refused it; the words for the client.
    Refused(String),
    /// The store failed.
    Failed(Refusal),
}

/// Asks the authenticator about `token`, counts the answer, and turns a
/// grant into the session's credential (its end a monotonic instant).
async fn authenticate(shared: &Shared, token: String) -> Result<Credential, TokenCheck> {
    let Some(auth) = shared.auth.get() else {
        return Err(TokenCheck::Refused("no authenticator".into()));
    };
    let grant = match auth.store.authenticate(token.as_str().into()).await {
        ROk(grant) => grant,
        RErr(e)
            if e.error.kind == ErrorKind::UNAUTHENTICATED
                || e.error.kind == ErrorKind::NOT_FOUND =>
        {
            shared.stats.token_refused(e.rejection);
            tracing::debug!(reason = e.rejection.name(), "token refused");
            return Err(TokenCheck::Refused(e.error.message.into_string()));
        }
        RErr(e) => return Err(TokenCheck::Failed(shared.store_failed("auth", &e.error))),
    };
    let until = match grant.expires_at_ms.into_option() {
        None => None,
        Some(ms) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            if ms <= now {
                // Accepted, but over already (the store's clock is ours).
                shared.stats.token_refused(mist_sdk::Rejection::EXPIRED);
                return Err(TokenCheck::Refused("token expired".into()));
            }
            let left = std::time::Duration::from_millis(ms - now);
            // A grant too far ahead for the clock's arithmetic never ends.
            std::time::Instant::now().checked_add(left)
        }
    };
    shared.stats.tokens_accepted.fetch_add(1, Ordering::Relaxed);
    Ok(Credential::new(auth.keeps_tokens, token, grant, until))
}

async fn admin(shared: &Shared, op: AdminOp, token: String, tags: Vec<String>) -> Effect {
    let Some(auth) = shared.auth.get() else {
        return Effect::Nothing;
    };
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
            match op {
                AdminOp::Unset => {
                    shared.revoke(&key, Revoked::Tags(&tags));
                    shared.token_changed(&key);
                }
                AdminOp::Unregister => {
                    shared.revoke(&key, Revoked::Everything);
                    shared.token_changed(&key);
                }
                AdminOp::Register | AdminOp::Set | AdminOp::Tags => {}
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
        RErr(e) => Effect::Refused(shared.store_failed(op.name(), &e)),
    }
}

async fn call_plugin(
    shared: &Shared,
    session: SessionId,
    output: &Arc<Output>,
    route: CommandRoute,
    request: Message,
    standing: Standing,
) -> Effect {
    let mut allowed_tags = RVec::new();
    if standing.access == Access::TOKEN {
        match (standing.credential.as_deref(), shared.auth.get()) {
            (Some(Credential::Registered { token, .. }), Some(auth)) => {
                if let ROk(tags) = auth.store.tags(token.secret.as_str().into()).await {
                    allowed_tags = tags;
                }
            }
            (Some(Credential::Signed { tags, .. }), _) if !standing.expired() => {
                allowed_tags = tags.iter().map(|t| RString::from(t.as_str())).collect();
            }
            _ => {}
        }
    }
    let command = request.command.to_string();
    let context = CommandContext {
        session: session.to_u64(),
        access: standing.access,
        allowed_tags,
        replies: ReplierApi_TO::from_ptr(RArc::new(Replier(output.clone())), TD_Opaque),
    };
    match route.handler.call_command(context, request).await {
        ROk(()) => Effect::Nothing,
        RErr(e) => {
            shared.plugin_failed(&route.plugin, &e);
            tracing::warn!(plugin = %route.plugin, command = %command, kind = %e.kind, "custom command failed: {}", e.message);
            Effect::Refused(Refusal::new(
                &command,
                e.kind,
                format!("{} (plugin {})", e.message, route.plugin),
            ))
        }
    }
}

impl Shared {
    /// A token store call failed for a reason other than the token: it
    /// counts against the authenticator plugin, and the client is told the
    /// store is unavailable.
    fn store_failed(&self, command: &str, e: &SdkError) -> Refusal {
        if let Some(auth) = self.auth.get() {
            self.plugin_failed(&auth.plugin, e);
        }
        // Whatever went wrong inside the store (down, panicked), the client
        // can only retry later.
        Refusal::new(
            command,
            ErrorKind::UNAVAILABLE,
            format!("authenticator unavailable: {}", e.message),
        )
    }
}

/// Lets a custom command reply to its session, now or later. A reply that
/// finds the session's queue full is dropped like a delivery: a plugin
/// cannot grow a client's queue past its limit.
#[derive(Clone)]
struct Replier(Arc<Output>);

impl ReplierApi for Replier {
    fn send(&self, message: Message) -> bool {
        // Called from plugin code: a bug here must not unwind into it.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut out = Vec::new();
            protocol::message(&mut out, &message);
            self.0.push_notice(&out)
        }))
        .unwrap_or(false)
    }
}
