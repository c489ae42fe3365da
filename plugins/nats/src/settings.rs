//! What a `nats://` URI says, and the plugin's timings: what the link, its
//! tasks and the plugin's entry all look down at.

use std::time::Duration;

use mist_sdk::SdkError;

/// How long connecting may take before the attempt counts as failed.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a subscription's confirmation may take.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the client pings the server (two unanswered: reconnect).
pub(crate) const PING_EVERY: Duration = Duration::from_secs(1);
/// The outgoing queue's bound when the URI names none.
pub(crate) const DEFAULT_BUFFER: usize = 16 << 20;
/// How long `open` waits for the first connection before it returns a
/// backplane that is still connecting.
pub(crate) const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(3);
/// How long publishing what is still queued at `stop` may take.
pub(crate) const LAST_WORDS: Duration = Duration::from_secs(1);
/// Messages each subscription's queue in the client holds before the
/// client drops (and reports) the overflow; the reader drains them all at
/// every wake-up.
pub(crate) const SUBSCRIPTION_CAPACITY: usize = 65_536;

/// What a `nats://` URI says.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The server address as `async-nats` reads it (our parameters removed).
    pub(crate) server: String,
    /// `host:port`, for messages; never the password.
    pub(crate) place: String,
    pub(crate) buffer: usize,
}

pub(crate) fn settings(uri: &str) -> Result<Settings, SdkError> {
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

/// The wait before reconnect attempt `attempt` (1, 2, ...): 50 ms, doubling
/// up to 250 ms, so a server that comes back is found within a quarter of a
/// second (what a revocation across nodes waits for: docs/cluster.md).
pub(crate) fn backoff(attempt: usize) -> Duration {
    let doublings = attempt.saturating_sub(1).min(5) as u32;
    (Duration::from_millis(50) * 2u32.pow(doublings)).min(Duration::from_millis(250))
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
    fn backoff_doubles_to_a_quarter_second() {
        let waits: Vec<_> = (1..=6).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 250, 250, 250]);
    }
}
