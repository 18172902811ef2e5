//! Diagnosis through a proxy (feature `proxy`): a working setup reports the
//! proxy stage with its timing in place of resolve and connect; each proxy
//! failure is a row of the table — its stage and its hint.
#![cfg(feature = "proxy")]

use relaymail::diagnose;
use relaymail::testing::{ProxyConfig, ServerConfig, TestProxy};
use relaymail::{Proxy, Stage, TlsMode};

use super::{check, server, settings, trusting, TIMEOUT};

async fn proxy(config: ProxyConfig) -> TestProxy {
    TestProxy::start(config).await.expect("proxy")
}

const PROXY_PASSWORD: &str = "Diag-Pr0xy-pw";

#[tokio::test]
async fn a_working_setup_through_a_proxy_reports_the_proxy_stage() {
    let srv = server(
        ServerConfig::new()
            .starttls(true)
            .cert_names(&["localhost"])
            .auth_mechanisms(&["PLAIN"])
            .user("app", "s3cret-diag"),
    )
    .await;
    let p = proxy(ProxyConfig::new().user("px", PROXY_PASSWORD)).await;
    let s = trusting(&srv, TlsMode::StartTls)
        .host("localhost")
        .credentials("app", "s3cret-diag")
        .proxy(Proxy::socks5("127.0.0.1", p.port()).with_credentials("px", PROXY_PASSWORD))
        .build()
        .expect("settings");
    let report = diagnose::send_test(&s, "admin@example.net", None).await;
    assert!(report.is_ok(), "{report}");
    let stages: Vec<Stage> = report.stages().iter().map(|s| s.stage).collect();
    assert_eq!(stages.first(), Some(&Stage::Proxy), "{report}");
    for stage in [
        Stage::Greeting,
        Stage::Ehlo,
        Stage::StartTls,
        Stage::Tls,
        Stage::Auth,
        Stage::Quit,
    ] {
        assert!(stages.contains(&stage), "{stage:?} in {stages:?}");
    }
    assert!(
        !stages.contains(&Stage::Resolve) && !stages.contains(&Stage::Connect),
        "the relay is neither resolved nor connected to here: {report}"
    );
    assert!(report.stages().iter().all(|s| s.ok), "{report}");
    let text = report.to_string();
    assert!(
        text.starts_with(&format!(
            "SMTP check of localhost:{} via the SOCKS5 proxy 127.0.0.1:{}\n  proxy ",
            srv.port(),
            p.port()
        )),
        "{text}"
    );
    assert!(!text.contains(PROXY_PASSWORD) && !format!("{report:?}").contains(PROXY_PASSWORD));
    let got = srv.wait_for_messages(1, TIMEOUT).await.expect("test email");
    let body = String::from_utf8_lossy(&got[0].data);
    assert!(
        body.contains(&format!("Proxy: SOCKS5 127.0.0.1:{}", p.port())),
        "{body}"
    );
    assert!(!body.contains(PROXY_PASSWORD));
}

#[tokio::test]
async fn proxy_not_listening() {
    let srv = server(ServerConfig::new()).await;
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let s = settings(srv.port(), TlsMode::None)
        .proxy(Proxy::http_connect("127.0.0.1", free))
        .build()
        .expect("settings");
    let r = check(
        diagnose::verify(&s),
        Stage::Proxy,
        "check the proxy host and port",
    )
    .await;
    assert!(r.to_string().contains(&format!("127.0.0.1:{free}")), "{r}");
}

#[tokio::test]
async fn proxy_credentials_wrong() {
    let srv = server(ServerConfig::new()).await;
    let p = proxy(ProxyConfig::new().user("px", PROXY_PASSWORD)).await;
    for kind in [relaymail::ProxyKind::Socks5, relaymail::ProxyKind::HttpConnect] {
        let s = settings(srv.port(), TlsMode::None)
            .proxy(Proxy::new(kind, "127.0.0.1", p.port()).with_credentials("px", "wrong-Pr0xy-pw"))
            .build()
            .expect("settings");
        let r = check(
            diagnose::verify(&s),
            Stage::Proxy,
            "check the proxy user name and password",
        )
        .await;
        assert!(!format!("{r}{r:?}").contains("wrong-Pr0xy-pw"));
    }
}

#[tokio::test]
async fn proxy_credentials_missing() {
    let srv = server(ServerConfig::new()).await;
    let p = proxy(ProxyConfig::new().user("px", PROXY_PASSWORD)).await;
    let s = settings(srv.port(), TlsMode::None)
        .proxy(Proxy::http_connect("127.0.0.1", p.port()))
        .build()
        .expect("settings");
    check(
        diagnose::verify(&s),
        Stage::Proxy,
        "the proxy requires a user name and password",
    )
    .await;
}

#[tokio::test]
async fn proxy_refuses_the_relay() {
    let srv = server(ServerConfig::new()).await;
    let p = proxy(ProxyConfig::new().http_answer("403 Forbidden")).await;
    let s = settings(srv.port(), TlsMode::None)
        .proxy(Proxy::http_connect("127.0.0.1", p.port()))
        .build()
        .expect("settings");
    check(
        diagnose::verify(&s),
        Stage::Proxy,
        &format!("refuses to connect to the relay 127.0.0.1:{}", srv.port()),
    )
    .await;
}

#[tokio::test]
async fn proxy_cannot_reach_the_relay() {
    let srv = server(ServerConfig::new()).await;
    let p = proxy(ProxyConfig::new().socks_reply(5)).await;
    let s = settings(srv.port(), TlsMode::None)
        .proxy(Proxy::socks5("127.0.0.1", p.port()))
        .build()
        .expect("settings");
    check(
        diagnose::verify(&s),
        Stage::Proxy,
        &format!("could not reach the relay 127.0.0.1:{}", srv.port()),
    )
    .await;
}

#[tokio::test]
async fn proxy_of_another_kind() {
    // An HTTP proxy configured as SOCKS5: here, the SMTP server itself.
    let srv = server(ServerConfig::new()).await;
    let s = settings(srv.port(), TlsMode::None)
        .proxy(Proxy::socks5("127.0.0.1", srv.port()))
        .build()
        .expect("settings");
    check(diagnose::verify(&s), Stage::Proxy, "is a SOCKS5 proxy").await;
}

#[tokio::test]
async fn proxy_never_answers() {
    let srv = server(ServerConfig::new()).await;
    let p = proxy(ProxyConfig::new().stall(true)).await;
    let s = settings(srv.port(), TlsMode::None)
        .proxy(Proxy::http_connect("127.0.0.1", p.port()))
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .expect("settings");
    let r = check(diagnose::verify(&s), Stage::Proxy, "did not finish its handshake").await;
    assert!(r.error().is_some_and(|e| e.is_timeout()), "{r}");
}
