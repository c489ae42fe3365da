//! The memory ledger: every byte the broker holds on behalf of a client,
//! against `--max-memory`, and who pays when it runs out.
//!
//! # What is charged
//!
//! Each connection's holding is charged to it (its output queue keeps the
//! figure, see `output`) and the memory it takes to the budget here:
//! - its **queue**: replies, notices and deliveries waiting to be written.
//!   A delivery is a range of a shared [`Chunk`] (a batch of publishes
//!   serialized once): the range counts in the holding of each subscriber
//!   that has it, the chunk's memory in the budget once, for as long as any
//!   queue holds a piece of it;
//! - its **writer's copy**: what its listener took out of the queue to
//!   write, until the listener asks for more (then it has written it) or
//!   the session ends;
//! - its **input**: an unfinished line, and input waiting while the session
//!   is halted;
//! - what its **listener** says it holds for it (`SessionApi::hold`: a
//!   WebSocket message that is still arriving).
//!
//! Fixed per-connection costs are not charged: the session and its queue
//! themselves, a listener's small buffers, TLS records (rustls keeps at
//! most 64 KiB unsent), the kernel's socket buffers.
//!
//! # Who pays when it runs out
//!
//! A connection's *share* is the budget divided by the connections holding
//! anything, plus one (so that a newcomer always finds room). Below three
//! quarters of the budget everything is admitted, up to each queue's own
//! `--max-queue-bytes`; above it the ledger is *pressed*, and a connection
//! holding more than its share stops growing:
//! - deliveries and notices to it are dropped and counted;
//! - its input stops being read after a reply that leaves it over its
//!   share (always, pressed or not: a client that does not read its
//!   replies is slowed down before it can take the budget);
//! - an unfinished line of its that needs more room is refused: the
//!   connection is closed, logged and counted;
//! - its writer copies less at a time (all writers do while it is pressed).
//!
//! At the budget itself nothing new is admitted, whoever asks. A connection
//! holding less than its share is never made to pay for the others'
//! backlog: a delivery dropped for it at the budget does not start its
//! slow-consumer clock (only its own full queue does; see `output`).

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

pub(crate) struct Ledger {
    limit: usize,
    /// Bytes in memory on behalf of clients.
    used: AtomicUsize,
    /// Connections holding anything.
    holders: AtomicUsize,
    /// Connections closed because their input could not be held.
    closed_for_input: AtomicU64,
}

/// Why a connection may not take more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It holds more than its share while the ledger is pressed (or would
    /// take more than its queue may hold): its own doing.
    OverShare,
    /// The budget itself is spent, by others.
    Budget,
}

impl Ledger {
    pub(crate) fn new(limit: usize) -> Arc<Ledger> {
        Arc::new(Ledger {
            limit,
            used: AtomicUsize::new(0),
            holders: AtomicUsize::new(0),
            closed_for_input: AtomicU64::new(0),
        })
    }

    /// Bytes in memory on behalf of clients.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Connections closed because their unfinished input could not be held.
    pub(crate) fn closed_for_input(&self) -> u64 {
        self.closed_for_input.load(Ordering::Relaxed)
    }

    pub(crate) fn count_closed_for_input(&self) {
        self.closed_for_input.fetch_add(1, Ordering::Relaxed);
    }

    /// `memory` more bytes in memory.
    pub(crate) fn add(&self, memory: usize) {
        if memory > 0 {
            self.used.fetch_add(memory, Ordering::Relaxed);
        }
    }

    /// `memory` bytes given back.
    pub(crate) fn sub(&self, memory: usize) {
        if memory == 0 {
            return;
        }
        self.used.fetch_sub(memory, Ordering::Relaxed);
    }

    /// A connection's holding went from `before` to `after` bytes: keeps
    /// the count of holders, on which the share depends.
    pub(crate) fn holding(&self, before: usize, after: usize) {
        match (before, after) {
            (0, 0) => {}
            (0, _) => {
                self.holders.fetch_add(1, Ordering::Relaxed);
            }
            (_, 0) => {
                self.holders.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Above this the ledger is pressed.
    fn pressure(&self) -> usize {
        self.limit / 4 * 3
    }

    /// Whether more than three quarters of the budget is used.
    pub(crate) fn pressed(&self) -> bool {
        self.used() > self.pressure()
    }

    /// What one connection may hold while the ledger is pressed.
    pub(crate) fn share(&self) -> usize {
        self.limit / (self.holders.load(Ordering::Relaxed) + 1)
    }

    /// Whether a connection holding `held` bytes may take `more`, of which
    /// `memory` are new in memory (the rest are pieces of chunks counted
    /// already).
    pub(crate) fn admits(&self, held: usize, more: usize, memory: usize) -> Result<(), Refused> {
        let used = self.used().saturating_add(memory);
        if used <= self.pressure() {
            return Ok(());
        }
        if held.saturating_add(more) > self.share() {
            return Err(Refused::OverShare);
        }
        if used > self.limit {
            return Err(Refused::Budget);
        }
        Ok(())
    }

    /// Whether a connection holding `held` bytes holds more than its share
    /// (whether or not the ledger is pressed): its input stops being read
    /// after a reply.
    pub(crate) fn over_share(&self, held: usize) -> bool {
        held > self.share()
    }
}

/// A serialized batch of deliveries, shared by every queue it goes to and
/// counted in the budget once while it lives.
pub(crate) struct Chunk {
    bytes: Vec<u8>,
    ledger: Arc<Ledger>,
}

impl Chunk {
    pub(crate) fn new(bytes: Vec<u8>, ledger: &Arc<Ledger>) -> Chunk {
        ledger.add(bytes.len());
        Chunk {
            bytes,
            ledger: ledger.clone(),
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
        self.ledger.sub(self.bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_counts_once_while_it_lives() {
        let ledger = Ledger::new(1000);
        let chunk = Arc::new(Chunk::new(vec![0; 100], &ledger));
        let shared = chunk.clone();
        assert_eq!(ledger.used(), 100);
        drop(chunk);
        assert_eq!(ledger.used(), 100);
        drop(shared);
        assert_eq!(ledger.used(), 0);
    }

    #[test]
    fn the_largest_holders_stop_first_and_nothing_grows_past_the_budget() {
        let ledger = Ledger::new(1200);
        ledger.holding(0, 1);
        ledger.holding(0, 1);
        // Two holders: a share is 1,200 / 3 = 400.
        ledger.add(800);
        assert_eq!(ledger.admits(600, 50, 0), Ok(()), "no pressure at 3/4");
        ledger.add(150); // 950 used: pressed
        assert_eq!(ledger.admits(600, 50, 0), Err(Refused::OverShare));
        assert_eq!(ledger.admits(100, 50, 0), Ok(()), "a small holder grows");
        assert_eq!(
            ledger.admits(100, 50, 400),
            Err(Refused::Budget),
            "new memory past the budget, for anyone"
        );
        assert!(ledger.over_share(401));
        assert!(!ledger.over_share(400));
        ledger.holding(1, 0);
        assert_eq!(ledger.share(), 600, "one holder fewer, a bigger share");
    }
}
