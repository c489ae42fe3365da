//! Which tag sets this node announces: every distinct tag set held by a
//! local subscription, once however many sessions hold it. The other nodes
//! match each publish against the sets each node announced
//! ([`super::remote`]), as NATS routes match subjects against a route's
//! interest, so a node receives exactly the messages one of its
//! subscriptions matches.
//!
//! Tag sets are reference-counted (several local sessions may hold one).
//! When a set's count drops to zero it *lingers* for a while before its
//! withdrawal is announced, so that a client that unsubscribes and
//! subscribes again (or many short-lived subscriptions on one set) do not
//! churn the announcements.
//!
//! This is state only, no I/O: callers act on what it returns.

use std::collections::HashMap;

/// A tag set in canonical form: sorted, without duplicates.
pub type TagSet = Box<[String]>;

/// `tags` in canonical form.
pub fn canonical<S: AsRef<str>>(tags: &[S]) -> TagSet {
    let mut set: Vec<String> = tags.iter().map(|t| t.as_ref().to_string()).collect();
    set.sort_unstable();
    set.dedup();
    set.into_boxed_slice()
}

/// One announced tag set.
pub struct Held<C> {
    count: usize,
    /// Set while no session holds it: the generation its linger started at.
    lingering: Option<u64>,
    /// What the caller attached when it was announced (its confirmation).
    pub attached: C,
}

/// What [`Interest::add`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// Announced already (another session holds it).
    Held,
    /// Announced and lingering: taken back, nothing to announce.
    Revived,
    /// New: announce it.
    New,
}

/// The tag sets this node's sessions hold.
pub struct Interest<C> {
    sets: HashMap<TagSet, Held<C>>,
    generation: u64,
}

impl<C> Default for Interest<C> {
    fn default() -> Self {
        Interest {
            sets: HashMap::new(),
            generation: 0,
        }
    }
}

impl<C> Interest<C> {
    /// A session now holds `set`; `attach` is called for a new set.
    pub fn add(&mut self, set: TagSet, attach: impl FnOnce(&TagSet) -> C) -> Added {
        if let Some(held) = self.sets.get_mut(&set) {
            held.count += 1;
            return if held.lingering.take().is_some() {
                Added::Revived
            } else {
                Added::Held
            };
        }
        let attached = attach(&set);
        self.sets.insert(
            set,
            Held {
                count: 1,
                lingering: None,
                attached,
            },
        );
        Added::New
    }

    /// A session no longer holds `set`. Returns the generation of the
    /// linger when it was the last: call [`Interest::reap`] with it once
    /// the linger is over.
    pub fn remove(&mut self, set: &[String]) -> Option<u64> {
        let held = self.sets.get_mut(set)?;
        if held.count == 0 {
            return None;
        }
        held.count -= 1;
        if held.count > 0 {
            return None;
        }
        self.generation += 1;
        held.lingering = Some(self.generation);
        Some(self.generation)
    }

    /// Forgets `set` if it is still lingering from `generation` (not taken
    /// back meanwhile); returns whether it did (announce the withdrawal).
    pub fn reap(&mut self, set: &[String], generation: u64) -> bool {
        let still = matches!(
            self.sets.get(set),
            Some(Held { lingering: Some(g), .. }) if *g == generation
        );
        if still {
            self.sets.remove(set);
        }
        still
    }

    /// The announced set `set`, if it is.
    pub fn get(&self, set: &[String]) -> Option<&Held<C>> {
        self.sets.get(set)
    }

    /// Every set announced (lingering ones included).
    pub fn sets(&self) -> impl Iterator<Item = &TagSet> {
        self.sets.keys()
    }

    /// How many sets are announced.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sets_sort_and_dedupe() {
        assert_eq!(
            &*canonical(&["b", "a", "b"]),
            &["a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn reference_counts_and_linger() {
        let mut interest: Interest<u32> = Interest::default();
        let mut attached = 0;
        let mut attach = |_: &TagSet| {
            attached += 1;
            attached
        };
        assert_eq!(
            interest.add(canonical(&["a", "b"]), &mut attach),
            Added::New
        );
        assert_eq!(
            interest.add(canonical(&["b", "a"]), &mut attach),
            Added::Held
        );
        assert_eq!(interest.get(&canonical(&["a", "b"])).unwrap().attached, 1);
        let set = canonical(&["a", "b"]);
        assert_eq!(interest.remove(&set), None, "one holder left");
        let generation = interest.remove(&set).expect("the last holder left");
        assert_eq!(interest.remove(&set), None, "not held at all");
        // Taken back within the linger: nothing to announce, not reaped.
        assert_eq!(interest.add(set.clone(), &mut attach), Added::Revived);
        assert!(!interest.reap(&set, generation));
        let generation = interest.remove(&set).unwrap();
        assert!(interest.reap(&set, generation));
        assert!(interest.is_empty());
        assert_eq!(interest.add(set, &mut attach), Added::New);
        assert_eq!(attached, 2);
        assert_eq!(interest.sets().count(), 1);
    }
}
