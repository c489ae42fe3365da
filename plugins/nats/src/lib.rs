//! Mist's NATS cluster backplane: `--cluster nats://[user:pass@]host:port`
//! (NATS core: subjects, no JetStream), or several servers of one NATS
//! cluster: `nats://a:4222,nats://b:4222` (or `nats://a:4222,b:4222`).
//!
//! One `async-nats` connection per node carries both directions: a host
//! channel is a NATS subject, `subscribe` sends a `SUB` and confirms it with
//! a round trip (a probe this connection publishes to itself arrives only
//! after the server has processed the `SUB`s sent before it), and publishes
//! leave from a bounded queue in order.
//!
//! # Keeping the order across subjects
//!
//! The NATS server sends one connection's messages in the order their
//! publisher sent them, but `async-nats` hands each subscription its own
//! queue, so reading several subscriptions loses the order between them. The
//! plugin restores it: every payload it publishes starts with 16 bytes of its
//! own (this connection's random id and a sequence number, stripped again on
//! receipt), and the reader collects everything the subscriptions hold,
//! polling them all again until a full pass finds nothing new, then sorts
//! that group by (publisher, sequence) before handing it to the host. The
//! client fills the queues in socket order, so a message seen in one queue
//! means every earlier one is already in its queue: the final pass finds
//! them, and the group holds every predecessor of its members.
//!
//! `async-nats` reconnects by itself (backoff capped at 250 ms here), to
//! another server of the list (or one the cluster advertised) when the one
//! in use is gone, and sends the `SUB`s again; the plugin tells the host
//! `connection(false)` at the loss and `connection(true)` once a probe has
//! made the round trip on the new connection.
//!
//! The stamp is the plugin's, not the server's: the publisher id is drawn
//! once per backplane and the sequence number runs on across reconnects,
//! so a connection that moves to another server goes on with the same id
//! and higher numbers, and its receivers' sorting holds across the move.
//! The queues the reader polls belong to the client's subscriptions, which
//! outlive the move: what came from the old server is in them before
//! anything from the new one.
//!
//! Query parameters: `buffer=BYTES` bounds the outgoing queue (default
//! 16 MiB); `prefix` is the host's (channel names) and is ignored here.

mod link;
mod reader;
mod settings;
mod subject;
mod writer;

use std::sync::Arc;

use mist_sdk::abi::ModuleRef;
use mist_sdk::{async_trait, Backplane, Confirmation, Host, Inbox, Plugin, SdkError};

use link::Link;
use settings::{settings, FIRST_CONNECT_WAIT};

/// The plugin.
pub struct Nats;

/// The root module, for linking the plugin into a host.
pub fn module() -> ModuleRef {
    mist_sdk::module::<Nats>()
}

#[async_trait]
impl Plugin for Nats {
    const NAME: &'static str = "nats";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const BACKPLANES: &'static [&'static str] = &["nats"];

    fn init(_host: Host) -> Result<Self, SdkError> {
        Ok(Nats)
    }

    async fn open_backplane(
        &self,
        uri: &str,
        inbox: Inbox,
    ) -> Result<Box<dyn Backplane>, SdkError> {
        Ok(Box::new(NatsBackplane::open(uri, inbox).await?))
    }
}

/// A backplane connection to one NATS server.
pub struct NatsBackplane {
    link: Arc<Link>,
}

impl NatsBackplane {
    /// Starts connecting to the server `uri` names. Waits a little for the
    /// first connection; a server that is down is not an error (the node
    /// serves its own clients and the backplane connects when it can), a
    /// malformed URI is.
    pub async fn open(uri: &str, inbox: Inbox) -> Result<NatsBackplane, SdkError> {
        let settings = settings(uri)?;
        let (link, commands, probes) = Link::connect(&settings, inbox).await?;
        // The two tasks look down at the link they share; the link knows
        // nothing of them.
        reader::start(link.clone(), commands, probes);
        writer::start(link.clone());
        if tokio::time::timeout(FIRST_CONNECT_WAIT, link.wait_up())
            .await
            .is_err()
        {
            tracing::warn!(
                "NATS at {} is not reachable yet; connecting in the background",
                settings.place
            );
        }
        Ok(NatsBackplane { link })
    }
}

impl Backplane for NatsBackplane {
    fn subscribe(&self, channels: Vec<String>) -> Confirmation {
        self.link.subscribe(channels)
    }

    fn unsubscribe(&self, channels: Vec<String>) {
        self.link.unsubscribe(channels);
    }

    fn publish(&self, channels: Vec<String>, payload: Vec<u8>) -> Result<(), SdkError> {
        self.link.publish(channels, payload)
    }

    fn health(&self) -> Result<(), SdkError> {
        self.link.health()
    }

    fn stop(&self) {
        self.link.stop();
    }
}

impl Drop for NatsBackplane {
    fn drop(&mut self) {
        self.link.stop();
    }
}
