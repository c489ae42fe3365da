//! The commands of SPEC §2–3, one file per command or small family, as
//! in mini-redis's `cmd/`: each holds its parse, its permission check and
//! what it does, next to each other.
//!
//! | file | commands |
//! |---|---|
//! | `ping.rs` | `ping` |
//! | `publish.rs` | `publish` |
//! | `subscribe.rs` | `subscribe`, `unsubscribe` |
//! | `list.rs` | `list` |
//! | `auth.rs` | `auth`, and a token given at connect |
//! | `who.rs` | `who` |
//! | `admin.rs` | `register`, `unregister`, `set`, `unset`, `tags` |
//! | `custom.rs` | a plugin's command |
//!
//! [`execute`] carries one request out on a [`Context`] and says what
//! comes next ([`Step`]): done, or a [`Pending`] step that waits on the
//! token store or a plugin. The session performs a pending step away from
//! its lock ([`Pending::perform`]) and [`apply`]s the [`Effect`] under it,
//! which again says what comes next. None of this knows about input,
//! backlogs or futures: sequencing is the session's job.

mod admin;
mod auth;
mod custom;
mod list;
mod ping;
mod publish;
mod subscribe;
#[cfg(test)]
mod tests;
mod who;

use std::fmt::Display;
use std::sync::Arc;

use abi_stable::std_types::{RErr, ROk, RString, RVec};
use mist_sdk::{Access, ErrorKind, SdkError};

use super::access::Token;
use super::delivery::Delivery;
use super::framing::Frame;
use super::id::SessionId;
use super::output::Output;
use super::protocol::{self, ProtocolError, RawTags, TagSet};
use super::shared::Shared;
use super::state::State;
use crate::cluster::Confirmation;

pub(crate) use admin::AdminOp;

/// Everything a command may touch: the broker's shared state, the
/// session's id, its output queue and its state.
pub(crate) struct Context<'s> {
    pub(crate) shared: &'s Shared,
    pub(crate) id: SessionId,
    pub(crate) output: &'s Output,
    pub(crate) state: &'s mut State,
    /// Publishes matched and not yet queued: the router's read lock is
    /// held until [`Context::flush`] (see `delivery`).
    delivery: Option<Delivery<'s>>,
    /// A reply was queued since [`Context::take_replied`] last asked.
    replied: bool,
    /// The reply being written, moved into the queue when done: here, not
    /// in the session's state, which an idle session keeps.
    out: Vec<u8>,
}

/// What comes after a command (or a finished step): nothing, or a step
/// to wait for.
pub(crate) enum Step {
    Done,
    Wait(Pending),
}

/// A command waiting on the token store or a plugin, or a subscription on
/// the cluster's confirmation.
pub(crate) enum Pending {
    /// A token (from `auth`, or given at connect and checked before the
    /// session's first command).
    Auth(auth::Login),
    /// A registered token's permission for `op`.
    Check {
        token: Token,
        op: Checked,
    },
    Admin(admin::Change),
    /// Boxed: a message is large and custom commands are rare.
    Custom(Box<custom::Call>),
    /// In a cluster: a new subscription's backplane channel, until the
    /// backplane confirmed it (bounded by the cluster's confirmation
    /// timeout). The session's next command, its `ping`, waits for it: the
    /// ping barrier across nodes.
    Confirm(Confirmation),
}

/// A command of a registered token, carried out once the store allows
/// its tags. (`unsubscribe` needs no permission: it only narrows.)
pub(crate) enum Checked {
    Subscribe(Vec<String>),
    Publish {
        tags: TagSet<'static>,
        raw_data: String,
    },
}

/// What a finished step asks of its session.
pub(crate) enum Effect {
    Nothing,
    /// The session is now authenticated with this registered token.
    Authenticated(Token),
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

/// Why a request was not carried out: the command it was (or `""`), a
/// kind for transports that answer with a status of their own, and words
/// for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) command: String,
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(command: &str, kind: ErrorKind, message: impl Display) -> Refusal {
        Refusal {
            command: command.to_owned(),
            kind,
            message: message.to_string(),
        }
    }

    /// A malformed request.
    pub(crate) fn invalid(command: &str, message: impl Display) -> Refusal {
        Refusal::new(command, ErrorKind::INVALID_INPUT, message)
    }

    pub(crate) fn protocol(command: &str, error: ProtocolError) -> Refusal {
        let kind = match error {
            ProtocolError::TooLarge { .. } => ErrorKind::TOO_LARGE,
            _ => ErrorKind::INVALID_INPUT,
        };
        Refusal::new(command, kind, error)
    }

