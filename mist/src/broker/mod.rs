//! The broker core: sessions, subscriptions, routing and delivery.
//!
//! # How a message travels
//!
//! A listener plugin feeds a session the bytes its client sends
//! (`session`, which owns only the sequencing). The session splits them
//! into lines (`framing`), parses each into a command value (`command`,
//! on the wire format of `protocol`) and applies it (`commands`); a command
//! that must wait on the token store or a plugin becomes a step (`steps`).
//! Publishes are collected into a `batch`: serialized once, matched against
//! the subscription index through the `router`, and handed as shared ranges
//! to each subscriber's bounded `output` queue, under a global `memory`
//! budget; the queue wakes that subscriber's listener to drain and write
//! it. Nothing on this path waits for a slow subscriber: its queue drops
//! instead. `access` keeps the sessions of each token, for revocation;
//! `handle` is the face plugins see; `figures` the counters metrics read.

mod access;
mod batch;
mod command;
mod commands;
mod figures;
mod framing;
mod handle;
mod memory;
mod output;
mod protocol;
mod recheck;
mod router;
mod session;
mod steps;
#[cfg(test)]
mod testing;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mist_sdk::abi::{AuthenticatorBox, BrokerBox, PluginBox};
use mist_sdk::{BrokerStats, ListenerLimits, SdkError};
use parking_lot::{Mutex, RwLock};

use crate::cluster::{Cluster, Incoming, LocalBroker, TokenDigest};
use access::Tokens;
use batch::Batch;
use memory::Memory;
use router::{Router, SessionId};

pub use figures::{Figures, HistogramSnapshot, LATENCY_BUCKETS};

/// Limits (SPEC §6–§7): what no client may exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted line or message, in bytes, without the newline.
    pub max_message_bytes: usize,
    /// Bytes of deliveries a subscriber's queue may hold before the newest
    /// messages for it are dropped.
    pub max_queue_bytes: usize,
    /// Bytes queued over all sessions together; over it, the largest queues
    /// drop first.
    pub max_memory: usize,
    /// Tags in one message or one subscription.
    pub max_tags: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Client connections over all listeners.
    pub max_connections: usize,
    /// A subscriber whose queue has been full this long is disconnected.
    pub slow_consumer_timeout: Duration,
    /// How long an HTTP request header may take to arrive.
    pub header_timeout: Duration,
    /// How long a WebSocket or TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long a whole HTTP request/answer exchange may take.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            max_queue_bytes: 64 << 20,
            max_memory: default_max_memory(),
            max_tags: 1024,
            max_subscriptions: 10_000,
            max_connections: 200_000,
            slow_consumer_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A quarter of the machine's memory, at least 256 MiB: room for bursts on
/// a dedicated broker host without letting queues take the machine.
fn default_max_memory() -> usize {
    const FLOOR: usize = 256 << 20;
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib.saturating_mul(1024))
        })
        .unwrap_or(4 << 30);
    (total / 4).max(FLOOR)
}

impl Limits {
    /// The part listeners apply themselves.
    pub fn listener(&self) -> ListenerLimits {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        ListenerLimits {
            max_message_bytes: self.max_message_bytes as u64,
            header_timeout_ms: ms(self.header_timeout),
            handshake_timeout_ms: ms(self.handshake_timeout),
            request_timeout_ms: ms(self.request_timeout),
        }
    }
}

/// The broker: cheap to clone, shared by every listener.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) router: RwLock<Router>,
    pub(crate) limits: Limits,
    pub(crate) stats: Counters,
    /// Set once at start-up when an authenticator is configured.
    pub(crate) auth: OnceLock<Auth>,
    /// Custom commands by name, set once at start-up.
    pub(crate) commands: OnceLock<HashMap<String, CommandRoute>>,
    /// Client connections admitted and not yet released, over all listeners.
    pub(crate) connections: AtomicUsize,
    /// Everything queued for clients, against `--max-memory`.
    pub(crate) memory: Arc<Memory>,
    /// The limits of every session's output (`memory` among them).
    pub(crate) outputs: Arc<output::OutputLimits>,
    /// Open sessions by token, for revocation.
    pub(crate) tokens: Tokens,
    /// Errors returned by plugin calls, by plugin name (rare: a lock is fine).
    pub(crate) plugin_errors: Mutex<BTreeMap<String, u64>>,
    /// What `/readyz` checks; parts are registered at start-up.
    pub(crate) health: Arc<crate::health::Health>,
    /// This node's cluster, set once at start-up (`--cluster`). The router
    /// holds it too, for the subscription and publish paths.
    pub(crate) cluster: OnceLock<Cluster>,
    /// Token rechecks under way (asked by the cluster).
    pub(crate) rechecks: recheck::Rechecks,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) publish_latency: figures::Histogram,
}

/// Admin mode: the store of registered tokens and the server's own token.
pub(crate) struct Auth {
    pub(crate) store: AuthenticatorBox,
    pub(crate) server_token: String,
    /// The plugin that provides the store, for its error count.
    pub(crate) plugin: Arc<str>,
}

