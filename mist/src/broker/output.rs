//! A session's outgoing queue: replies and deliveries waiting for the
//! listener to write them, and the session's holding in the memory ledger.
//!
//! Deliveries are not copied per subscriber: a publish batch is serialized
//! once into a shared [`Chunk`] and each subscriber's queue holds a range of
//! it. Consecutive ranges of the same chunk merge into one entry, so a flood
//! of publishes on one tag costs each subscriber one entry per batch, not
//! one per message.
//!
//! **The holding.** Everything the broker holds for the session is counted
//! here, under the queue's lock: the queue itself, the copy its listener
//! last took to write (until it asks for more or the session ends), and
//! what the session and the listener hold for its input (set by them, see
//! [`Output::set_input`]). The [`Ledger`] decides with that figure who
//! pays when the budget runs out.
//!
//! Overflow policy: the queue holds at most `limit` bytes (replies and
//! deliveries together), and the ledger may refuse growth earlier. When a
//! batch does not fit, the messages that fit are kept and the newest ones
//! are dropped for this subscriber only, counted, and logged. A subscriber
//! whose *own* queue keeps dropping (over its limit, or over its share of a
//! pressed ledger) for `slow_after` without making room is reported to the
//! caller, which disconnects it; drops because the budget is spent by
//! others do not count. Replies to the session's own commands, and the
//! broker's notices (revocations), are never dropped; instead the session
//! stops reading its input while its output is over the limit or its share
//! (see `session`). Replies a plugin sends on its own
//! ([`Output::push_notice`]) are dropped like deliveries.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use mist_sdk::abi::OutputWakerBox;
use parking_lot::Mutex;

use super::id::SessionId;
use super::ledger::{Chunk, Ledger, Refused};

/// At most this much is handed to the listener per `drain` (one line more
/// if a single line is longer), so one write stays bounded and so does the
/// writer's copy, however long the backlog.
const DRAIN_CHUNK: usize = 256 * 1024;
/// While the ledger is pressed, a drain hands over at most this much.
const DRAIN_PRESSED: usize = 16 * 1024;

/// A range smaller than this fraction of its shared chunk is copied
/// instead of referenced: holding a small slice must not keep a large
/// chunk alive beyond what the byte limit accounts for.
const SHARE_MIN_FRACTION: usize = 2;

/// How often a subscriber that keeps dropping is logged again.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// A serialized publish batch, shared by every subscriber it goes to.
pub(crate) type SharedBatch = Arc<Chunk>;

/// What an output needs to know about its session and the broker.
pub(crate) struct OutputConfig {
    pub(crate) session: SessionId,
    /// The client's address, for logs.
    pub(crate) peer: Peer,
    /// The broker's, shared by every output (not stored in each).
    pub(crate) limits: Arc<OutputLimits>,
}

/// A client's address, for logs: an IPv4 socket address (most are) is kept
/// in place, anything else (IPv6 too) in an allocation of its own. 16
/// bytes, where a `SocketAddr` alone is 32: every session has one.
pub(crate) enum Peer {
    V4(std::net::SocketAddrV4),
    Text(Arc<str>),
}

impl From<&str> for Peer {
    fn from(peer: &str) -> Peer {
        match peer.parse() {
            Ok(addr) => Peer::V4(addr),
            Err(_) => Peer::Text(peer.into()),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::V4(addr) => addr.fmt(f),
            Peer::Text(text) => text.fmt(f),
        }
    }
}

/// What every output of one broker applies.
pub(crate) struct OutputLimits {
    pub(crate) limit: usize,
    /// How long a queue may stay full before its session is disconnected.
    pub(crate) slow_after: Duration,
    pub(crate) ledger: Arc<Ledger>,
}

pub(crate) struct Output {
    config: OutputConfig,
    waker: OutputWakerBox,
    dropped: AtomicU64,
    queue: Mutex<Queue>,
}

