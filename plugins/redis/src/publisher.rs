//! The publishing connections: one task takes what the host queued in the
//! outbox and sends it to Redis as pipelined `PUBLISH` commands, in order.
//! At `stop` it sends what is still queued (the host's last payloads, its
//! goodbye among them) before it ends, for at most [`LAST_WORDS`].
//!
//! With one instance that is one connection, so every subscriber sees this
//! node's payloads in order across channels. With several, each channel's
//! payloads go to one instance ([`Placement`]) among those usable now, in
//! lockstep: a batch is split by instance, the pipelines are sent side by
//! side, and the next batch is taken only once every instance answered.
//! So one channel's payloads keep their order, and payloads of different
//! channels are never further apart than one batch (at most
//! [`MAX_PIPELINE`] payloads; the host's duplicate window is 1,024). When
//! an instance fails, what its pipeline held is sent again through the
//! others (the host drops any copy that had got through already), and when
//! the usable instances change, publishing pauses for [`SETTLE`] so that
//! what went through the old placement arrives first.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::{join_all, BoxFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use mist_sdk::Outgoing;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::time::{sleep, sleep_until};

use crate::link::{Link, Side};
use crate::placement::Placement;
use crate::settings::{Backoff, CONNECT_TIMEOUT, LAST_WORDS, PING_EVERY, RESPONSE_TIMEOUT, SETTLE};

/// Queued publishes sent in one round of pipelines at most.
const MAX_PIPELINE: usize = 512;

/// One instance's publishing connection.
struct Connection {
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
    backoff: Backoff,
    /// When to try connecting next; `None` while connected or connecting.
    retry_at: Option<Instant>,
}

type Connecting =
    FuturesUnordered<BoxFuture<'static, (usize, redis::RedisResult<MultiplexedConnection>)>>;

/// Starts the publishing task over the instances' `clients` (in the
/// link's order).
pub(crate) fn start(link: Arc<Link>, clients: Vec<redis::Client>) {
    tokio::spawn(run(link, clients));
}

/// What the main loop does after its `select!`.
enum Action {
    Stop,
    Send,
    Ping,
    Nothing,
}

struct Publisher {
    link: Arc<Link>,
    placement: Placement,
    connections: Vec<Connection>,
    /// The instances the last round went through.
    last_usable: Vec<usize>,
}

async fn run(link: Arc<Link>, clients: Vec<redis::Client>) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT);
    let now = Instant::now();
    let mut publisher = Publisher {
        placement: Placement::new(&link.places),
        connections: clients
            .into_iter()
            .map(|client| Connection {
                client,
                connection: None,
                backoff: Backoff::new(),
                retry_at: Some(now),
            })
            .collect(),
        link,
        last_usable: Vec::new(),
    };
    let link = publisher.link.clone();
    let mut stopped = link.stopped.subscribe();
    let mut connecting: Connecting = FuturesUnordered::new();
    let mut batch: Vec<Outgoing> = Vec::new();
    loop {
        let now = Instant::now();
        publisher.connect_due(&mut connecting, &config);
        let next_retry = publisher
            .connections
            .iter()
            .filter_map(|c| c.retry_at)
            .min();
        let connected = publisher.connections.iter().any(|c| c.connection.is_some());
        let mut action = Action::Nothing;
        tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => action = Action::Stop,
            Some((index, result)) = connecting.next(), if !connecting.is_empty() => {
                publisher.connected(index, result);
            }
            _ = link.outbox.next_batch(MAX_PIPELINE, &mut batch), if connected => {
                action = Action::Send;
            }
            _ = link.check_publisher.notified() => action = Action::Ping,
            _ = sleep(PING_EVERY) => action = Action::Ping,
            _ = sleep_until(next_retry.unwrap_or(now).into()), if next_retry.is_some() => {}
        }
        // Awaited outside `select!`, whose futures (a `watch` guard among
        // them) are not `Send`.
        match action {
            Action::Stop => break,
            Action::Send => publisher.dispatch(&mut batch).await,
            Action::Ping => publisher.ping().await,
            Action::Nothing => {}
        }
    }
    let last = async {
        loop {
            link.outbox.try_batch(MAX_PIPELINE, &mut batch);
            if batch.is_empty() {
                return;
            }
            publisher.dispatch(&mut batch).await;
        }
    };
    let _ = tokio::time::timeout(LAST_WORDS, last).await;
}

impl Publisher {
    /// Starts the connection attempts that are due.
    fn connect_due(&mut self, connecting: &mut Connecting, config: &AsyncConnectionConfig) {
        let now = Instant::now();
        for (index, c) in self.connections.iter_mut().enumerate() {
            if c.retry_at.is_some_and(|at| at <= now) {
                c.retry_at = None;
                let client = c.client.clone();
                let config = config.clone();
                connecting.push(Box::pin(async move {
                    let result = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await;
                    (index, result)
                }));
            }
        }
    }

