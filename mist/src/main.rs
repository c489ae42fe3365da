mod client;

use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, Parser, Subcommand};
use mist::cli::{ClientCommand, ServerArgs};
use mist::config::ServerConfig;

/// A tagged publish/subscribe broker.
#[derive(Debug, Parser)]
#[command(name = "mist", version, disable_version_flag = true)]
struct Cli {
    /// Server options.
    #[command(flatten)]
    server: ServerArgs,

    /// A client command; without one, `mist --server` runs the broker.
    #[command(subcommand)]
    command: Option<Command>,

    /// Display the version.
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    version: Option<bool>,
}

/// The subcommands: a client of a running broker, or its load tool.
#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Client(ClientCommand),
    /// Load running brokers and measure them (see `mist bench --help`).
    Bench(mist_bench::BenchArgs),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of mist.
    Manpage,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return client_command(command);
    }
    let config = match ServerConfig::resolve(&cli.server) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    if !config.server {
        eprintln!("mist: nothing to do: start a server with --server (see mist --help)");
        return ExitCode::from(2);
    }
    mist::logging::init(config.log_level, config.log_format);
    // The sdk's runtime: plugins linked into the binary run on it too.
    let result = mist_sdk::runtime().block_on(async {
        let shutdown = shutdown_signal();
        mist::server::run(&config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn client_command(command: Command) -> ExitCode {
    match command {
        Command::Bench(args) => match block_on(mist_bench::run(&args)) {
            Ok(Ok(report)) if args.json => {
                println!("{}", report.to_json());
                ExitCode::SUCCESS
            }
            Ok(Ok(report)) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => fail(&e),
            Err(e) => fail(&e),
        },
        Command::Client(command) => match block_on(client::run(command)) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => fail(&e),
            Err(e) => fail(&e),
        },
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "mist", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Manpage => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

/// Runs `future` on a runtime of its own (the client commands need one).
fn block_on<F: std::future::Future>(future: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}

fn fail(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("mist: {error}");
    ExitCode::FAILURE
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a signal that arrives while the server
/// is still starting must end it gracefully, not by the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
