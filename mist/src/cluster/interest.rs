//! Which anchors this node announces, and why: every distinct tag set held
//! by a local subscription has an *anchor*, one of its own tags, and the
//! node announces each anchor to the other nodes ([`super::remote`]).
//!
//! A publish of tag set T goes to every node that announced a tag in T; a
//! subscription S matches only when S ⊆ T, so its anchor a(S) ∈ T, and the
//! node holding S is reached. Tag sets are reference-counted (several local
//! sessions may hold one), anchors too (several tag sets may share one;
//! they are kept by their [`super::channel::Channels::tag`] name). When an
//! anchor's count drops to zero it *lingers* for a while before its
//! withdrawal is announced, so that a client that unsubscribes and
//! subscribes again (or many short-lived subscriptions on one tag) do not
//! churn the announcements.
//!
//! The anchor is chosen to keep the traffic a node receives small:
//!
//! 1. a tag the node announced already (or that still lingers): no new
//!    announcement, no new traffic;
//! 2. otherwise the tag seen least often in publishes through this node (a
//!    count-min sketch of the tags of local publishes and received
//!    messages), then the longer tag, then the smaller one.
//!
//! An anchor is kept for the life of its tag set, even when a cheaper one
//! appears later (re-anchoring would need a new confirmation).
//!
//! This is state only, no I/O: callers act on what it returns.

use std::collections::HashMap;

use super::channel::{tag_hash, Channels, TagHash};

/// A tag set: sorted, without duplicates.
pub type TagSet = Box<[String]>;

/// The canonical form of `tags`.
pub fn canonical<S: AsRef<str>>(tags: &[S]) -> TagSet {
    let mut set: Vec<String> = tags.iter().map(|t| t.as_ref().to_string()).collect();
    set.sort_unstable();
    set.dedup();
    set.into_boxed_slice()
}

struct SetEntry {
    count: usize,
    channel: String,
}

/// One channel this node holds or lets linger.
pub struct Channel<C> {
    refs: usize,
    /// Set while the channel lingers: the generation its reaping must match.
    lingering: Option<u64>,
    /// What the caller attached when it subscribed (the confirmation).
    pub attached: C,
}

/// What adding a tag set did.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// The set was held already, or its anchor's channel was subscribed.
    Held { channel: String },
    /// A lingering channel was taken back into use.
    Revived { channel: String },
    /// A channel that must now be subscribed.
    New { channel: String },
}

/// The node's interest: tag sets, anchors, channels. `C` is what the caller
/// keeps per channel (its confirmation).
pub struct Interest<C> {
    sets: HashMap<TagSet, SetEntry>,
    channels: HashMap<String, Channel<C>>,
    generation: u64,
}

impl<C> Default for Interest<C> {
    fn default() -> Self {
        Interest {
            sets: HashMap::new(),
            channels: HashMap::new(),
            generation: 0,
        }
    }
}

impl<C> Interest<C> {
    /// Adds one holder of `set`. A new channel gets `attach()` as its
    /// attachment.
    pub fn add(
        &mut self,
        set: TagSet,
        names: &Channels,
        sketch: &Sketch,
        attach: impl FnOnce(&str) -> C,
    ) -> Added {
        if let Some(entry) = self.sets.get_mut(&set) {
            entry.count += 1;
            return Added::Held {
                channel: entry.channel.clone(),
            };
        }
        let channel = self.anchor(&set, names, sketch);
        self.sets.insert(
            set,
            SetEntry {
                count: 1,
                channel: channel.clone(),
            },
        );
        match self.channels.get_mut(&channel) {
            Some(held) => {
                held.refs += 1;
                if held.lingering.take().is_some() {
                    Added::Revived { channel }
                } else {
                    Added::Held { channel }
                }
            }
            None => {
                let attached = attach(&channel);
                self.channels.insert(
                    channel.clone(),
                    Channel {
                        refs: 1,
                        lingering: None,
                        attached,
                    },
                );
                Added::New { channel }
            }
        }
    }