struct Queue {
    entries: VecDeque<Entry>,
    /// Bytes waiting, replies included.
    bytes: usize,
    /// What the session and its listener hold for its input (see
    /// [`Output::set_input`]).
    input: usize,
    /// Bytes handed to the listener by the last drain, still in its buffer
    /// until it asks for more.
    writer: u32,
    closed: bool,
    /// The listener has drained and may be waiting: the next push must wake it.
    wake_armed: bool,
    /// A feed waiting for the output to fall under the limit.
    backlog_waiter: Option<Waker>,
    /// Made by the first drop: a subscriber that keeps up (most of them)
    /// never holds it.
    drops: Option<Box<Drops>>,
}

/// What a queue that has dropped deliveries remembers about it.
#[derive(Default)]
struct Drops {
    /// Since when its own queue has been full, dropping, with no drain
    /// making room.
    full_since: Option<Instant>,
    last_log: Option<Instant>,
    since_log: u64,
}

enum Entry {
    Shared {
        batch: SharedBatch,
        start: usize,
        end: usize,
    },
    Owned(Vec<u8>),
}

/// The result of offering a run of deliveries to one subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pushed {
    pub(crate) queued: u64,
    pub(crate) dropped: u64,
    /// The subscriber's own queue has been full for longer than the
    /// slow-consumer timeout: disconnect it.
    pub(crate) slow: bool,
}

impl Queue {
    /// Everything held for the session.
    fn held(&self) -> usize {
        self.bytes + self.writer as usize + self.input
    }

    /// What its client has yet to read: the queue and the writer's copy.
    fn output(&self) -> usize {
        self.bytes + self.writer as usize
    }

    fn take_wake(&mut self) -> bool {
        std::mem::replace(&mut self.wake_armed, false)
    }
}

