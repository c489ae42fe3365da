//! The stable surface: every type that crosses between the `mist` host and a
//! plugin library.
//!
//! Everything here is `#[repr(C)]` and derives [`StableAbi`], so `abi_stable`
//! can compare the layout the host was built with against the layout a library
//! was built with when the library is loaded. Plugin authors rarely touch these
//! types directly: [`crate::Plugin`] and [`crate::export_plugin!`] build them.
//!
//! # Versions
//!
//! The host loads a library only if the mist-sdk version the library was
//! built against is compatible with its own; patch versions never matter:
//!
//! - `0.x`: the **same minor version**. A `0.2.0` host loads libraries built
//!   against `0.2.0` ..= `0.2.*`, and refuses `0.1.*` and `0.3.*` alike:
//!   every `0.x` minor version may change this module in any way.
//! - from `1.0`: the **same major version, and the library's minor version
//!   at most the host's**. A `1.4` host loads libraries built against `1.0`
//!   ..= `1.4`; a `1.5` library is refused, since it may call methods a
//!   `1.4` host does not have.
//!
//! The host reads the version from the library's header and refuses it
//! before any of the library's code runs, with an error naming the library
//! and both versions. (`abi_stable` 0.11's own check is looser: for `0.x` it
//! refuses only a library whose minor version is *below* the host's.) Then
//! `abi_stable` compares the layout of every type reachable from the root
//! module, and refuses any difference.
//!
//! # Growing this module
//!
//! The root module ([`Module`]) is a prefix type and every trait object here
//! marks its last method with `#[sabi(last_prefix_field)]`: new fields and
//! methods go *after* the existing ones, so that from `1.0` a library built
//! against an older minor version of the sdk keeps loading. A field added to
//! [`Module`] after `init` is read by the host as an `Option`
//! (`#[sabi(missing_field(option))]`): `None` from a library too old to
//! have it, never a panic. Plain structs passed by value ([`PluginInfo`],
//! [`SessionInfo`], [`Message`], ...) cannot grow without a new major
//! version (`0.x`: minor version).

// abi_stable 0.11's `#[sabi_trait]` expands to impls the `non_local_definitions` lint flags.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RArc, RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};
use async_ffi::FfiFuture;

use crate::error::SdkError;

/// What every plugin library exports: how to describe it and how to start it.
///
/// Built by [`crate::module`]; exported with [`crate::export_plugin!`].
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ModuleRef)))]
// A field added after `init` reads as `None` from an older library.
#[sabi(missing_field(option))]
pub struct Module {
    /// The plugin's name, version and what it provides. Cannot fail.
    pub describe: extern "C" fn() -> PluginInfo,
    /// Starts the plugin. Called once per process, before any other call.
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn(host: HostContext) -> RResult<PluginBox, SdkError>,
}

impl RootModule for ModuleRef {
    declare_root_module_statics! {ModuleRef}
    const BASE_NAME: &'static str = "mist_plugin";
    const NAME: &'static str = "mist_plugin";
    // The sdk's own package version. The host checks it against its own
    // with the rule in "Versions" above, before `abi_stable`'s looser check.
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// A plugin's declaration, read before it is started.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Short name, used in logs and errors (`"tcp"`).
    pub name: RString,
    /// The plugin's own version (its crate version).
    pub version: RString,
    /// URI schemes of the listeners it serves (`["tcp"]`).
    pub listeners: RVec<RString>,
    /// URI schemes of the authenticators it provides (`["memory"]`).
    pub authenticators: RVec<RString>,
    /// Names of the custom commands it handles (`["echo"]`).
    pub commands: RVec<RString>,
    /// URI schemes of the cluster backplanes it serves (`["redis"]`).
    pub backplanes: RVec<RString>,
}

/// What the host hands a plugin when it starts it.
#[repr(C)]
#[derive(StableAbi)]
pub struct HostContext {
    /// The plugin's `settings` table from `plugins.toml`, as a JSON object.
    pub settings: RString,
    /// The broker, for listeners (to open sessions) and commands (to publish).
    pub broker: BrokerBox,
    /// Where the plugin's `tracing` events go.
    pub logger: LoggerBox,
    /// The most verbose level the host will print, so plugins skip the rest early.
    pub max_level: LogLevel,
}

