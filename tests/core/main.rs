//! Integration tests of the protocol core: scripted in-memory sessions, the
//! fuzz corpus replay and the sans-IO guarantee. No sockets, no sleeps.

mod fuzz_corpus;
mod sans_io;
mod session;
mod session_error;
