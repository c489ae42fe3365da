//! What this node knows of the other nodes' interest, and where a publish
//! must go.
//!
//! Each node announces its anchors (one tag of each tag set its sessions
//! hold, [`super::interest`]) on the control channel, numbered by an epoch
//! per node: changes one by one (`interest` payloads), or all of them at
//! once to a node that asks (`snapshot`). A publish of tag set T goes to
//! each node that announced an anchor in T, on that node's own channel.
//!
//! A node whose interest this node does not know for sure is *unknown*
//! and is sent every publish: one it just heard of, one that said hello
//! again (its backplane reconnected), one whose changes arrived with a gap
//! (a payload lost), or one past [`MAX_ANCHORS_PER_NODE`]. Unknown costs
//! traffic, never a message; this node asks it for a snapshot, which makes
//! it known again.

use std::collections::{HashMap, HashSet};

use super::wire::Anchor;

/// Anchors kept per node; past it the node is sent everything (a bound
/// against a node, or a forger without the cluster key, announcing
/// without end).
pub const MAX_ANCHORS_PER_NODE: usize = 1 << 20;

/// The other nodes' interest.
#[derive(Default)]
pub struct Remote {
    nodes: HashMap<u64, NodeInterest>,
    /// Which known nodes hold each anchor.
    holders: HashMap<Anchor, Vec<u64>>,
    /// Nodes sent everything, sorted.
    unknown: Vec<u64>,
}

#[derive(Default)]
struct NodeInterest {
    /// Set once a snapshot was installed and every change since applied.
    known: bool,
    /// The epoch applied (known), or the highest heard (unknown).
    epoch: u64,
    anchors: HashSet<Anchor>,
    /// A snapshot being received: its epoch, the parts in hand.
    loading: Option<Loading>,
}

struct Loading {
    epoch: u64,
    parts: u64,
    next: u64,
    anchors: Vec<Anchor>,
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

impl Remote {
    /// `node` was heard (a heartbeat, any payload). Returns true when it is
    /// new: it is unknown, ask it for a snapshot.
    pub fn heard(&mut self, node: u64) -> bool {
        if self.nodes.contains_key(&node) {
            return false;
        }
        self.nodes.insert(node, NodeInterest::default());
        self.set_unknown(node, true);
        true
    }

