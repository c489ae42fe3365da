//! An in-memory pub/sub standing in for Redis or NATS in the cluster's
//! tests: every connection has one ordered delivery queue (like one
//! subscribing connection), publishes are appended to the queues of the
//! subscribers of each channel in publish order, and the hub can go down,
//! hold confirmations back, count calls and record payloads.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use mist_sdk::SdkError;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::transport::{ClusterInbox, Transport};

#[derive(Default)]
pub struct Hub {
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    down: bool,
    hold: bool,
    held: Vec<oneshot::Sender<()>>,
    connections: HashMap<usize, Connection>,
    next: usize,
    subscribe_calls: usize,
    unsubscribe_calls: usize,
    published: Vec<Vec<u8>>,
}

struct Connection {
    channels: BTreeSet<String>,
    queue: mpsc::UnboundedSender<(String, Vec<u8>)>,
    inbox: ClusterInbox,
}

/// One node's connection to the hub.
pub struct FakeTransport {
    hub: Arc<Hub>,
    id: usize,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// A new connection and the inbox its deliveries go to, in order.
    pub fn connect(self: &Arc<Self>) -> (Arc<FakeTransport>, ClusterInbox) {
        let inbox = ClusterInbox::new();
        let (queue, mut deliveries) = mpsc::unbounded_channel::<(String, Vec<u8>)>();
        let id = {
            let mut state = self.state.lock();
            state.next += 1;
            let id = state.next;
            state.connections.insert(
                id,
                Connection {
                    channels: BTreeSet::new(),
                    queue,
                    inbox: inbox.clone(),
                },
            );
            id
        };
        let reader = inbox.clone();
        tokio::spawn(async move {
            while let Some((channel, payload)) = deliveries.recv().await {
                reader.receive(&channel, &payload);
            }
        });
        (
            Arc::new(FakeTransport {
                hub: self.clone(),
                id,
            }),
            inbox,
        )
    }

    /// The backplane goes down or comes back; every connection is told.
    pub fn set_down(&self, down: bool) {
        let inboxes: Vec<ClusterInbox> = {
            let mut state = self.state.lock();
            state.down = down;
            state
                .connections
                .values()
                .map(|c| c.inbox.clone())
                .collect()
        };
        for inbox in inboxes {
            inbox.connection(!down);
        }
    }

    /// Holds subscription confirmations back until [`Hub::release`].
    pub fn hold(&self) {
        self.state.lock().hold = true;
    }

    pub fn release(&self) {
        let held = {
            let mut state = self.state.lock();
            state.hold = false;
            std::mem::take(&mut state.held)
        };
        for confirm in held {
            let _ = confirm.send(());
        }
    }

    /// A connection vanishes without a goodbye (its node was killed).
    pub fn crash(&self, transport: &FakeTransport) {
        self.state.lock().connections.remove(&transport.id);
    }

    /// Hands `payload` to every subscriber of `channel` (a stranger
    /// publishing on the backplane).
    pub fn inject(&self, channel: &str, payload: &[u8]) {
        self.route(&[channel.to_string()], payload);
    }

    fn route(&self, channels: &[String], payload: &[u8]) {
        let mut state = self.state.lock();
        state.published.push(payload.to_vec());
        for channel in channels {
            for connection in state.connections.values() {
                if connection.channels.contains(channel) {
                    let _ = connection.queue.send((channel.clone(), payload.to_vec()));
                }
            }
        }
    }

    pub fn subscribe_calls(&self) -> usize {
        self.state.lock().subscribe_calls
    }

    pub fn unsubscribe_calls(&self) -> usize {
        self.state.lock().unsubscribe_calls
    }

    /// Whether `transport`'s connection holds `channel`.
    pub fn holds(&self, transport: &FakeTransport, channel: &str) -> bool {
        self.state
            .lock()
            .connections
            .get(&transport.id)
            .is_some_and(|c| c.channels.contains(channel))
    }

    /// Every payload published so far.
    pub fn published(&self) -> Vec<Vec<u8>> {
        self.state.lock().published.clone()
    }
}

impl Transport for FakeTransport {
    fn subscribe(&self, channels: Vec<String>) -> BoxFuture<'static, Result<(), SdkError>> {
        let mut state = self.hub.state.lock();
        state.subscribe_calls += 1;
        if let Some(connection) = state.connections.get_mut(&self.id) {
            connection.channels.extend(channels);
        }
        if state.down {
            return async { Err(SdkError::unavailable("the fake backplane is down")) }.boxed();
        }
        if state.hold {
            let (confirm, confirmed) = oneshot::channel();
            state.held.push(confirm);
            return async move {
                confirmed
                    .await
                    .map_err(|_| SdkError::unavailable("dropped"))
            }
            .boxed();
        }
        async { Ok(()) }.boxed()
    }

    fn unsubscribe(&self, channels: Vec<String>) {
        let mut state = self.hub.state.lock();
        state.unsubscribe_calls += 1;
        if let Some(connection) = state.connections.get_mut(&self.id) {
            for channel in &channels {
                connection.channels.remove(channel);
            }
        }
    }

    fn publish(&self, channels: Vec<String>, payload: Vec<u8>) -> Result<(), SdkError> {
        {
            let state = self.hub.state.lock();
            if state.down || !state.connections.contains_key(&self.id) {
                return Err(SdkError::unavailable("the fake backplane is down"));
            }
        }
        self.hub.route(&channels, &payload);
        Ok(())
    }

    fn health(&self) -> Result<(), SdkError> {
        if self.hub.state.lock().down {
            Err(SdkError::unavailable("the fake backplane is down"))
        } else {
            Ok(())
        }
    }

    fn stop(&self) {
        self.hub.state.lock().connections.remove(&self.id);
    }
}
