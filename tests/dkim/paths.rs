//! Every way a message leaves relaymail is signed: the mailer's send,
//! send_email, submit and try_send (raw messages too), a redirect, outbox
//! drafts, the diagnose test email and a bare connection; each message once,
//! the retries of it with the same bytes.

use std::time::Duration;

use relaymail::dev::{Destination, MemoryInbox};
use relaymail::dkim::{DkimConfig, DkimSigner};
use relaymail::outbox::{Area, DirSpool, OutboxPolicy};
use relaymail::testing::{Fault, ServerConfig, TestServer};
use relaymail::{
    AddressPolicy, Connection, Email, Envelope, Mailer, Message, Redirect, RetryPolicy, SmtpSettings,
    SmtpSettingsBuilder, TlsMode,
};

use crate::support::mail_auth_passes;
use crate::{ED25519, ED25519_OTHER, RSA, WAIT};

fn base(port: u16) -> SmtpSettingsBuilder {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(port))
        .tls(TlsMode::None)
        .sender("noreply@example.com")
        .timeout(Duration::from_secs(5))
}

fn signing(builder: SmtpSettingsBuilder, key: &str, selector: &str) -> SmtpSettings {
    builder
        .dkim(DkimConfig::new("example.com", selector, key))
        .build()
        .expect("settings")
}

/// Checks that `data` starts with exactly one DKIM-Signature that
/// mail-auth verifies with `signer`'s public key.
async fn assert_signed(what: &str, data: &[u8], signer: &DkimSigner) {
    let text = String::from_utf8_lossy(data);
    assert!(text.starts_with("DKIM-Signature: v=1;"), "{what}: {text}");
    assert_eq!(
        text.matches("DKIM-Signature:").count(),
        1,
        "{what}: signed once: {text}"
    );
    if let Err(v) = mail_auth_passes(data, &signer.dns_name(), &signer.dns_record()).await {
        panic!("{what}: {v:?}\n{text}");
    }
}

