//! The fuzz harness: entry points for the fuzz targets in `fuzz/` and for
//! the test that replays their corpus on stable (`tests/corpus.rs`). A
//! crate of its own so that the broker (`mist`) builds none of it and its
//! interface carries none of it: only the fuzz targets and the replay test
//! depend on this.
//!
//! ```
//! // One input of each target, as the replay test feeds them.
//! mist_fuzzing::line_protocol(b"\x00\x00{\"command\":\"ping\"}\n");
//! mist_fuzzing::http_publish_body(br#"{"tags":["a"],"data":"x"}"#);
//! mist_fuzzing::websocket_frames(b"");
//! mist_fuzzing::cluster_payload(b"\x01");
//! ```
//!
//! Each entry point takes the fuzzer's bytes, drives a real in-process
//! broker through the interface listeners use, and panics when an
//! invariant breaks, not only when something crashes: every output line is
//! one JSON object ending in `\n`, nothing hangs, a watching subscriber sees
//! only deliveries its subscriptions match, and everything queued is given
//! back once the sessions are gone. `docs/fuzzing.md` has the commands.
//!
//! # Layout
//!
//! - `line.rs`, `http.rs`, `ws.rs`: the three entry points over a session.
//! - `cluster.rs`: what a stranger on the backplane could publish, through a
//!   node's inbound checks (`mist::cluster::Inbound::check`).
//! - `client.rs`: a session driven by hand, its output drained and checked.
//! - `check.rs`: what every line and frame a client is sent must be.
//! - `fixtures.rs`: the token store and custom command a fuzzed broker has.

mod check;
mod client;
mod cluster;
mod fixtures;
mod http;
mod line;
mod ws;

pub use cluster::cluster_payload;
pub use http::http_publish_body;
pub use line::line_protocol;
pub use ws::websocket_frames;
