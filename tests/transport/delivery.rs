//! Transactions: pipelining, BDAT, SIZE, recipients, injection, HELO names.

use std::sync::Arc;

use relaymail::testing::{Fault, ServerConfig};
use relaymail::{Address, AddressPolicy, Connection, Connector, Envelope, Recipient, Stage, TlsMode};

fn addr(text: &str) -> Address {
    text.parse().expect("a valid address")
}

use crate::support::*;

/// The verbs of the session's commands grouped by the read that delivered
/// them to the server.
fn batches(srv: &relaymail::testing::TestServer, session: usize) -> Vec<Vec<String>> {
    let s = &srv.sessions()[session];
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut last = usize::MAX;
    for c in &s.commands {
        let verb = c.line.split([' ', ':']).next().unwrap_or("").to_owned();
        if c.batch != last {
            out.push(Vec::new());
            last = c.batch;
        }
        out.last_mut().expect("group").push(verb);
    }
    out
}

#[tokio::test]
async fn pipelining_sends_the_envelope_in_one_write() {
    let srv = server(ServerConfig::new().pipelining(true)).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    conn.send(envelope(&["a@example.net", "b@example.net"]), MESSAGE.to_vec())
        .await
        .expect("delivered");
    conn.quit().await.expect("quit");
    srv.wait_for_closed_sessions(1, WAIT).await.expect("closed");
    let b = batches(&srv, 0);
    assert!(
        b.contains(&vec!["MAIL".into(), "RCPT".into(), "RCPT".into(), "DATA".into()]),
        "{b:?}"
    );
}

#[tokio::test]
async fn without_pipelining_one_command_per_round_trip() {
    let srv = server(ServerConfig::new().pipelining(false)).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    conn.send(envelope(&["a@example.net", "b@example.net"]), MESSAGE.to_vec())
        .await
        .expect("delivered");
    conn.quit().await.expect("quit");
    srv.wait_for_closed_sessions(1, WAIT).await.expect("closed");
    let b = batches(&srv, 0);
    assert!(b.iter().all(|group| group.len() == 1), "{b:?}");
    // And pipelining can be turned off even when offered.
    let srv = server(ServerConfig::new().pipelining(true)).await;
    let s = settings(&srv, TlsMode::None)
        .pipelining(false)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    conn.send(envelope(&["a@example.net", "b@example.net"]), MESSAGE.to_vec())
        .await
        .expect("delivered");
    conn.quit().await.expect("quit");
    srv.wait_for_closed_sessions(1, WAIT).await.expect("closed");
    assert!(batches(&srv, 0).iter().all(|group| group.len() == 1));
}

#[tokio::test]
async fn bdat_when_chunking_is_offered() {
    let srv = server(ServerConfig::new().chunking(true)).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    let body = b"Subject: x\n\n.leading dot\nbare LF\rbare CR\n".to_vec();
    conn.send(envelope(&["a@example.net"]), body)
        .await
        .expect("delivered");
    let m = srv.wait_for_messages(1, WAIT).await.expect("message");
    assert!(m[0].via_bdat);
    assert_eq!(
        m[0].data,
        b"Subject: x\r\n\r\n.leading dot\r\nbare LF\r\nbare CR\r\n"
    );
    assert!(!m[0].bare_line_endings);
}

#[tokio::test]
async fn data_is_normalised_and_dot_stuffed() {
    let srv = server(ServerConfig::new()).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    let body = b"Subject: x\n\n.\n..two\r\nsmuggle\n.\nMAIL FROM:<evil@example.com>\nend".to_vec();
    conn.send(envelope(&["a@example.net"]), body)
        .await
        .expect("delivered");
    let m = srv.wait_for_messages(1, WAIT).await.expect("message");
    assert_eq!(
        m[0].data,
        b"Subject: x\r\n\r\n.\r\n..two\r\nsmuggle\r\n.\r\nMAIL FROM:<evil@example.com>\r\nend\r\n"
    );
    assert!(!m[0].bare_line_endings);
    assert_eq!(srv.messages().len(), 1, "no smuggled second message");
}

#[tokio::test]
async fn size_limit_fails_fast_and_declares_size() {
    let srv = server(ServerConfig::new().size_limit(Some(100))).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    let e = conn
        .send(envelope(&["a@example.net"]), vec![b'x'; 500])
        .await
        .expect_err("too big");
    assert!(e.is_permanent() && e.is_unsupported(), "{e}");
    assert!(conn.is_usable(), "nothing was sent; the connection is fine");
    conn.send(envelope(&["a@example.net"]), MESSAGE.to_vec())
        .await
        .expect("delivered");
    let m = srv.wait_for_messages(1, WAIT).await.expect("message");
    assert_eq!(m[0].mail_params, [format!("SIZE={}", MESSAGE.len())]);
    assert!(!srv.sessions()[0]
        .commands
        .iter()
        .any(|c| c.line.contains("SIZE=502")));
}

