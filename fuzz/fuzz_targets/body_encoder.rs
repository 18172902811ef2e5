#![no_main]
//! Fuzz target: see `relaymail::fuzzing::body_encoder` for the invariants it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relaymail::fuzzing::body_encoder(data));
