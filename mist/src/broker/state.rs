//! A session's state: everything about one client that its commands read
//! and change, in one place, guarded by the session's lock.
//!
//! The session (`session`) owns the sequencing of input around it, the
//! commands (`cmd`) change it, and the output queue (`output`), which the
//! router and the listener's writer reach too, lives apart.

use std::collections::VecDeque;

use mist_sdk::Access;

use super::access::{is_server_token, Token};
use super::delivery::Batch;
use super::framing::LineFramer;
use super::shared::Shared;

/// What a session may do.
#[derive(Debug, Clone)]
pub(crate) struct Standing {
    pub(crate) access: Access,
    /// The registered token of an `Access::TOKEN` session (boxed: most
    /// sessions have none, and it is 56 bytes).
    pub(crate) token: Option<Box<Token>>,
}

impl Standing {
    pub(crate) fn new(access: Access) -> Standing {
        Standing {
            access,
            token: None,
        }
    }
}

/// One client's state.
pub(crate) struct State {
    /// The start of a line whose end has not arrived yet.
    pub(crate) framer: LineFramer,
    /// Input that arrived during, or was left after, a halt. Made by the
    /// halt and dropped when it is used up: a session that is not halted
    /// (an idle one) holds none.
    pub(crate) backlog: Option<Box<Backlog>>,
    /// Input is halted: new input joins the backlog.
    pub(crate) busy: bool,
    pub(crate) standing: Standing,
    /// A command has been processed: `auth` is no longer allowed.
    pub(crate) commands_seen: bool,
    /// A token given at connect, not yet checked with the authenticator.
    pub(crate) connect_token: Option<Box<str>>,
    /// Made by the session's first publish and kept for the next: a
    /// session that only subscribes (most of them) never holds one, and
    /// inline it would be half of every session's size.
    pub(crate) batch: Option<Box<Batch>>,
    /// What the listener says it holds for this session's input.
    pub(crate) listener_held: usize,
}

/// Input waiting for a halt to end, in the order it arrived.
#[derive(Default)]
pub(crate) struct Backlog {
    pub(crate) arrivals: VecDeque<Backlogged>,
}

/// One piece of waiting input.
pub(crate) enum Backlogged {
    /// Stream input (consecutive pieces are joined).
    Bytes(Vec<u8>),
    /// A framed message.
    Message(Vec<u8>),
    /// Input the listener refused, to be answered in order.
    Refusal(String),
}

impl State {
    /// The state of a new session, with the token it presented at connect.
    pub(crate) fn new(shared: &Shared, connect_token: Option<String>) -> State {
        let mut state = State {
            framer: LineFramer::default(),
            backlog: None,
            busy: false,
            standing: Standing::new(if shared.auth.get().is_some() {
                Access::ANONYMOUS
            } else {
                Access::OPEN
            }),
            commands_seen: false,
            connect_token: None,
            batch: None,
            listener_held: 0,
        };
        if let (Some(auth), Some(token)) = (shared.auth.get(), connect_token) {
            if is_server_token(&auth.server_token, &token) {
                state.standing.access = Access::ADMIN;
                state.commands_seen = true;
            } else {
                state.connect_token = Some(token.into_boxed_str());
            }
        }
        state
    }

    /// Input held besides the unfinished line: the backlog and what the
    /// listener holds.
    pub(crate) fn input_held(&self) -> usize {
        let backlog = self.backlog.as_ref().map_or(0, |b| {
            b.arrivals
                .iter()
                .map(|a| match a {
                    Backlogged::Bytes(bytes) | Backlogged::Message(bytes) => bytes.capacity(),
                    Backlogged::Refusal(error) => error.capacity(),
                })
                .sum()
        });
        backlog + self.listener_held
    }

    /// The backlog, made if need be.
    pub(crate) fn backlog(&mut self) -> &mut Backlog {
        self.backlog.get_or_insert_with(Box::default)
    }

    /// The token given at connect, to check before the first command.
    pub(crate) fn take_connect_token(&mut self) -> Option<String> {
        self.connect_token.take().map(String::from)
    }
}
