//! What every session, listener and step shares: the router, the limits,
//! the ledger, the authenticator, the counters, the deadlines of expiring
//! tokens; and the operations on them that are not one command's
//! (admission, eviction, revocation, expiry, figures).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use mist_sdk::abi::{AuthenticatorBox, PluginBox};
use mist_sdk::{BrokerStats, SdkError};
use parking_lot::{Mutex, RwLock};

use super::access::{Revoked, TokenKey, Tokens};
use super::expiry::Expiry;
use super::figures;
use super::id::SessionId;
use super::ledger::Ledger;
use super::limits::Limits;
use super::output;
use super::protocol;
use super::router::Router;
use crate::cluster::{Cluster, TokenDigest};
use crate::metrics::Figures;

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
    pub(crate) ledger: Arc<Ledger>,
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
    /// The deadlines of sessions whose token expires.
    pub(crate) expiry: Expiry,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    /// Tokens the authenticator accepted (`auth`, at connect, refreshes).
    pub(crate) tokens_accepted: AtomicU64,
    /// Tokens it refused, by [`mist_sdk::Rejection`] (the last slot: a
    /// reason this version does not know).
    pub(crate) tokens_refused: [AtomicU64; REJECTIONS + 1],
    /// Sessions whose token expired while they were open.
    pub(crate) tokens_expired: AtomicU64,
    pub(crate) publish_latency: figures::Histogram,
}

/// The refusal reasons this version counts apart.
const REJECTIONS: usize = mist_sdk::Rejection::ALL.len();

impl Counters {
    /// Counts a token the authenticator refused for `rejection`.
    pub(crate) fn token_refused(&self, rejection: mist_sdk::Rejection) {
        let slot = usize::from(rejection.0).min(REJECTIONS);
        self.tokens_refused[slot].fetch_add(1, Ordering::Relaxed);
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Admin mode: the store of registered tokens and the server's own token.
pub(crate) struct Auth {
    pub(crate) store: AuthenticatorBox,
    pub(crate) server_token: String,
    /// The plugin that provides the store, for its error count.
    pub(crate) plugin: Arc<str>,
    /// `false` for an authenticator that keeps no tokens (JWT): grants
    /// are kept by the sessions, refreshed by a later `auth`, and the
    /// registry commands are refused.
    pub(crate) keeps_tokens: bool,
}

/// Where a custom command goes.
#[derive(Clone)]
pub struct CommandRoute {
    /// The plugin's name, for errors.
    pub plugin: Arc<str>,
    /// The started plugin.
    pub handler: Arc<PluginBox>,
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
            closed_for_memory: self.ledger.closed_for_input(),
            // The host's runtime, which the built-in plugins share.
            tasks: tokio::runtime::Handle::try_current()
                .map_or(0, |h| h.metrics().num_alive_tasks() as u64),
            queue_bytes: self.ledger.used() as u64,
            auth_failures: stats.auth_failures.load(Ordering::Relaxed),
            tokens_accepted: stats.tokens_accepted.load(Ordering::Relaxed),
            tokens_refused: mist_sdk::Rejection::ALL
                .iter()
                .map(|r| r.name())
                .chain(["other"])
                .zip(&stats.tokens_refused)
                .map(|(name, n)| (name.to_string(), n.load(Ordering::Relaxed)))
                .collect(),
            tokens_expired: stats.tokens_expired.load(Ordering::Relaxed),
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
    pub(crate) fn token_changed(&self, key: &TokenKey) {
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
            "closed_for_memory": figures.closed_for_memory,
            "tasks": figures.tasks,
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

const NOTICE: &str =
    "subscription revoked: the token no longer holds every tag of this subscription";
/// When a connection's token expires.
pub(crate) const EXPIRED_NOTICE: &str = "subscription revoked: the token expired";
const UNCONFIRMED: &str =
    "subscription revoked: the token store could not confirm this token's tags; subscribe again";

impl Shared {
    /// Takes from every open session of `key` each subscription that holds
    /// a tag no longer allowed, and tells it so. Returns how many
    /// subscriptions went.
    pub(crate) fn revoke(&self, key: &TokenKey, revoked: Revoked<'_>) -> usize {
        self.tokens.bump();
        let Some((_, sessions)) = self.tokens.holders(key) else {
            return 0;
        };
        let keep = |set: &[String]| match &revoked {
            Revoked::Tags(tags) => !set.iter().any(|t| tags.contains(t)),
            Revoked::Everything | Revoked::Unconfirmed => false,
            Revoked::AllowedNow(allowed) => set.iter().all(|t| allowed.contains(t)),
        };
        let notice = match revoked {
            Revoked::Unconfirmed => UNCONFIRMED,
            _ => NOTICE,
        };
        let mut count = 0;
        let mut router = self.router.write();
        for session in sessions {
            let removed = revoke_from(&mut router, session, keep, notice);
            if removed == 0 {
                continue;
            }
            count += removed;
            tracing::info!(session = %session, subscriptions = removed, "revoked subscriptions of a session whose token lost tags");
        }
        count
    }

    /// Takes every subscription of each session whose grant has ended.
    pub(crate) fn expire_due(&self) {
        let mut router = self.router.write();
        let due = self.expiry.take_due(Instant::now());
        for session in due {
            if !router.is_open(session) {
                continue;
            }
            let removed = revoke_from(&mut router, session, |_| false, EXPIRED_NOTICE);
            self.stats.tokens_expired.fetch_add(1, Ordering::Relaxed);
            tracing::info!(session = %session, subscriptions = removed, "a session's token expired: its subscriptions were revoked");
        }
    }
}

/// Takes from `session` every subscription `keep` refuses, and queues a
/// `revoked` notice saying `why` for each. Returns how many went. Called
/// with the router's write lock held, so that no publish matched through a
/// subscription can be queued after its notice.
pub(crate) fn revoke_from(
    router: &mut Router,
    session: SessionId,
    keep: impl Fn(&[String]) -> bool,
    why: &str,
) -> usize {
    let removed = router.prune(session, keep);
    if removed.is_empty() {
        return 0;
    }
    if let Some(output) = router.output(session) {
        let mut out = Vec::new();
        for set in &removed {
            protocol::notice(&mut out, "revoked", set, why);
        }
        // Queued in order after the deliveries already queued, and never
        // dropped, like a reply: the client must learn of it (an SSE stream
        // ends on it), and there is at most one per subscription the
        // session held.
        output.push_reply(out);
    }
    removed.len()
}

/// The task that expires grants, for as long as the broker exists.
/// `wake` is the broker's [`Expiry::waker`]: a deadline set before this
/// task waits leaves a permit, so no earlier deadline is missed. One task
/// serves every session: no session has a timer of its own.
pub(crate) async fn expire(shared: Weak<Shared>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let next = match shared.upgrade() {
            Some(shared) => shared.expiry.next(),
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.expire_due();
    }
}
