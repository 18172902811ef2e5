//! The `tracing` feature: a span per connection and per transaction with
//! reply codes and timing — and never a secret.
//!
//! A test binary of its own: the recording subscriber is the process-wide
//! default (a thread-local one misses callsites that other tests' threads
//! registered first).
#![cfg(feature = "tracing")]

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ::tracing::field::{Field, Visit};
use ::tracing::span::{Attributes, Id, Record};
use ::tracing::{Event, Metadata, Subscriber};
use base64::Engine;
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Envelope, Mailer, Message, SmtpSettings, TlsMode};

const WAIT: Duration = Duration::from_secs(10);

fn message(to: &str, subject: &str) -> Message {
    let envelope = Envelope::new(
        Some("alerts@example.com".parse().expect("address")),
        vec![to.parse().expect("address")],
    )
    .expect("envelope");
    Message::new(
        envelope,
        format!("Subject: {subject}\r\n\r\nbody\r\n").into_bytes(),
    )
}

/// Records every span, field and event as one text line.
#[derive(Clone, Default)]
struct Recorder {
    lines: Arc<Mutex<Vec<String>>>,
    next: Arc<AtomicU64>,
    /// Notified at each event.
    event_seen: Arc<tokio::sync::Notify>,
}

impl Recorder {
    /// Waits until an event line contains every one of `parts`.
    async fn event_with(&self, parts: &[&str]) -> String {
        loop {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.starts_with("event ") && parts.iter().all(|p| l.contains(p)))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            self.event_seen.notified().await;
        }
    }
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!(" {}={}", field.name(), value));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut f = Fields(format!("span#{id} {}", span.metadata().name()));
        span.record(&mut f);
        self.lines.lock().unwrap().push(f.0);
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut f = Fields(format!("record#{}", span.into_u64()));
        values.record(&mut f);
        self.lines.lock().unwrap().push(f.0);
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut f = Fields(format!("event {}", event.metadata().level()));
        event.record(&mut f);
        self.lines.lock().unwrap().push(f.0);
        self.event_seen.notify_one();
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[tokio::test]
async fn spans_carry_codes_and_timing_but_no_secret() {
    const PASSWORD: &str = "tr4ce-S3cret-pw";
    let recorder = Recorder::default();
    ::tracing::subscriber::set_global_default(recorder.clone()).expect("first subscriber");
    let srv = TestServer::start(
        ServerConfig::new()
            .starttls(true)
            .auth_mechanisms(&["PLAIN"])
            .user("app", PASSWORD)
            .reject_recipient("gone@example.net", "550 5.1.1 no such user"),
    )
    .await
    .expect("server");
    let s = SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(srv.port()))
        .sender("alerts@example.com")
        .tls(TlsMode::StartTls)
        .add_root_certificates_pem(srv.ca_pem())
        .webpki_roots(false)
        .credentials("app", PASSWORD)
        .build()
        .expect("settings");
    let mailer = Mailer::builder(s).max_connections(1).build().expect("mailer");
    mailer
        .send(message("ops@example.net", "fine"))
        .await
        .expect("sent");
    mailer
        .send(message("gone@example.net", "refused"))
        .await
        .expect_err("550");
    mailer.shutdown(WAIT).await;
    let lines = recorder.lines.lock().unwrap().clone();
    let text = lines.join("\n");

    let connections = lines
        .iter()
        .filter(|l| l.contains(" relaymail.connection"))
        .count();
    assert_eq!(connections, 1, "{text}");
    let transactions = lines
        .iter()
        .filter(|l| l.contains(" relaymail.transaction"))
        .count();
    assert_eq!(transactions, 2, "{text}");
    assert!(text.contains("tls=TLSv1."), "{text}");
    assert!(text.contains("auth=PLAIN"), "{text}");
    assert!(
        text.contains("relay=localhost:") || text.contains("relay=127.0.0.1:"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("delivered") && l.contains("code=250")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("transaction failed") && l.contains("code=550") && l.contains("stage=rcpt")),
        "{text}"
    );
    assert!(text.contains("elapsed_ms="), "{text}");
    assert!(text.contains("deliveries=2"), "{text}");

    // Never the password, in clear or as the AUTH PLAIN response.
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0app\0{PASSWORD}"));
    assert!(!text.contains(PASSWORD) && !text.contains(&plain), "{text}");
    assert!(!text.contains("AUTH"), "no command is recorded: {text}");

    outbox_errors_are_events(&recorder).await;
    #[cfg(feature = "oauth2")]
    oauth2_renewals_are_traced_without_secrets(&recorder).await;
}

