//! One suite every backplane plugin must pass, run by each plugin's own
//! tests against a real server (`redis-server`, `nats-server`) that the test
//! starts: two connections stand for two nodes.
//!
//! What it checks is what the host relies on (see `mist_sdk::Backplane`):
//! a confirmed subscription receives what is published afterwards; one
//! connection's payloads arrive in publish order across channels;
//! `publish` never waits and fails with `UNAVAILABLE` while the server is
//! gone; the plugin reconnects and resubscribes by itself, and says so.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use mist_sdk::abi::{BackplaneInboxApi, BackplaneInboxApi_TO};
use mist_sdk::abi_stable::sabi_trait::TD_Opaque;
use mist_sdk::abi_stable::std_types::{RArc, RSlice, RStr};
use mist_sdk::{Backplane, ErrorKind, Inbox, SdkError};
use tokio::sync::mpsc;

use crate::service::Service;
use crate::TIMEOUT;

/// The bound: cross-node delivery resumes within this after the
/// backplane returns.
pub const RESUME_WITHIN: Duration = Duration::from_secs(5);

/// What a test inbox saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `receive(channel, payload)`.
    Message(String, Vec<u8>),
    /// `connection(up)`.
    Connection(bool),
}

#[derive(Clone)]
struct Recorder(mpsc::UnboundedSender<Event>);

impl BackplaneInboxApi for Recorder {
    fn receive(&self, channel: RStr<'_>, payload: RSlice<'_, u8>) {
        let _ = self.0.send(Event::Message(
            channel.as_str().to_string(),
            payload.as_slice().to_vec(),
        ));
    }

    fn connection(&self, up: bool) {
        let _ = self.0.send(Event::Connection(up));
    }
}

/// An inbox that records what it is handed, and the receiving end.
pub fn inbox() -> (Inbox, Events) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let inbox = BackplaneInboxApi_TO::from_ptr(RArc::new(Recorder(sender)), TD_Opaque);
    (Inbox::from_abi(inbox), Events(receiver))
}

/// What one test inbox received, in order.
pub struct Events(mpsc::UnboundedReceiver<Event>);

impl Events {
    /// The next event, within [`TIMEOUT`].
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(TIMEOUT, self.0.recv())
            .await
            .expect("no backplane event in time")
            .expect("the inbox is gone")
    }

    /// The next message, skipping connection events.
    pub async fn message(&mut self) -> (String, Vec<u8>) {
        loop {
            if let Event::Message(channel, payload) = self.next().await {
                return (channel, payload);
            }
        }
    }

    /// Waits for `connection(up)`, skipping messages; panics after `within`.
    pub async fn connection(&mut self, up: bool, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let event = tokio::time::timeout_at(deadline, self.0.recv())
                .await
                .unwrap_or_else(|_| panic!("no connection({up}) within {within:?}"))
                .expect("the inbox is gone");
            if event == Event::Connection(up) {
                return;
            }
        }
    }

    /// Nothing is waiting (after a barrier, this proves a non-delivery).
    pub fn assert_empty(&mut self) {
        if let Ok(event) = self.0.try_recv() {
            panic!("unexpected event {event:?}");
        }
    }
}

/// Opens a backplane connection to the test's server.
pub type Open = Box<
    dyn Fn(Inbox) -> Pin<Box<dyn Future<Output = Result<Box<dyn Backplane>, SdkError>> + Send>>
        + Send
        + Sync,
>;

async fn node(open: &Open) -> (Box<dyn Backplane>, Events) {
    let (inbox, mut events) = inbox();
    let backplane = open(inbox).await.expect("opening the backplane");
    events.connection(true, TIMEOUT).await;
    backplane.health().expect("healthy once connected");
    (backplane, events)
}

async fn confirm(backplane: &dyn Backplane, channels: &[&str]) {
    let channels = channels.iter().map(|c| c.to_string()).collect();
    tokio::time::timeout(TIMEOUT, backplane.subscribe(channels))
        .await
        .expect("subscription confirmed in time")
        .expect("subscription confirmed");
}

fn strings(channels: &[&str]) -> Vec<String> {
    channels.iter().map(|c| c.to_string()).collect()
}

/// Once `subscribe` has completed, what another connection publishes on
/// the channel arrives; after `unsubscribe` it does not; a payload for
/// several channels arrives once per subscribed channel.
pub async fn round_trip(open: &Open) {
    let (a, _a_events) = node(open).await;
    let (b, mut b_events) = node(open).await;
    confirm(&*b, &["one", "two"]).await;
    a.publish(strings(&["one"]), b"hello".to_vec()).unwrap();
    assert_eq!(b_events.message().await, ("one".into(), b"hello".to_vec()));
    // Binary payloads travel untouched.
    let binary: Vec<u8> = (0..=255).collect();
    a.publish(strings(&["two", "three"]), binary.clone())
        .unwrap();
    assert_eq!(b_events.message().await, ("two".into(), binary));
    b.unsubscribe(strings(&["one"]));
    // Unsubscribing is not confirmed: a later confirmed subscribe on the
    // same connection is the barrier that it took effect.
    confirm(&*b, &["four"]).await;
    a.publish(strings(&["one"]), b"gone".to_vec()).unwrap();
    a.publish(strings(&["four"]), b"barrier".to_vec()).unwrap();
    assert_eq!(
        b_events.message().await,
        ("four".into(), b"barrier".to_vec())
    );
    b_events.assert_empty();
    a.stop();
    b.stop();
}

