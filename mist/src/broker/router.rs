//! Who is connected and who subscribed to what: the one place publishes
//! are matched. Guarded by one `RwLock` in [`super::shared::Shared`]; a publishing
//! session holds it shared from its first match until its deliveries are
//! queued (see `batch`), only (un)subscribing, connecting and revoking take
//! it exclusively, and nothing is held across a write to a socket.
//!
//! A session is known by a [`SessionId`]: a slot index, reused so the
//! index's bitmaps stay dense, and a generation that changes every time the
//! slot is given to a new session. Every operation names the full id and is
//! refused when the generation does not match, so a step still in flight
//! for a closed connection can never act on the next connection that gets
//! its slot.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cluster::{Cluster, Confirmation};
use crate::tags::{Index, MatchScratch};

use super::id::SessionId;
use super::output::Output;

/// Why a subscription was not added.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SubscribeError {
    /// The session is closed: its id is stale.
    Gone,
    /// The session holds as many subscriptions as it may.
    TooMany { limit: usize },
}

/// A subscription the router took.
pub(crate) struct Added {
    /// The session did not hold that set already. (Only the tests read it:
    /// the callers need only the confirmation, but the router's contract
    /// is checked through it.)
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) new: bool,
    /// In a cluster, when the set needed a backplane subscription not yet
    /// confirmed: the session's next command waits for it (the ping
    /// barrier holds across nodes).
    pub(crate) confirmation: Option<Confirmation>,
}

pub(crate) struct Router {
    index: Index,
    /// This node's cluster, if any. Every change to the subscriptions is
    /// passed on to it here, under the router's write lock, so the
    /// cluster's reference counts change in the same order as the index.
    cluster: Option<Cluster>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    open: usize,
    /// Open sessions per listener scheme, kept up to date so that reading
    /// the figures never scans the sessions.
    per_listener: BTreeMap<Arc<str>, u64>,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    session: Option<Entry>,
}

struct Entry {
    output: Arc<Output>,
    listener: Arc<str>,
}

impl Router {
    pub(crate) fn new() -> Self {
        Router {
            index: Index::new(),
            cluster: None,
            slots: Vec::new(),
            free: Vec::new(),
            open: 0,
            per_listener: BTreeMap::new(),
        }
    }

    /// Passes every subscription change from now on to `cluster`. Set at
    /// start-up, before any session exists.
    pub(crate) fn set_cluster(&mut self, cluster: Cluster) {
        self.cluster = Some(cluster);
    }

    /// This node's cluster, if any.
    pub(crate) fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// Registers a session; `make` receives its id and builds its output.
    pub(crate) fn add_session(
        &mut self,
        listener: &str,
        make: impl FnOnce(SessionId) -> Arc<Output>,
    ) -> (SessionId, Arc<Output>) {
        // One name per listener, shared by its sessions, not one each.
        let listener = match self.per_listener.get_key_value(listener) {
            Some((name, _)) => name.clone(),
            None => Arc::from(listener),
        };
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        let id = SessionId {
            index,
            generation: slot.generation,
        };
        let output = make(id);
        slot.session = Some(Entry {
            output: output.clone(),
            listener: listener.clone(),
        });
        self.open += 1;
        *self.per_listener.entry(listener).or_insert(0) += 1;
        (id, output)
    }

    fn entry(&self, id: SessionId) -> Option<&Entry> {
        let slot = self.slots.get(id.index as usize)?;
        (slot.generation == id.generation)
            .then_some(slot.session.as_ref())
            .flatten()
    }

    /// Whether `id` is an open session.
    pub(crate) fn is_open(&self, id: SessionId) -> bool {
        self.entry(id).is_some()
    }

    /// The output queue of open session `id`.
    pub(crate) fn output(&self, id: SessionId) -> Option<&Arc<Output>> {
        self.entry(id).map(|e| &e.output)
    }

    /// Forgets a session and all its subscriptions; its slot's next
    /// session gets a new generation. `false` if `id` was not open.
    pub(crate) fn remove_session(&mut self, id: SessionId) -> bool {
        if self.entry(id).is_none() {
            return false;
        }
        let slot = &mut self.slots[id.index as usize];
        let Some(entry) = slot.session.take() else {
            return false;
        };
        slot.generation = slot.generation.wrapping_add(1);
        if let Some(cluster) = &self.cluster {
            // Only in a cluster: listing the session's sets costs a walk of them.
            for set in self.index.subscriptions(id.index) {
                cluster.unsubscribe(&set);
            }
        }
        self.index.remove_session(id.index);
        self.free.push(id.index);
        self.open -= 1;
        if let Some(count) = self.per_listener.get_mut(&entry.listener) {
            *count -= 1;
            if *count == 0 {
                self.per_listener.remove(&entry.listener);
            }
        }
        true
    }

    /// Adds a subscription. Not `new` when the session holds that exact
    /// set already (not an error, and not counted against the limit).
    pub(crate) fn subscribe<S: AsRef<str>>(
        &mut self,
        id: SessionId,
        tags: &[S],
        limit: usize,
    ) -> Result<Added, SubscribeError> {
        if self.entry(id).is_none() {
            return Err(SubscribeError::Gone);
        }
        if self.index.held(id.index) >= limit && !self.index.holds(id.index, tags) {
            return Err(SubscribeError::TooMany { limit });
        }
        let new = self.index.subscribe(id.index, tags);
        let confirmation = match &self.cluster {
            Some(cluster) if new => cluster.subscribe(tags),
            _ => None,
        };
        Ok(Added { new, confirmation })
    }

