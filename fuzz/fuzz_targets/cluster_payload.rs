#![no_main]

// The harness is shared with the corpus replay test on stable
// (`mist/tests/cluster_payload_corpus.rs`).
#[path = "../harness/cluster_payload.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::cluster_payload(data));
