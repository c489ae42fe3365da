//! The broker core: sessions, subscriptions, routing and delivery.
//!
//! # How a message travels
//!
//! A listener plugin feeds a session the bytes its client sends
//! ([`session`]). The session splits them into lines ([`framing`]), parses
//! each ([`protocol`]) and carries out the command ([`commands`]). Publishes
//! are collected into a [`batch`]: serialized once, matched against the
//! subscription index through the [`router`], and handed as shared ranges to
//! each subscriber's bounded [`output`] queue, which wakes that subscriber's
//! listener to drain and write it. Nothing on this path waits for a slow
//! subscriber: its queue drops instead.

mod batch;
mod commands;
mod figures;
mod framing;
mod handle;
mod output;
mod protocol;
mod router;
mod session;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mist_sdk::abi::{AuthenticatorBox, BrokerBox, PluginBox};
use mist_sdk::{BrokerStats, ListenerLimits, SdkError};
use parking_lot::RwLock;

use router::Router;

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
}

impl Broker {
    /// A broker with no sessions, no authenticator and no custom commands.
    pub fn new(limits: Limits) -> Self {
        Broker {
            shared: Arc::new(Shared {
                router: RwLock::new(Router::new()),
                limits,
                stats: Counters::default(),
                auth: OnceLock::new(),
                commands: OnceLock::new(),
                connections: AtomicUsize::new(0),
            }),
        }
    }

    /// Enables admin mode (SPEC §3) with `store` and the server token.
    pub fn set_authenticator(
        &self,
        store: AuthenticatorBox,
        server_token: String,
    ) -> Result<(), BrokerError> {
        self.shared
            .auth
            .set(Auth {
                store,
                server_token,
            })
            .map_err(|_| BrokerError::AuthenticatorSet)
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

    /// Every figure the broker keeps, for metrics.
    pub fn figures(&self) -> Figures {
        self.shared.figures()
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
            queue_bytes: 0,
            auth_failures: stats.auth_failures.load(Ordering::Relaxed),
            plugin_errors: BTreeMap::new(),
            publish_latency: stats.publish_latency.snapshot(),
        }
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