/// A started plugin. Implemented by the sdk around a [`crate::Plugin`].
#[sabi_trait]
pub trait PluginApi: Send + Sync + 'static {
    /// Binds and starts serving `uri` (whose scheme is one this plugin declared).
    fn start_listener(&self, uri: RStr<'_>) -> RResult<ListenerBox, SdkError>;

    /// Opens the store named by `uri` (whose scheme this plugin declared).
    fn open_authenticator(&self, uri: RString) -> FfiFuture<RResult<AuthenticatorBox, SdkError>>;

    /// Runs the custom command `request.command` for a session.
    #[sabi(last_prefix_field)]
    fn call_command(
        &self,
        context: CommandContext,
        request: Message,
    ) -> FfiFuture<RResult<(), SdkError>>;

    /// Connects to the cluster backplane named by `uri` (whose scheme this
    /// plugin declared). Traffic that arrives on a subscribed channel goes to
    /// `inbox`. Since sdk 0.2.
    fn open_backplane(
        &self,
        uri: RString,
        inbox: BackplaneInboxBox,
    ) -> FfiFuture<RResult<BackplaneBox, SdkError>>;

    /// The broker is shutting down: release what the plugin holds (pools,
    /// connections). Called once, after every listener has stopped. Since sdk 0.2.
    fn stop(&self) -> FfiFuture<()>;
}

/// A started plugin, owned by the host.
pub type PluginBox = PluginApi_TO<RBox<()>>;

/// A running listener.
#[sabi_trait]
pub trait ListenerApi: Send + Sync + 'static {
    /// The address actually bound (useful after binding port 0), e.g. `127.0.0.1:40123`.
    fn local_addr(&self) -> RString;

    /// Stops accepting and closes this listener's connections. Idempotent.
    #[sabi(last_prefix_field)]
    fn stop(&self);

    /// `Ok` while the listener accepts connections; an error saying why once
    /// it cannot (its accept loop failed). Read by the host's readiness
    /// check. Since sdk 0.2.
    fn health(&self) -> RResult<(), SdkError>;

    /// Re-reads whatever the listener loaded from files at start (TLS
    /// certificates), for connections accepted from now on; on error the
    /// old state stays. Called on SIGHUP. Since sdk 0.2.
    fn reload(&self) -> RResult<(), SdkError>;
}

/// A running listener, owned by the host.
pub type ListenerBox = ListenerApi_TO<RBox<()>>;

/// The broker, as a plugin sees it. Implemented by the host.
#[sabi_trait]
pub trait BrokerApi: Clone + Send + Sync + 'static {
    /// Opens a session for a new client. `waker` is called whenever output
    /// becomes available for it; it must be cheap and must not block.
    fn open_session(&self, info: SessionInfo, waker: OutputWakerBox) -> SessionBox;

    /// Publishes a message as the broker itself (not as a session), skipping
    /// session `exclude` if given. Returns how many clients it was queued for.
    fn publish(
        &self,
        tags: RVec<RString>,
        data: RString,
        exclude: ROption<u64>,
    ) -> RResult<u64, SdkError>;

    /// Current figures.
    #[sabi(last_prefix_field)]
    fn stats(&self) -> BrokerStats;

    /// The limits listeners apply themselves (message size, timeouts).
    /// Since sdk 0.2.
    fn limits(&self) -> ListenerLimits;

    /// Asks for room for one more client connection on `listener` (its
    /// scheme). `Ok` takes one place until [`BrokerApi::release`]; an error
    /// of kind [`ErrorKind::OVERLOADED`](crate::ErrorKind::OVERLOADED) means
    /// the broker is full (or shutting down) and the connection should be
    /// refused with that error's message. Since sdk 0.2.
    fn admit(&self, listener: RStr<'_>) -> RResult<(), SdkError>;

    /// Gives back a place taken by a successful [`BrokerApi::admit`].
    /// Since sdk 0.2.
    fn release(&self, listener: RStr<'_>);

    /// The broker's metrics in the Prometheus text format (0.0.4). Under an
    /// authenticator `token` must be the server token: else an error of kind
    /// `UNAUTHENTICATED` (none given) or `PERMISSION_DENIED`. Since sdk 0.2.
    fn metrics(&self, token: ROption<RString>) -> RResult<RString, SdkError>;

    /// Whether the broker is ready to serve: every listener up, the
    /// authenticator's store and the cluster backplane reachable.
    /// Since sdk 0.2.
    fn readiness(&self) -> FfiFuture<Readiness>;
}

/// Limits a listener applies itself, from the host's configuration.
/// Since sdk 0.2.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Longest accepted message (a line, a WebSocket message, an HTTP
    /// request body), in bytes. Larger ones get an error reply.
    pub max_message_bytes: u64,
    /// How long an HTTP request's header may take to arrive, in milliseconds.
    pub header_timeout_ms: u64,
    /// How long a WebSocket (or TLS) handshake may take, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// How long one whole HTTP request/answer exchange (a `POST /publish`
    /// with its token check) may take, in milliseconds.
    pub request_timeout_ms: u64,
}

