//! What this node knows of the others: which payloads of each it has seen
//! (to drop the copies a backplane delivers twice, and replays)
//! and which nodes are alive (for `who`'s `nodes`).
//!
//! # Seen payloads
//!
//! Every payload carries its origin's sequence number (one counter per
//! origin, over every kind). Per origin the node keeps a window: the
//! highest number seen and a bitmap of the [`WINDOW`] numbers below it
//! (the anti-replay window of IPsec, RFC 4303 §3.4.3). A number seen
//! already is a copy. One publishing and one subscribing connection per
//! node keep each origin's payloads in order, so copies arrive next to
//! each other; the window also takes payloads that arrive out of order
//! within it, exactly once.
//!
//! What a number far below the window means depends on whether payloads
//! are authenticated ([`Mode`]):
//!
//! - **With a cluster key** the numbers are the origin's own (nobody else
//!   can sign them): a number below the window is an old payload replayed,
//!   and is refused.
//! - **Without a key** anyone can send any number under any origin. A
//!   number below the window then *restarts* the window there: so a forged
//!   payload with a huge number (or a restarted origin) cannot silence a
//!   node, whose next payload starts a new window, and a forged payload can
//!   at most hide the one payload whose number it guessed.
//!
//! # Bounds
//!
//! An origin not heard for [`FORGET_AFTER`] is forgotten (past the replay
//! window a key's receivers accept nothing it sent then anyway), and at
//! most [`MAX_PEERS`] origins are kept: past that the least recently heard
//! eighth goes at once, so a stream of forged origins costs amortised
//! constant time each. A node is listed in `nodes` from its heartbeat
//! until three of its heartbeat intervals pass without one, or it says it
//! leaves; its window stays until it is forgotten, so that a leaving
//! node's payloads cannot be replayed.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Origins remembered at most.
pub const MAX_PEERS: usize = 4096;
/// Sequence numbers below the highest one that an origin's window covers.
pub const WINDOW: u64 = 1024;
/// An origin not heard for this long is forgotten: twice the replay window
/// (`inbound::REPLAY_WINDOW`) and some, so that whatever it sent before is
/// out of that window by then.
pub const FORGET_AFTER: Duration = Duration::from_secs(65);
/// A node not heard for this many of its heartbeat intervals is gone.
const MISSED_HEARTBEATS: u32 = 3;
const WORDS: usize = (WINDOW / 64) as usize;

/// Whether sequence numbers can be trusted (see the module's docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Payloads are signed with the cluster key.
    Authenticated,
    /// No key: anyone may send any number.
    Open,
}

/// What a payload's sequence number says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before: act on it.
    New,
    /// Seen already (a copy the backplane delivered twice, or a replay within
    /// the window).
    Copy,
    /// Older than the window of an authenticated origin: a replay.
    Replayed,
}

/// The sequence numbers seen from one origin.
struct Window {
    /// The highest number seen.
    top: u64,
    /// Bit `i` (word `i / 64`, bit `i % 64`): `top - i` was seen.
    bits: [u64; WORDS],
}

impl Window {
    fn starting_at(sequence: u64) -> Window {
        let mut bits = [0; WORDS];
        bits[0] = 1;
        Window {
            top: sequence,
            bits,
        }
    }

    fn admit(&mut self, sequence: u64, mode: Mode) -> Seen {
        if sequence > self.top {
            self.shift(sequence - self.top);
            self.top = sequence;
            self.bits[0] |= 1;
            return Seen::New;
        }
        let behind = self.top - sequence;
        if behind >= WINDOW {
            return match mode {
                Mode::Authenticated => Seen::Replayed,
                Mode::Open => {
                    *self = Window::starting_at(sequence);
                    Seen::New
                }
            };
        }
        let (word, bit) = ((behind / 64) as usize, behind % 64);
        if self.bits[word] & (1 << bit) != 0 {
            return Seen::Copy;
        }
        self.bits[word] |= 1 << bit;
        Seen::New
    }