    fn connected(&mut self, index: usize, result: redis::RedisResult<MultiplexedConnection>) {
        let Some(c) = self.connections.get_mut(index) else {
            return;
        };
        match result {
            Ok(connection) if !self.link.is_stopped() => {
                c.connection = Some(connection);
                c.backoff.reset();
                self.link.set(index, Side::Publisher, true, "");
            }
            Ok(_) => {}
            Err(e) => self.fail(index, &format!("cannot connect: {e}")),
        }
    }

    /// Instance `index`'s connection failed: down, and retried after the
    /// backoff.
    fn fail(&mut self, index: usize, reason: &str) {
        let Some(c) = self.connections.get_mut(index) else {
            return;
        };
        c.connection = None;
        c.retry_at = Some(Instant::now() + c.backoff.next());
        self.link.set(index, Side::Publisher, false, reason);
    }

    /// Checks every connection with a `PING` (idle, or told to check: it
    /// notices a server that is gone).
    async fn ping(&mut self) {
        let pings = self
            .connections
            .iter()
            .enumerate()
            .filter_map(|(index, c)| Some((index, c.connection.clone()?)))
            .map(|(index, mut connection)| async move {
                let result = redis::cmd("PING")
                    .query_async::<redis::Value>(&mut connection)
                    .await;
                (index, result)
            });
        for (index, result) in join_all(pings).await {
            if let Err(e) = result {
                self.fail(index, &format!("PING failed: {e}"));
            }
        }
    }

    /// The instances to publish through now (usable and connected).
    fn usable(&self) -> Vec<usize> {
        self.link
            .usable(Instant::now())
            .into_iter()
            .filter(|&i| {
                self.connections
                    .get(i)
                    .is_some_and(|c| c.connection.is_some())
            })
            .collect()
    }

    /// Sends `batch` (emptying it): each channel's `PUBLISH` to its
    /// instance, all instances' pipelines side by side; what a failed
    /// instance held goes again through the others.
    async fn dispatch(&mut self, batch: &mut Vec<Outgoing>) {
        // (item, channel) pairs still to send, in order.
        let mut todo: Vec<(usize, usize)> = batch
            .iter()
            .enumerate()
            .flat_map(|(i, item)| (0..item.channels.len()).map(move |j| (i, j)))
            .collect();
        while !todo.is_empty() {
            let mut usable = self.usable();
            if self.connections.len() > 1
                && usable != self.last_usable
                && !self.last_usable.is_empty()
                && !usable.is_empty()
            {
                // Channels move: what went through the old placement
                // reaches the subscribers first.
                sleep(SETTLE).await;
                usable = self.usable();
            }
            if usable.is_empty() {
                tracing::warn!(
                    "dropped {} publishes: no Redis instance is connected",
                    todo.len()
                );
                break;
            }
            self.last_usable.clone_from(&usable);
            let mut rounds: Vec<(usize, Vec<(usize, usize)>)> =
                usable.iter().map(|&i| (i, Vec::new())).collect();
            for pair in todo.drain(..) {
                let (i, j) = pair;
                let to = match &usable[..] {
                    [only] => *only,
                    _ => self
                        .placement
                        .place(&batch[i].channels[j], &usable)
                        .unwrap_or(usable[0]),
                };
                if let Some((_, pairs)) = rounds.iter_mut().find(|(index, _)| *index == to) {
                    pairs.push(pair);
                }
            }
            rounds.retain(|(_, pairs)| !pairs.is_empty());
            let sends = rounds.iter().filter_map(|(index, pairs)| {
                let mut connection = self.connections.get(*index)?.connection.clone()?;
                let mut pipe = redis::pipe();
                for &(i, j) in pairs {
                    pipe.cmd("PUBLISH")
                        .arg(&batch[i].channels[j])
                        .arg(&batch[i].payload)
                        .ignore();
                }
                Some(async move { (*index, pipe.query_async::<()>(&mut connection).await) })
            });
            let results = join_all(sends).await;
            for (index, result) in results {
                if let Err(e) = result {
                    self.fail(index, &format!("publishing failed: {e}"));
                    if self.connections.len() > 1 {
                        if let Some((_, pairs)) = rounds.iter().find(|(i, _)| *i == index) {
                            todo.extend_from_slice(pairs);
                        }
                    }
                }
            }
            // Again in publish order.
            todo.sort_unstable();
        }
        batch.clear();
    }
}
