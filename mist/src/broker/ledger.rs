//! The global budget for queued output (`--max-memory`).
//!
//! Every byte waiting to be written to some client is counted here once: a
//! serialized publish batch shared by a thousand subscribers' queues counts
//! its length once, for as long as any queue still holds a piece of it
//! ([`Chunk`] gives it back when the last piece is written or dropped), and
//! a reply or a copied slice counts while it waits.
//!
//! Policy, from the queue's side ([`Ledger::admits`]):
//! - below three quarters of the budget, every queue may grow (up to its own
//!   `--max-queue-bytes`);
//! - between three quarters and the whole budget, only queues holding no
//!   more than a fair share (the budget divided by the queues that hold
//!   anything) may grow: the largest queues drop first;
//! - at the budget, no queue grows: new deliveries are dropped for everyone
//!   until writers catch up.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub(crate) struct Ledger {
    limit: usize,
    used: AtomicUsize,
    /// Queues holding at least one byte.
    busy_queues: AtomicUsize,
}

impl Ledger {
    pub(crate) fn new(limit: usize) -> Arc<Ledger> {
        Arc::new(Ledger {
            limit,
            used: AtomicUsize::new(0),
            busy_queues: AtomicUsize::new(0),
        })
    }

    /// Bytes queued over all sessions.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn queue_busy(&self) {
        self.busy_queues.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn queue_idle(&self) {
        self.busy_queues.fetch_sub(1, Ordering::Relaxed);
    }

    /// What a queue holding `queued` bytes may do with `more` bytes whose
    /// memory is `new` (0 for a piece of a shared chunk, which is counted
    /// already).
    pub(crate) fn admits(&self, queued: usize, more: usize, new: usize) -> bool {
        let used = self.used().saturating_add(new);
        if used <= self.limit / 4 * 3 {
            return true;
        }
        if used > self.limit {
            return false;
        }
        queued + more <= self.fair_share()
    }

    /// Whether a queue of `queued` bytes is among those that should stop
    /// growing now: the budget is spent and it holds more than a fair share.
    pub(crate) fn over(&self, queued: usize) -> bool {
        self.used() > self.limit && queued > self.fair_share()
    }

    fn fair_share(&self) -> usize {
        self.limit / self.busy_queues.load(Ordering::Relaxed).max(1)
    }
}

/// A serialized batch of deliveries, shared by every queue it goes to and
/// counted in the budget once while it lives.
pub(crate) struct Chunk {
    bytes: Vec<u8>,
    memory: Arc<Ledger>,
}

impl Chunk {
    pub(crate) fn new(bytes: Vec<u8>, memory: &Arc<Ledger>) -> Chunk {
        memory.add(bytes.len());
        Chunk {
            bytes,
            memory: memory.clone(),
        }
    }
}

impl Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.memory.sub(self.bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_counts_once_while_it_lives() {
        let memory = Ledger::new(1000);
        let chunk = Arc::new(Chunk::new(vec![0; 100], &memory));
        let shared = chunk.clone();
        assert_eq!(memory.used(), 100);
        drop(chunk);
        assert_eq!(memory.used(), 100);
        drop(shared);
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn the_largest_queues_stop_first_and_nothing_grows_past_the_budget() {
        let memory = Ledger::new(1000);
        memory.queue_busy();
        memory.queue_busy();
        memory.add(700);
        assert!(memory.admits(600, 50, 0), "no pressure below 3/4");
        memory.add(100); // 800 used: pressure
        assert!(!memory.admits(600, 50, 0), "over its fair share of 500");
        assert!(memory.admits(100, 50, 0), "a small queue still grows");
        assert!(!memory.admits(100, 50, 300), "new memory past the budget");
        memory.add(300);
        assert!(!memory.admits(0, 1, 0), "at the budget nobody grows");
        assert!(memory.over(600));
        assert!(!memory.over(100));
    }
}
