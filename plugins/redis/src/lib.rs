//! Mist's Redis cluster backplane: `--cluster redis://[user:pass@]host:port[/db]`.
//!
//! Each node keeps two connections to Redis: one in pub/sub mode that
//! subscribes to the channels the host asks for and hands every message to
//! the host's inbox, in the order Redis sent them; and one that sends the
//! host's publishes, pipelined, from a bounded queue. Redis delivers what one
//! connection publishes to each subscribed connection in publish order, so
//! the host sees every other node's payloads in their publish order, across
//! channels.
//!
//! When either connection fails, the plugin tells the host
//! (`connection(false)`), drops what was queued (delivery is at-most-once),
//! refuses publishes, and reconnects with a backoff capped at 250 ms; on
//! reconnect it subscribes again to every channel it holds before it says
//! `connection(true)`. A ping every second on each connection notices a
//! server that went away without closing the socket.
//!
//! Query parameters: `buffer=BYTES` bounds the outgoing queue (default
//! 16 MiB); `prefix` is the host's (channel names) and is ignored here.
//!
//! ```no_run
//! # async fn demo(inbox: mist_sdk::Inbox) -> Result<(), mist_sdk::SdkError> {
//! use mist_sdk::Backplane;
//! let redis = mist_plugin_redis::RedisBackplane::open("redis://127.0.0.1:6379", inbox).await?;
//! redis.subscribe(vec!["mist.t.abc".into()]).await?; // confirmed by Redis
//! redis.publish(vec!["mist.t.abc".into()], b"payload".to_vec())?; // never waits
//! # Ok(()) }
//! ```

mod link;
mod placement;
mod publisher;
mod settings;
mod subscriber;

use std::sync::Arc;

use mist_sdk::abi::ModuleRef;
use mist_sdk::{async_trait, Backplane, Confirmation, Host, Inbox, Plugin, SdkError};

use link::Link;
use settings::{settings, FIRST_CONNECT_WAIT};

/// The plugin.
pub struct Redis;

/// The root module, for linking the plugin into a host.
pub fn module() -> ModuleRef {
    mist_sdk::module::<Redis>()
}

#[async_trait]
impl Plugin for Redis {
    const NAME: &'static str = "redis";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const BACKPLANES: &'static [&'static str] = &["redis"];

    fn init(_host: Host) -> Result<Self, SdkError> {
        Ok(Redis)
    }

    async fn open_backplane(
        &self,
        uri: &str,
        inbox: Inbox,
    ) -> Result<Box<dyn Backplane>, SdkError> {
        Ok(Box::new(RedisBackplane::open(uri, inbox).await?))
    }
}

/// A backplane connection to one Redis server, or to several.
pub struct RedisBackplane {
    link: Arc<Link>,
}

impl RedisBackplane {
    /// Starts connecting to the server (or servers) `uri` names. Waits a little for the
    /// first connection; a server that is down is not an error (the node
    /// serves its own clients and the backplane connects when it can), a
    /// malformed URI is.
    pub async fn open(uri: &str, inbox: Inbox) -> Result<RedisBackplane, SdkError> {
        let settings = settings(uri)?;
        let places = settings.places();
        let link = Link::new(
            inbox,
            settings.buffer,
            settings.servers.iter().map(|s| s.place.clone()).collect(),
        );
        for (index, server) in settings.servers.iter().enumerate() {
            subscriber::start(link.clone(), index, server.client.clone());
        }
        publisher::start(
            link.clone(),
            settings.servers.into_iter().map(|s| s.client).collect(),
        );
        if tokio::time::timeout(FIRST_CONNECT_WAIT, link.wait_up())
            .await
            .is_err()
        {
            tracing::warn!("Redis at {places} is not reachable yet; connecting in the background");
        }
        Ok(RedisBackplane { link })
    }
}

impl Backplane for RedisBackplane {
    fn subscribe(&self, channels: Vec<String>) -> Confirmation {
        self.link.subscribe(channels)
    }

    fn unsubscribe(&self, channels: Vec<String>) {
        self.link.unsubscribe(channels);
    }

    fn publish(&self, channels: Vec<String>, payload: Vec<u8>) -> Result<(), SdkError> {
        self.link.outbox.push(channels, payload)
    }

    fn health(&self) -> Result<(), SdkError> {
        self.link.health()
    }

    fn stop(&self) {
        self.link.stop();
    }
}

impl Drop for RedisBackplane {
    fn drop(&mut self) {
        self.link.stop();
    }
}
