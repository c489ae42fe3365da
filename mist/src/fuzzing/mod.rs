//! Entry points for the fuzz targets in `fuzz/` and for the test that
//! replays their corpus on stable (`mist/tests/fuzz_corpus.rs`). Not part of
//! the crate's interface: hidden from its documentation and free to change.
//!
//! Each entry point takes the fuzzer's bytes, drives a real in-process
//! broker through the interface listeners use, and panics when an
//! invariant breaks, not only when something crashes: every output line is
//! one JSON object ending in `\n`, nothing hangs, a watching subscriber sees
//! only deliveries its subscriptions match, and everything queued is given
//! back once the sessions are gone. `docs/fuzzing.md` has the commands.

mod check;
mod client;
mod fixtures;
mod http;
mod line;
mod ws;

pub use http::http_publish_body;
pub use line::line_protocol;
pub use ws::websocket_frames;
