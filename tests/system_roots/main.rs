//! The operating system's trust store (feature `system-roots`) against the
//! in-process test server. rustls-native-certs reads `SSL_CERT_FILE` (and
//! `SSL_CERT_DIR`) instead of the platform's store when set, on every
//! platform: each test runs itself again in a child process whose
//! `SSL_CERT_FILE` names a file the child fills (the test server's CA,
//! another CA, nothing) — environment variables are process-wide, so no
//! test here changes its own.
#![cfg(all(feature = "system-roots", feature = "test-server"))]

use std::path::PathBuf;
use std::time::Duration;

use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{
    diagnose, Connection, Connector, Envelope, SmtpSettings, SmtpSettingsBuilder, Stage, TlsMode,
};

/// Set in the child: what its `SSL_CERT_FILE` is to hold.
const STORE: &str = "RELAYMAIL_TEST_SYSTEM_STORE";

const UNKNOWN_ISSUER: &str = "not signed by a trusted authority";

/// In the child: `Some(what the store holds)`, run the checks. In the
/// parent: runs the test named `test` in a child process with `STORE` set
/// to `store` and `SSL_CERT_FILE` naming a file in a fresh directory (for
/// `os`, neither `SSL_CERT_FILE` nor `SSL_CERT_DIR`: the platform's own
/// store), fails unless it passed, and returns `None`.
fn in_child(test: &str, store: &str) -> Option<String> {
    if let Some(store) = std::env::var_os(STORE) {
        return Some(store.to_string_lossy().into_owned());
    }
    let dir = std::env::temp_dir().join(format!("relaymail-system-roots-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut child = std::process::Command::new(std::env::current_exe().expect("the test binary"));
    child
        .args(["--exact", test, "--test-threads=1", "--nocapture"])
        .env(STORE, store)
        .env_remove("SSL_CERT_DIR");
    if store == "os" {
        child.env_remove("SSL_CERT_FILE");
    } else {
        child.env("SSL_CERT_FILE", dir.join("roots.pem"));
    }
    let out = child.output().expect("the child runs");
    let _ = std::fs::remove_dir_all(&dir);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "with the store {store:?}: {report}");
    assert!(report.contains("1 passed"), "the child ran no test: {report}");
    None
}

/// The file `SSL_CERT_FILE` names (in the child).
fn store_file() -> PathBuf {
    PathBuf::from(std::env::var_os("SSL_CERT_FILE").expect("SSL_CERT_FILE is set for the child"))
}

async fn server() -> TestServer {
    TestServer::start(ServerConfig::new().implicit_tls(true))
        .await
        .expect("server")
}

/// Settings for the server that trust the system's store only.
fn system_only(srv: &TestServer) -> SmtpSettingsBuilder {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(srv.port()))
        .tls(TlsMode::Implicit)
        .sender("app@example.com")
        .webpki_roots(false)
        .system_roots(true)
        .timeout(Duration::from_secs(5))
}

fn envelope() -> Envelope {
    Envelope::new(
        Some("app@example.com".parse().expect("address")),
        vec!["ops@example.net".parse().expect("address")],
    )
    .expect("envelope")
}

async fn assert_unknown_issuer(settings: &SmtpSettings, hint: &str, what: &str) {
    let e = Connection::open(settings).await.expect_err(what);
    assert!(e.is_tls() && e.stage() == Some(Stage::Tls), "{what}: {e}");
    let h = e.hint().unwrap_or_default();
    assert!(h.contains(UNKNOWN_ISSUER) && h.contains(hint), "{what}: {h}");
}

