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
//! refuses publishes, and reconnects with a backoff capped at one second; on
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
mod publisher;
mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use mist_sdk::abi::ModuleRef;
use mist_sdk::{async_trait, Backplane, Confirmation, Host, Inbox, Plugin, SdkError};

use link::Link;

/// How long connecting may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command (a subscription, a pipeline, a ping) may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle connection is checked with a `PING`.
const PING_EVERY: Duration = Duration::from_secs(1);
/// The outgoing queue's bound when the URI names none.
const DEFAULT_BUFFER: usize = 16 << 20;
/// How long `open` waits for the first connection before it returns a
/// backplane that is still connecting.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(3);

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

/// What a `redis://` URI says.
#[derive(Debug)]
struct Settings {
    /// The URI as the `redis` crate reads it (our own parameters removed).
    client: redis::Client,
    /// `host:port`, for messages; never the password.
    place: String,
    buffer: usize,
}

fn settings(uri: &str) -> Result<Settings, SdkError> {
    let usage = "expected redis://[user:pass@]host:port[/db][?buffer=BYTES]";
    // Never echo the URI: it may hold a password.
    let mut parsed = url::Url::parse(uri)
        .map_err(|e| SdkError::invalid_input(format!("bad Redis URI: {e}; {usage}")))?;
    if parsed.scheme() != "redis" {
        return Err(SdkError::invalid_input(format!(
            "not a redis:// URI; {usage}"
        )));
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| SdkError::invalid_input(format!("the Redis URI has no host; {usage}")))?
        .to_string();
    let port = parsed.port().unwrap_or(6379);
    let mut buffer = DEFAULT_BUFFER;
    let mut kept = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match &*key {
            "buffer" => {
                buffer = value.parse().ok().filter(|b| *b > 0).ok_or_else(|| {
                    SdkError::invalid_input(format!(
                        "the Redis URI's buffer must be a positive number of bytes, not {value:?}"
                    ))
                })?
            }
            "prefix" => {}
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let client = redis::Client::open(parsed.as_str())
        .map_err(|e| SdkError::invalid_input(format!("bad Redis URI: {:?}; {usage}", e.kind())))?;
    Ok(Settings {
        client,
        place: format!("{host}:{port}"),
        buffer,
    })
}

/// A backplane connection to one Redis server.
pub struct RedisBackplane {
    link: Arc<Link>,
}

impl RedisBackplane {
    /// Starts connecting to the server `uri` names. Waits a little for the
    /// first connection; a server that is down is not an error (the node
    /// serves its own clients and the backplane connects when it can), a
    /// malformed URI is.
    pub async fn open(uri: &str, inbox: Inbox) -> Result<RedisBackplane, SdkError> {
        let settings = settings(uri)?;
        let link = Link::new(inbox, settings.buffer, settings.place.clone());
        subscriber::start(link.clone(), settings.client.clone());
        publisher::start(link.clone(), settings.client);
        if tokio::time::timeout(FIRST_CONNECT_WAIT, link.wait_up())
            .await
            .is_err()
        {
            tracing::warn!(
                "Redis at {} is not reachable yet; connecting in the background",
                settings.place
            );
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

/// Waits before the next connection attempt: 50 ms, doubling up to 1 s, so
/// a server that comes back is found within about a second.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Backoff(Self::FIRST)
    }

    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        wait
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_parameters_of_ours_are_read_and_removed() {
        let s = settings("redis://127.0.0.1:7000/2?buffer=1024&prefix=app").unwrap();
        assert_eq!(s.buffer, 1024);
        assert_eq!(s.place, "127.0.0.1:7000");
        let info = s.client.get_connection_info();
        assert_eq!(info.redis.db, 2);
    }

    #[test]
    fn bad_uris_are_refused_without_echoing_the_password() {
        for bad in [
            "redis://",
            "http://127.0.0.1:6379",
            "redis://127.0.0.1:6379?buffer=0",
            "redis://127.0.0.1:6379?buffer=lots",
            "not a uri",
        ] {
            let e = settings(bad).unwrap_err();
            assert_eq!(e.kind, mist_sdk::ErrorKind::INVALID_INPUT, "{bad}");
        }
        let e = settings("redis://u:secret-pw@127.0.0.1:6379?buffer=x").unwrap_err();
        assert!(!e.message.contains("secret-pw"), "{}", e.message);
    }

    #[test]
    fn backoff_doubles_to_a_second() {
        let mut b = Backoff::new();
        let waits: Vec<_> = (0..7).map(|_| b.next().as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next().as_millis(), 50);
    }
}
