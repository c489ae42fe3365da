//! What each command does (SPEC §2–3), applied to one session's narrow
//! [`Context`]: the broker's shared state, the session's id, its output and
//! its [`State`].
//!
//! [`execute`] carries a request out at once when it can and says what
//! happens next: done, or a [`Pending`] step to wait for. When the step is
//! done, [`apply`] carries out its [`Effect`]. Neither knows about input,
//! backlogs or futures: sequencing is the session's job.

use mist_sdk::{Access, ErrorKind, Message};
use parking_lot::RwLockReadGuard;

use super::access::{
    is_server_token, prune_with_notice, Credential, Standing, Token, REFRESH_NOTICE,
};
use super::batch::Batch;
use super::command::{AdminOp, Command, Refusal};
use super::framing::Frame;
use super::output::Output;
use super::protocol::{self, ProtocolError, RawTags, Request};
use super::router::{Added, Router, SessionId, SubscribeError};
use super::steps::{Checked, CustomCall, Effect, Pending};
use super::Shared;
use crate::cluster::Confirmation;

/// A session's standing and scratch space, guarded by its input lock.
pub(crate) struct State {
    pub(crate) standing: Standing,
    /// A command has been processed: `auth` is no longer allowed.
    pub(crate) commands_seen: bool,
    /// A token given at connect, not yet checked with the authenticator.
    pub(crate) connect_token: Option<Box<str>>,
    /// Made by the session's first publish and kept for the next: a
    /// session that only subscribes (most of them) never holds one, and
    /// inline it would be half of every session's size.
    batch: Option<Box<Batch>>,
}

impl State {
    /// The state of a new session, with the token it presented at connect.
    pub(crate) fn new(shared: &Shared, connect_token: Option<String>) -> State {
        let mut state = State {
            standing: Standing::new(if shared.auth.get().is_some() {
                Access::ANONYMOUS
            } else {
                Access::OPEN
            }),
            commands_seen: false,
            connect_token: None,
            batch: None,
        };
        if let (Some(auth), Some(token)) = (shared.auth.get(), connect_token) {
            if is_server_token(&auth.server_token, &token) {
                state.standing.access = Access::ADMIN;
                state.commands_seen = true;
            } else {
                state.connect_token = Some(token.into_boxed_str());
            }
        }
        state
    }

    /// The publish batch, made on first use.
    fn batch(&mut self) -> &mut Batch {
        self.batch.get_or_insert_with(Box::default)
    }

    /// The check of a connect-time token, due before the first command.
    pub(crate) fn take_connect_check(&mut self) -> Option<Pending> {
        self.connect_token
            .take()
            .map(|token| Pending::ConnectToken(token.into_string()))
    }
}

/// Everything a command may touch.
pub(crate) struct Context<'s> {
    pub(crate) shared: &'s Shared,
    pub(crate) id: SessionId,
    pub(crate) output: &'s Output,
    pub(crate) state: &'s mut State,
    /// The router's read lock, held from a publish's match until the batch
    /// is flushed (see `batch`).
    routing: Option<RwLockReadGuard<'s, Router>>,
    /// A reply was queued since [`Context::take_replied`] last asked.
    replied: bool,
    /// The reply being written, moved into the queue when done: here, not
    /// in the session's state, which an idle session keeps.
    out: Vec<u8>,
}

/// What became of one request.
pub(crate) enum Step {
    Done,
    Wait(Pending),
}

/// What applying an effect needs next.
pub(crate) enum Applied {
    Done,
    /// Another step: a revocation happened while the permission was
    /// checked (check again), or a granted subscribe waits for the
    /// cluster's confirmation.
    Then(Pending),
}

/// May this session use tags?
enum Gate {
    Free,
    /// A registered token: ask the store.
    Check(Token),
    /// A signed token: its grant says, at once.
    Signed,
    /// No valid token.
    Denied,
    /// A token that expired.
    Expired,
}

