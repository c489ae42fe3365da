//! The index proper: groups of identical tag sets, filed by their rarest
//! tags.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use roaring::RoaringBitmap;
use smallvec::SmallVec;

use super::intern::Interner;
use super::members::Members;

/// Sorted, distinct tag ids.
type TagSet = SmallVec<[u32; 4]>;

/// Past this many candidate members, matches are merged in a bitmap rather
/// than sorted and deduplicated in a list.
const UNION_IN_BITMAP: usize = 4096;

/// A pair lookup (a hash probe, usually a cache miss) costs about this many
/// candidate checks (a subset test on a group already in cache).
const PAIR_LOOKUP_COST: usize = 4;

/// Marks "no such group" in `single`.
const NONE: u32 = u32::MAX;

/// The subscription index. See the module documentation.
#[derive(Default)]
pub struct Index {
    tags: Interner,
    groups: Vec<Option<Group>>,
    free_groups: Vec<u32>,
    by_tags: HashMap<TagSet, u32, RandomState>,
    /// By tag id: the groups whose rarest tag it is.
    by_key: Vec<RoaringBitmap>,
    /// By tag id: how many groups contained it when its groups were last
    /// re-keyed (see `rekey`).
    keyed_at: Vec<u32>,
    /// By tag id: the group of exactly that one tag, or `NONE`.
    single: Vec<u32>,
    /// Groups of two or more tags, by their two rarest tags (lower id first).
    by_pair: HashMap<(u32, u32), Members, RandomState>,
    /// By session id: the groups it belongs to.
    sessions: Vec<SmallVec<[u32; 2]>>,
    len: usize,
}

struct Group {
    tags: TagSet,
    /// The rarest tag, and the second rarest for groups of two or more.
    key: u32,
    pair: Option<(u32, u32)>,
    members: Members,
}

/// Reusable buffers for [`Index::matches`], so matching does not allocate
/// once they have grown.
#[derive(Default)]
pub struct MatchScratch {
    message: TagSet,
    pub(super) groups: Vec<u32>,
    /// Members of the matched groups, duplicates included.
    candidates: usize,
    union: RoaringBitmap,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// Adds `session`'s subscription to the tag set `tags` (order and
    /// duplicates do not matter). Returns `false`, changing nothing, when
    /// the session holds exactly that set already or `tags` is empty.
    pub fn subscribe<S: AsRef<str>>(&mut self, session: u32, tags: &[S]) -> bool {
        if tags.is_empty() {
            return false;
        }
        let group = match self.existing_group(tags) {
            Some(group) => group,
            None => self.create_group(tags),
        };
        let Some(Some(g)) = self.groups.get_mut(group as usize) else {
            return false;
        };
        if !g.members.insert(session) {
            return false;
        }
        let index = session as usize;
        if self.sessions.len() <= index {
            self.sessions.resize_with(index + 1, SmallVec::new);
        }
        self.sessions[index].push(group);
        self.len += 1;
        true
    }

    /// Removes exactly the tag set `tags` from `session`'s subscriptions;
    /// `false` if it held no such set.
    pub fn unsubscribe<S: AsRef<str>>(&mut self, session: u32, tags: &[S]) -> bool {
        let Some(group) = self.existing_group(tags) else {
            return false;
        };
        if !self.leave(session, group) {
            return false;
        }
        if let Some(held) = self.sessions.get_mut(session as usize) {
            held.retain(|g| *g != group);
        }
        true
    }

    /// Removes every subscription of `session`; returns how many there were.
    pub fn remove_session(&mut self, session: u32) -> usize {
        let Some(held) = self.sessions.get_mut(session as usize) else {
            return 0;
        };
        let held = std::mem::take(held);
        for &group in &held {
            self.leave(session, group);
        }
        held.len()
    }

    /// `session`'s subscriptions: each a sorted list of distinct tags, the
    /// list sorted.
    pub fn subscriptions(&self, session: u32) -> Vec<Vec<String>> {
        let Some(held) = self.sessions.get(session as usize) else {
            return Vec::new();
        };
        let mut out: Vec<Vec<String>> = held
            .iter()
            .filter_map(|&g| self.group(g))
            .map(|g| {
                let mut tags: Vec<String> = g
                    .tags
                    .iter()
                    .map(|&t| self.tags.name(t).to_string())
                    .collect();
                tags.sort();
                tags
            })
            .collect();
        out.sort();
        out
    }

