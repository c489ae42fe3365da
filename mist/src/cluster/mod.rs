//! The node's side of a cluster: several Mist nodes started with the same
//! `--cluster URI` act as one broker by exchanging traffic through a
//! backplane plugin (Redis, NATS). `docs/cluster.md` explains the design,
//! its guarantees and its costs; in short:
//!
//! - **Routing by interest.** Each node announces the distinct tag sets
//!   its sessions hold ([`interest`]), numbered by epoch, and files the
//!   others' in a subset index ([`remote`]). A publish of tag set T goes
//!   once to each node holding a set S ⊆ T, on that node's own channel
//!   ([`channel`]), and to no other node. A node whose sets are not known
//!   for sure gets everything until its snapshot arrives.
//! - **The barrier.** A subscribe that announced a new set is confirmed
//!   once every other node acknowledged its epoch.
//! - **Exactly once, in order.** One copy per node; receivers drop what the
//!   backplane delivers twice by per-origin sequence numbers ([`peers`]) and
//!   hand the rest to the broker's exact local match; one publishing and
//!   one subscribing connection per node keep each publisher's order.
//! - **Nothing unchecked.** Every payload goes through [`inbound`] (frame,
//!   MAC and clock with a cluster key ([`key`]), strict body, sequence
//!   window, this node's limits) before anything acts on it.
//! - **Batching.** The messages for one node travel as one payload,
//!   whatever their tag sets ([`outbound`], [`wire`]); the flusher takes
//!   whatever accumulated while it was busy.
//! - **Control channel.** Heartbeats (for `who`'s `nodes`), token changes
//!   (the SHA-256 of the token, never the token: kept and offered again
//!   until the backplane took them) and goodbyes.
//! - **One sender.** Every payload is numbered, sealed and handed to the
//!   backplane under one lock (`Node::emit`), in the order of its
//!   number; after the goodbye, nothing.
//!
//! Nothing here blocks: the backplane's `publish` queues, and inbound
//! payloads are delivered to the broker from the plugin's reader.
//!
//! # The interface to the broker
//!
//! ```no_run
//! # async fn demo(open: impl FnOnce(mist_sdk::abi::BackplaneInboxBox) -> std::future::Ready<Result<mist_sdk::abi::BackplaneBox, mist_sdk::SdkError>>) -> Result<(), mist::cluster::ClusterError> {
//! use std::sync::Arc;
//! use mist::cluster::{Cluster, ClusterConfig, Incoming, LocalBroker, TokenDigest};
//!
//! struct Local;
//! impl LocalBroker for Local {
//!     fn deliver(&self, messages: &[Incoming<'_>]) -> usize { /* exact local match, no session excluded */ 0 }
//!     fn token_changed(&self, digest: &TokenDigest) { /* re-check sessions with this token */ }
//!     fn recheck_all(&self) { /* re-check every session with a token */ }
//! }
//!
//! let config = ClusterConfig::from_uri("redis://127.0.0.1:6379?prefix=app")?;
//! let cluster = Cluster::join(config, Arc::new(Local), open).await?;
//! if let Some(confirmed) = cluster.subscribe(&["a", "b"]) {
//!     let _ = confirmed.await; // before answering the session's next ping
//! }
//! cluster.publish(&["a", "b", "c"], "\"data\""); // after local delivery
//! cluster.unsubscribe(&["a", "b"]);
//! println!("{} sees {:?}", cluster.node(), cluster.nodes());
//! cluster.stop();
//! # Ok(()) }
//! ```

mod announce;
pub mod channel;
pub mod config;
mod control;
pub mod inbound;
pub mod interest;
pub mod key;
pub mod outbound;
pub mod peers;
pub mod remote;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use mist_sdk::abi::{BackplaneBox, BackplaneInboxBox};
use mist_sdk::{ErrorKind, SdkError};
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use channel::{Channels, DEFAULT_PREFIX};
pub use config::ClusterConfig;
pub use inbound::{Inbound, MessageLimits, Refusal, Verdict};
pub use key::{ClusterKeys, KeyError};
pub use transport::{ClusterInbox, Transport};
pub use wire::{Incoming, Tags};

use announce::{Acks, Held};
use control::Control;
use interest::canonical;
use outbound::{Outbound, Run, EVERY_NODE};
use remote::{Remote, Route};
use wire::Kind;

