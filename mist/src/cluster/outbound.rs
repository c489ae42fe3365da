//! Outgoing messages waiting for the flusher, batched per destination: the
//! messages for one node (or, while this node does not yet know every
//! other node, for every node through the control channel) form a *run*,
//! sent as one backplane payload on that node's channel, whatever their
//! tag sets.
//!
//! Each destination's runs keep the publish order (a run is only extended
//! at its end, and a new run for a destination starts after its last), so
//! batching never reorders what one node receives; a run is closed at
//! [`MAX_RUN_BYTES`] or [`wire::MAX_MESSAGES`] messages. A run for every
//! node and runs for single nodes are never extended across each other, so
//! a node receiving both gets them in publish order too. What waits is
//! bounded by [`MAX_PENDING_BYTES`]: past it, a publish is dropped and
//! counted, as while the backplane is down.

use std::collections::HashMap;

use super::wire;

/// A run is sent once its body reaches this size (NATS's default
/// `max_payload` is 1 MiB; Redis takes up to 512 MiB).
pub const MAX_RUN_BYTES: usize = 256 << 10;
/// Bytes waiting for the flusher at most.
pub const MAX_PENDING_BYTES: usize = 64 << 20;
/// The destination "every node" (the control channel).
pub const EVERY_NODE: u64 = 0;

/// Consecutive messages for one destination.
pub struct Run {
    /// The node it goes to, or [`EVERY_NODE`].
    pub to: u64,
    /// Messages as [`wire::put_message`] writes them.
    pub body: Vec<u8>,
    pub count: u64,
}

/// Messages not yet handed to the backplane.
#[derive(Default)]
pub struct Outbound {
    runs: Vec<Run>,
    bytes: usize,
    /// Each destination's run still open for more, by index in `runs`.
    open: HashMap<u64, usize>,
    /// One message encoded once, copied into each destination's run.
    scratch: Vec<u8>,
    /// Where the current publish goes (kept for its allocation).
    to: Vec<u64>,
}

/// What [`Outbound::push_routed`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// No destination: nothing to send.
    Nowhere,
    /// Over [`MAX_PENDING_BYTES`]: dropped.
    Full,
}

impl Outbound {
    /// Queues a message for the nodes `route` names.
    pub fn push_routed<S: AsRef<str>>(
        &mut self,
        tags: &[S],
        data: &str,
        route: impl FnOnce(&mut Vec<u64>),
    ) -> Pushed {
        let mut to = std::mem::take(&mut self.to);
        to.clear();
        route(&mut to);
        let pushed = if to.is_empty() {
            Pushed::Nowhere
        } else if self.push(tags, data, &to) {
            Pushed::Queued
        } else {
            Pushed::Full
        };
        self.to = to;
        pushed
    }

    /// Queues a message for each node in `to` (or [`EVERY_NODE`] alone).
    /// Returns false (nothing queued) when [`MAX_PENDING_BYTES`] would be
    /// passed.
    pub fn push<S: AsRef<str>>(&mut self, tags: &[S], data: &str, to: &[u64]) -> bool {
        self.scratch.clear();
        wire::put_message(&mut self.scratch, tags, data);
        let size = self.scratch.len() * to.len();
        if self.bytes + size > MAX_PENDING_BYTES {
            return false;
        }
        for &node in to {
            // A run for every node and runs for one node do not batch across
            // each other: each starts after the other's last.
            let other_kind = if node == EVERY_NODE {
                self.open.keys().any(|&n| n != EVERY_NODE)
            } else {
                self.open.contains_key(&EVERY_NODE)
            };
            if other_kind {
                self.open.clear();
            }
            let index = match self.open.get(&node) {
                Some(&i)
                    if self.runs[i].body.len() < MAX_RUN_BYTES
                        && self.runs[i].count < wire::MAX_MESSAGES =>
                {
                    i
                }
                _ => {
                    self.runs.push(Run {
                        to: node,
                        body: Vec::new(),
                        count: 0,
                    });
                    self.open.insert(node, self.runs.len() - 1);
                    self.runs.len() - 1
                }
            };
            let run = &mut self.runs[index];
            run.body.extend_from_slice(&self.scratch);
            run.count += 1;
        }
        self.bytes += size;
        true
    }

    /// Everything queued, in order; the queue is then empty.
    pub fn take(&mut self) -> Vec<Run> {
        self.bytes = 0;
        self.open.clear();
        std::mem::take(&mut self.runs)
    }

