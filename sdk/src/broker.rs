//! The broker as a listener plugin uses it: open a session per client, feed
//! it what the client sends, write out what it drains.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RNone, ROption, RSome, RString, RVec};
use async_ffi::FfiFuture;
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
        self.inner.admit(listener.into()).into_result()?;
        Ok(ConnectionPermit {
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
    broker: BrokerBox,
    listener: RString,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.broker.release(self.listener.as_rstr());
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
    /// Output is waiting.
    ready: Notify,
    /// The broker ended the session.
    closed: Notify,
    is_closed: AtomicBool,
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
            let open = self.inner.drain(out);
            if !out.is_empty() || !open {
                return open;
            }
            // A wake between the drain above and this await is not lost:
            // `notify_one` leaves a permit when nobody is waiting yet.
            self.signals.ready.notified().await;
        }
    }

    /// Completes once the broker has ended this session itself (it was a
    /// slow consumer, or the broker is shutting down). A listener races its
    /// reads and writes against this so that a connection whose client
    /// stopped reading is closed even while a write to it is stuck.
    pub async fn closed(&self) {
        let closed = self.signals.closed.notified();
        tokio::pin!(closed);
        // Registered before the check: a close in between is not missed.
        closed.as_mut().enable();
        if self.signals.is_closed.load(Ordering::Acquire) {
            return;
        }
        closed.await;
    }

    /// Appends whatever output is waiting now to `out`, without waiting.
    /// Returns `false` once the session is closed and drained. For a
    /// listener that is stopping: write out what is queued, then close.
    pub fn try_output(&self, out: &mut RVec<u8>) -> bool {
        self.inner.drain(out)
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
        self.0.ready.notify_one();
    }

    fn closed(&self) {
        self.0.is_closed.store(true, Ordering::Release);
        self.0.closed.notify_waiters();
        // A writer waiting for output wakes and finds the session closed.
        self.0.ready.notify_one();
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
