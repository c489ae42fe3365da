//! The node's cluster settings: what `--cluster URI`, `--cluster-key-file`
//! and the broker's limits say, and the timings.

use std::path::PathBuf;
use std::time::Duration;

use super::channel::{Channels, DEFAULT_PREFIX};
use super::inbound::MessageLimits;
use super::{ClusterError, DEFAULT_CONFIRM_TIMEOUT, DEFAULT_HEARTBEAT, DEFAULT_LINGER};

/// The node's cluster settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The backplane's URI, handed to the plugin unchanged.
    pub uri: String,
    /// Its scheme: which plugin serves it (`redis`, `nats`).
    pub scheme: String,
    /// Channel names start with it (the URI's `prefix`, default `mist`):
    /// clusters sharing one Redis or NATS keep apart by prefix.
    pub prefix: String,
    /// How long an unused channel stays subscribed.
    pub linger: Duration,
    /// How often the node sends a heartbeat.
    pub heartbeat: Duration,
    /// How long a subscribe waits for the backplane's confirmation.
    pub confirm_timeout: Duration,
    /// The cluster key file (`--cluster-key-file`): every payload is
    /// signed and checked with its key. `None`: payloads are not
    /// authenticated, and the start-up log says what that allows.
    pub key_file: Option<PathBuf>,
    /// This node's limits for a client's publish, which messages from
    /// other nodes must also keep.
    pub limits: MessageLimits,
}

impl ClusterConfig {
    /// Reads `scheme://...[?prefix=NAME]`; the rest of the URI is the
    /// plugin's. Never echoes the URI (it may hold a password).
    pub fn from_uri(uri: &str) -> Result<ClusterConfig, ClusterError> {
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
            ClusterError::Config(
                "the cluster URI must look like redis://host:port or nats://host:port".into(),
            )
        })?;
        let valid_scheme = !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.');
        if !valid_scheme {
            return Err(ClusterError::Config(
                "the cluster URI's scheme is malformed".into(),
            ));
        }
        let mut prefix = DEFAULT_PREFIX.to_string();
        if let Some((_, query)) = rest.split_once('?') {
            for pair in query.split('&') {
                if let Some(value) = pair.strip_prefix("prefix=") {
                    prefix = value.to_string();
                }
            }
        }
        Channels::new(&prefix)?;
        Ok(ClusterConfig {
            uri: uri.to_string(),
            scheme: scheme.to_ascii_lowercase(),
            prefix,
            linger: DEFAULT_LINGER,
            heartbeat: DEFAULT_HEARTBEAT,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            key_file: None,
            limits: MessageLimits::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let c = ClusterConfig::from_uri("redis://u:pw@10.0.0.1:6379/2?prefix=app.eu").unwrap();
        assert_eq!(c.scheme, "redis");
        assert_eq!(c.prefix, "app.eu");
        assert_eq!(c.uri, "redis://u:pw@10.0.0.1:6379/2?prefix=app.eu");
        let c = ClusterConfig::from_uri("NATS://127.0.0.1:4222").unwrap();
        assert_eq!((c.scheme.as_str(), c.prefix.as_str()), ("nats", "mist"));
        // A list of servers: the parameters come once, after the last one,
        // and the whole list goes to the plugin.
        let list = "redis://a:6379,redis://b:6379?prefix=app";
        let c = ClusterConfig::from_uri(list).unwrap();
        assert_eq!((c.scheme.as_str(), c.prefix.as_str()), ("redis", "app"));
        assert_eq!(c.uri, list);
        let c = ClusterConfig::from_uri("nats://a:4222,b:4222,c:4222").unwrap();
        assert_eq!((c.scheme.as_str(), c.prefix.as_str()), ("nats", "mist"));
        for bad in [
            "redis",
            "://x",
            "re dis://x",
            "redis://x?prefix=a b",
            "redis://u:secret@x?prefix=",
        ] {
            let e = ClusterConfig::from_uri(bad).unwrap_err();
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }
}
