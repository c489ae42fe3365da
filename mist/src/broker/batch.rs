//! The publish path: the deliveries of the publishes in one chunk of a
//! session's input are serialized once into one buffer, which is then
//! shared by every subscriber's queue.
//!
//! Consecutive publishes with identical tags form a *run*: they are matched
//! once, their delivery lines share one serialized prefix, and each
//! subscriber receives the whole run as one contiguous range. Under a flood
//! on one topic this makes the per-subscriber cost per chunk, not per message.
//!
//! The caller holds the router's read lock from the first match of a batch
//! until [`Batch::flush`] has queued its deliveries. An `unsubscribe` (which
//! takes the lock exclusively) therefore falls either before the match or
//! after the deliveries are queued, never between: once the reply to a
//! `ping` sent after an `unsubscribe` is queued, no delivery matched through
//! that subscription can follow it.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::memory::Chunk;
use super::protocol::{self, ProtocolError, RawTags};
use super::router::{RouteScratch, Router, SessionId};
use super::Shared;

#[derive(Default)]
pub(crate) struct Batch {
    buf: Vec<u8>,
    /// End offset in `buf` of every message serialized so far.
    ends: Vec<usize>,
    runs: Vec<Run>,
    /// The targets of all runs (session slots in the router), each run
    /// owning a range. Slots rather than `Arc`s: the router's lock is held
    /// until the flush, so they cannot change meanwhile, and no reference
    /// count is touched per subscriber.
    targets: Vec<u32>,
    /// The raw tags JSON of the open run, to recognise the next publish as part of it.
    run_tags: Vec<u8>,
    publishes: u64,
    /// When the batch's first publish was read, for the latency histogram.
    started: Option<Instant>,
    /// In a cluster: the open run's tags, owned, for the cluster's copy of
    /// each publish in the run (a run's later publishes are not parsed).
    cluster_tags: Vec<String>,
    scratch: RouteScratch,
}

struct Run {
    /// Where the run's first message starts in `buf`.
    start: usize,
    /// The shared delivery prefix (`{"command":"publish","tags":..,"data":`).
    prefix: Range<usize>,
    ends: Range<usize>,
    targets: Range<usize>,
}

impl Batch {
    /// Adds a publish from session `from` with the request's raw tags and
    /// data, matched against `router`. Nothing is delivered until
    /// [`Batch::flush`], which must happen before `router`'s lock is released.
    pub(crate) fn publish(
        &mut self,
        router: &Router,
        max_tags: usize,
        from: Option<SessionId>,
        raw_tags: RawTags<'_>,
        raw_data: &str,
    ) -> Result<(), ProtocolError> {
        let same_run = matches!(raw_tags.text(), Some(text) if !self.runs.is_empty() && text.as_bytes() == self.run_tags);
        if !same_run {
            let tags = raw_tags.parse()?;
            if tags.len() > max_tags {
                return Err(ProtocolError::TooManyTags {
                    count: tags.len(),
                    limit: max_tags,
                });
            }
            self.start_run(router, from, raw_tags, &tags);
            self.run_tags.clear();
            if let Some(text) = raw_tags.text() {
                self.run_tags.extend_from_slice(text.as_bytes());
            }
            if router.cluster().is_some() {
                self.cluster_tags.clear();
                self.cluster_tags.extend(tags.iter().map(|t| t.to_string()));
            }
        }
        self.add_to_run(raw_data);
        // The other nodes' copy; local delivery is this node's own (the
        // publisher is excluded there, and never gets it back from the
        // cluster: a node drops its own payloads).
        if let Some(cluster) = router.cluster() {
            cluster.publish(&self.cluster_tags, raw_data);
        }
        Ok(())
    }

    /// Adds a publish whose tags are already validated (from a plugin or
    /// after an authenticator check); `raw_data` is a JSON string token.
    pub(crate) fn publish_tags<S: AsRef<str> + serde::Serialize>(
        &mut self,
        router: &Router,
        from: Option<SessionId>,
        tags: &[S],
        raw_data: &str,
    ) {
        self.start_run(router, from, RawTags::Json(None), tags);
        // Not a raw form another request could equal: no run continues it.
        self.run_tags.clear();
        self.add_to_run(raw_data);
        if let Some(cluster) = router.cluster() {
            cluster.publish(tags, raw_data);
        }
    }

    /// Adds a message another node of the cluster published: matched with
    /// no session excluded (its publisher is elsewhere) and not sent back
    /// to the cluster. `same_tags` continues the open run (a burst on one
    /// tag set is matched once). Not counted as a message received from a
    /// client.
    pub(crate) fn remote(
        &mut self,
        router: &Router,
        tags: &[&str],
        same_tags: bool,
        raw_data: &str,
    ) {
        if !same_tags || self.runs.is_empty() {
            self.start_run(router, None, RawTags::Json(None), tags);
            self.run_tags.clear();
        }
        self.append(raw_data);
    }

    fn start_run<S: AsRef<str> + serde::Serialize>(
        &mut self,
        router: &Router,
        from: Option<SessionId>,
        raw_tags: RawTags<'_>,
        tags: &[S],
    ) {
        let first_target = self.targets.len();
        router.route(tags, from, &mut self.scratch, &mut self.targets);
        let start = self.buf.len();
        if self.targets.len() > first_target {
            protocol::delivery_prefix(&mut self.buf, raw_tags, tags);
        }
        self.runs.push(Run {
            start,
            prefix: start..self.buf.len(),
            ends: self.ends.len()..self.ends.len(),
            targets: first_target..self.targets.len(),
        });
    }