/// Where a custom command goes.
#[derive(Clone)]
pub struct CommandRoute {
    /// The plugin's name, for errors.
    pub plugin: Arc<str>,
    /// The started plugin.
    pub handler: Arc<PluginBox>,
}

/// Why the broker's configuration could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// `set_authenticator` was called twice.
    #[error("an authenticator is already set")]
    AuthenticatorSet,
    /// `set_commands` was called twice.
    #[error("custom commands are already set")]
    CommandsSet,
    /// `set_cluster` was called twice.
    #[error("the broker is already part of a cluster")]
    ClusterSet,
}

impl Broker {
    /// A broker with no sessions, no authenticator and no custom commands.
    pub fn new(limits: Limits) -> Self {
        let memory = Memory::new(limits.max_memory);
        let outputs = Arc::new(output::OutputLimits {
            limit: limits.max_queue_bytes,
            slow_after: limits.slow_consumer_timeout,
            memory: memory.clone(),
        });
        Broker {
            shared: Arc::new(Shared {
                router: RwLock::new(Router::new()),
                limits,
                stats: Counters::default(),
                auth: OnceLock::new(),
                commands: OnceLock::new(),
                connections: AtomicUsize::new(0),
                memory,
                outputs,
                tokens: Tokens::default(),
                plugin_errors: Mutex::new(BTreeMap::new()),
                health: Arc::default(),
                cluster: OnceLock::new(),
                rechecks: recheck::Rechecks::default(),
            }),
        }
    }

    /// Enables admin mode (SPEC §3) with `store`, provided by plugin
    /// `plugin`, and the server token.
    pub fn set_authenticator(
        &self,
        store: AuthenticatorBox,
        server_token: String,
        plugin: &str,
    ) -> Result<(), BrokerError> {
        self.shared
            .auth
            .set(Auth {
                store,
                server_token,
                plugin: plugin.into(),
            })
            .map_err(|_| BrokerError::AuthenticatorSet)
    }

    /// What the cluster calls back into: messages from other nodes, and
    /// their token changes. Holds the broker weakly (the cluster is the
    /// broker's, not the other way round); `runtime` runs the re-checks a
    /// token change asks for.
    pub fn cluster_local(&self, runtime: tokio::runtime::Handle) -> Arc<dyn LocalBroker> {
        Arc::new(FromCluster {
            shared: Arc::downgrade(&self.shared),
            runtime,
        })
    }

    /// Makes this broker a node of `cluster`: subscriptions, publishes,
    /// revocations and `who` go through it from now on. Call it at
    /// start-up, before any session opens.
    pub fn set_cluster(&self, cluster: Cluster) -> Result<(), BrokerError> {
        self.shared
            .cluster
            .set(cluster.clone())
            .map_err(|_| BrokerError::ClusterSet)?;
        self.shared.router.write().set_cluster(cluster);
        Ok(())
    }

    /// This node's cluster, if any.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.shared.cluster.get()
    }

    /// Routes each named custom command to its plugin.
    pub fn set_commands(&self, commands: HashMap<String, CommandRoute>) -> Result<(), BrokerError> {
        self.shared
            .commands
            .set(commands)
            .map_err(|_| BrokerError::CommandsSet)
    }

    /// The handle plugins receive.
    pub fn handle(&self) -> BrokerBox {
        handle::broker_box(self.shared.clone())
    }

    /// Current figures.
    pub fn stats(&self) -> BrokerStats {
        self.shared.stats()
    }

    /// The parts `/readyz` checks.
    pub fn health(&self) -> &Arc<crate::health::Health> {
        &self.shared.health
    }

    /// Every figure the broker keeps, for metrics.
    pub fn figures(&self) -> Figures {
        self.shared.figures()
    }

    /// Another node of a cluster says the token whose SHA-256 is `key`
    /// changed: every open session authenticated with it loses the
    /// subscriptions the store no longer allows, as after a local `unset`
    /// (asking the store again while it fails, and failing closed past a
    /// bound: docs/cluster.md, "Revocation").
    pub async fn recheck_token(&self, key: [u8; 32]) {
        self.shared.recheck(&key).await;
    }
}

