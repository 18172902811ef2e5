//! Client certificates in the diagnosis: whether one was sent and its
//! subject; a relay that requires one and gets none, or refuses the one it
//! gets, fails at the TLS stage with the fix; a kept client key is never
//! used with a server the form just changed.

use relaymail::diagnose;
use relaymail::testing::{foreign_client_identity_pem, ServerConfig};
use relaymail::{ClientCertificateChange, SettingsUpdate, Stage, TlsMode};

use super::{check, server, trusting, TIMEOUT};

const CLIENT: &str = "CN=relaymail test client";

#[tokio::test]
async fn the_report_says_the_client_certificate_was_sent() {
    let srv = server(ServerConfig::new().starttls(true).require_client_cert(true)).await;
    let (chain, key) = srv.client_identity_pem().expect("identity");
    let s = trusting(&srv, TlsMode::StartTls)
        .client_certificate_pem(&chain, &key)
        .build()
        .expect("settings");
    let report = diagnose::send_test(&s, "admin@example.net", None).await;
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.client_certificate(), Some(CLIENT));
    assert_eq!(
        report.tls().and_then(|t| t.client_certificate.as_deref()),
        Some(CLIENT)
    );
    let text = report.to_string();
    assert!(
        text.contains(&format!("client certificate: {CLIENT} (sent)")),
        "{text}"
    );
    let key_line = key.lines().nth(1).expect("a key line");
    assert!(!text.contains(key_line) && !format!("{report:?}").contains(key_line));
    let got = srv.wait_for_messages(1, TIMEOUT).await.expect("test email");
    let body = String::from_utf8_lossy(&got[0].data);
    assert!(body.contains(&format!("Client certificate: {CLIENT}")), "{body}");
    assert!(!body.contains(key_line));
    assert_eq!(srv.sessions()[0].client_certificate.as_deref(), Some(CLIENT));
}

#[tokio::test]
async fn the_report_says_when_the_server_did_not_ask() {
    let srv = server(ServerConfig::new().implicit_tls(true)).await;
    let (chain, key) = srv.client_identity_pem().expect("identity");
    let s = trusting(&srv, TlsMode::Implicit)
        .client_certificate_pem(&chain, &key)
        .build()
        .expect("settings");
    let report = diagnose::verify(&s).await;
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.tls().expect("TLS").client_certificate, None);
    assert!(
        report.to_string().contains(
            "client certificate: CN=relaymail test client (not sent: the server did not ask for one)"
        ),
        "{report}"
    );
}

#[tokio::test]
async fn client_certificate_required_but_none_configured() {
    for mode in [TlsMode::StartTls, TlsMode::Implicit] {
        let srv = server(
            ServerConfig::new()
                .starttls(mode == TlsMode::StartTls)
                .implicit_tls(mode == TlsMode::Implicit)
                .require_client_cert(true),
        )
        .await;
        let s = trusting(&srv, mode).build().expect("settings");
        let r = check(
            diagnose::verify(&s),
            Stage::Tls,
            "the server requires a client certificate",
        )
        .await;
        assert!(r.error().is_some_and(|e| e.is_tls()), "{r}");
    }
}

#[tokio::test]
async fn client_certificate_refused() {
    for mode in [TlsMode::StartTls, TlsMode::Implicit] {
        let srv = server(
            ServerConfig::new()
                .starttls(mode == TlsMode::StartTls)
                .implicit_tls(mode == TlsMode::Implicit)
                .require_client_cert(true),
        )
        .await;
        let (chain, key) = foreign_client_identity_pem().expect("identity");
        let s = trusting(&srv, mode)
            .client_certificate_pem(&chain, &key)
            .build()
            .expect("settings");
        let r = check(
            diagnose::send_test(&s, "admin@example.net", None),
            Stage::Tls,
            "the server refused the client certificate: check it is the one the relay's administrator issued and that it has not expired",
        )
        .await;
        let key_line = key.lines().nth(1).expect("a key line");
        assert!(!format!("{r}{r:?}").contains(key_line), "{r}");
        assert!(srv.messages().is_empty());
    }
}

#[tokio::test]
async fn a_kept_client_key_is_not_used_with_a_changed_server() {
    let relay = server(ServerConfig::new().starttls(true).require_client_cert(true)).await;
    let other = server(ServerConfig::new().starttls(true).require_client_cert(true)).await;
    let (chain, key) = relay.client_identity_pem().expect("identity");
    let stored = trusting(&relay, TlsMode::StartTls)
        .client_certificate_pem(&chain, &key)
        .build()
        .expect("settings");
    // The form moves the settings to another server, key "unchanged".
    let mut update = SettingsUpdate::new();
    update.port = Some(u32::from(other.port()));
    let e = stored.apply(update).expect_err("the key would follow the port");
    assert_eq!(
        e.field("client_key").map(|f| f.message()),
        Some("enter the client certificate and its private key again: the server settings changed")
    );
    assert_eq!(other.connections_total(), 0, "nothing connected");
    // Kept for the same server, it works.
    let mut update = SettingsUpdate::new();
    update.sender_name = Some(Some("Example App".into()));
    update.client_certificate = ClientCertificateChange::Keep;
    let edited = stored.apply(update).expect("same server");
    let report = diagnose::verify(&edited).await;
    assert!(report.is_ok(), "{report}");
}
