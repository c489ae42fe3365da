//! Tag strings ↔ small integer ids, with reuse of ids nobody uses.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

/// The tags in use. Each id counts the groups containing its tag; an id whose
/// count falls to zero is forgotten and reused.
#[derive(Default)]
pub(crate) struct Interner {
    // Tags arrive from the network: a randomly seeded hasher keeps an
    // attacker from choosing colliding tags.
    ids: HashMap<Arc<str>, u32, RandomState>,
    names: Vec<Option<Arc<str>>>,
    groups_with: Vec<u32>,
    free: Vec<u32>,
}

impl Interner {
    pub(crate) fn get(&self, tag: &str) -> Option<u32> {
        self.ids.get(tag).copied()
    }

    /// The id of `tag`, creating it (used by no group yet) if needed.
    pub(crate) fn intern(&mut self, tag: &str) -> u32 {
        if let Some(&id) = self.ids.get(tag) {
            return id;
        }
        let name: Arc<str> = tag.into();
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = Some(name.clone());
                id
            }
            None => {
                self.names.push(Some(name.clone()));
                self.groups_with.push(0);
                (self.names.len() - 1) as u32
            }
        };
        self.ids.insert(name, id);
        id
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .and_then(|n| n.as_deref())
            .unwrap_or_default()
    }

    /// How many groups contain the tag.
    pub(crate) fn groups_with(&self, id: u32) -> u32 {
        self.groups_with.get(id as usize).copied().unwrap_or(0)
    }

    pub(crate) fn retain(&mut self, id: u32) {
        if let Some(count) = self.groups_with.get_mut(id as usize) {
            *count += 1;
        }
    }

    /// One group fewer contains the tag; forgets it when none does.
    pub(crate) fn release(&mut self, id: u32) {
        let Some(count) = self.groups_with.get_mut(id as usize) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            if let Some(name) = self.names[id as usize].take() {
                self.ids.remove(&*name);
                self.free.push(id);
            }
        }
    }

    /// Highest id ever handed out, plus one.
    pub(crate) fn capacity(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        let strings: usize = self.ids.keys().map(|k| k.len() + 16).sum();
        strings
            + self.ids.capacity() * (std::mem::size_of::<(Arc<str>, u32)>() + 1)
            + self.names.capacity() * std::mem::size_of::<Option<Arc<str>>>()
            + self.groups_with.capacity() * 4
            + self.free.capacity() * 4
    }
}
