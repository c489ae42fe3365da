//! What each command does (SPEC §2–3), for one session.
//!
//! [`Session::execute`] carries out a request at once when it can. A
//! command that must ask the authenticator or a plugin becomes a
//! [`Pending`] step, which [`Session::perform`] completes asynchronously
//! before the session reads on.

use std::fmt::Display;
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RErr, ROk, RString, RVec};
use mist_sdk::abi::{CommandContext, ReplierApi, ReplierApi_TO};
use mist_sdk::{Access, ErrorKind, Message, SdkError};
use subtle::ConstantTimeEq;

use super::batch::Batch;
use super::framing::Frame;
use super::output::Output;
use super::protocol::{self, ProtocolError, RawTags, Request};
use super::session::Session;
use super::{CommandRoute, Shared};

/// A session's standing and scratch space, guarded by its input lock.
pub(crate) struct State {
    access: Access,
    /// The registered token of an `Access::TOKEN` session. Never logged.
    token: Option<String>,
    /// A command has been processed: `auth` is no longer allowed.
    pub(crate) commands_seen: bool,
    /// A token given at connect, not yet checked with the authenticator.
    connect_token: Option<String>,
    pub(crate) batch: Batch,
    out: Vec<u8>,
}

/// What became of one request.
pub(crate) enum Step {
    Done,
    Wait(Pending),
}

/// A command waiting on the authenticator or a plugin.
pub(crate) enum Pending {
    ConnectToken(String),
    Auth(String),
    Checked {
        token: String,
        op: Checked,
    },
    Admin {
        op: AdminOp,
        token: String,
        tags: Vec<String>,
    },
    Custom {
        route: CommandRoute,
        request: Message,
    },
}

/// A basic command of a registered token, allowed once the token's tags are checked.
pub(crate) enum Checked {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    Publish { tags: Vec<String>, raw_data: String },
}

#[derive(Clone, Copy)]
pub(crate) enum AdminOp {
    Register,
    Unregister,
    Set,
    Unset,
    Tags,
}

/// May this session use tags?
enum Gate {
    Free,
    Check(String),
    Denied,
}

const NOT_AUTHENTICATED: &str = "not authenticated: send auth with a valid token first";

impl State {
    pub(crate) fn new(access: Access) -> Self {
        State {
            access,
            token: None,
            commands_seen: false,
            connect_token: None,
            batch: Batch::default(),
            out: Vec::new(),
        }
    }

    /// A token given at connect time (WebSocket/HTTP header or query).
    pub(crate) fn present_token(&mut self, shared: &Shared, token: String) {
        let Some(auth) = shared.auth.get() else {
            return; // no authenticator: tokens mean nothing
        };
        if is_server_token(auth, &token) {
            self.access = Access::ADMIN;
            self.commands_seen = true;
        } else {
            self.connect_token = Some(token);
        }
    }

    /// The check of a connect-time token, due before the first command.
    pub(crate) fn take_connect_check(&mut self) -> Option<Pending> {
        self.connect_token.take().map(Pending::ConnectToken)
    }

    fn gate(&self) -> Gate {
        match self.access {
            Access::OPEN | Access::ADMIN => Gate::Free,
            Access::TOKEN => Gate::Check(self.token.clone().unwrap_or_default()),
            _ => Gate::Denied,
        }
    }
}

fn is_server_token(auth: &super::Auth, token: &str) -> bool {
    // Constant time: the comparison must not tell an attacker how much of
    // a guess was right.
    bool::from(token.as_bytes().ct_eq(auth.server_token.as_bytes()))
}

