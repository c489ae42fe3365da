//! `http_publish_body`: a `POST /publish` body as the HTTP plugin takes it
//! (`mist_plugin_http::publish_line`) and then as the broker carries it out
//! (`Session::execute`, the sdk's call for transports that answer each
//! request themselves).
//!
//! The input is the body. It is published twice: on a broker without an
//! authenticator, and on one in admin mode by a session holding a registered
//! token, then by sessions with no valid token. The verdict is checked
//! against the protocol's rules computed here independently
//! (`docs/protocol.md`: publish, Limits, Tokens and admin mode): the size
//! limit, tags a non-empty array of at most `max_tags` non-empty strings,
//! data a string or absent; a registered token only publishes tags it
//! holds; a session without a valid token publishes nothing. A published
//! body reaches a subscriber to `["a"]` exactly once when its tags include
//! `a`, with the body's tags and data unchanged.

use std::collections::BTreeMap;
use std::time::Duration;

use abi_stable::std_types::RVec;
use mist_sdk::{ErrorKind, SdkError, SessionInfo};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::check::Expect;
use crate::client::{drive, settle, Client};
use crate::fixtures::{self, ADMIN, STRANGER, USER, USER_TAGS};
use mist::broker::{Broker, Limits};

const WATCHED: &[&[&str]] = &[&["a"]];
const WATCH: &[u8] = b"{\"command\":\"subscribe\",\"tags\":[\"a\"]}\n";

const LIMITS: Limits = Limits {
    max_message_bytes: 1024,
    max_queue_bytes: 1 << 16,
    max_memory: 1 << 20,
    max_tags: 8,
    max_subscriptions: 8,
    max_connections: 16,
    slow_consumer_timeout: Duration::from_secs(30),
    header_timeout: Duration::from_secs(10),
    handshake_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(30),
};

/// Runs one body. Panics when an invariant breaks.
pub fn http_publish_body(body: &[u8]) {
    let line = match mist_plugin_http::publish_line(body) {
        Ok(line) => line,
        Err(message) => {
            assert!(
                !matches!(serde_json::from_slice(body), Ok(Value::Object(_))),
                "a JSON object body was refused: {message}"
            );
            return;
        }
    };
    // The plugin copies values raw (a lone surrogate escape included,
    // which no `Value` holds): only the fields the protocol reads must be
    // readable, and a `tags` or `data` that is not makes the body invalid.
    let fields: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(&line).expect("the request line is a JSON object");
    let mut request = Map::new();
    let mut unreadable = false;
    for (name, value) in fields {
        match serde_json::from_str::<Value>(value.get()) {
            Ok(value) => {
                request.insert(name, value);
            }
            Err(_) => unreadable |= name == "tags" || name == "data",
        }
    }
    assert_eq!(
        request.get("command").and_then(Value::as_str),
        Some("publish"),
        "the request line is not a publish: {line}"
    );
    let verdict = verdict(&request, unreadable, line.len());

    let open = Broker::new(LIMITS);
    publish(&open, None, &line, &request, &verdict, &[]);

    let admin = Broker::new(LIMITS);
    fixtures::admin_mode(&admin);
    let held = match &verdict {
        Ok(tags) if !tags.iter().all(|t| USER_TAGS.contains(&t.as_str())) => {
            Err(ErrorKind::PERMISSION_DENIED)
        }
        other => other.clone(),
    };
    publish(&admin, Some(USER), &line, &request, &held, &[]);
    // Without a valid token: never published. Refused as unauthenticated,
    // or for what the body is: which fault is reported first is the
    // broker's choice (the size, always first, is no choice).
    let (refused, also) = match verdict {
        Ok(_) => (ErrorKind::UNAUTHENTICATED, &[][..]),
        Err(kind) if kind == ErrorKind::TOO_LARGE => (kind, &[][..]),
        Err(kind) => (kind, &[ErrorKind::UNAUTHENTICATED][..]),
    };
    for anonymous in [None, Some(STRANGER)] {
        publish(&admin, anonymous, &line, &request, &Err(refused), also);
    }
    for broker in [open, admin] {
        let stats = broker.stats();
        assert_eq!((stats.sessions, stats.subscriptions), (0, 0));
        assert_eq!(
            broker.figures().queue_bytes,
            0,
            "queued bytes not given back"
        );
    }
}