    /// What this node knew of `node` is void (it said hello again, or this
    /// node's own backplane reconnected): it is sent everything until its
    /// snapshot arrives. Returns true when a snapshot must be asked for.
    pub fn reset(&mut self, node: u64) -> bool {
        if self.heard(node) {
            return true;
        }
        self.forget_anchors(node);
        if let Some(entry) = self.nodes.get_mut(&node) {
            entry.known = false;
            entry.loading = None;
        }
        self.set_unknown(node, true);
        true
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
        self.forget_anchors(node);
        self.nodes.remove(&node);
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

    /// Changes of `node`'s anchors, numbered from `first`.
    pub fn changes(&mut self, node: u64, first: u64, changes: &[(bool, Anchor)]) -> Applied {
        let last = first + changes.len() as u64 - 1;
        if self.heard(node) {
            self.nodes.entry(node).or_default().epoch = last;
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
        let mut over = false;
        for &(added, anchor) in &changes[skip..] {
            if added {
                if entry.anchors.len() >= MAX_ANCHORS_PER_NODE {
                    over = true;
                    break;
                }
                if entry.anchors.insert(anchor) {
                    self.holders.entry(anchor).or_default().push(node);
                }
            } else if entry.anchors.remove(&anchor) {
                unhold(&mut self.holders, &anchor, node);
            }
        }
        if over {
            self.reset(node);
            return Applied::Unknown(last);
        }
        Applied::Ack(last)
    }

    /// One part of `node`'s snapshot at `epoch`. Returns the epoch to
    /// acknowledge once the last part made it known.
    pub fn snapshot(
        &mut self,
        node: u64,
        epoch: u64,
        part: u64,
        parts: u64,
        anchors: Vec<Anchor>,
    ) -> Option<u64> {
        self.heard(node);
        let entry = self.nodes.get_mut(&node)?;
        if part == 0 {
            entry.loading = Some(Loading {
                epoch,
                parts,
                next: 0,
                anchors: Vec::new(),
            });
        }
        let loading = entry.loading.as_mut()?;
        if loading.epoch != epoch || loading.parts != parts || loading.next != part {
            entry.loading = None; // a part lost: ask again (it stays unknown)
            return None;
        }
        if loading.anchors.len() + anchors.len() > MAX_ANCHORS_PER_NODE {
            entry.loading = None;
            return None;
        }
        loading.anchors.extend(anchors);
        loading.next += 1;
        if loading.next < parts {
            return None;
        }
        let loading = entry.loading.take()?;
        if entry.known && entry.epoch >= epoch {
            return Some(entry.epoch); // an older answer
        }
        self.forget_anchors(node);
        let entry = self.nodes.get_mut(&node)?;
        entry.known = true;
        entry.epoch = epoch;
        entry.anchors = loading.anchors.into_iter().collect();
        for anchor in &entry.anchors {
            self.holders.entry(*anchor).or_default().push(node);
        }
        self.set_unknown(node, false);
        Some(epoch)
    }

    /// The nodes a publish whose tags have these anchors goes to: the
    /// unknown ones and those holding one of them, each once, appended to
    /// `out` (sorted).
    pub fn route(&self, anchors: &[Anchor], out: &mut Vec<u64>) {
        out.extend_from_slice(&self.unknown);
        for anchor in anchors {
            if let Some(nodes) = self.holders.get(anchor) {
                out.extend_from_slice(nodes);
            }
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

    fn forget_anchors(&mut self, node: u64) {
        let Some(entry) = self.nodes.get_mut(&node) else {
            return;
        };
        for anchor in std::mem::take(&mut entry.anchors) {
            unhold(&mut self.holders, &anchor, node);
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

fn unhold(holders: &mut HashMap<Anchor, Vec<u64>>, anchor: &Anchor, node: u64) {
    if let Some(nodes) = holders.get_mut(anchor) {
        nodes.retain(|n| *n != node);
        if nodes.is_empty() {
            holders.remove(anchor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: u8) -> Anchor {
        [n; 16]
    }

    fn route(remote: &Remote, anchors: &[Anchor]) -> Vec<u64> {
        let mut out = Vec::new();
        remote.route(anchors, &mut out);
        out
    }

    #[test]
    fn an_unknown_node_gets_everything_until_its_snapshot() {
        let mut remote = Remote::default();
        assert!(remote.heard(7));
        assert!(!remote.heard(7));
        assert_eq!(route(&remote, &[a(1)]), [7]);
        assert_eq!(route(&remote, &[]), [7]);
        assert_eq!(remote.snapshot(7, 3, 0, 2, vec![a(1)]), None);
        assert_eq!(remote.snapshot(7, 3, 1, 2, vec![a(2)]), Some(3));
        assert!(remote.is_known(7));
        assert_eq!(route(&remote, &[a(1), a(9)]), [7]);
        assert_eq!(route(&remote, &[a(2)]), [7]);
        assert!(route(&remote, &[a(3)]).is_empty());
    }

    #[test]
    fn changes_apply_in_order_and_a_gap_makes_the_node_unknown() {
        let mut remote = Remote::default();
        remote.heard(7);
        remote.snapshot(7, 0, 0, 1, vec![]);
        assert_eq!(
            remote.changes(7, 1, &[(true, a(1)), (true, a(2))]),
            Applied::Ack(2)
        );
        assert_eq!(route(&remote, &[a(2)]), [7]);
        // Seen already, partly seen: the rest applies.
        assert_eq!(remote.changes(7, 2, &[(true, a(2))]), Applied::Ack(2));
        assert_eq!(
            remote.changes(7, 2, &[(true, a(2)), (false, a(1))]),
            Applied::Ack(3)
        );
        assert!(route(&remote, &[a(1)]).is_empty());
        // Epoch 4 was lost: unknown, everything goes to it.
        assert_eq!(remote.changes(7, 5, &[(false, a(2))]), Applied::Unknown(5));
        assert!(!remote.is_known(7));
        assert_eq!(route(&remote, &[a(5)]), [7]);
        // Its snapshot makes it known again.
        assert_eq!(remote.snapshot(7, 5, 0, 1, vec![a(5)]), Some(5));
        assert_eq!(route(&remote, &[a(5)]), [7]);
        assert!(route(&remote, &[a(2)]).is_empty());
    }

    #[test]
    fn a_snapshot_with_a_missing_part_is_not_installed() {
        let mut remote = Remote::default();
        remote.heard(7);
        assert_eq!(remote.snapshot(7, 3, 0, 3, vec![a(1)]), None);
        assert_eq!(remote.snapshot(7, 3, 2, 3, vec![a(2)]), None);
        assert!(!remote.is_known(7));
        assert_eq!(route(&remote, &[]), [7]);
    }

    #[test]
    fn routes_are_each_node_once_and_forgotten_nodes_get_nothing() {
        let mut remote = Remote::default();
        for node in [5, 9] {
            remote.heard(node);
            remote.snapshot(node, 1, 0, 1, vec![a(1), a(2)]);
        }
        assert_eq!(route(&remote, &[a(1), a(2)]), [5, 9]);
        remote.retain(&[9]);
        assert_eq!(route(&remote, &[a(1), a(2)]), [9]);
        remote.forget(9);
        assert!(route(&remote, &[a(1)]).is_empty());
        assert!(remote.is_empty());
        // Reset: unknown again, asked again.
        remote.heard(4);
        remote.snapshot(4, 1, 0, 1, vec![a(1)]);
        assert_eq!(remote.reset_all(), [4]);
        assert_eq!(route(&remote, &[a(3)]), [4]);
    }
}
