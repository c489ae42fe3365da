//! A session's state: everything about one client that its commands read
//! and change, in one place, guarded by the session's lock.
//!
//! The session (`session`) owns the sequencing of input around it, the
//! commands (`cmd`) change it, and the output queue (`output`), which the
//! router and the listener's writer reach too, lives apart.

use std::collections::VecDeque;
use std::time::Instant;

use mist_sdk::{Access, Grant};

use super::access::{is_server_token, Token};
use super::delivery::Batch;
use super::framing::LineFramer;
use super::shared::Shared;

/// What a session may do.
#[derive(Debug, Clone)]
pub(crate) struct Standing {
    pub(crate) access: Access,
    /// The token of an `Access::TOKEN` session, or why an anonymous
    /// session's token given at connect was refused (boxed: most sessions
    /// have none, and it is 56 bytes).
    pub(crate) credential: Option<Box<Credential>>,
}

impl Standing {
    pub(crate) fn new(access: Access) -> Standing {
        Standing {
            access,
            credential: None,
        }
    }

    /// The registered token of a session that has one.
    pub(crate) fn registered(&self) -> Option<&Token> {
        match self.credential.as_deref() {
            Some(Credential::Registered { token, .. }) => Some(token),
            _ => None,
        }
    }

    /// Whether the session authenticated with a signed token (a JWT),
    /// which a later `auth` may replace.
    pub(crate) fn is_signed(&self) -> bool {
        matches!(self.credential.as_deref(), Some(Credential::Signed { .. }))
    }

    /// Whether the session's grant has ended.
    pub(crate) fn expired(&self) -> bool {
        self.credential
            .as_deref()
            .and_then(Credential::until)
            .is_some_and(|until| Instant::now() >= until)
    }
}

/// What a session authenticated with.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    /// A token registered in the store: its tags are looked up in the
    /// store at each command, so an admin's change applies at once.
    Registered {
        token: Token,
        until: Option<Instant>,
    },
    /// A token that carries its grant (a JWT, from an authenticator that
    /// keeps no tokens): checked once; its tags hold until `until`.
    Signed {
        /// Sorted, each once.
        tags: Box<[String]>,
        until: Option<Instant>,
    },
    /// An anonymous session's token given at connect, refused: why, for
    /// the errors its commands get.
    Refused(Box<str>),
}

impl Credential {
    /// What an authenticator's `grant` for `token` gives, `until` the
    /// monotonic instant it ends. The token is kept only for a store that
    /// keeps tokens (to ask it again at each command).
    pub(crate) fn new(
        keeps_tokens: bool,
        token: String,
        grant: Grant,
        until: Option<Instant>,
    ) -> Credential {
        if keeps_tokens {
            return Credential::Registered {
                token: Token::new(token),
                until,
            };
        }
        let mut tags: Vec<String> = grant.tags.into_iter().map(|t| t.into_string()).collect();
        tags.sort_unstable();
        tags.dedup();
        Credential::Signed {
            tags: tags.into_boxed_slice(),
            until,
        }
    }

    /// When the grant ends, if it does.
    pub(crate) fn until(&self) -> Option<Instant> {
        match self {
            Credential::Registered { until, .. } | Credential::Signed { until, .. } => *until,
            Credential::Refused(_) => None,
        }
    }

    /// For a signed token: whether it holds every one of `tags`.
    pub(crate) fn holds<S: AsRef<str>>(&self, tags: &[S]) -> bool {
        match self {
            Credential::Signed { tags: held, .. } => tags.iter().all(|t| {
                held.binary_search_by(|h| h.as_str().cmp(t.as_ref()))
                    .is_ok()
            }),
            _ => false,
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
