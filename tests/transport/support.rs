//! Shared helpers.

use std::time::Duration;

use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Envelope, SmtpSettings, SmtpSettingsBuilder, TlsMode};

pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) async fn server(config: ServerConfig) -> TestServer {
    TestServer::start(config).await.expect("test server starts")
}

/// Settings pointing at the server, trusting its CA, with short timeouts.
pub(crate) fn settings(server: &TestServer, tls: TlsMode) -> SmtpSettingsBuilder {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(server.port()))
        .tls(tls)
        .sender("alerts@example.com")
        .add_root_certificates_pem(server.ca_pem())
        .webpki_roots(false)
        .helo_name("client.example.com")
        .timeout(Duration::from_secs(5))
}

pub(crate) fn envelope(to: &[&str]) -> Envelope {
    Envelope::new(
        Some("alerts@example.com".parse().expect("address")),
        to.iter().map(|r| r.parse().expect("address")).collect(),
    )
    .expect("envelope")
}

pub(crate) const MESSAGE: &[u8] =
    b"From: alerts@example.com\r\nTo: ops@example.net\r\nSubject: disk\r\n\r\n/var is full\r\n";
