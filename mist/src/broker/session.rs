//! One client's session: the sequencing of its input.
//!
//! Everything a listener hands a session is an [`Arrival`], taken by one
//! way in, [`Session::accept`]: stream bytes, a framed message, or input
//! the listener refused. Commands of one session take effect strictly in
//! order. Most are carried out synchronously inside `accept`
//! ([`cmd::execute`]); one that needs the token store or a plugin halts
//! the input with a pending step, and so does a reply that fills the
//! session's own queue (a client that sends requests without reading the
//! answers). Input that arrives meanwhile waits in the backlog, which
//! stays small because the listener does not read more until the future
//! `accept` returned completes. This file owns only that: input, halts,
//! backlog. What commands do is in `cmd`; the session's state in `state`.

use std::future::poll_fn;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use abi_stable::std_types::RResult;
use async_ffi::{FfiFuture, FutureExt};
use mist_sdk::abi::OutputWakerBox;
use mist_sdk::{ErrorKind, SdkError, SessionInfo};
use parking_lot::Mutex;

use super::cmd::{self, Context, Pending, Refusal, Step};
use super::framing::Frame;
use super::id::SessionId;
use super::output::{ExtendSlice, Output, OutputConfig, Peer};
use super::shared::Shared;
use super::state::{Backlogged, State};

pub(crate) struct Session {
    pub(crate) id: SessionId,
    shared: Arc<Shared>,
    pub(crate) output: Arc<Output>,
    state: Mutex<State>,
    closed: AtomicBool,
}

