//! The publish path: matching under the router's lock, then handing the
//! deliveries to the subscribers' queues, then letting the lock go.
//!
//! [`Delivery`] owns the rule every publish obeys: **the router's read
//! lock is held from the first match until the deliveries are queued**.
//! An `unsubscribe` (which takes the lock exclusively) therefore falls
//! either before a match or after its deliveries are queued, never
//! between: once the reply to a `ping` sent after an `unsubscribe` is
//! queued, nothing matched through that subscription follows it. A
//! `Delivery` holds the guard; [`Delivery::finish`] (or dropping it)
//! flushes, releases the lock, and only then disconnects the subscribers
//! found too slow, which takes the lock exclusively. No other code takes
//! the router's guard on the publish path.
//!
//! The deliveries of the publishes in one chunk of a session's input are
//! serialized once into one buffer ([`Batch`], the session's reusable
//! scratch space), which is then shared by every subscriber's queue.
//! Consecutive publishes with identical tags form a *run*: they are matched
//! once, their delivery lines share one serialized prefix, and each
//! subscriber receives the whole run as one contiguous range. Under a flood
//! on one topic this makes the per-subscriber cost per chunk, not per message.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLockReadGuard;

use super::id::SessionId;
use super::ledger::Chunk;
use super::protocol::{self, ProtocolError, RawTags, TagSet};
use super::router::{RouteScratch, Router};
use super::shared::Shared;

/// Publishes matched under the router's read lock, not yet queued.
pub(crate) struct Delivery<'a> {
    shared: &'a Shared,
    /// `None` only once finished.
    router: Option<RwLockReadGuard<'a, Router>>,
    batch: Box<Batch>,
}

impl<'a> Delivery<'a> {
    /// Takes the router's read lock; `batch` is the caller's scratch space
    /// (empty), given back by [`Delivery::finish`].
    pub(crate) fn begin(shared: &'a Shared, batch: Box<Batch>) -> Delivery<'a> {
        Delivery {
            shared,
            router: Some(shared.router.read()),
            batch,
        }
    }

    fn router(&self) -> &Router {
        // Set from `begin` until `finish`, which consumes `self`.
        self.router.as_deref().unwrap_or_else(|| unreachable!())
    }

    /// A client's publish with the request's raw tags and data (a JSON
    /// string token). A publisher closed meanwhile publishes nothing. In a
    /// cluster, the other nodes get their copy too (never this node's
    /// publisher: a node drops its own payloads).
    pub(crate) fn publish(
        &mut self,
        from: SessionId,
        tags: RawTags<'_>,
        raw_data: &str,
    ) -> Result<(), ProtocolError> {
        let router = self.router.as_deref().unwrap_or_else(|| unreachable!());
        if !router.is_open(from) {
            return Ok(());
        }
        let max_tags = self.shared.limits.max_tags;
        self.batch
            .publish(router, max_tags, Some(from), tags, raw_data)?;
        if let Some(cluster) = router.cluster() {
            cluster.publish(&self.batch.cluster_tags, raw_data);
        }
        Ok(())
    }

    /// A session's publish whose tags are checked already (a registered
    /// token's, after the store allowed them); `raw_data` is a JSON string
    /// token. A publisher closed meanwhile publishes nothing.
    pub(crate) fn publish_checked(&mut self, from: SessionId, tags: &TagSet<'_>, raw_data: &str) {
        if self.router().is_open(from) {
            self.publish_as_broker(Some(from), tags, raw_data);
        }
    }

    /// A publish by the broker itself (for a plugin), skipping session
    /// `exclude`; `raw_data` is a JSON string token.
    pub(crate) fn publish_as_broker(
        &mut self,
        exclude: Option<SessionId>,
        tags: &TagSet<'_>,
        raw_data: &str,
    ) {
        let router = self.router.as_deref().unwrap_or_else(|| unreachable!());
        self.batch.publish_tags(router, exclude, tags, raw_data);
        if let Some(cluster) = router.cluster() {
            cluster.publish(tags, raw_data);
        }
    }

    /// A message another node of the cluster published: matched with no
    /// session excluded (its publisher is elsewhere) and not sent back to
    /// the cluster. `same_tags` continues the open run (a burst on one tag
    /// set is matched once). Not counted as a message received from a
    /// client.
    pub(crate) fn remote(&mut self, tags: &TagSet<'_>, same_tags: bool, raw_data: &str) {
        let router = self.router.as_deref().unwrap_or_else(|| unreachable!());
        self.batch.remote(router, tags, same_tags, raw_data);
    }

    /// Queues every delivery, counts them, releases the router, then
    /// disconnects the subscribers found too slow. Returns how many
    /// deliveries were queued, and the scratch space for the next time.
    pub(crate) fn finish(mut self) -> (u64, Box<Batch>) {
        let queued = self.flush();
        let batch = std::mem::take(&mut self.batch);
        (queued, batch)
    }

    fn flush(&mut self) -> u64 {
        let Some(router) = self.router.take() else {
            return 0;
        };
        let mut slow = Vec::new();
        let queued = self.batch.flush(&router, self.shared, &mut slow);
        drop(router);
        for session in slow {
            self.shared.evict_slow(session);
        }
        queued
    }
}

impl Drop for Delivery<'_> {
    /// Whatever path leaves a delivery, what it matched is queued and the
    /// lock released in that order.
    fn drop(&mut self) {
        self.flush();
    }
}

