//! `line_protocol`: arbitrary bytes into a session, as a TCP, WebSocket or
//! HTTP listener would hand them over.
//!
//! Input: `[flags, seed, data...]`.
//!
//! - `flags` bits 0–1: the limits (tiny, small, roomy, default-sized);
//!   bit 2: admin mode (a `memory://` store with one registered token);
//!   bits 3–4: the token the fuzzed session gives at connect (none, the
//!   server token, the registered one, an unknown one); bits 5–6: how the
//!   data goes in (a byte stream cut into pieces, one message per line,
//!   one `execute` per line, or a mix); bit 7: feeds are not awaited before
//!   the next one (input piles up in the session's backlog).
//! - `seed` drives the cuts and what happens between pieces: a second
//!   client subscribed to `["a"]` and `["b","c"]` publishes, the broker
//!   publishes the piece itself as data, output is drained or left to pile
//!   up (seed 0: the data in one piece, nothing in between).
//!
//! Checked: every line sent to either client is one JSON object ending in
//! `\n`; the watching client gets only deliveries its subscriptions match;
//! no future hangs; a `ping` after the data is answered last; once both
//! sessions are closed, no session, subscription or queued byte is left.

use std::time::Duration;

use abi_stable::std_types::{RNone, RString, RVec};
use mist_sdk::{ErrorKind, SessionInfo};
use serde_json::Value;

use crate::check::Expect;
use crate::client::{drive, settle, Client};
use crate::fixtures::{self, ADMIN, STRANGER, USER};
use mist::broker::{Broker, Limits};

/// The watching client's subscriptions.
const WATCHED: &[&[&str]] = &[&["a"], &["b", "c"]];
const WATCH: &[u8] =
    b"{\"command\":\"subscribe\",\"tags\":[\"a\"]}\n{\"command\":\"subscribe\",\"tags\":[\"b\",\"c\"]}\n";
/// Short enough for the tiny limits' 64 bytes.
const PUBLISH: &[u8] = b"{\"command\":\"publish\",\"tags\":[\"c\",\"b\",\"a\"],\"data\":\"w\"}\n";
const PING: &[u8] = b"{\"command\":\"ping\"}";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Stream,
    Messages,
    Execute,
    Mixed,
}

/// Runs one input. Panics when an invariant breaks.
pub fn line_protocol(input: &[u8]) {
    run(input);
}

/// Lines each client was sent.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    fuzzed: usize,
    watcher: usize,
}

