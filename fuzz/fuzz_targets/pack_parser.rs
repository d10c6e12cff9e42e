//! Fuzz target `pack_parser`: see `coffer_fuzz_harness::pack_parser`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_fuzz_harness::pack_parser(data));
