//! Backplane channel names: each node has a channel, `PREFIX.n.<16 hex
//! digits>` (its id), on which the other nodes send it alone what it
//! needs, and every node hears `PREFIX.control`. Two channels per node,
//! whatever its clients hold: tags never name a channel, so any string is
//! a safe tag.

use super::ClusterError;

/// The prefix when the URI names none.
pub const DEFAULT_PREFIX: &str = "mist";
/// Longest accepted prefix.
const MAX_PREFIX: usize = 64;

/// Names channels under one prefix.
#[derive(Debug, Clone)]
pub struct Channels {
    prefix: String,
    control: String,
}

impl Channels {
    /// Names under `prefix`: dot-separated tokens of ASCII letters, digits,
    /// `-` and `_` (valid as a Redis channel and as NATS subject tokens),
    /// at most 64 bytes.
    pub fn new(prefix: &str) -> Result<Channels, ClusterError> {
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX
            && prefix.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(ClusterError::Config(format!(
                "the cluster prefix must be dot-separated words of letters, digits, - and _, \
                 at most {MAX_PREFIX} bytes, not {prefix:?}"
            )));
        }
        Ok(Channels {
            prefix: prefix.to_string(),
            control: format!("{prefix}.control"),
        })
    }

    /// The channel every node subscribes: heartbeats, token changes.
    pub fn control(&self) -> &str {
        &self.control
    }

    /// The channel of one node, `PREFIX.n.<16 hex digits>`: what other
    /// nodes send it alone (messages for its subscriptions, snapshots,
    /// acknowledgements).
    pub fn node(&self, id: u64) -> String {
        format!("{}.n.{id:016x}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fixed_under_the_prefix() {
        let channels = Channels::new("app.eu-1").unwrap();
        assert_eq!(channels.control(), "app.eu-1.control");
        assert_eq!(channels.node(0xab), "app.eu-1.n.00000000000000ab");
        assert_eq!(channels.node(u64::MAX), "app.eu-1.n.ffffffffffffffff");
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a b",
            "a*",
            "a>",
            "ü",
            &"a".repeat(65),
        ] {
            assert!(Channels::new(bad).is_err(), "{bad:?}");
        }
        for good in ["mist", "a.b.c", "A-1_z", &"a".repeat(64)] {
            assert!(Channels::new(good).is_ok(), "{good:?}");
        }
    }
}