pub(crate) const NOT_AUTHENTICATED: &str = "not authenticated: send auth with a valid token first";
pub(crate) const EXPIRED: &str = "token expired: send auth with a new token";

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
            routing: None,
            replied: false,
            out: Vec::new(),
        }
    }

    /// Whether a reply was queued since the last call.
    pub(crate) fn take_replied(&mut self) -> bool {
        std::mem::take(&mut self.replied)
    }

    /// Queues the batch's deliveries and releases the router; then
    /// disconnects the subscribers found too slow. Publishes before a
    /// command that is not a publish reach subscribers before it acts.
    pub(crate) fn flush(&mut self) {
        let Some(router) = self.routing.take() else {
            return;
        };
        let Some(batch) = self.state.batch.as_mut() else {
            return;
        };
        let mut slow = Vec::new();
        batch.flush(&router, self.shared, &mut slow);
        drop(router);
        for session in slow {
            self.shared.evict_slow(session);
        }
    }

    fn gate(&self) -> Gate {
        let standing = &self.state.standing;
        match standing.access {
            Access::OPEN | Access::ADMIN => Gate::Free,
            Access::TOKEN if standing.expired() => Gate::Expired,
            Access::TOKEN => match standing.credential.as_deref() {
                Some(Credential::Registered { token, .. }) => Gate::Check(Token::clone(token)),
                Some(Credential::Signed { .. }) => Gate::Signed,
                _ => Gate::Denied,
            },
            _ => Gate::Denied,
        }
    }

    /// The refusal of a command the gate did not let through.
    fn shut(&self, command: &str, gate: &Gate) -> Refusal {
        if matches!(gate, Gate::Expired) {
            return Refusal::new(command, ErrorKind::UNAUTHENTICATED, EXPIRED);
        }
        match self.state.standing.credential.as_deref() {
            // A token given at connect and refused: say why.
            Some(Credential::Refused(why)) => Refusal::new(
                command,
                ErrorKind::UNAUTHENTICATED,
                format!("not authenticated: the token given at connect was refused ({why})"),
            ),
            _ => not_authenticated(command),
        }
    }

    /// For a signed token: `Ok` if it holds every one of `tags`.
    fn signed_holds<S: AsRef<str>>(&self, command: &str, tags: &[S]) -> Result<(), Refusal> {
        match self.state.standing.credential.as_deref() {
            Some(credential) if credential.holds(tags) => Ok(()),
            _ => Err(Refusal::new(
                command,
                ErrorKind::PERMISSION_DENIED,
                super::steps::PERMISSION_DENIED,
            )),
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

    fn publish_now(&mut self, tags: RawTags<'_>, raw_data: &str) -> Result<Step, Refusal> {
        let (max_tags, id, shared) = (self.shared.limits.max_tags, self.id, self.shared);
        let router = self.routing.get_or_insert_with(|| shared.router.read());
        if !router.is_open(id) {
            return Ok(Step::Done); // closed meanwhile: nothing of it may go out
        }
        self.state
            .batch()
            .publish(router, max_tags, Some(id), tags, raw_data)
            .map_err(|e| Refusal::protocol("publish", e))?;
        Ok(Step::Done)
    }
}

fn not_authenticated(command: &str) -> Refusal {
    Refusal::new(command, ErrorKind::UNAUTHENTICATED, NOT_AUTHENTICATED)
}

fn owned(tags: &[std::borrow::Cow<'_, str>]) -> Vec<String> {
    tags.iter().map(|t| t.to_string()).collect()
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
    };
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(Step::Done); // a blank line from a person typing into netcat
    }
    let first = !std::mem::replace(&mut cx.state.commands_seen, true);
    let command = Command::parse(line, cx.shared.limits.max_tags)?;
    if !matches!(command, Command::Publish { .. }) {
        cx.flush();
    }
    match command {
        Command::Ping => {
            cx.reply("ping", "pong");
            Ok(Step::Done)
        }
        Command::Publish { tags, data } => publish(cx, tags, data),
        Command::Subscribe(tags) => subscribe(cx, owned(&tags)),
        Command::Unsubscribe(tags) => unsubscribe(cx, &tags),
        Command::List => list(cx),
        Command::Auth { data } => auth(cx, data, first),
        Command::Who => who(cx),
        Command::Admin { op, request } => admin(cx, op, &request),
        Command::Custom { name, request } => custom(cx, &name, &request),
    }
}

