//! Mist's TCP listener: `tcp://host:port` serves the line protocol of the
//! spec (one JSON object per `\n`-terminated line, both ways), and
//! `tls://host:port` the same over TLS (certificate parameters in
//! [`mist_sdk::tls`]).
//!
//! It uses nothing of Mist but [`mist_sdk`], and moves bytes between
//! sockets and broker sessions knowing nothing of the protocol. Linked into
//! `mist` it is built in; the `mist-tcp` crate exports it as
//! `libmist_tcp.so` for `plugins.toml`.
//!
//! ```no_run
//! // What `mist` does with it, in short:
//! let module = mist_plugin_tcp::module();
//! let info = (module.describe())();
//! assert_eq!(info.listeners[0].as_str(), "tcp");
//! ```
//!
//! **Not the model for a listener of your own.** This is the tuned one,
//! built for memory per idle connection; start from `examples/plugin`
//! instead (its `unix` listener serves this same line protocol over a
//! Unix socket in one short file), or from the `ws` listener
//! (`plugins/ws`) for one that binds through [`mist_sdk::net::Serve`].
//!
//! # Layout
//!
//! - `plain.rs`: a plain connection, `Conn`, and its loop: it reads into a
//!   per-thread buffer, writes straight to its socket, and parks when idle.
//! - `park.rs`: the parking. An idle plain connection has no task and no
//!   place in tokio's reactor: its state waits in one small allocation that
//!   is also its waker, its socket in the listener's own poller (mio, on a
//!   thread of its own), until the socket turns readable, output arrives,
//!   the broker ends the session or the listener stops. The parking knows
//!   the connection only through a trait of its own: calls go one way,
//!   `plain` → `park`.
//! - `tls.rs`: a TLS connection. It reads through rustls, which keeps
//!   buffers of its own, and keeps its tasks.
//! - `read_buffer.rs`: the per-thread buffer both read into, a burst at a
//!   time.
//! - `writer.rs`: a session's output to its socket, for both; no write
//!   buffer while nothing is waiting.
//!
//! When the listener stops, a connection stops reading, writes out what is
//! queued for it, and only then closes its session: the host waits for the
//! sessions to close, up to its shutdown timeout.

use mist_sdk::abi::ModuleRef;
use mist_sdk::{async_trait, Broker, Host, Listener, Plugin, SdkError};

mod park;
mod plain;
mod read_buffer;
#[cfg(test)]
mod tests;
mod tls;
mod writer;

/// The plugin.
pub struct Tcp {
    broker: Broker,
}

/// The root module, for linking the plugin into a host.
pub fn module() -> ModuleRef {
    mist_sdk::module::<Tcp>()
}

#[async_trait]
impl Plugin for Tcp {
    const NAME: &'static str = "tcp";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const LISTENERS: &'static [&'static str] = &["tcp", "tls"];

    fn init(host: Host) -> Result<Self, SdkError> {
        Ok(Tcp {
            broker: host.broker().clone(),
        })
    }

    fn start_listener(&self, uri: &str) -> Result<Box<dyn Listener>, SdkError> {
        let broker = self.broker.clone();
        if uri.starts_with("tls://") {
            return tls::start(uri, broker);
        }
        let (listener, _) = plain::start(uri, broker)?;
        Ok(Box::new(listener))
    }
}
