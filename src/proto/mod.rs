//! The sans-IO SMTP protocol core.
//!
//! Nothing in this module performs IO, spawns tasks or reads a clock: bytes go
//! in, bytes and events come out. It is what the transport drives, what the
//! table and property tests exercise without sockets, and what the fuzz
//! targets attack. Applications normally use the higher layers; the core is
//! public for those who want to drive SMTP over their own IO.
//!
//! | module | what it does |
//! |---|---|
//! | [`grammar`] | the address and domain grammar, written once for every layer |
//! | [`address`] | validated [`Address`](address::Address)es, parsed under an [`AddressPolicy`](address::AddressPolicy) |
//! | [`reply`] | incremental reply parser (RFC 5321 §4.2), enhanced status codes |
//! | [`ehlo`] | EHLO capabilities |
//! | [`command`] | command encoder that refuses unsafe arguments |
//! | [`data`] | DATA dot-stuffing and BDAT chunking with CRLF normalisation |
//! | [`auth`] | SASL client mechanisms (SCRAM-SHA-256, CRAM-MD5, PLAIN, LOGIN, OAUTHBEARER, XOAUTH2) |
//! | [`session`] | the session state machine from greeting to QUIT |
//! | [`SessionError`], [`Stage`] | what went wrong in a session, and where |
//!
//! Nothing here depends on the layers above: the core's errors are its own
//! ([`SessionError`], [`CommandError`](command::CommandError),
//! [`SaslError`](auth::SaslError) …), plain facts without advice; the
//! transport turns them into relaymail's `Error` and adds the hints for
//! administrators.

pub mod address;
pub mod auth;
pub mod command;
pub mod data;
pub mod ehlo;
mod error;
pub mod grammar;
pub mod reply;
pub mod session;
mod stage;

pub use error::{Misuse, SessionError, Violation};
pub use stage::Stage;