/// How long an unused channel stays subscribed before it is unsubscribed.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(2);
/// How often a node says it is alive.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a subscription's confirmation may take before the subscribe
/// is answered anyway.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages waiting for a connected backplane past which the node is
/// [`Cluster::congested`]: its publishers are read no faster than the
/// backplane takes their messages.
pub const CONGESTED_BYTES: usize = 1 << 20;
/// Messages waiting below which a congested node reads its publishers again.
/// (The plugin's own queue, 16 MiB by default, absorbs the bursts.)
pub const RELIEVED_BYTES: usize = 256 << 10;
/// How soon the flusher offers again what a full backplane queue refused.
const RETRY_FULL: Duration = Duration::from_millis(1);

/// What went wrong in the cluster layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The `--cluster` URI or a setting is malformed.
    #[error("{0}")]
    Config(String),
    /// The backplane plugin could not open the connection.
    #[error("opening the cluster backplane failed: {0}")]
    Open(String),
    /// The backplane is down (or refused): cross-node traffic is dropped.
    #[error("the cluster backplane is unavailable: {0}")]
    Unavailable(String),
    /// The backplane did not confirm a subscription in time.
    #[error("the cluster backplane did not confirm a subscription within {0:?}")]
    Timeout(Duration),
    /// The cluster key file cannot be used (the message names the file,
    /// never the key).
    #[error("{0}")]
    Key(String),
}

/// A node's identity: random at each start (a restarted node is a new
/// node, with a new sequence), shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A fresh random id (std's randomly keyed hasher over the time and
    /// the process id).
    pub fn random() -> NodeId {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        hasher.write_u128(now);
        hasher.write_u32(std::process::id());
        NodeId(hasher.finish())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The SHA-256 of a token: what crosses the backplane when a token's tags
/// change, so the token itself never does.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest(")?;
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "..)")
    }
}

/// What the node needs from its broker. Called from the backplane's reader
/// thread; neither may block.
pub trait LocalBroker: Send + Sync + 'static {
    /// Messages published on another node, in their publisher's order:
    /// match each exactly against the local subscriptions and deliver it
    /// (no session is excluded: the publisher is elsewhere). `data` is one
    /// JSON string token, checked. Returns how many messages it refused
    /// (their tags are over this node's `--max-tags`), which count as
    /// refused payloads do.
    fn deliver(&self, messages: &[Incoming<'_>]) -> usize;

    /// A token's tags changed on another node: re-check the sessions whose
    /// token has this SHA-256 (revocation).
    fn token_changed(&self, digest: &TokenDigest);

    /// Re-check every session that holds a token. Called whenever the
    /// backplane connection comes (back) up, since a token change sent
    /// meanwhile was lost to this node (Redis and NATS keep nothing for a
    /// subscriber that is away), and when another node could not keep
    /// every token change it had to send.
    fn recheck_all(&self);
}

/// Completes once the backplane confirmed the channel a new interest
/// needed (or failed: the backplane is down, or did not answer within the
/// confirmation timeout). Cheap to clone; every clone sees the same result.
#[derive(Clone)]
pub struct Confirmation(Shared<BoxFuture<'static, Result<(), ClusterError>>>);

impl Confirmation {
    /// A clone if it may not have completed yet (`Shared` only records the
    /// result once someone polled it: peek at the task's end by polling
    /// once without a waker of interest).
    fn pending(&self) -> Option<Confirmation> {
        if self.0.peek().is_some() {
            return None;
        }
        match self.clone().now_or_never() {
            Some(_) => None,
            None => Some(self.clone()),
        }
    }
}

impl Future for Confirmation {
    type Output = Result<(), ClusterError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_unpin(cx)
    }
}

/// The node's figures, for `who` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterFigures {
    /// Whether the backplane is connected.
    pub up: bool,
    /// Messages handed to the backplane.
    pub messages_sent: u64,
    /// Payloads (batches) handed to the backplane.
    pub payloads_sent: u64,
    /// Messages from other nodes delivered to the broker.
    pub messages_received: u64,
    /// Payloads from other nodes, copies included.
    pub payloads_received: u64,
    /// Payloads dropped because the backplane delivered them twice.
    pub duplicates: u64,
    /// Messages not sent: the backplane was down, or more than
    /// [`outbound::MAX_PENDING_BYTES`] waited for it.
    pub dropped: u64,
    /// Times this node became [`Cluster::congested`].
    pub congestions: u64,
    /// Payloads refused (undecodable; with a key: unsigned, forged,
    /// altered, out of the time window or replayed), and messages left out
    /// for being over this node's limits.
    pub malformed: u64,
    /// Backplane channels held (lingering ones included).
    pub channels: u64,
    /// Nodes this one currently sees, itself included.
    pub nodes: u64,
}

