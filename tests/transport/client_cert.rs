//! Client certificates (mutual TLS) against a test server that requires
//! one issued by its CA: the right one is sent and recorded; none, or one
//! from another CA, fails at the TLS stage with a hint — with TLS 1.3 the
//! server's refusal arrives on the first read after the client's side of
//! the handshake (where the greeting or EHLO reply would be), with TLS 1.2
//! in the handshake itself.

use relaymail::testing::{foreign_client_identity_pem, ServerConfig, TestServer};
use relaymail::{Connection, Error, Stage, TlsMode};

use crate::support::*;

const CLIENT: &str = "CN=relaymail test client";
const REQUIRES: &str = "the server requires a client certificate";
const REFUSED: &str = "the server refused the client certificate: check it is the one the relay's administrator issued and that it has not expired";

/// A server requiring client certificates, for `tls` (STARTTLS or implicit).
async fn requiring(tls: TlsMode, tls12_only: bool) -> TestServer {
    server(
        ServerConfig::new()
            .starttls(tls == TlsMode::StartTls)
            .implicit_tls(tls == TlsMode::Implicit)
            .require_client_cert(true)
            .tls12_only(tls12_only),
    )
    .await
}

/// Every combination the tests run: (TLS mode, TLS 1.2 only).
const CASES: [(TlsMode, bool); 4] = [
    (TlsMode::StartTls, false),
    (TlsMode::Implicit, false),
    (TlsMode::StartTls, true),
    (TlsMode::Implicit, true),
];

fn assert_refused(e: &Error, hint: &str, key: &str, what: &str) {
    assert!(e.is_tls(), "{what}: {e}");
    assert_eq!(e.stage(), Some(Stage::Tls), "{what}: {e}");
    assert!(
        e.hint().is_some_and(|h| h.contains(hint)),
        "{what}: hint {:?} lacks {hint:?}",
        e.hint()
    );
    let shown = format!("{e}\n{e:?}");
    assert!(
        key.is_empty() || !shown.contains(key_body(key)),
        "{what}: {shown}"
    );
}

/// A line from the middle of a PEM key: text that appears only in the key.
fn key_body(key_pem: &str) -> &str {
    key_pem.lines().nth(1).expect("a key line")
}

#[tokio::test]
async fn the_certificate_issued_by_the_relay_is_sent_and_the_message_delivered() {
    for (mode, tls12) in CASES {
        let what = format!("{mode:?}, TLS 1.2 only: {tls12}");
        let srv = requiring(mode, tls12).await;
        let (chain, key) = srv.client_identity_pem().expect("identity");
        let settings = settings(&srv, mode)
            .client_certificate_pem(&chain, &key)
            .build()
            .expect("settings");
        let mut conn = Connection::open(&settings).await.expect(&what);
        let tls = conn.info().tls.clone().expect("TLS");
        assert_eq!(tls.client_certificate.as_deref(), Some(CLIENT), "{what}");
        assert_eq!(tls.version, if tls12 { "TLSv1.2" } else { "TLSv1.3" }, "{what}");
        conn.send(envelope(&["ops@example.net"]), MESSAGE.to_vec())
            .await
            .expect(&what);
        conn.quit().await.expect("quit");
        let m = srv.wait_for_messages(1, WAIT).await.expect("message");
        assert_eq!(m[0].data, MESSAGE, "{what}");
        let sessions = srv.wait_for_closed_sessions(1, WAIT).await.expect("closed");
        assert_eq!(sessions[0].client_certificate.as_deref(), Some(CLIENT), "{what}");
        assert_eq!(sessions[0].tls_error, None, "{what}");
    }
}

#[tokio::test]
async fn no_certificate_fails_at_the_tls_stage_saying_one_is_required() {
    for (mode, tls12) in CASES {
        let what = format!("{mode:?}, TLS 1.2 only: {tls12}");
        let srv = requiring(mode, tls12).await;
        let settings = settings(&srv, mode).build().expect("settings");
        let e = Connection::open(&settings).await.expect_err(&what);
        assert_refused(&e, REQUIRES, "", &what);
        let sessions = srv.wait_for_closed_sessions(1, WAIT).await.expect("closed");
        assert_eq!(sessions[0].client_certificate, None, "{what}");
        let reason = sessions[0].tls_error.as_deref().expect("the server's reason");
        assert!(reason.contains("no certificates"), "{what}: {reason}");
        assert!(srv.messages().is_empty(), "{what}");
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_at_the_tls_stage_saying_it_was_refused() {
    for (mode, tls12) in CASES {
        let what = format!("{mode:?}, TLS 1.2 only: {tls12}");
        let srv = requiring(mode, tls12).await;
        let (chain, key) = foreign_client_identity_pem().expect("identity");
        let settings = settings(&srv, mode)
            .client_certificate_pem(&chain, &key)
            .build()
            .expect("settings");
        let e = Connection::open(&settings).await.expect_err(&what);
        assert_refused(&e, REFUSED, &key, &what);
        let sessions = srv.wait_for_closed_sessions(1, WAIT).await.expect("closed");
        let reason = sessions[0].tls_error.as_deref().expect("the server's reason");
        assert!(reason.contains("UnknownIssuer"), "{what}: {reason}");
        assert!(srv.messages().is_empty(), "{what}");
    }
}

#[tokio::test]
async fn a_server_that_does_not_ask_gets_no_certificate() {
    let srv = server(ServerConfig::new().starttls(true)).await;
    let (chain, key) = srv.client_identity_pem().expect("identity");
    let settings = settings(&srv, TlsMode::StartTls)
        .client_certificate_pem(&chain, &key)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&settings).await.expect("connects");
    assert_eq!(conn.info().tls.as_ref().expect("TLS").client_certificate, None);
    conn.send(envelope(&["ops@example.net"]), MESSAGE.to_vec())
        .await
        .expect("delivered");
    conn.quit().await.expect("quit");
    let sessions = srv.wait_for_closed_sessions(1, WAIT).await.expect("closed");
    assert_eq!(sessions[0].client_certificate, None);
}
