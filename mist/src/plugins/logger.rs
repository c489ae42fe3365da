//! The host's side of plugin logging: events a plugin library records with
//! `tracing` arrive here and go to the host's log, tagged with the plugin.

use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RStr};
use mist_sdk::abi::{LoggerApi, LoggerApi_TO, LoggerBox};
use mist_sdk::LogLevel;

#[derive(Clone)]
struct PluginLogger {
    plugin: Arc<str>,
}

pub(crate) fn logger_for(plugin: &str) -> LoggerBox {
    LoggerApi_TO::from_ptr(
        RArc::new(PluginLogger {
            plugin: plugin.into(),
        }),
        TD_Opaque,
    )
}

impl LoggerApi for PluginLogger {
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        let (plugin, target, message) = (&*self.plugin, target.as_str(), message.as_str());
        match level {
            LogLevel::ERROR => {
                tracing::error!(target: "mist::plugin", plugin, module = target, "{message}")
            }
            LogLevel::WARN => {
                tracing::warn!(target: "mist::plugin", plugin, module = target, "{message}")
            }
            LogLevel::INFO => {
                tracing::info!(target: "mist::plugin", plugin, module = target, "{message}")
            }
            LogLevel::DEBUG => {
                tracing::debug!(target: "mist::plugin", plugin, module = target, "{message}")
            }
            _ => tracing::trace!(target: "mist::plugin", plugin, module = target, "{message}"),
        }
    }
}

/// The most verbose level the host's subscriber will print.
pub(crate) fn max_level() -> LogLevel {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF | LevelFilter::ERROR => LogLevel::ERROR,
        LevelFilter::WARN => LogLevel::WARN,
        LevelFilter::INFO => LogLevel::INFO,
        LevelFilter::DEBUG => LogLevel::DEBUG,
        _ => LogLevel::TRACE,
    }
}
