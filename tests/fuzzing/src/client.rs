//! Sessions driven the way a listener drives them, without a runtime: a
//! future the broker returns is polled by hand, and whenever it cannot go
//! on, every client's output is drained (and checked). A future that nothing
//! wakes and no draining can unblock would hang its connection forever:
//! that is reported as a failure, not waited on.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RVec};
use async_ffi::FfiFuture;
use mist_sdk::abi::{BrokerBox, OutputWakerApi, OutputWakerApi_TO, SessionBox};
use mist_sdk::{SdkError, SessionInfo};
use serde_json::{Map, Value};

use crate::check::{self, Expect};

/// Rounds of poll-and-drain one future may take: far more than any input
/// of the fuzzer's sizes needs, few enough to fail fast on a livelock.
const MAX_ROUNDS: usize = 100_000;

/// One client: its session, and the output checked as it is drained.
pub(crate) struct Client {
    session: SessionBox,
    expect: Expect,
    /// The broker ended the session (a slow consumer).
    evicted: Arc<AtomicBool>,
    buffer: RVec<u8>,
    /// The last line drained (without its newline), if any: kept raw,
    /// parsed only when asked for.
    last: Vec<u8>,
    has_last: bool,
    /// Lines drained so far.
    pub(crate) lines: usize,
}

struct Signals(Arc<AtomicBool>);

impl OutputWakerApi for Signals {
    // Output is drained whenever a future cannot go on, and at the end.
    fn wake(&self) {}

    fn closed(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Client {
    pub(crate) fn open(broker: &BrokerBox, info: SessionInfo, expect: Expect) -> Client {
        let evicted = Arc::new(AtomicBool::new(false));
        let waker = OutputWakerApi_TO::from_value(Signals(evicted.clone()), TD_Opaque);
        Client {
            session: broker.open_session(info, waker),
            expect,
            evicted,
            buffer: RVec::new(),
            last: Vec::new(),
            has_last: false,
            lines: 0,
        }
    }

    pub(crate) fn feed(&self, bytes: &[u8]) -> Option<FfiFuture<()>> {
        self.session.feed(bytes.into()).into_option()
    }

    pub(crate) fn feed_message(&self, message: &[u8]) -> Option<FfiFuture<()>> {
        self.session.feed_message(message.into()).into_option()
    }

    pub(crate) fn execute(&self, request: &[u8]) -> FfiFuture<RResult<(), SdkError>> {
        self.session.execute(request.into())
    }

    pub(crate) fn close(&self) {
        self.session.close();
    }

    pub(crate) fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Drains what is queued, checking it; returns the bytes drained.
    pub(crate) fn drain(&mut self) -> usize {
        let mut total = 0;
        loop {
            self.buffer.clear();
            let open = self.session.drain(&mut self.buffer);
            if self.buffer.is_empty() {
                return total;
            }
            total += self.buffer.len();
            let (lines, last) = check::output(&self.buffer, self.expect);
            self.lines += lines;
            if let Some(last) = last {
                self.last.clear();
                self.last.extend_from_slice(last);
                self.has_last = true;
            }
            if !open {
                return total;
            }
        }
    }

    /// Drains, and returns the last line the client has been sent.
    pub(crate) fn last_line(&mut self) -> Option<Map<String, Value>> {
        self.drain();
        self.has_last.then(|| check::object(&self.last))
    }
}

/// Runs `future` to completion, draining `clients` whenever it waits.
///
/// # Panics
///
/// If the future can never complete: it waits, nothing wakes it, and
/// draining every client's output frees nothing.
pub(crate) fn drive<F: Future>(future: F, clients: &mut [&mut Client]) -> F::Output {
    let mut future = pin!(future);
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    for _ in 0..MAX_ROUNDS {
        flag.0.store(false, Ordering::SeqCst);
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        let drained: usize = clients.iter_mut().map(|c| c.drain()).sum();
        if !flag.0.load(Ordering::SeqCst) && drained == 0 {
            panic!("hang: a session's future waits, nothing wakes it, and no client has output to drain");
        }
    }
    panic!("livelock: a session's future was still pending after {MAX_ROUNDS} rounds");
}

/// Completes `pending` (a feed's future, if any) with [`drive`].
pub(crate) fn settle(pending: Option<FfiFuture<()>>, clients: &mut [&mut Client]) {
    if let Some(future) = pending {
        drive(future, clients);
    }
}

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "hang")]
    fn a_future_nothing_wakes_is_a_hang() {
        drive(std::future::pending::<()>(), &mut []);
    }
}