fn publish(
    cx: &mut Context<'_>,
    tags: RawTags<'_>,
    data: Result<&str, ProtocolError>,
) -> Result<Step, Refusal> {
    let raw_data = data.map_err(|e| Refusal::protocol("publish", e))?;
    match cx.gate() {
        Gate::Free => cx.publish_now(tags, raw_data),
        Gate::Check(token) => {
            let tags = tags.parse().map_err(|e| Refusal::protocol("publish", e))?;
            let limit = cx.shared.limits.max_tags;
            if tags.len() > limit {
                let count = tags.len();
                return Err(Refusal::protocol(
                    "publish",
                    ProtocolError::TooManyTags { count, limit },
                ));
            }
            Ok(Step::Wait(Pending::Check {
                token,
                op: Checked::Publish {
                    tags: owned(&tags),
                    raw_data: raw_data.to_string(),
                },
            }))
        }
        Gate::Signed => {
            let parsed = tags.parse().map_err(|e| Refusal::protocol("publish", e))?;
            cx.signed_holds("publish", &parsed)?;
            cx.publish_now(tags, raw_data)
        }
        gate @ (Gate::Denied | Gate::Expired) => Err(cx.shut("publish", &gate)),
    }
}

fn subscribe(cx: &mut Context<'_>, tags: Vec<String>) -> Result<Step, Refusal> {
    match cx.gate() {
        Gate::Free => Ok(match add_subscription(cx, &tags)? {
            Some(confirmation) => Step::Wait(Pending::Confirm(confirmation)),
            None => Step::Done,
        }),
        Gate::Check(token) => Ok(Step::Wait(Pending::Check {
            token,
            op: Checked::Subscribe(tags),
        })),
        Gate::Signed => {
            cx.signed_holds("subscribe", &tags)?;
            Ok(match add_subscription(cx, &tags)? {
                Some(confirmation) => Step::Wait(Pending::Confirm(confirmation)),
                None => Step::Done,
            })
        }
        gate @ (Gate::Denied | Gate::Expired) => Err(cx.shut("subscribe", &gate)),
    }
}

/// Subscribing to a set held already is not an error. In a cluster, returns
/// the backplane's confirmation to wait for before the next command.
fn add_subscription(
    cx: &mut Context<'_>,
    tags: &[String],
) -> Result<Option<Confirmation>, Refusal> {
    let limit = cx.shared.limits.max_subscriptions;
    let mut router = cx.shared.router.write();
    // Under the lock the expiry timer takes: a grant that ended before
    // the subscription could land refuses it.
    if cx.state.standing.expired() {
        return Err(Refusal::new(
            "subscribe",
            ErrorKind::UNAUTHENTICATED,
            EXPIRED,
        ));
    }
    let added = router.subscribe(cx.id, tags, limit);
    drop(router);
    match added {
        Ok(added) => Ok(added.confirmation),
        Err(SubscribeError::Gone) => Ok(None),
        Err(SubscribeError::TooMany { limit }) => Err(Refusal::invalid(
            "subscribe",
            format!("too many subscriptions: a connection may hold {limit}"),
        )),
    }
}

/// Never refused for want of permission: it can only narrow what the
/// session receives. Unsubscribing from a set not held is not an error.
fn unsubscribe(cx: &mut Context<'_>, tags: &[std::borrow::Cow<'_, str>]) -> Result<Step, Refusal> {
    if matches!(cx.gate(), Gate::Denied) {
        return Err(cx.shut("unsubscribe", &Gate::Denied));
    }
    cx.shared.router.write().unsubscribe(cx.id, tags);
    Ok(Step::Done)
}

