//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through
//! the same entry point its fuzz target calls, on stable, in the normal test
//! run: what the fuzzers once found stays fixed, and the invariants the
//! targets check hold for every input they kept. `docs/fuzzing.md` tells
//! how the corpus is grown.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Once;

thread_local! {
    /// Panics on this thread, caught or not: the broker catches a panic at
    /// its plugin boundary (and only logs it), which must still fail here,
    /// as it aborts under the fuzzer.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            default(info);
        }));
    });
}

/// Files committed for `target`, in a stable order.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8]), at_least: usize) {
    count_panics();
    let files = corpus(target);
    assert!(
        files.len() >= at_least,
        "fuzz/corpus/{target} holds {} files, expected at least {at_least}",
        files.len()
    );
    for file in &files {
        let input = std::fs::read(file).expect("a corpus file");
        let before = PANICS.with(Cell::get);
        let outcome = std::panic::catch_unwind(|| run(&input));
        let panics = PANICS.with(Cell::get) - before;
        assert!(
            outcome.is_ok() && panics == 0,
            "{target} fails on {} ({panics} panic(s))",
            file.display()
        );
    }
}

#[test]
fn line_protocol_corpus() {
    replay("line_protocol", mist_fuzzing::line_protocol, 50);
}

#[test]
fn http_publish_body_corpus() {
    replay("http_publish_body", mist_fuzzing::http_publish_body, 30);
}

#[test]
fn websocket_frames_corpus() {
    replay("websocket_frames", mist_fuzzing::websocket_frames, 20);
}

#[test]
fn cluster_payload_corpus() {
    replay("cluster_payload", mist_fuzzing::cluster_payload, 8);
}
