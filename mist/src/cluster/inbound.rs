//! Everything a payload from the backplane goes through before the node
//! acts on it, in this order: the frame ([`wire::open`]); with a cluster
//! key, the MAC and the sender's clock against this node's; the body
//! ([`wire::body`], data exactly one JSON string); the sequence number
//! against what this node saw from that origin ([`peers`](super::peers));
//! and each message's delivery line against this node's
//! `--max-message-bytes`. (Its tags are checked by the broker, where every
//! tag set is: `TagSet`.) [`Inbound::check`] is the one entry point: the node calls it
//! for every payload, and the `cluster_payload` fuzz target drives it
//! with whatever bytes it likes.
//!
//! Nothing that fails is acted on, and nothing that fails changes any
//! state: a malformed or forged payload cannot move an origin's window.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::key::ClusterKeys;
use super::peers::{Mode, Peers, Seen};
use super::wire::{self, Body, Incoming, Kind, Tags, WireError};

/// With a key, a payload whose sender's clock differs from this node's by
/// more than this is refused: nodes' clocks must agree within it (NTP).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(30);
/// Bytes a delivery line adds to a message's tags array and data:
/// `{"command":"publish","tags":` `,"data":` `}` (the newline not counted,
/// as in `--max-message-bytes`).
const LINE_OVERHEAD: usize = 37;

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Not a payload of this version.
    #[error("malformed: {0}")]
    Malformed(#[from] WireError),
    /// This node has a key and the payload is not signed.
    #[error("not signed: the sender has no cluster key")]
    Unsigned,
    /// Signed with a key this node does not have.
    #[error("signed with a cluster key this node does not have (key id {0:08x})")]
    UnknownKey(u32),
    /// The MAC does not match: forged or altered.
    #[error("its MAC does not match: forged or altered")]
    BadMac,
    /// The sender's clock is too far from this node's.
    #[error("sent {0} ms away from this node's clock (the limit is {limit} ms): replayed, or the nodes' clocks disagree", limit = REPLAY_WINDOW.as_millis())]
    Stale(i128),
    /// An authenticated payload older than its origin's window.
    #[error("replayed: older than what its origin sent since")]
    Replayed,
    #[error("addressed to another node ({0:016x})")]
    Misrouted(u64),
}

/// What to do with a payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Messages to deliver, in order; `refused` more were over this node's
    /// `--max-message-bytes` and are left out.
    Messages {
        messages: Vec<Incoming<'a>>,
        refused: u64,
    },
    /// A heartbeat, taken into account.
    Heartbeat { origin: u64 },
    /// A heartbeat from a node that (re)joined: what this node knew of its
    /// interest is void.
    Hello { origin: u64 },
    /// Changes of `origin`'s tag sets, numbered from `first`.
    Interest {
        origin: u64,
        first: u64,
        changes: Vec<(bool, Tags<'a>)>,
    },
    /// One part of `origin`'s tag sets at `epoch`.
    Snapshot {
        origin: u64,
        epoch: u64,
        part: u64,
        parts: u64,
        sets: Vec<Tags<'a>>,
    },
    /// `origin` asks for this node's tag sets.
    SnapshotRequest { origin: u64 },
    /// `origin` applied this node's interest up to `epoch`.
    Ack { origin: u64, epoch: u64 },
    /// Another node changed this token (its SHA-256): recheck its sessions.
    TokenChanged([u8; 32]),
    /// Another node asks every node to recheck every token.
    RecheckAll,
    /// A node left, taken into account.
    Leaving { origin: u64 },
    /// This node's own payload, back through a channel it holds.
    Own,
    /// A copy of a payload acted on already.
    Copy,
    /// Refused: counted, and dropped.
    Refused(Refusal),
}

/// This node's limit for one message, as for a client's publish (the
/// tag count is the broker's to check, with every other tag set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// The delivery line's bytes at most (`--max-message-bytes`).
    pub max_message_bytes: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        MessageLimits {
            max_message_bytes: usize::MAX,
        }
    }
}

/// The inbound checks of one node, and the state they keep.
pub struct Inbound {
    me: u64,
    keys: Option<Arc<ClusterKeys>>,
    /// Who is alive, and the window of what each sent to every node.
    peers: Peers,
    /// The window of what each sent to this node alone (its own counter:
    /// the two travel on different channels, whose relative order a
    /// backplane need not keep).
    direct: Peers,
    limits: MessageLimits,
}

impl Inbound {
    /// The checks of node `me`, with or without a key.
    pub fn new(me: u64, keys: Option<Arc<ClusterKeys>>, limits: MessageLimits) -> Inbound {
        let mode = if keys.is_some() {
            Mode::Authenticated
        } else {
            Mode::Open
        };
        Inbound {
            me,
            keys,
            peers: Peers::new(mode),
            direct: Peers::new(mode),
            limits,
        }
    }

