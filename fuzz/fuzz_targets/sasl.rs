#![no_main]
//! Fuzz target: see `relaymail::fuzzing::sasl` for the invariants it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relaymail::fuzzing::sasl(data));
