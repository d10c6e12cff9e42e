//! Fuzz target `proto_validation`: see `coffer_fuzz_harness::proto_validation`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_fuzz_harness::proto_validation(data));