    /// Removes one holder of `set`. When that left its channel unused,
    /// returns the channel and the generation to reap it with after the
    /// linger.
    pub fn remove(&mut self, set: &[String]) -> Option<(String, u64)> {
        let entry = self.sets.get_mut(set)?;
        entry.count -= 1;
        if entry.count > 0 {
            return None;
        }
        let channel = self.sets.remove(set)?.channel;
        let held = self.channels.get_mut(&channel)?;
        held.refs -= 1;
        if held.refs > 0 {
            return None;
        }
        self.generation += 1;
        held.lingering = Some(self.generation);
        Some((channel, self.generation))
    }

    /// The linger of `channel` (generation `generation`) is over: true when
    /// it is still unused and must be unsubscribed now (it is forgotten).
    pub fn reap(&mut self, channel: &str, generation: u64) -> bool {
        let still = matches!(
            self.channels.get(channel),
            Some(Channel { lingering: Some(g), .. }) if *g == generation
        );
        if still {
            self.channels.remove(channel);
        }
        still
    }

    /// The channel of `channel`, if held or lingering.
    pub fn channel(&self, channel: &str) -> Option<&Channel<C>> {
        self.channels.get(channel)
    }

    /// The channel `set`'s holders are anchored on.
    pub fn anchor_of(&self, set: &[String]) -> Option<&str> {
        self.sets.get(set).map(|e| e.channel.as_str())
    }

    /// Channels held or lingering.
    /// Every channel held (lingering ones included): the anchors this node
    /// announces.
    pub fn channel_names(&self) -> impl Iterator<Item = &str> {
        self.channels.keys().map(String::as_str)
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Distinct tag sets held.
    pub fn set_count(&self) -> usize {
        self.sets.len()
    }

    fn anchor(&self, set: &[String], names: &Channels, sketch: &Sketch) -> String {
        let hashes: Vec<(TagHash, String)> = set
            .iter()
            .map(|tag| {
                let hash = tag_hash(tag);
                (hash, names.hashed(&hash))
            })
            .collect();
        // 1. A channel already held (most used first), or lingering.
        let held = hashes
            .iter()
            .filter_map(|(_, channel)| {
                let held = self.channels.get(channel)?;
                Some((held.refs, channel))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)));
        if let Some((_, channel)) = held {
            return channel.clone();
        }
        // 2. The rarest tag in this node's publishes, then the longest.
        let mut best: Option<(u32, usize, &String, &String)> = None;
        for ((hash, channel), tag) in hashes.iter().zip(set) {
            let seen = sketch.estimate(hash);
            let better = match best {
                None => true,
                Some((b_seen, b_len, b_tag, _)) => {
                    (seen, std::cmp::Reverse(tag.len()), tag)
                        < (b_seen, std::cmp::Reverse(b_len), b_tag)
                }
            };
            if better {
                best = Some((seen, tag.len(), tag, channel));
            }
        }
        best.map(|(_, _, _, channel)| channel.clone())
            .unwrap_or_else(|| names.tag(""))
    }
}

/// How often tags appear in publishes: a count-min sketch, 4 rows of 1024
/// counters (16 KiB), every counter halved every 65,536 counted appearances so that
/// old traffic fades. Estimates are never below the true (decayed) count.
pub struct Sketch {
    rows: Box<[[u32; WIDTH]; DEPTH]>,
    additions: u32,
}

const DEPTH: usize = 4;
const WIDTH: usize = 1024;
const HALVE_EVERY: u32 = 65_536;

impl Default for Sketch {
    fn default() -> Self {
        Sketch {
            rows: Box::new([[0; WIDTH]; DEPTH]),
            additions: 0,
        }
    }
}

impl Sketch {
    fn slots(hash: &TagHash) -> [usize; DEPTH] {
        let mut slots = [0; DEPTH];
        for (row, slot) in slots.iter_mut().enumerate() {
            let bytes = [
                hash[row * 4],
                hash[row * 4 + 1],
                hash[row * 4 + 2],
                hash[row * 4 + 3],
            ];
            *slot = u32::from_le_bytes(bytes) as usize % WIDTH;
        }
        slots
    }

    /// Counts `n` appearances of the tag with `hash`.
    pub fn add(&mut self, hash: &TagHash, n: u32) {
        for (row, slot) in Self::slots(hash).into_iter().enumerate() {
            self.rows[row][slot] = self.rows[row][slot].saturating_add(n);
        }
        self.additions = self.additions.saturating_add(n);
        if self.additions >= HALVE_EVERY {
            self.additions = 0;
            for row in self.rows.iter_mut() {
                for counter in row.iter_mut() {
                    *counter /= 2;
                }
            }
        }
    }

