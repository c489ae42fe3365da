//! `mist-compare`: Mist beside the brokers people would pick instead.
//!
//! `mist-compare run` starts nats-server, redis-server, the raw relay and
//! (with `--mist-bin`) Mist on loopback ports, and drives each with the same
//! load driver and scenarios, one fresh driver process per run; it prints a
//! table of medians and ratios and keeps every run's JSON line. `scripts/compare`
//! builds and runs it. The other subcommands are its parts: `load` runs one
//! scenario against one target, `relay` is the no-parse relay.

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
    use rlimit::Resource;
    let needed = needed as u64;
    let (soft, hard) = Resource::NOFILE.get()?;
    if soft >= needed {
        return Ok(());
    }
    let result = if hard >= needed {
        Resource::NOFILE.set(hard, hard)
    } else {
        Resource::NOFILE.set(needed, needed)
    };
    result.map_err(|e| {
        anyhow::anyhow!(
            "{needed} open files are needed but the limit is {soft} and raising it failed: {e} \
             (raise it with `ulimit -n`, as root beyond the hard limit)"
        )
    })
}
