//! Logs go to stderr, at the configured level.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;

/// Installs the process-wide subscriber. Plugins linked into the binary log
/// through it directly; plugin libraries forward to it.
pub fn init(level: LevelFilter) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