impl Output {
    pub(crate) fn new(config: OutputConfig, waker: OutputWakerBox) -> Self {
        Output {
            config,
            waker,
            dropped: AtomicU64::new(0),
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                bytes: 0,
                input: 0,
                writer: 0,
                closed: false,
                wake_armed: true,
                backlog_waiter: None,
                drops: None,
            }),
        }
    }

    pub(crate) fn session(&self) -> SessionId {
        self.config.session
    }

    pub(crate) fn peer(&self) -> &Peer {
        &self.config.peer
    }

    fn ledger(&self) -> &Ledger {
        &self.config.limits.ledger
    }

    /// Queues a reply (one or more whole lines) to the session's own
    /// command, or a notice the broker owes the session (a revocation).
    /// Never dropped: the session pauses its input instead while
    /// [`Output::over_limit`]. Returns `false` if the session is closed.
    /// Takes `line` itself: the session keeps no reply buffer between
    /// replies.
    pub(crate) fn push_reply(&self, line: Vec<u8>) -> bool {
        let wake = {
            let mut q = self.queue.lock();
            if q.closed {
                return false;
            }
            self.append_vec(&mut q, line);
            q.take_wake()
        };
        if wake {
            self.waker.wake();
        }
        true
    }

    /// Queues a line the client did not ask for just now (a plugin's later
    /// reply): dropped and counted, like a delivery, when the queue or the
    /// ledger has no room. Returns whether it was queued.
    pub(crate) fn push_notice(&self, line: &[u8]) -> bool {
        let wake = {
            let mut q = self.queue.lock();
            if q.closed {
                return false;
            }
            let fits = q.bytes + line.len() <= self.config.limits.limit
                && self
                    .ledger()
                    .admits(q.held(), line.len(), line.len())
                    .is_ok();
            if !fits {
                self.note_drops(&mut q, 1);
                return false;
            }
            self.append_owned(&mut q, line);
            q.take_wake()
        };
        if wake {
            self.waker.wake();
        }
        true
    }

    /// Offers the deliveries `batch[start..ends.last()]` to this subscriber;
    /// `ends` are the end offsets of the messages in the range, in order.
    pub(crate) fn push_deliveries(
        &self,
        batch: &SharedBatch,
        start: usize,
        ends: &[usize],
    ) -> Pushed {
        let Some(&end) = ends.last() else {
            return Pushed::default();
        };
        let (pushed, wake) = {
            let mut q = self.queue.lock();
            if q.closed {
                return Pushed::default();
            }
            let room = self.config.limits.limit.saturating_sub(q.bytes);
            // Keep the oldest messages that fit; drop the newest.
            let mut fit = if end - start <= room {
                ends.len()
            } else {
                ends.partition_point(|&e| e - start <= room)
            };
            // Dropping for a full queue of its own, or for being over its
            // share: what the slow-consumer clock counts.
            let mut own = fit < ends.len();
            if fit > 0 {
                let bytes = ends[fit - 1] - start;
                let new = if copies(batch, bytes) { bytes } else { 0 };
                if let Err(refused) = self.ledger().admits(q.held(), bytes, new) {
                    fit = 0;
                    own = refused == Refused::OverShare;
                }
            }
            if fit > 0 {
                self.append_shared(&mut q, batch, start, ends[fit - 1]);
            }
            let dropped = (ends.len() - fit) as u64;
            let mut slow = false;
            if dropped > 0 {
                self.note_drops(&mut q, dropped);
            }
            if own {
                let now = Instant::now();
                let drops = q.drops.get_or_insert_with(Box::default);
                let since = *drops.full_since.get_or_insert(now);
                slow = now.duration_since(since) >= self.config.limits.slow_after;
            } else if let Some(drops) = q.drops.as_mut() {
                if dropped == 0 {
                    // It took everything: its queue has room again.
                    drops.full_since = None;
                }
            }
            let wake = fit > 0 && q.take_wake();
            (
                Pushed {
                    queued: fit as u64,
                    dropped,
                    slow,
                },
                wake,
            )
        };
        if wake {
            self.waker.wake();
        }
        pushed
    }

    fn note_drops(&self, q: &mut Queue, dropped: u64) {
        let total = self.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
        let drops = q.drops.get_or_insert_with(Box::default);
        drops.since_log += dropped;
        let now = Instant::now();
        if drops
            .last_log
            .is_none_or(|at| now.duration_since(at) >= DROP_LOG_INTERVAL)
        {
            tracing::warn!(
                session = %self.config.session,
                peer = %self.config.peer,
                dropped = drops.since_log,
                dropped_total = total,
                queue_limit_bytes = self.config.limits.limit,
                "subscriber is not keeping up: dropping its newest messages"
            );
            drops.last_log = Some(now);
            drops.since_log = 0;
        }
    }

    /// Moves waiting output into `out`: up to [`DRAIN_CHUNK`] bytes, or
    /// [`DRAIN_PRESSED`] while the ledger is pressed. In whole lines (one
    /// line more when the first is longer), unless the listener takes
    /// `pieces`: then the last line may be cut, its rest coming first next
    /// time, and the writer's copy stays within the cap however long a line
    /// is. What the previous drain handed over has been written (the
    /// listener asks again only then): it is no longer charged; what this
    /// one hands over is, until the next. Returns `false` when the queue is
    /// closed and there was nothing to move.
    pub(crate) fn drain_into(&self, out: &mut dyn ExtendSlice, pieces: bool) -> bool {
        let (open, waiter) = {
            let mut q = self.queue.lock();
            let held = q.held();
            self.ledger().sub(q.writer as usize);
            q.writer = 0;
            // Closed is reported only by a call that hands over nothing, so
            // the last bytes are always written.
            let open = !(q.closed && q.entries.is_empty());
            let cap = if self.ledger().pressed() {
                DRAIN_PRESSED
            } else {
                DRAIN_CHUNK
            };
            let (take, copied) = drain_plan(&q.entries, cap, pieces);
            let moved = Output::move_out(&mut q, take, out);
            self.ledger().add(copied);
            q.writer = u32::try_from(moved).unwrap_or(u32::MAX);
            q.bytes -= moved;
            self.ledger().holding(held, q.held());
            if q.bytes < self.config.limits.limit {
                if let Some(drops) = q.drops.as_mut() {
                    drops.full_since = None;
                }
            }
            if q.entries.is_empty() && q.entries.capacity() > 8 {
                // Back to an idle footprint after a burst.
                q.entries = VecDeque::new();
            }
            // Whatever is pushed next must wake the listener, which may now wait.
            q.wake_armed = true;
            let waiter = if !self.output_over(&q) {
                q.backlog_waiter.take()
            } else {
                None
            };
            (open, waiter)
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        open
    }

    /// Moves the planned entries (and part of the next) into `out`; returns
    /// the bytes moved. Owned entries' memory passes to the writer's copy.
    fn move_out(q: &mut Queue, take: Take, out: &mut dyn ExtendSlice) -> usize {
        for _ in 0..take.whole {
            let Some(entry) = q.entries.pop_front() else {
                break;
            };
            match &entry {
                Entry::Shared { batch, start, end } => out.extend_slice(&batch[*start..*end]),
                // Its memory is charged as the writer's copy now.
                Entry::Owned(v) => out.extend_slice(v),
            }
        }
        if take.part > 0 {
            match q.entries.front_mut() {
                Some(Entry::Shared { batch, start, .. }) => {
                    out.extend_slice(&batch[*start..*start + take.part]);
                    *start += take.part;
                }
                Some(Entry::Owned(v)) => {
                    out.extend_slice(&v[..take.part]);
                    v.drain(..take.part);
                }
                None => {}
            }
        }
        take.bytes
    }

    /// Whether the session should stop reading input until its client
    /// reads: its output is over its limit, or over its share.
    pub(crate) fn over_limit(&self) -> bool {
        let q = self.queue.lock();
        self.output_over(&q)
    }

    fn output_over(&self, q: &Queue) -> bool {
        let output = q.output();
        output > self.config.limits.limit || (output > 0 && self.ledger().over_share(output))
    }

    /// Registers `waker` to be woken when the output is back under the
    /// limit; returns `false` (without registering) if it already is.
    pub(crate) fn wait_under_limit(&self, waker: &Waker) -> bool {
        let mut q = self.queue.lock();
        if !self.output_over(&q) || q.closed {
            return false;
        }
        q.backlog_waiter = Some(waker.clone());
        true
    }

    /// The session's input (unfinished line, backlog) and what its
    /// listener holds for it now take `bytes`. Growth must be admitted by
    /// the ledger; refused, nothing changes and the caller closes the
    /// connection.
    pub(crate) fn set_input(&self, bytes: usize) -> Result<(), Refused> {
        let mut q = self.queue.lock();
        let held = q.held();
        if bytes > q.input {
            let more = bytes - q.input;
            self.ledger().admits(held, more, more)?;
            self.ledger().add(more);
        } else {
            self.ledger().sub(q.input - bytes);
        }
        q.input = bytes;
        self.ledger().holding(held, q.held());
        Ok(())
    }

    /// Like [`Output::set_input`], whatever the ledger says: for input
    /// already taken (and for giving back).
    pub(crate) fn force_input(&self, bytes: usize) {
        let mut q = self.queue.lock();
        let held = q.held();
        if bytes > q.input {
            self.ledger().add(bytes - q.input);
        } else {
            self.ledger().sub(q.input - bytes);
        }
        q.input = bytes;
        self.ledger().holding(held, q.held());
    }

    /// No more output will be queued; what is queued can still be drained.
    pub(crate) fn close(&self) {
        self.close_with(false);
    }

    /// The broker ends the session itself: queued output is discarded (a
    /// slow consumer would never read it) and the listener is told to close
    /// the connection even if a write is stuck.
    pub(crate) fn evict(&self) {
        self.close_with(true);
    }

    fn close_with(&self, discard: bool) {
        let waiter = {
            let mut q = self.queue.lock();
            if q.closed && !discard {
                return;
            }
            q.closed = true;
            if discard {
                let held = q.held();
                let owned = owned_bytes(&q.entries);
                q.entries.clear();
                self.ledger().sub(owned);
                q.bytes = 0;
                self.ledger().holding(held, q.held());
            }
            q.backlog_waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        if discard {
            self.waker.closed();
        } else {
            self.waker.wake();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.queue.lock().closed
    }

    /// Bytes waiting in this queue.
    #[cfg(test)]
    pub(crate) fn queue_bytes(&self) -> usize {
        self.queue.lock().bytes
    }

    /// Everything held for the session.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.queue.lock().held()
    }

    /// Deliveries dropped for this subscriber so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn append_owned(&self, q: &mut Queue, bytes: &[u8]) {
        self.grow(q, bytes.len());
        self.ledger().add(bytes.len());
        if let Some(Entry::Owned(tail)) = q.entries.back_mut() {
            tail.extend_from_slice(bytes);
        } else {
            q.entries.push_back(Entry::Owned(bytes.to_vec()));
        }
    }

    fn append_vec(&self, q: &mut Queue, bytes: Vec<u8>) {
        if let Some(Entry::Owned(_)) = q.entries.back() {
            return self.append_owned(q, &bytes);
        }
        self.grow(q, bytes.len());
        self.ledger().add(bytes.len());
        q.entries.push_back(Entry::Owned(bytes));
    }

    fn append_shared(&self, q: &mut Queue, batch: &SharedBatch, start: usize, end: usize) {
        if copies(batch, end - start) {
            return self.append_owned(q, &batch[start..end]);
        }
        self.grow(q, end - start);
        if let Some(Entry::Shared {
            batch: last,
            end: last_end,
            ..
        }) = q.entries.back_mut()
        {
            if Arc::ptr_eq(last, batch) && *last_end == start {
                *last_end = end;
                return;
            }
        }
        q.entries.push_back(Entry::Shared {
            batch: batch.clone(),
            start,
            end,
        });
    }

    fn grow(&self, q: &mut Queue, n: usize) {
        let held = q.held();
        q.bytes += n;
        self.ledger().holding(held, q.held());
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // Give back what is still held: owned bytes, the writer's copy and
        // the input here, shared chunks as their references drop with the
        // entries.
        let q = self.queue.get_mut();
        let held = q.held();
        let memory = owned_bytes(&q.entries) + q.writer as usize + q.input;
        let ledger = &self.config.limits.ledger;
        ledger.sub(memory);
        ledger.holding(held, 0);
    }
}