#[tokio::test]
async fn a_relay_whose_ca_is_in_the_system_store_is_trusted() {
    if in_child("a_relay_whose_ca_is_in_the_system_store_is_trusted", "server-ca").is_none() {
        return;
    }
    let srv = server().await;
    std::fs::write(store_file(), srv.ca_pem()).expect("write the store");
    let settings = system_only(&srv).build().expect("system roots count as roots");
    let mut conn = Connection::open(&settings)
        .await
        .expect("trusted through the store");
    conn.send(envelope(), b"Subject: hi\r\n\r\nhello\r\n".to_vec())
        .await
        .expect("delivered");
    conn.quit().await.expect("quit");
    srv.wait_for_messages(1, Duration::from_secs(5))
        .await
        .expect("message");
    // Beside the Mozilla roots and other added roots, too.
    let other = server().await;
    let beside = system_only(&srv)
        .webpki_roots(true)
        .add_root_certificates_pem(other.ca_pem())
        .build()
        .expect("settings");
    assert!(diagnose::verify(&beside).await.is_ok());
    // The same connection without the option: the CA is unknown.
    let without = system_only(&srv)
        .system_roots(false)
        .webpki_roots(true)
        .build()
        .expect("settings");
    assert_unknown_issuer(&without, "add the relay's CA", "without system_roots").await;
}

#[tokio::test]
async fn a_relay_whose_ca_is_not_in_the_store_gets_the_unknown_issuer_hint() {
    if in_child(
        "a_relay_whose_ca_is_not_in_the_store_gets_the_unknown_issuer_hint",
        "other-ca",
    )
    .is_none()
    {
        return;
    }
    let srv = server().await;
    let other = server().await;
    std::fs::write(store_file(), other.ca_pem()).expect("write the store");
    let settings = system_only(&srv).build().expect("settings");
    assert_unknown_issuer(&settings, "system's trust store", "another CA in the store").await;
    // The relay's CA added as a root works beside the store.
    let added = system_only(&srv)
        .add_root_certificates_pem(srv.ca_pem())
        .build()
        .expect("settings");
    assert!(diagnose::verify(&added).await.is_ok());
}

#[tokio::test]
async fn an_empty_store_is_a_clear_error() {
    if in_child("an_empty_store_is_a_clear_error", "empty").is_none() {
        return;
    }
    let srv = server().await;
    std::fs::write(store_file(), "").expect("write the store");
    let settings = system_only(&srv).build().expect("settings");
    for e in [
        Connector::new(settings.clone()).expect_err("no roots"),
        Connection::open(&settings).await.expect_err("no roots"),
    ] {
        assert!(e.is_config(), "{e}");
        assert!(e.to_string().contains("no certificates found"), "{e}");
        let hint = e.hint().unwrap_or_default();
        assert!(hint.contains("SSL_CERT_FILE="), "{hint}");
    }
    let report = diagnose::verify(&settings).await;
    assert!(report.error().is_some_and(|e| e.is_config()), "{report}");
    assert_eq!(srv.connections_total(), 0, "nothing connected");
}

#[tokio::test]
async fn a_missing_store_file_is_a_clear_error() {
    if in_child("a_missing_store_file_is_a_clear_error", "missing").is_none() {
        return;
    }
    let srv = server().await;
    let settings = system_only(&srv).build().expect("settings");
    let e = Connector::new(settings).expect_err("no roots");
    assert!(
        e.is_config() && e.to_string().contains("no certificates found"),
        "{e}"
    );
    assert!(e.hint().is_some_and(|h| h.contains("SSL_CERT_FILE=")), "{e}");
}

#[tokio::test]
async fn the_machine_store_does_not_know_the_test_ca() {
    if in_child("the_machine_store_does_not_know_the_test_ca", "os").is_none() {
        return;
    }
    let srv = server().await;
    let settings = system_only(&srv).build().expect("settings");
    // A machine with CA certificates: the test CA is not among them. A
    // bare container without any: a clear error naming the fix.
    match Connector::new(settings.clone()) {
        Ok(_) => assert_unknown_issuer(&settings, "system's trust store", "the machine's store").await,
        Err(e) => {
            assert!(
                e.is_config() && e.to_string().contains("no certificates found"),
                "{e}"
            );
            assert!(e.hint().is_some_and(|h| h.contains("ca-certificates")), "{e}");
        }
    }
}