fn run(input: &[u8]) -> Seen {
    let [flags, seed, data @ ..] = input else {
        return Seen::default();
    };
    let broker = Broker::new(limits(flags & 3));
    let admin = flags & 4 != 0;
    if admin {
        fixtures::admin_mode(&broker);
    }
    fixtures::echo_command(&broker);
    let handle = broker.handle();
    let token = [None, Some(ADMIN), Some(USER), Some(STRANGER)][usize::from(flags >> 3 & 3)];
    let info = SessionInfo::new("tcp", "fuzzed").with_token(token.map(String::from));
    let mut fuzzed = Client::open(&handle, info, Expect::Any);
    let info = SessionInfo::new("tcp", "watcher").with_token(admin.then(|| ADMIN.to_owned()));
    let mut watcher = Client::open(&handle, info, Expect::Deliveries(WATCHED));
    let subscribed = watcher.feed(WATCH);
    settle(subscribed, &mut [&mut watcher]);

    let mode =
        [Mode::Stream, Mode::Messages, Mode::Execute, Mode::Mixed][usize::from(flags >> 5 & 3)];
    let eager = flags & 0x80 != 0;
    let mut rng = Rng::new(*seed);
    let mut held = Vec::new();
    for piece in pieces(data, mode, &mut rng) {
        let choice = if mode == Mode::Mixed {
            rng.next() % 3
        } else {
            0
        };
        let pending = match (mode, choice) {
            (Mode::Stream, _) => fuzzed.feed(piece),
            (Mode::Messages, _) | (Mode::Mixed, 1) => fuzzed.feed_message(piece),
            (Mode::Execute, _) | (Mode::Mixed, 2) => {
                execute(&mut fuzzed, &mut watcher, piece);
                None
            }
            (Mode::Mixed, _) => {
                let mut line = piece.to_vec();
                line.push(b'\n');
                fuzzed.feed(&line)
            }
        };
        held.extend(pending);
        if !eager {
            settle_all(&mut held, &mut fuzzed, &mut watcher);
        }
        let between = if *seed == 0 { 0 } else { rng.next() };
        if between & 3 == 1 {
            let published = watcher.feed(PUBLISH);
            settle(published, &mut [&mut watcher, &mut fuzzed]);
        }
        if between & 12 == 4 {
            let data = RString::from(String::from_utf8_lossy(piece).as_ref());
            let tags: RVec<RString> = ["a", "b"].into_iter().map(RString::from).collect();
            let published = handle.publish(tags, data, RNone).into_result();
            published.expect("the broker publishes any text on valid tags");
        }
        if between & 16 != 0 {
            fuzzed.drain();
            watcher.drain();
        }
        if between & 32 != 0 {
            settle_all(&mut held, &mut fuzzed, &mut watcher);
        }
    }
    settle_all(&mut held, &mut fuzzed, &mut watcher);
    ping_barrier(&mut fuzzed, &mut watcher, mode);

    fuzzed.close();
    watcher.close();
    fuzzed.drain();
    watcher.drain();
    let seen = Seen {
        fuzzed: fuzzed.lines,
        watcher: watcher.lines,
    };
    drop((fuzzed, watcher));
    let stats = broker.stats();
    assert_eq!(
        (stats.sessions, stats.subscriptions),
        (0, 0),
        "sessions or subscriptions outlived their connections"
    );
    assert_eq!(
        broker.figures().queue_bytes,
        0,
        "queued bytes not given back after every session closed"
    );
    seen
}

/// A `ping` after everything is answered after everything: its `pong` is
/// the last line (unless the broker disconnected the client as too slow).
fn ping_barrier(fuzzed: &mut Client, watcher: &mut Client, mode: Mode) {
    if fuzzed.evicted() {
        return;
    }
    let pending = match mode {
        // A newline first ends a line left unfinished.
        Mode::Stream | Mode::Mixed => fuzzed.feed(&[b"\n", PING, b"\n"].concat()),
        Mode::Messages | Mode::Execute => fuzzed.feed_message(PING),
    };
    settle(pending, &mut [&mut *fuzzed, &mut *watcher]);
    if fuzzed.evicted() {
        return;
    }
    let last = fuzzed.last_line();
    let pong = serde_json::json!({"command": "ping", "data": "pong"});
    assert_eq!(
        last.map(Value::Object),
        Some(pong),
        "the ping sent last was not answered last"
    );
}

fn execute(fuzzed: &mut Client, watcher: &mut Client, request: &[u8]) {
    let running = fuzzed.execute(request);
    let result = drive(running, &mut [&mut *fuzzed, &mut *watcher]).into_result();
    if let Err(e) = result {
        // What a request can be refused for; never a failure of the broker.
        let expected = [
            ErrorKind::INVALID_INPUT,
            ErrorKind::NOT_FOUND,
            ErrorKind::ALREADY_EXISTS,
            ErrorKind::PERMISSION_DENIED,
            ErrorKind::UNAUTHENTICATED,
            ErrorKind::TOO_LARGE,
            // Busy with a feed not yet awaited.
            ErrorKind::OVERLOADED,
        ];
        let closed = e.kind == ErrorKind::OTHER && e.message.as_str() == "the session is closed";
        assert!(
            expected.contains(&e.kind) || closed,
            "execute failed with kind {:?}: {}",
            e.kind,
            e.message
        );
    }
}

fn settle_all(held: &mut Vec<async_ffi::FfiFuture<()>>, fuzzed: &mut Client, watcher: &mut Client) {
    for pending in held.drain(..) {
        drive(pending, &mut [&mut *fuzzed, &mut *watcher]);
    }
}