/// The broker's answer to a readiness probe. Since sdk 0.2.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Everything is up.
    pub ready: bool,
    /// A JSON object naming each part checked and its state, for the body
    /// of `/readyz`.
    pub report: RString,
}

/// A cheap, clonable handle to the broker.
pub type BrokerBox = BrokerApi_TO<RArc<()>>;

/// Facts about a new client, given when its session is opened.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default)]
pub struct SessionInfo {
    /// The listener's scheme (`"tcp"`, `"ws"`, ...), used in per-listener counts.
    pub listener: RString,
    /// The peer's address, for logs.
    pub peer: RString,
    /// A token presented at connect time (WebSocket / HTTP `X-AUTH-TOKEN`).
    pub token: ROption<RString>,
}

/// One client's conversation with the broker. Implemented by the host.
///
/// Input goes in through [`feed`](SessionApi::feed) (a byte stream of
/// newline-terminated JSON lines) or [`feed_message`](SessionApi::feed_message)
/// (one JSON message); output comes out of [`drain`](SessionApi::drain) as
/// newline-terminated JSON lines, replies and deliveries in order.
#[sabi_trait]
pub trait SessionApi: Clone + Send + Sync + 'static {
    /// The session's id, unique while it is open.
    fn id(&self) -> u64;

    /// Hands the broker bytes read from a line-framed stream; an incomplete
    /// last line is kept for the next call. When this returns a future, the
    /// caller must await it before feeding more: the session is waiting on an
    /// authenticator or on its own output backlog.
    fn feed(&self, bytes: RSlice<'_, u8>) -> ROption<FfiFuture<()>>;

    /// Like [`feed`](SessionApi::feed), for transports that frame messages
    /// themselves (one WebSocket text frame is one message).
    fn feed_message(&self, message: RSlice<'_, u8>) -> ROption<FfiFuture<()>>;

    /// Appends all waiting output to `out`. Returns `false` once the session
    /// is closed and nothing more will come.
    fn drain(&self, out: &mut RVec<u8>) -> bool;

    /// Ends the session: its subscriptions are removed at once. Output already
    /// queued can still be drained. Idempotent; dropping the last handle closes too.
    fn close(&self);

    /// Answers input the listener itself cannot accept (a binary WebSocket
    /// frame) with `{"command":"","error":<error>}`, in order with the
    /// replies to what was fed before it.
    #[sabi(last_prefix_field)]
    fn refuse(&self, error: RStr<'_>);

    /// Carries out one request (a JSON message, as for `feed_message`) and
    /// completes once it has taken effect. A refusal is returned as a typed
    /// error instead of being queued as an error reply, for transports that
    /// answer each request with a status of their own (HTTP). Replies the
    /// request produces (a `pong`) are queued as usual. Since sdk 0.2.
    fn execute(&self, request: RSlice<'_, u8>) -> FfiFuture<RResult<(), SdkError>>;

    /// Like [`drain`](SessionApi::drain), but what is appended may end in
    /// the middle of a line, whose rest comes first the next time: for
    /// listeners that write a byte stream, or that can send a message in
    /// fragments. The broker hands over a bounded amount per call either
    /// way; with this, what it and the listener hold for a connection stays
    /// within that bound however long a line is. Since sdk 0.3.
    fn drain_stream(&self, out: &mut RVec<u8>) -> bool;

    /// Tells the broker how many bytes the listener now holds for this
    /// session's input beyond a small fixed buffer (a WebSocket message
    /// still arriving, a request body), so that they count against the
    /// broker's memory budget like its own. `false` when the budget has no
    /// room for that much: the listener should then drop what it holds and
    /// end the connection (the broker has counted and logged it). Report
    /// `0` once the bytes are handed over or dropped. Since sdk 0.3.
    fn hold(&self, bytes: u64) -> bool;
}

/// A session handle, shared by a connection's reader and writer.
pub type SessionBox = SessionApi_TO<RArc<()>>;

/// Wakes a session's writer. Implemented by the sdk for listeners.
#[sabi_trait]
pub trait OutputWakerApi: Send + Sync + 'static {
    /// Called by the broker, from any thread, when output is waiting.
    #[sabi(last_prefix_field)]
    fn wake(&self);

    /// Called by the broker, from any thread, when it has ended the session
    /// itself (a slow consumer disconnected, the broker shutting down): the
    /// listener should stop reading and close the connection, even if a
    /// write to the client is stuck. Since sdk 0.2.
    fn closed(&self);
}

/// A session's writer waker, owned by the broker.
pub type OutputWakerBox = OutputWakerApi_TO<RBox<()>>;

/// A token store. Implemented by the sdk around a [`crate::Authenticator`].
///
/// Every call returns a future so that a remote store (PostgreSQL) never
/// stalls the broker's other sessions while it waits.
#[sabi_trait]
pub trait AuthenticatorApi: Clone + Send + Sync + 'static {
    /// Registers `token` with `tags`; an error of kind `ALREADY_EXISTS` if it exists.
    fn add_token(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<(), SdkError>>;
    /// Removes `token`; `NOT_FOUND` if there is no such token.
    fn remove_token(&self, token: RString) -> FfiFuture<RResult<(), SdkError>>;
    /// Adds tags to `token`; `NOT_FOUND` if there is no such token.
    fn add_tags(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<(), SdkError>>;
    /// Removes tags from `token`; `NOT_FOUND` if there is no such token.
    fn remove_tags(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<(), SdkError>>;
    /// The tags of `token`, sorted; `NOT_FOUND` if there is no such token.
    fn tags(&self, token: RString) -> FfiFuture<RResult<RVec<RString>, SdkError>>;
    /// Whether `token` exists and holds every one of `tags`.
    #[sabi(last_prefix_field)]
    fn may_use(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<bool, SdkError>>;

    /// `Ok` when the store can be reached; `UNAVAILABLE` with the reason
    /// when it cannot. Read by the host's readiness check. Since sdk 0.2.
    fn check(&self) -> FfiFuture<RResult<(), SdkError>>;
}

/// An open token store, owned by the host.
pub type AuthenticatorBox = AuthenticatorApi_TO<RArc<()>>;

/// A protocol message: a request, a reply or a delivery.
///
/// Empty `data` and `error` are left out when the message is written as JSON.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The command (`"publish"`, `"ping"`, a custom command's name, ...).
    pub command: RString,
    /// The tags, in the order given.
    pub tags: RVec<RString>,
    /// The payload; empty when absent.
    pub data: RString,
    /// The error; empty when there is none.
    pub error: RString,
}

/// What a custom command knows about the session that sent it.
#[repr(C)]
#[derive(StableAbi)]
pub struct CommandContext {
    /// The session's id.
    pub session: u64,
    /// What the session may do.
    pub access: Access,
    /// For [`Access::TOKEN`]: the tags its token holds, read at the time of the call.
    pub allowed_tags: RVec<RString>,
    /// Sends replies to the session, in order with its other output.
    pub replies: ReplierBox,
}

/// A session's standing with the broker's authenticator.
///
/// A number rather than an enum so that new kinds can be added without
/// breaking the ABI; unknown values should be treated like [`Access::ANONYMOUS`].
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access(pub u8);

impl Access {
    /// No authenticator is configured: every tag is allowed.
    pub const OPEN: Access = Access(0);
    /// Authenticated with the server token: every tag and the admin commands.
    pub const ADMIN: Access = Access(1);
    /// Authenticated with a registered token: only that token's tags.
    pub const TOKEN: Access = Access(2);
    /// An authenticator is configured and no valid token was given: `ping` only.
    pub const ANONYMOUS: Access = Access(3);
}

/// Sends messages to one session. Implemented by the host.
#[sabi_trait]
pub trait ReplierApi: Clone + Send + Sync + 'static {
    /// Queues `message` for the session; `false` if the session is gone.
    #[sabi(last_prefix_field)]
    fn send(&self, message: Message) -> bool;
}

/// A handle for replying to one session; can be kept after the command returns.
pub type ReplierBox = ReplierApi_TO<RArc<()>>;

/// The broker's running figures.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Open sessions.
    pub sessions: u64,
    /// Subscriptions held by open sessions.
    pub subscriptions: u64,
    /// Messages published.
    pub messages_in: u64,
    /// Deliveries queued for subscribers.
    pub messages_out: u64,
    /// Deliveries dropped because a subscriber's queue was full.
    pub dropped: u64,
}

/// A log level, most severe first. Numbers match `tracing`'s order.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogLevel(pub u8);

impl LogLevel {
    /// Errors.
    pub const ERROR: LogLevel = LogLevel(1);
    /// Warnings.
    pub const WARN: LogLevel = LogLevel(2);
    /// Information.
    pub const INFO: LogLevel = LogLevel(3);
    /// Debugging detail.
    pub const DEBUG: LogLevel = LogLevel(4);
    /// Everything.
    pub const TRACE: LogLevel = LogLevel(5);
}

/// Receives a plugin's log events. Implemented by the host.
#[sabi_trait]
pub trait LoggerApi: Clone + Send + Sync + 'static {
    /// Records one event. `target` is the plugin module that logged it.
    #[sabi(last_prefix_field)]
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>);
}

