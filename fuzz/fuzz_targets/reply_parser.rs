#![no_main]
//! Fuzz target: see `relaymail::fuzzing::reply_parser` for the invariants it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relaymail::fuzzing::reply_parser(data));
