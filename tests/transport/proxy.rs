//! Connections through a proxy (feature `proxy`): SOCKS5 and HTTP CONNECT
//! to the in-process server through the in-process [`TestProxy`], with the
//! relay's name sent to the proxy and verified by TLS, and each proxy
//! failure at the proxy stage with its hint.
#![cfg(feature = "proxy")]

use std::time::Duration;

use relaymail::testing::{ProxyAuth, ProxyConfig, ServerConfig, TestProxy, TestServer};
use relaymail::{Connection, Error, Proxy, ProxyKind, SmtpSettingsBuilder, Stage, TlsMode};

use crate::support::*;

async fn proxy(config: ProxyConfig) -> TestProxy {
    TestProxy::start(config).await.expect("test proxy starts")
}

/// Settings for the relay `host` (the server's port), through `proxy`.
fn via(server: &TestServer, host: &str, tls: TlsMode, proxy: Proxy) -> SmtpSettingsBuilder {
    settings(server, tls).host(host).proxy(proxy)
}

fn at(kind: ProxyKind, host: &str, proxy: &TestProxy) -> Proxy {
    Proxy::new(kind, host, proxy.port())
}

const KINDS: [ProxyKind; 2] = [ProxyKind::Socks5, ProxyKind::HttpConnect];

async fn deliver(settings: relaymail::SmtpSettings) -> Result<Connection, Error> {
    let mut conn = Connection::open(&settings).await?;
    conn.send(envelope(&["ops@example.net"]), MESSAGE.to_vec())
        .await?;
    Ok(conn)
}

/// STARTTLS and implicit TLS through each kind of proxy: the message
/// arrives over TLS, the proxy was asked for the relay by name
/// (`localhost`), and the certificate — issued for `localhost` only, not
/// for the proxy's `127.0.0.1` — verified.
#[tokio::test]
async fn tls_sessions_through_each_kind_of_proxy_deliver() {
    for kind in KINDS {
        for (tls, config) in [
            (TlsMode::StartTls, ServerConfig::new().starttls(true)),
            (TlsMode::Implicit, ServerConfig::new().implicit_tls(true)),
        ] {
            let srv = server(config.cert_names(&["localhost"])).await;
            let p = proxy(ProxyConfig::new()).await;
            let s = via(&srv, "localhost", tls, at(kind, "127.0.0.1", &p))
                .build()
                .expect("settings");
            let conn = deliver(s)
                .await
                .unwrap_or_else(|e| panic!("{kind:?} {tls:?}: {e}"));
            let info = conn.info().clone();
            assert_eq!(info.peer, p.addr(), "the TCP peer is the proxy");
            let tls_info = info.tls.expect("encrypted");
            assert_eq!(tls_info.via_starttls, tls == TlsMode::StartTls);
            assert_eq!(tls_info.certificate_names, ["localhost"]);
            conn.quit().await.expect("quit");
            let m = srv.wait_for_messages(1, WAIT).await.expect("message");
            assert!(m[0].tls, "{kind:?} {tls:?}");
            assert_eq!(m[0].data, MESSAGE);
            let asked = p.requests();
            assert_eq!(asked.len(), 1, "{asked:?}");
            assert_eq!(asked[0].kind, kind);
            assert_eq!(asked[0].target, Some(("localhost".to_owned(), srv.port())));
            assert!(asked[0].by_name, "the name went to the proxy: {asked:?}");
            assert!(
                asked[0].tunnelled && asked[0].auth == ProxyAuth::None,
                "{asked:?}"
            );
        }
    }
}

/// A plain session (no TLS) through the tunnel, with an IPv4 relay
/// address: the address is what the proxy is asked for.
#[tokio::test]
async fn a_relay_address_goes_to_the_proxy_as_an_address() {
    for kind in KINDS {
        let srv = server(ServerConfig::new()).await;
        let p = proxy(ProxyConfig::new()).await;
        let s = via(&srv, "127.0.0.1", TlsMode::None, at(kind, "localhost", &p))
            .build()
            .expect("settings");
        deliver(s).await.expect("delivered").quit().await.expect("quit");
        srv.wait_for_messages(1, WAIT).await.expect("message");
        let asked = p.requests();
        assert_eq!(asked[0].target, Some(("127.0.0.1".to_owned(), srv.port())));
        assert!(!asked[0].by_name, "{asked:?}");
    }
}

