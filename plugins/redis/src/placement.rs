//! Which Redis instance carries a channel's publishes, when the URI names
//! several: rendezvous (highest random weight) hashing of the channel name
//! over the instances usable now.
//!
//! Every channel has a fixed preference order over all instances (by a
//! hash of the instance's `host:port` and the channel name); it goes to the
//! first usable one. So one channel's payloads go through one instance
//! while it is up (in order, on one connection); the instances share the
//! channels evenly; and when one instance fails, only its own channels move
//! (each to its next preference), and they move back when it returns. The
//! hash is fixed (FNV-1a, then a 64-bit finaliser), not std's randomly keyed
//! one: every node, and every run, places a channel alike.

/// FNV-1a over `bytes`, from `state`.
fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state
}

/// The finaliser of SplitMix64: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The instances, by name, with their hash state precomputed.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    /// FNV state after each instance's name and a separator.
    seeds: Vec<u64>,
}

impl Placement {
    /// `names` are the instances' `host:port`, in the URI's order.
    pub(crate) fn new<S: AsRef<str>>(names: &[S]) -> Placement {
        Placement {
            seeds: names
                .iter()
                .map(|n| fnv1a(fnv1a(FNV_OFFSET, n.as_ref().as_bytes()), &[0xff]))
                .collect(),
        }
    }

    /// The weight of `channel` on instance `index`.
    fn weight(&self, index: usize, channel: &str) -> u64 {
        self.seeds
            .get(index)
            .map_or(0, |seed| mix(fnv1a(*seed, channel.as_bytes())))
    }

    /// The instance among `usable` (indices, in any order) that carries
    /// `channel`; `None` when none is usable. Ties (a 2^-64 chance) go to
    /// the lower index.
    pub(crate) fn place(&self, channel: &str, usable: &[usize]) -> Option<usize> {
        match usable {
            [] => None,
            [only] => Some(*only),
            _ => usable
                .iter()
                .map(|&i| (self.weight(i, channel), std::cmp::Reverse(i)))
                .max()
                .map(|(_, std::cmp::Reverse(i))| i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:6379")).collect()
    }

    fn channels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("mist.t.{i:032x}")).collect()
    }

    #[test]
    fn stable_across_builds_and_orders() {
        let p = Placement::new(&names(3));
        // Fixed values: a change of the hash would move every node's
        // channels at an upgrade, and is caught here.
        let chosen: Vec<Option<usize>> = ["mist.control", "mist.t.0", "a", ""]
            .iter()
            .map(|c| p.place(c, &[0, 1, 2]))
            .collect();
        let again: Vec<Option<usize>> = ["mist.control", "mist.t.0", "a", ""]
            .iter()
            .map(|c| Placement::new(&names(3)).place(c, &[2, 0, 1]))
            .collect();
        assert_eq!(chosen, again);
        // The same instances named in another order place alike.
        let mut reversed = names(3);
        reversed.reverse();
        let q = Placement::new(&reversed);
        for c in channels(200) {
            let here = p.place(&c, &[0, 1, 2]).unwrap();
            let there = q.place(&c, &[0, 1, 2]).unwrap();
            assert_eq!(names(3)[here], reversed[there], "{c}");
        }
    }

    #[test]
    fn one_instance_takes_everything_and_none_takes_nothing() {
        let p = Placement::new(&names(1));
        assert_eq!(p.place("x", &[0]), Some(0));
        assert_eq!(Placement::new(&names(3)).place("x", &[]), None);
        assert_eq!(Placement::new(&names(3)).place("x", &[2]), Some(2));
    }

    #[test]
    fn spreads_evenly() {
        for n in 2..=5 {
            let p = Placement::new(&names(n));
            let all: Vec<usize> = (0..n).collect();
            let mut counts = vec![0usize; n];
            let total = 20_000;
            for c in channels(total) {
                counts[p.place(&c, &all).unwrap()] += 1;
            }
            let fair = total / n;
            for (i, count) in counts.iter().enumerate() {
                assert!(
                    count.abs_diff(fair) < fair / 10,
                    "{n} instances: instance {i} has {count} of {total}: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn only_the_dead_instances_channels_move_and_they_come_back() {
        let p = Placement::new(&names(4));
        let all = [0, 1, 2, 3];
        for dead in 0..4 {
            let alive: Vec<usize> = all.iter().copied().filter(|&i| i != dead).collect();
            let mut moved = 0;
            for c in channels(4000) {
                let before = p.place(&c, &all).unwrap();
                let after = p.place(&c, &alive).unwrap();
                if before == dead {
                    assert_ne!(after, dead);
                    moved += 1;
                } else {
                    assert_eq!(before, after, "{c} moved though its instance lives");
                }
                assert_eq!(
                    p.place(&c, &all).unwrap(),
                    before,
                    "{c} came back elsewhere"
                );
            }
            // About a quarter moved, spread over the three others.
            assert!((800..1200).contains(&moved), "{moved}");
        }
    }
}