/// Payloads one connection publishes on several channels arrive in publish
/// order, across channels.
pub async fn order_across_channels(open: &Open) {
    let (a, _a_events) = node(open).await;
    let (b, mut b_events) = node(open).await;
    let channels = ["c0", "c1", "c2", "c3", "c4"];
    confirm(&*b, &channels).await;
    let count = 2000u32;
    let mut expected = Vec::new();
    for n in 0..count {
        // Mostly one channel, sometimes two (arriving once per channel).
        let mut to = vec![channels[n as usize % 5].to_string()];
        if n % 7 == 0 {
            to.push(channels[(n as usize + 2) % 5].to_string());
        }
        for channel in &to {
            expected.push((channel.clone(), n.to_be_bytes().to_vec()));
        }
        a.publish(to, n.to_be_bytes().to_vec()).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(b_events.message().await);
    }
    let numbers: Vec<u32> = got
        .iter()
        .map(|(_, p)| u32::from_be_bytes(p[..4].try_into().unwrap()))
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {:?}",
        numbers.windows(2).find(|w| w[0] > w[1])
    );
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let mut sorted_expected = expected;
    sorted_expected.sort();
    assert_eq!(sorted_got, sorted_expected);
    a.stop();
    b.stop();
}

/// What was published just before `stop` still goes: a node's last
/// payloads and its goodbye are not dropped with the connection. After
/// `stop`, publishing is refused.
pub async fn stop_sends_what_is_queued(open: &Open) {
    let (a, _a_events) = node(open).await;
    let (b, mut b_events) = node(open).await;
    confirm(&*b, &["last"]).await;
    for n in 0u32..100 {
        a.publish(strings(&["last"]), n.to_be_bytes().to_vec())
            .unwrap();
    }
    a.publish(strings(&["last"]), b"goodbye".to_vec()).unwrap();
    a.stop();
    assert_eq!(
        a.publish(strings(&["last"]), b"after".to_vec())
            .unwrap_err()
            .kind,
        ErrorKind::UNAVAILABLE
    );
    for n in 0u32..100 {
        assert_eq!(b_events.message().await.1, n.to_be_bytes());
    }
    assert_eq!(b_events.message().await.1, b"goodbye");
    b.stop();
}

/// The server is killed and started again on the same port: both sides
/// report the outage, `publish` fails fast with `UNAVAILABLE` without ever
/// waiting, a subscribe made meanwhile fails at once but is kept, and once
/// the server is back everything is subscribed again and delivery resumes
/// within [`RESUME_WITHIN`], with no call from the host.
pub async fn server_restart(open: &Open, server: &Service) {
    let (a, mut a_events) = node(open).await;
    let (b, mut b_events) = node(open).await;
    confirm(&*b, &["kept"]).await;
    a.publish(strings(&["kept"]), b"before".to_vec()).unwrap();
    assert_eq!(b_events.message().await.1, b"before");

    server.kill();
    b_events.connection(false, TIMEOUT).await;
    assert_eq!(b.health().unwrap_err().kind, ErrorKind::UNAVAILABLE);
    // Publishing never waits; within a few seconds it says UNAVAILABLE.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let started = Instant::now();
        let result = a.publish(strings(&["kept"]), b"while down".to_vec());
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "publish waited {:?}",
            started.elapsed()
        );
        if let Err(e) = result {
            assert_eq!(e.kind, ErrorKind::UNAVAILABLE);
            break;
        }
        assert!(Instant::now() < deadline, "publish never said UNAVAILABLE");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a_events.connection(false, TIMEOUT).await;
    // A subscription asked for while down fails at once, and is kept.
    let started = Instant::now();
    let down = tokio::time::timeout(TIMEOUT, b.subscribe(strings(&["later"])))
        .await
        .expect("subscribe while down answers");
    assert_eq!(down.unwrap_err().kind, ErrorKind::UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(1));

    server.restart();
    let back = Instant::now();
    a_events.connection(true, RESUME_WITHIN).await;
    b_events
        .connection(true, RESUME_WITHIN.saturating_sub(back.elapsed()))
        .await;
    assert!(back.elapsed() < RESUME_WITHIN, "took {:?}", back.elapsed());
    a.health().unwrap();
    b.health().unwrap();
    // Nothing published while down arrives (at-most-once), and both the old
    // and the new subscription work again.
    a.publish(strings(&["kept"]), b"after".to_vec()).unwrap();
    a.publish(strings(&["later"]), b"later".to_vec()).unwrap();
    assert_eq!(b_events.message().await, ("kept".into(), b"after".to_vec()));
    assert_eq!(
        b_events.message().await,
        ("later".into(), b"later".to_vec())
    );
    a.stop();
    b.stop();
}

/// A connection whose server is gone from the start: `open` still returns
/// (the node serves its own clients), reports down, refuses publishes, and
/// connects once the server appears.
pub async fn server_down_at_open(open: &Open, server: &Service) {
    server.stop();
    let (inbox, mut events) = inbox();
    let b = open(inbox).await.expect("opening while the server is down");
    assert_eq!(b.health().unwrap_err().kind, ErrorKind::UNAVAILABLE);
    assert_eq!(
        b.publish(strings(&["x"]), b"x".to_vec()).unwrap_err().kind,
        ErrorKind::UNAVAILABLE
    );
    let _ = b.subscribe(strings(&["x"])).await;
    server.restart();
    events
        .connection(true, RESUME_WITHIN + Duration::from_secs(2))
        .await;
    let (a, _a_events) = node(open).await;
    a.publish(strings(&["x"]), b"hi".to_vec()).unwrap();
    assert_eq!(events.message().await, ("x".into(), b"hi".to_vec()));
    a.stop();
    b.stop();
}
