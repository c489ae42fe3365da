#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mist_fuzzing::cluster_payload(data));