#[derive(Default)]
struct Counters {
    messages_sent: AtomicU64,
    payloads_sent: AtomicU64,
    messages_received: AtomicU64,
    payloads_received: AtomicU64,
    duplicates: AtomicU64,
    dropped: AtomicU64,
    congestions: AtomicU64,
    malformed: AtomicU64,
}

/// This node in the cluster. Cheap to clone; call [`Cluster::stop`] at
/// shutdown (its tasks hold it until then).
#[derive(Clone)]
pub struct Cluster {
    node: Arc<Node>,
}

struct Node {
    id: NodeId,
    config: ClusterConfig,
    names: Channels,
    local: Arc<dyn LocalBroker>,
    transport: Arc<dyn Transport>,
    up: AtomicBool,
    stopped: AtomicBool,
    /// Lock order: `interest`, then `acks`, then `inbound`.
    interest: Mutex<Held>,
    /// Lock order: `outbound`, then `route`, then `remote`.
    outbound: Mutex<Outbound>,
    /// The room to work out where a publish goes.
    route: Mutex<Route>,
    /// The other nodes' interest: where a publish goes.
    remote: RwLock<Remote>,
    /// Acknowledgements owed and received, snapshots asked for.
    acks: Mutex<Acks>,
    /// The highest epoch of this node's interest every other node has
    /// acknowledged (`u64::MAX` while the backplane is down: nothing is
    /// waited for then). Confirmations wait on it.
    confirmed: watch::Sender<u64>,
    /// The epoch of this node's last interest change.
    epoch: AtomicU64,
    /// Whether this node has been connected long enough to have heard
    /// every other node's heartbeat; until then it sends its messages to
    /// every node (the control channel) and confirms nothing.
    synced: AtomicBool,
    /// When `synced` is due.
    sync_at: Mutex<Instant>,
    /// The next heartbeat is a hello (this node (re)joined).
    hello: AtomicBool,
    /// Set when what waits in `outbound` passed [`CONGESTED_BYTES`] while
    /// the backplane is up; cleared below [`RELIEVED_BYTES`] or when it
    /// goes down. Sessions that publish stop being read meanwhile.
    congested: AtomicBool,
    /// Wakes the sessions waiting for `congested` to clear.
    room: Notify,
    /// Wakes the flusher; `notify_one` keeps a permit, so a publish made
    /// while it is busy is not missed.
    flush: Notify,
    /// The one owner of the sequence number. Lock order: `sender`, then
    /// `outbound` or `control`.
    sender: Mutex<Sender>,
    /// Token changes the backplane has not taken yet.
    control: Mutex<Control>,
    /// The keys payloads are signed with (swapped on reload).
    keys: RwLock<Option<Arc<ClusterKeys>>>,
    /// The checks of what arrives, and what they remember of other nodes.
    inbound: Mutex<Inbound>,
    counters: Counters,
    /// Messages dropped in the current outage, for the log.
    dropped_in_outage: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The runtime the node's tasks run on: the broker may call in from
    /// threads of another runtime (a listener plugin's own), where
    /// `tokio::spawn` would find none.
    runtime: tokio::runtime::Handle,
}

impl Cluster {
    /// Opens the backplane with `open` (the plugin's `open_backplane`,
    /// given the node's inbox) and joins: see [`Cluster::start`].
    pub async fn join<F, Fut>(
        config: ClusterConfig,
        local: Arc<dyn LocalBroker>,
        open: F,
    ) -> Result<Cluster, ClusterError>
    where
        F: FnOnce(BackplaneInboxBox) -> Fut,
        Fut: Future<Output = Result<BackplaneBox, SdkError>>,
    {
        // A key file that cannot be used stops the start before the
        // backplane is even asked.
        if let Some(path) = &config.key_file {
            ClusterKeys::load(path).map_err(|e| ClusterError::Key(e.to_string()))?;
        }
        let inbox = ClusterInbox::new();
        let backplane = open(inbox.abi())
            .await
            .map_err(|e| ClusterError::Open(e.message.into_string()))?;
        Cluster::start(config, local, Arc::new(backplane), inbox).await
    }