    /// How many subscriptions `session` holds.
    pub fn held(&self, session: u32) -> usize {
        self.sessions.get(session as usize).map_or(0, |s| s.len())
    }

    /// Whether `session` holds exactly the tag set `tags`.
    pub fn holds<S: AsRef<str>>(&self, session: u32, tags: &[S]) -> bool {
        self.existing_group(tags)
            .and_then(|g| self.group(g))
            .is_some_and(|g| g.members.contains(session))
    }

    /// Subscriptions held, over all sessions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Distinct tags in use.
    pub fn tag_count(&self) -> usize {
        self.tags.len()
    }

    /// Finds the distinct tag sets subscribed to that are subsets of `tags`,
    /// leaving them in `scratch`; returns how many there are. This is the
    /// matching proper, and its cost follows the subscriptions that share
    /// the message's tags; [`Index::matches`] then expands the tag sets to
    /// sessions, at a cost that follows the number of receivers.
    ///
    /// Two exact ways to find them, the cheaper chosen per message: probe
    /// the pair index with every pair of the message's tags (plus the
    /// single-tag table), or scan the per-tag bitmaps of groups keyed on the
    /// message's tags and check each. Few tags favour the probes; a message
    /// with very many tags favours the scan.
    pub fn matching_tag_sets<S: AsRef<str>>(
        &self,
        tags: &[S],
        scratch: &mut MatchScratch,
    ) -> usize {
        // A tag nobody subscribed to cannot be needed by any subscription.
        self.prepare(tags, scratch);
        let m = scratch.message.len();
        let probes = m * m.saturating_sub(1) / 2 * PAIR_LOOKUP_COST;
        let scan: usize = scratch
            .message
            .iter()
            .map(|&t| self.by_key.get(t as usize).map_or(0, |b| b.len() as usize))
            .sum();
        if probes <= scan {
            self.probe_pairs(scratch);
        } else {
            self.scan_keys(scratch);
        }
        scratch.groups.len()
    }

    /// The message's known tag ids, sorted, into `scratch`.
    pub(super) fn prepare<S: AsRef<str>>(&self, tags: &[S], scratch: &mut MatchScratch) {
        scratch.message.clear();
        scratch
            .message
            .extend(tags.iter().filter_map(|t| self.tags.get(t.as_ref())));
        scratch.message.sort_unstable();
        scratch.message.dedup();
        scratch.groups.clear();
        scratch.candidates = 0;
    }

    pub(super) fn probe_pairs(&self, scratch: &mut MatchScratch) {
        let message = &scratch.message;
        for &t in message {
            let group = self.single.get(t as usize).copied().unwrap_or(NONE);
            if let Some(g) = self.group(group) {
                scratch.groups.push(group);
                scratch.candidates += g.members.len();
            }
        }
        for (i, &a) in message.iter().enumerate() {
            for &b in &message[i + 1..] {
                let Some(filed) = self.by_pair.get(&(a, b)) else {
                    continue;
                };
                filed.for_each(|group| {
                    if let Some(g) = self.group(group) {
                        if is_subset(&g.tags, message) {
                            scratch.groups.push(group);
                            scratch.candidates += g.members.len();
                        }
                    }
                });
            }
        }
    }

    pub(super) fn scan_keys(&self, scratch: &mut MatchScratch) {
        for &tag in &scratch.message {
            let Some(filed) = self.by_key.get(tag as usize) else {
                continue;
            };
            for group in filed {
                if let Some(g) = self.group(group) {
                    if is_subset(&g.tags, &scratch.message) {
                        scratch.groups.push(group);
                        scratch.candidates += g.members.len();
                    }
                }
            }
        }
    }

    /// Appends to `out` every session but `exclude` holding a subscription
    /// whose tags are all in `tags`, each session once, in no set order.
    pub fn matches<S: AsRef<str>>(
        &self,
        tags: &[S],
        exclude: Option<u32>,
        scratch: &mut MatchScratch,
        out: &mut Vec<u32>,
    ) {
        self.matching_tag_sets(tags, scratch);
        let groups = scratch.groups.iter().filter_map(|&g| self.group(g));
        match scratch.groups.len() {
            0 => {}
            // One group: its members are distinct already.
            1 => groups.for_each(|g| g.members.extend_into(out, exclude)),
            _ if scratch.candidates <= UNION_IN_BITMAP => {
                let start = out.len();
                groups.for_each(|g| g.members.extend_into(out, exclude));
                out[start..].sort_unstable();
                let mut kept = start;
                for i in start..out.len() {
                    if kept == start || out[kept - 1] != out[i] {
                        out[kept] = out[i];
                        kept += 1;
                    }
                }
                out.truncate(kept);
            }
            _ => {
                scratch.union.clear();
                groups.for_each(|g| g.members.union_into(&mut scratch.union));
                if let Some(id) = exclude {
                    scratch.union.remove(id);
                }
                out.extend(scratch.union.iter());
            }
        }
    }

