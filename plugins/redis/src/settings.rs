//! What a `redis://` URI says, and the plugin's timings: what the link's
//! two connection tasks and the plugin's entry all look down at.

use std::time::Duration;

use mist_sdk::SdkError;

/// How long connecting may take before the attempt counts as failed.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command (a subscription, a pipeline, a ping) may take.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle connection is checked with a `PING`.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(1);
/// How long sending what is still queued at `stop` may take.
pub(crate) const LAST_WORDS: Duration = Duration::from_secs(1);
/// The outgoing queue's bound when the URI names none.
pub(crate) const DEFAULT_BUFFER: usize = 16 << 20;
/// How long `open` waits for the first connection before it returns a
/// backplane that is still connecting.
pub(crate) const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(3);
/// With several instances: how long one that came (back) up waits before
/// channels are published through it, so that every node, which retries
/// every 250 ms at most, has subscribed there again.
pub(crate) const HOLD_OFF: Duration = Duration::from_secs(1);
/// With several instances: how long publishing pauses when channels move
/// between instances, so that what the old placement sent reaches the
/// subscribers before anything sent through the new one.
pub(crate) const SETTLE: Duration = Duration::from_millis(100);

/// One Redis instance of the URI.
#[derive(Debug)]
pub(crate) struct Server {
    /// The instance's URI as the `redis` crate reads it (our own
    /// parameters removed).
    pub(crate) client: redis::Client,
    /// `host:port`, for messages and for placing channels; never the
    /// password.
    pub(crate) place: String,
}

/// What a `redis://` URI says.
#[derive(Debug)]
pub(crate) struct Settings {
    /// One instance or several (`redis://a:6379,b:6379`), in the order
    /// given.
    pub(crate) servers: Vec<Server>,
    pub(crate) buffer: usize,
}

impl Settings {
    /// Every instance's `host:port`, for messages.
    pub(crate) fn places(&self) -> String {
        let places: Vec<&str> = self.servers.iter().map(|s| s.place.as_str()).collect();
        places.join(",")
    }
}

pub(crate) fn settings(uri: &str) -> Result<Settings, SdkError> {
    let usage = "expected redis://[user:pass@]host:port[/db][,host:port...][?buffer=BYTES]";
    // Never echo the URI: it may hold a password.
    let (addresses, parameters) = mist_server_list::split(uri, "redis", 6379)
        .map_err(|e| SdkError::invalid_input(format!("bad Redis URI: {e}; {usage}")))?;
    let mut buffer = DEFAULT_BUFFER;
    let mut kept = Vec::new();
    for (key, value) in parameters {
        match &*key {
            "buffer" => {
                buffer = value.parse().ok().filter(|b| *b > 0).ok_or_else(|| {
                    SdkError::invalid_input(format!(
                        "the Redis URI's buffer must be a positive number of bytes, not {value:?}"
                    ))
                })?
            }
            "prefix" => {}
            _ => kept.push((key, value)),
        }
    }
    let mut servers = Vec::with_capacity(addresses.len());
    for mist_server_list::Address { mut url, place } in addresses {
        if !kept.is_empty() {
            url.query_pairs_mut().clear().extend_pairs(&kept);
        }
        let client = redis::Client::open(url.as_str()).map_err(|e| {
            SdkError::invalid_input(format!("bad Redis URI: {:?}; {usage}", e.kind()))
        })?;
        servers.push(Server { client, place });
    }
    Ok(Settings { servers, buffer })
}

/// Waits before the next connection attempt: 50 ms, doubling up to 250 ms,
/// so a server that comes back is found within a quarter of a second (what
/// a revocation across nodes waits for: docs/cluster.md).
pub(crate) struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_millis(250);

    pub(crate) fn new() -> Self {
        Backoff(Self::FIRST)
    }

    pub(crate) fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        wait
    }

    pub(crate) fn reset(&mut self) {
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
        assert_eq!(s.places(), "127.0.0.1:7000");
        let info = s.servers[0].client.get_connection_info();
        assert_eq!(info.redis.db, 2);
    }

    #[test]
    fn a_list_names_every_instance_with_the_same_parameters() {
        let s = settings("redis://u:pw@10.0.0.1:7000/2,10.0.0.2,redis://10.0.0.3:7002?buffer=64")
            .unwrap();
        assert_eq!(s.buffer, 64);
        assert_eq!(s.places(), "10.0.0.1:7000,10.0.0.2:6379,10.0.0.3:7002");
        let infos: Vec<_> = s
            .servers
            .iter()
            .map(|s| s.client.get_connection_info().redis.clone())
            .collect();
        assert_eq!(infos[1].db, 2);
        assert_eq!(infos[1].password.as_deref(), Some("pw"));
        assert_eq!(infos[2].db, 0);
        assert_eq!(infos[2].password, None);
    }

    #[test]
    fn bad_uris_are_refused_without_echoing_the_password() {
        for bad in [
            "redis://",
            "http://127.0.0.1:6379",
            "redis://127.0.0.1:6379?buffer=0",
            "redis://127.0.0.1:6379?buffer=lots",
            "not a uri",
            "redis://127.0.0.1:6379,",
            "redis://127.0.0.1:6379,127.0.0.1:6379",
            "redis://127.0.0.1:6379?buffer=9,127.0.0.1:6380",
        ] {
            let e = settings(bad).unwrap_err();
            assert_eq!(e.kind, mist_sdk::ErrorKind::INVALID_INPUT, "{bad}");
        }
        for bad in [
            "redis://u:secret-pw@127.0.0.1:6379?buffer=x",
            "redis://u:secret-pw@127.0.0.1:6379,h:x",
        ] {
            let e = settings(bad).unwrap_err();
            assert!(!e.message.contains("secret-pw"), "{}", e.message);
        }
    }

    #[test]
    fn backoff_doubles_to_a_quarter_second() {
        let mut b = Backoff::new();
        let waits: Vec<_> = (0..5).map(|_| b.next().as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 250, 250]);
        b.reset();
        assert_eq!(b.next().as_millis(), 50);
    }
}
