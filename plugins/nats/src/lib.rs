//! Mist's NATS cluster backplane: `--cluster nats://[user:pass@]host:port`
//! (NATS core: subjects, no JetStream).
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
//! `async-nats` reconnects by itself (backoff capped at one second here) and
//! sends the `SUB`s again; the plugin tells the host `connection(true)` once
//! a probe has made the round trip on the new connection.
//!
//! Query parameters: `buffer=BYTES` bounds the outgoing queue (default
//! 16 MiB); `prefix` is the host's (channel names) and is ignored here.

mod link;
mod reader;
mod subject;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use mist_sdk::abi::ModuleRef;
use mist_sdk::{async_trait, Backplane, Confirmation, Host, Inbox, Plugin, SdkError};

use link::Link;

/// How long connecting may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a subscription's confirmation may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the client pings the server (two unanswered: reconnect).
const PING_EVERY: Duration = Duration::from_secs(1);
/// The outgoing queue's bound when the URI names none.
const DEFAULT_BUFFER: usize = 16 << 20;
/// How long `open` waits for the first connection before it returns a
/// backplane that is still connecting.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(3);
/// Messages each subscription's queue in the client holds before the
/// client drops (and reports) the overflow; the reader drains them all at
/// every wake-up.
const SUBSCRIPTION_CAPACITY: usize = 65_536;

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

/// What a `nats://` URI says.
#[derive(Debug)]
struct Settings {
    /// The server address as `async-nats` reads it (our parameters removed).
    server: String,
    /// `host:port`, for messages; never the password.
    place: String,
    buffer: usize,
}

fn settings(uri: &str) -> Result<Settings, SdkError> {
    let usage = "expected nats://[user:pass@]host:port[?buffer=BYTES]";
    // Never echo the URI: it may hold a password.
    let mut parsed = url::Url::parse(uri)
        .map_err(|e| SdkError::invalid_input(format!("bad NATS URI: {e}; {usage}")))?;
    if parsed.scheme() != "nats" {
        return Err(SdkError::invalid_input(format!(
            "not a nats:// URI; {usage}"
        )));
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| SdkError::invalid_input(format!("the NATS URI has no host; {usage}")))?
        .to_string();
    let port = parsed.port().unwrap_or(4222);
    let mut buffer = DEFAULT_BUFFER;
    for (key, value) in parsed.query_pairs() {
        match &*key {
            "buffer" => {
                buffer = value.parse().ok().filter(|b| *b > 0).ok_or_else(|| {
                    SdkError::invalid_input(format!(
                        "the NATS URI's buffer must be a positive number of bytes, not {value:?}"
                    ))
                })?
            }
            "prefix" => {}
            other => {
                return Err(SdkError::invalid_input(format!(
                    "unknown NATS URI parameter {other:?}; {usage}"
                )))
            }
        }
    }
    parsed.set_query(None);
    parsed.set_path("");
    let _ = parsed.set_port(Some(port));
    Ok(Settings {
        server: parsed.to_string(),
        place: format!("{host}:{port}"),
        buffer,
    })
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
        let link = Link::connect(&settings, inbox).await?;
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

/// The wait before reconnect attempt `attempt` (1, 2, ...): 50 ms, doubling
/// up to 1 s, so a server that comes back is found within about a second.
fn backoff(attempt: usize) -> Duration {
    let doublings = attempt.saturating_sub(1).min(5) as u32;
    (Duration::from_millis(50) * 2u32.pow(doublings)).min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_parameters_of_ours_are_read_and_removed() {
        let s = settings("nats://u:p@127.0.0.1:7000?buffer=1024&prefix=app").unwrap();
        assert_eq!(s.buffer, 1024);
        assert_eq!(s.place, "127.0.0.1:7000");
        assert_eq!(s.server, "nats://u:p@127.0.0.1:7000");
        let s = settings("nats://localhost").unwrap();
        assert_eq!(s.server, "nats://localhost:4222");
    }

    #[test]
    fn bad_uris_are_refused_without_echoing_the_password() {
        for bad in [
            "nats://",
            "redis://127.0.0.1:4222",
            "nats://127.0.0.1:4222?buffer=0",
            "nats://127.0.0.1:4222?colour=blue",
            "nonsense",
        ] {
            let e = settings(bad).unwrap_err();
            assert_eq!(e.kind, mist_sdk::ErrorKind::INVALID_INPUT, "{bad}");
        }
        let e = settings("nats://u:secret-pw@127.0.0.1:4222?buffer=x").unwrap_err();
        assert!(!e.message.contains("secret-pw"), "{}", e.message);
    }

    #[test]
    fn backoff_doubles_to_a_second() {
        let waits: Vec<_> = (1..=8).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
    }
}
