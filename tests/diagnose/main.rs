//! The diagnosis table: each common misconfiguration, produced against the
//! in-process server (or a raw loopback listener), returns within its
//! timeout with the stage and the likely fix; and a working setup reports
//! every stage.

mod client_cert;
mod kept_password;
mod proxy;

use std::time::Duration;

use relaymail::diagnose::{self, Report};
use relaymail::testing::{Fault, ServerConfig, TestServer};
use relaymail::{SmtpSettings, SmtpSettingsBuilder, Stage, TlsMode};

/// Short timeouts: every case must end within them.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A hang (far past the timeout) fails the test instead of blocking it.
const HANG: Duration = Duration::from_secs(30);

async fn server(config: ServerConfig) -> TestServer {
    TestServer::start(config).await.expect("server")
}

fn settings(port: u16, tls: TlsMode) -> SmtpSettingsBuilder {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(port))
        .tls(tls)
        .sender("app@example.com")
        .timeout(TIMEOUT)
}

fn trusting(srv: &TestServer, tls: TlsMode) -> SmtpSettingsBuilder {
    settings(srv.port(), tls)
        .add_root_certificates_pem(srv.ca_pem())
        .webpki_roots(false)
}

async fn check(report: impl std::future::Future<Output = Report>, stage: Stage, hint: &str) -> Report {
    let report = tokio::time::timeout(HANG, report)
        .await
        .expect("returns, does not hang");
    let e = report
        .error()
        .unwrap_or_else(|| panic!("expected a failure at {stage:?}:\n{report}"));
    assert_eq!(e.stage(), Some(stage), "{report}");
    let h = e.hint().unwrap_or_else(|| panic!("no hint: {e}"));
    assert!(h.contains(hint), "hint {h:?} lacks {hint:?}");
    let last = report.stages().last().expect("a stage");
    assert!(
        !last.ok && last.stage == stage,
        "the failing stage is the last one:\n{report}"
    );
    assert!(report.to_string().contains("FAILED"), "{report}");
    // The table in the closing note comes from this line (--nocapture).
    eprintln!("DIAGNOSIS {e}");
    report
}

#[tokio::test]
async fn a_working_setup_reports_every_stage() {
    let srv = server(
        ServerConfig::new()
            .starttls(true)
            .auth_mechanisms(&["PLAIN"])
            .user("app", "s3cret-diag")
            .require_auth(true),
    )
    .await;
    let s = trusting(&srv, TlsMode::StartTls)
        .credentials("app", "s3cret-diag")
        .build()
        .expect("settings");
    let report = diagnose::send_test(&s, "admin@example.net", None).await;
    assert!(report.is_ok(), "{report}");
    let stages: Vec<Stage> = report.stages().iter().map(|s| s.stage).collect();
    for stage in [
        Stage::Resolve,
        Stage::Connect,
        Stage::Greeting,
        Stage::Ehlo,
        Stage::StartTls,
        Stage::Tls,
        Stage::Auth,
        Stage::Mail,
        Stage::Quit,
    ] {
        assert!(stages.contains(&stage), "{stage:?} in {stages:?}");
    }
    assert!(report.stages().iter().all(|s| s.ok));
    let greeting = report
        .stages()
        .iter()
        .find(|s| s.stage == Stage::Greeting)
        .expect("greeting");
    assert_eq!(greeting.replies[0].code().value(), 220);
    let tls = report.tls().expect("TLS");
    assert!(
        tls.via_starttls && tls.certificate_names.iter().any(|n| n == "localhost"),
        "{tls:?}"
    );
    assert_eq!(report.auth_mechanism().map(|m| m.name()), Some("PLAIN"));
    let text = report.to_string();
    assert!(!text.contains("s3cret-diag") && !format!("{report:?}").contains("s3cret-diag"));
    let got = srv.wait_for_messages(1, TIMEOUT).await.expect("test email");
    let body = String::from_utf8_lossy(&got[0].data);
    assert!(
        body.contains("SMTP settings test") && body.contains("Authentication: PLAIN"),
        "{body}"
    );
    assert!(!body.contains("s3cret-diag"));
    // verify() stops before MAIL.
    let report = diagnose::verify(&s).await;
    assert!(
        report.is_ok() && !report.stages().iter().any(|s| s.stage == Stage::Mail),
        "{report}"
    );
}

