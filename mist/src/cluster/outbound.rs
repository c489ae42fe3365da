//! Outgoing messages waiting for the flusher: consecutive publishes whose
//! tags map to the same channels form a *run*, sent as one backplane
//! payload to those channels.
//!
//! Runs keep the publish order (a run is only ever extended at the end), so
//! batching never reorders; a run is closed at [`MAX_RUN_BYTES`] or
//! [`wire::MAX_MESSAGES`] messages. What waits is bounded by
//! [`MAX_PENDING_BYTES`]: past it, a publish is dropped and counted, as while
//! the backplane is down.

use std::sync::Arc;

use super::channel::{tag_hash, Channels, TagHash};
use super::wire;

/// A run is sent once its body reaches this size (NATS's default
/// `max_payload` is 1 MiB; Redis takes up to 512 MiB).
pub const MAX_RUN_BYTES: usize = 256 << 10;
/// Bytes waiting for the flusher at most.
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// Consecutive messages for one set of channels.
pub struct Run {
    /// Sorted by tag hash, without duplicates.
    pub channels: Arc<[String]>,
    /// The tag hashes the channels are named after (same order).
    pub hashes: Arc<[TagHash]>,
    /// Messages as [`wire::put_message`] writes them.
    pub body: Vec<u8>,
    pub count: u64,
}

/// Messages not yet handed to the backplane.
#[derive(Default)]
pub struct Outbound {
    runs: Vec<Run>,
    bytes: usize,
    /// The tags of the last publish and their channels: a publish with the
    /// same tags (the usual burst) skips hashing them again.
    last_tags: Vec<String>,
    last: Option<Destination>,
}

/// The channels of a message and the tag hashes they are named after.
type Destination = (Arc<[String]>, Arc<[TagHash]>);

impl Outbound {
    /// Queues one message with its tags' channels under `names`. Returns
    /// false when over the pending bound (the message is dropped).
    pub fn push<S: AsRef<str>>(&mut self, tags: &[S], data: &str, names: &Channels) -> bool {
        let size = data.len() + tags.iter().map(|t| t.as_ref().len() + 2).sum::<usize>() + 4;
        if self.bytes + size > MAX_PENDING_BYTES {
            return false;
        }
        let same_tags = self.last.is_some()
            && self.last_tags.len() == tags.len()
            && self
                .last_tags
                .iter()
                .zip(tags)
                .all(|(a, b)| a == b.as_ref());
        let (channels, hashes) = match (&self.last, same_tags) {
            (Some(last), true) => last.clone(),
            _ => {
                let mut hashes: Vec<TagHash> = tags.iter().map(|t| tag_hash(t.as_ref())).collect();
                hashes.sort_unstable();
                hashes.dedup();
                let channels: Arc<[String]> = hashes.iter().map(|h| names.hashed(h)).collect();
                let hashes: Arc<[TagHash]> = hashes.into();
                self.last_tags.clear();
                self.last_tags
                    .extend(tags.iter().map(|t| t.as_ref().to_string()));
                self.last = Some((channels.clone(), hashes.clone()));
                (channels, hashes)
            }
        };
        let extend = matches!(self.runs.last(), Some(run)
            if run.hashes == hashes
                && run.body.len() < MAX_RUN_BYTES
                && run.count < wire::MAX_MESSAGES);
        if !extend {
            self.runs.push(Run {
                channels,
                hashes,
                body: Vec::new(),
                count: 0,
            });
        }
        if let Some(run) = self.runs.last_mut() {
            let before = run.body.len();
            wire::put_message(&mut run.body, tags, data);
            run.count += 1;
            self.bytes += run.body.len() - before;
        }
        true
    }

    /// Everything waiting, oldest first.
    pub fn take(&mut self) -> Vec<Run> {
        self.bytes = 0;
        std::mem::take(&mut self.runs)
    }

    /// Puts back, in front of what was queued since, the runs that
    /// [`Outbound::take`] gave and the backplane could not take yet.
    pub fn put_back(&mut self, mut older: Vec<Run>) {
        self.bytes += older.iter().map(|run| run.body.len()).sum::<usize>();
        older.append(&mut self.runs);
        self.runs = older;
    }

    /// The bytes of the messages waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Channels {
        Channels::new("c").unwrap()
    }

    fn channels(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|t| names().tag(t)).collect()
    }

    /// Each run's channels and message count.
    fn shape(runs: &[Run]) -> Vec<(Vec<String>, u64)> {
        runs.iter()
            .map(|r| (r.channels.to_vec(), r.count))
            .collect()
    }

    #[test]
    fn runs_group_consecutive_messages_for_the_same_channels() {
        let mut out = Outbound::default();
        for (tags, data) in [
            (&["a"][..], "\"1\""),
            (&["a"], "\"2\""),
            (&["a", "a"], "\"3\""), // same channels: same run
            (&["b"], "\"4\""),
            (&["a"], "\"5\""), // a new run: order is kept
        ] {
            assert!(out.push(tags, data, &names()));
        }
        let runs = out.take();
        let shape = shape(&runs);
        assert_eq!(
            shape,
            [
                (channels(&["a"]), 3),
                (channels(&["b"]), 1),
                (channels(&["a"]), 1)
            ]
        );
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
        assert_eq!(data, ["\"1\"", "\"2\"", "\"3\""]);
        assert_eq!(m[2].tags.to_vec(), ["a", "a"]);
    }

    #[test]
    fn runs_close_at_the_size_bound_and_pending_is_bounded() {
        let mut out = Outbound::default();
        let big = format!("\"{}\"", "x".repeat(100 << 10));
        for _ in 0..5 {
            assert!(out.push(&["a"], &big, &names()));
        }
        let runs = out.take();
        assert!(runs.len() >= 2, "{}", runs.len());
        assert!(runs
            .iter()
            .all(|r| r.body.len() < MAX_RUN_BYTES + big.len() + 16));
        let huge = format!("\"{}\"", "x".repeat(1 << 20));
        let mut accepted = 0;
        while out.push(&["a"], &huge, &names()) {
            accepted += 1;
            assert!(accepted <= 64, "pending is unbounded");
        }
        assert!(accepted >= 60);
    }

    #[test]
    fn runs_put_back_go_before_what_was_queued_since() {
        let mut out = Outbound::default();
        assert!(out.push(&["a"], "\"1\"", &names()));
        assert!(out.push(&["b"], "\"2\"", &names()));
        let mut taken = out.take();
        assert_eq!(out.bytes(), 0);
        // The backplane took the first run only.
        let left = taken.split_off(1);
        assert!(out.push(&["b"], "\"3\"", &names()));
        assert!(out.push(&["c"], "\"4\"", &names()));
        out.put_back(left);
        let runs = out.take();
        let shape = shape(&runs);
        // Put back in front, and not merged with the newer run on the same
        // channels: each run is one payload with its own sequence number.
        assert_eq!(
            shape,
            [
                (channels(&["b"]), 1),
                (channels(&["b"]), 1),
                (channels(&["c"]), 1)
            ]
        );
        let bytes: usize = runs.iter().map(|r| r.body.len()).sum();
        out.put_back(runs);
        assert_eq!(out.bytes(), bytes);
    }
}
