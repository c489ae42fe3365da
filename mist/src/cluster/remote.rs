//! What this node knows of the other nodes' interest, and where a publish
//! must go.
//!
//! Each node announces the tag sets its sessions hold ([`super::interest`])
//! on the control channel, numbered by an epoch per node: changes one by
//! one (`interest` payloads), or all of them at once to a node that asks
//! (`snapshot`). Every node files the others' sets in one subset index
//! (the broker's own matcher, [`crate::tags::Index`], a node standing for a
//! session), so a publish of tag set T goes to exactly the nodes holding a
//! set S ⊆ T, on each node's own channel: traffic in proportion to
//! interest, as NATS routes do with subjects.
//!
//! A node whose interest this node does not know for sure is *unknown* and
//! is sent every publish: one it just heard of, one that said hello again
//! (its backplane reconnected), one whose changes arrived with a gap (a
//! payload lost), or one whose sets would pass [`MAX_SETS`] or
//! [`MAX_BYTES`] (for every node together). Unknown costs
//! traffic, never a message; this node asks it for a snapshot, which makes
//! it known again.

use std::collections::HashMap;

use super::interest::{canonical, TagSet};
use crate::tags::{Index, MatchScratch};

/// Tag sets kept for every other node together; a node whose sets would
/// pass it is sent everything instead (a bound against a node, or a forger
/// without the cluster key, announcing without end).
pub const MAX_SETS: usize = 1 << 20;
/// Bytes of those sets' tags (plus a fixed cost per tag and per set) kept
/// for every other node together, the same way.
pub const MAX_BYTES: usize = 64 << 20;

/// What keeping `set` costs against [`MAX_BYTES`].
fn cost(set: &[impl AsRef<str>]) -> usize {
    set.iter().map(|t| t.as_ref().len() + 32).sum::<usize>() + 64
}

/// The other nodes' interest.
#[derive(Default)]
pub struct Remote {
    nodes: HashMap<u64, NodeInterest>,
    /// Every known node's sets, a node's slot standing for a session.
    index: Index,
    /// Node ids by slot (`u64::MAX`: free).
    slots: Vec<u64>,
    /// Nodes sent everything, sorted.
    unknown: Vec<u64>,
    /// Sets filed, and their cost, for every node together.
    total_sets: usize,
    total_bytes: usize,
}

struct NodeInterest {
    slot: u32,
    /// Set once a snapshot was installed and every change since applied.
    known: bool,
    /// The epoch applied (known), or the highest heard (unknown).
    epoch: u64,
    /// Sets filed in the index (while known), and their cost.
    sets: usize,
    bytes: usize,
    /// A snapshot being received: its epoch, the parts in hand.
    loading: Option<Loading>,
    /// The epoch of a snapshot refused as too large: its remaining parts
    /// are ignored, and it is not asked for again.
    oversized: Option<u64>,
}

struct Loading {
    epoch: u64,
    parts: u64,
    next: u64,
    sets: Vec<TagSet>,
    bytes: usize,
}

/// What a part of a snapshot did.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// More parts to come (or parts of a refused snapshot: nothing to do).
    Pending,
    /// The node is known at this epoch: acknowledge it.
    Installed(u64),
    /// A part went missing: ask for the snapshot again.
    Lost,
    /// Over [`MAX_SETS`] or [`MAX_BYTES`]: the node stays unknown (sent
    /// everything); acknowledge this epoch, do not ask again.
    TooLarge(u64),
}

/// What an `interest` payload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied (or seen already): acknowledge this epoch.
    Ack(u64),
    /// A gap, or a node heard of for the first time: it is unknown now;
    /// ask it for a snapshot, and acknowledge this epoch (everything goes
    /// to an unknown node, so the barrier holds).
    Unknown(u64),
}

/// Where one publish goes, and the room to work it out (kept between
/// publishes for its allocations).
#[derive(Default)]
pub struct Route {
    scratch: MatchScratch,
    slots: Vec<u32>,
}

impl Remote {
    /// `node` was heard (a heartbeat, any payload). Returns true when it is
    /// new: it is unknown, ask it for a snapshot.
    pub fn heard(&mut self, node: u64) -> bool {
        if self.nodes.contains_key(&node) {
            return false;
        }
        let slot = match self.slots.iter().position(|n| *n == u64::MAX) {
            Some(free) => {
                self.slots[free] = node;
                free
            }
            None => {
                self.slots.push(node);
                self.slots.len() - 1
            }
        };
        self.nodes.insert(
            node,
            NodeInterest {
                slot: slot as u32,
                known: false,
                epoch: 0,
                sets: 0,
                bytes: 0,
                loading: None,
                oversized: None,
            },
        );
        self.set_unknown(node, true);
        true
    }

