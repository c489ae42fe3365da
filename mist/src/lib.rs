//! The Mist broker: a tagged publish/subscribe server whose listeners,
//! authenticators and custom commands are plugins.
//!
//! This crate is the host: the broker core, the subscription matcher and
//! the plugin loader, which the `mist` binary runs (its client commands and
//! `mist bench`, on the `mist-client` and `mist-bench` crates, are the
//! binary's own). Plugins depend only on `mist-sdk`. The protocol clients
//! rely on is `docs/protocol.md`; how a
//! message travels through the code is in `docs/architecture.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mist::cli::ServerArgs;
//! use mist::config::ServerConfig;
//! use mist::server::Server;
//!
//! let args = ServerArgs { listeners: vec!["tcp://127.0.0.1:0".into()], ..Default::default() };
//! let server = Server::start(&ServerConfig::resolve(&args)?).await?;
//! println!("serving on {:?}", server.listener_uris());
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`cli`], [`config`], [`logging`]: the command-line flags, the
//!   configuration file and the log; [`units`]: sizes and durations as
//!   text, which flags and file read alike.
//! - [`server`]: start-up and shutdown: plugins, authenticator, listeners.
//! - [`metrics`], [`health`]: `/metrics` and `/readyz`, as the HTTP listener
//!   serves them through the broker handle.
//! - [`broker`]: sessions, commands, publish → match → deliver, queues.
//! - [`tags`]: the bitset-indexed subscription matcher; no I/O.
//! - [`plugins`]: `plugins.toml`, loading libraries, the registry.
//! - [`builtin`]: the first-party plugins linked into the binary.
//! - [`cluster`]: the node's side of a cluster over a backplane plugin
//!   (announced interest, channel names, payloads, duplicates, heartbeats).

pub mod broker;
pub mod builtin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod plugins;
pub mod server;
pub mod tags;
pub mod units;