#[tokio::test]
async fn implicit_tls_against_a_plain_port() {
    let srv = server(ServerConfig::new()).await;
    let s = trusting(&srv, TlsMode::Implicit).build().expect("settings");
    check(diagnose::verify(&s), Stage::Tls, "speaks plain SMTP").await;
}

#[tokio::test]
async fn starttls_or_none_against_an_implicit_tls_port() {
    let srv = server(ServerConfig::new().implicit_tls(true)).await;
    for mode in [TlsMode::StartTls, TlsMode::None] {
        let s = trusting(&srv, mode).build().expect("settings");
        check(diagnose::verify(&s), Stage::Greeting, "implicit TLS").await;
    }
}

#[tokio::test]
async fn nothing_listening() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let s = settings(port, TlsMode::None).build().expect("settings");
    check(diagnose::verify(&s), Stage::Connect, "nothing is listening").await;
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn every_relay_down() {
    let (primary, backup) = (closed_port(), closed_port());
    let s = settings(primary, TlsMode::None)
        .backup_relays([format!("127.0.0.1:{backup}")])
        .build()
        .expect("settings");
    let r = check(diagnose::verify(&s), Stage::Connect, "every relay failed").await;
    assert_eq!(r.failovers().len(), 1);
    assert_eq!(r.failovers()[0].0.port(), primary);
    assert!(r.relay().is_none());
    let shown = r.to_string();
    assert!(
        shown.contains(&format!("relay 127.0.0.1:{primary} passed over at connect")),
        "{shown}"
    );
}

#[tokio::test]
async fn a_backup_relay_reached_is_named_in_the_report() {
    let busy = server(ServerConfig::new().fault(Fault::on_greeting().reply("421 4.3.2 Shutting down"))).await;
    let backup = server(ServerConfig::new()).await;
    let s = settings(busy.port(), TlsMode::None)
        .backup_relays([format!("127.0.0.1:{}", backup.port())])
        .build()
        .expect("settings");
    let r = diagnose::send_test(&s, "ops@example.net", None).await;
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.relay().map(|r| r.port()), Some(backup.port()));
    assert_eq!(
        r.delivery().and_then(|d| d.relay()).map(|r| r.port()),
        Some(backup.port())
    );
    let (passed, why) = &r.failovers()[0];
    assert_eq!(passed.port(), busy.port());
    assert_eq!(why.stage(), Some(Stage::Greeting));
    let shown = r.to_string();
    assert!(
        shown.contains(&format!("relay used: 127.0.0.1:{}", backup.port())),
        "{shown}"
    );
    assert!(shown.contains("passed over at greeting"), "{shown}");
    let from = relaymail::diagnose::verify(
        &s.to_builder()
            .source_address(std::net::IpAddr::from([127, 0, 0, 3]))
            .build()
            .expect("settings"),
    )
    .await;
    assert!(
        from.to_string()
            .lines()
            .next()
            .expect("header")
            .ends_with(" from 127.0.0.3"),
        "{from}"
    );
    let got = backup.messages();
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.contains(&format!("Relay: 127.0.0.1:{}", backup.port())),
        "{text}"
    );
}

#[tokio::test]
async fn a_name_that_does_not_resolve() {
    let s = SmtpSettings::builder()
        .host("smtp.relay.invalid")
        .sender("app@example.com")
        .timeout(TIMEOUT)
        .build()
        .expect("settings");
    check(diagnose::verify(&s), Stage::Resolve, "host name").await;
}

#[tokio::test]
async fn certificate_for_another_name() {
    let srv = server(
        ServerConfig::new()
            .starttls(true)
            .cert_names(&["mail.example.org"]),
    )
    .await;
    let s = trusting(&srv, TlsMode::StartTls).build().expect("settings");
    check(diagnose::verify(&s), Stage::Tls, "mail.example.org").await;
}

#[tokio::test]
async fn untrusted_certificate() {
    let srv = server(ServerConfig::new().implicit_tls(true)).await;
    let s = settings(srv.port(), TlsMode::Implicit).build().expect("settings");
    check(diagnose::verify(&s), Stage::Tls, "trusted").await;
}