/// The host's logger.
pub type LoggerBox = LoggerApi_TO<RArc<()>>;

/// A connection to a cluster backplane (Redis, NATS, ...): a transport of
/// opaque payloads on named channels. Implemented by the sdk around a
/// [`crate::Backplane`]. The host decides the channel names and the payload
/// format; the plugin only moves bytes. Payloads published through one
/// connection reach every other node's inbox in publish order, across
/// channels (the host's duplicate suppression and per-publisher order rely
/// on it). Since sdk 0.2.
#[sabi_trait]
pub trait BackplaneApi: Send + Sync + 'static {
    /// Starts receiving `channels` into the inbox. The set of channels
    /// changes at the call (a later `unsubscribe` is ordered after it); the
    /// future completes once the backplane has confirmed the subscription,
    /// so that anything published on those channels afterwards, from any
    /// node, arrives. While disconnected it fails at once with
    /// `UNAVAILABLE` and the channels are subscribed on reconnect.
    fn subscribe(&self, channels: RVec<RString>) -> FfiFuture<RResult<(), SdkError>>;

    /// Stops receiving `channels`. Takes effect soon; never fails loudly.
    fn unsubscribe(&self, channels: RVec<RString>);

    /// Queues `payload` for each of `channels`, in order with earlier
    /// publishes. Never waits: when the backplane is down, returns
    /// `UNAVAILABLE` and the payload is dropped; when its outgoing buffer
    /// is full, `OVERLOADED`: the
    /// host keeps the payload and offers it again.
    fn publish(&self, channels: RVec<RString>, payload: RVec<u8>) -> RResult<(), SdkError>;

    /// `Ok` while connected; `UNAVAILABLE` with the reason when not.
    fn health(&self) -> RResult<(), SdkError>;

    /// Disconnects. Idempotent.
    #[sabi(last_prefix_field)]
    fn stop(&self);
}

/// A backplane connection, owned by the host.
pub type BackplaneBox = BackplaneApi_TO<RBox<()>>;

/// Where a backplane plugin hands what arrives. Implemented by the host.
/// Since sdk 0.2.
#[sabi_trait]
pub trait BackplaneInboxApi: Clone + Send + Sync + 'static {
    /// A payload arrived on `channel`. Must not block. Called from one
    /// thread at a time, in arrival order; `payload` is only borrowed.
    fn receive(&self, channel: RStr<'_>, payload: RSlice<'_, u8>);

    /// The connection went down (`false`) or came back (`true`, after the
    /// plugin has subscribed again to every channel it held).
    #[sabi(last_prefix_field)]
    fn connection(&self, up: bool);
}

/// The host's inbox for one backplane connection.
pub type BackplaneInboxBox = BackplaneInboxApi_TO<RArc<()>>;