/// What a listener hands a session.
#[derive(Clone, Copy)]
pub(crate) enum Arrival<'a> {
    /// Bytes read from a line-framed stream (`SessionApi::feed`); an
    /// unfinished last line waits for the next.
    Bytes(&'a [u8]),
    /// One message of a transport that frames its own (a WebSocket text
    /// frame: `SessionApi::feed_message`).
    Message(&'a [u8]),
    /// Input the listener could not accept (a binary WebSocket frame),
    /// answered with this error in order (`SessionApi::refuse`).
    Refusal(&'a str),
}

/// Why input processing stopped before the end of what arrived.
enum Halt {
    /// A command waits on the token store or a plugin.
    Wait(Pending),
    /// The session's own queue is over its limit: wait for the client to read.
    Full,
    /// The cluster's way out is saturated: wait until the backplane has
    /// taken more of what this node's publishers sent (`Cluster::room`).
    Uplink,
    /// The client's unfinished input could not be held (the memory budget
    /// is spent): its refusal is queued, the session ends.
    Close,
}

impl Session {
    pub(crate) fn open(
        shared: Arc<Shared>,
        info: SessionInfo,
        waker: OutputWakerBox,
    ) -> Arc<Session> {
        let peer = Peer::from(info.peer.as_str());
        let listener = info.listener.as_str();
        let (id, output) = shared.router.write().add_session(listener, |session| {
            let config = OutputConfig {
                session,
                peer,
                limits: shared.outputs.clone(),
            };
            Arc::new(Output::new(config, waker))
        });
        let state = State::new(&shared, info.token.into_option().map(|t| t.into_string()));
        tracing::debug!(session = %id, listener = %info.listener, peer = %info.peer, "session opened");
        Arc::new(Session {
            id,
            shared,
            output,
            state: Mutex::new(state),
            closed: AtomicBool::new(false),
        })
    }

    /// Closed by its listener, or by the broker (a slow consumer).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.output.is_closed()
    }

    /// Takes what the listener hands over. Returns a future when the input
    /// halted: the listener awaits it before handing over more.
    pub(crate) fn accept(self: &Arc<Self>, arrival: Arrival<'_>) -> Option<FfiFuture<()>> {
        if self.is_closed() {
            return None;
        }
        let mut state = self.state.lock();
        if state.busy {
            backlog(&mut state, arrival);
            self.charge_input(&mut state);
            return None;
        }
        // A refusal is answered at once (the listener does not wait on it),
        // before the connect-time token is checked.
        let check = match arrival {
            Arrival::Refusal(_) => None,
            _ => state.take_connect_token(),
        };
        if let Some(token) = check {
            backlog(&mut state, arrival);
            self.charge_input(&mut state);
            state.busy = true;
            return Some(self.settle(Halt::Wait(Pending::auth(token, true))));
        }
        let halt = self.run(&mut state, arrival);
        self.charge_input(&mut state);
        let halt = halt?;
        if let Halt::Close = halt {
            drop(state);
            self.close();
            return None;
        }
        state.busy = true;
        Some(self.settle(halt))
    }

    /// Stream input, as [`Session::accept`] takes it (the unit tests' way in).
    #[cfg(test)]
    pub(crate) fn feed(self: &Arc<Self>, bytes: &[u8]) -> Option<FfiFuture<()>> {
        self.accept(Arrival::Bytes(bytes))
    }

    /// Carries out `arrival` until something halts it; what is left of it
    /// then waits in the backlog.
    fn run(&self, state: &mut State, arrival: Arrival<'_>) -> Option<Halt> {
        match arrival {
            Arrival::Bytes(bytes) => {
                let (halt, rest) = self.run_stream(state, bytes)?;
                if !rest.is_empty() {
                    backlog(state, Arrival::Bytes(rest));
                }
                Some(halt)
            }
            Arrival::Message(message) => self.run_message(state, message),
            Arrival::Refusal(error) => {
                let mut cx = Context::new(&self.shared, self.id, &self.output, state);
                cx.state.commands_seen = true;
                cx.refuse(&Refusal::invalid("", error));
                None
            }
        }
    }

    /// Carries out one request and returns its refusal, typed, instead of
    /// answering it with an error reply. See `SessionApi::execute`.
    pub(crate) fn execute(self: &Arc<Self>, request: Vec<u8>) -> FfiFuture<RResult<(), SdkError>> {
        let session = self.clone();
        async move {
            session
                .execute_now(&request)
                .await
                .map_err(|refusal| refusal.to_sdk())
                .into()
        }
        .into_ffi()
    }

    async fn execute_now(self: &Arc<Self>, request: &[u8]) -> Result<(), Refusal> {
        if self.is_closed() {
            return Err(Refusal::new("", ErrorKind::OTHER, "the session is closed"));
        }
        let connect = {
            let mut state = self.state.lock();
            if state.busy {
                return Err(Refusal::new(
                    "",
                    ErrorKind::OVERLOADED,
                    "the session is busy with an earlier request",
                ));
            }
            state.busy = true;
            state
                .take_connect_token()
                .map(|token| Pending::auth(token, true))
        };
        let result = self.execute_steps(connect, request).await;
        // An HTTP publisher is slowed down like a streaming one.
        if self.uplink_congested() {
            self.uplink_room().await;
        }
        // Input that arrived while the request ran goes on as usual.
        if let Some(halt) = self.resume() {
            self.settle(halt).await;
        }
        result
    }

    async fn execute_steps(
        self: &Arc<Self>,
        connect: Option<Pending>,
        request: &[u8],
    ) -> Result<(), Refusal> {
        if let Some(pending) = connect {
            self.complete(pending).await?;
        }
        let step = {
            let mut state = self.state.lock();
            let mut cx = Context::new(&self.shared, self.id, &self.output, &mut state);
            let step = cmd::execute(&mut cx, self.message_frame(request));
            cx.flush();
            step?
        };
        match step {
            Step::Done => Ok(()),
            Step::Wait(pending) => self.complete(pending).await,
        }
    }

    fn message_frame<'m>(&self, message: &'m [u8]) -> Frame<'m> {
        if message.len() > self.shared.limits.max_message_bytes {
            Frame::TooLarge(message.len())
        } else {
            Frame::Line(message)
        }
    }

    /// Carries out every complete line of `data` until one halts; returns
    /// the halt and the input after it.
    fn run_stream<'d>(&self, state: &mut State, data: &'d [u8]) -> Option<(Halt, &'d [u8])> {
        let mut framer = std::mem::take(&mut state.framer);
        // The unfinished line grows only with the ledger's leave.
        let others = state.input_held();
        let mut room = |needed: usize| self.output.set_input(others + needed).is_ok();
        let mut cx = Context::new(&self.shared, self.id, &self.output, state);
        let mut halt = None;
        let limit = self.shared.limits.max_message_bytes;
        let rest = framer.feed(limit, data, &mut room, |frame| {
            match self.run_frame(&mut cx, frame) {
                None => ControlFlow::Continue(()),
                Some(h) => {
                    halt = Some(h);
                    ControlFlow::Break(())
                }
            }
        });
        cx.flush();
        drop(cx);
        state.framer = framer;
        halt.map(|halt| (halt, rest))
    }

    fn run_message(&self, state: &mut State, message: &[u8]) -> Option<Halt> {
        let mut cx = Context::new(&self.shared, self.id, &self.output, state);
        let halt = self.run_frame(&mut cx, self.message_frame(message));
        cx.flush();
        halt
    }

    /// One request: carried out, answered with its refusal, or halting.
    fn run_frame(&self, cx: &mut Context<'_>, frame: Frame<'_>) -> Option<Halt> {
        let no_room = matches!(frame, Frame::NoRoom(_));
        match cmd::execute(cx, frame) {
            Ok(Step::Wait(pending)) => return Some(Halt::Wait(pending)),
            Ok(Step::Done) => {}
            Err(refusal) => cx.refuse(&refusal),
        }
        if no_room {
            self.shared.ledger.count_closed_for_input();
            tracing::warn!(
                session = %self.id,
                peer = %self.output.peer(),
                "closing a connection: its unfinished line needs more memory than --max-memory has left"
            );
            return Some(Halt::Close);
        }
        // Replies count against the queue: stop reading a client that does
        // not read them. (A flood of publishes queues nothing of its own.)
        if cx.take_replied() && self.output.over_limit() {
            return Some(Halt::Full);
        }
        // A publisher faster than the cluster's backplane is read more
        // slowly rather than losing the other nodes' copies.
        self.uplink_congested().then_some(Halt::Uplink)
    }

    fn uplink_congested(&self) -> bool {
        self.shared
            .cluster
            .get()
            .is_some_and(crate::cluster::Cluster::congested)
    }

    async fn uplink_room(&self) {
        if let Some(cluster) = self.shared.cluster.get() {
            cluster.room().await;
        }
    }

    /// The future that ends a halt, then works through the backlog until it
    /// is used up (clearing `busy`).
    fn settle(self: &Arc<Self>, first: Halt) -> FfiFuture<()> {
        let session = self.clone();
        async move {
            let mut next = Some(first);
            while let Some(halt) = next.take() {
                match halt {
                    Halt::Wait(pending) => {
                        if let Err(refusal) = session.complete(pending).await {
                            let mut state = session.state.lock();
                            let mut cx = Context::new(
                                &session.shared,
                                session.id,
                                &session.output,
                                &mut state,
                            );
                            cx.refuse(&refusal);
                        }
                    }
                    Halt::Full => session.under_limit().await,
                    Halt::Uplink => session.uplink_room().await,
                    Halt::Close => {
                        session.close();
                        return;
                    }
                }
                if session.is_closed() {
                    return;
                }
                next = session.resume();
            }
        }
        .into_ffi()
    }

    /// Performs a step and applies its effect, as long as each effect asks
    /// for another step (a revocation overtook a check, a subscription
    /// waits for the cluster).
    async fn complete(&self, mut pending: Pending) -> Result<(), Refusal> {
        loop {
            let effect = pending.perform(&self.shared, self.id, &self.output).await;
            let mut state = self.state.lock();
            if self.is_closed() {
                return Ok(()); // nothing of a closed session may take effect
            }
            let mut cx = Context::new(&self.shared, self.id, &self.output, &mut state);
            match cmd::apply(&mut cx, effect)? {
                Step::Done => return Ok(()),
                Step::Wait(next) => pending = next,
            }
        }
    }

    /// Processes input that waited, until it is used up (clearing `busy`)
    /// or something halts it again.
    fn resume(&self) -> Option<Halt> {
        let mut state = self.state.lock();
        let halt = self.resume_locked(&mut state);
        self.charge_input(&mut state);
        halt
    }

    fn resume_locked(&self, state: &mut State) -> Option<Halt> {
        loop {
            if self.output.over_limit() {
                return Some(Halt::Full);
            }
            let next = state.backlog.as_mut().and_then(|b| b.arrivals.pop_front());
            let halt = match next {
                Some(Backlogged::Bytes(bytes)) => {
                    match self.run_stream(state, &bytes) {
                        Some((halt, rest)) => {
                            if !rest.is_empty() {
                                // Back in front of whatever came after it.
                                let rest = Backlogged::Bytes(rest.to_vec());
                                state.backlog().arrivals.push_front(rest);
                            }
                            Some(halt)
                        }
                        None => None,
                    }
                }
                Some(Backlogged::Message(message)) => self.run_message(state, &message),
                Some(Backlogged::Refusal(error)) => self.run(state, Arrival::Refusal(&error)),
                None => {
                    state.backlog = None;
                    state.busy = false;
                    return None;
                }
            };
            if halt.is_some() {
                return halt;
            }
        }
    }

    async fn under_limit(&self) {
        poll_fn(|cx| {
            if self.output.wait_under_limit(cx.waker()) {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    pub(crate) fn drain(&self, out: &mut dyn ExtendSlice, pieces: bool) -> bool {
        self.output.drain_into(out, pieces)
    }

    /// What the listener holds for this session's input now (a WebSocket
    /// message still arriving). `false` if the ledger has no room for that
    /// much: the listener then ends the connection.
    pub(crate) fn hold(&self, bytes: usize) -> bool {
        let mut state = self.state.lock();
        let before = state.listener_held;
        state.listener_held = bytes;
        let others = state.input_held() - bytes + state.framer.held();
        if bytes <= before || self.output.set_input(others + bytes).is_ok() {
            self.charge_input(&mut state);
            return true;
        }
        state.listener_held = before;
        self.shared.ledger.count_closed_for_input();
        tracing::warn!(
            session = %self.id,
            peer = %self.output.peer(),
            bytes,
            "refused a listener's buffer for a connection: more memory than --max-memory has left"
        );
        false
    }

    /// Charges what the session holds for its input now (its unfinished
    /// line, its backlog, its listener's buffers). Input already taken is
    /// charged whatever the ledger says: it is held.
    fn charge_input(&self, state: &mut State) {
        let held = state.input_held() + state.framer.held();
        self.output.force_input(held);
    }

    /// Ends the session: subscriptions go at once, queued output stays
    /// drainable, the id is never used again.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.router.write().remove_session(self.id);
        self.output.close();
        let key = self.state.lock().standing.token.as_ref().map(|t| t.key);
        if let Some(key) = key {
            self.shared.tokens.leave(&key, self.id);
        }
        tracing::debug!(
            session = %self.id,
            dropped = self.output.dropped(),
            "session closed"
        );
    }
}

/// Keeps `arrival` for after the halt, in order.
fn backlog(state: &mut State, arrival: Arrival<'_>) {
    let arrivals = &mut state.backlog().arrivals;
    match (arrival, arrivals.back_mut()) {
        (Arrival::Bytes(bytes), Some(Backlogged::Bytes(last))) => last.extend_from_slice(bytes),
        (Arrival::Bytes(bytes), _) => arrivals.push_back(Backlogged::Bytes(bytes.to_vec())),
        (Arrival::Message(message), _) => arrivals.push_back(Backlogged::Message(message.to_vec())),
        (Arrival::Refusal(error), _) => arrivals.push_back(Backlogged::Refusal(error.to_string())),
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mist_sdk::ErrorKind;
    use serde_json::json;

    use super::super::limits::Limits;
    use super::super::testing::{admin_broker, open_broker, Client, ADMIN};

    fn auth(token: &str) -> serde_json::Value {
        json!({"command": "auth", "data": token})
    }

    #[test]
    fn a_session_and_its_output_stay_small() {
        // Every connection holds one of each, each in an `Arc` (16 bytes
        // more): 136 + 16 fits glibc's 160-byte chunk, 152 + 16 its
        // 176-byte one (8 bytes more cost 16).
        let session = std::mem::size_of::<super::Session>();
        let output = std::mem::size_of::<super::Output>();
        assert!(session <= 136, "Session: {session} bytes");
        assert!(output <= 152, "Output: {output} bytes");
    }

    #[tokio::test]
    async fn a_publisher_keeps_a_small_batch_and_gives_a_big_one_back() {
        let shared = open_broker(Limits::default());
        let subscriber = Client::open(&shared, None);
        subscriber
            .request(&[json!({"command": "subscribe", "tags": ["t0"]})])
            .await;
        let publisher = Client::open(&shared, None);
        assert!(publisher
            .session
            .feed(b"{\"command\":\"publish\",\"tags\":[\"t0\"],\"data\":\"x\"}\n")
            .is_none());
        assert!(publisher.session.state.lock().batch.is_some(), "kept");
        // A burst over many topics: a run each, thousands of them.
        let burst: String = (0..5000)
            .map(|i| format!("{{\"command\":\"publish\",\"tags\":[\"t{i}\"],\"data\":\"x\"}}\n"))
            .collect();
        assert!(publisher.session.feed(burst.as_bytes()).is_none());
        assert!(
            publisher.session.state.lock().batch.is_none(),
            "a burst's buffers are given back"
        );
        assert_eq!(subscriber.received().len(), 2);
    }

    #[tokio::test]
    async fn input_after_a_waiting_step_takes_effect_after_it() {
        let (shared, store) = admin_broker(Limits::default());
        store.set("user", &["a"]);
        let user = Client::open(&shared, None);
        user.request(&[auth("user")]).await;
        let gate = store.hold();
        // The subscribe waits on the store; the ping fed with it must not
        // be answered before the subscription is live.
        let feeding = user
            .session
            .feed(b"{\"command\":\"subscribe\",\"tags\":[\"a\"]}\n{\"command\":\"ping\"}\n");
        let wait = feeding.expect("the subscribe waits on the store");
        assert!(user.received().is_empty(), "no pong before the subscribe");
        // More input meanwhile joins the backlog, in order.
        assert!(user.session.feed(b"{\"command\":\"list\"}\n").is_none());
        gate.add_permits(1);
        wait.await;
        let replies = user.received();
        assert_eq!(replies[0], json!({"command": "ping", "data": "pong"}));
        assert_eq!(replies[1], json!({"command": "list", "data": "[[\"a\"]]"}));
    }

    #[tokio::test]
    async fn a_step_of_a_closed_connection_cannot_act_for_the_next_one() {
        let (shared, store) = admin_broker(Limits::default());
        store.set("user", &["secret"]);
        store.set("other", &["public"]);
        let old = Client::open(&shared, None);
        old.request(&[auth("user")]).await;
        let gate = store.hold();
        let wait = old
            .session
            .feed(b"{\"command\":\"subscribe\",\"tags\":[\"secret\"]}\n")
            .expect("waits on the store");
        let step = tokio::spawn(wait);
        // The connection dies while its subscribe is in flight; a new one
        // takes the same slot.
        old.session.close();
        let new = Client::open(&shared, Some("other"));
        assert_eq!(new.session.id.index, old.session.id.index, "slot reused");
        assert_ne!(new.session.id, old.session.id);
        gate.add_permits(1);
        step.await.expect("the step ends");
        let admin = Client::open(&shared, Some(ADMIN));
        assert_eq!(new.subscriptions().await, json!([]));
        // Nothing published on the tag reaches the new connection.
        admin
            .request(&[json!({"command": "publish", "tags": ["secret"], "data": "x"})])
            .await;
        assert!(new.received().is_empty());
        assert_eq!(shared.router.read().subscription_count(), 0);
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_stops_being_read() {
        let limits = Limits {
            max_queue_bytes: 1000,
            ..Limits::default()
        };
        let shared = open_broker(limits);
        let client = Client::open(&shared, None);
        let pings = "{\"command\":\"ping\"}\n".repeat(500);
        let wait = client
            .session
            .feed(pings.as_bytes())
            .expect("the queue fills: input halts");
        // Halted right after the reply that went over the limit: the queue
        // holds at most the limit plus one reply, not 500 replies.
        let queued = client.session.output.queue_bytes();
        assert!(queued <= 1000 + 40, "{queued} bytes queued");
        assert!(client.session.feed(b"{\"command\":\"ping\"}\n").is_none());
        let reading = tokio::spawn({
            let session = client.session.clone();
            async move {
                let mut total = 0;
                while total < 501 {
                    let mut out = Vec::new();
                    session.drain(&mut out, false);
                    total += out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                total
            }
        });
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("reading lets the input go on");
        let total = tokio::time::timeout(Duration::from_secs(10), reading)
            .await
            .expect("every pong arrives")
            .expect("reader");
        assert_eq!(total, 501);
    }

    #[tokio::test]
    async fn execute_returns_each_refusal_typed() {
        let limits = Limits {
            max_message_bytes: 100,
            ..Limits::default()
        };
        let (shared, store) = admin_broker(limits);
        store.set("user", &["a"]);
        let publish = |tags: &str| {
            format!("{{\"command\":\"publish\",\"tags\":[{tags}],\"data\":\"x\"}}").into_bytes()
        };
        let kind = |result: abi_stable::std_types::RResult<(), mist_sdk::SdkError>| {
            result.into_result().err().map(|e| e.kind)
        };
        let anonymous = Client::open(&shared, None);
        assert_eq!(
            kind(anonymous.session.execute(publish("\"a\"")).await),
            Some(ErrorKind::UNAUTHENTICATED)
        );
        let wrong = Client::open(&shared, Some("not-a-token"));
        assert_eq!(
            kind(wrong.session.execute(publish("\"a\"")).await),
            Some(ErrorKind::UNAUTHENTICATED)
        );
        let user = Client::open(&shared, Some("user"));
        assert_eq!(kind(user.session.execute(publish("\"a\"")).await), None);
        assert_eq!(
            kind(user.session.execute(publish("\"b\"")).await),
            Some(ErrorKind::PERMISSION_DENIED)
        );
        assert_eq!(
            kind(user.session.execute(vec![b'x'; 101]).await),
            Some(ErrorKind::TOO_LARGE)
        );
        assert_eq!(
            kind(user.session.execute(b"{".to_vec()).await),
            Some(ErrorKind::INVALID_INPUT)
        );
        assert!(
            user.received().is_empty(),
            "refusals are returned, not queued as replies"
        );
    }

    #[tokio::test]
    async fn a_subscriber_full_past_the_timeout_is_disconnected() {
        let limits = Limits {
            max_queue_bytes: 1000,
            slow_consumer_timeout: Duration::from_millis(50),
            ..Limits::default()
        };
        let shared = open_broker(limits);
        let slow = Client::open(&shared, None);
        slow.request(&[json!({"command": "subscribe", "tags": ["a"]})])
            .await;
        let publisher = Client::open(&shared, None);
        let line = "{\"command\":\"publish\",\"tags\":[\"a\"],\"data\":\"0123456789\"}\n";
        // Fill the queue: the first drop starts the clock...
        assert!(publisher
            .session
            .feed(line.repeat(100).as_bytes())
            .is_none());
        assert_eq!(slow.closes.load(std::sync::atomic::Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_millis(60)).await;
        // ...and a drop after the timeout disconnects.
        assert!(publisher.session.feed(line.as_bytes()).is_none());
        assert_eq!(slow.closes.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(slow.session.is_closed());
        assert_eq!(shared.figures().slow_consumers_disconnected, 1);
        assert_eq!(
            shared.router.read().open_sessions(),
            1,
            "only the publisher"
        );
        assert_eq!(shared.ledger.used(), 0, "its queue was discarded");
        assert!(slow.session.feed(b"{\"command\":\"ping\"}\n").is_none());
        assert!(
            slow.received().is_empty(),
            "a closed session answers nothing"
        );
    }

    #[tokio::test]
    async fn a_connect_token_is_checked_before_the_first_command() {
        let (shared, store) = admin_broker(Limits::default());
        store.set("user", &["a"]);
        let user = Client::open(&shared, Some("user"));
        user.request(&[json!({"command": "subscribe", "tags": ["a"]})])
            .await;
        assert_eq!(user.subscriptions().await, json!([["a"]]));
        let admin = Client::open(&shared, Some(ADMIN));
        let who = admin.request(&[json!({"command": "who"})]).await;
        assert_eq!(
            who[0]["command"], "who",
            "the server token gives admin mode"
        );
    }
}