    /// Moves the window up by `by` numbers.
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.bits = [0; WORDS];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..WORDS).rev() {
            let from = i.checked_sub(words);
            let high = from.map_or(0, |f| self.bits[f] << bits);
            let low = match from.and_then(|f| f.checked_sub(1)) {
                Some(f) if bits > 0 => self.bits[f] >> (64 - bits),
                _ => 0,
            };
            self.bits[i] = high | low;
        }
    }
}

struct Peer {
    last_heard: Instant,
    /// Listed in `nodes` until then (from its heartbeats).
    listed_until: Option<Instant>,
    /// Absent until its first payload with a sequence number.
    window: Option<Window>,
}

/// The other nodes.
pub struct Peers {
    peers: HashMap<u64, Peer>,
    mode: Mode,
}

impl Peers {
    /// No peer yet.
    pub fn new(mode: Mode) -> Peers {
        Peers {
            peers: HashMap::new(),
            mode,
        }
    }

    /// Sets how numbers are judged from now on (the key was loaded or
    /// removed).
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    fn peer(&mut self, origin: u64, now: Instant) -> &mut Peer {
        if !self.peers.contains_key(&origin) && self.peers.len() >= MAX_PEERS {
            self.evict(now);
        }
        let peer = self.peers.entry(origin).or_insert(Peer {
            last_heard: now,
            listed_until: None,
            window: None,
        });
        peer.last_heard = now;
        peer
    }

    /// Forgets the origins not heard for [`FORGET_AFTER`] and, if the
    /// table is still full, the least recently heard eighth.
    fn evict(&mut self, now: Instant) {
        self.sweep(now);
        if self.peers.len() < MAX_PEERS {
            return;
        }
        let mut heard: Vec<(Instant, u64)> = self
            .peers
            .iter()
            .map(|(id, p)| (p.last_heard, *id))
            .collect();
        let cut = MAX_PEERS / 8;
        heard.select_nth_unstable(cut);
        for (_, id) in &heard[..=cut] {
            self.peers.remove(id);
        }
    }

    /// A payload numbered `sequence` from `origin` arrived (checked and,
    /// with a key, authenticated): whether it is new.
    pub fn admit(&mut self, origin: u64, sequence: u64, now: Instant) -> Seen {
        let mode = self.mode;
        let peer = self.peer(origin, now);
        match &mut peer.window {
            Some(window) => window.admit(sequence, mode),
            None => {
                peer.window = Some(Window::starting_at(sequence));
                Seen::New
            }
        }
    }

    /// A heartbeat from `origin`, which sends one every `interval`.
    pub fn heartbeat(&mut self, origin: u64, interval: Duration, now: Instant) {
        self.peer(origin, now).listed_until = Some(now + interval * MISSED_HEARTBEATS);
    }

    /// `origin` said it is leaving: no longer listed (its window stays).
    pub fn leave(&mut self, origin: u64, now: Instant) {
        self.peer(origin, now).listed_until = None;
    }

    /// Forgets the origins not heard for [`FORGET_AFTER`].
    pub fn sweep(&mut self, now: Instant) {
        self.peers
            .retain(|_, peer| now.saturating_duration_since(peer.last_heard) <= FORGET_AFTER);
    }

