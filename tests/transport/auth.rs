//! AUTH with each mechanism, failures, and no credentials in clear text.

use relaymail::testing::ServerConfig;
use relaymail::{Connection, Mechanism, Stage, TlsMode};

use crate::support::*;

const PASSWORD: &str = "s3cret-Interop-pw";

async fn auth_server(mechs: &[&str]) -> relaymail::testing::TestServer {
    server(
        ServerConfig::new()
            .starttls(true)
            .auth_mechanisms(mechs)
            .user("app", PASSWORD)
            .require_auth(true),
    )
    .await
}

#[tokio::test]
async fn each_mechanism() {
    for (offered, expect) in [
        ("PLAIN", Mechanism::Plain),
        ("LOGIN", Mechanism::Login),
        ("CRAM-MD5", Mechanism::CramMd5),
        ("SCRAM-SHA-256", Mechanism::ScramSha256),
    ] {
        let srv = auth_server(&[offered]).await;
        let s = settings(&srv, TlsMode::StartTls)
            .credentials("app", PASSWORD)
            .build()
            .expect("settings");
        let mut conn = Connection::open(&s)
            .await
            .unwrap_or_else(|e| panic!("{offered}: {e}"));
        assert_eq!(conn.info().auth_mechanism, Some(expect));
        conn.send(envelope(&["ops@example.net"]), MESSAGE.to_vec())
            .await
            .expect("delivered");
        let m = srv.wait_for_messages(1, WAIT).await.expect("message");
        assert_eq!(m[0].auth_user.as_deref(), Some("app"));
        let lines: Vec<String> = srv
            .sessions()
            .iter()
            .flat_map(|s| s.commands.iter().map(|c| c.line.clone()))
            .collect();
        assert!(lines.iter().all(|l| !l.contains(PASSWORD)));
    }
}

#[tokio::test]
async fn strongest_common_mechanism_is_chosen() {
    let srv = auth_server(&["LOGIN", "PLAIN", "SCRAM-SHA-256", "CRAM-MD5"]).await;
    let s = settings(&srv, TlsMode::StartTls)
        .credentials("app", PASSWORD)
        .build()
        .expect("settings");
    let conn = Connection::open(&s).await.expect("connects");
    assert_eq!(conn.info().auth_mechanism, Some(Mechanism::ScramSha256));
    let s = settings(&srv, TlsMode::StartTls)
        .credentials("app", PASSWORD)
        .auth_mechanisms(&[Mechanism::Login])
        .build()
        .expect("settings");
    assert_eq!(
        Connection::open(&s)
            .await
            .expect("connects")
            .info()
            .auth_mechanism,
        Some(Mechanism::Login)
    );
}

#[tokio::test]
async fn xoauth2_token() {
    let srv = server(
        ServerConfig::new()
            .implicit_tls(true)
            .auth_mechanisms(&["XOAUTH2"])
            .user("app", "ya29.token"),
    )
    .await;
    let s = settings(&srv, TlsMode::Implicit)
        .oauth2_token("app", "ya29.token")
        .build()
        .expect("settings");
    assert_eq!(
        Connection::open(&s)
            .await
            .expect("connects")
            .info()
            .auth_mechanism,
        Some(Mechanism::XOAuth2)
    );
    let s = settings(&srv, TlsMode::Implicit)
        .oauth2_token("app", "ya29.stale-Token-value")
        .build()
        .expect("settings");
    let e = Connection::open(&s).await.expect_err("refused");
    // The token is not shown (the hint says why it may have been refused:
    // expired or revoked).
    assert!(e.is_auth() && e.is_token_rejected(), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("stale-Token"), "{e}");
    assert!(
        e.hint().is_some_and(|h| h.contains("expired or was revoked")),
        "{e}"
    );
}

#[tokio::test]
async fn wrong_password_names_the_mechanism_not_the_secret() {
    for mech in ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"] {
        let srv = auth_server(&[mech]).await;
        let s = settings(&srv, TlsMode::StartTls)
            .credentials("app", "wrong-password-xyz")
            .build()
            .expect("settings");
        let e = Connection::open(&s).await.expect_err("refused");
        assert!(e.is_auth() && e.is_permanent(), "{mech}: {e}");
        assert_eq!(e.stage(), Some(Stage::Auth));
        let text = format!("{e} {e:?}");
        assert!(text.contains(mech), "{text}");
        assert!(!text.contains("wrong-password-xyz"), "{text}");
    }
}

#[tokio::test]
async fn credentials_never_sent_in_clear_text() {
    let srv = server(
        ServerConfig::new()
            .auth_mechanisms(&["PLAIN", "LOGIN"])
            .user("app", PASSWORD),
    )
    .await;
    let s = settings(&srv, TlsMode::None)
        .credentials("app", PASSWORD)
        .build()
        .expect("settings");
    let e = Connection::open(&s).await.expect_err("refused");
    assert!(e.is_auth() && e.hint().is_some(), "{e}");
    let sessions = srv.wait_for_closed_sessions(1, WAIT).await.expect("closed");
    assert!(
        sessions[0].commands.iter().all(|c| !c.line.starts_with("AUTH")),
        "no AUTH command was sent"
    );
    // Opportunistic STARTTLS that does not happen does not leak them either.
    let s = settings(&srv, TlsMode::StartTlsOpportunistic)
        .credentials("app", PASSWORD)
        .build()
        .expect("settings");
    assert!(Connection::open(&s).await.expect_err("refused").is_auth());
    // Explicitly allowed (trusted network).
    let s = settings(&srv, TlsMode::None)
        .credentials("app", PASSWORD)
        .dangerous(|d| d.allow_plaintext_auth(true))
        .build()
        .expect("settings");
    Connection::open(&s).await.expect("allowed explicitly");
}

#[tokio::test]
async fn auth_not_offered_but_configured() {
    let srv = server(ServerConfig::new().starttls(true)).await;
    let s = settings(&srv, TlsMode::StartTls)
        .credentials("app", PASSWORD)
        .build()
        .expect("settings");
    let e = Connection::open(&s).await.expect_err("fails");
    assert!(
        e.is_auth() && e.to_string().contains("does not offer AUTH"),
        "{e}"
    );
}

#[tokio::test]
async fn auth_required_but_no_credentials() {
    let srv = auth_server(&["PLAIN"]).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::StartTls).build().expect("settings"))
        .await
        .expect("connects");
    let e = conn
        .send(envelope(&["ops@example.net"]), MESSAGE.to_vec())
        .await
        .expect_err("refused");
    assert_eq!(e.stage(), Some(Stage::Mail));
    assert_eq!(e.reply().map(|r| r.code().value()), Some(530));
}
