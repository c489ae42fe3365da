//! A session's identity: a router slot, reused so the subscription index's
//! bitmaps stay dense, and a generation that changes every time the slot
//! is given to a new session.

use std::fmt;

/// A session's identity, never reused while the broker runs (up to 2³²
/// reuses of one slot).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SessionId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl SessionId {
    /// The id as plugins see it: generation in the high half.
    pub(crate) fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    pub(crate) fn from_u64(id: u64) -> SessionId {
        SessionId {
            index: id as u32,
            generation: (id >> 32) as u32,
        }
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
