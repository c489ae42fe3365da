//! A session's outgoing queue: replies and deliveries waiting for the
//! listener to write them.
//!
//! Deliveries are not copied per subscriber: a publish batch is serialized
//! once into a shared buffer and each subscriber's queue holds a range of it.
//! Consecutive ranges of the same buffer merge into one entry, so a flood of
//! publishes on one tag costs each subscriber one entry per batch, not one per
//! message.
//!
//! Overflow policy: the queue holds at most `limit` bytes of deliveries. When
//! a batch does not fit, the messages that fit are kept and the newest ones
//! are dropped for this subscriber only, counted, and logged. Replies to the
//! session's own commands are never dropped; instead the session stops
//! reading its input until its backlog shrinks (see `Session::feed`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use mist_sdk::abi::OutputWakerBox;
use parking_lot::Mutex;

/// At most this much is handed to the listener per `drain`, so one write
/// stays bounded however long the backlog.
const DRAIN_CHUNK: usize = 1 << 20;

/// A range smaller than this fraction of its shared buffer is copied
/// instead of referenced: holding a small slice must not keep a large
/// buffer alive beyond what the byte limit accounts for.
const SHARE_MIN_FRACTION: usize = 2;

/// How often a subscriber that keeps dropping is logged again.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// A serialized publish batch, shared by every subscriber it goes to.
pub(crate) type SharedBatch = Arc<Vec<u8>>;

pub(crate) struct Output {
    session: u32,
    limit: usize,
    waker: OutputWakerBox,
    dropped: AtomicU64,
    queue: Mutex<Queue>,
}

struct Queue {
    entries: VecDeque<Entry>,
    /// Bytes waiting, replies included.
    bytes: usize,
    closed: bool,
    /// The listener has drained and may be waiting: the next push must wake it.
    wake_armed: bool,
    /// A feed waiting for the backlog to fall under the limit.
    backlog_waiter: Option<Waker>,
    last_drop_log: Option<Instant>,
    drops_since_log: u64,
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
}