    pub(crate) fn to_sdk(&self) -> SdkError {
        SdkError::new(self.kind, self.message.clone())
    }
}

/// A session keeps its publish batch between feeds up to this size.
const KEEP_BATCH: usize = 64 * 1024;

pub(crate) const NOT_AUTHENTICATED: &str = "not authenticated: send auth with a valid token first";

pub(crate) const PERMISSION_DENIED: &str =
    "permission denied: the token does not hold every one of these tags";

impl<'s> Context<'s> {
    pub(crate) fn new(
        shared: &'s Shared,
        id: SessionId,
        output: &'s Output,
        state: &'s mut State,
    ) -> Self {
        Context {
            shared,
            id,
            output,
            state,
            delivery: None,
            replied: false,
            out: Vec::new(),
        }
    }

    /// Whether a reply was queued since the last call.
    pub(crate) fn take_replied(&mut self) -> bool {
        std::mem::take(&mut self.replied)
    }

    /// Queues the deliveries of the publishes so far and releases the
    /// router. Publishes before a command that is not a publish reach
    /// subscribers before it acts.
    pub(crate) fn flush(&mut self) {
        if let Some(delivery) = self.delivery.take() {
            let (_, batch) = delivery.finish();
            // Kept for the next feed unless a burst grew it: an idle
            // publisher holds little.
            if batch.footprint() <= KEEP_BATCH {
                self.state.batch = Some(batch);
            }
        }
    }

    /// The open delivery, begun if need be.
    fn delivery(&mut self) -> &mut Delivery<'s> {
        let (shared, state) = (self.shared, &mut *self.state);
        self.delivery
            .get_or_insert_with(|| Delivery::begin(shared, state.batch.take().unwrap_or_default()))
    }

    /// Whether this session may use tags: freely (`None`), or once the
    /// store says its token holds them (`Some`). Refused while it is not
    /// authenticated.
    fn permission(&self, command: &str) -> Result<Option<Token>, Refusal> {
        match (self.state.standing.access, &self.state.standing.token) {
            (Access::OPEN | Access::ADMIN, _) => Ok(None),
            (Access::TOKEN, Some(token)) => Ok(Some(Token::clone(token))),
            _ => Err(not_authenticated(command)),
        }
    }

    /// Refuses a session that is not authenticated (for the commands that
    /// need no store check).
    fn authenticated(&self, command: &str) -> Result<(), Refusal> {
        match self.state.standing.access {
            Access::OPEN | Access::ADMIN | Access::TOKEN => Ok(()),
            _ => Err(not_authenticated(command)),
        }
    }

    fn reply(&mut self, command: &str, data: &str) {
        protocol::reply(&mut self.out, command, data);
        self.push_reply();
    }

    /// Answers a refusal with an error reply.
    pub(crate) fn refuse(&mut self, refusal: &Refusal) {
        protocol::error_reply(&mut self.out, &refusal.command, &refusal.message);
        self.push_reply();
    }

    fn push_reply(&mut self) {
        // Moved into the queue, not copied: a session holds no reply
        // buffer while it is idle.
        self.output.push_reply(std::mem::take(&mut self.out));
        self.replied = true;
    }
}

fn not_authenticated(command: &str) -> Refusal {
    Refusal::new(command, ErrorKind::UNAUTHENTICATED, NOT_AUTHENTICATED)
}