/// What the protocol says of a publish: its tags, or the kind of its refusal.
fn verdict(
    request: &Map<String, Value>,
    unreadable: bool,
    size: usize,
) -> Result<Vec<String>, ErrorKind> {
    if size > LIMITS.max_message_bytes {
        return Err(ErrorKind::TOO_LARGE);
    }
    if unreadable {
        return Err(ErrorKind::INVALID_INPUT);
    }
    let tags: Vec<String> = match request.get("tags") {
        Some(Value::Array(tags)) => tags
            .iter()
            .map(|t| t.as_str().filter(|t| !t.is_empty()).map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or(ErrorKind::INVALID_INPUT)?,
        _ => return Err(ErrorKind::INVALID_INPUT),
    };
    if tags.is_empty() || tags.len() > LIMITS.max_tags {
        return Err(ErrorKind::INVALID_INPUT);
    }
    match request.get("data") {
        None | Some(Value::Null | Value::String(_)) => Ok(tags),
        Some(_) => Err(ErrorKind::INVALID_INPUT),
    }
}

/// Publishes `line` on `broker` as a session with `token`, watched by a
/// subscriber to `["a"]`, and checks the outcome against `expected` (a
/// refusal may also be of a kind in `also`).
fn publish(
    broker: &Broker,
    token: Option<&str>,
    line: &str,
    request: &Map<String, Value>,
    expected: &Result<Vec<String>, ErrorKind>,
    also: &[ErrorKind],
) {
    let handle = broker.handle();
    // The server token lets it subscribe in admin mode; without an
    // authenticator a connect token means nothing.
    let watching = SessionInfo::new("tcp", "watcher").with_token(Some(ADMIN.to_owned()));
    let mut watcher = Client::open(&handle, watching, Expect::Deliveries(WATCHED));
    let subscribed = watcher.feed(WATCH);
    settle(subscribed, &mut [&mut watcher]);

    let sdk = mist_sdk::Broker::from_abi(handle.clone());
    let info = SessionInfo::new("http", "fuzzed").with_token(token.map(str::to_owned));
    let session = sdk.open_session(info);
    let outcome: Result<(), SdkError> =
        drive(session.execute(line.as_bytes()), &mut [&mut watcher]);
    let agrees = match (&outcome, expected) {
        (Ok(()), Ok(_)) => true,
        // Which of two faults is reported first is the broker's choice.
        (Err(e), Err(kind)) => e.kind == *kind || also.contains(&e.kind),
        _ => false,
    };
    assert!(
        agrees,
        "publishing {} with token {token:?}: expected {expected:?}, got {outcome:?}",
        shorten(line)
    );
    session.close();
    let mut replies = RVec::new();
    drive(session.output(&mut replies), &mut [&mut watcher]);
    assert!(
        replies.is_empty(),
        "execute queued output of its own: {:?}",
        String::from_utf8_lossy(&replies)
    );
    drop(session);

    watcher.drain();
    let delivered = watcher.lines;
    match expected {
        Ok(tags) if tags.iter().any(|t| t == "a") => {
            assert_eq!(
                delivered,
                1,
                "{} reached its subscriber {delivered} times",
                shorten(line)
            );
            let delivery = watcher.last_line().unwrap_or_default();
            let sent_tags: Vec<Value> = tags.iter().map(|t| Value::from(t.as_str())).collect();
            assert_eq!(
                delivery.get("tags"),
                Some(&Value::Array(sent_tags)),
                "{}",
                shorten(line)
            );
            let data = match request.get("data") {
                Some(Value::String(data)) => data.as_str(),
                _ => "",
            };
            assert_eq!(
                delivery.get("data"),
                Some(&Value::from(data)),
                "{}",
                shorten(line)
            );
        }
        _ => assert_eq!(
            delivered,
            0,
            "{} reached a subscriber it does not match",
            shorten(line)
        ),
    }
    watcher.close();
    watcher.drain();
}

/// A line short enough for a failure message.
fn shorten(line: &str) -> String {
    match line.char_indices().nth(200) {
        Some((at, _)) => format!("{}... ({} bytes)", &line[..at], line.len()),
        None => line.to_owned(),
    }
}
