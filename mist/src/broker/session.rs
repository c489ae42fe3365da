//! One client's session: its input (framing, ordering, waiting on the
//! authenticator) and its output queue.
//!
//! Commands of one session take effect strictly in order. Most are carried
//! out synchronously inside `feed`; one that needs the authenticator or a
//! plugin returns a future, and the input after it waits in `backlog` until
//! that future has finished and resumed processing.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use async_ffi::{FfiFuture, FutureExt};
use mist_sdk::abi::OutputWakerBox;
use mist_sdk::{Access, SessionInfo};
use parking_lot::{Mutex, MutexGuard};

use super::commands::{Pending, State, Step};
use super::framing::{Frame, LineFramer};
use super::output::{ExtendSlice, Output};
use super::router::Slot;
use super::Shared;

pub(crate) struct Session {
    pub(crate) id: u32,
    pub(crate) shared: Arc<Shared>,
    pub(crate) output: Arc<Output>,
    pub(crate) input: Mutex<Input>,
    closed: AtomicBool,
}

/// Framed input waiting for an async step to finish.
enum Backlogged {
    Message(Vec<u8>),
    Refusal(String),
}

pub(crate) struct Input {
    framer: LineFramer,
    /// Stream input that arrived during, or was left after, an async step.
    backlog_bytes: Vec<u8>,
    /// Framed messages (and refusals) that arrived during an async step.
    backlog_messages: VecDeque<Backlogged>,
    /// An async step is in progress: new input joins the backlog.
    busy: bool,
    pub(crate) state: State,
}

impl Session {
    pub(crate) fn open(
        shared: Arc<Shared>,
        info: SessionInfo,
        waker: OutputWakerBox,
    ) -> Arc<Session> {
        let limits = shared.limits;
        let listener: Arc<str> = info.listener.as_str().into();
        let (id, output) = shared.router.write().add_session(|id| {
            let output = Arc::new(Output::new(id, limits.max_queue_bytes, waker));
            let slot = Slot {
                output: output.clone(),
                listener,
            };
            (slot, output)
        });
        let mut state = State::new(if shared.auth.get().is_some() {
            Access::ANONYMOUS
        } else {
            Access::OPEN
        });
        if let Some(token) = info.token.into_option() {
            state.present_token(&shared, token.into_string());
        }
        tracing::debug!(session = id, listener = %info.listener, peer = %info.peer, "session opened");
        Arc::new(Session {
            id,
            shared,
            output,
            input: Mutex::new(Input {
                framer: LineFramer::new(limits.max_message_bytes),
                backlog_bytes: Vec::new(),
                backlog_messages: VecDeque::new(),
                busy: false,
                state,
            }),
            closed: AtomicBool::new(false),
        })
    }

    /// Input from a line-framed stream. See `SessionApi::feed`.
    pub(crate) fn feed(self: &Arc<Self>, bytes: &[u8]) -> Option<FfiFuture<()>> {
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        let mut input = self.input.lock();
        if input.busy {
            input.backlog_bytes.extend_from_slice(bytes);
            return None;
        }
        if let Some(pending) = input.state.take_connect_check() {
            input.backlog_bytes.extend_from_slice(bytes);
            return Some(self.begin(input, pending));
        }
        match self.run_stream(&mut input, bytes) {
            Some((pending, rest)) => {
                input.backlog_bytes.extend_from_slice(rest);
                Some(self.begin(input, pending))
            }
            None => {
                drop(input);
                self.backpressure()
            }
        }
    }

    /// One framed message. See `SessionApi::feed_message`.
    pub(crate) fn feed_message(self: &Arc<Self>, message: &[u8]) -> Option<FfiFuture<()>> {
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        let mut input = self.input.lock();
        if input.busy {
            input
                .backlog_messages
                .push_back(Backlogged::Message(message.to_vec()));
            return None;
        }
        if let Some(pending) = input.state.take_connect_check() {
            input
                .backlog_messages
                .push_back(Backlogged::Message(message.to_vec()));
            return Some(self.begin(input, pending));
        }
        match self.run_message(&mut input, message) {
            Some(pending) => Some(self.begin(input, pending)),
            None => {
                drop(input);
                self.backpressure()
            }
        }
    }

