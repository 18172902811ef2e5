#![no_main]
//! Fuzz target: see `relaymail::fuzzing::message_parser` for the invariants it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relaymail::fuzzing::message_parser(data));
