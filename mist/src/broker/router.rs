//! Who is connected and who subscribed to what: the one place publishes
//! are matched. Guarded by one `RwLock` in [`super::Shared`]; publishes
//! take it shared, only (un)subscribing and connecting take it exclusively,
//! and nothing is held across a write to a socket.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::tags::{Index, MatchScratch};

use super::output::Output;

pub(crate) struct Router {
    index: Index,
    /// Open sessions by id; ids are reused so the index's bitmaps stay dense.
    sessions: Vec<Option<Slot>>,
    free: Vec<u32>,
    open: usize,
}

pub(crate) struct Slot {
    pub(crate) output: Arc<Output>,
    pub(crate) listener: Arc<str>,
}

impl Router {
    pub(crate) fn new() -> Self {
        Router {
            index: Index::new(),
            sessions: Vec::new(),
            free: Vec::new(),
            open: 0,
        }
    }

    /// Registers a session; `make` receives its id and builds its slot.
    pub(crate) fn add_session<T>(&mut self, make: impl FnOnce(u32) -> (Slot, T)) -> (u32, T) {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.sessions.push(None);
                (self.sessions.len() - 1) as u32
            }
        };
        let (slot, extra) = make(id);
        self.sessions[id as usize] = Some(slot);
        self.open += 1;
        (id, extra)
    }

    /// Forgets a session and all its subscriptions.
    pub(crate) fn remove_session(&mut self, id: u32) {
        if let Some(entry) = self.sessions.get_mut(id as usize) {
            if entry.take().is_some() {
                self.index.remove_session(id);
                self.free.push(id);
                self.open -= 1;
            }
        }
    }

    pub(crate) fn subscribe<S: AsRef<str>>(&mut self, id: u32, tags: &[S]) -> bool {
        self.index.subscribe(id, tags)
    }

    pub(crate) fn unsubscribe<S: AsRef<str>>(&mut self, id: u32, tags: &[S]) -> bool {
        self.index.unsubscribe(id, tags)
    }

    pub(crate) fn subscriptions(&self, id: u32) -> Vec<Vec<String>> {
        self.index.subscriptions(id)
    }

    /// Appends the outputs of every session a message tagged `tags` goes to.
    pub(crate) fn route<S: AsRef<str>>(
        &self,
        tags: &[S],
        exclude: Option<u32>,
        scratch: &mut RouteScratch,
        targets: &mut Vec<Arc<Output>>,
    ) {
        scratch.ids.clear();
        self.index
            .matches(tags, exclude, &mut scratch.matcher, &mut scratch.ids);
        targets.extend(scratch.ids.iter().filter_map(|&id| {
            self.sessions
                .get(id as usize)
                .and_then(|s| s.as_ref())
                .map(|s| s.output.clone())
        }));
    }

    pub(crate) fn open_sessions(&self) -> usize {
        self.open
    }

    pub(crate) fn subscription_count(&self) -> usize {
        self.index.len()
    }

    /// Open sessions per listener scheme.
    pub(crate) fn per_listener(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for slot in self.sessions.iter().flatten() {
            *counts.entry(slot.listener.to_string()).or_insert(0) += 1;
        }
        counts
    }
}

/// Reusable buffers for routing, so a publish does not allocate.
#[derive(Default)]
pub(crate) struct RouteScratch {
    matcher: MatchScratch,
    ids: Vec<u32>,
}
