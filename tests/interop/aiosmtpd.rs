//! aiosmtpd: AUTH PLAIN and LOGIN over STARTTLS and implicit TLS, wrong
//! passwords, AUTH refused in clear text, and the exact bytes received.

use base64::Engine;
use relaymail::{Connection, Mechanism, Stage, TlsMode};

use crate::{envelope, message, unique, Interop};

/// What aiosmtpd recorded for the message sent to `rcpt` (one JSON line per
/// message, written before its 250, so it is there once `send` returned).
struct Record(String);

impl Record {
    fn find(env: &Interop, rcpt: &str) -> Record {
        let log = std::fs::read_to_string(&env.aiosmtpd_log).expect("aiosmtpd log");
        let needle = format!("\"{rcpt}\"");
        let line = log
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no message for {rcpt} in {}", env.aiosmtpd_log.display()));
        Record(line.to_owned())
    }

    /// The raw JSON text of a top-level field (strings without their quotes).
    fn field(&self, name: &str) -> &str {
        let key = format!("\"{name}\": ");
        let start = self
            .0
            .find(&key)
            .unwrap_or_else(|| panic!("{name} in {}", self.0))
            + key.len();
        let rest = &self.0[start..];
        if let Some(s) = rest.strip_prefix('"') {
            &s[..s.find('"').expect("closing quote")]
        } else {
            &rest[..rest.find([',', '}']).expect("end of value")]
        }
    }

    fn content_head(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(self.field("content_head_b64"))
            .expect("base64")
    }
}

#[tokio::test]
async fn auth_plain_and_login_over_starttls_and_implicit_tls() {
    let Some(env) = Interop::get("aiosmtpd auth matrix") else {
        return;
    };
    for (port, tls, listener) in [
        (env.aiosmtpd_starttls_port, TlsMode::StartTls, "starttls"),
        (env.aiosmtpd_smtps_port, TlsMode::Implicit, "smtps"),
    ] {
        for mech in [Mechanism::Plain, Mechanism::Login] {
            let s = env
                .settings(port, tls)
                .credentials(&env.user, &env.password)
                .auth_mechanisms(&[mech])
                .build()
                .expect("settings");
            let mut conn = Connection::open(&s)
                .await
                .unwrap_or_else(|e| panic!("{listener} {mech:?}: {e}"));
            assert_eq!(conn.info().auth_mechanism, Some(mech));
            assert_eq!(
                conn.info().tls.as_ref().map(|t| t.via_starttls),
                Some(tls == TlsMode::StartTls)
            );
            let to = unique(&format!("{listener}-{mech:?}"));
            conn.send(envelope(&[&to]), message(&to, "hello\r\n"))
                .await
                .unwrap_or_else(|e| panic!("{listener} {mech:?}: {e}"));
            let r = Record::find(&env, &to);
            assert_eq!(r.field("listener"), listener);
            assert_eq!(r.field("tls"), "true");
            assert_eq!(r.field("auth_user"), env.user);
            assert_eq!(r.field("helo"), "client.example.com");
            conn.quit().await.expect("QUIT");
        }
    }
}

