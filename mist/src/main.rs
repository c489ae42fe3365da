use std::process::ExitCode;

use clap::Parser;
use mist::cli::{Cli, Command};
use mist::config::ServerConfig;

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
    let result = mist_sdk::runtime().block_on(mist::server::run(&config, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn client_command(command: Command) -> ExitCode {
    match command {
        Command::Bench(args) => match block_on(mist::bench::run(&args)) {
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
        Command::Client(command) => match block_on(mist::client::run(command)) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => fail(&e),
            Err(e) => fail(&e),
        },
        Command::Completions { shell } => {
            mist::cli::write_completions(shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Manpage => match mist::cli::write_manpage(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
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

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
