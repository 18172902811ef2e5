#![no_main]
//! Fuzz target: see `relaymail::fuzzing::smtp_url` for the invariants it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relaymail::fuzzing::smtp_url(data));
