//! The load generator behind `mist bench`: a load tool for running Mist
//! brokers, as `nats bench` and `redis-benchmark` are for theirs.
//!
//! Every scenario opens real connections (TCP, or WebSocket with
//! `--websocket`) to the `--host` brokers, subscribes, waits for each
//! subscription to be live (a `ping` after the `subscribe`), then publishes
//! and counts what arrives. Each payload starts with `~t<ns>~`, the send
//! time in nanoseconds since the Unix epoch, so a subscriber can tell each
//! message's latency. The stamp is the wall clock read once at the start of
//! the run plus the monotonic time since: within a run it never goes back
//! (a stepped wall clock changes no latency), and the bench processes of
//! one machine read the same clock, so one of them can time a message
//! another sent (`conns --hold`, below). Across machines the clocks would
//! have to agree.
//!
//! `conns --hold` is for more connections than one process may open: it
//! opens and subscribes its `--subscribers`, says `ready K` on stderr (and
//! in `--ready-file`), publishes nothing, and waits until each connection
//! has had one delivery or `--duration` has passed. Several such processes
//! hold the connections; `mist bench conns --subscribers 0` then publishes
//! the one message, and each holder reports its arrivals, timed from the
//! message's send stamp, with the whole latency distribution in its JSON
//! for merging (`bench/scale-out.sh` does all of this).
//!
//! The end of a run is a barrier, not a timeout: once a publisher's final
//! `ping` is answered, the broker has queued every delivery of its messages;
//! a `ping` sent then on each subscriber's connection is answered after all
//! of them, so a subscriber that sees its `pong` has received everything it
//! ever will (the rest was dropped by the broker for being too slow). With
//! several `--host` values of one cluster, a message reaching another node
//! through the backplane may still be on its way at that point: such runs
//! count what arrived by then.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mist_bench::BenchError> {
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     bench: mist_bench::BenchArgs,
//! }
//! let cli = Cli::parse_from(["bench", "fanout", "--subscribers", "10", "-n", "1000"]);
//! let report = mist_bench::run(&cli.bench).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `net.rs`: where connections go and come from (hosts, source
//!   addresses, the open-files limit).
//! - `conn.rs`: one connection's lines in and out, over TCP or WebSocket.
//! - `ws.rs`: the WebSocket wire, client side (handshake, frames).
//! - `load.rs`: publishers, subscribers and the run that ties them together.
//! - `report.rs`: what a run measured, as text or JSON.

mod conn;
mod load;
mod net;
mod report;
mod sse;
mod ws;

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

pub use report::{Latency, Memory, Report};

