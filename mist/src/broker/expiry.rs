//! Tokens that expire while their connection is open (a JWT's `exp`).
//!
//! When a session's grant ends, it loses every subscription at once, with a
//! `revoked` notice each. One task serves every session: the deadlines sit
//! in a heap, and the task sleeps until the earliest. A session with a
//! deadline costs an entry in a map and one in the heap (about 50 bytes);
//! a session without one costs nothing, and no session has a timer of its
//! own.
//!
//! A deadline is a monotonic [`Instant`]: the time the authenticator gave
//! is turned into one when the token is accepted, so the clock being set
//! back cannot lengthen a grant. The task (`shared`, `Shared::expire_due`)
//! removes subscriptions under the router's write lock, and a subscribe
//! checks the deadline under that same lock (`cmd/subscribe.rs`), so a
//! subscription can never land after the expiry that should have removed
//! it. A refresh (a later `auth` with a new token, `cmd/auth.rs`) replaces
//! the session's deadline under that lock too; an entry in the heap whose
//! generation is no longer the session's is ignored when it comes up.
//!
//! This file keeps only the deadlines; it knows nothing of sessions'
//! subscriptions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::id::SessionId;
use super::router::Router;

/// Every session's deadline.
#[derive(Default)]
pub(crate) struct Expiry {
    deadlines: Mutex<Deadlines>,
    /// Wakes the task when a deadline earlier than the ones it knows
    /// comes, and when the broker is dropped.
    wake: Arc<tokio::sync::Notify>,
}

impl Drop for Expiry {
    fn drop(&mut self) {
        self.wake.notify_one(); // the task sees the broker gone and ends
    }
}

#[derive(Default)]
struct Deadlines {
    /// The current deadline of each session that has one, and its generation.
    current: HashMap<SessionId, (Instant, u64)>,
    /// Every deadline set, earliest first; stale entries are skipped.
    heap: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    generation: u64,
}

impl Deadlines {
    /// Drops stale entries once they are most of the heap: connections
    /// that authenticate and close again cannot grow it without bound.
    fn compact(&mut self) {
        if self.heap.len() > 64 && self.heap.len() > 2 * self.current.len() {
            self.heap = self
                .current
                .iter()
                .map(|(id, &(at, generation))| Reverse((at, generation, id.to_u64())))
                .collect();
        }
    }
}

impl Expiry {
    /// `session`'s grant ends at `until` (`None`: it does not end). Call it
    /// with the router's write lock held (the `_router` argument), so that
    /// the timer cannot act on the session between the change of its grant
    /// and this.
    pub(crate) fn set(&self, _router: &mut Router, session: SessionId, until: Option<Instant>) {
        let mut deadlines = self.deadlines.lock();
        let Some(at) = until else {
            deadlines.current.remove(&session);
            return;
        };
        deadlines.generation += 1;
        let generation = deadlines.generation;
        let earliest = deadlines.heap.peek().map(|Reverse((at, ..))| *at);
        deadlines.current.insert(session, (at, generation));
        deadlines
            .heap
            .push(Reverse((at, generation, session.to_u64())));
        deadlines.compact();
        drop(deadlines);
        if earliest.is_none_or(|earliest| at < earliest) {
            self.wake.notify_one();
        }
    }

    /// What the task waits on.
    pub(crate) fn waker(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// `session` closed.
    pub(crate) fn forget(&self, session: SessionId) {
        let mut deadlines = self.deadlines.lock();
        if deadlines.current.remove(&session).is_some() {
            deadlines.compact();
        }
    }

    /// The earliest deadline, stale or not.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.deadlines
            .lock()
            .heap
            .peek()
            .map(|Reverse((at, ..))| *at)
    }

    /// Takes the sessions whose deadline is at or before `now`.
    pub(crate) fn take_due(&self, now: Instant) -> Vec<SessionId> {
        let mut deadlines = self.deadlines.lock();
        let mut due = Vec::new();
        while let Some(&Reverse((at, generation, id))) = deadlines.heap.peek() {
            if at > now {
                break;
            }
            deadlines.heap.pop();
            let session = SessionId::from_u64(id);
            if deadlines.current.get(&session) == Some(&(at, generation)) {
                deadlines.current.remove(&session);
                due.push(session);
            }
        }
        due
    }

    /// Sessions with a deadline, for tests.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> (usize, usize) {
        let deadlines = self.deadlines.lock();
        (deadlines.current.len(), deadlines.heap.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::id::SessionId;
    use super::super::router::Router;
    use super::Expiry;

    #[test]
    fn only_a_sessions_current_deadline_comes_due() {
        let expiry = Expiry::default();
        let mut router = Router::new();
        let (a, b, c) = (
            SessionId::from_u64(1),
            SessionId::from_u64(2),
            SessionId::from_u64(3),
        );
        let now = Instant::now();
        expiry.set(&mut router, a, Some(now + Duration::from_secs(1)));
        expiry.set(&mut router, b, Some(now + Duration::from_secs(2)));
        expiry.set(&mut router, c, Some(now + Duration::from_secs(3)));
        // `a` refreshed to later, `b` to a grant that never ends, `c` closed.
        expiry.set(&mut router, a, Some(now + Duration::from_secs(4)));
        expiry.set(&mut router, b, None);
        expiry.forget(c);
        assert_eq!(expiry.next(), Some(now + Duration::from_secs(1)), "stale");
        assert!(expiry.take_due(now + Duration::from_secs(3)).is_empty());
        assert_eq!(expiry.pending(), (1, 1));
        assert_eq!(expiry.take_due(now + Duration::from_secs(4)), [a]);
        assert_eq!(expiry.pending(), (0, 0));
        assert_eq!(expiry.next(), None);
    }
}
