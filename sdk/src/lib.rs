//! The stable plugin interface of the Mist broker.
//!
//! Every listener, authenticator and custom command Mist has is a plugin: a
//! shared library built against this crate and named in `plugins.toml`. The
//! first-party TCP, HTTP, WebSocket, memory, scribble and PostgreSQL plugins
//! use exactly this interface, and so can you; this crate is the only one a
//! plugin depends on.
//!
//! # A complete plugin
//!
//! ```
//! use mist_sdk::{async_trait, export_plugin, CommandContext, Host, Message, Plugin, SdkError};
//!
//! /// Answers `{"command":"echo","data":"hi"}` with the same data.
//! pub struct Echo;
//!
//! #[async_trait]
//! impl Plugin for Echo {
//!     const NAME: &'static str = "echo";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     const COMMANDS: &'static [&'static str] = &["echo"];
//!
//!     fn init(_host: Host) -> Result<Self, SdkError> {
//!         Ok(Echo)
//!     }
//!
//!     async fn command(&self, cx: CommandContext, request: Message) -> Result<(), SdkError> {
//!         cx.reply(Message::new("echo").with_data(request.data.as_str()));
//!         Ok(())
//!     }
//! }
//!
//! // In a crate with `crate-type = ["cdylib"]`:
//! export_plugin!(Echo);
//! ```
//!
//! Build it with `cargo build --release`, then name the library in
//! `plugins.toml`:
//!
//! ```toml
//! [[plugin]]
//! path = "target/release/libecho.so"
//! ```
//!
//! # The model
//!
//! A plugin declares, in its [`Plugin`] constants, what it provides:
//!
//! - **listeners**, by URI scheme (`tcp`): [`Plugin::start_listener`] binds the
//!   URI and serves clients. For each client it opens a [`Session`] with
//!   [`Broker::open_session`], [feeds](Session::feed) it the bytes the client
//!   sends and writes out what [`Session::output`] yields. The broker parses
//!   the protocol, routes messages and produces replies: a listener only moves
//!   bytes. [`net::Serve`] does what every socket listener needs around that:
//!   the connection limit, TLS (certificates from the URI, see [`tls`]), the
//!   handshake timeout, refusals and reload.
//! - **authenticators**, by URI scheme (`memory`): [`Plugin::open_authenticator`]
//!   returns an [`Authenticator`], a token store.
//! - **custom commands**, by name (`echo`): the broker sends lines whose
//!   `command` is one of them to [`Plugin::command`], with a
//!   [`CommandContext`] saying who sent it and how to reply.
//! - **cluster backplanes**, by URI scheme (`redis`): [`Plugin::open_backplane`]
//!   returns a [`Backplane`], a transport of opaque payloads on named
//!   channels through which several Mist nodes act as one broker; what
//!   arrives goes to the host's [`Inbox`].
//!
//! # Lifecycle
//!
//! 1. The host loads the library and checks it (below), then reads its
//!    declaration. Names that clash with built-in commands or with another
//!    plugin are refused.
//! 2. It calls [`Plugin::init`] once with a [`Host`]: the plugin's settings
//!    from `plugins.toml` and the [`Broker`]. An error refuses the plugin.
//! 3. It then starts the listeners and opens the authenticator the operator
//!    asked for, and routes custom commands, until shutdown, when it stops
//!    the listeners. Libraries are never unloaded.
//!
//! # Threads and runtimes
//!
//! A `cdylib` carries its own copy of tokio and of every static, so plugin
//! code cannot use the host's runtime. This crate therefore gives each
//! library a runtime of its own ([`runtime()`]) and runs plugin code inside
//! it: `start_listener` is called within it (so `tokio::spawn` works there),
//! and every async method is spawned onto it, with only a join handle
//! crossing back to the host as an [`async_ffi::FfiFuture`]. Write ordinary
//! tokio code; do not block a runtime thread.
//!
//! `tracing` events from a plugin are forwarded to the host's log. (A plugin
//! linked into the host shares the host's `tracing`, so nothing is
//! forwarded there: its events reach the host's subscriber directly.)
//!
//! # What crosses the boundary
//!
//! Only the types in [`abi`]: `#[repr(C)]` structs of `abi_stable`'s
//! `RString`/`RVec`, trait objects made with `#[sabi_trait]`, and FFI-safe
//! futures. A panic in plugin code is caught before it reaches the boundary
//! and becomes an [`SdkError`] of kind [`ErrorKind::PANICKED`]; the broker
//! logs it or answers the client with an error, and carries on. That holds
//! for every call the host makes into a plugin, the synchronous ones
//! (a listener's `stop`, `local_addr`, `health`, `reload`) included, and
//! for the drop of every plugin object the host owns (plugin, listener,
//! authenticator, backplane): each runs inside the library's runtime, with
//! panics caught and logged. A panic unwinding across the boundary would
//! abort the whole broker.
//!
//! This needs unwinding. **A plugin built with `panic = "abort"`** (in its
//! `[profile.*]`) cannot be caught: its first panic kills the broker
//! process, with every client connection. Build plugins with the default
//! `panic = "unwind"`.
//!
//! # Versions
//!
//! This crate's version is the plugin interface's version. When `mist`
//! loads a library, it reads the version of this crate the library was
//! built with and compares it with its own (patch versions never matter):
//!
//! - `0.x`: the minor versions must be equal. A `mist` built with sdk
//!   `0.2.0` loads plugins built against `0.2.*`, and refuses `0.1.*` and
//!   `0.3.*`.
//! - from `1.0`: the major versions must be equal and the plugin's minor
//!   version at most `mist`'s: a `1.4` host loads plugins built against
//!   `1.0` to `1.4`, not `1.5`.
//!
//! Then `abi_stable` compares the layout of every type reachable from the
//! root module. A mismatch refuses the library with an error naming it and
//! both versions; nothing of the library runs. The interface grows only by
//! addition (see [`abi`]).

#![deny(missing_docs)]

pub mod abi;
mod auth;
mod backplane;
mod broker;
mod command;
mod error;
mod log;
mod message;
pub mod net;
mod plugin;
mod runtime;
pub mod tls;
mod uri;

pub use abi::{
    Access, AuthError, BrokerStats, Grant, ListenerLimits, LogLevel, Message, PluginInfo,
    Readiness, Rejection, SessionInfo,
};
pub use auth::Authenticator;
pub use backplane::{Backplane, Confirmation, Inbox, Outbox, Outgoing};
pub use broker::{output_lines, Broker, ConnectionPermit, Feed, Session};
pub use command::CommandContext;
pub use error::{ErrorKind, SdkError};
#[doc(hidden)]
pub use plugin::__exported;
pub use plugin::{module, Host, Listener, Plugin};
pub use runtime::runtime;
pub use uri::socket_address;

/// Re-exported for `#[async_trait]` on [`Plugin`] and [`Authenticator`] impls.
pub use async_trait::async_trait;

/// Re-exported for [`export_plugin!`] and for hosts that load plugins.
pub use abi_stable;
/// Re-exported: the FFI-safe future type of the boundary.
pub use async_ffi;
