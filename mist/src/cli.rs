//! The command line: `mist --server`, the client commands and `mist bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::bench::BenchArgs;

/// A tagged publish/subscribe broker.
#[derive(Debug, Parser)]
#[command(name = "mist", version, disable_version_flag = true)]
pub struct Cli {
    /// Server options.
    #[command(flatten)]
    pub server: ServerArgs,

    /// A client command; without one, `mist --server` runs the broker.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Display the version.
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    version: Option<bool>,
}

/// The subcommands: a client of a running broker, or its load tool.
#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Client(ClientCommand),
    /// Load a running broker and measure it (see `mist bench --help`).
    Bench(BenchArgs),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of mist.
    Manpage,
}

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
    /// The broker: host:port for TCP, or a ws://host:port/ URL.
    #[arg(long, default_value = "127.0.0.1:1445")]
    pub host: String,

    /// A token to authenticate with.
    #[arg(long)]
    pub token: Option<String>,
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

    /// The server token: authenticating with it enters admin mode.
    #[arg(long)]
    pub token: Option<String>,

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

    /// Limits and timeouts.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What no client may exceed (docs/protocol.md, "Limits"). Sizes take a number of bytes or
/// a unit (`64KiB`, `1MiB`, `2GiB`); durations a unit (`500ms`, `10s`, `1m`).
#[derive(Debug, Default, Args)]
pub struct LimitArgs {
    /// Longest accepted line, WebSocket message or HTTP body [default: 1MiB].
    #[arg(long, value_parser = crate::config::parse_size, value_name = "SIZE")]
    pub max_message_bytes: Option<usize>,

    /// Bytes one client may have waiting (deliveries and replies) before its
    /// newest deliveries are dropped [default: 64MiB].
    #[arg(long, value_parser = crate::config::parse_size, value_name = "SIZE")]
    pub max_queue_bytes: Option<usize>,

    /// Bytes waiting for all clients together; over it the largest queues
    /// drop first [default: a quarter of the machine's memory].
    #[arg(long, value_parser = crate::config::parse_size, value_name = "SIZE")]
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
    #[arg(long, value_parser = crate::config::parse_duration, value_name = "DURATION")]
    pub slow_consumer_timeout: Option<Duration>,

    /// Close an HTTP connection whose request header has not arrived in time [default: 10s].
    #[arg(long, value_parser = crate::config::parse_duration, value_name = "DURATION")]
    pub header_timeout: Option<Duration>,

    /// Close a WebSocket or TLS handshake not finished in time [default: 10s].
    #[arg(long, value_parser = crate::config::parse_duration, value_name = "DURATION")]
    pub handshake_timeout: Option<Duration>,

    /// Answer an HTTP request the broker has not answered in time with 504,
    /// token check included [default: 30s].
    #[arg(long, value_parser = crate::config::parse_duration, value_name = "DURATION")]
    pub request_timeout: Option<Duration>,

    /// On SIGINT/SIGTERM, how long to go on writing what is queued [default: 5s].
    #[arg(long, value_parser = crate::config::parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Option<Duration>,
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "mist", out);
}

/// Writes the man page of `mist` (roff) to `out`.
pub fn write_manpage(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    clap_mangen::Man::new(Cli::command()).render(out)
}