fn raw(subject: &str) -> Vec<u8> {
    format!(
        "From: Alerts <alerts@example.com>\r\nTo: ops@example.net\r\nBcc: hidden@example.net\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn every_mailer_send_path_signs() {
    let inbox_name = format!("dkim-paths-{}", std::process::id());
    let settings = signing(
        SmtpSettings::builder()
            .sender("noreply@example.com")
            .destination(Destination::memory(&inbox_name)),
        RSA,
        "mail2024",
    );
    let signer = settings.dkim().expect("dkim").clone();
    let mailer = Mailer::new(settings).expect("mailer");
    // send, with a raw message (its Bcc removed before signing).
    let m = Message::from_rfc5322(raw("send"), AddressPolicy::Strict).expect("raw");
    mailer.send(m).await.expect("send");
    // send_email, composed by relaymail.
    mailer
        .send_email(
            Email::new()
                .to("ops@example.net")
                .subject("send_email")
                .text("hello"),
        )
        .await
        .expect("send_email");
    // submit, then wait.
    let m = Message::from_rfc5322(raw("submit"), AddressPolicy::Strict).expect("raw");
    mailer.submit(m).await.expect("submit").await.expect("delivered");
    // try_send.
    let m = Message::from_rfc5322(raw("try_send"), AddressPolicy::Strict).expect("raw");
    mailer.try_send(m).expect("room").await.expect("delivered");
    let got = MemoryInbox::named(&inbox_name).take();
    assert_eq!(got.len(), 4);
    for (message, what) in got.iter().zip(["send", "send_email", "submit", "try_send"]) {
        assert!(message.text().contains(what), "{what}");
        assert!(
            !message.text().contains("hidden@example.net"),
            "{what}: Bcc removed"
        );
        assert_signed(what, message.data(), &signer).await;
    }
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_redirected_message_is_signed_after_the_redirect() {
    let inbox_name = format!("dkim-redirect-{}", std::process::id());
    let settings = signing(
        SmtpSettings::builder()
            .sender("noreply@example.com")
            .destination(Destination::memory(&inbox_name))
            .redirect(Redirect::to(["qa@example.com".parse().expect("address")])),
        ED25519,
        "mail2024",
    );
    let signer = settings.dkim().expect("dkim").clone();
    let mailer = Mailer::builder(settings).build().expect("mailer");
    let m = Message::from_rfc5322(raw("redirected"), AddressPolicy::Strict).expect("raw");
    mailer.send(m).await.expect("sent");
    let got = MemoryInbox::named(&inbox_name).take();
    assert_eq!(got[0].to(), ["qa@example.com"]);
    // The redirect's header is inside the signed message, below the signature.
    let text = got[0].text();
    let signature_at = text.find("DKIM-Signature:").expect("signed");
    let redirect_at = text.find("X-Relaymail-Original-Recipients:").expect("redirected");
    assert!(signature_at < redirect_at, "{text}");
    assert_signed("redirect", got[0].data(), &signer).await;
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_message_that_cannot_be_signed_is_refused_not_sent_unsigned() {
    let inbox_name = format!("dkim-refused-{}", std::process::id());
    let settings = signing(
        SmtpSettings::builder()
            .sender("noreply@example.com")
            .destination(Destination::memory(&inbox_name)),
        ED25519,
        "mail2024",
    );
    let mailer = Mailer::new(settings).expect("mailer");
    let envelope = Envelope::new(
        Some("alerts@example.com".parse().expect("address")),
        vec!["ops@example.net".parse().expect("address")],
    )
    .expect("envelope");
    let no_from = Message::new(envelope, &b"Subject: no From\r\n\r\nbody\r\n"[..]);
    let e = mailer.send(no_from.clone()).await.expect_err("refused");
    assert!(e.is_config() && e.to_string().contains("no From"), "{e}");
    let e = mailer.try_send(no_from.clone()).expect_err("refused");
    assert!(e.error().is_config(), "{e}");
    assert_eq!(
        e.into_message().content(),
        no_from.content(),
        "handed back untouched"
    );
    assert!(MemoryInbox::named(&inbox_name).is_empty(), "nothing sent");
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn drafts_are_stored_unsigned_and_signed_with_the_key_in_force_when_sent() {
    let dir = std::env::temp_dir().join(format!("relaymail-dkim-outbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spool = DirSpool::open(&dir).expect("spool");
    // The relay is unreachable: the draft stays on disk.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mailer = Mailer::builder(signing(base(dead), RSA, "old2023"))
        .retry(RetryPolicy::never())
        .outbox(
            spool.clone(),
            OutboxPolicy::default()
                .with_initial_backoff(Duration::from_secs(3600))
                .with_poll_interval(Duration::from_millis(100)),
        )
        .build()
        .expect("mailer");
    let m = Message::from_rfc5322(raw("draft"), AddressPolicy::Strict).expect("raw");
    mailer.enqueue(m).await.expect("on disk");
    // On disk without a signature: only the content as given is stored.
    let mut stored = Vec::new();
    let mut dirs = vec![dir.clone()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("spool dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                stored.push(std::fs::read(&path).expect("file"));
            }
        }
    }
    assert!(
        stored.iter().any(|f| f.windows(5).any(|w| w == b"draft")),
        "the draft is there"
    );
    assert!(!stored
        .iter()
        .any(|f| f.windows(15).any(|w| w == b"DKIM-Signature:")));
    // The administrator fixes the relay and rotates the key: the draft goes
    // out signed with the new one.
    let srv = TestServer::start(ServerConfig::new()).await.expect("server");
    let rotated = signing(base(srv.port()), ED25519, "new2025");
    let signer = rotated.dkim().expect("dkim").clone();
    mailer.reload(rotated).expect("reload");
    mailer
        .outbox()
        .expect("outbox")
        .retry_all_now(Area::Drafts)
        .await
        .expect("retried");
    mailer.wake_outbox();
    let got = srv.wait_for_messages(1, WAIT).await.expect("delivered");
    assert!(String::from_utf8_lossy(&got[0].data).contains("s=new2025;"));
    assert_signed("draft", &got[0].data, &signer).await;
    mailer.shutdown(WAIT).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_retry_resends_the_bytes_signed_at_hand_over() {
    // The first end of data is refused with a 4yz: the mailer tries again.
    let srv = TestServer::start(
        ServerConfig::new().fault(Fault::on_end_of_data().nth(1).reply("451 4.3.0 Try again later")),
    )
    .await
    .expect("server");
    let settings = signing(base(srv.port()), RSA, "mail2024");
    let signer = settings.dkim().expect("dkim").clone();
    let mailer = Mailer::builder(settings)
        .retry(
            RetryPolicy::default()
                .with_initial_backoff(Duration::from_millis(50))
                .with_max_attempts(3),
        )
        .build()
        .expect("mailer");
    let m = Message::from_rfc5322(raw("retried"), AddressPolicy::Strict).expect("raw");
    let pending = mailer.submit(m).await.expect("handed over");
    // New settings before the retry: the retry still sends what was signed
    // when the message was handed over (signing is paid once per message).
    mailer
        .reload(signing(base(srv.port()), ED25519_OTHER, "other"))
        .expect("reload");
    let receipt = pending.await.expect("delivered");
    assert_eq!(receipt.attempts(), 2);
    let got = srv.wait_for_messages(1, WAIT).await.expect("received");
    assert!(String::from_utf8_lossy(&got[0].data).contains("s=mail2024;"));
    assert_signed("retry", &got[0].data, &signer).await;
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn the_diagnose_test_email_is_signed_and_says_so() {
    let srv = TestServer::start(ServerConfig::new()).await.expect("server");
    let settings = signing(base(srv.port()), ED25519, "mail2024");
    let signer = settings.dkim().expect("dkim").clone();
    let report = relaymail::diagnose::send_test(&settings, "admin@example.net", None).await;
    assert!(report.is_ok(), "{report}");
    let dkim = report.dkim().expect("signed");
    assert_eq!(
        (
            dkim.domain.as_str(),
            dkim.selector.as_str(),
            dkim.algorithm.as_str(),
            dkim.aligned
        ),
        ("example.com", "mail2024", "ed25519-sha256", true)
    );
    assert!(
        report
            .to_string()
            .contains("DKIM: signed as d=example.com s=mail2024 a=ed25519-sha256 (public key at mail2024._domainkey.example.com)"),
        "{report}"
    );
    let got = srv.wait_for_messages(1, WAIT).await.expect("received");
    assert_signed("test email", &got[0].data, &signer).await;
    // From another domain: still signed, and the report warns.
    let report =
        relaymail::diagnose::send_test(&settings, "admin@example.net", Some("it@other.example")).await;
    assert!(report.is_ok(), "{report}");
    assert!(!report.dkim().expect("signed").aligned);
    assert!(report.to_string().contains("DMARC may not count"), "{report}");
    // Without DKIM settings the report says nothing of it.
    let plain = base(srv.port()).build().expect("settings");
    let report = relaymail::diagnose::send_test(&plain, "admin@example.net", None).await;
    assert!(report.is_ok() && report.dkim().is_none() && !report.to_string().contains("DKIM"));
}

#[tokio::test]
async fn a_bare_connection_signs_what_it_sends() {
    let srv = TestServer::start(ServerConfig::new()).await.expect("server");
    let settings = signing(base(srv.port()), RSA, "mail2024");
    let signer = settings.dkim().expect("dkim").clone();
    let mut conn = Connection::open(&settings).await.expect("connected");
    let envelope = Envelope::new(
        Some("alerts@example.com".parse().expect("address")),
        vec!["ops@example.net".parse().expect("address")],
    )
    .expect("envelope");
    conn.send(envelope.clone(), raw("connection"))
        .await
        .expect("sent");
    let e = conn
        .send(envelope, b"Subject: no From\r\n\r\nx\r\n".to_vec())
        .await
        .expect_err("refused");
    assert!(e.is_config(), "{e}");
    assert!(conn.is_usable(), "nothing was sent for it");
    conn.quit().await.expect("quit");
    let got = srv.wait_for_messages(1, WAIT).await.expect("received");
    assert_eq!(got.len(), 1);
    assert_signed("connection", &got[0].data, &signer).await;
}

#[cfg(feature = "serde")]
#[test]
fn the_key_is_in_no_debug_error_or_serialised_form() {
    let key_lines: Vec<&str> = RSA.lines().filter(|l| !l.starts_with("-----")).collect();
    let settings = signing(base(25), RSA, "mail2024");
    let mailer_debug = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        format!("{:?}", Mailer::new(settings.clone()).expect("mailer"))
    };
    let bad = SmtpSettings::builder()
        .host("127.0.0.1")
        .sender("a@example.com")
        .dkim(DkimConfig::new("bad domain", "s", RSA.replace("MII", "M!I")))
        .build()
        .expect_err("invalid");
    let shown = [
        format!("{settings:?}"),
        format!("{:?}", settings.to_builder()),
        mailer_debug,
        serde_json::to_string(&settings).expect("json"),
        serde_json::to_string(&settings.to_data()).expect("json"),
        settings.url().expose_password(),
        format!("{bad}{bad:?}"),
    ];
    for text in &shown {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        for line in &key_lines {
            assert!(!text.contains(line), "{text}");
        }
    }
    // The public settings are there.
    assert!(shown[3].contains(r#""dkim":{"domain":"example.com","selector":"mail2024","algorithm":"rsa-sha256","canonicalization":"relaxed/relaxed"}"#), "{}", shown[3]);
}