#[tokio::test]
async fn auth_rejected() {
    let srv = server(
        ServerConfig::new()
            .starttls(true)
            .auth_mechanisms(&["PLAIN"])
            .user("app", "right"),
    )
    .await;
    let s = trusting(&srv, TlsMode::StartTls)
        .credentials("app", "wrong-pw")
        .build()
        .expect("settings");
    let r = check(diagnose::verify(&s), Stage::Auth, "user name and password").await;
    assert_eq!(
        r.error().and_then(|e| e.reply()).map(|r| r.code().value()),
        Some(535)
    );
    assert!(!r.to_string().contains("wrong-pw"));
}

#[tokio::test]
async fn auth_required_but_no_credentials() {
    let srv = server(
        ServerConfig::new()
            .starttls(true)
            .auth_mechanisms(&["PLAIN"])
            .user("app", "pw")
            .require_auth(true),
    )
    .await;
    let s = trusting(&srv, TlsMode::StartTls).build().expect("settings");
    check(
        diagnose::send_test(&s, "admin@example.net", None),
        Stage::Mail,
        "requires authentication",
    )
    .await;
}

#[tokio::test]
async fn auth_not_offered_but_credentials_configured() {
    let srv = server(ServerConfig::new().starttls(true)).await;
    let s = trusting(&srv, TlsMode::StartTls)
        .credentials("app", "pw")
        .build()
        .expect("settings");
    check(diagnose::verify(&s), Stage::Auth, "without a login").await;
}

#[tokio::test]
async fn relay_denied() {
    let srv = server(ServerConfig::new().reject_recipient(
        "someone@example.net",
        "554 5.7.1 <someone@example.net>: Relay access denied",
    ))
    .await;
    let s = settings(srv.port(), TlsMode::None).build().expect("settings");
    check(
        diagnose::send_test(&s, "someone@example.net", None),
        Stage::Rcpt,
        "does not relay",
    )
    .await;
}

#[tokio::test]
async fn sender_rejected() {
    let srv =
        server(ServerConfig::new().reject_sender("app@example.com", "553 5.7.1 Sender address rejected"))
            .await;
    let s = settings(srv.port(), TlsMode::None).build().expect("settings");
    check(
        diagnose::send_test(&s, "admin@example.net", None),
        Stage::Mail,
        "sender address",
    )
    .await;
}

#[tokio::test]
async fn message_over_size() {
    let srv = server(ServerConfig::new().size_limit(Some(200))).await;
    let s = settings(srv.port(), TlsMode::None).build().expect("settings");
    let r = check(
        diagnose::send_test(&s, "admin@example.net", None),
        Stage::Mail,
        "shrink",
    )
    .await;
    assert!(r.to_string().contains("SIZE"), "{r}");
}

#[tokio::test]
async fn server_closes_after_greeting() {
    let srv = server(ServerConfig::new().fault(Fault::on_command("EHLO").drop_connection())).await;
    let s = settings(srv.port(), TlsMode::None).build().expect("settings");
    check(diagnose::verify(&s), Stage::Ehlo, "right after its greeting").await;
}

#[tokio::test]
async fn greeting_never_comes() {
    let srv = server(ServerConfig::new().fault(Fault::on_greeting().stall())).await;
    let s = settings(srv.port(), TlsMode::None).build().expect("settings");
    let r = check(diagnose::verify(&s), Stage::Greeting, "no greeting").await;
    assert!(r.error().is_some_and(|e| e.is_timeout()));
}

#[tokio::test]
async fn server_text_in_the_report_is_escaped() {
    // A greeting carrying terminal escapes: the report that an admin reads
    // in a terminal or a log shows them escaped.
    let srv = server(ServerConfig::new().greeting("220 relay \u{1b}[2J\u{7} ready")).await;
    let report = diagnose::verify(&settings(srv.port(), TlsMode::None).build().expect("settings")).await;
    let shown = report.to_string();
    assert!(!shown.chars().any(|c| c == '\u{1b}' || c == '\u{7}'), "{shown:?}");
    assert!(shown.contains("\\u{1b}"), "{shown}");
}
