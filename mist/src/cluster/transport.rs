//! The backplane as the cluster uses it, and the inbox it hands the plugin.
//!
//! [`Transport`] is the plugin's [`BackplaneBox`] seen as plain Rust types,
//! so that the node logic can also run over the in-memory fake its tests
//! use. [`ClusterInbox`] is the host's side of the plugin's `Inbox`: it
//! exists before the node does (the plugin needs it to open), and forwards
//! to the node once it is running.

use std::sync::{Arc, OnceLock, Weak};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RSlice, RStr, RString, RVec};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use mist_sdk::abi::{BackplaneBox, BackplaneInboxApi, BackplaneInboxApi_TO, BackplaneInboxBox};
use mist_sdk::SdkError;

use super::Node;

/// A transport of opaque payloads on named channels (see
/// `mist_sdk::Backplane` for the contract: order, confirmation, never
/// waiting, at most once).
pub trait Transport: Send + Sync + 'static {
    /// Starts receiving `channels`; completes once confirmed.
    fn subscribe(&self, channels: Vec<String>) -> BoxFuture<'static, Result<(), SdkError>>;
    /// Stops receiving `channels`.
    fn unsubscribe(&self, channels: Vec<String>);
    /// Queues `payload` for each of `channels`; never waits.
    fn publish(&self, channels: Vec<String>, payload: Vec<u8>) -> Result<(), SdkError>;
    /// `Ok` while connected.
    fn health(&self) -> Result<(), SdkError>;
    /// Disconnects.
    fn stop(&self);
}

fn abi_strings(items: Vec<String>) -> RVec<RString> {
    items.into_iter().map(RString::from).collect()
}

impl Transport for BackplaneBox {
    fn subscribe(&self, channels: Vec<String>) -> BoxFuture<'static, Result<(), SdkError>> {
        let confirmed = BackplaneBox::subscribe(self, abi_strings(channels));
        async move { confirmed.await.into_result() }.boxed()
    }

    fn unsubscribe(&self, channels: Vec<String>) {
        BackplaneBox::unsubscribe(self, abi_strings(channels));
    }

    fn publish(&self, channels: Vec<String>, payload: Vec<u8>) -> Result<(), SdkError> {
        BackplaneBox::publish(self, abi_strings(channels), RVec::from(payload)).into_result()
    }

    fn health(&self) -> Result<(), SdkError> {
        BackplaneBox::health(self).into_result()
    }

    fn stop(&self) {
        BackplaneBox::stop(self);
    }
}

/// The host's inbox for one backplane connection.
#[derive(Clone, Default)]
pub struct ClusterInbox {
    node: Arc<OnceLock<Weak<Node>>>,
}

impl ClusterInbox {
    /// An inbox not yet attached to a node: what arrives meanwhile is
    /// dropped (the node has subscribed nothing yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// The inbox as the plugin's `open_backplane` takes it.
    pub fn abi(&self) -> BackplaneInboxBox {
        BackplaneInboxApi_TO::from_ptr(RArc::new(self.clone()), TD_Opaque)
    }

    pub(super) fn attach(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
    }

    fn node(&self) -> Option<Arc<Node>> {
        self.node.get().and_then(Weak::upgrade)
    }

    /// A payload arrived on `channel`.
    pub fn receive(&self, channel: &str, payload: &[u8]) {
        if let Some(node) = self.node() {
            node.receive(channel, payload);
        }
    }

    /// The connection went down or came back.
    pub fn connection(&self, up: bool) {
        if let Some(node) = self.node() {
            node.connection(up);
        }
    }
}

impl BackplaneInboxApi for ClusterInbox {
    fn receive(&self, channel: RStr<'_>, payload: RSlice<'_, u8>) {
        ClusterInbox::receive(self, channel.as_str(), payload.as_slice());
    }

    fn connection(&self, up: bool) {
        ClusterInbox::connection(self, up);
    }
}