fn list(cx: &mut Context<'_>) -> Result<Step, Refusal> {
    if matches!(cx.gate(), Gate::Denied) {
        return Err(cx.shut("list", &Gate::Denied));
    }
    let subscriptions = cx.shared.router.read().subscriptions(cx.id);
    let data = serde_json::to_string(&subscriptions).unwrap_or_else(|_| "[]".into());
    cx.reply("list", &data);
    Ok(Step::Done)
}

fn auth(
    cx: &mut Context<'_>,
    data: Option<&serde_json::value::RawValue>,
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
    Ok(Step::Wait(Pending::Auth(token)))
}

fn who(cx: &mut Context<'_>) -> Result<Step, Refusal> {
    if cx.shared.auth.get().is_some() && cx.state.standing.access != Access::ADMIN {
        return Err(Refusal::new(
            "who",
            ErrorKind::PERMISSION_DENIED,
            "who needs admin mode: auth with the server token first",
        ));
    }
    let data = cx.shared.who().to_string();
    cx.reply("who", &data);
    Ok(Step::Done)
}

fn admin(cx: &mut Context<'_>, op: AdminOp, request: &Request<'_>) -> Result<Step, Refusal> {
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
    if !auth.keeps_tokens {
        return Err(Refusal::new(
            command,
            ErrorKind::UNSUPPORTED,
            format!(
                "{command} is not available: the {} authenticator keeps no tokens (each token is signed and checked on its own)",
                auth.plugin
            ),
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
    Ok(Step::Wait(Pending::Admin {
        op,
        token,
        tags: owned(&tags),
    }))
}

fn custom(cx: &mut Context<'_>, command: &str, request: &Request<'_>) -> Result<Step, Refusal> {
    let Some(route) = cx.shared.commands.get().and_then(|c| c.get(command)) else {
        return Err(Refusal::invalid(
            command,
            format!("unknown command {command:?}"),
        ));
    };
    let tags =
        protocol::parse_optional_tags(request.tags).map_err(|e| Refusal::protocol(command, e))?;
    let data = match request.data {
        None => String::new(),
        Some(_) => {
            protocol::data_string(request.data).map_err(|e| Refusal::protocol(command, e))?
        }
    };
    Ok(Step::Wait(Pending::Custom(Box::new(CustomCall {
        route: route.clone(),
        request: Message::new(command).with_tags(&tags).with_data(data),
        standing: cx.state.standing.clone(),
    }))))
}

/// Carries out what a finished step asks.
pub(crate) fn apply(cx: &mut Context<'_>, effect: Effect) -> Result<Applied, Refusal> {
    match effect {
        Effect::Nothing => {}
        Effect::Authenticated(credential) => authenticated(cx, credential),
        Effect::ConnectRefused(why) => {
            cx.state.standing.credential = Some(Box::new(Credential::Refused(why.into())));
        }
        Effect::Granted { token, op, epoch } => return grant(cx, token, op, epoch),
        Effect::Reply(lines) => {
            cx.out = lines;
            cx.push_reply();
        }
        Effect::Refused(refusal) => return Err(refusal),
    }
    Ok(Applied::Done)
}

/// The session is authenticated with `credential`: a first token, or a
/// signed token replacing one (a refresh), which takes away the
/// subscriptions outside its tags and keeps the rest, without a gap.
fn authenticated(cx: &mut Context<'_>, credential: Credential) {
    let refresh = cx.state.standing.is_signed();
    if let Credential::Registered { token, .. } = &credential {
        cx.shared.tokens.enter(token, cx.id);
    }
    {
        // One lock for the pruning and the new deadline: the expiry timer
        // sees the old grant or the new one, never a mix.
        let mut router = cx.shared.router.write();
        if refresh {
            let removed = prune_with_notice(
                &mut router,
                cx.id,
                |set| credential.holds(set),
                REFRESH_NOTICE,
            );
            if removed > 0 {
                tracing::debug!(session = %cx.id, subscriptions = removed, "a refreshed token holds fewer tags");
            }
        }
        let until = match &credential {
            Credential::Registered { until, .. } | Credential::Signed { until, .. } => *until,
            Credential::Refused(_) => None,
        };
        cx.shared.expiry.set(&mut router, cx.id, until);
    }
    cx.state.standing = Standing {
        access: Access::TOKEN,
        credential: Some(Box::new(credential)),
    };
    cx.state.commands_seen = true;
}

/// Applies a checked command, unless a revocation happened since its
/// check began (then it is checked again). The epoch is compared under the
/// router's write lock, which a revocation takes after bumping it.
fn grant(cx: &mut Context<'_>, token: Token, op: Checked, epoch: u64) -> Result<Applied, Refusal> {
    let recheck = |op| Ok(Applied::Then(Pending::Check { token, op }));
    match op {
        Checked::Subscribe(tags) => {
            let limit = cx.shared.limits.max_subscriptions;
            let mut router = cx.shared.router.write();
            if cx.shared.tokens.epoch() != epoch {
                drop(router);
                return recheck(Checked::Subscribe(tags));
            }
            if cx.state.standing.expired() {
                return Err(Refusal::new(
                    "subscribe",
                    ErrorKind::UNAUTHENTICATED,
                    EXPIRED,
                ));
            }
            match router.subscribe(cx.id, &tags, limit) {
                Ok(Added {
                    confirmation: Some(confirmation),
                    ..
                }) => Ok(Applied::Then(Pending::Confirm(confirmation))),
                Ok(_) | Err(SubscribeError::Gone) => Ok(Applied::Done),
                Err(SubscribeError::TooMany { limit }) => Err(Refusal::invalid(
                    "subscribe",
                    format!("too many subscriptions: a connection may hold {limit}"),
                )),
            }
        }
        Checked::Publish { tags, raw_data } => {
            if cx.shared.tokens.epoch() != epoch {
                return recheck(Checked::Publish { tags, raw_data });
            }
            if cx.state.standing.expired() {
                return Err(Refusal::new("publish", ErrorKind::UNAUTHENTICATED, EXPIRED));
            }
            let (id, shared) = (cx.id, cx.shared);
            let router = cx.routing.get_or_insert_with(|| shared.router.read());
            if router.is_open(id) {
                cx.state
                    .batch()
                    .publish_tags(router, Some(id), &tags, &raw_data);
            }
            cx.flush();
            Ok(Applied::Done)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::access::Token;
    use super::super::testing::{admin_broker, open_broker, Client, ADMIN};
    use super::super::Limits;

    fn subscribe(tags: &[&str]) -> Value {
        json!({"command": "subscribe", "tags": tags})
    }

    fn publish(tags: &[&str], data: &str) -> Value {
        json!({"command": "publish", "tags": tags, "data": data})
    }

    async fn user(shared: &std::sync::Arc<super::Shared>, token: &str) -> Client {
        let client = Client::open(shared, None);
        assert!(client
            .request(&[json!({"command": "auth", "data": token})])
            .await
            .is_empty());
        client
    }

    #[tokio::test]
    async fn unset_revokes_at_once_and_tells_the_session() {
        let (shared, store) = admin_broker(Limits::default());
        store.set("t", &["a", "b"]);
        let admin = Client::open(&shared, Some(ADMIN));
        let user = user(&shared, "t").await;
        user.request(&[subscribe(&["a"]), subscribe(&["a", "b"]), subscribe(&["b"])])
            .await;
        let replies = admin
            .request(&[json!({"command": "unset", "tags": ["a"], "data": "t"})])
            .await;
        assert!(replies.is_empty(), "{replies:?}");
        // Before the admin's pong, the user lost both sets holding `a`.
        let notices = user.received();
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert_eq!(notices[0]["command"], "revoked");
        assert_eq!(notices[0]["tags"], json!(["a"]));
        assert_eq!(notices[1]["tags"], json!(["a", "b"]));
        assert_eq!(user.subscriptions().await, json!([["b"]]));
        admin.request(&[publish(&["a"], "after")]).await;
        assert!(
            user.received().is_empty(),
            "nothing on `a` after the revocation"
        );
        // Unregister takes the rest.
        admin
            .request(&[json!({"command": "unregister", "data": "t"})])
            .await;
        assert_eq!(user.received()[0]["tags"], json!(["b"]));
        assert_eq!(shared.router.read().subscription_count(), 0);
    }

    #[tokio::test]
    async fn unsubscribe_is_never_refused_for_want_of_permission() {
        let (shared, store) = admin_broker(Limits::default());
        store.set("t", &["a"]);
        let user = user(&shared, "t").await;
        user.request(&[subscribe(&["a"])]).await;
        store.set("t", &[]); // the store no longer allows `a`
        let replies = user
            .request(&[
                json!({"command": "unsubscribe", "tags": ["a"]}),
                json!({"command": "unsubscribe", "tags": ["never", "held"]}),
            ])
            .await;
        assert!(replies.is_empty(), "{replies:?}");
        assert_eq!(user.subscriptions().await, json!([]));
        assert_eq!(
            store.checks.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "only the subscribe asked the store"
        );
    }

    #[tokio::test]
    async fn a_grant_overtaken_by_a_revocation_is_checked_again() {
        let (shared, store) = admin_broker(Limits::default());
        store.set("t", &["a"]);
        let admin = Client::open(&shared, Some(ADMIN));
        let user = user(&shared, "t").await;
        let gate = store.hold();
        // The store says yes now, but the answer is held back...
        let wait = user
            .session
            .feed(b"{\"command\":\"subscribe\",\"tags\":[\"a\"]}\n")
            .expect("waits on the store");
        let step = tokio::spawn(wait);
        while store.checks.load(std::sync::atomic::Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        // ...while the admin takes `a` away.
        let unset = tokio::spawn(async move {
            admin
                .request(&[json!({"command": "unset", "tags": ["a"], "data": "t"})])
                .await
        });
        assert!(unset.await.expect("admin").is_empty());
        gate.add_permits(2); // the stale answer, then the second check's
        step.await.expect("step");
        let replies = user.received();
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert!(replies[0]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("permission denied")));
        assert_eq!(user.subscriptions().await, json!([]));
    }

    #[tokio::test]
    async fn another_nodes_change_is_rechecked_against_the_store() {
        let (shared, store) = admin_broker(Limits::default());
        store.set("t", &["a", "b"]);
        let user = user(&shared, "t").await;
        user.request(&[subscribe(&["a"]), subscribe(&["b"])]).await;
        store.set("t", &["b"]); // changed behind this node's back
        shared.recheck(&Token::new("t".into()).key).await;
        assert_eq!(user.received()[0]["tags"], json!(["a"]));
        assert_eq!(user.subscriptions().await, json!([["b"]]));
    }

    #[tokio::test]
    async fn caps_on_tags_and_subscriptions_are_answered() {
        let limits = Limits {
            max_tags: 2,
            max_subscriptions: 2,
            ..Limits::default()
        };
        let shared = open_broker(limits);
        let client = Client::open(&shared, None);
        let replies = client
            .request(&[
                subscribe(&["a", "b", "c"]),
                publish(&["a", "b", "c"], "x"),
                subscribe(&["a"]),
                subscribe(&["b"]),
                subscribe(&["a"]),
                subscribe(&["c"]),
            ])
            .await;
        let errors: Vec<&str> = replies.iter().filter_map(|r| r["error"].as_str()).collect();
        assert_eq!(
            errors,
            [
                "too many tags: 3, the limit is 2",
                "too many tags: 3, the limit is 2",
                "too many subscriptions: a connection may hold 2"
            ]
        );
        assert_eq!(client.subscriptions().await, json!([["a"], ["b"]]));
    }
}
