//! The sessions of one group: a sorted inline list while small (most tag
//! sets have one subscriber), a bitmap once large (a fan-out topic may have
//! a hundred thousand).

use roaring::RoaringBitmap;
use smallvec::SmallVec;

/// Above this many members the list becomes a bitmap...
const TO_BITMAP: usize = 32;
/// ...and below this many it becomes a list again (apart, to avoid flapping).
const TO_LIST: usize = 16;

pub(crate) enum Members {
    List(SmallVec<[u32; 2]>),
    Bitmap(RoaringBitmap),
}

impl Default for Members {
    fn default() -> Self {
        Members::List(SmallVec::new())
    }
}

impl Members {
    /// Adds `id`; `false` if it was there already.
    pub(crate) fn insert(&mut self, id: u32) -> bool {
        match self {
            Members::List(list) => match list.binary_search(&id) {
                Ok(_) => false,
                Err(at) => {
                    list.insert(at, id);
                    if list.len() > TO_BITMAP {
                        *self = Members::Bitmap(list.iter().copied().collect());
                    }
                    true
                }
            },
            Members::Bitmap(bitmap) => bitmap.insert(id),
        }
    }

    /// Removes `id`; `false` if it was not there.
    pub(crate) fn remove(&mut self, id: u32) -> bool {
        match self {
            Members::List(list) => match list.binary_search(&id) {
                Ok(at) => {
                    list.remove(at);
                    true
                }
                Err(_) => false,
            },
            Members::Bitmap(bitmap) => {
                let removed = bitmap.remove(id);
                if bitmap.len() < TO_LIST as u64 {
                    *self = Members::List(bitmap.iter().collect());
                }
                removed
            }
        }
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        match self {
            Members::List(list) => list.binary_search(&id).is_ok(),
            Members::Bitmap(bitmap) => bitmap.contains(id),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Members::List(list) => list.is_empty(),
            Members::Bitmap(bitmap) => bitmap.is_empty(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Members::List(list) => list.len(),
            Members::Bitmap(bitmap) => bitmap.len() as usize,
        }
    }

    /// Calls `f` with every member, in increasing order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(u32)) {
        match self {
            Members::List(list) => list.iter().for_each(|&id| f(id)),
            Members::Bitmap(bitmap) => bitmap.iter().for_each(f),
        }
    }

    /// Appends every member but `exclude` to `out`.
    pub(crate) fn extend_into(&self, out: &mut Vec<u32>, exclude: Option<u32>) {
        let keep = |&id: &u32| Some(id) != exclude;
        match self {
            Members::List(list) => out.extend(list.iter().copied().filter(keep)),
            Members::Bitmap(bitmap) => out.extend(bitmap.iter().filter(keep)),
        }
    }

    /// Adds every member to `acc`.
    pub(crate) fn union_into(&self, acc: &mut RoaringBitmap) {
        match self {
            Members::List(list) => acc.extend(list.iter().copied()),
            Members::Bitmap(bitmap) => *acc |= bitmap,
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Members::List(list) if list.spilled() => list.capacity() * 4,
            Members::List(_) => 0,
            Members::Bitmap(bitmap) => bitmap.serialized_size(),
        }
    }
}
