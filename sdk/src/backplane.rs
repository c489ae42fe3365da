//! The cluster backplane interface as an author implements it.
//!
//! Several Mist nodes started with the same `--cluster URI` act as one
//! broker by exchanging traffic through a backplane: a pub/sub service the
//! operator already runs (Redis, NATS). The host decides which channels a
//! node needs and what the payloads hold; a backplane plugin only moves
//! opaque bytes on named channels, keeps its subscriptions across
//! reconnects, and says when its connection goes down or comes back.
//!
//! # What the host relies on
//!
//! - **Order.** Payloads published through one [`Backplane`] reach every
//!   other node's [`Inbox`] in the order they were published, across
//!   channels: a payload published on channel `a` and then one on channel
//!   `b` arrive at a node subscribed to both in that order. (One publishing
//!   and one subscribing connection per node give this with Redis; a client
//!   library that queues each subscription separately must restore it.)
//! - **Confirmation.** The future [`Backplane::subscribe`] returns completes
//!   only once the service has confirmed the subscription, so that whatever
//!   any node publishes on those channels afterwards arrives.
//! - **Never waiting.** [`Backplane::publish`] queues and returns at once;
//!   [`Outbox`] is a bounded queue made for that. When the queue is full
//!   while connected, `publish` says [`SdkError::overloaded`]: the host
//!   keeps the payload, offers it again shortly, and meanwhile reads the
//!   publishing clients more slowly (flow control, nothing lost). Only
//!   [`SdkError::unavailable`] (down) makes the host drop it.
//! - **At most once.** While the connection is down, publishes fail with
//!   [`SdkError::unavailable`] and are dropped; the plugin reconnects by
//!   itself, subscribes again to every channel it holds, and then calls
//!   [`Inbox::connection`]`(true)`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use async_ffi::FfiFuture;
use tokio::sync::Notify;

use crate::abi::{BackplaneApi, BackplaneInboxBox};
use crate::error::SdkError;
use crate::runtime::{inside, spawn_ffi, InRuntime};

/// What [`Backplane::subscribe`] returns: completes once the backplane has
/// confirmed the subscription, or with the reason it could not.
pub type Confirmation = Pin<Box<dyn Future<Output = Result<(), SdkError>> + Send + 'static>>;

/// A connection to a backplane. Every method is called from the host's
/// threads (inside this library's runtime); none may block.
pub trait Backplane: Send + Sync + 'static {
    /// Adds `channels` to the set this connection receives, at once (a later
    /// [`Backplane::unsubscribe`] of the same channels is ordered after it),
    /// and returns a future that completes once the backplane confirmed the
    /// subscription (a Redis `SUBSCRIBE` reply, a NATS round trip), so that
    /// whatever is published on those channels afterwards, from any node,
    /// arrives.
    ///
    /// While disconnected the future fails at once with
    /// [`SdkError::unavailable`], and the channels stay in the set: they are
    /// subscribed when the connection comes back.
    fn subscribe(&self, channels: Vec<String>) -> Confirmation;

    /// Removes `channels` from the set this connection receives.
    fn unsubscribe(&self, channels: Vec<String>);

    /// Queues `payload` for each of `channels`, in order with earlier
    /// publishes; never waits. When disconnected, returns
    /// [`SdkError::unavailable`]: the payload is dropped (delivery is
    /// at-most-once). When connected but the outgoing buffer is full,
    /// returns [`SdkError::overloaded`]: the host keeps the payload and
    /// offers it again a moment later.
    fn publish(&self, channels: Vec<String>, payload: Vec<u8>) -> Result<(), SdkError>;

    /// `Ok` while connected; [`SdkError::unavailable`] with the reason when not.
    fn health(&self) -> Result<(), SdkError>;

    /// Disconnects. Idempotent. What was published before should still be
    /// sent, for a moment (a node's last publish is its goodbye):
    /// [`Outbox::finish`] then [`Outbox::try_batch`] in the writer do that.
    fn stop(&self);
}

/// Where a backplane hands what arrives: the host's side of one connection.
#[derive(Clone)]
pub struct Inbox {
    inner: BackplaneInboxBox,
}

impl Inbox {
    /// Wraps the host's inbox.
    pub fn from_abi(inner: BackplaneInboxBox) -> Self {
        Inbox { inner }
    }

    /// A payload arrived on `channel`. Call it from one task at a time, in
    /// the order the payloads arrived (see the module's "Order").
    pub fn receive(&self, channel: &str, payload: &[u8]) {
        self.inner
            .receive(RStr::from_str(channel), RSlice::from_slice(payload));
    }

    /// The connection went down (`false`), or came back with every channel
    /// subscribed again (`true`). Call it on changes only.
    pub fn connection(&self, up: bool) {
        self.inner.connection(up);
    }
}

