//! Fuzz target `v2_reader`: see `coffer_fuzz_harness::v2_reader`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_fuzz_harness::v2_reader(data));