#[tokio::test]
async fn strongest_offered_mechanism_is_used_by_default() {
    let Some(env) = Interop::get("aiosmtpd default mechanism") else {
        return;
    };
    let s = env
        .settings(env.aiosmtpd_starttls_port, TlsMode::StartTls)
        .credentials(&env.user, &env.password)
        .build()
        .expect("settings");
    let conn = Connection::open(&s).await.expect("connects");
    // aiosmtpd offers PLAIN and LOGIN; PLAIN is the stronger of the two
    // (one round trip, no base64 prompts to misparse).
    assert_eq!(conn.info().auth_mechanism, Some(Mechanism::Plain));
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_without_the_secret() {
    let Some(env) = Interop::get("aiosmtpd wrong password") else {
        return;
    };
    for mech in [Mechanism::Plain, Mechanism::Login] {
        let s = env
            .settings(env.aiosmtpd_smtps_port, TlsMode::Implicit)
            .credentials(&env.user, "not-the-interop-password")
            .auth_mechanisms(&[mech])
            .build()
            .expect("settings");
        let e = Connection::open(&s).await.expect_err("refused");
        assert!(e.is_auth() && e.is_permanent(), "{mech:?}: {e}");
        assert_eq!(e.stage(), Some(Stage::Auth));
        assert_eq!(e.reply().map(|r| r.code().value()), Some(535));
        let text = format!("{e} {e:?} {:?}", e.hint());
        assert!(text.contains(mech.name()), "{text}");
        assert!(!text.contains("not-the-interop-password"), "{text}");
    }
}

#[tokio::test]
async fn auth_required_by_the_server_but_not_configured() {
    let Some(env) = Interop::get("aiosmtpd no credentials") else {
        return;
    };
    let s = env
        .settings(env.aiosmtpd_smtps_port, TlsMode::Implicit)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects without AUTH");
    let e = conn
        .send(
            envelope(&["ops@example.net"]),
            message("ops@example.net", "x\r\n"),
        )
        .await
        .expect_err("530");
    assert_eq!(e.stage(), Some(Stage::Mail));
    assert_eq!(e.reply().map(|r| r.code().value()), Some(530));
}

#[tokio::test]
async fn credentials_are_never_sent_in_clear_text() {
    let Some(env) = Interop::get("aiosmtpd clear-text auth") else {
        return;
    };
    // The plain listener offers AUTH PLAIN LOGIN without TLS.
    for tls in [TlsMode::None, TlsMode::StartTlsOpportunistic] {
        let s = env
            .settings(env.aiosmtpd_plain_port, tls)
            .credentials(&env.user, &env.password)
            .build()
            .expect("settings");
        let e = Connection::open(&s).await.expect_err("refused by the client");
        assert!(e.is_auth(), "{tls:?}: {e}");
        assert!(e.hint().is_some_and(|h| h.contains("TLS")), "{e:?}");
    }
    // Allowed explicitly (a relay on a trusted network).
    let s = env
        .settings(env.aiosmtpd_plain_port, TlsMode::None)
        .credentials(&env.user, &env.password)
        .dangerous(|d| d.allow_plaintext_auth(true))
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    assert_eq!(conn.info().auth_mechanism, Some(Mechanism::Plain));
    let to = unique("cleartext-allowed");
    conn.send(envelope(&[&to]), message(&to, "hi\r\n"))
        .await
        .expect("delivered");
    let r = Record::find(&env, &to);
    assert_eq!(r.field("tls"), "false");
    assert_eq!(r.field("auth_user"), env.user);
}

#[tokio::test]
async fn starttls_required_listener_refuses_clear_text_mode() {
    let Some(env) = Interop::get("aiosmtpd none on starttls port") else {
        return;
    };
    let s = env
        .settings(env.aiosmtpd_starttls_port, TlsMode::None)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    let e = conn
        .send(
            envelope(&["ops@example.net"]),
            message("ops@example.net", "x\r\n"),
        )
        .await
        .expect_err("530 must issue STARTTLS first");
    assert_eq!(e.reply().map(|r| r.code().value()), Some(530));
}

#[tokio::test]
async fn the_server_receives_exactly_the_normalised_message() {
    let Some(env) = Interop::get("aiosmtpd bytes") else {
        return;
    };
    let s = env
        .settings(env.aiosmtpd_smtps_port, TlsMode::Implicit)
        .credentials(&env.user, &env.password)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    let to = unique("bytes");
    let body = "line one\n.\n..two\r.three\r\nQUIT\nend";
    conn.send(envelope(&[&to]), message(&to, body))
        .await
        .expect("delivered");
    let r = Record::find(&env, &to);
    let expected = format!(
        "From: alerts@example.com\r\nTo: {to}\r\nSubject: interop\r\n\r\nline one\r\n.\r\n..two\r\n.three\r\nQUIT\r\nend\r\n"
    );
    assert_eq!(String::from_utf8_lossy(&r.content_head()), expected);
    assert_eq!(r.field("size"), expected.len().to_string());
}

#[tokio::test]
async fn verify_reports_tls_and_mechanism() {
    let Some(env) = Interop::get("aiosmtpd verify") else {
        return;
    };
    let s = env
        .settings(env.aiosmtpd_starttls_port, TlsMode::StartTls)
        .credentials(&env.user, &env.password)
        .build()
        .expect("settings");
    let info = relaymail::probe(&s).await.expect("verified");
    assert!(info.tls.as_ref().is_some_and(|t| t.via_starttls));
    assert_eq!(info.auth_mechanism, Some(Mechanism::Plain));
    let bad = s
        .to_builder()
        .credentials(&env.user, "nope-nope")
        .build()
        .expect("settings");
    let e = relaymail::probe(&bad).await.expect_err("auth fails");
    assert_eq!(e.stage(), Some(Stage::Auth));
}