/// One queued publish: a payload and the channels it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The channels, in the order given.
    pub channels: Vec<String>,
    /// The bytes.
    pub payload: Vec<u8>,
}

impl Outgoing {
    /// What the item counts against an [`Outbox`]'s limit.
    fn size(&self) -> usize {
        self.payload.len() + self.channels.iter().map(String::len).sum::<usize>()
    }
}

/// A bounded queue of outgoing publishes between [`Backplane::publish`],
/// which must never wait, and the plugin's writer task.
///
/// It holds at most `limit` bytes (payloads plus channel names): a push over
/// that is refused with [`SdkError::unavailable`], and the host counts it as
/// dropped. While *closed* (not connected) every push is refused, so nothing
/// piles up during an outage; closing drops what is queued.
///
/// ```
/// use mist_sdk::Outbox;
///
/// let outbox = Outbox::new(1024);
/// assert!(outbox.push(vec!["a".into()], b"x".to_vec()).is_err()); // not open yet
/// outbox.open();
/// outbox.push(vec!["a".into()], b"x".to_vec()).unwrap();
/// assert!(outbox.push(vec!["a".into()], vec![0; 2000]).is_err()); // over the limit
/// assert_eq!(outbox.close("connection lost"), 1);
/// ```
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<OutboxShared>,
}

struct OutboxShared {
    limit: usize,
    state: Mutex<OutboxState>,
    /// Wakes the (single) writer; `notify_one` keeps a permit, so a push
    /// between the writer's check and its wait is not lost.
    ready: Notify,
}

struct OutboxState {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    /// `None` while open; why not otherwise.
    closed: Option<String>,
}