#[tokio::test]
async fn partial_recipients() {
    let config = ServerConfig::new().reject_recipient(
        "nobody@example.net",
        "550 5.1.1 <nobody@example.net>: User unknown",
    );
    let srv = server(config.clone()).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    let d = conn
        .send(
            envelope(&["a@example.net", "nobody@example.net", "b@example.net"]),
            MESSAGE.to_vec(),
        )
        .await
        .expect("delivered to the others");
    assert_eq!(
        d.accepted().map(ToString::to_string).collect::<Vec<_>>(),
        ["a@example.net", "b@example.net"]
    );
    let refused: Vec<_> = d
        .refused()
        .map(|(a, r)| (a.to_string(), r.map(|r| r.code().value())))
        .collect();
    assert_eq!(refused, [("nobody@example.net".to_owned(), Some(550))]);
    assert_eq!(
        srv.wait_for_messages(1, WAIT).await.expect("message")[0].rcpt_to,
        ["a@example.net", "b@example.net"]
    );

    // All-or-nothing: the refusal fails the message, RSET keeps the connection usable.
    let srv = server(config).await;
    let s = settings(&srv, TlsMode::None)
        .require_all_recipients(true)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    let e = conn
        .send(
            envelope(&["a@example.net", "nobody@example.net"]),
            MESSAGE.to_vec(),
        )
        .await
        .expect_err("refused");
    assert_eq!(e.stage(), Some(Stage::Rcpt));
    assert!(e.is_permanent());
    conn.send(envelope(&["a@example.net"]), MESSAGE.to_vec())
        .await
        .expect("next message fine");
    let m = srv.wait_for_messages(1, WAIT).await.expect("message");
    assert_eq!(m.len(), 1);
    assert!(srv.sessions()[0].commands.iter().any(|c| c.line == "RSET"));
}

#[tokio::test]
async fn refused_sender_and_message_keep_the_connection() {
    let config = ServerConfig::new()
        .reject_sender(
            "spoof@example.com",
            "553 5.7.1 Sender address rejected: not owned by user",
        )
        .fault(
            Fault::on_end_of_data()
                .nth(1)
                .reply("554 5.7.1 Message rejected as spam"),
        );
    let srv = server(config).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    let e = conn
        .send(envelope(&["a@example.net"]), MESSAGE.to_vec())
        .await
        .expect_err("spam");
    assert_eq!(e.stage(), Some(Stage::EndOfData));
    assert!(e.to_string().contains("spam"));
    assert!(
        conn.is_usable(),
        "a refused message leaves the connection in step"
    );
    let spoofed =
        Envelope::new(Some(addr("spoof@example.com")), vec![addr("a@example.net")]).expect("envelope");
    let e = conn
        .send(spoofed, MESSAGE.to_vec())
        .await
        .expect_err("refused sender");
    assert_eq!(e.stage(), Some(Stage::Mail));
    assert_eq!(
        e.reply()
            .and_then(|r| r.enhanced_code())
            .map(|c| c.to_string())
            .as_deref(),
        Some("5.7.1")
    );
    assert!(
        conn.is_usable(),
        "RSET after a refused sender keeps the connection"
    );
    conn.send(envelope(&["a@example.net"]), MESSAGE.to_vec())
        .await
        .expect("third is fine");
    assert_eq!(srv.wait_for_messages(1, WAIT).await.expect("message").len(), 1);
}

#[tokio::test]
async fn injection_in_any_argument_is_refused_before_writing() {
    let srv = server(ServerConfig::new()).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    // Addresses that would inject never become an Address, so they cannot
    // reach an envelope; the error is a config error.
    for text in [
        "a@example.com\r\nRCPT TO:<x@evil.example>",
        "b@example.net>\r\nDATA",
        "\"x> NOTIFY=NEVER\"@example.net",
        "b@example.net\0",
        "b@exam ple.net",
    ] {
        for policy in [AddressPolicy::Strict, AddressPolicy::Lenient] {
            let e = relaymail::Error::from(Address::parse(text, policy).expect_err("refused"));
            assert!(e.is_config(), "{e}");
        }
    }
    // Free-form DSN values still go through the wire check.
    let mut bad = envelope(&["b@example.net"]);
    let mut recipients = bad.recipients().to_vec();
    recipients.push(
        Recipient::new(addr("c@example.net"))
            .with_params(relaymail::proto::command::RcptParams::default().with_orcpt("x\r\nQUIT")),
    );
    bad.set_recipients(recipients).expect("recipients");
    assert!(conn
        .send(bad, MESSAGE.to_vec())
        .await
        .expect_err("refused")
        .is_config());
    conn.quit().await.expect("quit");
    let s = srv.wait_for_closed_sessions(1, WAIT).await.expect("closed");
    assert!(
        s[0].commands
            .iter()
            .all(|c| !c.line.starts_with("MAIL") && !c.line.starts_with("RCPT")),
        "{:?}",
        s[0].commands
    );
    // And in the settings: a HELO name or sender with CR/LF never builds.
    assert!(settings(&srv, TlsMode::None)
        .helo_name("x\r\nMAIL FROM:<a@b>")
        .build()
        .is_err());
    assert!(settings(&srv, TlsMode::None)
        .sender("a@b.example\nRSET")
        .build()
        .is_err());
}