    /// What this node knew of `node` is void (it said hello again, or this
    /// node's own backplane reconnected): it is sent everything until its
    /// snapshot arrives (ask it for one).
    pub fn reset(&mut self, node: u64) {
        if self.heard(node) {
            return;
        }
        self.unfile(node);
        if let Some(entry) = self.nodes.get_mut(&node) {
            entry.known = false;
            entry.loading = None;
        }
        self.set_unknown(node, true);
    }

    /// Every node's interest is void (this node's backplane came back: it
    /// may have missed changes). Returns the nodes to ask for snapshots.
    pub fn reset_all(&mut self) -> Vec<u64> {
        let nodes: Vec<u64> = self.nodes.keys().copied().collect();
        for &node in &nodes {
            self.reset(node);
        }
        nodes
    }

    /// `node` left or is no longer listed: nothing more goes to it.
    pub fn forget(&mut self, node: u64) {
        self.unfile(node);
        if let Some(entry) = self.nodes.remove(&node) {
            self.slots[entry.slot as usize] = u64::MAX;
        }
        self.set_unknown(node, false);
    }

    /// Keeps only the nodes in `alive`.
    pub fn retain(&mut self, alive: &[u64]) {
        let gone: Vec<u64> = self
            .nodes
            .keys()
            .filter(|n| !alive.contains(n))
            .copied()
            .collect();
        for node in gone {
            self.forget(node);
        }
    }