#[cfg(feature = "oauth2")]
#[path = "support/token_endpoint.rs"]
mod token_endpoint;

/// Renewing an OAuth2 access token, and renewing it again after the SMTP
/// server refused it, are events — with no access token, refresh token or
/// client secret in any line.
#[cfg(feature = "oauth2")]
async fn oauth2_renewals_are_traced_without_secrets(recorder: &Recorder) {
    use relaymail::oauth2::{OAuth2Client, OAuth2Provider};
    use relaymail::testing::BearerTokens;

    const REFRESH: &str = "1//Trace-Refresh-Secret";
    const CLIENT_SECRET: &str = "Trace-Client-S3cret";
    let tokens = BearerTokens::new();
    let srv = TestServer::start(
        ServerConfig::new()
            .auth_mechanisms(&["OAUTHBEARER"])
            .bearer_tokens(&tokens),
    )
    .await
    .expect("server");
    let endpoint = token_endpoint::TokenEndpoint::start(REFRESH, "app@example.com", &tokens).await;
    endpoint.rotate(true);
    let client = OAuth2Client::new(endpoint.url(), "trace-client").client_secret(CLIENT_SECRET);
    let provider = OAuth2Provider::new(client, "app@example.com", REFRESH).expect("provider");
    let s = SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(srv.port()))
        .tls(TlsMode::None)
        .dangerous(|d| d.allow_plaintext_auth(true))
        .sender("alerts@example.com")
        .oauth2(std::sync::Arc::new(provider))
        .max_deliveries_per_connection(1)
        .build()
        .expect("settings");
    let mailer = Mailer::builder(s).build().expect("mailer");
    mailer
        .send(message("ops@example.net", "oauth2 one"))
        .await
        .expect("sent");
    tokens.expire_all();
    mailer
        .send(message("ops@example.net", "oauth2 two"))
        .await
        .expect("sent after a renewal");
    mailer.shutdown(WAIT).await;
    assert_eq!(endpoint.requests(), 2);
    let text = recorder.lines.lock().unwrap().join("\n");
    assert!(text.contains("OAuth2 access token renewed"), "{text}");
    assert!(text.contains("rotated=true"), "{text}");
    assert!(text.contains("refused the OAuth2 access token"), "{text}");
    assert!(text.contains("auth=OAUTHBEARER"), "{text}");
    for secret in [REFRESH, CLIENT_SECRET, "ya29.access", "1//rotated-refresh", "1//"] {
        assert!(!text.contains(secret), "{secret}: {text}");
    }
}

/// The outbox deliverer's failed operations are warnings with the
/// operation and the error, and no address.
async fn outbox_errors_are_events(recorder: &Recorder) {
    let dir = std::env::temp_dir().join(format!("relaymail-tracing-outbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spool = relaymail::outbox::DirSpool::open(&dir).expect("spool");
    spool
        .enqueue(&message("queued@example.net", "draft"))
        .expect("queued");
    // The drafts directory goes away under the deliverer.
    std::fs::remove_dir_all(dir.join("drafts")).expect("removed");
    let s = SmtpSettings::builder()
        .host("127.0.0.1")
        .tls(TlsMode::None)
        .sender("alerts@example.com")
        .build()
        .expect("settings");
    let mailer = Mailer::builder(s)
        .outbox(spool, relaymail::outbox::OutboxPolicy::default())
        .build()
        .expect("mailer");
    let line = tokio::time::timeout(
        WAIT,
        recorder.event_with(&["WARN", "outbox operation failed", "operation=claim_due"]),
    )
    .await
    .expect("traced");
    assert!(line.contains("cannot list"), "{line}");
    assert!(!line.contains("queued@example.net"), "{line}");
    assert!(mailer.stats().outbox_errors >= 1);
    mailer.shutdown(WAIT).await;
    let _ = std::fs::remove_dir_all(dir);
}