#[tokio::test]
async fn helo_custom_and_default() {
    let srv = server(ServerConfig::new()).await;
    Connection::open(
        &settings(&srv, TlsMode::None)
            .helo_name("app.example.org")
            .build()
            .expect("settings"),
    )
    .await
    .expect("connects");
    let s = settings(&srv, TlsMode::None)
        .helo_name("")
        .build()
        .expect("settings");
    let conn = Connection::open(&s).await.expect("connects");
    let expected = relaymail::transport::default_helo_name(conn.info().local.ip());
    assert_eq!(conn.info().helo_name, expected);
    drop(conn);
    let s = srv.wait_for_closed_sessions(2, WAIT).await.expect("closed");
    assert_eq!(s[0].helo.as_deref(), Some("app.example.org"));
    assert_eq!(s[1].helo.as_deref(), Some(expected.as_str()));
    assert!(!expected.is_empty());
}

#[tokio::test]
async fn helo_fallback_when_ehlo_is_refused() {
    let srv = server(ServerConfig::new().ehlo(false)).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    conn.send(envelope(&["a@example.net"]), MESSAGE.to_vec())
        .await
        .expect("delivered");
    // Never when TLS is required: HELO cannot negotiate STARTTLS.
    let e = Connection::open(&settings(&srv, TlsMode::StartTls).build().expect("settings"))
        .await
        .expect_err("fails");
    assert_eq!(e.stage(), Some(Stage::Ehlo));
}

#[tokio::test]
async fn smtputf8_recipient() {
    let srv = server(ServerConfig::new().smtputf8(true)).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    conn.send(envelope(&["δοκιμή@παράδειγμα.example"]), MESSAGE.to_vec())
        .await
        .expect("delivered");
    let m = srv.wait_for_messages(1, WAIT).await.expect("message");
    assert!(m[0].mail_params.iter().any(|p| p == "SMTPUTF8"));
    let srv = server(ServerConfig::new().smtputf8(false)).await;
    let mut conn = Connection::open(&settings(&srv, TlsMode::None).build().expect("settings"))
        .await
        .expect("connects");
    let e = conn
        .send(envelope(&["δοκιμή@example.net"]), MESSAGE.to_vec())
        .await
        .expect_err("unsupported");
    assert!(e.is_unsupported() && e.to_string().contains("SMTPUTF8"));
}

#[tokio::test]
async fn connector_reuses_its_tls_configuration() {
    let srv = server(ServerConfig::new().starttls(true)).await;
    let connector =
        Connector::new(settings(&srv, TlsMode::StartTls).build().expect("settings")).expect("connector");
    let message: Arc<[u8]> = Arc::from(MESSAGE);
    for _ in 0..3 {
        let mut conn = connector.connect().await.expect("connects");
        conn.send(envelope(&["a@example.net"]), message.clone())
            .await
            .expect("delivered");
        conn.quit().await.expect("quit");
    }
    assert_eq!(srv.wait_for_messages(3, WAIT).await.expect("messages").len(), 3);
    assert_eq!(srv.connections_total(), 3);
}

#[tokio::test]
async fn verify_reports_what_it_found() {
    let srv = server(
        ServerConfig::new()
            .starttls(true)
            .auth_mechanisms(&["PLAIN"])
            .user("app", "pw")
            .chunking(true),
    )
    .await;
    let s = settings(&srv, TlsMode::StartTls)
        .credentials("app", "pw")
        .build()
        .expect("settings");
    let info = relaymail::probe(&s).await.expect("verified");
    assert!(info.tls.is_some());
    assert_eq!(info.auth_mechanism, Some(relaymail::Mechanism::Plain));
    assert!(info
        .capabilities
        .supports(relaymail::proto::ehlo::Extension::Chunking));
    let sessions = srv.wait_for_closed_sessions(1, WAIT).await.expect("closed");
    assert!(sessions[0].quit, "verify says QUIT");
    assert!(srv.messages().is_empty(), "verify sends no mail");
}

#[tokio::test]
async fn connection_refused_and_unresolvable_host() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let s = relaymail::SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(port))
        .tls(TlsMode::None)
        .sender("a@example.com")
        .build()
        .expect("settings");
    let e = Connection::open(&s).await.expect_err("refused");
    assert_eq!(e.stage(), Some(Stage::Connect));
    assert!(
        e.is_transient() && e.hint().is_some_and(|h| h.contains("nothing is listening")),
        "{e}"
    );
    let s = s.to_builder().host("relay.invalid").build().expect("settings");
    let e = Connection::open(&s).await.expect_err("unresolvable");
    assert_eq!(e.stage(), Some(Stage::Resolve));
}