    /// Joins the cluster over `transport`, whose traffic arrives at
    /// `inbox`: subscribes the control channel (waiting for its
    /// confirmation, bounded; a backplane that is down is no error: the
    /// node serves its own clients until it returns), sends a first
    /// heartbeat and starts the flusher and heartbeat tasks. Call it inside
    /// a tokio runtime.
    pub async fn start(
        config: ClusterConfig,
        local: Arc<dyn LocalBroker>,
        transport: Arc<dyn Transport>,
        inbox: ClusterInbox,
    ) -> Result<Cluster, ClusterError> {
        let names = Channels::new(&config.prefix)?;
        let keys = match &config.key_file {
            Some(path) => Some(Arc::new(
                ClusterKeys::load(path).map_err(|e| ClusterError::Key(e.to_string()))?,
            )),
            None => None,
        };
        let id = NodeId::random();
        let node = Arc::new(Node {
            id,
            up: AtomicBool::new(transport.health().is_ok()),
            inbound: Mutex::new(Inbound::new(id.0, keys.clone(), config.limits)),
            keys: RwLock::new(keys),
            config,
            names,
            local,
            transport,
            stopped: AtomicBool::new(false),
            interest: Mutex::new(Held::default()),
            route: Mutex::new(Route::default()),
            outbound: Mutex::new(Outbound::default()),
            remote: RwLock::new(Remote::default()),
            acks: Mutex::new(Acks::default()),
            confirmed: watch::Sender::new(0),
            epoch: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            sync_at: Mutex::new(Instant::now()),
            hello: AtomicBool::new(true),
            congested: AtomicBool::new(false),
            room: Notify::new(),
            flush: Notify::new(),
            sender: Mutex::new(Sender::default()),
            control: Mutex::new(Control::default()),
            counters: Counters::default(),
            dropped_in_outage: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
            runtime: tokio::runtime::Handle::current(),
        });
        inbox.attach(&node);
        node.start_sync();
        let control = node.transport.subscribe(vec![
            node.names.control().to_string(),
            node.names.node(node.id.0),
        ]);
        match tokio::time::timeout(node.config.confirm_timeout, control).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cluster control channel not confirmed yet: {e}"),
            Err(_) => tracing::warn!("cluster control channel not confirmed in time"),
        }
        node.heartbeat();
        let flusher = node.runtime.spawn(node.clone().flusher());
        let heartbeats = node.runtime.spawn(node.clone().heartbeats());
        node.tasks.lock().extend([flusher, heartbeats]);
        tracing::info!(
            "node {} joined the cluster over {}:// (prefix {})",
            node.id,
            node.config.scheme,
            node.config.prefix
        );
        match &*node.keys.read() {
            Some(keys) => tracing::info!(
                "cluster payloads are signed and checked with the cluster key (key ids {})",
                key_ids(keys)
            ),
            None => tracing::warn!(
                "the cluster has no key (--cluster-key-file): anyone who can publish on the \
                 backplane can deliver any message on any tag to this node's subscribers \
                 (token permissions do not apply to it), replay what nodes sent, make this node \
                 recheck tokens and list nodes that do not exist; see docs/cluster.md, \"Threat model\""
            ),
        }
        Ok(Cluster { node })
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node.id
    }

    /// The nodes this one currently sees (heard within three heartbeats),
    /// itself included, sorted.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .node
            .inbound
            .lock()
            .nodes(Instant::now())
            .into_iter()
            .map(NodeId)
            .collect();
        nodes.push(self.node.id);
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// A local session now holds a subscription to `tags`. When that needed
    /// a backplane subscription not yet confirmed, returns its
    /// confirmation: await it (bounded) before answering the session's
    /// next command, so that the ping barrier holds across nodes. The
    /// result only says whether cross-node delivery is live; the local
    /// subscription stands either way.
    pub fn subscribe<S: AsRef<str>>(&self, tags: &[S]) -> Option<Confirmation> {
        if tags.is_empty() {
            return None;
        }
        let node = &self.node;
        let set = canonical(tags);
        let mut held = node.interest.lock();
        // Under the lock: changes are numbered in the order the interest
        // changed.
        let Held {
            interest,
            epoch,
            pending,
        } = &mut *held;
        interest.add(set.clone(), |set| {
            *epoch += 1;
            pending.push((true, set.clone()));
            node.epoch.store(*epoch, Ordering::Release);
            node.confirm(*epoch)
        });
        // A set held already may still wait for its confirmation.
        interest.get(&set).and_then(|held| held.attached.pending())
    }

    /// A local session no longer holds a subscription to `tags` (exactly
    /// that set). Once no session holds it, its withdrawal is announced
    /// after the linger.
    pub fn unsubscribe<S: AsRef<str>>(&self, tags: &[S]) {
        let set = canonical(tags);
        let lingering = self.node.interest.lock().interest.remove(&set);
        if let Some(generation) = lingering {
            let node = self.node.clone();
            self.node.runtime.clone().spawn(async move {
                tokio::time::sleep(node.config.linger).await;
                let mut held = node.interest.lock();
                if held.interest.reap(&set, generation) {
                    held.epoch += 1;
                    held.pending.push((false, set));
                    node.epoch.store(held.epoch, Ordering::Release);
                    drop(held);
                    node.flush.notify_one();
                }
            });
        }
    }

    /// A message was published on this node (and delivered locally,
    /// without its publisher): send it to the nodes with a matching
    /// interest. `data` is one JSON string token. Never waits; while the
    /// backplane is down the message is dropped and counted.
    pub fn publish<S: AsRef<str>>(&self, tags: &[S], data: &str) {
        let node = &self.node;
        if tags.is_empty() {
            return;
        }
        if !node.up.load(Ordering::Relaxed) {
            node.dropped(1, "the backplane is down");
            return;
        }
        let synced = node.synced.load(Ordering::Acquire);
        let (accepted, was_empty) = {
            let mut outbound = node.outbound.lock();
            let was_empty = outbound.is_empty();
            let pushed = outbound.push_routed(tags, data, |to| {
                if synced {
                    let mut route = node.route.lock();
                    node.remote.read().route(tags, &mut route, to);
                } else {
                    // Not every node is known yet: every node gets it.
                    to.push(EVERY_NODE);
                }
            });
            let accepted = match pushed {
                outbound::Pushed::Queued => true,
                outbound::Pushed::Full => false,
                // No other node holds a matching subscription.
                outbound::Pushed::Nowhere => return,
            };
            if outbound.bytes() > CONGESTED_BYTES && !node.congested.swap(true, Ordering::Relaxed) {
                node.counters.congestions.fetch_add(1, Ordering::Relaxed);
            }
            (accepted, was_empty)
        };
        if !accepted {
            node.dropped(1, "the outgoing queue is full");
        } else if was_empty {
            node.flush.notify_one();
        }
    }

    /// Whether the way out is saturated: more than [`CONGESTED_BYTES`] of
    /// messages wait for the backplane, which is up and taking them as fast
    /// as it can. The broker then stops reading the sessions that publish
    /// until [`Cluster::room`], so that a publisher faster than the
    /// backplane is slowed down (as TCP would slow it) instead of losing
    /// messages. One relaxed load.
    pub fn congested(&self) -> bool {
        self.node.congested.load(Ordering::Relaxed)
    }

    /// Completes once the backplane is no longer [`Cluster::congested`]:
    /// what waited fell below [`RELIEVED_BYTES`], the backplane went down
    /// (messages are then dropped, not waited for) or the node stopped.
    pub async fn room(&self) {
        let node = &self.node;
        loop {
            let notified = node.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !node.congested.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// A token's tags changed here (`unset`, `unregister`, `set`): tell the
    /// other nodes, which re-check their sessions holding it. Only the
    /// token's SHA-256 is sent.
    pub fn token_changed(&self, token: &str) {
        self.token_digest_changed(&TokenDigest::of(token))
    }

    /// [`Cluster::token_changed`] for a token known by its SHA-256 (the
    /// broker indexes sessions by it and no longer holds the token).
    ///
    /// Never lost: the change is kept until the backplane has taken it,
    /// offered again whenever it can take more and when it comes back up.
    /// (Past 4,096 distinct changes waiting, one "recheck every
    /// token" takes their place.) Never waits.
    pub fn token_digest_changed(&self, digest: &TokenDigest) {
        let node = &self.node;
        if node.stopped.load(Ordering::Relaxed) {
            return;
        }
        node.control.lock().add(digest.0);
        node.flush.notify_one();
    }

    /// Reads the cluster key file again (rotation: docs/cluster.md). On
    /// error the node keeps the keys it had.
    pub fn reload_key(&self) -> Result<(), ClusterError> {
        let node = &self.node;
        let Some(path) = &node.config.key_file else {
            return Ok(());
        };
        let keys = Arc::new(ClusterKeys::load(path).map_err(|e| ClusterError::Key(e.to_string()))?);
        tracing::info!(
            "cluster key reloaded from {} (key ids {})",
            path.display(),
            key_ids(&keys)
        );
        // Signing first: what this node sends from now on is signed with
        // the new first key, which the other nodes accept once they have
        // reloaded too (docs/cluster.md, "Rotating the key").
        *node.keys.write() = Some(keys.clone());
        node.inbound.lock().set_keys(Some(keys));
        Ok(())
    }

    /// `Ok` while the backplane is connected; why not otherwise (for
    /// `/readyz`).
    pub fn health(&self) -> Result<(), ClusterError> {
        self.node
            .transport
            .health()
            .map_err(|e| ClusterError::Unavailable(e.message.into_string()))?;
        if self.node.up.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(ClusterError::Unavailable("reconnecting".into()))
        }
    }

    /// The node's figures.
    pub fn figures(&self) -> ClusterFigures {
        let c = &self.node.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ClusterFigures {
            up: self.node.up.load(Ordering::Relaxed),
            messages_sent: read(&c.messages_sent),
            payloads_sent: read(&c.payloads_sent),
            messages_received: read(&c.messages_received),
            payloads_received: read(&c.payloads_received),
            duplicates: read(&c.duplicates),
            dropped: read(&c.dropped),
            congestions: read(&c.congestions),
            malformed: read(&c.malformed),
            channels: self.node.interest.lock().interest.len() as u64,
            nodes: self.nodes().len() as u64,
        }
    }

    /// Leaves the cluster: hands the backplane what waits, says goodbye
    /// (other nodes drop it from `nodes` at once), stops the tasks and
    /// disconnects. Nothing is sent after the goodbye. Idempotent.
    pub fn stop(&self) {
        let node = &self.node;
        if node.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        {
            // Waits for a flush under way; the flusher sends nothing after.
            let mut sender = node.sender.lock();
            let _ = node.send_control(&mut sender);
            let runs = node.outbound.lock().take();
            // Whatever the backplane cannot take now is lost with the node.
            for run in node.send(&mut sender, runs) {
                node.dropped(run.count, "the node is leaving");
            }
            let _ = node.emit(&mut sender, Kind::Leaving, EVERY_NODE, &[]);
            sender.left = true;
        }
        node.relieve();
        node.confirmed.send_replace(u64::MAX);
        for task in node.tasks.lock().drain(..) {
            task.abort();
        }
        node.transport.stop();
        tracing::info!("node {} left the cluster", node.id);
    }
}

