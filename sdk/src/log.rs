//! Forwards a plugin library's `tracing` events to the host's log.
//!
//! A `cdylib` has its own copy of `tracing`'s global dispatcher, which nobody
//! has set, so without this its events would vanish. A plugin linked into
//! the host (or into a plugin's own in-process test) shares the host's
//! `tracing`: its events already reach the host's subscriber, if any, and
//! the forwarder must stay out of the way. Were it installed there, it
//! would become the host's global subscriber, forwarding the host's own
//! events to the host's logger, which logs them through... the forwarder,
//! recursing until the stack overflows (an embedding program that installs
//! no subscriber hit exactly that). So it is installed only in a library
//! that [`crate::export_plugin!`] exported, which the host loaded from disk.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};

use abi_stable::std_types::RStr;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::abi::{LogLevel, LoggerBox};

/// Set in a library's copy of the sdk when the host builds the root module
/// [`crate::export_plugin!`] exported: this copy is the library's own, not
/// the host's.
static EXPORTED: AtomicBool = AtomicBool::new(false);

/// Marks this copy of the sdk as a loaded library's own.
pub(crate) fn exported() {
    EXPORTED.store(true, Ordering::Relaxed);
}

thread_local! {
    /// Set while this thread forwards an event to the host.
    static FORWARDING: Cell<bool> = const { Cell::new(false) };
}

/// Makes the host's logger this library's global `tracing` subscriber, if
/// this is a library the host loaded and no subscriber is set yet.
pub(crate) fn install(logger: LoggerBox, max_level: LogLevel) {
    if !EXPORTED.load(Ordering::Relaxed) {
        // Linked into the host: the host's `tracing` is ours already.
        return;
    }
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
        // An event raised while forwarding one (the host's logger logging
        // through this very subscriber) would recurse without end: it is
        // dropped. `export`-only installation keeps this from happening;
        // this keeps a mistake from overflowing the stack.
        if FORWARDING.with(|f| f.replace(true)) {
            return;
        }
        let _reset = Reset;
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

/// Clears [`FORWARDING`] when the forwarding call returns.
struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        FORWARDING.with(|f| f.set(false));
    }
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
