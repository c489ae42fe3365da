//! The reader task: owns the subscriptions, confirms them with probes,
//! follows the client's connection events, and hands what arrives to the
//! host's inbox in publish order (see the crate docs for why the groups).

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_nats::{Event, Message, Subscriber};
use futures_util::StreamExt;
use mist_sdk::SdkError;
use tokio::sync::{mpsc, oneshot};

use crate::link::{Command, Link};
use crate::settings::LAST_WORDS;
use crate::subject::{self, STAMP};

/// Passes over the subscriptions per wake-up before the reader yields.
const PASSES_PER_WAKE: usize = 8;

/// Who waits for a probe to come back.
enum Waiter {
    /// A `subscribe` call.
    Reply(oneshot::Sender<Result<(), SdkError>>),
    /// The link, after a (re)connect.
    Up,
}

struct Reader {
    link: Arc<Link>,
    subscriptions: HashMap<String, Subscriber>,
    probes: Subscriber,
    next_probe: u64,
    /// Probes sent and not back yet, oldest first.
    waiting: Vec<(u64, Waiter)>,
    /// Messages seen in the last pass, not yet known complete: (stamp, message).
    held: Vec<((u64, u64), Message)>,
    /// Messages to hand to the host now.
    ready: Vec<((u64, u64), Message)>,
    /// Messages without a stamp dropped so far (not from a Mist node).
    foreign: u64,
}

/// What woke the reader.
enum Step {
    Command(Command),
    Probe(Message),
    Group,
}

pub(crate) fn start(
    link: Arc<Link>,
    commands: mpsc::UnboundedReceiver<Command>,
    probes: Subscriber,
) {
    let reader = Reader {
        link,
        subscriptions: HashMap::new(),
        probes,
        next_probe: 0,
        waiting: Vec::new(),
        held: Vec::new(),
        ready: Vec::new(),
        foreign: 0,
    };
    tokio::spawn(reader.run(commands));
}

