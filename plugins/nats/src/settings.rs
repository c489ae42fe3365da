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

/// How the client signs in: what the URI's user information says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// `nats://user:pass@host`.
    UserAndPassword(String, String),
    /// `nats://token@host`.
    Token(String),
}

/// What a `nats://` URI says.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The servers as `async-nats` reads them (credentials and our
    /// parameters removed), in the order given: one server, or several of
    /// one NATS cluster (`nats://a:4222,b:4222`).
    pub(crate) servers: Vec<String>,
    /// The URI's credentials, the same for every server.
    pub(crate) credentials: Option<Credentials>,
    /// Every server's `host:port`, for messages; never the password.
    pub(crate) place: String,
    pub(crate) buffer: usize,
}

fn decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

pub(crate) fn settings(uri: &str) -> Result<Settings, SdkError> {
    let usage = "expected nats://[user:pass@]host:port[,host:port...][?buffer=BYTES]";
    // Never echo the URI: it may hold a password.
    let (addresses, parameters) = mist_server_list::split(uri, "nats", 4222)
        .map_err(|e| SdkError::invalid_input(format!("bad NATS URI: {e}; {usage}")))?;
    let mut buffer = DEFAULT_BUFFER;
    for (key, value) in parameters {
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
    // async-nats 0.46 signs in with the options' credentials and ignores
    // those in its server addresses: they are taken out here, and must be
    // the same for every server of the list.
    let mut credentials = None;
    let mut servers = Vec::with_capacity(addresses.len());
    let mut places = Vec::with_capacity(addresses.len());
    for (n, mist_server_list::Address { mut url, place }) in addresses.into_iter().enumerate() {
        let these = match (url.username(), url.password()) {
            ("", None) => None,
            (user, Some(pass)) => Some(Credentials::UserAndPassword(decoded(user), decoded(pass))),
            (token, None) => Some(Credentials::Token(decoded(token))),
        };
        if n == 0 {
            credentials = these;
        } else if these != credentials {
            return Err(SdkError::invalid_input(format!(
                "every server of a NATS URI must have the same user and password \
                 (NATS at {place} differs); {usage}"
            )));
        }
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_path("");
        let _ = url.set_port(Some(url.port().unwrap_or(4222)));
        servers.push(url.to_string());
        places.push(place);
    }
    Ok(Settings {
        servers,
        credentials,
        place: places.join(","),
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
        let s = settings("nats://u:p%40ss@127.0.0.1:7000?buffer=1024&prefix=app").unwrap();
        assert_eq!(s.buffer, 1024);
        assert_eq!(s.place, "127.0.0.1:7000");
        assert_eq!(s.servers, ["nats://127.0.0.1:7000"]);
        assert_eq!(
            s.credentials,
            Some(Credentials::UserAndPassword("u".into(), "p@ss".into()))
        );
        let s = settings("nats://localhost").unwrap();
        assert_eq!(s.servers, ["nats://localhost:4222"]);
        assert_eq!(s.credentials, None);
        let s = settings("nats://s3cret@localhost").unwrap();
        assert_eq!(s.credentials, Some(Credentials::Token("s3cret".into())));
    }

    #[test]
    fn a_list_names_every_server_of_the_cluster() {
        for uri in [
            "nats://u:p@a:1,nats://u:p@b:2,nats://u:p@c?buffer=64",
            "nats://u:p@a:1,b:2,c?buffer=64",
            "nats://u:p@a:1,u:p@b:2,nats://u:p@c:4222?buffer=64",
        ] {
            let s = settings(uri).unwrap();
            assert_eq!(
                s.servers,
                ["nats://a:1", "nats://b:2", "nats://c:4222"],
                "{uri}"
            );
            assert_eq!(s.place, "a:1,b:2,c:4222");
            assert_eq!(
                s.credentials,
                Some(Credentials::UserAndPassword("u".into(), "p".into()))
            );
            assert_eq!(s.buffer, 64);
        }
    }

    #[test]
    fn bad_uris_are_refused_without_echoing_the_password() {
        for bad in [
            "nats://",
            "redis://127.0.0.1:4222",
            "nats://127.0.0.1:4222?buffer=0",
            "nats://127.0.0.1:4222?colour=blue",
            "nonsense",
            "nats://a:1,",
            "nats://a:1,a:1",
            "nats://a:1?buffer=9,b:2",
            "nats://a:1,redis://b:2",
            "nats://u:p@a:1,nats://b:2",
            "nats://u:p@a:1,v:p@b:2",
        ] {
            let e = settings(bad).unwrap_err();
            assert_eq!(e.kind, mist_sdk::ErrorKind::INVALID_INPUT, "{bad}");
        }
        for bad in [
            "nats://u:secret-pw@127.0.0.1:4222?buffer=x",
            "nats://u:secret-pw@127.0.0.1:4222,v:secret-pw@b",
            "nats://u:secret-pw@127.0.0.1:4222,b:x",
        ] {
            let e = settings(bad).unwrap_err();
            assert!(!e.message.contains("secret-pw"), "{}", e.message);
        }
    }

    #[test]
    fn backoff_doubles_to_a_quarter_second() {
        let waits: Vec<_> = (1..=6).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 250, 250, 250]);
    }
}