/// The data cut as `mode` takes it: stream pieces of 1–48 bytes (the
/// whole when `seed` is 0), or lines.
fn pieces<'d>(data: &'d [u8], mode: Mode, rng: &mut Rng) -> Vec<&'d [u8]> {
    if mode != Mode::Stream {
        return data.split(|&b| b == b'\n').collect();
    }
    if rng.fixed {
        return vec![data];
    }
    let mut pieces = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let size = (1 + rng.next() as usize % 48).min(rest.len());
        let (piece, after) = rest.split_at(size);
        pieces.push(piece);
        rest = after;
    }
    pieces
}

fn limits(profile: u8) -> Limits {
    let base = Limits {
        max_message_bytes: 1 << 20,
        max_queue_bytes: 64 << 20,
        max_memory: 256 << 20,
        max_tags: 1024,
        max_subscriptions: 10_000,
        max_connections: 16,
        slow_consumer_timeout: Duration::from_secs(30),
        header_timeout: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
    };
    match profile {
        // Everything overflows; a subscriber that drops once is disconnected.
        0 => Limits {
            max_message_bytes: 64,
            max_queue_bytes: 256,
            max_memory: 1024,
            max_tags: 3,
            max_subscriptions: 3,
            slow_consumer_timeout: Duration::ZERO,
            ..base
        },
        // The global budget is below two full queues.
        1 => Limits {
            max_message_bytes: 512,
            max_queue_bytes: 2048,
            max_memory: 3000,
            max_tags: 8,
            max_subscriptions: 8,
            ..base
        },
        2 => Limits {
            max_message_bytes: 8192,
            max_queue_bytes: 1 << 16,
            max_memory: 1 << 20,
            max_tags: 64,
            max_subscriptions: 64,
            ..base
        },
        _ => base,
    }
}

/// xorshift32: cheap, and the same cuts for the same input everywhere.
struct Rng {
    state: u32,
    /// Seed 0: no cuts and nothing in between.
    fixed: bool,
}

impl Rng {
    fn new(seed: u8) -> Rng {
        Rng {
            state: u32::from(seed).wrapping_mul(0x9E37_79B9) | 1,
            fixed: seed == 0,
        }
    }

    fn next(&mut self) -> u32 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(flags: u8, seed: u8, lines: &[&str]) -> Vec<u8> {
        let mut input = vec![flags, seed];
        for line in lines {
            input.extend_from_slice(line.as_bytes());
            input.push(b'\n');
        }
        input
    }

    #[test]
    fn replies_and_deliveries_flow_in_every_mode() {
        let lines = [
            r#"{"command":"subscribe","tags":["b"]}"#,
            r#"{"command":"publish","tags":["a"],"data":"x"}"#,
            r#"{"command":"ping"}"#,
            "not json",
        ];
        for mode in 0..4 {
            // Default limits; the watcher publishes after every piece.
            let seen = run(&input(3 | mode << 5, 1, &lines));
            assert!(seen.watcher >= 1, "mode {mode}: {seen:?}");
            assert!(seen.fuzzed >= 2, "mode {mode}: {seen:?}");
        }
    }

    #[test]
    fn admin_mode_keeps_the_anonymous_out() {
        let lines = [r#"{"command":"publish","tags":["a"],"data":"x"}"#];
        let anonymous = run(&input(3 | 4, 0, &lines));
        assert_eq!(
            anonymous,
            Seen {
                fuzzed: 2,
                watcher: 0
            },
            "an error, then the pong"
        );
        let user = run(&input(3 | 4 | 2 << 3, 0, &lines));
        assert_eq!(
            user,
            Seen {
                fuzzed: 1,
                watcher: 1
            },
            "the pong; the delivery"
        );
    }

    #[test]
    fn a_tiny_queue_halts_input_and_drops_deliveries() {
        // 100 pings overflow the 256-byte queue; every piece is followed by
        // the watcher's publish or the broker's own.
        let lines = [r#"{"command":"ping"}"#; 100];
        let seen = run(&input(0, 9, &lines));
        assert_eq!(seen.fuzzed, 101, "every ping answered, the barrier last");
    }
}