    /// Approximate heap bytes held by the index.
    pub fn heap_bytes(&self) -> usize {
        let groups: usize = self
            .groups
            .iter()
            .flatten()
            .map(|g| {
                g.members.heap_bytes()
                    + if g.tags.spilled() {
                        g.tags.capacity() * 4
                    } else {
                        0
                    }
            })
            .sum();
        let map_entry = |key_value: usize| key_value + 1;
        let by_tags = self.by_tags.capacity() * map_entry(std::mem::size_of::<(TagSet, u32)>());
        let by_pair = self.by_pair.capacity()
            * map_entry(std::mem::size_of::<((u32, u32), Members)>())
            + self
                .by_pair
                .values()
                .map(Members::heap_bytes)
                .sum::<usize>();
        let by_key: usize = self
            .by_key
            .iter()
            .map(|b| b.serialized_size())
            .sum::<usize>()
            + self.by_key.capacity() * std::mem::size_of::<RoaringBitmap>();
        let sessions: usize = self.sessions.capacity() * std::mem::size_of::<SmallVec<[u32; 2]>>()
            + self
                .sessions
                .iter()
                .filter(|s| s.spilled())
                .map(|s| s.capacity() * 4)
                .sum::<usize>();
        groups
            + self.groups.capacity() * std::mem::size_of::<Option<Group>>()
            + self.free_groups.capacity() * 4
            + by_tags
            + by_pair
            + by_key
            + (self.keyed_at.capacity() + self.single.capacity()) * 4
            + sessions
            + self.tags.heap_bytes()
    }

    fn group(&self, id: u32) -> Option<&Group> {
        self.groups.get(id as usize).and_then(Option::as_ref)
    }

    /// The group of exactly this tag set, if one exists.
    fn existing_group<S: AsRef<str>>(&self, tags: &[S]) -> Option<u32> {
        let mut set = TagSet::new();
        for tag in tags {
            set.push(self.tags.get(tag.as_ref())?);
        }
        set.sort_unstable();
        set.dedup();
        self.by_tags.get(&set).copied()
    }

    /// `set`'s rarest tag and, for two or more tags, its second rarest
    /// (rarity: fewest groups containing it; ties: lowest id).
    fn keys(&self, set: &[u32]) -> (u32, Option<(u32, u32)>) {
        let rarity = |&t: &u32| (self.tags.groups_with(t), t);
        let mut ranked: SmallVec<[u32; 4]> = set.iter().copied().collect();
        ranked.sort_unstable_by_key(rarity);
        let first = ranked.first().copied().unwrap_or_default();
        let pair = ranked
            .get(1)
            .map(|&second| (first.min(second), first.max(second)));
        (first, pair)
    }

    fn create_group<S: AsRef<str>>(&mut self, tags: &[S]) -> u32 {
        let mut set: TagSet = tags.iter().map(|t| self.tags.intern(t.as_ref())).collect();
        set.sort_unstable();
        set.dedup();
        let (key, pair) = self.keys(&set);
        for &t in &set {
            self.tags.retain(t);
        }
        let ids = self.tags.capacity();
        if self.by_key.len() < ids {
            self.by_key.resize_with(ids, RoaringBitmap::new);
            self.keyed_at.resize(ids, 0);
            self.single.resize(ids, NONE);
        }
        let id = match self.free_groups.pop() {
            Some(id) => id,
            None => {
                self.groups.push(None);
                (self.groups.len() - 1) as u32
            }
        };
        self.by_key[key as usize].insert(id);
        match pair {
            Some(pair) => {
                self.by_pair.entry(pair).or_default().insert(id);
            }
            None => self.single[key as usize] = id,
        }
        self.by_tags.insert(set.clone(), id);
        self.groups[id as usize] = Some(Group {
            tags: set.clone(),
            key,
            pair,
            members: Members::default(),
        });
        for &t in &set {
            let count = self.tags.groups_with(t);
            if count >= 64 && count >= 2 * self.keyed_at[t as usize] {
                self.rekey(t);
            }
        }
        id
    }