impl Node {
    fn dropped(&self, messages: u64, why: &str) {
        self.counters.dropped.fetch_add(messages, Ordering::Relaxed);
        if self
            .dropped_in_outage
            .fetch_add(messages, Ordering::Relaxed)
            == 0
        {
            tracing::warn!(
                "node {}: messages for other nodes are dropped: {why}",
                self.id
            );
        }
    }

    /// Hands the backplane what waits: token changes first, then this
    /// node's interest (a hello, its changes, the acknowledgements,
    /// snapshot requests and snapshots other nodes wait for), then the runs
    /// of messages. Runs while the backplane's queue is full wait (and the
    /// publishers with them); token changes also wait while it is down.
    async fn flusher(self: Arc<Self>) {
        loop {
            self.flush.notified().await;
            loop {
                let again = {
                    let mut sender = self.sender.lock();
                    if sender.left {
                        return;
                    }
                    let control = self.send_control(&mut sender);
                    let interest = self.send_interest(&mut sender);
                    let runs = self.outbound.lock().take();
                    let left = self.send(&mut sender, runs);
                    let full = !left.is_empty()
                        || [&control, &interest]
                            .iter()
                            .any(|r| matches!(r, Err(e) if e.kind == ErrorKind::OVERLOADED));
                    if !left.is_empty() {
                        // New publishes queued behind them: the order holds.
                        self.outbound.lock().put_back(left);
                    }
                    full
                };
                self.recompute_confirmed();
                self.relieve();
                if !again {
                    break;
                }
                // The backplane's own queue is full: offer the rest again in
                // a moment (only while congested; the publishers wait).
                tokio::time::sleep(RETRY_FULL).await;
            }
        }
    }

