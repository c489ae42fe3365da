//! `mist bench`: a load tool for a running broker, as `nats bench` and
//! `redis-benchmark` are for theirs.
//!
//! Every scenario opens real TCP connections to `--host`, subscribes, waits
//! for each subscription to be live (a `ping` after the `subscribe`), then
//! publishes and counts what arrives. Each payload starts with `~t<ns>~`,
//! the send time since the start of the run, so a subscriber can tell each
//! message's latency; the clock is the bench process's own, so no clocks
//! need agreeing.
//!
//! The end of a run is a barrier, not a timeout: once a publisher's final
//! `ping` is answered, the broker has queued every delivery of its messages;
//! a `ping` sent then on each subscriber's connection is answered after all
//! of them, so a subscriber that sees its `pong` has received everything it
//! ever will (the rest was dropped by the broker for being too slow).

mod conn;
mod load;
mod report;

use std::time::Duration;

use clap::{Args, ValueEnum};

pub use report::Report;

/// Flags of `mist bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// The broker's TCP listener (host:port), or its TLS listener
    /// (tls://host:port).
    #[arg(long, default_value = "127.0.0.1:1445")]
    pub host: String,

    /// Over TLS: trust the certificates in this PEM file instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,

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

    /// Stop publishing after this many seconds, whatever `--messages` says.
    #[arg(long, value_parser = parse_seconds, default_value = "60")]
    pub duration: Duration,

    /// The broker's process id: `conns` then reports its memory per connection.
    #[arg(long)]
    pub server_pid: Option<u32>,

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
pub enum BenchError {
    #[error("cannot connect to {host}: {source}")]
    Connect {
        host: String,
        source: std::io::Error,
    },
    #[error("connection to the broker failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker refused {command}: {error}")]
    Refused { command: String, error: String },
    #[error("the broker closed the connection")]
    Closed,
    #[error("no reply from the broker within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Usage(String),
}

/// Runs the scenario against the broker and returns its figures.
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
    raise_fd_limit();
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

/// Thousands of connections need more descriptors than a shell's default.
fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!("cannot raise the open-files limit: {e}");
    }
}
