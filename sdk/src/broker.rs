//! The broker as a listener plugin uses it: open a session per client, feed
//! it what the client sends, write out what it drains.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RNone, ROption, RSome, RString, RVec};
use async_ffi::FfiFuture;
use atomic_waker::AtomicWaker;
use tokio::sync::Notify;

use crate::abi::{
    BrokerBox, BrokerStats, ListenerLimits, OutputWakerApi, OutputWakerApi_TO, Readiness,
    SessionBox, SessionInfo,
};
use crate::error::SdkError;

/// A handle to the broker; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: BrokerBox,
}

impl Broker {
    /// Wraps the host's broker handle.
    pub fn from_abi(inner: BrokerBox) -> Self {
        Broker { inner }
    }

    /// Opens a session for a new client.
    pub fn open_session(&self, info: SessionInfo) -> Session {
        let signals = Arc::new(Signals::default());
        let waker = OutputWakerApi_TO::from_value(NotifyWaker(signals.clone()), TD_Opaque);
        Session {
            inner: self.inner.open_session(info, waker),
            signals,
        }
    }

    /// Publishes `data` on `tags` as the broker itself, skipping session
    /// `exclude`. Returns how many clients it was queued for.
    pub fn publish<T: AsRef<str>>(
        &self,
        tags: &[T],
        data: &str,
        exclude: Option<u64>,
    ) -> Result<u64, SdkError> {
        let tags = tags.iter().map(|t| RString::from(t.as_ref())).collect();
        let exclude = match exclude {
            Some(id) => RSome(id),
            None => RNone,
        };
        self.inner.publish(tags, data.into(), exclude).into()
    }

    /// The broker's current figures.
    pub fn stats(&self) -> BrokerStats {
        self.inner.stats()
    }

    /// The limits a listener applies itself: message size and timeouts.
    pub fn limits(&self) -> ListenerLimits {
        self.inner.limits()
    }

    /// Takes a place for one more client connection on `listener` (a
    /// scheme); the place is given back when the [`ConnectionPermit`] drops.
    /// An error (kind [`OVERLOADED`](crate::ErrorKind::OVERLOADED)) means the
    /// broker is full: refuse the connection with its message.
    pub fn admit(&self, listener: &str) -> Result<ConnectionPermit, SdkError> {
        self.permits(listener).admit()
    }

    /// What [`Broker::admit`] needs, shared by the permits of one listener
    /// (a permit is then one pointer, and takes no allocation of its own).
    pub(crate) fn permits(&self, listener: &str) -> Arc<Permits> {
        Arc::new(Permits {
            broker: self.inner.clone(),
            listener: listener.into(),
        })
    }

    /// The broker's metrics in the Prometheus text format; `token` must be
    /// the server token when the broker runs with an authenticator.
    pub fn metrics(&self, token: Option<&str>) -> Result<String, SdkError> {
        let token = match token {
            Some(token) => RSome(RString::from(token)),
            None => RNone,
        };
        self.inner
            .metrics(token)
            .into_result()
            .map(RString::into_string)
    }

    /// Whether the broker is ready to serve, with a JSON report of each part.
    pub async fn readiness(&self) -> Readiness {
        self.inner.readiness().await
    }
}

/// One client connection's place in the broker's connection limit, taken
/// by [`Broker::admit`] and given back when dropped.
pub struct ConnectionPermit {
    permits: Arc<Permits>,
}

/// The broker and the listener whose connection limit permits count in.
pub(crate) struct Permits {
    broker: BrokerBox,
    listener: RString,
}

