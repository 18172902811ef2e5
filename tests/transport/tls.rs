//! TLS modes, STARTTLS policies and certificate checks.

use relaymail::testing::{Fault, ServerConfig};
use relaymail::{Connection, Stage, TlsMode};

use crate::support::*;

#[tokio::test]
async fn plain_none() {
    let srv = server(ServerConfig::new()).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    assert!(conn.info().tls.is_none());
    conn.send(envelope(&["ops@example.net"]), MESSAGE.to_vec())
        .await
        .expect("delivered");
    conn.quit().await.expect("quit");
    let m = srv.wait_for_messages(1, WAIT).await.expect("message");
    assert!(!m[0].tls);
    assert_eq!(m[0].data, MESSAGE);
}

#[tokio::test]
async fn starttls_required_upgrades_and_says_ehlo_again() {
    let srv = server(ServerConfig::new().starttls(true)).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::StartTls).build().expect("settings"))
        .await
        .expect("connects");
    let tls = conn.info().tls.clone().expect("encrypted");
    assert!(tls.via_starttls);
    assert!(tls.version.starts_with("TLSv1."), "{}", tls.version);
    conn.send(envelope(&["ops@example.net"]), MESSAGE.to_vec())
        .await
        .expect("delivered");
    conn.quit().await.expect("quit");
    let m = srv.wait_for_messages(1, WAIT).await.expect("message");
    assert!(m[0].tls, "the message travelled over TLS");
    let s = &srv.sessions()[0];
    let verbs: Vec<&str> = s
        .commands
        .iter()
        .map(|c| c.line.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(&verbs[..3], ["EHLO", "STARTTLS", "EHLO"]);
    assert!(s
        .commands
        .iter()
        .filter(|c| c.line.starts_with("MAIL"))
        .all(|c| c.tls));
}

#[tokio::test]
async fn implicit_tls() {
    let srv = server(ServerConfig::new().implicit_tls(true)).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::Implicit).build().expect("settings"))
        .await
        .expect("connects");
    assert!(!conn.info().tls.as_ref().expect("encrypted").via_starttls);
    conn.send(envelope(&["ops@example.net"]), MESSAGE.to_vec())
        .await
        .expect("delivered");
    assert!(srv.wait_for_messages(1, WAIT).await.expect("message")[0].tls);
}

#[tokio::test]
async fn starttls_required_but_not_offered_fails_closed() {
    let srv = server(ServerConfig::new()).await;
    let e = Connection::open(&settings(&srv, TlsMode::StartTls).build().expect("settings"))
        .await
        .expect_err("fails");
    assert!(e.is_tls(), "{e}");
    assert_eq!(e.stage(), Some(Stage::StartTls));
    let s = srv.wait_for_closed_sessions(1, WAIT).await.expect("closed");
    assert!(
        !s[0].commands.iter().any(|c| c.line.starts_with("MAIL")),
        "no mail in clear text"
    );
}

#[tokio::test]
async fn starttls_refused_under_each_policy() {
    for reply in [
        "454 4.7.0 TLS not available due to local problem",
        "502 5.5.1 Error: command not implemented",
    ] {
        let config = ServerConfig::new()
            .starttls(true)
            .fault(Fault::on_command("STARTTLS").reply(reply));
        let srv = server(config.clone()).await;
        let e = Connection::open(&settings(&srv, TlsMode::StartTls).build().expect("settings"))
            .await
            .expect_err("required fails closed");
        assert!(e.is_tls(), "{e}");
        let srv = server(config).await;
        let mut conn = Connection::open(
            &settings(&srv, TlsMode::StartTlsOpportunistic)
                .build()
                .expect("settings"),
        )
        .await
        .expect("opportunistic continues");
        assert!(conn.info().tls.is_none());
        assert!(conn
            .info()
            .tls_skipped
            .as_deref()
            .is_some_and(|r| r.contains(&reply[..3])));
        conn.send(envelope(&["ops@example.net"]), MESSAGE.to_vec())
            .await
            .expect("delivered in clear text");
    }
}

#[tokio::test]
async fn opportunistic_without_offer_continues_in_clear_text() {
    let srv = server(ServerConfig::new()).await;
    let conn = Connection::open(
        &settings(&srv, TlsMode::StartTlsOpportunistic)
            .build()
            .expect("settings"),
    )
    .await
    .expect("connects");
    assert_eq!(
        conn.info().tls_skipped.as_deref(),
        Some("the server does not offer STARTTLS")
    );
}

#[tokio::test]
async fn bytes_after_starttls_220_abort() {
    let config = ServerConfig::new()
        .starttls(true)
        .fault(Fault::on_command("STARTTLS").append(b"250-injected\r\n250 PIPELINING\r\n"));
    let srv = server(config).await;
    let e = Connection::open(&settings(&srv, TlsMode::StartTls).build().expect("settings"))
        .await
        .expect_err("aborts");
    assert!(e.is_tls() && e.to_string().contains("RFC 3207"), "{e}");
}

#[tokio::test]
async fn untrusted_certificate() {
    let srv = server(ServerConfig::new().implicit_tls(true).untrusted_cert(true)).await;
    let e = Connection::open(&settings(&srv, TlsMode::Implicit).build().expect("settings"))
        .await
        .expect_err("refused");
    assert!(e.is_tls() && e.is_permanent(), "{e}");
    assert_eq!(e.stage(), Some(Stage::Tls));
    assert!(
        e.hint()
            .is_some_and(|h| h.contains("not signed by a trusted authority")),
        "{e}"
    );
    // The named opt-out accepts it.
    let s = settings(&srv, TlsMode::Implicit)
        .dangerous(|d| d.accept_invalid_certs(true))
        .build()
        .expect("settings");
    Connection::open(&s).await.expect("accepted when told to");
}

#[tokio::test]
async fn certificate_for_another_name() {
    let srv = server(
        ServerConfig::new()
            .starttls(true)
            .cert_names(&["mail.other.example"]),
    )
    .await;
    let e = Connection::open(&settings(&srv, TlsMode::StartTls).build().expect("settings"))
        .await
        .expect_err("refused");
    assert!(e.is_tls(), "{e}");
    assert!(
        e.hint().is_some_and(|h| h.contains("mail.other.example")),
        "names the certificate's names: {e}"
    );
    let s = settings(&srv, TlsMode::StartTls)
        .dangerous(|d| d.accept_invalid_hostnames(true))
        .build()
        .expect("settings");
    Connection::open(&s).await.expect("accepted when told to");
}

#[tokio::test]
async fn trusted_certificate_by_host_name() {
    let srv = server(ServerConfig::new().implicit_tls(true)).await;
    let s = settings(&srv, TlsMode::Implicit)
        .host("localhost")
        .build()
        .expect("settings");
    Connection::open(&s)
        .await
        .expect("localhost is on the certificate");
}

#[tokio::test]
async fn implicit_tls_against_plain_smtp_names_the_fix() {
    let srv = server(ServerConfig::new()).await;
    let e = Connection::open(&settings(&srv, TlsMode::Implicit).build().expect("settings"))
        .await
        .expect_err("fails");
    assert!(e.hint().is_some_and(|h| h.contains("speaks plain SMTP")), "{e}");
}