    /// Input the listener could not accept: answered with an error, in order.
    pub(crate) fn refuse(&self, error: &str) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut input = self.input.lock();
        if input.busy {
            input
                .backlog_messages
                .push_back(Backlogged::Refusal(error.to_string()));
        } else {
            self.refuse_now(&mut input, error);
        }
    }

    fn refuse_now(&self, input: &mut Input, error: &str) {
        input.state.commands_seen = true;
        self.send_error("", error);
    }

    /// Carries out every complete line of `data` until one needs to wait;
    /// returns that step and the input after it.
    fn run_stream<'d>(&self, input: &mut Input, data: &'d [u8]) -> Option<(Pending, &'d [u8])> {
        let Input { framer, state, .. } = input;
        let mut wait = None;
        let rest = framer.feed(data, |frame| match self.execute(state, frame) {
            Step::Done => ControlFlow::Continue(()),
            Step::Wait(pending) => {
                wait = Some(pending);
                ControlFlow::Break(())
            }
        });
        state.batch.flush(&self.shared);
        wait.map(|pending| (pending, rest))
    }

    fn run_message(&self, input: &mut Input, message: &[u8]) -> Option<Pending> {
        let limit = self.shared.limits.max_message_bytes;
        let frame = if message.len() > limit {
            Frame::TooLarge(message.len())
        } else {
            Frame::Line(message)
        };
        let step = self.execute(&mut input.state, frame);
        input.state.batch.flush(&self.shared);
        match step {
            Step::Done => None,
            Step::Wait(pending) => Some(pending),
        }
    }

    /// Marks the session busy and returns the future that performs
    /// `first`, then works through the backlog.
    fn begin(self: &Arc<Self>, mut input: MutexGuard<'_, Input>, first: Pending) -> FfiFuture<()> {
        input.busy = true;
        drop(input);
        let session = self.clone();
        async move {
            let mut next = Some(first);
            while let Some(pending) = next.take() {
                session.perform(pending).await;
                next = session.resume();
            }
            session.backlog_drained().await;
        }
        .into_ffi()
    }

    /// Processes input that waited, until it is used up (clearing `busy`)
    /// or another step has to wait.
    fn resume(&self) -> Option<Pending> {
        let mut input = self.input.lock();
        loop {
            match input.backlog_messages.pop_front() {
                Some(Backlogged::Message(message)) => {
                    if let Some(pending) = self.run_message(&mut input, &message) {
                        return Some(pending);
                    }
                    continue;
                }
                Some(Backlogged::Refusal(error)) => {
                    self.refuse_now(&mut input, &error);
                    continue;
                }
                None => {}
            }
            if !input.backlog_bytes.is_empty() {
                let bytes = std::mem::take(&mut input.backlog_bytes);
                if let Some((pending, rest)) = self.run_stream(&mut input, &bytes) {
                    input.backlog_bytes = rest.to_vec();
                    return Some(pending);
                }
                continue;
            }
            input.busy = false;
            return None;
        }
    }

    /// A future to await before feeding more, if this session's own replies
    /// have filled its queue past the limit (a client that does not read).
    fn backpressure(self: &Arc<Self>) -> Option<FfiFuture<()>> {
        if !self.output.over_limit() {
            return None;
        }
        let session = self.clone();
        Some(async move { session.backlog_drained().await }.into_ffi())
    }

    async fn backlog_drained(&self) {
        poll_fn(|cx| {
            if self.output.wait_under_limit(cx.waker()) {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    pub(crate) fn drain(&self, out: &mut dyn ExtendSlice) -> bool {
        self.output.drain_into(out)
    }

    /// Ends the session: subscriptions go at once, queued output stays drainable.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.router.write().remove_session(self.id);
        self.output.close();
        tracing::debug!(
            session = self.id,
            dropped = self.output.dropped(),
            "session closed"
        );
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}