    fn add_to_run(&mut self, raw_data: &str) {
        if self.publishes == 0 {
            // Once per batch, not per message: a clock read costs ~25 ns.
            self.started = Some(Instant::now());
        }
        self.publishes += 1;
        self.append(raw_data);
    }

    /// Appends a delivery to the open run, uncounted.
    fn append(&mut self, raw_data: &str) {
        let Some(run) = self.runs.last_mut() else {
            return;
        };
        // Nobody to deliver to: the message is gone (SPEC §1).
        if run.targets.is_empty() {
            return;
        }
        if run.ends.is_empty() {
            // The prefix was written just now, right where the line starts.
        } else {
            self.buf.extend_from_within(run.prefix.clone());
        }
        protocol::delivery_rest(&mut self.buf, raw_data);
        self.ends.push(self.buf.len());
        run.ends.end = self.ends.len();
    }

    /// Hands the batch to every subscriber's queue and counts it. Returns
    /// how many deliveries were queued, and adds to `slow` the sessions
    /// that have been full for longer than the slow-consumer timeout (the
    /// caller disconnects them once it has released the router's lock).
    pub(crate) fn flush(
        &mut self,
        router: &Router,
        shared: &Shared,
        slow: &mut Vec<SessionId>,
    ) -> u64 {
        if self.runs.is_empty() {
            return 0;
        }
        let (mut queued, mut dropped) = (0, 0);
        let batch = if self.ends.is_empty() {
            // No publish had a subscriber: nothing to share.
            self.runs.clear();
            self.buf.clear();
            None
        } else {
            let bytes = std::mem::take(&mut self.buf);
            Some(Arc::new(Chunk::new(bytes, &shared.memory)))
        };
        for run in self.runs.drain(..) {
            let Some(batch) = &batch else { break };
            let ends = &self.ends[run.ends];
            if ends.is_empty() {
                continue;
            }
            for &slot in &self.targets[run.targets] {
                let Some(target) = router.output_at(slot) else {
                    continue;
                };
                let pushed = target.push_deliveries(batch, run.start, ends);
                queued += pushed.queued;
                dropped += pushed.dropped;
                if pushed.slow {
                    slow.push(target.session());
                }
            }
        }
        self.ends.clear();
        self.targets.clear();
        self.run_tags.clear();
        let stats = &shared.stats;
        stats
            .messages_in
            .fetch_add(std::mem::take(&mut self.publishes), Ordering::Relaxed);
        if queued > 0 {
            stats.messages_out.fetch_add(queued, Ordering::Relaxed);
        }
        if dropped > 0 {
            stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if let Some(started) = self.started.take() {
            stats.publish_latency.record(started.elapsed());
        }
        queued
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use serde_json::json;

    use super::super::testing::{open_broker, Client};
    use super::super::Limits;

    #[tokio::test]
    async fn a_run_is_serialized_once_and_shared_by_every_subscriber() {
        let shared = open_broker(Limits::default());
        let subscribers: Vec<Client> = (0..3).map(|_| Client::open(&shared, None)).collect();
        for s in &subscribers {
            s.request(&[json!({"command": "subscribe", "tags": ["a"]})])
                .await;
        }
        let publisher = Client::open(&shared, None);
        let mut lines = String::new();
        for i in 0..10 {
            lines.push_str(&format!(
                "{{\"command\":\"publish\",\"tags\":[\"a\",\"b\"],\"data\":\"{i}\"}}\n"
            ));
        }
        assert!(publisher.session.feed(lines.as_bytes()).is_none());
        let line_len = r#"{"command":"publish","tags":["a","b"],"data":"0"}"#.len() + 1;
        // One chunk of ten lines in memory, however many subscribers hold it.
        assert_eq!(shared.memory.used(), 10 * line_len);
        for s in &subscribers {
            let got = s.received();
            assert_eq!(got.len(), 10);
            assert_eq!(
                got[3],
                json!({"command": "publish", "tags": ["a", "b"], "data": "3"})
            );
        }
        assert_eq!(shared.memory.used(), 0, "written out: the chunk is freed");
        assert!(publisher.received().is_empty(), "never to the publisher");
        assert_eq!(shared.stats.messages_in.load(Ordering::Relaxed), 10);
        assert_eq!(shared.stats.messages_out.load(Ordering::Relaxed), 30);
    }

    #[tokio::test]
    async fn runs_with_different_tags_keep_the_publishers_order() {
        let shared = open_broker(Limits::default());
        let both = Client::open(&shared, None);
        both.request(&[
            json!({"command": "subscribe", "tags": ["x"]}),
            json!({"command": "subscribe", "tags": ["y"]}),
        ])
        .await;
        let publisher = Client::open(&shared, None);
        let mut lines = String::new();
        for (i, tag) in ["x", "x", "y", "x", "y", "y", "z", "x"].iter().enumerate() {
            lines.push_str(&format!(
                "{{\"command\":\"publish\",\"tags\":[\"{tag}\"],\"data\":\"{i}\"}}\n"
            ));
        }
        assert!(publisher.session.feed(lines.as_bytes()).is_none());
        let order: Vec<String> = both
            .received()
            .iter()
            .map(|m| m["data"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(order, ["0", "1", "2", "3", "4", "5", "7"]);
    }

    #[tokio::test]
    async fn too_many_tags_are_refused_before_matching() {
        let shared = open_broker(Limits {
            max_tags: 2,
            ..Limits::default()
        });
        let client = Client::open(&shared, None);
        let replies = client
            .request(&[json!({"command": "publish", "tags": ["a", "b", "c"], "data": "x"})])
            .await;
        assert_eq!(replies[0]["error"], "too many tags: 3, the limit is 2");
        assert_eq!(shared.stats.messages_in.load(Ordering::Relaxed), 0);
    }
}