    /// Changes of `node`'s sets, numbered from `first`.
    pub fn changes<'t, I>(&mut self, node: u64, first: u64, changes: I) -> Applied
    where
        I: ExactSizeIterator<Item = (bool, Vec<&'t str>)>,
    {
        let last = first + changes.len() as u64 - 1;
        if self.heard(node) {
            if let Some(entry) = self.nodes.get_mut(&node) {
                entry.epoch = last;
            }
            return Applied::Unknown(last);
        }
        let Some(entry) = self.nodes.get_mut(&node) else {
            return Applied::Unknown(last);
        };
        if !entry.known {
            entry.epoch = entry.epoch.max(last);
            return Applied::Ack(last);
        }
        if last <= entry.epoch {
            return Applied::Ack(entry.epoch); // seen already
        }
        if first > entry.epoch + 1 {
            // A payload of its was lost: what this node knows is wrong.
            entry.epoch = last;
            self.reset(node);
            return Applied::Unknown(last);
        }
        let skip = (entry.epoch + 1 - first) as usize;
        entry.epoch = last;
        let slot = entry.slot;
        let mut over = false;
        for (added, set) in changes.skip(skip) {
            let Some(entry) = self.nodes.get_mut(&node) else {
                break;
            };
            // Canonical, so that a set costs the same added and withdrawn
            // however a sender writes it.
            let set = canonical(&set);
            let bytes = cost(&set);
            if added {
                if self.total_sets >= MAX_SETS || self.total_bytes + bytes > MAX_BYTES {
                    over = true;
                    break;
                }
                if self.index.subscribe(slot, &set) {
                    entry.sets += 1;
                    entry.bytes += bytes;
                    self.total_sets += 1;
                    self.total_bytes += bytes;
                }
            } else if self.index.unsubscribe(slot, &set) {
                entry.sets = entry.sets.saturating_sub(1);
                entry.bytes = entry.bytes.saturating_sub(bytes);
                self.total_sets = self.total_sets.saturating_sub(1);
                self.total_bytes = self.total_bytes.saturating_sub(bytes);
            }
        }
        if over {
            self.reset(node);
            return Applied::Unknown(last);
        }
        Applied::Ack(last)
    }

    /// One part of `node`'s snapshot at `epoch`.
    pub fn snapshot(
        &mut self,
        node: u64,
        epoch: u64,
        part: u64,
        parts: u64,
        sets: Vec<TagSet>,
    ) -> Loaded {
        self.heard(node);
        let room_sets = MAX_SETS.saturating_sub(self.total_sets);
        let room_bytes = MAX_BYTES.saturating_sub(self.total_bytes);
        let Some(entry) = self.nodes.get_mut(&node) else {
            return Loaded::Pending;
        };
        if part == 0 {
            entry.oversized = None;
            entry.loading = Some(Loading {
                epoch,
                parts,
                next: 0,
                sets: Vec::new(),
                bytes: 0,
            });
        }
        let last = part + 1 == parts;
        let Some(loading) = entry.loading.as_mut() else {
            return if last && entry.oversized != Some(epoch) {
                Loaded::Lost
            } else {
                Loaded::Pending
            };
        };
        if loading.epoch != epoch || loading.parts != parts || loading.next != part {
            entry.loading = None; // a part lost: ask again (it stays unknown)
            return if last { Loaded::Lost } else { Loaded::Pending };
        }
        loading.bytes += sets.iter().map(|s| cost(s)).sum::<usize>();
        loading.sets.extend(sets);
        loading.next += 1;
        // Its own sets go when this one is installed: they count as room.
        if loading.sets.len() > room_sets + entry.sets || loading.bytes > room_bytes + entry.bytes {
            entry.loading = None;
            entry.oversized = Some(epoch);
            entry.epoch = entry.epoch.max(epoch);
            return Loaded::TooLarge(epoch);
        }
        if loading.next < parts {
            return Loaded::Pending;
        }
        let Some(loading) = entry.loading.take() else {
            return Loaded::Pending;
        };
        if entry.known && entry.epoch >= epoch {
            return Loaded::Installed(entry.epoch); // an older answer
        }
        self.unfile(node);
        let Some(entry) = self.nodes.get_mut(&node) else {
            return Loaded::Pending;
        };
        entry.known = true;
        entry.epoch = epoch;
        let slot = entry.slot;
        let (mut filed, mut bytes) = (0, 0);
        for set in &loading.sets {
            if self.index.subscribe(slot, set) {
                filed += 1;
                bytes += cost(set);
            }
        }
        if let Some(entry) = self.nodes.get_mut(&node) {
            entry.sets = filed;
            entry.bytes = bytes;
        }
        self.total_sets += filed;
        self.total_bytes += bytes;
        self.set_unknown(node, false);
        Loaded::Installed(epoch)
    }

    /// Appends to `out` the nodes a publish of `tags` goes to: the unknown
    /// ones and those holding a set ⊆ `tags`, each once, sorted.
    pub fn route<S: AsRef<str>>(&self, tags: &[S], room: &mut Route, out: &mut Vec<u64>) {
        out.extend_from_slice(&self.unknown);
        if !self.index.is_empty() {
            room.slots.clear();
            self.index
                .matches(tags, None, &mut room.scratch, &mut room.slots);
            out.extend(room.slots.iter().map(|&s| self.slots[s as usize]));
        }
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }

    /// Whether any other node is known of.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `node`'s interest is known for sure.
    pub fn is_known(&self, node: u64) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.known)
    }

    /// Takes `node`'s sets out of the index.
    fn unfile(&mut self, node: u64) {
        if let Some(entry) = self.nodes.get_mut(&node) {
            self.index.remove_session(entry.slot);
            self.total_sets = self.total_sets.saturating_sub(entry.sets);
            self.total_bytes = self.total_bytes.saturating_sub(entry.bytes);
            entry.sets = 0;
            entry.bytes = 0;
        }
    }

    fn set_unknown(&mut self, node: u64, unknown: bool) {
        match (self.unknown.binary_search(&node), unknown) {
            (Err(at), true) => self.unknown.insert(at, node),
            (Ok(at), false) => {
                self.unknown.remove(at);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(tags: &[&str]) -> TagSet {
        super::super::interest::canonical(tags)
    }

    fn change(added: bool, tags: &[&'static str]) -> (bool, Vec<&'static str>) {
        (added, tags.to_vec())
    }

    fn route(remote: &Remote, tags: &[&str]) -> Vec<u64> {
        let mut out = Vec::new();
        remote.route(tags, &mut Route::default(), &mut out);
        out
    }

    #[test]
    fn an_unknown_node_gets_everything_until_its_snapshot() {
        let mut remote = Remote::default();
        assert!(remote.heard(7));
        assert!(!remote.heard(7));
        assert_eq!(route(&remote, &["a"]), [7]);
        assert_eq!(
            remote.snapshot(7, 3, 0, 2, vec![set(&["a"])]),
            Loaded::Pending
        );
        assert_eq!(
            remote.snapshot(7, 3, 1, 2, vec![set(&["b", "c"])]),
            Loaded::Installed(3)
        );
        assert!(remote.is_known(7));
        assert_eq!(route(&remote, &["a", "z"]), [7]);
        assert_eq!(route(&remote, &["c", "b"]), [7]);
        // A subset, not a shared tag: "b" alone matches nothing.
        assert!(route(&remote, &["b", "z"]).is_empty());
    }

    #[test]
    fn changes_apply_in_order_and_a_gap_makes_the_node_unknown() {
        let mut remote = Remote::default();
        remote.heard(7);
        remote.snapshot(7, 0, 0, 1, vec![]);
        let applied = remote.changes(
            7,
            1,
            [change(true, &["a"]), change(true, &["b"])].into_iter(),
        );
        assert_eq!(applied, Applied::Ack(2));
        assert_eq!(route(&remote, &["b"]), [7]);
        // Seen already, partly seen: the rest applies.
        assert_eq!(
            remote.changes(7, 2, [change(true, &["b"])].into_iter()),
            Applied::Ack(2)
        );
        let applied = remote.changes(
            7,
            2,
            [change(true, &["b"]), change(false, &["a"])].into_iter(),
        );
        assert_eq!(applied, Applied::Ack(3));
        assert!(route(&remote, &["a"]).is_empty());
        // Epoch 4 was lost: unknown, everything goes to it.
        assert_eq!(
            remote.changes(7, 5, [change(false, &["b"])].into_iter()),
            Applied::Unknown(5)
        );
        assert!(!remote.is_known(7));
        assert_eq!(route(&remote, &["q"]), [7]);
        // Its snapshot makes it known again.
        assert_eq!(
            remote.snapshot(7, 5, 0, 1, vec![set(&["q"])]),
            Loaded::Installed(5)
        );
        assert_eq!(route(&remote, &["q"]), [7]);
        assert!(route(&remote, &["b"]).is_empty());
    }

    #[test]
    fn a_snapshot_with_a_missing_part_is_not_installed() {
        let mut remote = Remote::default();
        remote.heard(7);
        assert_eq!(
            remote.snapshot(7, 3, 0, 3, vec![set(&["a"])]),
            Loaded::Pending
        );
        assert_eq!(remote.snapshot(7, 3, 2, 3, vec![set(&["b"])]), Loaded::Lost);
        assert!(!remote.is_known(7));
        assert_eq!(route(&remote, &["z"]), [7]);
    }

    #[test]
    fn sets_past_the_bound_leave_the_node_unknown_and_acknowledged() {
        let mut remote = Remote::default();
        remote.heard(7);
        let huge: TagSet = vec!["x".repeat(MAX_BYTES)].into_boxed_slice();
        // Too large: acknowledged, never asked again, sent everything.
        assert_eq!(
            remote.snapshot(7, 4, 0, 2, vec![huge.clone()]),
            Loaded::TooLarge(4)
        );
        assert_eq!(remote.snapshot(7, 4, 1, 2, vec![]), Loaded::Pending);
        assert!(!remote.is_known(7));
        assert_eq!(route(&remote, &["a"]), [7]);
        // Known, then a change past the bound: unknown again.
        assert_eq!(
            remote.snapshot(7, 5, 0, 1, vec![set(&["a"])]),
            Loaded::Installed(5)
        );
        assert_eq!(route(&remote, &["z"]), Vec::<u64>::new());
        let applied = remote.changes(7, 6, [(true, vec![huge[0].as_str()])].into_iter());
        assert_eq!(applied, Applied::Unknown(6));
        assert_eq!(route(&remote, &["z"]), [7]);
        // Forgetting it gives its room back.
        remote.forget(7);
        remote.heard(8);
        assert_eq!(
            remote.snapshot(8, 1, 0, 1, vec![set(&["b"])]),
            Loaded::Installed(1)
        );
    }

    #[test]
    fn routes_are_each_node_once_and_forgotten_nodes_get_nothing() {
        let mut remote = Remote::default();
        for node in [5, 9] {
            remote.heard(node);
            remote.snapshot(node, 1, 0, 1, vec![set(&["a"]), set(&["b"])]);
        }
        assert_eq!(route(&remote, &["a", "b"]), [5, 9]);
        remote.retain(&[9]);
        assert_eq!(route(&remote, &["a", "b"]), [9]);
        remote.forget(9);
        assert!(route(&remote, &["a"]).is_empty());
        assert!(remote.is_empty());
        // A slot freed is used again, for another node's sets only.
        remote.heard(4);
        remote.snapshot(4, 1, 0, 1, vec![set(&["c"])]);
        assert!(route(&remote, &["a"]).is_empty());
        assert_eq!(route(&remote, &["c"]), [4]);
        // Reset: unknown again, asked again.
        assert_eq!(remote.reset_all(), [4]);
        assert_eq!(route(&remote, &["z"]), [4]);
    }
}
