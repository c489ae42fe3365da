//! The cluster backplane interface as an author implements it.
//!
//! Several Mist nodes started with the same `--cluster URI` act as one
//! broker by exchanging traffic through a backplane: a pub/sub service the
//! operator already runs (Redis, NATS). The host decides which channels a
//! node needs and what the payloads hold; a backplane plugin only moves
//! opaque bytes on named channels, keeps its subscriptions across
//! reconnects, and says when its connection goes down or comes back.

use std::sync::Arc;

use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use async_ffi::FfiFuture;

use crate::abi::{BackplaneApi, BackplaneInboxBox};
use crate::error::SdkError;
use crate::runtime::{inside, spawn_ffi, InRuntime};

/// A connection to a backplane. Every method is called from the host's
/// threads; none may block.
#[async_trait::async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// Starts receiving `channels` into the [`Inbox`]. Completes once the
    /// backplane confirmed the subscription (a Redis `SUBSCRIBE` reply, a
    /// NATS round trip), so that whatever is published on those channels
    /// afterwards, from any node, arrives. The plugin resubscribes by itself
    /// after a reconnect.
    async fn subscribe(&self, channels: Vec<String>) -> Result<(), SdkError>;

    /// Stops receiving `channels`.
    fn unsubscribe(&self, channels: Vec<String>);

    /// Queues `payload` for each of `channels`, in order with earlier
    /// publishes; never waits. When disconnected, or when the outgoing
    /// buffer is full, returns [`SdkError::unavailable`]: the payload is
    /// dropped (delivery is at-most-once).
    fn publish(&self, channels: Vec<String>, payload: Vec<u8>) -> Result<(), SdkError>;

    /// `Ok` while connected; [`SdkError::unavailable`] with the reason when not.
    fn health(&self) -> Result<(), SdkError>;

    /// Disconnects. Idempotent.
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

    /// A payload arrived on `channel`.
    pub fn receive(&self, channel: &str, payload: &[u8]) {
        self.inner
            .receive(RStr::from_str(channel), RSlice::from_slice(payload));
    }

    /// The connection went down (`false`), or came back with every channel
    /// subscribed again (`true`).
    pub fn connection(&self, up: bool) {
        self.inner.connection(up);
    }
}

pub(crate) struct BackplaneAdapter(pub(crate) InRuntime<Arc<dyn Backplane>>);

fn owned(items: RVec<RString>) -> Vec<String> {
    items.into_iter().map(RString::into_string).collect()
}

impl BackplaneApi for BackplaneAdapter {
    fn subscribe(&self, channels: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
        let backplane = Arc::clone(&self.0);
        spawn_ffi(async move { backplane.subscribe(owned(channels)).await })
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