/// Whether a range of `bytes` from `batch` is copied rather than shared.
fn copies(batch: &SharedBatch, bytes: usize) -> bool {
    bytes * SHARE_MIN_FRACTION < batch.len()
}

fn owned_bytes(entries: &VecDeque<Entry>) -> usize {
    entries
        .iter()
        .map(|e| match e {
            Entry::Owned(v) => v.len(),
            Entry::Shared { .. } => 0,
        })
        .sum()
}

/// What a drain takes: `whole` entries from the front, then `part` bytes
/// (whole lines) of the next; `bytes` in all.
#[derive(Clone, Copy, Default)]
struct Take {
    whole: usize,
    part: usize,
    bytes: usize,
}

/// Plans a drain of at most `cap` bytes: whole lines (one line more when
/// the first is longer), or with `pieces` any cut. Returns it and how many
/// of its bytes are copies of shared chunks (new memory once copied).
fn drain_plan(entries: &VecDeque<Entry>, cap: usize, pieces: bool) -> (Take, usize) {
    let mut take = Take::default();
    let mut shared = 0;
    for entry in entries {
        let (bytes, is_shared): (&[u8], bool) = match entry {
            Entry::Shared { batch, start, end } => (&batch[*start..*end], true),
            Entry::Owned(v) => (v, false),
        };
        let room = cap - take.bytes;
        let cut = if bytes.len() <= room {
            bytes.len()
        } else if pieces {
            room
        } else {
            // Whole lines up to the cap, or the first line if nothing is
            // taken yet: a line is never cut.
            match memchr::memrchr(b'\n', &bytes[..room]) {
                Some(nl) => nl + 1,
                None if take.bytes == 0 => {
                    memchr::memchr(b'\n', bytes).map_or(bytes.len(), |nl| nl + 1)
                }
                None => 0,
            }
        };
        if cut == bytes.len() {
            take.whole += 1;
        } else {
            take.part = cut;
        }
        take.bytes += cut;
        if is_shared {
            shared += cut;
        }
        if cut < bytes.len() || take.bytes >= cap {
            break;
        }
    }
    (take, shared)
}