    /// Runs the backplane could not take go back before what was queued
    /// since (oldest first).
    pub fn put_back(&mut self, mut older: Vec<Run>) {
        self.bytes += older.iter().map(|run| run.body.len()).sum::<usize>();
        let shift = older.len();
        for index in self.open.values_mut() {
            *index += shift;
        }
        older.append(&mut self.runs);
        self.runs = older;
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(runs: &[Run]) -> Vec<(u64, u64)> {
        runs.iter().map(|r| (r.to, r.count)).collect()
    }

    #[test]
    fn runs_batch_every_tag_set_per_destination_in_order() {
        let mut out = Outbound::default();
        for (tags, data, to) in [
            (&["a"][..], "\"1\"", &[1u64][..]),
            (&["b"], "\"2\"", &[2]),
            (&["c", "d"], "\"3\"", &[1, 2]),
            (&["a"], "\"4\"", &[1]),
        ] {
            assert!(out.push(tags, data, to));
        }
        let runs = out.take();
        assert_eq!(shape(&runs), [(1, 3), (2, 2)]);
        assert!(out.is_empty());
        let count = wire::messages_count(runs[0].count);
        let payload = wire::seal(
            wire::Kind::Messages,
            1,
            1,
            0,
            None,
            &[&count, &runs[0].body],
        );
        let wire::Body::Messages(m) = wire::decode(&payload).unwrap().body else {
            panic!()
        };
        let data: Vec<&str> = m.iter().map(|m| m.data).collect();
        assert_eq!(data, ["\"1\"", "\"3\"", "\"4\""]);
        assert_eq!(m[1].tags.to_vec(), ["c", "d"]);
    }

    #[test]
    fn routed_pushes_go_where_the_route_says() {
        let mut out = Outbound::default();
        let pushed = out.push_routed(&["b", "a"], "\"1\"", |to| to.push(3));
        assert_eq!(pushed, Pushed::Queued);
        assert_eq!(out.push_routed(&["c"], "\"2\"", |_| {}), Pushed::Nowhere);
        assert_eq!(shape(&out.take()), [(3, 1)]);
    }

    #[test]
    fn every_node_and_one_node_runs_do_not_batch_across_each_other() {
        let mut out = Outbound::default();
        assert!(out.push(&["a"], "\"1\"", &[1]));
        assert!(out.push(&["a"], "\"2\"", &[EVERY_NODE]));
        assert!(out.push(&["a"], "\"3\"", &[EVERY_NODE]));
        assert!(out.push(&["a"], "\"4\"", &[1]));
        assert_eq!(shape(&out.take()), [(1, 1), (EVERY_NODE, 2), (1, 1)]);
    }

    #[test]
    fn runs_close_at_the_size_bound_and_pending_is_bounded() {
        let mut out = Outbound::default();
        let big = format!("\"{}\"", "x".repeat(100 << 10));
        for _ in 0..5 {
            assert!(out.push(&["a"], &big, &[1]));
        }
        let runs = out.take();
        assert!(runs.len() >= 2, "{}", runs.len());
        assert!(runs
            .iter()
            .all(|r| r.body.len() < MAX_RUN_BYTES + big.len() + 16));
        let huge = format!("\"{}\"", "x".repeat(1 << 20));
        let mut accepted = 0;
        while out.push(&["a"], &huge, &[1]) {
            accepted += 1;
            assert!(accepted <= 64, "pending is unbounded");
        }
        assert!(accepted >= 60);
    }

    #[test]
    fn runs_put_back_go_before_what_was_queued_since() {
        let mut out = Outbound::default();
        assert!(out.push(&["a"], "\"1\"", &[1]));
        assert!(out.push(&["b"], "\"2\"", &[2]));
        let mut taken = out.take();
        assert_eq!(out.bytes(), 0);
        let left = taken.split_off(1);
        assert!(out.push(&["b"], "\"3\"", &[2]));
        assert!(out.push(&["c"], "\"4\"", &[3]));
        out.put_back(left);
        assert!(out.push(&["c"], "\"5\"", &[3]));
        let runs = out.take();
        assert_eq!(shape(&runs), [(2, 1), (2, 1), (3, 2)]);
        let bytes: usize = runs.iter().map(|r| r.body.len()).sum();
        out.put_back(runs);
        assert_eq!(out.bytes(), bytes);
    }
}