impl Shared {
    /// Takes a place for one more connection, or says why there is none.
    pub(crate) fn admit(&self, listener: &str) -> Result<(), SdkError> {
        let max = self.limits.max_connections;
        let taken = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(()),
            Err(_) => {
                tracing::warn!(
                    listener,
                    max_connections = max,
                    "connection refused: the broker is full"
                );
                Err(SdkError::overloaded(format!(
                    "too many connections: this broker serves at most {max}; try again later"
                )))
            }
        }
    }

    pub(crate) fn release(&self, _listener: &str) {
        // Saturating: a plugin that releases more than it took must not wrap
        // the count around and lift the limit.
        let _ = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub(crate) fn figures(&self) -> Figures {
        let (connections, subscriptions) = {
            let router = self.router.read();
            (router.per_listener(), router.subscription_count() as u64)
        };
        let stats = &self.stats;
        Figures {
            connections,
            subscriptions,
            messages_received: stats.messages_in.load(Ordering::Relaxed),
            messages_delivered: stats.messages_out.load(Ordering::Relaxed),
            messages_dropped: stats.dropped.load(Ordering::Relaxed),
            slow_consumers_disconnected: stats.slow_consumers.load(Ordering::Relaxed),
            queue_bytes: self.memory.used() as u64,
            auth_failures: stats.auth_failures.load(Ordering::Relaxed),
            plugin_errors: self.plugin_errors.lock().clone(),
            publish_latency: stats.publish_latency.snapshot(),
            cluster: self.cluster.get().map(Cluster::figures),
        }
    }

    /// A plugin call returned an error or panicked.
    pub(crate) fn plugin_failed(&self, plugin: &str, error: &SdkError) {
        *self
            .plugin_errors
            .lock()
            .entry(plugin.to_owned())
            .or_insert(0) += 1;
        if error.kind == mist_sdk::ErrorKind::PANICKED {
            tracing::error!(plugin, "plugin panicked (caught): {}", error.message);
        }
    }

    /// Disconnects a subscriber whose queue has stayed full past the
    /// slow-consumer timeout. What it had queued is discarded; its listener
    /// is told to close the connection.
    pub(crate) fn evict_slow(&self, session: SessionId) {
        let output = {
            let mut router = self.router.write();
            let Some(output) = router.output(session).cloned() else {
                return; // gone already
            };
            router.remove_session(session);
            output
        };
        output.evict();
        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            session = %session,
            peer = %output.peer(),
            timeout = ?self.limits.slow_consumer_timeout,
            dropped = output.dropped(),
            "disconnected a slow consumer: its queue stayed full past the timeout"
        );
    }

    /// A token's tags were taken away on this node: a cluster passes the
    /// event on to the other nodes, which re-check their sessions of that
    /// token against the (shared) store.
    pub(crate) fn token_changed(&self, key: &access::TokenKey) {
        if let Some(cluster) = self.cluster.get() {
            // Kept by the cluster until the backplane has taken it.
            cluster.token_digest_changed(&TokenDigest(*key));
        }
    }

    /// The `who` reply's data.
    pub(crate) fn who(&self) -> serde_json::Value {
        let figures = self.figures();
        let mut who = serde_json::json!({
            "connections": figures.connections.values().sum::<u64>(),
            "listeners": figures.connections,
            "subscriptions": figures.subscriptions,
            "messages_in": figures.messages_received,
            "messages_out": figures.messages_delivered,
            "dropped": figures.messages_dropped,
            "slow_consumers_disconnected": figures.slow_consumers_disconnected,
            "queue_bytes": figures.queue_bytes,
        });
        if let (Some(cluster), Some(map)) = (self.cluster.get(), who.as_object_mut()) {
            let nodes: Vec<String> = cluster.nodes().iter().map(|n| n.to_string()).collect();
            map.insert("node".into(), cluster.node().to_string().into());
            map.insert("nodes".into(), nodes.into());
        }
        who
    }

    pub(crate) fn stats(&self) -> BrokerStats {
        let router = self.router.read();
        BrokerStats {
            sessions: router.open_sessions() as u64,
            subscriptions: router.subscription_count() as u64,
            messages_in: self.stats.messages_in.load(Ordering::Relaxed),
            messages_out: self.stats.messages_out.load(Ordering::Relaxed),
            dropped: self.stats.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Names the broker itself answers; plugins may not register them.
pub const BUILTIN_COMMANDS: &[&str] = &[
    "ping",
    "subscribe",
    "unsubscribe",
    "publish",
    "list",
    "auth",
    "who",
    "register",
    "unregister",
    "set",
    "unset",
    "tags",
];

/// The broker as its cluster sees it: where messages from other nodes and
/// their token changes arrive (from the backplane plugin's reader thread).
struct FromCluster {
    shared: std::sync::Weak<Shared>,
    runtime: tokio::runtime::Handle,
}

impl LocalBroker for FromCluster {
    fn deliver(&self, messages: &[Incoming<'_>]) {
        let Some(shared) = self.shared.upgrade() else {
            return; // the broker is gone: shutting down
        };
        let mut batch = Batch::default();
        let mut slow = Vec::new();
        {
            let router = shared.router.read();
            let mut last: Vec<&str> = Vec::new();
            let mut tags: Vec<&str> = Vec::new();
            for message in messages {
                tags.clear();
                tags.extend(message.tags.iter());
                if tags.is_empty() || tags.len() > shared.limits.max_tags {
                    continue; // no client could have published it here
                }
                let same = tags == last;
                batch.remote(&router, &tags, same, message.data);
                if !same {
                    std::mem::swap(&mut last, &mut tags);
                }
            }
            batch.flush(&router, &shared, &mut slow);
        }
        for session in slow {
            shared.evict_slow(session);
        }
    }

    fn token_changed(&self, digest: &TokenDigest) {
        // The store is asked on the host's runtime: the caller is the
        // plugin's reader, which must not wait.
        if let Some(shared) = self.shared.upgrade() {
            shared.spawn_recheck(digest.0, &self.runtime);
        }
    }

    fn recheck_all(&self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.spawn_recheck_all(&self.runtime);
        }
    }
}