/// Something bytes can be appended to: the listener's `RVec<u8>` buffer, or
/// a `Vec<u8>` in tests.
pub(crate) trait ExtendSlice {
    fn extend_slice(&mut self, bytes: &[u8]);
}

impl ExtendSlice for Vec<u8> {
    fn extend_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl ExtendSlice for mist_sdk::abi_stable::std_types::RVec<u8> {
    fn extend_slice(&mut self, bytes: &[u8]) {
        // `RVec::extend_from_slice` clones element by element; for bytes
        // that is a byte loop, 20x slower than the copy below (measured with
        // callgrind on the fan-out bench).
        self.reserve(bytes.len());
        let len = self.len();
        // SAFETY: `reserve` made room for `bytes.len()` more bytes after
        // `len`; the source is a separate borrow so the ranges cannot
        // overlap; every byte up to the new length is initialised.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.as_mut_ptr().add(len), bytes.len());
            self.set_len(len + bytes.len());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicUsize;

    use abi_stable::sabi_trait::TD_Opaque;
    use mist_sdk::abi::{OutputWakerApi, OutputWakerApi_TO};

    use super::*;

    #[derive(Default)]
    pub(crate) struct Signals {
        pub(crate) wakes: AtomicUsize,
        pub(crate) closes: AtomicUsize,
    }

    struct CountWakes(Arc<Signals>);

    impl OutputWakerApi for CountWakes {
        fn wake(&self) {
            self.0.wakes.fetch_add(1, Ordering::SeqCst);
        }

        fn closed(&self) {
            self.0.closes.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An output for session `id` holding up to `limit` bytes, under a
    /// generous memory budget of its own.
    pub(crate) fn output(id: SessionId, limit: usize) -> (Output, Arc<Signals>) {
        output_in(id, limit, &Ledger::new(1 << 30), Duration::from_secs(30))
    }

    pub(crate) fn output_in(
        session: SessionId,
        limit: usize,
        memory: &Arc<Ledger>,
        slow_after: Duration,
    ) -> (Output, Arc<Signals>) {
        let signals = Arc::new(Signals::default());
        let waker = OutputWakerApi_TO::from_value(CountWakes(signals.clone()), TD_Opaque);
        let config = OutputConfig {
            session,
            peer: "127.0.0.1:9".into(),
            limits: Arc::new(OutputLimits {
                limit,
                slow_after,
                ledger: memory.clone(),
            }),
        };
        (Output::new(config, waker), signals)
    }

    const ID: SessionId = SessionId {
        index: 7,
        generation: 0,
    };

    /// A batch of `n` messages of `len` bytes each, and their end offsets.
    /// A batch of `n` lines of `len` bytes each (newline included).
    fn batch_in(memory: &Arc<Ledger>, n: usize, len: usize) -> (SharedBatch, Vec<usize>) {
        let bytes: Vec<u8> = (0..n)
            .flat_map(|i| {
                let mut line = vec![b'a' + (i % 26) as u8; len];
                line[len - 1] = b'\n';
                line
            })
            .collect();
        (
            Arc::new(Chunk::new(bytes, memory)),
            (1..=n).map(|i| i * len).collect(),
        )
    }

    fn batch(n: usize, len: usize) -> (SharedBatch, Vec<usize>) {
        batch_in(&Ledger::new(1 << 30), n, len)
    }

    fn drained(out: &Output) -> (bool, Vec<u8>) {
        let mut buf = Vec::new();
        let open = out.drain_into(&mut buf, false);
        (open, buf)
    }

    #[test]
    fn adjacent_ranges_of_one_batch_merge_into_one_entry() {
        let (out, _) = output(ID, 1 << 20);
        let (b, ends) = batch(10, 100);
        out.push_deliveries(&b, 0, &ends[..5]);
        out.push_deliveries(&b, 500, &ends[5..]);
        assert_eq!(out.queue.lock().entries.len(), 1);
        assert_eq!(drained(&out).1, b[..]);
    }

    #[test]
    fn a_full_queue_keeps_the_oldest_and_drops_the_newest() {
        let (out, _) = output(ID, 350);
        let (b, ends) = batch(5, 100);
        let pushed = out.push_deliveries(&b, 0, &ends);
        assert_eq!((pushed.queued, pushed.dropped), (3, 2));
        assert_eq!(out.dropped(), 2);
        assert_eq!(drained(&out).1, b[..300]);
        // Drained, there is room again.
        assert_eq!(out.push_deliveries(&b, 0, &ends[..1]).queued, 1);
    }

    #[test]
    fn replies_are_never_dropped_and_report_the_backlog() {
        let (out, _) = output(ID, 10);
        for _ in 0..5 {
            assert!(out.push_reply(b"0123456789\n".to_vec()));
        }
        assert!(out.over_limit());
        let (b, ends) = batch(1, 5);
        assert_eq!(
            out.push_deliveries(&b, 0, &ends).dropped,
            1,
            "deliveries still respect the limit"
        );
        assert!(
            !out.push_notice(b"later\n"),
            "so do a plugin's later replies"
        );
        assert_eq!(drained(&out).1.len(), 55);
        assert!(out.over_limit(), "not yet written: the writer holds it");
        assert_eq!(drained(&out).1.len(), 0, "written: the listener asks again");
        assert!(!out.over_limit());
        assert!(out.push_notice(b"later\n"));
    }

    #[test]
    fn a_small_slice_of_a_big_batch_is_copied_not_retained() {
        let (out, _) = output(ID, 1 << 20);
        let (b, ends) = batch(10, 100);
        out.push_deliveries(&b, 300, &ends[3..4]);
        assert!(matches!(
            out.queue.lock().entries.front(),
            Some(Entry::Owned(_))
        ));
        assert_eq!(Arc::strong_count(&b), 1);
    }

    #[test]
    fn the_listener_is_woken_once_per_drain_cycle() {
        let (out, signals) = output(ID, 1 << 20);
        out.push_reply(b"a\n".to_vec());
        out.push_reply(b"b\n".to_vec());
        assert_eq!(signals.wakes.load(Ordering::SeqCst), 1);
        assert_eq!(drained(&out), (true, b"a\nb\n".to_vec()));
        out.push_reply(b"c\n".to_vec());
        assert_eq!(signals.wakes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn closing_keeps_queued_output_until_drained() {
        let (out, _) = output(ID, 1 << 20);
        out.push_reply(b"last\n".to_vec());
        out.close();
        assert!(!out.push_reply(b"after\n".to_vec()));
        assert_eq!(drained(&out), (true, b"last\n".to_vec()));
        assert_eq!(drained(&out), (false, Vec::new()));
    }

    #[test]
    fn memory_is_counted_once_per_chunk_and_given_back() {
        let memory = Ledger::new(1 << 20);
        let (a, _) = output_in(ID, 1 << 20, &memory, Duration::from_secs(30));
        let (b, _) = output_in(ID, 1 << 20, &memory, Duration::from_secs(30));
        let (chunk, ends) = batch_in(&memory, 10, 100);
        a.push_deliveries(&chunk, 0, &ends);
        b.push_deliveries(&chunk, 0, &ends);
        a.push_reply(b"0123456789".to_vec());
        drop(chunk);
        assert_eq!(memory.used(), 1000 + 10, "the chunk once, the reply once");
        drained(&a);
        assert_eq!(
            memory.used(),
            1000 + 1010,
            "b still holds the chunk; a's writer holds its copy until it asks again"
        );
        drained(&a);
        assert_eq!(memory.used(), 1000, "a's copy is written");
        b.evict();
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn a_drain_is_bounded_and_the_writers_copy_is_charged() {
        let memory = Ledger::new(1 << 30);
        let (out, _) = output_in(ID, 4 << 20, &memory, Duration::from_secs(30));
        // 2 MiB of 1 KiB lines in one shared chunk.
        let (chunk, ends) = batch_in(&memory, 2048, 1024);
        out.push_deliveries(&chunk, 0, &ends);
        drop(chunk);
        let mut got = Vec::new();
        assert!(out.drain_into(&mut got, false));
        assert_eq!(got.len(), DRAIN_CHUNK, "a quarter of a MiB per drain");
        assert_eq!(
            memory.used(),
            (2 << 20) + DRAIN_CHUNK,
            "the copy counts too"
        );
        assert_eq!(out.held(), 2 << 20, "moved from the queue to the writer");
        // One line longer than the cap: whole, unless taken in pieces.
        let (long, ends) = batch_in(&memory, 1, 3 * DRAIN_CHUNK);
        let (whole, _) = output_in(ID, 4 << 20, &memory, Duration::from_secs(30));
        let (pieces, _) = output_in(ID, 4 << 20, &memory, Duration::from_secs(30));
        whole.push_deliveries(&long, 0, &ends);
        pieces.push_deliveries(&long, 0, &ends);
        let mut got = Vec::new();
        whole.drain_into(&mut got, false);
        assert_eq!(got.len(), 3 * DRAIN_CHUNK);
        let mut got = Vec::new();
        pieces.drain_into(&mut got, true);
        assert_eq!(got.len(), DRAIN_CHUNK);
        let mut rest = Vec::new();
        pieces.drain_into(&mut rest, true);
        pieces.drain_into(&mut rest, true);
        got.extend_from_slice(&rest);
        assert_eq!(got, long[..], "the pieces make the line, in order");
    }

    #[test]
    fn drops_for_a_budget_spent_by_others_do_not_start_the_slow_clock() {
        let memory = Ledger::new(4000);
        let slow = Duration::ZERO;
        let (hog, _) = output_in(ID, 1 << 20, &memory, slow);
        let (reader, _) = output_in(ID, 1 << 20, &memory, slow);
        // The hog's replies take the budget (replies are never dropped).
        for _ in 0..41 {
            hog.push_reply(vec![b'r'; 100]);
        }
        assert!(hog.over_limit(), "over its share: its input would stop");
        let (chunk, ends) = batch_in(&memory, 1, 100);
        let pushed = reader.push_deliveries(&chunk, 0, &ends);
        assert_eq!(pushed.dropped, 1, "no room in the budget");
        assert!(!pushed.slow, "but the reader is not the one holding it");
        let pushed = hog.push_deliveries(&chunk, 0, &ends);
        assert!(
            pushed.slow,
            "the hog's own share is exceeded: its clock runs"
        );
    }

    #[test]
    fn over_the_budget_the_big_queue_drops_and_the_small_one_does_not() {
        let memory = Ledger::new(4000);
        let slow = Duration::from_secs(30);
        let (big, _) = output_in(ID, 1 << 20, &memory, slow);
        let (small, _) = output_in(ID, 1 << 20, &memory, slow);
        let (chunk, ends) = batch_in(&memory, 31, 100);
        big.push_deliveries(&chunk, 0, &ends[..30]);
        small.push_deliveries(&chunk, 3000, &ends[30..]);
        drop(chunk);
        // 3,100 of 4,000 used: pressure. The fair share is 2,000.
        let (next, ends) = batch_in(&memory, 2, 100);
        assert_eq!(big.push_deliveries(&next, 0, &ends).dropped, 2);
        assert_eq!(small.push_deliveries(&next, 0, &ends).queued, 2);
    }

    #[test]
    fn a_queue_full_for_the_timeout_is_reported_slow_and_eviction_discards() {
        let memory = Ledger::new(1 << 20);
        let (out, signals) = output_in(ID, 100, &memory, Duration::ZERO);
        let (b, ends) = batch_in(&memory, 3, 100);
        assert!(!out.push_deliveries(&b, 0, &ends[..1]).slow);
        assert!(out.push_deliveries(&b, 100, &ends[1..]).slow);
        out.evict();
        assert_eq!(signals.closes.load(Ordering::SeqCst), 1);
        assert_eq!(drained(&out), (false, Vec::new()), "nothing left to write");
        drop(b);
        assert_eq!(memory.used(), 0);
    }
}
