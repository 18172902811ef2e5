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

// Trickling servers: a reply that arrives a line at a time, faster than the
// phase's timeout but never complete, must still end at that timeout. Each
// phase's timeout is a deadline for the whole reply, not for each read.

/// Every 100 ms a line; the phase's timeout is 300 ms.
const TRICKLE: Duration = Duration::from_millis(100);

/// Fails the test instead of hanging when a trickle keeps the client forever.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: the trickling server kept the client past every deadline"))
}

async fn open_fails_at(config: ServerConfig, tls: TlsMode, t: Timeouts, stage: Stage) {
    let srv = server(config).await;
    let mut b = settings(&srv, tls).timeouts(t);
    if stage == Stage::Auth {
        b = b
            .credentials("app", "secret")
            .dangerous(|d| d.allow_plaintext_auth(true));
    }
    let s = b.build().expect("settings");
    let e = bounded(stage.as_str(), Connection::open(&s))
        .await
        .expect_err("times out");
    assert!(e.is_timeout(), "{stage}: {e}");
    assert_eq!(e.stage(), Some(stage), "{e}");
}

#[tokio::test]
async fn trickled_greeting_ends_at_the_greeting_timeout() {
    open_fails_at(
        ServerConfig::new().fault(Fault::on_greeting().trickle("220-still here", TRICKLE)),
        TlsMode::None,
        short(|t| t.greeting = SHORT),
        Stage::Greeting,
    )
    .await;
}

#[tokio::test]
async fn trickled_ehlo_reply_ends_at_the_command_timeout() {
    open_fails_at(
        ServerConfig::new().fault(Fault::on_command("EHLO").trickle("250-still here", TRICKLE)),
        TlsMode::None,
        short(|t| t.command = SHORT),
        Stage::Ehlo,
    )
    .await;
}

#[tokio::test]
async fn trickled_starttls_reply_ends_at_the_command_timeout() {
    open_fails_at(
        ServerConfig::new()
            .starttls(true)
            .fault(Fault::on_command("STARTTLS").trickle("220-still here", TRICKLE)),
        TlsMode::StartTls,
        short(|t| t.command = SHORT),
        Stage::StartTls,
    )
    .await;
}

#[tokio::test]
async fn trickled_auth_exchange_ends_at_the_command_timeout() {
    open_fails_at(
        ServerConfig::new()
            .auth_mechanisms(&["PLAIN"])
            .user("app", "secret")
            .fault(Fault::on_command("AUTH").trickle("334-still here", TRICKLE)),
        TlsMode::None,
        short(|t| t.command = SHORT),
        Stage::Auth,
    )
    .await;
}

async fn send_fails_at(
    config: ServerConfig,
    t: Timeouts,
    message: Vec<u8>,
    stage: Stage,
) -> relaymail::Error {
    let srv = server(config).await;
    let s = settings(&srv, TlsMode::None)
        .timeouts(t)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    let e = bounded(stage.as_str(), conn.send(envelope(&["a@example.net"]), message))
        .await
        .expect_err("times out");
    assert!(e.is_timeout(), "{stage}: {e}");
    assert_eq!(e.stage(), Some(stage), "{e}");
    assert!(!conn.is_usable(), "a timed-out connection is never reused");
    e
}

#[tokio::test]
async fn trickled_command_reply_ends_at_the_command_timeout() {
    let e = send_fails_at(
        ServerConfig::new().fault(Fault::on_command("MAIL").trickle("250-still here", TRICKLE)),
        short(|t| t.command = SHORT),
        MESSAGE.to_vec(),
        Stage::Mail,
    )
    .await;
    assert!(!e.body_was_sent());
}

#[tokio::test]
async fn trickled_final_reply_ends_at_the_final_reply_timeout() {
    let e = send_fails_at(
        ServerConfig::new().fault(Fault::on_end_of_data().trickle("250-still scanning", TRICKLE)),
        short(|t| t.final_reply = SHORT),
        MESSAGE.to_vec(),
        Stage::EndOfData,
    )
    .await;
    assert!(e.body_was_sent(), "the server may have the message");
}

#[tokio::test]
async fn body_write_to_a_server_that_stops_reading_ends_at_the_data_timeout() {
    // 16 MiB fill any socket buffer: the write blocks once the server stops
    // reading after its 354.
    let mut message = b"Subject: big\r\n\r\n".to_vec();
    let line = [b'x'; 998];
    while message.len() < 16 * 1024 * 1024 {
        message.extend_from_slice(&line);
        message.extend_from_slice(b"\r\n");
    }
    send_fails_at(
        ServerConfig::new()
            .size_limit(None)
            .fault(Fault::on_command("DATA").stop_reading()),
        short(|t| t.data = SHORT),
        message,
        Stage::Data,
    )
    .await;
}

#[tokio::test]
async fn trickled_tls_handshake_ends_at_the_handshake_timeout() {
    // A "server" that answers the ClientHello with the start of a TLS record
    // and then one byte of it every 100 ms.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let trickle = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut socket, _) = listener.accept().await.expect("accept");
        // Handshake record, TLS 1.2, 16 KiB long: never completed.
        let _ = socket.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).await;
        let mut tick = tokio::time::interval(TRICKLE);
        loop {
            tick.tick().await;
            if socket.write_all(&[0x02]).await.is_err() {
                break;
            }
        }
    });
    let s = relaymail::SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(port))
        .tls(TlsMode::Implicit)
        .sender("a@example.com")
        .timeouts(short(|t| t.tls_handshake = SHORT))
        .build()
        .expect("settings");
    let e = bounded("tls", Connection::open(&s)).await.expect_err("times out");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.stage(), Some(Stage::Tls));
    trickle.abort();
}

#[tokio::test]
async fn quit_ends_when_the_server_trickles_its_221() {
    let srv = server(ServerConfig::new().fault(Fault::on_command("QUIT").trickle("221-bye", TRICKLE))).await;
    let s = settings(&srv, TlsMode::None)
        .timeouts(short(|t| t.command = SHORT))
        .build()
        .expect("settings");
    let conn = Connection::open(&s).await.expect("connects");
    let e = bounded("quit", conn.quit()).await.expect_err("times out");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.stage(), Some(Stage::Quit));
}

#[tokio::test]
async fn a_250_read_with_a_421_keeps_the_message_delivered() {
    // A server shutting down under load accepts the message and says
    // goodbye in the same write: the message is delivered, the connection
    // is not usable any more.
    for pipelining in [true, false] {
        let srv = server(
            ServerConfig::new()
                .pipelining(pipelining)
                .fault(Fault::on_end_of_data().append(b"421 4.3.2 Service shutting down\r\n")),
        )
        .await;
        let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
            .await
            .expect("connects");
        let delivery = conn
            .send(envelope(&["a@example.net"]), MESSAGE.to_vec())
            .await
            .unwrap_or_else(|e| panic!("pipelining {pipelining}: delivered, not {e}"));
        assert_eq!(delivery.reply().code().value(), 250);
        assert_eq!(srv.messages().len(), 1);
        assert!(!conn.is_usable(), "the 421 ends the connection");
    }
}