impl Permits {
    /// Takes a place (see [`Broker::admit`]).
    pub(crate) fn admit(self: &Arc<Self>) -> Result<ConnectionPermit, SdkError> {
        self.broker.admit(self.listener.as_rstr()).into_result()?;
        Ok(ConnectionPermit {
            permits: self.clone(),
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.permits.broker.release(self.permits.listener.as_rstr());
    }
}

/// One client's session. Clone it to give the reader and the writer half of
/// a connection each a handle; the session closes when [`Session::close`] is
/// called or the last handle is dropped.
#[derive(Clone)]
pub struct Session {
    inner: SessionBox,
    signals: Arc<Signals>,
}

/// What the broker tells a listener about one session.
#[derive(Default)]
struct Signals {
    /// [`PENDING`] and [`CLOSED`].
    state: AtomicU8,
    /// The one waker of the poll-style waits ([`Session::poll_output`],
    /// [`Session::poll_closed`], [`Session::register_waker`]).
    waker: AtomicWaker,
    /// The waiters of [`Session::output`] and [`Session::closed`], made by
    /// the first of them: a listener that polls never has them.
    waiters: OnceLock<Box<Waiters>>,
}

#[derive(Default)]
struct Waiters {
    /// Output is waiting.
    ready: Notify,
    /// The broker ended the session.
    closed: Notify,
}

/// The broker said output is waiting, and no drain has started since.
const PENDING: u8 = 1;
/// The broker ended the session.
const CLOSED: u8 = 2;
/// The listener takes output in pieces ([`Session::write_in_pieces`]): not
/// an event, a setting kept with them.
const PIECES: u8 = 4;

impl Signals {
    /// The waiters, made if need be. A wake that found none sets the state
    /// first: read it after this (it is ordered after the waiters exist).
    fn waiters(&self) -> &Waiters {
        let waiters = self.waiters.get_or_init(Box::default);
        fence(Ordering::SeqCst);
        waiters
    }

    /// Sets `flag`, then wakes whoever waits for it.
    fn raise(&self, flag: u8) {
        self.state.fetch_or(flag, Ordering::AcqRel);
        // Pairs with the fence of `waiters`: either this sees the waiters,
        // or they see the flag.
        fence(Ordering::SeqCst);
        if let Some(waiters) = self.waiters.get() {
            if flag & CLOSED != 0 {
                waiters.closed.notify_waiters();
            }
            // A writer waiting for output wakes (and may find the session
            // closed).
            waiters.ready.notify_one();
        }
        self.waker.wake();
    }
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> u64 {
        self.inner.id()
    }

    /// Hands the broker bytes read from a newline-delimited stream. The
    /// bytes are consumed before this returns, so the read buffer can be
    /// reused at once; await the returned [`Feed`] before feeding more.
    pub fn feed(&self, bytes: &[u8]) -> Feed {
        Feed(self.inner.feed(bytes.into()).into_option())
    }

    /// Hands the broker one complete message (a WebSocket text frame).
    /// Await the returned [`Feed`] before feeding more.
    pub fn feed_message(&self, message: &[u8]) -> Feed {
        Feed(self.inner.feed_message(message.into()).into_option())
    }

    /// Waits for output and appends it to `out`: whole newline-terminated
    /// JSON lines. Returns `false` once the session is closed and drained.
    pub async fn output(&self, out: &mut RVec<u8>) -> bool {
        loop {
            let open = self.try_output(out);
            if !out.is_empty() || !open {
                return open;
            }
            let ready = self.signals.waiters().ready.notified();
            tokio::pin!(ready);
            // Registered before the check: a wake in between is not lost
            // (and `notify_one` leaves a permit besides).
            ready.as_mut().enable();
            if self.output_pending() {
                continue;
            }
            ready.await;
        }
    }

    /// The poll-style [`Session::output`], for a listener whose reading
    /// and writing share one task: appends waiting output to `out`, or
    /// registers the task to be woken when there is some. Shares one waker
    /// with [`Session::poll_closed`] and [`Session::register_waker`]: poll
    /// these from one task only.
    pub fn poll_output(&self, cx: &mut Context<'_>, out: &mut RVec<u8>) -> Poll<bool> {
        loop {
            let open = self.try_output(out);
            if !out.is_empty() || !open {
                return Poll::Ready(open);
            }
            self.register_waker(cx.waker());
            if !self.output_pending() {
                return Poll::Pending;
            }
        }
    }

    /// Completes once the broker has ended this session itself (it was a
    /// slow consumer, or the broker is shutting down). A listener races its
    /// reads and writes against this so that a connection whose client
    /// stopped reading is closed even while a write to it is stuck.
    pub async fn closed(&self) {
        let closed = self.signals.waiters().closed.notified();
        tokio::pin!(closed);
        // Registered before the check: a close in between is not missed.
        closed.as_mut().enable();
        if self.is_closed() {
            return;
        }
        closed.await;
    }

    /// The poll-style [`Session::closed`]; one task only (see
    /// [`Session::poll_output`]).
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_closed() {
            return Poll::Ready(());
        }
        self.register_waker(cx.waker());
        if self.is_closed() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Whether the broker has ended this session itself (see
    /// [`Session::closed`]).
    pub fn is_closed(&self) -> bool {
        self.signals.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Whether the broker said output is waiting since the last
    /// [`Session::try_output`] (or [`Session::output`]) began, or ended the
    /// session. It may have been drained already; it never misses output
    /// queued after that drain.
    pub fn output_pending(&self) -> bool {
        self.signals.state.load(Ordering::Acquire) & (PENDING | CLOSED) != 0
    }

    /// Registers `waker` to be woken, once, when the broker says output is
    /// waiting or ends the session: the poll-style counterpart of
    /// [`Session::output`] and [`Session::closed`], for a connection that
    /// waits without a task (parked while idle). One waker at a time: a
    /// later registration replaces it. Register first, then check
    /// [`Session::output_pending`]; a wake in between is not lost.
    pub fn register_waker(&self, waker: &Waker) {
        self.signals.waker.register(waker);
    }

    /// Appends whatever output is waiting now to `out`, without waiting.
    /// Returns `false` once the session is closed and drained. For a
    /// listener that is stopping: write out what is queued, then close.
    pub fn try_output(&self, out: &mut RVec<u8>) -> bool {
        // Cleared before the drain: a wake for output queued after it sets
        // the flag again.
        let state = self.signals.state.fetch_and(!PENDING, Ordering::AcqRel);
        if state & PIECES != 0 {
            self.inner.drain_stream(out)
        } else {
            self.inner.drain(out)
        }
    }

    /// From now on, output handed to this session's listener (by every
    /// clone of this handle) may end in the middle of a line, its rest
    /// coming first the next time, instead of always in whole lines. For a
    /// listener that writes a byte stream, or can send a message in
    /// fragments: what the broker and the listener hold for a connection
    /// then stays small however long a line is.
    pub fn write_in_pieces(&self) {
        self.signals.state.fetch_or(PIECES, Ordering::AcqRel);
    }

    /// Tells the broker how many bytes this listener holds for the
    /// session's input beyond a small fixed buffer (a message still
    /// arriving), to count against its memory budget. `false` when the
    /// budget has no room: drop what is held and end the connection. Say
    /// `0` once the bytes are handed over or dropped.
    pub fn hold(&self, bytes: usize) -> bool {
        self.inner.hold(bytes as u64)
    }

    /// Ends the session; output already queued can still be drained.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Answers input the listener cannot accept (a binary WebSocket frame,
    /// say) with an error reply, in order with the session's other output.
    pub fn refuse(&self, error: &str) {
        self.inner.refuse(error.into());
    }

    /// Carries out one request and completes once it has taken effect; a
    /// refusal comes back as a typed error (map it with
    /// [`ErrorKind::http_status`](crate::ErrorKind::http_status)) instead of
    /// an error reply. For transports that answer each request themselves.
    pub async fn execute(&self, request: &[u8]) -> Result<(), SdkError> {
        self.inner.execute(request.into()).await.into_result()
    }
}

/// The messages in output drained from a session: each newline-terminated
/// line, without its newline (one WebSocket frame, one SSE event, ...).
///
/// ```
/// let out = b"{\"command\":\"ping\",\"data\":\"pong\"}\n{\"command\":\"list\"}\n";
/// let lines: Vec<&[u8]> = mist_sdk::output_lines(out).collect();
/// assert_eq!(lines, [&br#"{"command":"ping","data":"pong"}"#[..], br#"{"command":"list"}"#]);
/// ```
pub fn output_lines(output: &[u8]) -> impl Iterator<Item = &[u8]> {
    output
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
}

/// Completes when the session is ready for more input. Usually ready at
/// once; it waits while the session asks the authenticator or a plugin, or
/// while its client has not read its replies (that client is slowed down,
/// nobody else is).
#[must_use = "await it before feeding more input"]
pub struct Feed(Option<FfiFuture<()>>);

impl Feed {
    /// A `Feed` with nothing to wait for.
    pub fn ready() -> Self {
        Feed(None)
    }
}

impl Future for Feed {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            None => Poll::Ready(()),
            Some(wait) => Pin::new(wait).poll(cx),
        }
    }
}

struct NotifyWaker(Arc<Signals>);

impl OutputWakerApi for NotifyWaker {
    fn wake(&self) {
        self.0.raise(PENDING);
    }

    fn closed(&self) {
        self.0.raise(CLOSED);
    }
}

impl SessionInfo {
    /// Facts about a client connected through `listener` from `peer`.
    pub fn new(listener: &str, peer: impl ToString) -> Self {
        SessionInfo {
            listener: listener.into(),
            peer: peer.to_string().into(),
            token: ROption::RNone,
        }
    }

    /// The same, with a token presented at connect time.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.map(RString::from).into();
        self
    }
}
