//! An example third-party Mist plugin. It depends on no Mist crate but
//! `mist-sdk`, and provides one of each thing a plugin can:
//!
//! - custom commands ([`commands`]): `echo`, `stats` and `announce`;
//! - a listener ([`unix`]): `unix:///path/to/socket`, the line protocol over
//!   a Unix-domain socket;
//! - an authenticator ([`token_file`]): `tokenfile:///path/tokens.toml`,
//!   read-only tokens from a TOML file;
//! - a cluster backplane ([`datagram`]): `unixgram:///path/to/dir`, nodes on
//!   one machine exchanging traffic over Unix datagram sockets.
//!
//! Build it with `cargo build --release` in this directory and name
//! `target/release/libmist_example_plugin.so` in `plugins.toml`.

pub mod commands;
pub mod datagram;
pub mod token_file;
pub mod unix;

use std::sync::Arc;

use mist_sdk::{
    async_trait, export_plugin, Authenticator, Backplane, Broker, CommandContext, Host, Inbox,
    Listener, Message, Plugin, SdkError,
};

/// The plugin: what it declares, and the broker handle its parts share.
pub struct Example {
    broker: Broker,
}

#[async_trait]
impl Plugin for Example {
    const NAME: &'static str = "example";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const LISTENERS: &'static [&'static str] = &["unix"];
    const AUTHENTICATORS: &'static [&'static str] = &["tokenfile"];
    const COMMANDS: &'static [&'static str] = &["echo", "stats", "announce"];
    const BACKPLANES: &'static [&'static str] = &["unixgram"];

    fn init(host: Host) -> Result<Self, SdkError> {
        Ok(Example {
            broker: host.broker().clone(),
        })
    }

    fn start_listener(&self, uri: &str) -> Result<Box<dyn Listener>, SdkError> {
        unix::start(uri, self.broker.clone())
    }

    async fn open_authenticator(&self, uri: &str) -> Result<Arc<dyn Authenticator>, SdkError> {
        Ok(Arc::new(token_file::TokenFile::open(uri)?))
    }

    async fn command(&self, cx: CommandContext, request: Message) -> Result<(), SdkError> {
        commands::run(&self.broker, cx, request)
    }

    async fn open_backplane(
        &self,
        uri: &str,
        inbox: Inbox,
    ) -> Result<Box<dyn Backplane>, SdkError> {
        Ok(Box::new(datagram::open(uri, inbox)?))
    }
}

export_plugin!(Example);
