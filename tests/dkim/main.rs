//! DKIM signing (feature `dkim`), checked by verifiers that are not
//! relaymail's: Stalwart's mail-auth (in process) and Python's dkimpy (a
//! child process), each given the public key by the test, never by DNS.
//! Then every way a message leaves relaymail: the mailer's send paths, the
//! outbox, the diagnose test email and a bare connection.

#![cfg(feature = "dkim")]

mod dkimpy;
mod paths;
#[path = "../support/dkim_verify.rs"]
mod support;
mod verify;

use std::time::Duration;

use relaymail::dkim::{Canonicalization, DkimConfig, DkimSigner};
use relaymail::SmtpSettings;

pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) const RSA: &str = include_str!("keys/rsa2048.pem");
pub(crate) const RSA_PKCS1: &str = include_str!("keys/rsa2048-pkcs1.pem");
pub(crate) const ED25519: &str = include_str!("keys/ed25519.pem");
pub(crate) const ED25519_OTHER: &str = include_str!("keys/ed25519-other.pem");

/// Every key form and canonicalization, named for messages.
pub(crate) fn matrix() -> Vec<(String, DkimConfig)> {
    use Canonicalization::{Relaxed, Simple};
    let mut out = Vec::new();
    for (key_name, key) in [
        ("rsa2048", RSA),
        ("rsa2048-pkcs1", RSA_PKCS1),
        ("ed25519", ED25519),
    ] {
        for (h, b) in [
            (Relaxed, Relaxed),
            (Simple, Simple),
            (Relaxed, Simple),
            (Simple, Relaxed),
        ] {
            out.push((
                format!("{key_name}-{h}-{b}"),
                DkimConfig::new("example.com", "mail2024", key).canonicalization(h, b),
            ));
        }
    }
    out
}

/// The signer a configuration gives, through the settings builder.
pub(crate) fn signer(config: DkimConfig) -> DkimSigner {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .sender("alerts@example.com")
        .dkim(config)
        .build()
        .expect("settings")
        .dkim()
        .expect("signing")
        .clone()
}

/// A message with what relays and verifiers trip on: folded and
/// oddly-spaced header fields, a field twice, a field not signed, trailing
/// white space, empty lines at the end, a line starting with a dot, 8-bit
/// text and bare LF line endings.
pub(crate) fn awkward_message() -> Vec<u8> {
    let mut m = String::new();
    m.push_str("From: \"Alerts\" <alerts@example.com>\r\n");
    m.push_str("To: ops@example.net,\r\n  oncall@example.net\r\n");
    m.push_str("Cc: audit@example.net\r\n");
    m.push_str("Subject:   Disk   full on\t db-1 \r\n");
    m.push_str("Date: Tue, 1 Apr 2025 10:00:00 +0000\r\n");
    m.push_str("Message-ID: <awkward.1@example.com>\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    m.push_str("Content-Transfer-Encoding: 8bit\r\n");
    m.push_str("X-Mailer-Note: not in the signed list\r\n");
    m.push_str("Comments: first\r\nComments: second\r\n");
    m.push_str("\r\n");
    m.push_str("/var is at 99%   \r\n");
    m.push_str(".a line starting with a dot\r\n");
    m.push_str("Grüße, \t the disk\n");
    m.push_str("bare LF above\r\n\r\n\r\n");
    m.into_bytes()
}
