//! Backplane names: each node has a channel, `PREFIX.n.<16 hex digits>`
//! (its id), and every node hears `PREFIX.control`.
//!
//! Each tag also has a fixed-length name, `PREFIX.t.<32 hex digits>`: the
//! first 128 bits of the tag's SHA-256. No channel has that name any more;
//! [`super::interest`] keeps its anchors by it and the 128 bits are what
//! crosses the backplane in announcements ([`tag_hash`]). Any string is a
//! safe tag, every node computes the same hash, and two tags whose hashes
//! collide only cost traffic: receivers run the exact match.

use sha2::{Digest, Sha256};

use super::ClusterError;

/// The prefix when the URI names none.
pub const DEFAULT_PREFIX: &str = "mist";
/// Longest accepted prefix.
const MAX_PREFIX: usize = 64;

/// The first 128 bits of a tag's SHA-256: its channel and sketch key.
pub type TagHash = [u8; 16];

/// A tag's hash.
pub fn tag_hash(tag: &str) -> TagHash {
    let digest = Sha256::digest(tag.as_bytes());
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&digest[..16]);
    hash
}

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

    /// The channel of `tag`.
    pub fn tag(&self, tag: &str) -> String {
        self.hashed(&tag_hash(tag))
    }

    /// The channel of a tag with hash `hash`.
    pub fn hashed(&self, hash: &TagHash) -> String {
        let mut name = String::with_capacity(self.prefix.len() + 3 + 32);
        name.push_str(&self.prefix);
        name.push_str(".t.");
        for byte in hash {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            name.push(HEX[usize::from(byte >> 4)] as char);
            name.push(HEX[usize::from(byte & 0xf)] as char);
        }
        name
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

    /// The tag hash a [`Channels::hashed`] name was made of (its last 32
    /// hex digits; zeros for a name not made by it).
    pub fn hash_of(name: &str) -> TagHash {
        let mut hash = [0u8; 16];
        let hex = name.as_bytes();
        if hex.len() >= 32 {
            let hex = &hex[hex.len() - 32..];
            for (i, byte) in hash.iter_mut().enumerate() {
                let digit = |c: u8| char::from(c).to_digit(16).unwrap_or(0) as u8;
                *byte = digit(hex[2 * i]) << 4 | digit(hex[2 * i + 1]);
            }
        }
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fixed_length_hex_under_the_prefix() {
        let channels = Channels::new("app.eu-1").unwrap();
        let name = channels.tag("hello");
        // SHA-256("hello") starts 2cf24dba5fb0a30e26e83b2ac5b9e29e.
        assert_eq!(name, "app.eu-1.t.2cf24dba5fb0a30e26e83b2ac5b9e29e");
        for tag in [
            "",
            "a b",
            "x\n\0y",
            "ünïcødé",
            &"long".repeat(10_000),
            "*",
            ">",
        ] {
            let name = channels.tag(tag);
            assert_eq!(name.len(), "app.eu-1.t.".len() + 32);
            assert!(name[11..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(channels.tag("a"), channels.tag("b"));
        assert_eq!(
            channels.tag("a"),
            Channels::new("app.eu-1").unwrap().tag("a")
        );
        assert_eq!(channels.control(), "app.eu-1.control");
        assert_eq!(channels.node(0xab), "app.eu-1.n.00000000000000ab");
        assert_eq!(Channels::hash_of(&channels.tag("hello")), tag_hash("hello"));
        assert_ne!(channels.control(), channels.tag("control"));
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