    /// Refiles the groups keyed on `tag` under whichever of their tags are
    /// now the rarest. Which tags are rare is only known once many groups
    /// exist (the first ones are filed while every count is near zero), so
    /// this runs each time a tag's count has doubled: amortised O(1) per
    /// group created.
    fn rekey(&mut self, tag: u32) {
        self.keyed_at[tag as usize] = self.tags.groups_with(tag);
        let filed: Vec<u32> = self.by_key[tag as usize].iter().collect();
        for group in filed {
            let Some(Some(g)) = self.groups.get(group as usize) else {
                continue;
            };
            let (key, pair) = self.keys(&g.tags);
            let (old_key, old_pair) = (g.key, g.pair);
            if (key, pair) == (old_key, old_pair) {
                continue;
            }
            self.by_key[old_key as usize].remove(group);
            self.by_key[key as usize].insert(group);
            if let Some(old_pair) = old_pair {
                self.unfile_pair(old_pair, group);
            }
            if let Some(pair) = pair {
                self.by_pair.entry(pair).or_default().insert(group);
            }
            if let Some(Some(g)) = self.groups.get_mut(group as usize) {
                g.key = key;
                g.pair = pair;
            }
        }
    }

    fn unfile_pair(&mut self, pair: (u32, u32), group: u32) {
        if let Some(filed) = self.by_pair.get_mut(&pair) {
            filed.remove(group);
            if filed.is_empty() {
                self.by_pair.remove(&pair);
            }
        }
    }

    /// Takes `session` out of `group`, dropping the group when it empties.
    fn leave(&mut self, session: u32, group: u32) -> bool {
        let Some(Some(g)) = self.groups.get_mut(group as usize) else {
            return false;
        };
        if !g.members.remove(session) {
            return false;
        }
        self.len -= 1;
        if !g.members.is_empty() {
            return true;
        }
        if let Some(g) = self.groups[group as usize].take() {
            self.by_tags.remove(&g.tags);
            self.by_key[g.key as usize].remove(group);
            match g.pair {
                Some(pair) => self.unfile_pair(pair, group),
                None => self.single[g.key as usize] = NONE,
            }
            for &t in &g.tags {
                self.tags.release(t);
                if self.tags.groups_with(t) == 0 {
                    self.keyed_at[t as usize] = 0;
                }
            }
            self.free_groups.push(group);
        }
        true
    }
}

/// Whether every id of sorted `small` is in sorted `large`.
///
/// Galloping: each id of `small` is looked for by doubling steps then a
/// binary search in what is left of `large`, so the cost is
/// O(|small| · log(|large| / |small|)) rather than O(|large|). A scan would
/// make a message of many tags against many one-tag subscriptions cost the
/// product of the two (100,000 × 100,000 in the worst case a client can
/// build), all of it under the router's lock.
fn is_subset(small: &[u32], large: &[u32]) -> bool {
    if small.len() > large.len() {
        return false;
    }
    let mut rest = large;
    for &t in small {
        // Find the first position whose id is >= t by galloping.
        let mut bound = 1;
        while bound < rest.len() && rest[bound] < t {
            bound *= 2;
        }
        let window = &rest[..rest.len().min(bound + 1)];
        let at = window.partition_point(|&l| l < t);
        match rest.get(at) {
            Some(&found) if found == t => rest = &rest[at + 1..],
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod subset_tests {
    use super::is_subset;
    use proptest::prelude::*;

    fn naive(small: &[u32], large: &[u32]) -> bool {
        small.iter().all(|t| large.contains(t))
    }

    proptest! {
        #[test]
        fn galloping_agrees_with_the_definition(
            small in prop::collection::btree_set(0u32..64, 0..8),
            large in prop::collection::btree_set(0u32..64, 0..40),
        ) {
            let small: Vec<u32> = small.into_iter().collect();
            let large: Vec<u32> = large.into_iter().collect();
            prop_assert_eq!(is_subset(&small, &large), naive(&small, &large));
        }
    }

    #[test]
    fn edges() {
        assert!(is_subset(&[], &[]));
        assert!(is_subset(&[], &[1]));
        assert!(!is_subset(&[1], &[]));
        assert!(is_subset(&[5], &[1, 2, 3, 4, 5]));
        assert!(!is_subset(&[6], &[1, 2, 3, 4, 5]));
        assert!(is_subset(&[1, 5], &[1, 2, 3, 4, 5]));
    }
}
