#![no_main]
//! Fuzz target: see `relaymail::fuzzing::draft` for the invariants it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relaymail::fuzzing::draft(data));