    /// Clears `congested` once what waits is below [`RELIEVED_BYTES`] (or
    /// the backplane is down: nothing is waited for then), and wakes the
    /// sessions that wait for it.
    fn relieve(&self) {
        if !self.congested.load(Ordering::Relaxed) {
            return;
        }
        let down = !self.up.load(Ordering::Relaxed) || self.stopped.load(Ordering::Relaxed);
        if down || self.outbound.lock().bytes() < RELIEVED_BYTES {
            self.congested.store(false, Ordering::Release);
            self.room.notify_waiters();
        }
    }

    /// Numbers, seals and hands one payload to the backplane: the only way
    /// anything is sent, under the sender lock, so that numbers go out in
    /// order and none is used twice. `to` is one node (its channel) or
    /// [`EVERY_NODE`] (the control channel); each has its own counter. A
    /// number is used only once the backplane took its payload; nothing is
    /// sent once the node left.
    fn emit(
        &self,
        sender: &mut Sender,
        kind: Kind,
        to: u64,
        body: &[&[u8]],
    ) -> Result<(), SdkError> {
        if sender.left {
            return Err(SdkError::unavailable("the node left the cluster"));
        }
        let (counter, channel) = if to == EVERY_NODE {
            (&mut sender.sequence, self.names.control().to_string())
        } else {
            (&mut sender.direct, self.names.node(to))
        };
        let sequence = *counter + 1;
        let keys = self.keys.read().clone();
        let payload = wire::seal_to(
            kind,
            self.id.0,
            to,
            sequence,
            wall_ms(),
            keys.as_deref(),
            body,
        );
        self.transport.publish(vec![channel], payload)?;
        *counter = sequence;
        Ok(())
    }