/// Carries out one request, or says what it waits for.
pub(crate) fn execute(cx: &mut Context<'_>, frame: Frame<'_>) -> Result<Step, Refusal> {
    let line = match frame {
        Frame::Line(line) => line,
        Frame::TooLarge(size) => {
            let limit = cx.shared.limits.max_message_bytes;
            return Err(Refusal::protocol(
                "",
                ProtocolError::TooLarge { size, limit },
            ));
        }
        Frame::NoRoom(size) => {
            return Err(Refusal::new(
                "",
                ErrorKind::OVERLOADED,
                format!(
                    "the broker has no memory left for a line this long ({size} bytes so far): closing the connection"
                ),
            ))
        }
    };
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(Step::Done); // a blank line from a person typing into netcat
    }
    let first = !std::mem::replace(&mut cx.state.commands_seen, true);
    if let Some((tags, data)) = protocol::canonical_publish(line) {
        // Nearly every publish: the same as the general path below,
        // without a general JSON parse.
        return publish::run(cx, RawTags::Plain(tags), Ok(data));
    }
    let request = protocol::parse_request(line).map_err(|e| Refusal::protocol("", e))?;
    let Some(command) = request.command.clone() else {
        return Err(Refusal::protocol("", ProtocolError::MissingCommand));
    };
    if command != "publish" {
        cx.flush();
    }
    match &*command {
        "" => Err(Refusal::protocol("", ProtocolError::MissingCommand)),
        "ping" => ping::run(cx),
        "publish" => publish::run(
            cx,
            RawTags::Json(request.tags),
            protocol::raw_data(request.data),
        ),
        "subscribe" => subscribe::subscribe(cx, &request),
        "unsubscribe" => subscribe::unsubscribe(cx, &request),
        "list" => list::run(cx),
        "auth" => auth::run(cx, request.data, first),
        "who" => who::run(cx),
        name => match AdminOp::from_name(name) {
            Some(op) => admin::run(cx, op, &request),
            None => custom::run(cx, name, &request),
        },
    }
}

impl Pending {
    /// Performs the step, away from the session's lock. `session` and
    /// `output` are its session's, for a custom command's context and
    /// replies.
    pub(crate) async fn perform(
        self,
        shared: &Shared,
        session: SessionId,
        output: &Arc<Output>,
    ) -> Effect {
        match self {
            Pending::Confirm(confirmation) => {
                // Refused or late only means cross-node delivery is not
                // live yet (the backplane is down): the local subscription
                // stands, and the cluster subscribes the channel when it
                // is back.
                if let Err(e) = confirmation.await {
                    tracing::debug!(session = %session, "subscribed without the cluster's confirmation: {e}");
                }
                Effect::Nothing
            }
            Pending::Custom(call) => call.perform(shared, session, output).await,
            Pending::Auth(login) => login.perform(shared, session).await,
            Pending::Admin(change) => change.perform(shared).await,
            Pending::Check { token, op } => check(shared, token, op).await,
        }
    }
}

/// Asks the store whether the token holds every tag of `op`.
async fn check(shared: &Shared, token: Token, op: Checked) -> Effect {
    let Some(auth) = shared.auth.get() else {
        return Effect::Nothing; // a token exists only with an authenticator
    };
    let epoch = shared.tokens.epoch();
    let (name, tags): (&str, RVec<RString>) = match &op {
        Checked::Subscribe(tags) => (
            "subscribe",
            tags.iter().map(|t| RString::from(t.as_str())).collect(),
        ),
        Checked::Publish { tags, .. } => (
            "publish",
            tags.iter().map(|t| RString::from(&**t)).collect(),
        ),
    };
    match auth.store.may_use(token.secret.as_str().into(), tags).await {
        ROk(true) => Effect::Granted { token, op, epoch },
        ROk(false) => Effect::Refused(Refusal::new(
            name,
            ErrorKind::PERMISSION_DENIED,
            PERMISSION_DENIED,
        )),
        RErr(e) => Effect::Refused(store_failed(shared, name, &e)),
    }
}

/// Carries out what a finished step asks; says what comes next.
pub(crate) fn apply(cx: &mut Context<'_>, effect: Effect) -> Result<Step, Refusal> {
    match effect {
        Effect::Nothing => Ok(Step::Done),
        Effect::Authenticated(token) => {
            auth::authenticated(cx, token);
            Ok(Step::Done)
        }
        Effect::Granted { token, op, epoch } => match op {
            Checked::Subscribe(tags) => subscribe::add(cx, tags, Some((token, epoch))),
            Checked::Publish { tags, raw_data } => {
                publish::granted(cx, token, tags, raw_data, epoch)
            }
        },
        Effect::Reply(lines) => {
            cx.out = lines;
            cx.push_reply();
            Ok(Step::Done)
        }
        Effect::Refused(refusal) => Err(refusal),
    }
}

/// A token store call failed for a reason other than the token: it counts
/// against the authenticator plugin, and the client is told the store is
/// unavailable.
fn store_failed(shared: &Shared, command: &str, e: &SdkError) -> Refusal {
    if let Some(auth) = shared.auth.get() {
        shared.plugin_failed(&auth.plugin, e);
    }
    // Whatever went wrong inside the store (down, panicked), the client can
    // only retry later.
    Refusal::new(
        command,
        ErrorKind::UNAVAILABLE,
        format!("authenticator unavailable: {}", e.message),
    )
}