impl Outbox {
    /// An empty, closed queue that holds at most `limit` bytes, or a single
    /// item larger than that.
    pub fn new(limit: usize) -> Self {
        Outbox {
            shared: Arc::new(OutboxShared {
                limit,
                state: Mutex::new(OutboxState {
                    queue: VecDeque::new(),
                    bytes: 0,
                    closed: Some("not connected yet".into()),
                }),
                ready: Notify::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, OutboxState> {
        // A panic while holding this lock leaves a consistent queue: every
        // update below is a single step.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a publish; never waits. Refused with
    /// [`SdkError::unavailable`] while closed, and with
    /// [`SdkError::overloaded`] when it would go over the limit (the host
    /// offers it again).
    pub fn push(&self, channels: Vec<String>, payload: Vec<u8>) -> Result<(), SdkError> {
        let item = Outgoing { channels, payload };
        let size = item.size();
        {
            let mut state = self.state();
            if let Some(reason) = &state.closed {
                return Err(SdkError::unavailable(format!(
                    "backplane unavailable: {reason}"
                )));
            }
            // An item larger than the whole limit is taken when the queue
            // is empty, alone: otherwise it could never leave, and a host
            // that offers it again would wait forever.
            if state.bytes + size > self.shared.limit && !state.queue.is_empty() {
                return Err(SdkError::overloaded(format!(
                    "backplane outgoing buffer full ({} bytes)",
                    self.shared.limit
                )));
            }
            state.bytes += size;
            state.queue.push_back(item);
        }
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Accepts pushes again (the connection is up).
    pub fn open(&self) {
        self.state().closed = None;
    }

    /// Refuses pushes from now on with `reason`, and keeps what is queued
    /// for the writer to send before it ends ([`Outbox::try_batch`]): what
    /// a backplane does at [`Backplane::stop`], so that what the host handed
    /// it last (a node's goodbye) still goes.
    pub fn finish(&self, reason: &str) {
        self.state().closed = Some(reason.to_string());
    }

    /// Refuses pushes from now on with `reason`, and drops what is queued;
    /// returns how many publishes were dropped.
    pub fn close(&self, reason: &str) -> usize {
        let mut state = self.state();
        state.closed = Some(reason.to_string());
        state.bytes = 0;
        let dropped = state.queue.len();
        state.queue.clear();
        dropped
    }

    /// `Ok` while open; why not otherwise.
    pub fn health(&self) -> Result<(), SdkError> {
        match &self.state().closed {
            None => Ok(()),
            Some(reason) => Err(SdkError::unavailable(format!(
                "backplane unavailable: {reason}"
            ))),
        }
    }

    /// Moves up to `max` queued items into `out`, oldest first, without
    /// waiting; returns how many. For the writer draining what is left at
    /// [`Outbox::finish`].
    pub fn try_batch(&self, max: usize, out: &mut Vec<Outgoing>) -> usize {
        let mut guard = self.state();
        let state = &mut *guard;
        let take = max.min(state.queue.len());
        for item in state.queue.drain(..take) {
            state.bytes -= item.size();
            out.push(item);
        }
        take
    }

    /// Waits until something is queued, then moves up to `max` items
    /// (at least one) into `out`, oldest first. For the one writer task.
    pub async fn next_batch(&self, max: usize, out: &mut Vec<Outgoing>) {
        loop {
            {
                let mut guard = self.state();
                let state = &mut *guard;
                if !state.queue.is_empty() {
                    let take = max.max(1).min(state.queue.len());
                    for item in state.queue.drain(..take) {
                        state.bytes -= item.size();
                        out.push(item);
                    }
                    return;
                }
            }
            self.shared.ready.notified().await;
        }
    }
}

pub(crate) struct BackplaneAdapter(pub(crate) InRuntime<Arc<dyn Backplane>>);

fn owned(items: RVec<RString>) -> Vec<String> {
    items.into_iter().map(RString::into_string).collect()
}

impl BackplaneApi for BackplaneAdapter {
    fn subscribe(&self, channels: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
        // The synchronous part runs now, on the caller's thread, so that the
        // set of channels changes in call order; only the wait is spawned.
        match inside(|| Ok(self.0.subscribe(owned(channels)))) {
            Ok(confirmation) => spawn_ffi(confirmation),
            Err(e) => spawn_ffi(async move { Err(e) }),
        }
    }

    fn unsubscribe(&self, channels: RVec<RString>) {
        let _ = inside(|| {
            self.0.unsubscribe(owned(channels));
            Ok(())
        });
    }

    fn publish(&self, channels: RVec<RString>, payload: RVec<u8>) -> RResult<(), SdkError> {
        inside(|| self.0.publish(owned(channels), payload.into_vec())).into()
    }

    fn health(&self) -> RResult<(), SdkError> {
        inside(|| self.0.health()).into()
    }

    fn stop(&self) {
        let _ = inside(|| {
            self.0.stop();
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outbox_is_bounded_ordered_and_drops_on_close() {
        let outbox = Outbox::new(10);
        outbox.open();
        outbox.push(vec!["a".into()], b"1234".to_vec()).unwrap();
        outbox.push(vec!["b".into()], b"5678".to_vec()).unwrap();
        let full = outbox.push(vec!["c".into()], b"9".to_vec()).unwrap_err();
        assert_eq!(full.kind, crate::ErrorKind::OVERLOADED);
        let mut out = Vec::new();
        outbox.next_batch(1, &mut out).await;
        assert_eq!(out[0].payload, b"1234");
        // Room again after the writer took one.
        outbox.push(vec!["c".into()], b"9".to_vec()).unwrap();
        outbox.next_batch(10, &mut out).await;
        let payloads: Vec<_> = out.iter().map(|o| o.payload.clone()).collect();
        assert_eq!(
            payloads,
            [b"1234".to_vec(), b"5678".to_vec(), b"9".to_vec()]
        );
        // Larger than the whole limit: taken alone into an empty queue.
        outbox.push(vec!["big".into()], vec![0; 64]).unwrap();
        let full = outbox.push(vec!["d".into()], b"x".to_vec()).unwrap_err();
        assert_eq!(full.kind, crate::ErrorKind::OVERLOADED);
        outbox.next_batch(10, &mut out).await;
        outbox.push(vec!["d".into()], b"x".to_vec()).unwrap();
        assert_eq!(outbox.close("gone"), 1);
        assert!(outbox.health().is_err());
        assert!(outbox.push(vec!["d".into()], b"x".to_vec()).is_err());
        outbox.open();
        // The dropped bytes no longer count against the limit.
        outbox
            .push(vec!["a".into()], b"123456789".to_vec())
            .unwrap();
    }

    #[test]
    fn a_finished_outbox_refuses_pushes_and_keeps_its_queue_for_the_writer() {
        let outbox = Outbox::new(100);
        outbox.open();
        outbox.push(vec!["a".into()], b"1".to_vec()).unwrap();
        outbox.push(vec!["a".into()], b"goodbye".to_vec()).unwrap();
        outbox.finish("stopping");
        let refused = outbox.push(vec!["a".into()], b"late".to_vec()).unwrap_err();
        assert_eq!(refused.kind, crate::ErrorKind::UNAVAILABLE);
        let mut out = Vec::new();
        assert_eq!(outbox.try_batch(1, &mut out), 1);
        assert_eq!(outbox.try_batch(10, &mut out), 1);
        assert_eq!(outbox.try_batch(10, &mut out), 0);
        let payloads: Vec<_> = out.iter().map(|o| o.payload.clone()).collect();
        assert_eq!(payloads, [b"1".to_vec(), b"goodbye".to_vec()]);
    }

    #[tokio::test]
    async fn outbox_wakes_a_waiting_writer() {
        let outbox = Outbox::new(100);
        outbox.open();
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                outbox.next_batch(8, &mut out).await;
                out
            })
        };
        tokio::task::yield_now().await;
        outbox.push(vec!["a".into()], b"hi".to_vec()).unwrap();
        let out = tokio::time::timeout(std::time::Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.len(), 1);
    }
}
