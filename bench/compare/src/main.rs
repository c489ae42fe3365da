//! `mist-compare`: Mist beside the brokers people would pick instead.
//!
//! `mist-compare run` starts nats-server, redis-server, the raw relay and
//! (with `--mist-bin`) Mist on loopback ports, and drives each with the same
//! load driver and scenarios, one fresh driver process per run; it prints a
//! table of medians and ratios and keeps every run's JSON line. With
//! `--transport tls`, `ws` or `ws-lines` only Mist and nats-server run,
//! every client over TLS or WebSocket. `scripts/compare`
//! builds and runs it. The other subcommands are its parts: `load` runs one
//! scenario against one target, `relay` is the no-parse relay.

mod conn;
mod load;
mod proto;
mod relay;
mod run;
mod summary;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "mist-compare",
    about = "Mist beside nats-server, redis-server and a raw relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start every target and run every scenario against each.
    Run(run::RunArgs),
    /// Run one scenario against one target; print one JSON line.
    Load(load::LoadArgs),
    /// Serve as the raw relay on ADDR (host:port).
    Relay {
        /// Where to listen.
        addr: String,
    },
    /// Print the table of an earlier run's results.jsonl.
    Summary {
        /// The results.jsonl file.
        results: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Summary { results } => summary::print_file(&results),
        Command::Load(args) => runtime().and_then(|rt| rt.block_on(load::run(&args))),
        Command::Relay { addr } => runtime().and_then(|rt| rt.block_on(relay::run(&addr))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mist-compare: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Raises the open-files limit to at least `needed`, beyond the hard limit
/// when the process may (root); the targets `run` starts inherit it.
fn raise_fd_limit(needed: usize) -> anyhow::Result<()> {
    let got = fd_limit_toward(needed)?;
    if got >= needed {
        return Ok(());
    }
    anyhow::bail!(
        "{needed} open files are needed but the limit is {got} and could not be raised \
         (raise it with `ulimit -n`, as root beyond the hard limit)"
    )
}

/// Raises the open-files limit toward `needed` as far as it goes (to the
/// hard limit, or beyond it as root) and returns the soft limit it has now.
fn fd_limit_toward(needed: usize) -> anyhow::Result<usize> {
    use rlimit::Resource;
    let needed = needed as u64;
    let (soft, hard) = Resource::NOFILE.get()?;
    if soft >= needed {
        return Ok(usize::try_from(soft).unwrap_or(usize::MAX));
    }
    let got = if hard < needed && Resource::NOFILE.set(needed, needed).is_ok() {
        needed
    } else {
        Resource::NOFILE.set(hard, hard).map_or(soft, |()| hard)
    };
    Ok(usize::try_from(got).unwrap_or(usize::MAX))
}
