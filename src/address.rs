//! Email addresses: parsing under an [`AddressPolicy`], and the forms they
//! take in SMTP commands and in headers.
//!
//! The types live in the sans-IO core ([`crate::proto::address`]), so that
//! the SMTP envelope can carry them; they are re-exported here. An
//! [`Address`] can only be made by parsing, so a value of that type is
//! always valid; [`AddressError`] says why an input was refused and
//! converts into a [config](crate::Error::is_config) [`crate::Error`].
//!
//! An [`Address`] keeps the local part as meant (quotes removed, escapes
//! resolved) and the domain as given. [`Address::to_smtp`] writes it back
//! safely: a local part that is not a plain dot-string is quoted, so that a
//! quoted local part stays one argument and can never add ESMTP parameters
//! (the go-mail CVE-2025-59937 class); internationalised domains are written
//! as IDNA A-labels unless the local part itself needs SMTPUTF8.

pub use crate::proto::address::{Address, AddressError, AddressPolicy, Mailbox};