/// The serialized deliveries of one delivery, and the buffers reused from
/// one to the next.
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
    /// The bytes its buffers hold. A session keeps its batch for the next
    /// feed only while this is small: a publisher that went quiet after a
    /// burst goes back to its idle footprint.
    pub(crate) fn footprint(&self) -> usize {
        self.buf.capacity()
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.runs.capacity() * std::mem::size_of::<Run>()
            + self.targets.capacity() * std::mem::size_of::<u32>()
            + self.run_tags.capacity()
            + self.cluster_tags.capacity() * std::mem::size_of::<String>()
    }

    fn publish(
        &mut self,
        router: &Router,
        max_tags: usize,
        from: Option<SessionId>,
        raw_tags: RawTags<'_>,
        raw_data: &str,
    ) -> Result<(), ProtocolError> {
        let same_run = matches!(raw_tags.text(), Some(text) if !self.runs.is_empty() && text.as_bytes() == self.run_tags);
        if !same_run {
            let tags = TagSet::parse(raw_tags, max_tags)?;
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
        Ok(())
    }

    fn publish_tags(
        &mut self,
        router: &Router,
        from: Option<SessionId>,
        tags: &TagSet<'_>,
        raw_data: &str,
    ) {
        self.start_run(router, from, RawTags::Json(None), tags);
        // Not a raw form another request could equal: no run continues it.
        self.run_tags.clear();
        self.add_to_run(raw_data);
    }

    fn remote(&mut self, router: &Router, tags: &TagSet<'_>, same_tags: bool, raw_data: &str) {
        if !same_tags || self.runs.is_empty() {
            self.start_run(router, None, RawTags::Json(None), tags);
            self.run_tags.clear();
        }
        self.append(raw_data);
    }

    fn start_run(
        &mut self,
        router: &Router,
        from: Option<SessionId>,
        raw_tags: RawTags<'_>,
        tags: &TagSet<'_>,
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
    /// that have been full for longer than the slow-consumer timeout.
    fn flush(&mut self, router: &Router, shared: &Shared, slow: &mut Vec<SessionId>) -> u64 {
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
            Some(Arc::new(Chunk::new(bytes, &shared.ledger)))
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

    use super::super::limits::Limits;
    use super::super::testing::{open_broker, Client};

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
        assert_eq!(shared.ledger.used(), 10 * line_len);
        for s in &subscribers {
            let got = s.received();
            assert_eq!(got.len(), 10);
            assert_eq!(
                got[3],
                json!({"command": "publish", "tags": ["a", "b"], "data": "3"})
            );
        }
        assert_eq!(shared.ledger.used(), 0, "written out: the chunk is freed");
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
