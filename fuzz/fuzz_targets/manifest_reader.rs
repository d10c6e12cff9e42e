//! Fuzz target `manifest_reader`: see `coffer_fuzz_harness::manifest_reader`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_fuzz_harness::manifest_reader(data));
