//! The interest protocol, this node's side: what it announces (its tag
//! sets, numbered by epoch, [`super::interest`]), what it owes the other
//! nodes (acknowledgements, snapshot requests, snapshots) and what it
//! waits for (every listed node's acknowledgement of an epoch: a
//! subscribe's confirmation, the cluster-wide ping barrier).
//! docs/cluster.md, "Routing by interest", says why each step is there.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use futures_util::FutureExt;
use mist_sdk::{ErrorKind, SdkError};
use tokio::time::Instant;

use super::inbound::Verdict;
use super::interest::{canonical, Interest, TagSet};
use super::outbound::EVERY_NODE;
use super::remote::{Applied, Loaded};
use super::wire::{self, Kind};
use super::{ClusterError, Confirmation, Node, Sender};

impl Node {
    /// Completes once every other node acknowledged this node's interest
    /// up to `epoch` (so their publishes from then on reach it), the
    /// backplane is down, or the confirmation timeout passed. The wait runs
    /// in a task on the node's runtime (so it completes, and is logged,
    /// whether or not anyone awaits it); the confirmation only awaits that
    /// task, which any executor can do.
    pub(super) fn confirm(&self, epoch: u64) -> Confirmation {
        let limit = self.config.confirm_timeout;
        let mut confirmed = self.confirmed.subscribe();
        self.flush.notify_one();
        let waiting = self.runtime.spawn(async move {
            let result =
                match tokio::time::timeout(limit, confirmed.wait_for(|c| *c >= epoch)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(_)) => Err(ClusterError::Unavailable("the node stopped".into())),
                    Err(_) => Err(ClusterError::Timeout(limit)),
                };
            if let Err(e) = &result {
                tracing::debug!("interest epoch {epoch} not acknowledged by every node: {e}");
            }
            result
        });
        let shared = async move {
            waiting.await.unwrap_or_else(|e| {
                Err(ClusterError::Unavailable(format!("confirmation lost: {e}")))
            })
        }
        .boxed()
        .shared();
        Confirmation(shared)
    }

    /// (Re)starts the wait for every other node's heartbeat: until it
    /// passes, messages go to every node and nothing is confirmed.
    pub(super) fn start_sync(&self) {
        self.synced.store(false, Ordering::Release);
        *self.sync_at.lock() = Instant::now() + self.config.heartbeat * 3 / 2;
        self.hello.store(true, Ordering::Release);
    }

    /// Sets `confirmed`: what every node listed acknowledged (everything
    /// when there is none), nothing while not synced, everything while the
    /// backplane is down.
    pub(super) fn recompute_confirmed(&self) {
        let acks = self.acks.lock();
        let value = if !self.up.load(Ordering::Acquire) || self.stopped.load(Ordering::Acquire) {
            u64::MAX
        } else if !self.synced.load(Ordering::Acquire) {
            0
        } else {
            let nodes = self.inbound.lock().nodes(Instant::now());
            let epoch = self.epoch.load(Ordering::Acquire);
            nodes
                .iter()
                .map(|n| acks.acked.get(n).copied().unwrap_or(0))
                .min()
                .unwrap_or(epoch)
        };
        self.confirmed.send_replace(value);
    }

    /// Sends what the interest protocol owes: a hello, this node's interest
    /// changes, acknowledgements, snapshot requests and snapshots. What the
    /// backplane's full queue refused stays for the next time; what a
    /// backplane that is down refused is dropped (a reconnection starts
    /// over with hellos and snapshots).
    pub(super) fn send_interest(&self, sender: &mut Sender) -> Result<(), SdkError> {
        let keep = |e: &SdkError| e.kind == ErrorKind::OVERLOADED;
        if self.hello.swap(false, Ordering::AcqRel) {
            let body = wire::heartbeat_body(self.heartbeat_ms());
            if let Err(e) = self.emit(sender, Kind::Hello, EVERY_NODE, &[&body]) {
                self.hello.store(keep(&e), Ordering::Release);
                return Err(e);
            }
        }
        let (first, changes) = {
            let mut held = self.interest.lock();
            let first = held.epoch + 1 - held.pending.len() as u64;
            (first, std::mem::take(&mut held.pending))
        };
        let mut at = 0;
        while at < changes.len() {
            let end = chunk_end(&changes, at, |(_, set)| set);
            let chunk: Vec<(bool, &[String])> = changes[at..end]
                .iter()
                .map(|(added, set)| (*added, &set[..]))
                .collect();
            let body = wire::interest_body(first + at as u64, &chunk);
            if let Err(e) = self.emit(sender, Kind::Interest, EVERY_NODE, &[&body]) {
                if keep(&e) {
                    let mut held = self.interest.lock();
                    let mut left = changes[at..].to_vec();
                    left.append(&mut held.pending);
                    held.pending = left;
                }
                return Err(e);
            }
            at = end;
        }
        let owed = self.acks.lock().take_owed();
        let Owed {
            acks,
            requests,
            snapshots,
        } = owed;
        let mut failed = None;
        let mut left = Owed::default();
        for (node, epoch) in acks {
            let mut body = Vec::new();
            wire::put_varint(&mut body, epoch);
            if failed.is_none() {
                if let Err(e) = self.emit(sender, Kind::Ack, node, &[&body]) {
                    failed = Some(e);
                }
            }
            if failed.as_ref().is_some_and(keep) {
                left.acks.push((node, epoch));
            }
        }
        for node in requests {
            if failed.is_none() {
                if let Err(e) = self.emit(sender, Kind::SnapshotRequest, node, &[]) {
                    failed = Some(e);
                }
            }
            if failed.as_ref().is_some_and(keep) {
                left.requests.push(node);
            }
        }
        if !snapshots.is_empty() {
            let (epoch, sets) = {
                let held = self.interest.lock();
                let sets: Vec<TagSet> = held.interest.sets().cloned().collect();
                (held.epoch, sets)
            };
            let mut chunks = Vec::new();
            let mut at = 0;
            while at < sets.len() {
                let end = chunk_end(&sets, at, |set| set);
                chunks.push(at..end);
                at = end;
            }
            if chunks.is_empty() {
                chunks.push(0..0);
            }
            let parts = chunks.len() as u64;
            for node in snapshots {
                for (part, range) in chunks.iter().enumerate() {
                    if failed.is_some() {
                        break;
                    }
                    let chunk: Vec<&[String]> =
                        sets[range.clone()].iter().map(|s| &s[..]).collect();
                    let body = wire::snapshot_body(epoch, part as u64, parts, &chunk);
                    if let Err(e) = self.emit(sender, Kind::Snapshot, node, &[&body]) {
                        failed = Some(e);
                    }
                }
                if failed.as_ref().is_some_and(keep) {
                    left.snapshots.push(node);
                }
            }
        }
        if failed.as_ref().is_some_and(keep) {
            self.acks.lock().put_back(left);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Notes something the flusher owes another node, and wakes it.
    pub(super) fn owe<R>(&self, note: impl FnOnce(&mut Acks) -> R) {
        note(&mut self.acks.lock());
        self.flush.notify_one();
    }

    /// Acts on a payload of the interest protocol (and heartbeats, which
    /// make a node known).
    pub(super) fn interest_verdict(&self, verdict: Verdict<'_>) {
        match verdict {
            Verdict::Heartbeat { origin } => {
                let new = self.remote.write().heard(origin);
                if new {
                    self.owe(|acks| acks.requests.insert(origin));
                }
            }
            Verdict::Hello { origin } => {
                // It (re)joined: what it holds is unknown until it says.
                self.remote.write().reset(origin);
                self.owe(|acks| acks.requests.insert(origin));
            }
            Verdict::Interest {
                origin,
                first,
                changes,
            } => {
                let changes = changes
                    .iter()
                    .map(|(added, tags)| (*added, tags.iter().collect::<Vec<&str>>()));
                let applied = self.remote.write().changes(origin, first, changes);
                self.owe(|acks| {
                    let (Applied::Ack(epoch) | Applied::Unknown(epoch)) = applied;
                    let owed = acks.owed.entry(origin).or_default();
                    *owed = (*owed).max(epoch);
                    if matches!(applied, Applied::Unknown(_)) {
                        acks.requests.insert(origin);
                    }
                });
            }
            Verdict::Snapshot {
                origin,
                epoch,
                part,
                parts,
                sets,
            } => {
                let sets: Vec<TagSet> = sets.iter().map(|t| canonical(&t.to_vec())).collect();
                let loaded = self
                    .remote
                    .write()
                    .snapshot(origin, epoch, part, parts, sets);
                match loaded {
                    Loaded::Installed(epoch) | Loaded::TooLarge(epoch) => self.owe(|acks| {
                        let owed = acks.owed.entry(origin).or_default();
                        *owed = (*owed).max(epoch);
                    }),
                    Loaded::Lost => self.owe(|acks| {
                        acks.requests.insert(origin);
                    }),
                    Loaded::Pending => {}
                }
            }
            Verdict::SnapshotRequest { origin } => {
                self.owe(|acks| acks.snapshots.insert(origin));
            }
            Verdict::Ack { origin, epoch } => {
                {
                    let mut acks = self.acks.lock();
                    let acked = acks.acked.entry(origin).or_default();
                    *acked = (*acked).max(epoch);
                }
                self.recompute_confirmed();
            }
            Verdict::Leaving { origin } => {
                self.remote.write().forget(origin);
                self.acks.lock().acked.remove(&origin);
                self.recompute_confirmed();
            }
            _ => {}
        }
    }
}

/// This node's interest: its tag sets, and their changes numbered by
/// epoch, those not yet sent in `pending`.
#[derive(Default)]
pub(super) struct Held {
    pub(super) interest: Interest<Confirmation>,
    /// The epoch of the last change.
    pub(super) epoch: u64,
    /// Changes not yet sent: epochs `epoch - len + 1 ..= epoch`.
    pub(super) pending: Vec<(bool, TagSet)>,
}

/// The interest protocol's bookkeeping between other nodes and this one.
#[derive(Default)]
pub(super) struct Acks {
    /// Per node, the epoch of this node's interest it acknowledged.
    pub(super) acked: HashMap<u64, u64>,
    /// Per node, the epoch of its interest this node applied and owes an
    /// acknowledgement for.
    owed: HashMap<u64, u64>,
    /// Nodes to ask for a snapshot.
    pub(super) requests: HashSet<u64>,
    /// Nodes that asked for this node's snapshot.
    snapshots: HashSet<u64>,
}

/// What the flusher sends of [`Acks`].
#[derive(Default)]
struct Owed {
    acks: Vec<(u64, u64)>,
    requests: Vec<u64>,
    snapshots: Vec<u64>,
}

impl Acks {
    /// Takes what is owed (`acked` stays).
    fn take_owed(&mut self) -> Owed {
        Owed {
            acks: self.owed.drain().collect(),
            requests: self.requests.drain().collect(),
            snapshots: self.snapshots.drain().collect(),
        }
    }

    fn put_back(&mut self, left: Owed) {
        for (node, epoch) in left.acks {
            let owed = self.owed.entry(node).or_default();
            *owed = (*owed).max(epoch);
        }
        self.requests.extend(left.requests);
        self.snapshots.extend(left.snapshots);
    }
}

/// Where a chunk of `items` starting at `at` ends so that an interest or
/// snapshot payload stays within [`wire::MAX_SETS`] sets and
/// [`wire::MAX_SET_BYTES`] bytes (one set at least).
fn chunk_end<T>(items: &[T], at: usize, set: impl Fn(&T) -> &TagSet) -> usize {
    let mut bytes = 0;
    let mut end = at;
    while end < items.len() && end - at < wire::MAX_SETS as usize {
        bytes += set(&items[end]).iter().map(|t| t.len() + 2).sum::<usize>() + 3;
        if bytes > wire::MAX_SET_BYTES && end > at {
            break;
        }
        end += 1;
    }
    end
}
