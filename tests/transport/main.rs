//! Integration tests of one connection end to end against the in-process
//! test server (feature `test-server`): TLS modes, certificates, AUTH,
//! pipelining, BDAT, SIZE, recipients, timeouts, injection.
#![cfg(feature = "test-server")]

mod auth;
mod client_cert;
mod delivery;
mod messages;
mod proxy;
mod route;
mod support;
mod timeouts;
mod tls;