impl Output {
    pub(crate) fn new(session: u32, limit: usize, waker: OutputWakerBox) -> Self {
        Output {
            session,
            limit,
            waker,
            dropped: AtomicU64::new(0),
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                bytes: 0,
                closed: false,
                wake_armed: true,
                backlog_waiter: None,
                last_drop_log: None,
                drops_since_log: 0,
            }),
        }
    }

    /// Queues a reply (one or more whole lines). Replies are never dropped.
    /// Returns `false` if the session is closed.
    pub(crate) fn push_reply(&self, line: &[u8]) -> bool {
        let wake = {
            let mut q = self.queue.lock();
            if q.closed {
                return false;
            }
            q.append_owned(line);
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
            let room = self.limit.saturating_sub(q.bytes);
            // Keep the oldest messages that fit; drop the newest.
            let fit = if end - start <= room {
                ends.len()
            } else {
                ends.partition_point(|&e| e - start <= room)
            };
            if fit > 0 {
                q.append_shared(batch, start, ends[fit - 1]);
            }
            let dropped = (ends.len() - fit) as u64;
            if dropped > 0 {
                self.note_drops(&mut q, dropped);
            }
            let wake = fit > 0 && q.take_wake();
            (
                Pushed {
                    queued: fit as u64,
                    dropped,
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
        q.drops_since_log += dropped;
        let now = Instant::now();
        if q.last_drop_log
            .is_none_or(|at| now.duration_since(at) >= DROP_LOG_INTERVAL)
        {
            tracing::warn!(
                session = self.session,
                dropped = q.drops_since_log,
                dropped_total = total,
                queue_limit_bytes = self.limit,
                "subscriber is not keeping up: dropping its newest messages"
            );
            q.last_drop_log = Some(now);
            q.drops_since_log = 0;
        }
    }

    /// Moves up to `DRAIN_CHUNK` bytes of waiting output into `out`.
    /// Returns `false` when the queue is closed and there was nothing to move.
    pub(crate) fn drain_into(&self, out: &mut dyn ExtendSlice) -> bool {
        let (open, waiter) = {
            let mut q = self.queue.lock();
            // Closed is reported only by a call that hands over nothing, so
            // the last bytes are always written.
            let open = !(q.closed && q.entries.is_empty());
            let mut moved = 0;
            while moved < DRAIN_CHUNK {
                let Some(entry) = q.entries.pop_front() else {
                    break;
                };
                let bytes = match &entry {
                    Entry::Shared { batch, start, end } => &batch[*start..*end],
                    Entry::Owned(v) => v.as_slice(),
                };
                out.extend_slice(bytes);
                moved += bytes.len();
            }
            q.bytes -= moved;
            // Whatever is pushed next must wake the listener, which may now wait.
            q.wake_armed = true;
            let waiter = if q.bytes <= self.limit {
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

    /// Whether the queue holds more than its limit (replies overflowing it).
    pub(crate) fn over_limit(&self) -> bool {
        self.queue.lock().bytes > self.limit
    }

    /// Registers `waker` to be woken when the backlog is back under the
    /// limit; returns `false` (without registering) if it already is.
    pub(crate) fn wait_under_limit(&self, waker: &Waker) -> bool {
        let mut q = self.queue.lock();
        if q.bytes <= self.limit || q.closed {
            return false;
        }
        q.backlog_waiter = Some(waker.clone());
        true
    }

    /// No more output will be queued; what is queued can still be drained.
    pub(crate) fn close(&self) {
        let (wake, waiter) = {
            let mut q = self.queue.lock();
            if q.closed {
                return;
            }
            q.closed = true;
            (true, q.backlog_waiter.take())
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        if wake {
            self.waker.wake();
        }
    }

    /// Deliveries dropped for this subscriber so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Queue {
    fn take_wake(&mut self) -> bool {
        std::mem::replace(&mut self.wake_armed, false)
    }

    fn append_owned(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len();
        if let Some(Entry::Owned(tail)) = self.entries.back_mut() {
            tail.extend_from_slice(bytes);
        } else {
            self.entries.push_back(Entry::Owned(bytes.to_vec()));
        }
    }

    fn append_shared(&mut self, batch: &SharedBatch, start: usize, end: usize) {
        if (end - start) * SHARE_MIN_FRACTION < batch.len() {
            return self.append_owned(&batch[start..end]);
        }
        self.bytes += end - start;
        if let Some(Entry::Shared {
            batch: last,
            end: last_end,
            ..
        }) = self.entries.back_mut()
        {
            if Arc::ptr_eq(last, batch) && *last_end == start {
                *last_end = end;
                return;
            }
        }
        self.entries.push_back(Entry::Shared {
            batch: batch.clone(),
            start,
            end,
        });
    }
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
mod tests {
    use std::sync::atomic::AtomicUsize;

    use abi_stable::sabi_trait::TD_Opaque;
    use mist_sdk::abi::{OutputWakerApi, OutputWakerApi_TO};

    use super::*;

    struct CountWakes(Arc<AtomicUsize>);

    impl OutputWakerApi for CountWakes {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn output(limit: usize) -> (Output, Arc<AtomicUsize>) {
        let wakes = Arc::new(AtomicUsize::new(0));
        let waker = OutputWakerApi_TO::from_value(CountWakes(wakes.clone()), TD_Opaque);
        (Output::new(7, limit, waker), wakes)
    }

    /// A batch of `n` messages of `len` bytes each, and their end offsets.
    fn batch(n: usize, len: usize) -> (SharedBatch, Vec<usize>) {
        let bytes: Vec<u8> = (0..n)
            .flat_map(|i| vec![b'a' + (i % 26) as u8; len])
            .collect();
        (Arc::new(bytes), (1..=n).map(|i| i * len).collect())
    }

    fn drained(out: &Output) -> (bool, Vec<u8>) {
        let mut buf = Vec::new();
        let open = out.drain_into(&mut buf);
        (open, buf)
    }

    #[test]
    fn adjacent_ranges_of_one_batch_merge_into_one_entry() {
        let (out, _) = output(1 << 20);
        let (b, ends) = batch(10, 100);
        out.push_deliveries(&b, 0, &ends[..5]);
        out.push_deliveries(&b, 500, &ends[5..]);
        assert_eq!(out.queue.lock().entries.len(), 1);
        assert_eq!(drained(&out).1, *b);
    }

    #[test]
    fn a_full_queue_keeps_the_oldest_and_drops_the_newest() {
        let (out, _) = output(350);
        let (b, ends) = batch(5, 100);
        let pushed = out.push_deliveries(&b, 0, &ends);
        assert_eq!(
            pushed,
            Pushed {
                queued: 3,
                dropped: 2
            }
        );
        assert_eq!(out.dropped(), 2);
        assert_eq!(drained(&out).1, b[..300]);
        // Drained, there is room again.
        assert_eq!(out.push_deliveries(&b, 0, &ends[..1]).queued, 1);
    }

    #[test]
    fn replies_are_never_dropped_and_report_the_backlog() {
        let (out, _) = output(10);
        for _ in 0..5 {
            assert!(out.push_reply(b"0123456789\n"));
        }
        assert!(out.over_limit());
        let (b, ends) = batch(1, 5);
        assert_eq!(
            out.push_deliveries(&b, 0, &ends).dropped,
            1,
            "deliveries still respect the limit"
        );
        assert_eq!(drained(&out).1.len(), 55);
        assert!(!out.over_limit());
    }

    #[test]
    fn a_small_slice_of_a_big_batch_is_copied_not_retained() {
        let (out, _) = output(1 << 20);
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
        let (out, wakes) = output(1 << 20);
        out.push_reply(b"a\n");
        out.push_reply(b"b\n");
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert_eq!(drained(&out), (true, b"a\nb\n".to_vec()));
        out.push_reply(b"c\n");
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn closing_keeps_queued_output_until_drained() {
        let (out, _) = output(1 << 20);
        out.push_reply(b"last\n");
        out.close();
        assert!(!out.push_reply(b"after\n"));
        assert_eq!(drained(&out), (true, b"last\n".to_vec()));
        assert_eq!(drained(&out), (false, Vec::new()));
    }
}
