//! The flags of the command line: the server's, and the client commands'
//! (the `mist` binary puts them together with `mist bench`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Ask the broker for a pong.
    Ping(Connection),
    /// Print each message whose tags include all of --tags, until interrupted.
    Subscribe(SubscribeArgs),
    /// Publish --data, or each line of stdin as one message.
    Publish(PublishArgs),
    /// Print this connection's subscriptions (always none: it is new).
    List(Connection),
    /// Print the broker's connection figures.
    Who(Connection),
}

/// Where a client command connects.
#[derive(Debug, Args)]
pub struct Connection {
    /// The broker: host:port or tcp://host:port, tls://host:port, or a
    /// ws://host:port/ or wss://host:port/ URL.
    #[arg(long, default_value = "127.0.0.1:1445")]
    pub host: String,

    /// A token to authenticate with.
    #[arg(long)]
    pub token: Option<String>,

    /// Trust the TLS certificates signed by a CA in this PEM file (or this
    /// self-signed certificate) instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// `mist subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    #[command(flatten)]
    pub connection: Connection,

    /// The tag set, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tags: Vec<String>,

    /// Print whole messages as JSON (`{"tags":[...],"data":"..."}`) instead
    /// of their data.
    #[arg(long)]
    pub json: bool,
}

/// `mist publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub connection: Connection,

    /// The message's tags, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tags: Vec<String>,

    /// The message; without it, each line of stdin is published.
    #[arg(long)]
    pub data: Option<String>,
}

/// Flags of `mist --server`; each overrides the same key of `--config`.
#[derive(Debug, Default, Args)]
pub struct ServerArgs {
    /// Run mist as a server.
    #[arg(long)]
    pub server: bool,

    /// Listeners to start, comma separated
    /// [default: tcp://127.0.0.1:1445,http://127.0.0.1:8080,ws://127.0.0.1:8888]
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub listeners: Vec<String>,

    /// Enables admin mode, storing tokens in this authenticator
    /// (memory://, scribble://?db=DIR, postgres://user:pass@host:port?db=NAME).
    #[arg(long)]
    pub authenticator: Option<String>,

    /// The server token: authenticating with it enters admin mode. Anyone
    /// who can list processes sees it: prefer --token-file or MIST_TOKEN.
    /// Taken first: --token or --token-file, then the MIST_TOKEN environment
    /// variable, then the config file.
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,

    /// A file holding the server token (its trailing newline is ignored).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// A configuration file (YAML or TOML) with the same keys as these flags.
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// The plugins file [default: ./plugins.toml when it exists].
    #[arg(long)]
    pub plugins: Option<PathBuf>,

    /// TRACE, DEBUG, INFO, WARN, ERROR or FATAL [default: INFO].
    #[arg(long)]
    pub log_level: Option<String>,

    /// human, or json for one JSON object per line [default: human].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<crate::logging::LogFormat>,

    /// Also serve /metrics, /healthz and /readyz (only those) on this
    /// http:// address, e.g. http://127.0.0.1:9090.
    #[arg(long, value_name = "URI")]
    pub metrics_listener: Option<String>,

    /// Join the cluster whose nodes share this backplane: redis://host:port
    /// or nats://host:port (or a plugin's scheme), with ?prefix=NAME to keep
    /// several clusters on one backplane apart. See docs/cluster.md.
    #[arg(long, value_name = "URI")]
    pub cluster: Option<String>,

    /// Sign and check every cluster payload with the key in this file (one
    /// line of at least 32 bytes, e.g. `openssl rand -hex 32`; a second
    /// line during a rotation). Without it, anyone who can publish on the
    /// backplane can inject deliveries. Re-read on SIGHUP. See
    /// docs/cluster.md.
    #[arg(long, value_name = "PATH")]
    pub cluster_key_file: Option<std::path::PathBuf>,

    /// Limits and timeouts.
    #[command(flatten)]
    pub limits: LimitArgs,

    /// Certificates for TLS listeners.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Certificates for every `tls://`, `wss://` and `https://` listener that
/// does not name its own (`?cert=FILE&key=FILE` in its URI).
#[derive(Debug, Default, Args)]
pub struct TlsArgs {
    /// The certificate chain, PEM (leaf first).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The certificate's private key, PEM.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Without --tls-cert: generate a self-signed certificate at start for
    /// localhost, 127.0.0.1 and the listener's host, and log its fingerprint.
    #[arg(long)]
    pub tls_self_signed: bool,

    /// Require TLS clients to present a certificate signed by a CA in this
    /// PEM file.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
}

/// What no client may exceed (docs/protocol.md, "Limits"). Sizes take a number of bytes or
/// a unit (`64KiB`, `1MiB`, `2GiB`); durations a unit (`500ms`, `10s`, `1m`).
#[derive(Debug, Default, Args)]
pub struct LimitArgs {
    /// Longest accepted line, WebSocket message or HTTP body [default: 1MiB].
    #[arg(long, value_parser = crate::units::parse_size, value_name = "SIZE")]
    pub max_message_bytes: Option<usize>,

    /// Bytes one client may have waiting (deliveries and replies) before its
    /// newest deliveries are dropped [default: 64MiB].
    #[arg(long, value_parser = crate::units::parse_size, value_name = "SIZE")]
    pub max_queue_bytes: Option<usize>,

    /// Bytes waiting for all clients together; over it the largest queues
    /// drop first [default: a quarter of the machine's memory].
    #[arg(long, value_parser = crate::units::parse_size, value_name = "SIZE")]
    pub max_memory: Option<usize>,

    /// Tags in one message or one subscription [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_tags: Option<usize>,

    /// Subscriptions one connection may hold [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_subscriptions: Option<usize>,

    /// Client connections over all listeners [default: 200000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Disconnect a subscriber whose queue has been full this long [default: 30s].
    #[arg(long, value_parser = crate::units::parse_duration, value_name = "DURATION")]
    pub slow_consumer_timeout: Option<Duration>,

    /// Close an HTTP connection whose request header has not arrived in time [default: 10s].
    #[arg(long, value_parser = crate::units::parse_duration, value_name = "DURATION")]
    pub header_timeout: Option<Duration>,

    /// Close a WebSocket or TLS handshake not finished in time [default: 10s].
    #[arg(long, value_parser = crate::units::parse_duration, value_name = "DURATION")]
    pub handshake_timeout: Option<Duration>,

    /// Answer an HTTP request the broker has not answered in time with 504,
    /// token check included [default: 30s].
    #[arg(long, value_parser = crate::units::parse_duration, value_name = "DURATION")]
    pub request_timeout: Option<Duration>,

    /// On SIGINT/SIGTERM, how long to go on writing what is queued [default: 5s].
    #[arg(long, value_parser = crate::units::parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Option<Duration>,
}