fn owned(tags: &[std::borrow::Cow<'_, str>]) -> Vec<String> {
    tags.iter().map(|t| t.to_string()).collect()
}

fn rstrings(tags: &[String]) -> RVec<RString> {
    tags.iter().map(|t| RString::from(t.as_str())).collect()
}

impl Session {
    fn reply(&self, st: &mut State, command: &str, data: &str) {
        protocol::reply(&mut st.out, command, data);
        self.output.push_reply(&st.out);
        st.out.clear();
    }

    fn error(&self, st: &mut State, command: &str, error: impl Display) -> Step {
        protocol::error_reply(&mut st.out, command, &error.to_string());
        self.output.push_reply(&st.out);
        st.out.clear();
        Step::Done
    }

    /// Carries out one request, or says what it waits for.
    pub(crate) fn execute(&self, st: &mut State, frame: Frame<'_>) -> Step {
        let line = match frame {
            Frame::Line(line) => line,
            Frame::TooLarge(size) => {
                let limit = self.shared.limits.max_message_bytes;
                return self.error(st, "", ProtocolError::TooLarge { size, limit });
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            return Step::Done; // a blank line from a person typing into netcat
        }
        if let Some((tags, data)) = protocol::canonical_publish(line) {
            // Nearly every publish: the same as the general path below,
            // without a general JSON parse.
            st.commands_seen = true;
            return self.publish(st, RawTags::Plain(tags), Ok(data));
        }
        let request = match protocol::parse_request(line) {
            Ok(request) => request,
            Err(e) => return self.error(st, "", e),
        };
        let command = request.command.as_deref().unwrap_or("");
        if command != "publish" {
            // Publishes before this command reach subscribers before it acts.
            st.batch.flush(&self.shared);
        }
        let first = !std::mem::replace(&mut st.commands_seen, true);
        match command {
            "" => self.error(st, "", ProtocolError::MissingCommand),
            "ping" => {
                self.reply(st, "ping", "pong");
                Step::Done
            }
            "publish" => self.publish(
                st,
                RawTags::Json(request.tags),
                protocol::raw_data(request.data),
            ),
            "subscribe" | "unsubscribe" => self.subscription(st, command, &request),
            "list" => self.list(st),
            "auth" => self.auth(st, &request, first),
            "who" => self.who(st),
            "register" => self.admin(st, AdminOp::Register, &request),
            "unregister" => self.admin(st, AdminOp::Unregister, &request),
            "set" => self.admin(st, AdminOp::Set, &request),
            "unset" => self.admin(st, AdminOp::Unset, &request),
            "tags" => self.admin(st, AdminOp::Tags, &request),
            other => self.custom(st, other, &request),
        }
    }

    fn publish(
        &self,
        st: &mut State,
        tags: RawTags<'_>,
        raw_data: Result<&str, ProtocolError>,
    ) -> Step {
        let raw_data = match raw_data {
            Ok(raw) => raw,
            Err(e) => return self.error(st, "publish", e),
        };
        match st.gate() {
            Gate::Free => match st
                .batch
                .publish(&self.shared, Some(self.id), tags, raw_data)
            {
                Ok(()) => Step::Done,
                Err(e) => self.error(st, "publish", e),
            },
            Gate::Check(token) => match tags.parse() {
                Ok(tags) => Step::Wait(Pending::Checked {
                    token,
                    op: Checked::Publish {
                        tags: owned(&tags),
                        raw_data: raw_data.to_string(),
                    },
                }),
                Err(e) => self.error(st, "publish", e),
            },
            Gate::Denied => self.error(st, "publish", NOT_AUTHENTICATED),
        }
    }

    fn subscription(&self, st: &mut State, command: &str, request: &Request<'_>) -> Step {
        let tags = match protocol::parse_tags(request.tags) {
            Ok(tags) => tags,
            Err(e) => return self.error(st, command, e),
        };
        let subscribe = command == "subscribe";
        match st.gate() {
            Gate::Free => {
                self.apply_subscription(subscribe, &tags);
                Step::Done
            }
            Gate::Check(token) => {
                let tags = owned(&tags);
                let op = if subscribe {
                    Checked::Subscribe(tags)
                } else {
                    Checked::Unsubscribe(tags)
                };
                Step::Wait(Pending::Checked { token, op })
            }
            Gate::Denied => self.error(st, command, NOT_AUTHENTICATED),
        }
    }

    /// Subscribing to a set held already, or unsubscribing from one not
    /// held, changes nothing and is not an error.
    fn apply_subscription<S: AsRef<str>>(&self, subscribe: bool, tags: &[S]) {
        let mut router = self.shared.router.write();
        if subscribe {
            router.subscribe(self.id, tags);
        } else {
            router.unsubscribe(self.id, tags);
        }
    }

    fn list(&self, st: &mut State) -> Step {
        if matches!(st.gate(), Gate::Denied) {
            return self.error(st, "list", NOT_AUTHENTICATED);
        }
        let subscriptions = self.shared.router.read().subscriptions(self.id);
        let data = serde_json::to_string(&subscriptions).unwrap_or_else(|_| "[]".into());
        self.reply(st, "list", &data);
        Step::Done
    }

    fn auth(&self, st: &mut State, request: &Request<'_>, first: bool) -> Step {
        let Some(auth) = self.shared.auth.get() else {
            return Step::Done; // without an authenticator, auth is accepted and ignored
        };
        if !first {
            return self.error(st, "auth", "auth must be the first command of a connection");
        }
        let token = match protocol::data_string(request.data) {
            Ok(token) => token,
            Err(_) => return self.error(st, "auth", "auth needs the token as a string in data"),
        };
        if is_server_token(auth, &token) {
            st.access = Access::ADMIN;
            st.token = None;
            return Step::Done;
        }
        Step::Wait(Pending::Auth(token))
    }

    fn who(&self, st: &mut State) -> Step {
        if self.shared.auth.get().is_some() && st.access != Access::ADMIN {
            return self.error(
                st,
                "who",
                "who needs admin mode: auth with the server token first",
            );
        }
        let stats = self.shared.stats();
        let listeners = self.shared.router.read().per_listener();
        let data = serde_json::json!({
            "connections": stats.sessions,
            "listeners": listeners,
            "subscriptions": stats.subscriptions,
            "messages_in": stats.messages_in,
            "messages_out": stats.messages_out,
            "dropped": stats.dropped,
        });
        self.reply(st, "who", &data.to_string());
        Step::Done
    }

    fn admin(&self, st: &mut State, op: AdminOp, request: &Request<'_>) -> Step {
        let command = op.name();
        let Some(auth) = self.shared.auth.get() else {
            return self.error(
                st,
                command,
                "admin commands need the server to run with an authenticator",
            );
        };
        if st.access != Access::ADMIN {
            return self.error(
                st,
                command,
                "admin commands need admin mode: auth with the server token first",
            );
        }
        let token = match protocol::data_string(request.data) {
            Ok(token) if !token.is_empty() => token,
            _ => return self.error(st, command, "missing data: the token, a non-empty string"),
        };
        if matches!(op, AdminOp::Register) && is_server_token(auth, &token) {
            return self.error(st, command, "that token is the server token");
        }
        let tags = match op {
            AdminOp::Register => protocol::parse_optional_tags(request.tags),
            AdminOp::Set | AdminOp::Unset => protocol::parse_tags(request.tags),
            AdminOp::Unregister | AdminOp::Tags => Ok(Default::default()),
        };
        match tags {
            Ok(tags) => Step::Wait(Pending::Admin {
                op,
                token,
                tags: owned(&tags),
            }),
            Err(e) => self.error(st, command, e),
        }
    }

    fn custom(&self, st: &mut State, command: &str, request: &Request<'_>) -> Step {
        let Some(route) = self.shared.commands.get().and_then(|c| c.get(command)) else {
            return self.error(st, command, format!("unknown command {command:?}"));
        };
        let tags = match protocol::parse_optional_tags(request.tags) {
            Ok(tags) => tags,
            Err(e) => return self.error(st, command, e),
        };
        let data = match request.data {
            None => String::new(),
            Some(_) => match protocol::data_string(request.data) {
                Ok(data) => data,
                Err(e) => return self.error(st, command, e),
            },
        };
        Step::Wait(Pending::Custom {
            route: route.clone(),
            request: Message::new(command).with_tags(&tags).with_data(data),
        })
    }

    /// Completes a step that had to wait.
    pub(crate) async fn perform(self: &Arc<Self>, pending: Pending) {
        if let Pending::Custom { route, request } = pending {
            return self.call_plugin(route, request).await;
        }
        let Some(auth) = self.shared.auth.get() else {
            return; // every other step exists only with an authenticator
        };
        let store = &auth.store;
        match pending {
            Pending::ConnectToken(token) => {
                if let ROk(_) = store.tags(token.as_str().into()).await {
                    let mut input = self.input.lock();
                    input.state.access = Access::TOKEN;
                    input.state.token = Some(token);
                    input.state.commands_seen = true;
                } else {
                    tracing::debug!(
                        session = self.id,
                        "token given at connect refused: session is anonymous"
                    );
                }
            }
            Pending::Auth(token) => match store.tags(token.as_str().into()).await {
                ROk(_) => {
                    let mut input = self.input.lock();
                    input.state.access = Access::TOKEN;
                    input.state.token = Some(token);
                }
                RErr(e) if e.kind == ErrorKind::NOT_FOUND => {
                    self.send_error("auth", "invalid token")
                }
                RErr(e) => self.send_error("auth", unavailable(&e)),
            },
            Pending::Checked { token, op } => {
                let command = op.name();
                match store.may_use(token.into(), rstrings(op.tags())).await {
                    ROk(true) => self.apply_checked(op),
                    ROk(false) => self.send_error(
                        command,
                        "permission denied: the token does not hold every one of these tags",
                    ),
                    RErr(e) => self.send_error(command, unavailable(&e)),
                }
            }
            Pending::Admin { op, token, tags } => {
                let token = RString::from(token);
                let result = match op {
                    AdminOp::Register => {
                        store.add_token(token, rstrings(&tags)).await.map(|_| None)
                    }
                    AdminOp::Unregister => store.remove_token(token).await.map(|_| None),
                    AdminOp::Set => store.add_tags(token, rstrings(&tags)).await.map(|_| None),
                    AdminOp::Unset => store
                        .remove_tags(token, rstrings(&tags))
                        .await
                        .map(|_| None),
                    AdminOp::Tags => store.tags(token).await.map(Some),
                };
                match result {
                    ROk(None) => {}
                    ROk(Some(tags)) => {
                        let mut tags: Vec<String> =
                            tags.into_iter().map(RString::into_string).collect();
                        tags.sort();
                        let mut out = Vec::new();
                        protocol::reply_tags(&mut out, "tags", &tags);
                        self.output.push_reply(&out);
                    }
                    RErr(e) if e.kind == ErrorKind::UNAVAILABLE => {
                        self.send_error(op.name(), unavailable(&e))
                    }
                    RErr(e) => self.send_error(op.name(), &e.message),
                }
            }
            Pending::Custom { .. } => {}
        }
    }

    fn apply_checked(&self, op: Checked) {
        match op {
            Checked::Subscribe(tags) => self.apply_subscription(true, &tags),
            Checked::Unsubscribe(tags) => self.apply_subscription(false, &tags),
            Checked::Publish { tags, raw_data } => {
                let mut input = self.input.lock();
                let batch = &mut input.state.batch;
                batch.publish_tags(&self.shared, Some(self.id), &tags, &raw_data);
                batch.flush(&self.shared);
            }
        }
    }

    async fn call_plugin(self: &Arc<Self>, route: CommandRoute, request: Message) {
        let (access, token) = {
            let input = self.input.lock();
            (input.state.access, input.state.token.clone())
        };
        let mut allowed_tags = RVec::new();
        if let (Access::TOKEN, Some(token), Some(auth)) = (access, token, self.shared.auth.get()) {
            if let ROk(tags) = auth.store.tags(token.into()).await {
                allowed_tags = tags;
            }
        }
        let command = request.command.to_string();
        let context = CommandContext {
            session: u64::from(self.id),
            access,
            allowed_tags,
            replies: ReplierApi_TO::from_ptr(RArc::new(Replier(self.output.clone())), TD_Opaque),
        };
        if let RErr(e) = route.handler.call_command(context, request).await {
            tracing::warn!(plugin = %route.plugin, command = %command, kind = %e.kind, "custom command failed: {}", e.message);
            self.send_error(&command, format!("{} (plugin {})", e.message, route.plugin));
        }
    }

    pub(crate) fn send_error(&self, command: &str, error: impl Display) {
        let mut out = Vec::new();
        protocol::error_reply(&mut out, command, &error.to_string());
        self.output.push_reply(&out);
    }
}

fn unavailable(e: &SdkError) -> String {
    format!("authenticator unavailable: {}", e.message)
}

impl Checked {
    fn name(&self) -> &'static str {
        match self {
            Checked::Subscribe(_) => "subscribe",
            Checked::Unsubscribe(_) => "unsubscribe",
            Checked::Publish { .. } => "publish",
        }
    }

    fn tags(&self) -> &[String] {
        match self {
            Checked::Subscribe(tags)
            | Checked::Unsubscribe(tags)
            | Checked::Publish { tags, .. } => tags,
        }
    }
}

impl AdminOp {
    fn name(self) -> &'static str {
        match self {
            AdminOp::Register => "register",
            AdminOp::Unregister => "unregister",
            AdminOp::Set => "set",
            AdminOp::Unset => "unset",
            AdminOp::Tags => "tags",
        }
    }
}

/// Lets a custom command reply to its session, now or later.
#[derive(Clone)]
struct Replier(Arc<Output>);

impl ReplierApi for Replier {
    fn send(&self, message: Message) -> bool {
        let mut out = Vec::new();
        protocol::message(&mut out, &message);
        self.0.push_reply(&out)
    }
}