    /// About how often the tag with `hash` appeared.
    pub fn estimate(&self, hash: &TagHash) -> u32 {
        Self::slots(hash)
            .into_iter()
            .enumerate()
            .map(|(row, slot)| self.rows[row][slot])
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(tags: &[&str]) -> TagSet {
        canonical(tags)
    }

    fn names() -> Channels {
        Channels::new("t").unwrap()
    }

    #[test]
    fn canonical_sets_sort_and_dedupe() {
        assert_eq!(
            &*canonical(&["b", "a", "b"]),
            &["a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn reference_counts_and_linger() {
        let names = names();
        let sketch = Sketch::default();
        let mut interest: Interest<()> = Interest::default();
        let a = names.tag("a");
        assert_eq!(
            interest.add(set(&["a"]), &names, &sketch, |_| ()),
            Added::New { channel: a.clone() }
        );
        // A second holder of the same set, and another set anchored on "a".
        assert_eq!(
            interest.add(set(&["a"]), &names, &sketch, |_| ()),
            Added::Held { channel: a.clone() }
        );
        assert_eq!(
            interest.add(set(&["a", "b"]), &names, &sketch, |_| ()),
            Added::Held { channel: a.clone() }
        );
        assert_eq!(interest.remove(&set(&["a"])), None);
        assert_eq!(interest.remove(&set(&["a"])), None);
        let (channel, generation) = interest.remove(&set(&["b", "a"])).unwrap();
        assert_eq!(channel, a);
        // Taken back while lingering: the old reaping does nothing.
        assert_eq!(
            interest.add(set(&["a"]), &names, &sketch, |_| ()),
            Added::Revived { channel: a.clone() }
        );
        assert!(!interest.reap(&a, generation));
        let (_, generation) = interest.remove(&set(&["a"])).unwrap();
        assert!(interest.reap(&a, generation));
        assert_eq!(interest.channel_count(), 0);
        // Removing what is not held changes nothing.
        assert_eq!(interest.remove(&set(&["zzz"])), None);
    }

    #[test]
    fn anchors_prefer_held_channels_then_rare_tags() {
        let names = names();
        let mut sketch = Sketch::default();
        for _ in 0..100 {
            sketch.add(&tag_hash("news"), 1);
        }
        sketch.add(&tag_hash("user:42"), 1);
        let mut interest: Interest<()> = Interest::default();
        // "user:42" is rarer than "news".
        interest.add(set(&["news", "user:42"]), &names, &sketch, |_| ());
        assert_eq!(
            interest.anchor_of(&set(&["news", "user:42"])),
            Some(names.tag("user:42").as_str())
        );
        // Unseen tags: the longer one.
        interest.add(set(&["ab", "abcd"]), &names, &sketch, |_| ());
        assert_eq!(
            interest.anchor_of(&set(&["ab", "abcd"])),
            Some(names.tag("abcd").as_str())
        );
        // A set containing a held channel's tag reuses it, rare or not.
        interest.add(set(&["news"]), &names, &sketch, |_| ());
        let added = interest.add(set(&["news", "zebra-rare"]), &names, &sketch, |_| ());
        assert_eq!(
            added,
            Added::Held {
                channel: names.tag("news")
            }
        );
        // Every anchor is a tag of its set.
        for tags in [
            &["news", "user:42"][..],
            &["ab", "abcd"],
            &["news", "zebra-rare"],
        ] {
            let anchor = interest.anchor_of(&set(tags)).unwrap();
            assert!(tags.iter().any(|t| names.tag(t) == anchor));
        }
    }

    #[test]
    fn the_sketch_overestimates_only_and_fades() {
        let mut sketch = Sketch::default();
        for i in 0..2000 {
            sketch.add(&tag_hash(&format!("tag{}", i % 50)), 1);
        }
        for i in 0..50 {
            assert!(sketch.estimate(&tag_hash(&format!("tag{i}"))) >= 40);
        }
        sketch.add(&tag_hash("flood"), HALVE_EVERY);
        assert!(sketch.estimate(&tag_hash("tag0")) <= 40 / 2 + 40);
        assert!(sketch.estimate(&tag_hash("flood")) >= HALVE_EVERY / 2);
    }
}
