#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mist_fuzzing::http_publish_body(data));
