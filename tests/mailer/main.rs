//! The pooled `Mailer` against the in-process test server.
#![cfg(feature = "test-server")]

mod destinations;
mod policies;
mod pool;
mod relays;

use std::time::Duration;

use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Envelope, Message, RetryPolicy, SmtpSettings, SmtpSettingsBuilder, TlsMode};

pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) async fn server(config: ServerConfig) -> TestServer {
    TestServer::start(config).await.expect("test server starts")
}

pub(crate) fn settings(server: &TestServer) -> SmtpSettingsBuilder {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(server.port()))
        .tls(TlsMode::None)
        .sender("alerts@example.com")
        .helo_name("client.example.com")
        .timeout(Duration::from_secs(5))
}

/// Retries that do not make the tests wait.
pub(crate) fn quick_retries() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(1))
        .with_max_backoff(Duration::from_millis(10))
}

pub(crate) fn message(to: &str, subject: &str) -> Message {
    let envelope = Envelope::new(
        Some("alerts@example.com".parse().expect("address")),
        vec![to.parse().expect("address")],
    )
    .expect("envelope");
    let content =
        format!("From: alerts@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n");
    Message::new(envelope, content.into_bytes())
}

/// The Subject header of a received message.
pub(crate) fn subject(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or_default()
        .to_owned()
}