    /// Checks with `keys` from now on (the key file was reloaded).
    pub fn set_keys(&mut self, keys: Option<Arc<ClusterKeys>>) {
        let mode = if keys.is_some() {
            Mode::Authenticated
        } else {
            Mode::Open
        };
        self.peers.set_mode(mode);
        self.direct.set_mode(mode);
        self.keys = keys;
    }

    /// Checks `payload`, received at `now` (this node's clock: `wall_ms`
    /// since the UNIX epoch), and says what to do with it.
    pub fn check<'a>(&mut self, payload: &'a [u8], now: Instant, wall_ms: u64) -> Verdict<'a> {
        match self.verdict(payload, now, wall_ms) {
            Ok(verdict) => verdict,
            Err(refusal) => Verdict::Refused(refusal),
        }
    }

    fn verdict<'a>(
        &mut self,
        payload: &'a [u8],
        now: Instant,
        wall_ms: u64,
    ) -> Result<Verdict<'a>, Refusal> {
        let sealed = wire::open(payload)?;
        let header = sealed.header;
        if header.origin == self.me {
            // Forged or not, never acted on.
            return Ok(Verdict::Own);
        }
        if let Some(keys) = &self.keys {
            let mac = sealed.mac.ok_or(Refusal::Unsigned)?;
            match keys.verify(header.key_id, sealed.signed, mac) {
                None => return Err(Refusal::UnknownKey(header.key_id)),
                Some(false) => return Err(Refusal::BadMac),
                Some(true) => {}
            }
            let skew = i128::from(header.time_ms) - i128::from(wall_ms);
            if skew.unsigned_abs() > REPLAY_WINDOW.as_millis() {
                return Err(Refusal::Stale(skew));
            }
        }
        let body = wire::body(header.kind, sealed.body)?;
        if header.to != 0 && header.to != self.me {
            return Err(Refusal::Misrouted(header.to));
        }
        let window = if header.to == 0 {
            &mut self.peers
        } else {
            &mut self.direct
        };
        match window.admit(header.origin, header.sequence, now) {
            Seen::New => {}
            Seen::Copy => return Ok(Verdict::Copy),
            Seen::Replayed => return Err(Refusal::Replayed),
        }
        Ok(match body {
            Body::Messages(mut messages) => {
                let before = messages.len();
                let limits = self.limits;
                messages.retain(|m| within(m, limits));
                Verdict::Messages {
                    refused: (before - messages.len()) as u64,
                    messages,
                }
            }
            Body::Heartbeat { interval_ms } | Body::Hello { interval_ms } => {
                // Bounded: a forged interval cannot list a node for long.
                let interval = Duration::from_millis(interval_ms.clamp(100, 10_000));
                self.peers.heartbeat(header.origin, interval, now);
                let origin = header.origin;
                if header.kind == Kind::Hello {
                    Verdict::Hello { origin }
                } else {
                    Verdict::Heartbeat { origin }
                }
            }
            Body::Interest { first, changes } => Verdict::Interest {
                origin: header.origin,
                first,
                changes,
            },
            Body::Snapshot {
                epoch,
                part,
                parts,
                sets,
            } => Verdict::Snapshot {
                origin: header.origin,
                epoch,
                part,
                parts,
                sets,
            },
            Body::SnapshotRequest => Verdict::SnapshotRequest {
                origin: header.origin,
            },
            Body::Ack { epoch } => Verdict::Ack {
                origin: header.origin,
                epoch,
            },
            Body::TokenChanged(digest) => Verdict::TokenChanged(digest),
            Body::RecheckAll => Verdict::RecheckAll,
            Body::Leaving => {
                self.peers.leave(header.origin, now);
                Verdict::Leaving {
                    origin: header.origin,
                }
            }
        })
    }

    /// The nodes listed now (from their heartbeats), sorted, this one not
    /// included.
    pub fn nodes(&self, now: Instant) -> Vec<u64> {
        self.peers.alive(now)
    }

    /// Forgets the origins not heard for long.
    pub fn sweep(&mut self, now: Instant) {
        self.peers.sweep(now);
        self.direct.sweep(now);
    }

    /// Whether payloads must be signed.
    pub fn keyed(&self) -> bool {
        self.keys.is_some()
    }

    /// The payload's kind, for a refusal's log line (`None`: not even that).
    pub fn kind_of(payload: &[u8]) -> Option<Kind> {
        wire::open(payload).ok().map(|s| s.header.kind)
    }
}

