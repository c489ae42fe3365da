//! The broker core: sessions, subscriptions, routing and delivery.
//!
//! # How a message travels
//!
//! A listener plugin hands a session what its client sends (`handle`, the
//! face plugins see, into `session`, which owns only the sequencing of
//! input). The session splits it into lines (`framing`) and carries each
//! out as a command (`cmd`, one file per command; the wire format in
//! `protocol`); a command that must wait on the token store or a plugin
//! becomes a pending step. Publishes go into a `delivery`: serialized once,
//! matched against the subscription index through the `router` under its
//! read lock, and handed as shared ranges to each subscriber's bounded
//! `output` queue, every byte charged to the memory `ledger`; the queue
//! wakes that subscriber's listener to drain and write it. Nothing on this
//! path waits for a slow subscriber: its queue drops instead.
//!
//! Around it: `state` (a session's state), `shared` (what every session
//! shares, and the operations on it), `access` (the sessions of each
//! token, for revocation), `expiry` (the deadlines of tokens that expire,
//! a JWT's `exp`), `limits`, `id` (session ids), `cluster` (what other
//! nodes send in), `figures` (the counters metrics read).

mod access;
mod cluster;
mod cmd;
mod delivery;
mod expiry;
mod figures;
mod framing;
mod handle;
mod id;
mod ledger;
mod limits;
mod output;
mod protocol;
mod recheck;
mod router;
mod session;
mod shared;
mod state;
#[cfg(test)]
mod testing;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};

use mist_sdk::abi::{AuthenticatorBox, BrokerBox};
use mist_sdk::BrokerStats;
use parking_lot::{Mutex, RwLock};

use crate::cluster::{Cluster, LocalBroker};
use access::Tokens;
use ledger::Ledger;
use router::Router;
use shared::{Auth, Counters, Shared};

pub use crate::metrics::{Figures, HistogramSnapshot, LATENCY_BUCKETS};
pub use limits::Limits;
pub use shared::CommandRoute;

/// The broker: cheap to clone, shared by every listener.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
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
        let ledger = Ledger::new(limits.max_memory);
        let outputs = Arc::new(output::OutputLimits {
            limit: limits.max_queue_bytes,
            slow_after: limits.slow_consumer_timeout,
            ledger: ledger.clone(),
        });
        Broker {
            shared: Arc::new(Shared {
                router: RwLock::new(Router::new()),
                limits,
                stats: Counters::default(),
                auth: OnceLock::new(),
                commands: OnceLock::new(),
                connections: AtomicUsize::new(0),
                ledger,
                outputs,
                tokens: Tokens::default(),
                plugin_errors: Mutex::new(BTreeMap::new()),
                health: Arc::default(),
                cluster: OnceLock::new(),
                expiry: expiry::Expiry::default(),
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
        let keeps_tokens = store.keeps_tokens();
        self.shared
            .auth
            .set(Auth {
                store,
                server_token,
                plugin: plugin.into(),
                keeps_tokens,
            })
            .map_err(|_| BrokerError::AuthenticatorSet)?;
        // Tokens may expire from now on: one task takes the subscriptions
        // of every session whose token did. (Without a runtime, as when
        // fuzzing, expiry is enforced at each command only.)
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let wake = self.shared.expiry.waker();
                runtime.spawn(shared::expire(Arc::downgrade(&self.shared), wake));
            }
            Err(_) => tracing::debug!("no runtime: token expiry is checked at each command only"),
        }
        Ok(())
    }

    /// What the cluster calls back into: messages from other nodes, and
    /// their token changes. Holds the broker weakly (the cluster is the
    /// broker's, not the other way round); `runtime` runs the re-checks a
    /// token change asks for.
    pub fn cluster_local(&self, runtime: tokio::runtime::Handle) -> Arc<dyn LocalBroker> {
        Arc::new(cluster::FromCluster::new(&self.shared, runtime))
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
