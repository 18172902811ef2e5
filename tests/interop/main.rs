//! Interop against real SMTP servers on loopback: Postfix's smtpd and
//! Python's aiosmtpd, installed and started by `.ci/interop/` (see its
//! README). The servers announce themselves through the environment that
//! `start.sh` writes (`RELAYMAIL_INTEROP=1`, ports, CA file, logs).
//!
//! Without that environment the tests report that they were skipped — except
//! under `CI=true`, where a missing interop environment is a failure: CI must
//! never pass without having talked to the real servers.

mod aiosmtpd;
#[cfg(feature = "dkim")]
mod dkim;
#[cfg(feature = "dkim")]
#[path = "../support/dkim_verify.rs"]
mod dkim_support;
mod postfix;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use relaymail::{Envelope, SmtpSettings, SmtpSettingsBuilder, TlsMode};

/// The interop environment, or `None` (test skipped) outside CI.
pub(crate) struct Interop {
    ca: Vec<u8>,
    postfix_port: u16,
    postfix_smtps_port: u16,
    aiosmtpd_starttls_port: u16,
    aiosmtpd_smtps_port: u16,
    aiosmtpd_plain_port: u16,
    user: String,
    password: String,
    aiosmtpd_log: PathBuf,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set although RELAYMAIL_INTEROP=1"))
}

fn port(name: &str) -> u16 {
    var(name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a port"))
}

impl Interop {
    pub(crate) fn get(test: &str) -> Option<Interop> {
        if std::env::var("RELAYMAIL_INTEROP").as_deref() != Ok("1") {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the interop servers are not running (source the env written by .ci/interop/start.sh)"
            );
            eprintln!("{test}: skipped (RELAYMAIL_INTEROP is not set; see .ci/interop/README.md)");
            return None;
        }
        let ca_path = var("RELAYMAIL_INTEROP_CA");
        Some(Interop {
            ca: std::fs::read(&ca_path).unwrap_or_else(|e| panic!("{ca_path}: {e}")),
            postfix_port: port("RELAYMAIL_POSTFIX_PORT"),
            postfix_smtps_port: port("RELAYMAIL_POSTFIX_SMTPS_PORT"),
            aiosmtpd_starttls_port: port("RELAYMAIL_AIOSMTPD_STARTTLS_PORT"),
            aiosmtpd_smtps_port: port("RELAYMAIL_AIOSMTPD_SMTPS_PORT"),
            aiosmtpd_plain_port: port("RELAYMAIL_AIOSMTPD_PLAIN_PORT"),
            user: var("RELAYMAIL_AIOSMTPD_USER"),
            password: var("RELAYMAIL_AIOSMTPD_PASSWORD"),
            aiosmtpd_log: var("RELAYMAIL_AIOSMTPD_LOG").into(),
        })
    }

    /// Settings for a server on 127.0.0.1 whose certificate names
    /// `localhost` and `127.0.0.1`, trusting only the interop CA.
    pub(crate) fn settings(&self, port: u16, tls: TlsMode) -> SmtpSettingsBuilder {
        SmtpSettings::builder()
            .host("127.0.0.1")
            .port(u32::from(port))
            .tls(tls)
            .sender("alerts@example.com")
            .add_root_certificates_pem(&self.ca)
            .webpki_roots(false)
            .helo_name("client.example.com")
            .timeout(Duration::from_secs(10))
    }
}

/// A recipient address no other test uses, to find its message in a log.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}@example.net",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn envelope(to: &[&str]) -> Envelope {
    Envelope::new(
        Some("alerts@example.com".parse().expect("address")),
        to.iter().map(|r| r.parse().expect("address")).collect(),
    )
    .expect("envelope")
}

pub(crate) fn message(to: &str, body: &str) -> Vec<u8> {
    format!("From: alerts@example.com\r\nTo: {to}\r\nSubject: interop\r\n\r\n{body}").into_bytes()
}