/// The proxy is fine, but the relay's name is not on its certificate: the
/// TLS stage fails — the name checked is the relay's, not the proxy's
/// (`localhost`, which the certificate does cover).
#[tokio::test]
async fn a_relay_name_that_the_certificate_lacks_fails_at_tls() {
    for kind in KINDS {
        for (tls, config) in [
            (TlsMode::StartTls, ServerConfig::new().starttls(true)),
            (TlsMode::Implicit, ServerConfig::new().implicit_tls(true)),
        ] {
            let srv = server(config.cert_names(&["localhost"])).await;
            let p = proxy(ProxyConfig::new()).await;
            let s = via(&srv, "127.0.0.1", tls, at(kind, "localhost", &p))
                .build()
                .expect("settings");
            let e = deliver(s)
                .await
                .expect_err("the certificate is not for 127.0.0.1");
            assert_eq!(e.stage(), Some(Stage::Tls), "{kind:?} {tls:?}: {e}");
            assert!(e.is_tls(), "{e}");
            assert!(
                e.to_string().contains("localhost"),
                "names what the certificate covers: {e}"
            );
            let asked = p.wait_for_requests(1, WAIT).await.expect("asked");
            assert!(asked[0].tunnelled, "the proxy did its part: {asked:?}");
            assert!(srv.messages().is_empty());
        }
    }
}

const PROXY_PASSWORD: &str = "Pr0xy-S3cret-pw";

fn shown(e: &Error) -> String {
    format!("{e}\n{e:?}\n{e:#?}\n{:?}", e.hint())
}

#[tokio::test]
async fn proxy_credentials_right_and_wrong() {
    for kind in KINDS {
        let srv = server(ServerConfig::new().starttls(true)).await;
        let p = proxy(ProxyConfig::new().user("app", PROXY_PASSWORD)).await;
        let good = via(
            &srv,
            "localhost",
            TlsMode::StartTls,
            at(kind, "127.0.0.1", &p).with_credentials("app", PROXY_PASSWORD),
        )
        .build()
        .expect("settings");
        assert!(!format!("{good:?}").contains(PROXY_PASSWORD));
        assert!(!good.url().to_string().contains(PROXY_PASSWORD));
        deliver(good)
            .await
            .expect("right credentials")
            .quit()
            .await
            .expect("quit");
        srv.wait_for_messages(1, WAIT).await.expect("message");
        assert_eq!(
            p.requests()[0].auth,
            ProxyAuth::Accepted { user: "app".into() },
            "{kind:?}"
        );

        let wrong_password = "Wr0ng-Pr0xy-pw";
        let bad = via(
            &srv,
            "localhost",
            TlsMode::StartTls,
            at(kind, "127.0.0.1", &p).with_credentials("app", wrong_password),
        )
        .build()
        .expect("settings");
        let e = deliver(bad).await.expect_err("wrong credentials");
        assert_eq!(e.stage(), Some(Stage::Proxy), "{e}");
        assert!(e.is_auth() && e.is_permanent(), "{e:?}");
        assert_eq!(e.hint(), Some("check the proxy user name and password"), "{e}");
        let text = shown(&e);
        assert!(
            !text.contains(wrong_password) && !text.contains(PROXY_PASSWORD),
            "{text}"
        );
        assert!(text.contains(&p.addr().to_string()), "names the proxy: {text}");
        assert_eq!(
            p.wait_for_requests(2, WAIT).await.expect("asked")[1].auth,
            ProxyAuth::Refused { user: "app".into() }
        );

        // No credentials at all: the hint asks for them.
        let none = via(&srv, "localhost", TlsMode::StartTls, at(kind, "127.0.0.1", &p))
            .build()
            .expect("settings");
        let e = deliver(none).await.expect_err("credentials needed");
        assert_eq!(e.stage(), Some(Stage::Proxy), "{e}");
        assert!(e.is_auth(), "{e:?}");
        assert!(
            e.hint()
                .is_some_and(|h| h.contains("requires a user name and password")),
            "{e}"
        );
        assert_eq!(srv.messages().len(), 1, "only the first connection got through");
    }
}

