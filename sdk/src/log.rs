//! Forwards a plugin library's `tracing` events to the host's log.
//!
//! A `cdylib` has its own copy of `tracing`'s global dispatcher, which nobody
//! has set, so without this its events would vanish. When the plugin is
//! linked into the host, the host's subscriber is already the global default
//! and installing fails harmlessly: events go straight to the host.

use std::fmt::{self, Write as _};

use abi_stable::std_types::RStr;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::abi::{LogLevel, LoggerBox};

/// Makes the host's logger this library's global `tracing` subscriber, if
/// none is set yet.
pub(crate) fn install(logger: LoggerBox, max_level: LogLevel) {
    let max = match max_level {
        LogLevel::ERROR => Level::ERROR,
        LogLevel::WARN => Level::WARN,
        LogLevel::INFO => Level::INFO,
        LogLevel::DEBUG => Level::DEBUG,
        _ => Level::TRACE,
    };
    // Err means a subscriber exists already (linked into the host): keep it.
    let _ = tracing::subscriber::set_global_default(Forward { logger, max });
}

struct Forward {
    logger: LoggerBox,
    max: Level,
}

impl Subscriber for Forward {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from_level(self.max))
    }

    // Spans are not forwarded: the host sees events only.
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let level = match *meta.level() {
            Level::ERROR => LogLevel::ERROR,
            Level::WARN => LogLevel::WARN,
            Level::INFO => LogLevel::INFO,
            Level::DEBUG => LogLevel::DEBUG,
            _ => LogLevel::TRACE,
        };
        let mut text = Text(String::new());
        event.record(&mut text);
        self.logger.log(
            level,
            RStr::from_str(meta.target()),
            RStr::from_str(&text.0),
        );
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Renders an event as `message key=value ...`.
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}
