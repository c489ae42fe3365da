//! The host's side of plugin logging: events a plugin library records with
//! `tracing` arrive here and go to the host's log, tagged with the plugin.

use std::panic::AssertUnwindSafe;
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
    /// A plugin calls this from its own threads. A panic here (in the
    /// subscriber an embedding program installed, say) would unwind into the
    /// plugin's `extern "C"` caller and abort the process: it is caught, and
    /// the event is lost.
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.record(level, target.as_str(), message.as_str())
        }));
    }
}

impl PluginLogger {
    fn record(&self, level: LogLevel, target: &str, message: &str) {
        let plugin = &*self.plugin;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// A subscriber that panics on every event, as a buggy one an
    /// embedding program installed might.
    struct Panicking;

    impl Subscriber for Panicking {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {
            panic!("the subscriber panics");
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn a_panicking_subscriber_does_not_unwind_into_the_plugin() {
        let logger = logger_for("test");
        // Through the boundary's `extern "C"` shim, as a plugin calls it:
        // an unwinding panic there aborts the test process.
        tracing::subscriber::with_default(Panicking, || {
            logger.log(LogLevel::ERROR, "a::b".into(), "hello".into());
        });
        logger.log(LogLevel::ERROR, "a::b".into(), "after".into());
    }
}