    /// Removes exactly the set `tags`; `false` if it was not held (or the
    /// session is gone).
    pub(crate) fn unsubscribe<S: AsRef<str>>(&mut self, id: SessionId, tags: &[S]) -> bool {
        let removed = self.entry(id).is_some() && self.index.unsubscribe(id.index, tags);
        if let (true, Some(cluster)) = (removed, &self.cluster) {
            cluster.unsubscribe(tags);
        }
        removed
    }

    /// The session's subscriptions, sorted (see [`Index::subscriptions`]).
    pub(crate) fn subscriptions(&self, id: SessionId) -> Vec<Vec<String>> {
        if self.entry(id).is_none() {
            return Vec::new();
        }
        self.index.subscriptions(id.index)
    }

    /// Removes every subscription of `id` for which `keep` says no, and
    /// returns the removed sets (sorted tags).
    pub(crate) fn prune(
        &mut self,
        id: SessionId,
        keep: impl Fn(&[String]) -> bool,
    ) -> Vec<Vec<String>> {
        let removed: Vec<Vec<String>> = self
            .subscriptions(id)
            .into_iter()
            .filter(|set| !keep(set))
            .collect();
        for set in &removed {
            self.index.unsubscribe(id.index, set);
            if let Some(cluster) = &self.cluster {
                cluster.unsubscribe(set);
            }
        }
        removed
    }

    /// Appends the slot of every session a message tagged `tags` goes to,
    /// but `exclude`; [`Router::output_at`] turns a slot into its queue
    /// while this lock is held.
    pub(crate) fn route<S: AsRef<str>>(
        &self,
        tags: &[S],
        exclude: Option<SessionId>,
        scratch: &mut RouteScratch,
        targets: &mut Vec<u32>,
    ) {
        let exclude = exclude.map(|id| id.index);
        self.index
            .matches(tags, exclude, &mut scratch.matcher, targets);
    }

    /// The queue of the session in slot `index`, if one is open there.
    pub(crate) fn output_at(&self, index: u32) -> Option<&Output> {
        self.slots
            .get(index as usize)
            .and_then(|s| s.session.as_ref())
            .map(|s| &*s.output)
    }

    pub(crate) fn open_sessions(&self) -> usize {
        self.open
    }

    pub(crate) fn subscription_count(&self) -> usize {
        self.index.len()
    }

    /// Open sessions per listener scheme.
    pub(crate) fn per_listener(&self) -> BTreeMap<String, u64> {
        self.per_listener
            .iter()
            .map(|(listener, &n)| (listener.to_string(), n))
            .collect()
    }
}

/// Reusable buffers for routing, so a publish does not allocate.
#[derive(Default)]
pub(crate) struct RouteScratch {
    matcher: MatchScratch,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::output::tests::output;

    fn open(router: &mut Router, listener: &str) -> SessionId {
        router
            .add_session(listener, |id| Arc::new(output(id, 1 << 20).0))
            .0
    }

    #[test]
    fn a_reused_slot_gets_a_new_identity_and_the_old_one_is_refused() {
        let mut router = Router::new();
        let first = open(&mut router, "tcp");
        assert!(router.remove_session(first));
        let second = open(&mut router, "tcp");
        assert_eq!(first.index, second.index, "the slot is reused");
        assert_ne!(first, second);
        assert_eq!(
            router.subscribe(first, &["secret"], 10).map(|a| a.new),
            Err(SubscribeError::Gone),
            "a stale id cannot subscribe on behalf of the slot's new session"
        );
        assert!(!router.remove_session(first));
        assert!(router.is_open(second));
        assert!(router.subscriptions(second).is_empty());
        assert_eq!(SessionId::from_u64(second.to_u64()), second);
    }

    #[test]
    fn subscriptions_per_session_are_capped_but_repeats_are_free() {
        let mut router = Router::new();
        let id = open(&mut router, "tcp");
        let mut subscribe = |tags: &[&str]| router.subscribe(id, tags, 2).map(|a| a.new);
        assert_eq!(subscribe(&["a"]), Ok(true));
        assert_eq!(subscribe(&["b"]), Ok(true));
        assert_eq!(subscribe(&["a"]), Ok(false));
        assert_eq!(subscribe(&["c"]), Err(SubscribeError::TooMany { limit: 2 }));
        assert!(router.unsubscribe(id, &["a"]));
        assert_eq!(router.subscribe(id, &["c"], 2).map(|a| a.new), Ok(true));
    }

    #[test]
    fn pruning_removes_only_what_is_no_longer_allowed() {
        let mut router = Router::new();
        let id = open(&mut router, "tcp");
        for set in [&["a"][..], &["a", "b"], &["c"]] {
            router.subscribe(id, set, 10).expect("subscribe");
        }
        let removed = router.prune(id, |set| !set.iter().any(|t| t == "a"));
        assert_eq!(removed, [vec!["a"], vec!["a", "b"]]);
        assert_eq!(router.subscriptions(id), [vec!["c"]]);
    }

    #[test]
    fn per_listener_counts_follow_opens_and_closes() {
        let mut router = Router::new();
        let a = open(&mut router, "tcp");
        let _b = open(&mut router, "tcp");
        let _c = open(&mut router, "ws");
        router.remove_session(a);
        let counts = router.per_listener();
        assert_eq!(counts.get("tcp"), Some(&1));
        assert_eq!(counts.get("ws"), Some(&1));
        assert_eq!(router.open_sessions(), 2);
    }
}
