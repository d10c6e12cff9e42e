//! Fuzz target `path_normalise`: see `coffer_fuzz_harness::path_normalise`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_fuzz_harness::path_normalise(data));