    /// The nodes listed now, sorted.
    pub fn alive(&self, now: Instant) -> Vec<u64> {
        let mut alive: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| p.listed_until.is_some_and(|until| now <= until))
            .map(|(id, _)| *id)
            .collect();
        alive.sort_unstable();
        alive
    }

    /// How many origins are remembered.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit_all(peers: &mut Peers, origin: u64, numbers: &[u64], now: Instant) -> Vec<Seen> {
        numbers
            .iter()
            .map(|n| peers.admit(origin, *n, now))
            .collect()
    }

    #[test]
    fn copies_are_dropped_per_origin() {
        use Seen::*;
        let now = Instant::now();
        for mode in [Mode::Authenticated, Mode::Open] {
            let mut peers = Peers::new(mode);
            assert_eq!(
                admit_all(&mut peers, 1, &[1, 1, 2, 2, 2, 5, 3, 5, 4, 3], now),
                [New, Copy, New, Copy, Copy, New, New, Copy, New, Copy]
            );
            assert_eq!(peers.admit(2, 1, now), New);
        }
    }

    #[test]
    fn the_window_slides_over_word_boundaries() {
        let now = Instant::now();
        let mut peers = Peers::new(Mode::Authenticated);
        // Every other number, then the rest: each is new once.
        for n in (1..3000).step_by(2) {
            assert_eq!(peers.admit(9, n, now), Seen::New, "{n}");
        }
        for n in (2000..3000).step_by(2) {
            assert_eq!(peers.admit(9, n, now), Seen::New, "{n}");
            assert_eq!(peers.admit(9, n + 1, now), Seen::Copy, "{n}");
        }
        // Jumps of every size keep what is still inside the window.
        for jump in [1, 63, 64, 65, 127, 500, 1000] {
            let top = peers.peers[&9].window.as_ref().unwrap().top;
            assert_eq!(peers.admit(9, top + jump, now), Seen::New);
            assert_eq!(peers.admit(9, top, now), Seen::Copy, "jump {jump}");
        }
        let top = peers.peers[&9].window.as_ref().unwrap().top;
        assert_eq!(peers.admit(9, top - WINDOW, now), Seen::Replayed);
        assert_eq!(peers.admit(9, top - WINDOW + 1, now), Seen::New);
    }

    /// The attack: one payload under another node's origin with
    /// the largest sequence number.
    #[test]
    fn a_forged_huge_number_cannot_silence_an_open_origin() {
        let now = Instant::now();
        let mut peers = Peers::new(Mode::Open);
        assert_eq!(peers.admit(7, 10, now), Seen::New);
        assert_eq!(peers.admit(7, u64::MAX, now), Seen::New); // forged
        for n in 11..2000 {
            assert_eq!(peers.admit(7, n, now), Seen::New, "{n}");
            assert_eq!(peers.admit(7, n, now), Seen::Copy, "{n}");
        }
        // A restarted origin counting from 1 again is heard too.
        assert_eq!(peers.admit(7, 1, now), Seen::New);
        assert_eq!(peers.admit(7, 2, now), Seen::New);
    }

    #[test]
    fn with_a_key_an_old_number_is_a_replay() {
        let now = Instant::now();
        let mut peers = Peers::new(Mode::Authenticated);
        assert_eq!(peers.admit(7, 5000, now), Seen::New);
        assert_eq!(peers.admit(7, 10, now), Seen::Replayed);
        assert_eq!(peers.admit(7, 5000, now), Seen::Copy);
    }

    #[test]
    fn nodes_are_listed_by_their_heartbeats_and_leave() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut peers = Peers::new(Mode::Open);
        peers.heartbeat(1, second, start);
        peers.heartbeat(2, second, start);
        // Payloads alone do not list a node.
        peers.admit(3, 1, start);
        assert_eq!(peers.alive(start + 2 * second), [1, 2]);
        peers.heartbeat(1, second, start + 2 * second);
        assert_eq!(peers.alive(start + 4 * second), [1]);
        peers.leave(1, start + 4 * second);
        assert!(peers.alive(start + 4 * second).is_empty());
        // A leaving node's window stays: its payloads are still copies.
        assert_eq!(peers.admit(3, 1, start), Seen::Copy);
    }

    #[test]
    fn origins_are_forgotten_in_time() {
        let start = Instant::now();
        let mut peers = Peers::new(Mode::Authenticated);
        peers.admit(1, 100, start);
        peers.admit(2, 100, start + FORGET_AFTER);
        peers.sweep(start + FORGET_AFTER + Duration::from_secs(1));
        assert_eq!(peers.len(), 1);
        assert_eq!(peers.admit(1, 1, start + FORGET_AFTER), Seen::New);
    }

    #[test]
    fn the_table_is_bounded_and_keeps_the_recently_heard() {
        let start = Instant::now();
        let mut peers = Peers::new(Mode::Open);
        // A real node, heard all along.
        for origin in 0..(MAX_PEERS as u64 * 3) {
            let now = start + Duration::from_micros(origin);
            peers.admit(u64::MAX, origin + 1, now);
            peers.admit(origin, 1, now);
            assert!(peers.len() <= MAX_PEERS);
        }
        assert!(peers.len() > MAX_PEERS / 2);
        assert!(peers.peers.contains_key(&u64::MAX));
        assert!(!peers.peers.contains_key(&0));
    }
}
