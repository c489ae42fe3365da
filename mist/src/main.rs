use std::process::ExitCode;

use clap::Parser;
use mist::cli::Cli;
use mist::config::ServerConfig;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match ServerConfig::resolve(&cli.server) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    if !config.server {
        eprintln!("mist: nothing to do: start a server with --server (see mist --help)");
        return ExitCode::from(2);
    }
    mist::logging::init(config.log_level);
    // The sdk's runtime: plugins linked into the binary run on it too.
    let result = mist_sdk::runtime().block_on(mist::server::run(&config, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
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