    /// Sends the token changes that wait; what the backplane does not take
    /// stays for the next time (whatever the reason).
    fn send_control(&self, sender: &mut Sender) -> Result<(), SdkError> {
        let (digests, all) = self.control.lock().take();
        if all {
            if let Err(e) = self.emit(sender, Kind::RecheckAll, EVERY_NODE, &[]) {
                self.control.lock().put_back(digests, true);
                return Err(e);
            }
        }
        let mut digests = digests.into_iter();
        while let Some(digest) = digests.next() {
            if let Err(e) = self.emit(sender, Kind::TokenChanged, EVERY_NODE, &[&digest]) {
                self.control
                    .lock()
                    .put_back(std::iter::once(digest).chain(digests), false);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Hands each run to the backplane as one payload, in order. Returns
    /// the runs it could not take because its queue is full
    /// ([`mist_sdk::ErrorKind::OVERLOADED`]), oldest first; runs it refused
    /// for any other reason (it is down) are dropped and counted.
    fn send(&self, sender: &mut Sender, runs: Vec<Run>) -> Vec<Run> {
        let mut runs = runs.into_iter();
        while let Some(run) = runs.next() {
            let count_varint = wire::messages_count(run.count);
            match self.emit(sender, Kind::Messages, run.to, &[&count_varint, &run.body]) {
                Ok(()) => {
                    self.counters
                        .messages_sent
                        .fetch_add(run.count, Ordering::Relaxed);
                    self.counters.payloads_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind == ErrorKind::OVERLOADED => {
                    let mut left = vec![run];
                    left.extend(runs);
                    return left;
                }
                Err(e) => self.dropped(run.count, &e.message),
            }
        }
        Vec::new()
    }

    fn heartbeat_ms(&self) -> u64 {
        u64::try_from(self.config.heartbeat.as_millis()).unwrap_or(u64::MAX)
    }

    async fn heartbeats(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.config.heartbeat);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            if self.stopped.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            let alive = {
                let mut inbound = self.inbound.lock();
                inbound.sweep(now);
                inbound.nodes(now)
            };
            // Nothing more goes to a node no longer listed, and nothing is
            // waited from it.
            self.remote.write().retain(&alive);
            {
                // Acknowledgements of nodes not listed are not waited for
                // (`recompute_confirmed` asks only the listed ones) but are
                // kept: one may arrive before its sender's first heartbeat.
                let mut acks = self.acks.lock();
                if acks.acked.len() > peers::MAX_PEERS {
                    acks.acked.retain(|node, _| alive.contains(node));
                }
            }
            if !self.synced.load(Ordering::Acquire) && now >= *self.sync_at.lock() {
                self.synced.store(true, Ordering::Release);
            }
            self.recompute_confirmed();
            self.heartbeat();
        }
    }

    /// Says this node is alive; a hello when it (re)joined.
    fn heartbeat(&self) {
        if self.up.load(Ordering::Relaxed) {
            let body = wire::heartbeat_body(self.heartbeat_ms());
            let hello = self.hello.swap(false, Ordering::AcqRel);
            let kind = if hello { Kind::Hello } else { Kind::Heartbeat };
            let mut sender = self.sender.lock();
            if let Err(e) = self.emit(&mut sender, kind, EVERY_NODE, &[&body]) {
                if hello && e.kind == ErrorKind::OVERLOADED {
                    self.hello.store(true, Ordering::Release);
                }
            }
        }
    }

    /// A payload arrived (from the plugin's reader).
    fn receive(&self, channel: &str, payload: &[u8]) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let verdict = self
            .inbound
            .lock()
            .check(payload, Instant::now(), wall_ms());
        let count = |counter: &AtomicU64, n: u64| counter.fetch_add(n, Ordering::Relaxed);
        match verdict {
            Verdict::Messages { messages, refused } => {
                count(&self.counters.payloads_received, 1);
                let mut refused = refused;
                if !messages.is_empty() {
                    let left_out = self.local.deliver(&messages) as u64;
                    count(
                        &self.counters.messages_received,
                        messages.len() as u64 - left_out,
                    );
                    refused += left_out;
                }
                if refused > 0 {
                    self.refused(
                        channel,
                        refused,
                        &format!("{refused} messages over this node's limits"),
                    );
                }
            }
            Verdict::Copy => {
                count(&self.counters.payloads_received, 1);
                count(&self.counters.duplicates, 1);
            }
            Verdict::TokenChanged(digest) => self.local.token_changed(&TokenDigest(digest)),
            Verdict::RecheckAll => self.local.recheck_all(),
            verdict @ (Verdict::Heartbeat { .. }
            | Verdict::Hello { .. }
            | Verdict::Interest { .. }
            | Verdict::Snapshot { .. }
            | Verdict::SnapshotRequest { .. }
            | Verdict::Ack { .. }
            | Verdict::Leaving { .. }) => self.interest_verdict(verdict),
            Verdict::Own => {}
            Verdict::Refused(why) => self.refused(channel, 1, &why.to_string()),
        }
    }

    /// Counts what was refused; logged at the 1st, 2nd, 4th, 8th, ...
    /// refusal, so that a flood cannot flood the log.
    fn refused(&self, channel: &str, n: u64, why: &str) {
        let before = self.counters.malformed.fetch_add(n, Ordering::Relaxed);
        let after = before + n;
        if (before + 1..=after).any(u64::is_power_of_two) {
            tracing::warn!(
                "node {}: refused a backplane payload on {channel}: {why} ({after} refused so far)",
                self.id
            );
        }
    }

    /// The backplane connection went down or came back.
    fn connection(&self, up: bool) {
        if self.up.swap(up, Ordering::SeqCst) == up {
            return;
        }
        // Publishers waiting for room go on: while down, nothing is waited for.
        self.relieve();
        if up {
            // Changes may have been missed both ways: this node says hello
            // (the others ask for its snapshot) and asks every node it
            // knows for theirs; until it has heard every node again, its
            // messages go to every node.
            self.start_sync();
            let nodes = self.remote.write().reset_all();
            self.acks.lock().requests.extend(nodes);
            let dropped = self.dropped_in_outage.swap(0, Ordering::Relaxed);
            tracing::info!(
                "node {}: cluster backplane connected; cross-node delivery resumed \
                 ({dropped} messages for other nodes dropped meanwhile); rechecking every token",
                self.id
            );
            self.heartbeat();
            // Token changes kept while it was down go now.
            self.flush.notify_one();
            // Those other nodes sent meanwhile are lost to this one.
            self.local.recheck_all();
            self.recompute_confirmed();
        } else {
            self.recompute_confirmed();
            tracing::warn!(
                "node {}: cluster backplane lost; serving local clients only until it returns",
                self.id
            );
        }
    }
}

/// The one owner of a node's sequence numbers (see [`Node::emit`]).
#[derive(Default)]
struct Sender {
    /// The last number used for every node (the control channel).
    sequence: u64,
    /// The last number used for one node (its channel).
    direct: u64,
    /// Set once the goodbye went: nothing more is sent.
    left: bool,
}

/// This machine's clock, in ms since the UNIX epoch (0 before it).
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Key ids for the log, `1a2b3c4d, 5e6f7a8b`.
fn key_ids(keys: &ClusterKeys) -> String {
    let ids: Vec<String> = keys.ids().iter().map(|id| format!("{id:08x}")).collect();
    ids.join(", ")
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn token_digests_are_sha256() {
        let d = TokenDigest::of("abc");
        assert_eq!(
            d.0[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(\"abc\") starts ba7816bf"
        );
        assert_eq!(format!("{d:?}"), "TokenDigest(ba7816bf..)");
        assert_eq!(NodeId(0xabc).to_string(), "0000000000000abc");
        assert_ne!(NodeId::random(), NodeId::random());
    }
}