/// Whether `message` is within `limits`, as a client's publish must be:
/// the delivery line the broker writes for it (the same shape as a
/// client's publish line) is at most `max_message_bytes`.
fn within(message: &Incoming<'_>, limits: MessageLimits) -> bool {
    // `["a","b"]`: brackets, quotes, commas, and each tag as serde_json
    // escapes it.
    let tags: usize = 1 + message.tags.iter().map(|t| json_len(t) + 3).sum::<usize>();
    LINE_OVERHEAD + tags + message.data.len() <= limits.max_message_bytes
}

/// The length of `text` as serde_json writes it inside quotes.
fn json_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::wire::{put_message, seal};

    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const NOW_MS: u64 = 1_800_000_000_000;

    fn keys(text: &str) -> Arc<ClusterKeys> {
        Arc::new(ClusterKeys::parse(text, std::path::Path::new("k")).unwrap())
    }

    fn message(origin: u64, sequence: u64, keys: Option<&ClusterKeys>, data: &str) -> Vec<u8> {
        let mut body = Vec::new();
        put_message(&mut body, &["a"], data);
        let count = wire::messages_count(1);
        seal(
            Kind::Messages,
            origin,
            sequence,
            NOW_MS,
            keys,
            &[&count, &body],
        )
    }

    fn delivered(verdict: Verdict<'_>) -> Vec<String> {
        match verdict {
            Verdict::Messages { messages, .. } => {
                messages.iter().map(|m| m.data.to_string()).collect()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn with_a_key_only_signed_fresh_new_payloads_pass() {
        let key = keys(KEY);
        let mut inbound = Inbound::new(1, Some(key.clone()), MessageLimits::default());
        let now = Instant::now();
        let good = message(2, 1, Some(&key), "\"x\"");
        assert_eq!(delivered(inbound.check(&good, now, NOW_MS)), ["\"x\""]);
        assert_eq!(inbound.check(&good, now, NOW_MS), Verdict::Copy);
        // Every single-byte change of a signed payload is refused, and
        // none moves the window: the next payload still passes.
        let next = message(2, 2, Some(&key), "\"y\"");
        for at in 0..next.len() {
            let mut altered = next.clone();
            altered[at] ^= 0x20;
            let verdict = inbound.check(&altered, now, NOW_MS);
            assert!(
                matches!(verdict, Verdict::Refused(_) | Verdict::Own),
                "byte {at}: {verdict:?}"
            );
        }
        assert_eq!(delivered(inbound.check(&next, now, NOW_MS)), ["\"y\""]);
        // Unsigned, signed with another key, out of the time window.
        let unsigned = message(2, 3, None, "\"z\"");
        assert_eq!(
            inbound.check(&unsigned, now, NOW_MS),
            Verdict::Refused(Refusal::Unsigned)
        );
        let other = keys("another key, also thirty-two bytes long");
        assert!(matches!(
            inbound.check(&message(2, 3, Some(&other), "\"z\""), now, NOW_MS),
            Verdict::Refused(Refusal::UnknownKey(_))
        ));
        let late = NOW_MS + REPLAY_WINDOW.as_millis() as u64 + 1;
        assert!(matches!(
            inbound.check(&message(2, 3, Some(&key), "\"z\""), now, late),
            Verdict::Refused(Refusal::Stale(_))
        ));
        // Truncated.
        assert!(matches!(
            inbound.check(&next[..next.len() - 1], now, NOW_MS),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn with_a_key_replays_are_refused_or_copies() {
        let key = keys(KEY);
        let mut inbound = Inbound::new(1, Some(key.clone()), MessageLimits::default());
        let now = Instant::now();
        let old = message(2, 1, Some(&key), "\"old\"");
        assert_eq!(delivered(inbound.check(&old, now, NOW_MS)), ["\"old\""]);
        let newer = message(2, 5000, Some(&key), "\"new\"");
        assert_eq!(delivered(inbound.check(&newer, now, NOW_MS)), ["\"new\""]);
        assert_eq!(
            inbound.check(&old, now, NOW_MS),
            Verdict::Refused(Refusal::Replayed)
        );
    }

    #[test]
    fn without_a_key_a_forged_origin_cannot_silence_a_node() {
        let mut inbound = Inbound::new(1, None, MessageLimits::default());
        let now = Instant::now();
        assert_eq!(
            delivered(inbound.check(&message(2, 1, None, "\"1\""), now, NOW_MS)),
            ["\"1\""]
        );
        // A stranger's payload under node 2's id, numbered 2^64-1.
        let forged = message(2, u64::MAX, None, "\"forged\"");
        assert_eq!(
            delivered(inbound.check(&forged, now, NOW_MS)),
            ["\"forged\""]
        );
        for n in 2..50 {
            let genuine = message(2, n, None, "\"g\"");
            assert_eq!(delivered(inbound.check(&genuine, now, NOW_MS)), ["\"g\""]);
            assert_eq!(inbound.check(&genuine, now, NOW_MS), Verdict::Copy);
        }
        // A payload under this node's own id is never acted on.
        assert_eq!(
            inbound.check(&message(1, 9, None, "\"me\""), now, NOW_MS),
            Verdict::Own
        );
    }

    #[test]
    fn messages_over_this_nodes_limits_are_left_out() {
        let limits = MessageLimits {
            max_message_bytes: 100,
        };
        // The line of a message of tags ["a"] and data "fits" is 48 bytes:
        // exactly at a limit of 48 it passes, at 47 not.
        let line = r#"{"command":"publish","tags":["a"],"data":"fits"}"#;
        let mut body = Vec::new();
        put_message(&mut body, &["a"], "\"fits\"");
        let count = wire::messages_count(1);
        for (max, passes) in [(line.len(), true), (line.len() - 1, false)] {
            let mut exact = Inbound::new(
                1,
                None,
                MessageLimits {
                    max_message_bytes: max,
                },
            );
            let payload = seal(Kind::Messages, 2, 1, 0, None, &[&count, &body]);
            let Verdict::Messages { messages, .. } = exact.check(&payload, Instant::now(), 0)
            else {
                panic!()
            };
            assert_eq!(messages.len() == 1, passes, "limit {max}");
        }
        // Escapes count as serde_json writes them.
        let mut body = Vec::new();
        put_message(&mut body, &["\u{1}\"\n"], "\"\"");
        let payload = seal(Kind::Messages, 2, 1, 0, None, &[&count, &body]);
        let Body::Messages(decoded) = wire::decode(&payload).unwrap().body else {
            panic!()
        };
        let escaped = decoded[0];
        assert_eq!(json_len("\u{1}\"\n"), 10);
        assert!(within(
            &escaped,
            MessageLimits {
                max_message_bytes: 37 + 14 + 2
            }
        ));
        assert!(!within(
            &escaped,
            MessageLimits {
                max_message_bytes: 37 + 14 + 1
            }
        ));
        let mut inbound = Inbound::new(1, None, limits);
        let mut body = Vec::new();
        put_message(&mut body, &["a"], "\"fits\"");
        put_message(&mut body, &["a"], &format!("\"{}\"", "x".repeat(100)));
        put_message(&mut body, &["a", "b"], &format!("\"{}\"", "x".repeat(60)));
        let count = wire::messages_count(3);
        let payload = seal(Kind::Messages, 2, 1, 0, None, &[&count, &body]);
        let Verdict::Messages { messages, refused } = inbound.check(&payload, Instant::now(), 0)
        else {
            panic!()
        };
        assert_eq!(refused, 2);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].data, "\"fits\"");
    }

    #[test]
    fn heartbeats_list_and_leaving_unlists() {
        let mut inbound = Inbound::new(1, None, MessageLimits::default());
        let now = Instant::now();
        let hb = wire::heartbeat_body(u64::MAX);
        let heartbeat = seal(Kind::Heartbeat, 2, 1, 0, None, &[&hb]);
        assert_eq!(
            inbound.check(&heartbeat, now, 0),
            Verdict::Heartbeat { origin: 2 }
        );
        assert_eq!(inbound.nodes(now), [2]);
        // The forged interval was bounded to 10 s.
        assert!(inbound.nodes(now + Duration::from_secs(31)).is_empty());
        let leaving = seal(Kind::Leaving, 2, 2, 0, None, &[]);
        assert_eq!(
            inbound.check(&leaving, now, 0),
            Verdict::Leaving { origin: 2 }
        );
        // Addressed to another node: refused; to this one: its own window.
        let to_other = wire::seal_to(Kind::Ack, 3, 9, 1, 0, None, &[&[1]]);
        assert_eq!(
            inbound.check(&to_other, now, 0),
            Verdict::Refused(Refusal::Misrouted(9))
        );
        let to_me = wire::seal_to(Kind::Ack, 3, 1, 1, 0, None, &[&[1]]);
        assert_eq!(
            inbound.check(&to_me, now, 0),
            Verdict::Ack {
                origin: 3,
                epoch: 1
            }
        );
        let everyone = seal(Kind::Heartbeat, 3, 1, 0, None, &[&hb]);
        assert_eq!(
            inbound.check(&everyone, now, 0),
            Verdict::Heartbeat { origin: 3 }
        );
        assert_eq!(inbound.nodes(now), [3]);
    }
}
