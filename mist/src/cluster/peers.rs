//! What this node knows of the others: the last sequence number seen from
//! each (to drop the copies of a payload that arrive through several
//! anchors) and when each was last heard (for `who`'s `nodes`).
//!
//! One publishing connection per node and one subscribing connection here
//! keep each origin's payloads in order, whichever channels they came
//! through, so a payload whose sequence number is not above the last one
//! seen from its origin is a copy. Both tables are bounded: past
//! [`MAX_PEERS`] origins, the one heard from least recently is forgotten
//! (a hostile payload stream cannot grow them without bound).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Origins remembered at most.
pub const MAX_PEERS: usize = 4096;
/// A node not heard for this many of its heartbeat intervals is gone.
const MISSED_HEARTBEATS: u32 = 3;

struct Peer {
    /// Highest messages sequence number seen (0: none yet).
    last_sequence: u64,
    last_heard: Instant,
    /// The node's heartbeat interval, from its heartbeats.
    interval: Option<Duration>,
}

/// The other nodes.
#[derive(Default)]
pub struct Peers {
    peers: HashMap<u64, Peer>,
}

impl Peers {
    fn peer(&mut self, origin: u64, now: Instant) -> &mut Peer {
        if !self.peers.contains_key(&origin) && self.peers.len() >= MAX_PEERS {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(_, p)| p.last_heard)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.peers.remove(&oldest);
            }
        }
        let peer = self.peers.entry(origin).or_insert(Peer {
            last_sequence: 0,
            last_heard: now,
            interval: None,
        });
        peer.last_heard = now;
        peer
    }

    /// A messages payload `sequence` from `origin` arrived: true if it is
    /// new, false if it is a copy already seen.
    pub fn first_copy(&mut self, origin: u64, sequence: u64, now: Instant) -> bool {
        let peer = self.peer(origin, now);
        if sequence <= peer.last_sequence {
            return false;
        }
        peer.last_sequence = sequence;
        true
    }

    /// A heartbeat from `origin`, which sends one every `interval`.
    pub fn heartbeat(&mut self, origin: u64, interval: Duration, now: Instant) {
        self.peer(origin, now).interval = Some(interval);
    }

    /// `origin` said it is leaving.
    pub fn leave(&mut self, origin: u64) {
        self.peers.remove(&origin);
    }

    /// The nodes heard within their last few heartbeats (a node that only
    /// sent messages so far counts with `default_interval`); forgets the
    /// ones that are gone.
    pub fn alive(&mut self, now: Instant, default_interval: Duration) -> Vec<u64> {
        self.peers.retain(|_, peer| {
            let interval = peer.interval.unwrap_or(default_interval);
            now.saturating_duration_since(peer.last_heard) <= interval * MISSED_HEARTBEATS
        });
        let mut alive: Vec<u64> = self.peers.keys().copied().collect();
        alive.sort_unstable();
        alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_dropped_per_origin() {
        let now = Instant::now();
        let mut peers = Peers::default();
        assert!(peers.first_copy(1, 1, now));
        assert!(!peers.first_copy(1, 1, now));
        assert!(peers.first_copy(2, 1, now));
        assert!(peers.first_copy(1, 5, now)); // gaps are normal
        assert!(!peers.first_copy(1, 3, now));
    }

    #[test]
    fn nodes_expire_and_leave() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut peers = Peers::default();
        peers.heartbeat(1, second, start);
        peers.heartbeat(2, second, start);
        assert_eq!(peers.alive(start + 2 * second, second), [1, 2]);
        peers.heartbeat(1, second, start + 2 * second);
        assert_eq!(peers.alive(start + 4 * second, second), [1]);
        peers.leave(1);
        assert!(peers.alive(start + 4 * second, second).is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let start = Instant::now();
        let mut peers = Peers::default();
        for origin in 0..(MAX_PEERS as u64 + 100) {
            peers.first_copy(origin, 1, start + Duration::from_millis(origin));
        }
        assert_eq!(peers.peers.len(), MAX_PEERS);
        // The oldest went first.
        assert!(!peers.peers.contains_key(&0));
        assert!(peers.peers.contains_key(&(MAX_PEERS as u64 + 99)));
    }
}