impl Reader {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            // Unconstrained: tokio's cooperative budget would make a queue
            // that holds messages answer `Pending`, which a pass would take
            // for empty.
            let step =
                tokio::task::unconstrained(poll_fn(|cx| self.poll_step(cx, &mut commands))).await;
            match step {
                Step::Command(Command::Stop) => break,
                Step::Command(command) => self.command(command).await,
                Step::Probe(message) => self.probe_back(&message),
                Step::Group => self.deliver(),
            }
        }
        for (_, mut subscription) in self.subscriptions.drain() {
            let _ = subscription.unsubscribe().await;
        }
        // After the writer's last words (bounded by its own deadline).
        let mut done = self.link.writer_done.subscribe();
        let _ = tokio::time::timeout(LAST_WORDS * 2, done.wait_for(|done| *done)).await;
        let _ = self.link.client.drain().await;
    }

    /// Commands first (they are rare), then probes, then messages.
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Poll<Step> {
        if let Poll::Ready(command) = commands.poll_recv(cx) {
            return Poll::Ready(Step::Command(command.unwrap_or(Command::Stop)));
        }
        if let Poll::Ready(Some(message)) = self.probes.poll_next_unpin(cx) {
            return Poll::Ready(Step::Probe(message));
        }
        self.poll_group(cx)
    }

    /// One pass over every subscription's queue into `fresh`; then moves
    /// to `ready` what is safe to deliver.
    ///
    /// A message observed in one pass is safe once a later pass has run:
    /// the client fills the queues in socket order, so everything its
    /// publisher sent before it was in a queue when it was observed, and the
    /// later pass took it. Per publisher, everything up to the highest
    /// sequence number held from earlier passes is therefore complete and is
    /// delivered sorted; the rest waits for the next pass. Passes run until
    /// nothing is held, at most a few per wake-up before yielding.
    fn poll_group(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        for _ in 0..PASSES_PER_WAKE {
            let mut fresh = Vec::new();
            for subscription in self.subscriptions.values_mut() {
                while let Poll::Ready(Some(message)) = subscription.poll_next_unpin(cx) {
                    match subject::unstamp(&message.payload) {
                        Some((stamp, _)) => fresh.push((stamp, message)),
                        None => self.foreign += 1,
                    }
                }
            }
            if self.held.is_empty() && fresh.is_empty() {
                return Poll::Pending;
            }
            let mut complete: HashMap<u64, u64> = HashMap::new();
            for ((publisher, sequence), _) in &self.held {
                let top = complete.entry(*publisher).or_default();
                *top = (*top).max(*sequence);
            }
            self.ready.append(&mut self.held);
            for item in fresh {
                let ((publisher, sequence), _) = item;
                if complete.get(&publisher).is_some_and(|top| sequence <= *top) {
                    self.ready.push(item);
                } else {
                    self.held.push(item);
                }
            }
            if !self.ready.is_empty() {
                return Poll::Ready(Step::Group);
            }
        }
        // Still holding what the last pass found: come back for another.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn deliver(&mut self) {
        // Stable: copies of one payload on several subjects keep their order.
        self.ready.sort_by_key(|(stamp, _)| *stamp);
        for (_, message) in self.ready.drain(..) {
            self.link
                .inbox
                .receive(message.subject.as_str(), &message.payload[STAMP..]);
        }
        if self.foreign > 0 {
            tracing::warn!(
                "dropped {} NATS messages without a Mist stamp on Mist's subjects",
                std::mem::take(&mut self.foreign)
            );
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Subscribe(channels, reply) => {
                for channel in channels {
                    if self.subscriptions.contains_key(&channel) {
                        continue;
                    }
                    match self.link.client.subscribe(channel.clone()).await {
                        Ok(subscription) => {
                            self.subscriptions.insert(channel, subscription);
                        }
                        Err(e) => {
                            if let Some(reply) = reply {
                                let _ = reply.send(Err(SdkError::unavailable(format!(
                                    "subscribing on NATS at {} failed: {e}",
                                    self.link.place
                                ))));
                            }
                            return;
                        }
                    }
                }
                // Without a reply the subscription was made while down: the
                // client sends it on reconnect, and that probe covers it.
                if let Some(reply) = reply {
                    self.probe(Waiter::Reply(reply)).await;
                }
            }
            Command::Unsubscribe(channels) => {
                for channel in channels {
                    if let Some(mut subscription) = self.subscriptions.remove(&channel) {
                        let _ = subscription.unsubscribe().await;
                    }
                }
            }
            Command::Event(event) => self.event(event).await,
            Command::Stop => {}
        }
    }

    async fn event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                let info = self.link.client.server_info();
                self.link
                    .max_payload
                    .store(info.max_payload, Ordering::Relaxed);
                tracing::info!(
                    "NATS: on server {} ({}:{}) of {}",
                    info.server_name,
                    info.host,
                    info.port,
                    self.link.place
                );
                // The client sends its SUBs again before anything queued
                // after this event: the probe confirms them all.
                self.probe(Waiter::Up).await;
            }
            Event::Disconnected | Event::Closed => {
                // Pending confirmations fail (their senders are dropped).
                self.waiting.clear();
                self.link.set(false, &format!("{event}"));
            }
            Event::SlowConsumer(sid) => tracing::warn!(
                "NATS subscription {sid} overflowed: the client dropped messages from NATS at {}",
                self.link.place
            ),
            other => tracing::warn!("NATS at {}: {other}", self.link.place),
        }
    }

    /// Sends a probe to this connection's own probe subject.
    async fn probe(&mut self, waiter: Waiter) {
        self.next_probe += 1;
        let number = self.next_probe;
        self.waiting.push((number, waiter));
        let sent = self
            .link
            .client
            .publish(
                self.link.probe_subject.clone(),
                number.to_be_bytes().to_vec().into(),
            )
            .await;
        if let Err(e) = sent {
            tracing::debug!("sending a NATS probe failed: {e}");
        }
    }

    /// Probe `n` came back: the server has processed everything sent
    /// before it.
    fn probe_back(&mut self, message: &Message) {
        let Some(number) = message
            .payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            return;
        };
        let mut up = false;
        let mut still = Vec::new();
        for (n, waiter) in self.waiting.drain(..) {
            if n > number {
                still.push((n, waiter));
                continue;
            }
            match waiter {
                Waiter::Reply(reply) => {
                    let _ = reply.send(Ok(()));
                }
                Waiter::Up => up = true,
            }
        }
        self.waiting = still;
        if up {
            self.link.set(true, "");
        }
    }
}
