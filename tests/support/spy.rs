//! A stranger on a cluster's backplane: a plain Redis or NATS client that
//! subscribes to Mist's channels to see what the nodes send, and publishes
//! whatever it likes on them, as anyone able to reach the backplane server
//! could (docs/cluster.md, "Threat model").
//!
//! It knows of Mist only what is visible on the wire: a node's channel is
//! `PREFIX.n.` and the node's id (`who`'s `node`), the control channel is
//! `PREFIX.control`, and on NATS every payload starts
//! with the plugin's 16-byte stamp (publisher id, sequence number), which
//! the spy takes off what it reads and puts on what it sends (a stamp of
//! its own).

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::TIMEOUT;

/// The channel of the node `who` names `node` (16 hex digits).
pub fn node_channel(prefix: &str, node: &str) -> String {
    format!("{prefix}.n.{node}")
}

/// The control channel under `prefix`.
pub fn control_channel(prefix: &str) -> String {
    format!("{prefix}.control")
}

/// Bytes of the NATS plugin's stamp.
const STAMP: usize = 16;

enum Connection {
    Redis(redis::aio::MultiplexedConnection),
    Nats {
        client: async_nats::Client,
        /// The spy's own stamp: an id no node has, and a counter.
        id: u64,
        sequence: u64,
    },
}

/// One stranger's connection.
pub struct Spy {
    connection: Connection,
    /// What arrived on the channels subscribed: (channel, payload without
    /// any stamp).
    seen: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

impl Spy {
    /// Connects to the backplane at `uri` (`redis://` or `nats://`) and
    /// subscribes to `channels`; returns once the server has confirmed.
    pub async fn connect(uri: &str, channels: &[String]) -> Spy {
        let (sender, seen) = mpsc::unbounded_channel();
        let connection = if uri.starts_with("redis://") {
            let client = redis::Client::open(uri).expect("a Redis URI");
            let mut pubsub = client.get_async_pubsub().await.expect("Redis pub/sub");
            for channel in channels {
                pubsub.subscribe(channel).await.expect("SUBSCRIBE");
            }
            tokio::spawn(async move {
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let item = (
                        message.get_channel_name().to_string(),
                        message.get_payload_bytes().to_vec(),
                    );
                    if sender.send(item).is_err() {
                        break;
                    }
                }
            });
            let publisher = client
                .get_multiplexed_async_connection()
                .await
                .expect("a Redis connection");
            Connection::Redis(publisher)
        } else {
            let client = async_nats::connect(uri).await.expect("a NATS connection");
            for channel in channels {
                let mut subscription = client.subscribe(channel.clone()).await.expect("NATS SUB");
                let sender = sender.clone();
                tokio::spawn(async move {
                    while let Some(message) = subscription.next().await {
                        let payload = message.payload.get(STAMP..).unwrap_or_default().to_vec();
                        if sender.send((message.subject.to_string(), payload)).is_err() {
                            break;
                        }
                    }
                });
            }
            client.flush().await.expect("NATS flush");
            Connection::Nats {
                client,
                id: 0x5e5e_5e5e_5e5e_5e5e,
                sequence: 0,
            }
        };
        Spy { connection, seen }
    }

    /// The next payload seen (without a stamp), within [`TIMEOUT`].
    pub async fn next(&mut self) -> (String, Vec<u8>) {
        tokio::time::timeout(TIMEOUT, self.seen.recv())
            .await
            .expect("the spy saw nothing in time")
            .expect("the spy's reader ended")
    }

    /// The next payload seen on `channel` whose bytes satisfy `wanted`.
    pub async fn next_on(&mut self, channel: &str, wanted: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        loop {
            let (on, payload) = self.next().await;
            if on == channel && wanted(&payload) {
                return payload;
            }
        }
    }

    /// Publishes `payload` on `channel` (on NATS behind a stamp of the
    /// spy's own) and returns once the server has taken it: what the spy
    /// published before a node's next publish reaches every subscriber
    /// before it.
    pub async fn publish(&mut self, channel: &str, payload: &[u8]) {
        match &mut self.connection {
            Connection::Redis(connection) => {
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async(connection)
                    .await
                    .expect("PUBLISH");
            }
            Connection::Nats {
                client,
                id,
                sequence,
            } => {
                *sequence += 1;
                let mut stamped = Vec::with_capacity(STAMP + payload.len());
                stamped.extend_from_slice(&id.to_be_bytes());
                stamped.extend_from_slice(&sequence.to_be_bytes());
                stamped.extend_from_slice(payload);
                client
                    .publish(channel.to_string(), stamped.into())
                    .await
                    .expect("NATS PUB");
                client.flush().await.expect("NATS flush");
            }
        }
    }
}
