//! Replays every committed corpus file of the `cluster_payload` fuzz target
//! (`fuzz/corpus/cluster_payload/`) through the target's own harness, on
//! stable, in the normal test run: what the fuzzer once found stays fixed,
//! and the harness's invariants hold for every input it kept
//! (docs/fuzzing.md).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../fuzz/harness/cluster_payload.rs"]
mod harness;

use std::path::Path;

#[test]
fn cluster_payload_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/cluster_payload");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "fuzz/corpus/cluster_payload holds {} files",
        files.len()
    );
    for file in &files {
        let input = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| harness::cluster_payload(&input));
        assert!(
            outcome.is_ok(),
            "cluster_payload fails on {}",
            file.display()
        );
    }
}