/// Flags of `mist bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// The brokers, comma separated: `host:port`, or a `ws://host:port/path`
    /// URL for WebSocket. Subscribers and publishers are spread over them
    /// in turn (subscriber i and publisher i on host i mod the count).
    /// With several, each subscriber reads on after the publishers are done
    /// until it has had no delivery for 2 s (what crosses a cluster's
    /// backplane can arrive after the subscriber's own node answered).
    #[arg(
        long = "host",
        value_name = "HOST",
        value_delimiter = ',',
        num_args = 1..,
        default_value = "127.0.0.1:1445"
    )]
    pub hosts: Vec<String>,

    /// Connect over WebSocket: each `host:port` is then a `ws://` listener.
    #[arg(long)]
    pub websocket: bool,

    /// `conns` only: open Server-Sent-Events streams (`GET
    /// /subscribe?tags=bench`) on an HTTP listener (`host:port` or
    /// `http://host:port`) instead of line-protocol connections.
    #[arg(long)]
    pub sse: bool,

    /// Over TLS (`tls://host:port` hosts): trust the certificates in this
    /// PEM file instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,

    /// Local addresses to open connections from, comma separated (say
    /// `127.0.0.2,127.0.0.3`), used in turn: each gets its own range of
    /// ephemeral ports, so more connections fit than one address allows.
    #[arg(long, value_name = "ADDR", value_delimiter = ',', num_args = 1..)]
    pub source_addrs: Vec<IpAddr>,

    /// A token to `auth` with on every connection.
    #[arg(long)]
    pub token: Option<String>,

    /// Messages each publisher sends.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    pub messages: u64,

    /// Payload size in bytes (at least 24: the send time travels in it).
    #[arg(long, default_value_t = 128)]
    pub size: usize,

    /// Publishers (pubsub only; the other scenarios have one).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,

    /// Subscribers, or idle connections for `conns`
    /// [default: pubsub 1, fanout 100, routing 100, conns 1000].
    #[arg(long)]
    pub subscribers: Option<usize>,

    /// Messages per second per publisher; 0 publishes as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,

    /// Stop publishing after this many seconds, whatever `--messages` says;
    /// with `--hold`, stop waiting for the message this long after ready.
    #[arg(long, value_parser = parse_seconds, default_value = "60")]
    pub duration: Duration,

    /// `conns` only: hold the subscribed connections for a message another
    /// process publishes (`mist bench conns --subscribers 0`): say `ready
    /// K` on stderr once all are subscribed, publish nothing, and wait
    /// until each has had one delivery or `--duration` has passed.
    #[arg(long)]
    pub hold: bool,

    /// With `--hold`: also create this file, saying `ready K`, once every
    /// connection is subscribed.
    #[arg(long, value_name = "PATH", requires = "hold")]
    pub ready_file: Option<std::path::PathBuf>,

    /// The brokers' process ids, comma separated: the report then gives
    /// their memory growth (summed) per subscribed connection.
    #[arg(long, value_name = "PID", value_delimiter = ',', num_args = 1..)]
    pub server_pid: Vec<u32>,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The load shapes `mist bench` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// P publishers and S subscribers on one tag set.
    Pubsub,
    /// One publisher, N subscribers on one tag set.
    Fanout,
    /// N subscribers on distinct tag sets `[room:i, app]`; each message,
    /// tagged `[room:i, app, extra]`, matches exactly one of them.
    Routing,
    /// K idle subscribed connections, then one message to all of them.
    Conns,
}

impl Scenario {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Pubsub => "pubsub",
            Scenario::Fanout => "fanout",
            Scenario::Routing => "routing",
            Scenario::Conns => "conns",
        }
    }
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Dialling a broker failed.
    #[error("cannot connect to {host}{}: {source}", from.map(|a| format!(" from {a}")).unwrap_or_default())]
    Connect {
        host: String,
        from: Option<IpAddr>,
        source: std::io::Error,
    },
    /// The WebSocket handshake or a frame failed.
    #[error("WebSocket connection to {host} failed: {reason}")]
    WebSocket { host: String, reason: String },
    /// Reading or writing an open connection failed.
    #[error("connection to the broker failed: {0}")]
    Io(#[from] std::io::Error),
    /// The broker answered a command with an error (with no command: it
    /// refused the connection, as a full broker does).
    #[error(
        "the broker refused {}: {error}",
        if command.is_empty() { "the connection" } else { command.as_str() }
    )]
    Refused { command: String, error: String },
    /// The broker closed a connection the bench still needed.
    #[error("the broker closed the connection")]
    Closed,
    /// A reply did not come in time.
    #[error("no reply from the broker within {0:?}")]
    Timeout(Duration),
    /// The open-files limit is below what the run needs and cannot be raised.
    #[error("{needed} connections need about {needed} open files, but the limit is {limit} and raising it failed: {reason} (raise it with `ulimit -n`, as root beyond the hard limit)")]
    FileLimit {
        needed: u64,
        limit: u64,
        reason: String,
    },
    /// Flags that cannot work together.
    #[error("{0}")]
    Usage(String),
}

/// Runs the scenario against the brokers and returns its figures.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    if args.size < load::STAMP_LEN {
        return Err(BenchError::Usage(format!(
            "--size must be at least {} bytes: the send time travels in the payload",
            load::STAMP_LEN
        )));
    }
    if args.publishers == 0 {
        return Err(BenchError::Usage("--publishers must be at least 1".into()));
    }
    if args.hold && args.scenario != Scenario::Conns {
        return Err(BenchError::Usage(
            "--hold holds idle connections: use it with `conns`".into(),
        ));
    }
    if args.sse {
        if args.hold {
            return Err(BenchError::Usage(
                "--hold speaks the line protocol (or WebSocket), not --sse".into(),
            ));
        }
        return sse::run(args).await;
    }
    load::run(args).await
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("not a number of seconds: {text}"))?;
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err("must be a positive number of seconds".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}