/// What the proxy answers instead of a tunnel, and what the client makes of
/// it: (proxy, relay host, stage check, expectation on the error).
#[tokio::test]
async fn proxy_refusals_are_clear_errors() {
    let srv = server(ServerConfig::new()).await;
    let relay = |host: &str| format!("{host}:{}", srv.port());
    type Check = fn(&Error) -> bool;
    let cases: Vec<(ProxyKind, ProxyConfig, &str, Check, &str)> = vec![
        // The test proxy's own rule: nothing but loopback.
        (
            ProxyKind::HttpConnect,
            ProxyConfig::new(),
            "192.0.2.1",
            Error::is_rejected,
            "refuses to connect",
        ),
        (
            ProxyKind::Socks5,
            ProxyConfig::new(),
            "192.0.2.1",
            Error::is_rejected,
            "refuses to connect",
        ),
        (
            ProxyKind::HttpConnect,
            ProxyConfig::new().http_answer("403 Forbidden"),
            "localhost",
            Error::is_rejected,
            "refuses to connect",
        ),
        (
            ProxyKind::HttpConnect,
            ProxyConfig::new().http_answer("502 Bad Gateway"),
            "localhost",
            Error::is_transient,
            "could not reach the relay",
        ),
        (
            ProxyKind::HttpConnect,
            ProxyConfig::new().http_answer("503 Service Unavailable"),
            "localhost",
            Error::is_transient,
            "could not reach the relay",
        ),
        (
            ProxyKind::Socks5,
            ProxyConfig::new().socks_reply(2),
            "localhost",
            Error::is_rejected,
            "refuses to connect",
        ),
        (
            ProxyKind::Socks5,
            ProxyConfig::new().socks_reply(5),
            "localhost",
            Error::is_transient,
            "could not reach the relay",
        ),
        (
            ProxyKind::Socks5,
            ProxyConfig::new().socks_reply(4),
            "localhost",
            Error::is_transient,
            "could not reach the relay",
        ),
        // A name the proxy cannot resolve.
        (
            ProxyKind::Socks5,
            ProxyConfig::new(),
            "relay.example.invalid",
            Error::is_transient,
            "could not reach the relay",
        ),
        (
            ProxyKind::HttpConnect,
            ProxyConfig::new(),
            "relay.example.invalid",
            Error::is_transient,
            "could not reach the relay",
        ),
    ];
    for (kind, config, host, check, hint) in cases {
        let p = proxy(config.clone()).await;
        let s = via(&srv, host, TlsMode::None, at(kind, "127.0.0.1", &p))
            .build()
            .expect("settings");
        let e = deliver(s).await.expect_err("refused");
        let what = format!("{kind:?} {config:?} {host}");
        assert_eq!(e.stage(), Some(Stage::Proxy), "{what}: {e}");
        assert!(check(&e), "{what}: {e:?}");
        let h = e.hint().unwrap_or_else(|| panic!("{what}: no hint: {e}"));
        assert!(h.contains(hint), "{what}: {h}");
        assert!(h.contains(&relay(host)), "{what}: the hint names the relay: {h}");
        assert!(h.contains(&p.addr().to_string()), "{what}: and the proxy: {h}");
        let asked = p.wait_for_requests(1, WAIT).await.expect("asked");
        assert!(!asked[0].tunnelled, "{what}: {asked:?}");
    }
    assert!(srv.sessions().is_empty(), "nothing reached the relay");
}

#[tokio::test]
async fn a_proxy_that_is_not_listening_is_named() {
    let srv = server(ServerConfig::new()).await;
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    for kind in KINDS {
        let s = via(
            &srv,
            "localhost",
            TlsMode::None,
            Proxy::new(kind, "127.0.0.1", free),
        )
        .build()
        .expect("settings");
        let e = deliver(s).await.expect_err("no proxy there");
        assert_eq!(e.stage(), Some(Stage::Proxy), "{e}");
        assert!(e.is_io() && e.is_transient(), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&format!("127.0.0.1:{free}")), "{text}");
        assert!(!text.contains(&srv.port().to_string()), "not the relay: {text}");
        assert!(
            e.hint().is_some_and(|h| h.contains("proxy host and port")),
            "{text}"
        );
    }
    assert!(srv.sessions().is_empty());
}

#[tokio::test]
async fn a_proxy_that_never_answers_times_out_in_its_stage() {
    let srv = server(ServerConfig::new()).await;
    let p = proxy(ProxyConfig::new().stall(true)).await;
    for kind in KINDS {
        let s = via(&srv, "localhost", TlsMode::None, at(kind, "127.0.0.1", &p))
            .timeout(Duration::from_millis(300))
            .build()
            .expect("settings");
        let e = tokio::time::timeout(WAIT, deliver(s))
            .await
            .expect("ends within the connect timeout")
            .expect_err("stalled");
        assert_eq!(e.stage(), Some(Stage::Proxy), "{e}");
        assert!(e.is_timeout(), "{e:?}");
    }
}

/// A proxy of the other kind (here the SMTP server itself, greeting first):
/// a malformed reply at once, not a timeout.
#[tokio::test]
async fn a_server_that_is_not_a_proxy_gives_a_malformed_reply_error() {
    let srv = server(ServerConfig::new()).await;
    for kind in KINDS {
        let s = via(
            &srv,
            "localhost",
            TlsMode::None,
            Proxy::new(kind, "127.0.0.1", srv.port()),
        )
        .build()
        .expect("settings");
        let e = tokio::time::timeout(WAIT, deliver(s))
            .await
            .expect("does not wait for a timeout")
            .expect_err("not a proxy");
        assert_eq!(e.stage(), Some(Stage::Proxy), "{e}");
        assert!(e.is_protocol() && !e.is_timeout(), "{kind:?}: {e:?}");
        assert!(
            e.hint()
                .is_some_and(|h| h.contains(&format!("is a {} proxy", kind_label(kind)))),
            "{e}"
        );
    }
}

fn kind_label(kind: ProxyKind) -> &'static str {
    match kind {
        ProxyKind::Socks5 => "SOCKS5",
        _ => "HTTP CONNECT",
    }
}
