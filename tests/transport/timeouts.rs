//! Every phase's timeout, with short explicit timeouts and stalled servers
//! (no sleeping in the tests: the server stalls, the client's timer fires).

use std::time::Duration;

use relaymail::testing::{Fault, ServerConfig};
use relaymail::{Connection, Stage, Timeouts, TlsMode};

use crate::support::*;

const SHORT: Duration = Duration::from_millis(300);

fn short(phase: impl Fn(&mut Timeouts)) -> Timeouts {
    let mut t = Timeouts::all(Duration::from_secs(5));
    phase(&mut t);
    t
}

#[tokio::test]
async fn greeting_never_comes() {
    let srv = server(ServerConfig::new().fault(Fault::on_greeting().stall())).await;
    let s = settings(&srv, TlsMode::StartTls)
        .timeouts(short(|t| t.greeting = SHORT))
        .build()
        .expect("settings");
    let e = Connection::open(&s).await.expect_err("times out");
    assert!(e.is_timeout() && e.is_transient(), "{e}");
    assert_eq!(e.stage(), Some(Stage::Greeting));
    assert!(e.hint().is_some_and(|h| h.contains("implicit TLS")), "{e}");
}

#[tokio::test]
async fn starttls_against_an_implicit_tls_port() {
    let srv = server(ServerConfig::new().implicit_tls(true)).await;
    let s = settings(&srv, TlsMode::StartTls)
        .timeouts(short(|t| t.greeting = SHORT))
        .build()
        .expect("settings");
    let e = Connection::open(&s).await.expect_err("no greeting");
    assert_eq!(e.stage(), Some(Stage::Greeting));
    assert!(e.hint().is_some_and(|h| h.contains("implicit TLS")), "{e}");
}

#[tokio::test]
async fn command_reply_stalls() {
    let srv = server(ServerConfig::new().fault(Fault::on_command("MAIL").stall())).await;
    let s = settings(&srv, TlsMode::None)
        .timeouts(short(|t| t.command = SHORT))
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    let e = conn
        .send(envelope(&["a@example.net"]), MESSAGE.to_vec())
        .await
        .expect_err("times out");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.stage(), Some(Stage::Mail));
    assert!(!e.body_was_sent());
    assert!(!conn.is_usable(), "a timed-out connection is never reused");
    assert!(conn
        .send(envelope(&["a@example.net"]), MESSAGE.to_vec())
        .await
        .is_err());
}

#[tokio::test]
async fn ehlo_reply_stalls() {
    let srv = server(ServerConfig::new().fault(Fault::on_command("EHLO").stall())).await;
    let s = settings(&srv, TlsMode::None)
        .timeouts(short(|t| t.command = SHORT))
        .build()
        .expect("settings");
    let e = Connection::open(&s).await.expect_err("times out");
    assert!(e.is_timeout());
    assert_eq!(e.stage(), Some(Stage::Ehlo));
}

#[tokio::test]
async fn final_reply_stalls_after_the_body() {
    let srv = server(ServerConfig::new().fault(Fault::on_end_of_data().stall())).await;
    let s = settings(&srv, TlsMode::None)
        .timeouts(short(|t| t.final_reply = SHORT))
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    let e = conn
        .send(envelope(&["a@example.net"]), MESSAGE.to_vec())
        .await
        .expect_err("times out");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.stage(), Some(Stage::EndOfData));
    assert!(e.body_was_sent(), "the server may have the message");
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn tls_handshake_stalls() {
    // A listener that accepts and never answers the ClientHello.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hold = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 1024];
        let mut socket = socket;
        while tokio::io::AsyncReadExt::read(&mut socket, &mut buf)
            .await
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    });
    let s = relaymail::SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(port))
        .tls(TlsMode::Implicit)
        .sender("a@example.com")
        .timeouts(short(|t| t.tls_handshake = SHORT))
        .build()
        .expect("settings");
    let e = Connection::open(&s).await.expect_err("times out");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.stage(), Some(Stage::Tls));
    hold.abort();
}

#[tokio::test]
async fn server_drops_the_connection() {
    let srv = server(ServerConfig::new().fault(Fault::on_command("RCPT").drop_connection())).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    let e = conn
        .send(envelope(&["a@example.net"]), MESSAGE.to_vec())
        .await
        .expect_err("dropped");
    assert!(e.is_closed() && e.is_transient(), "{e}");
    assert!(!e.body_was_sent());
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn service_closing_421() {
    let srv =
        server(ServerConfig::new().fault(Fault::on_command("MAIL").reply("421 4.3.2 Service shutting down")))
            .await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    let e = conn
        .send(envelope(&["a@example.net"]), MESSAGE.to_vec())
        .await
        .expect_err("closing");
    assert!(
        e.is_transient() && e.reply().is_some_and(|r| r.code().value() == 421),
        "{e}"
    );
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn server_closes_after_greeting() {
    let srv = server(ServerConfig::new().fault(Fault::on_command("EHLO").drop_connection())).await;
    let e = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect_err("closed");
    assert!(e.is_closed());
    assert_eq!(e.stage(), Some(Stage::Ehlo));
}
