//! Postfix smtpd: STARTTLS (required and opportunistic), implicit TLS, clear
//! text, PIPELINING, CHUNKING, SMTPUTF8, DSN, SIZE, refused recipients and
//! the misconfigurations an administrator makes.

use std::time::Duration;

use relaymail::proto::command::{DsnReturn, MailParams, Notify, RcptParams};
use relaymail::proto::ehlo::Extension;
use relaymail::{Connection, Envelope, Recipient, Stage, TlsMode};

use crate::{envelope, message, unique, Interop};

fn assert_queued(reply: &relaymail::Reply) {
    assert_eq!(reply.code().value(), 250, "{reply}");
    assert!(reply.text().contains("queued as"), "{reply}");
}

#[tokio::test]
async fn starttls_required_sees_every_extension_and_delivers() {
    let Some(env) = Interop::get("postfix starttls") else {
        return;
    };
    let s = env
        .settings(env.postfix_port, TlsMode::StartTls)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    let info = conn.info().clone();
    let tls = info.tls.expect("TLS after STARTTLS");
    assert!(tls.via_starttls);
    assert!(tls.version.starts_with("TLSv1."), "{tls:?}");
    for ext in [
        Extension::Pipelining,
        Extension::Chunking,
        Extension::SmtpUtf8,
        Extension::EightBitMime,
        Extension::Dsn,
        Extension::Size,
        Extension::EnhancedStatusCodes,
    ] {
        assert!(
            info.capabilities.supports(ext),
            "Postfix offers {ext:?} after TLS"
        );
    }
    // Capabilities were re-read after TLS: STARTTLS is no longer offered.
    assert!(!info.capabilities.supports(Extension::StartTls));
    assert_eq!(info.capabilities.size_limit(), Some(10_240_000));
    let to = unique("starttls");
    let d = conn
        .send(envelope(&[&to]), message(&to, "Reset your password.\r\n"))
        .await
        .expect("delivered");
    assert_queued(d.reply());
    assert_eq!(
        d.accepted().map(ToString::to_string).collect::<Vec<_>>(),
        vec![to.clone()]
    );
    conn.quit().await.expect("QUIT answered");
}

#[tokio::test]
async fn opportunistic_starttls_upgrades_when_offered() {
    let Some(env) = Interop::get("postfix opportunistic") else {
        return;
    };
    let s = env
        .settings(env.postfix_port, TlsMode::StartTlsOpportunistic)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    assert!(conn.info().tls.as_ref().is_some_and(|t| t.via_starttls));
    assert_eq!(conn.info().tls_skipped, None);
    let to = unique("opportunistic");
    let d = conn
        .send(envelope(&[&to]), message(&to, "hello\r\n"))
        .await
        .expect("delivered");
    assert_queued(d.reply());
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let Some(env) = Interop::get("postfix implicit") else {
        return;
    };
    let s = env
        .settings(env.postfix_smtps_port, TlsMode::Implicit)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    let tls = conn.info().tls.clone().expect("implicit TLS");
    assert!(!tls.via_starttls);
    let to = unique("implicit");
    let d = conn
        .send(envelope(&[&to]), message(&to, "hello\r\n"))
        .await
        .expect("delivered");
    assert_queued(d.reply());
}

#[tokio::test]
async fn clear_text_when_asked_for() {
    let Some(env) = Interop::get("postfix none") else {
        return;
    };
    let s = env
        .settings(env.postfix_port, TlsMode::None)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    assert!(conn.info().tls.is_none());
    assert!(conn.info().capabilities.supports(Extension::StartTls));
    let to = unique("cleartext");
    let d = conn
        .send(envelope(&[&to]), message(&to, "hello\r\n"))
        .await
        .expect("delivered");
    assert_queued(d.reply());
}

#[tokio::test]
async fn data_and_bdat_with_many_messages_on_one_connection() {
    let Some(env) = Interop::get("postfix data/bdat") else {
        return;
    };
    for (chunking, pipelining) in [(true, true), (false, true), (true, false), (false, false)] {
        let s = env
            .settings(env.postfix_port, TlsMode::StartTls)
            .chunking(chunking)
            .pipelining(pipelining)
            .build()
            .expect("settings");
        let mut conn = Connection::open(&s).await.expect("connects");
        for i in 0..5 {
            let to = unique("batch");
            // Lines starting with a dot, a bare LF, a lone dot line, and no
            // final newline: the wire form must still be one clean message.
            let body = format!("message {i}\n.\n..two dots\r\n.hidden\nlast line without newline");
            let d = conn
                .send(envelope(&[&to]), message(&to, &body))
                .await
                .unwrap_or_else(|e| panic!("chunking={chunking} pipelining={pipelining} #{i}: {e}"));
            assert_queued(d.reply());
        }
        assert_eq!(conn.deliveries(), 5);
        assert!(conn.is_usable());
        conn.quit().await.expect("QUIT");
    }
}

#[tokio::test]
async fn refused_recipients_are_reported_and_the_connection_stays_usable() {
    let Some(env) = Interop::get("postfix partial") else {
        return;
    };
    let s = env
        .settings(env.postfix_port, TlsMode::StartTls)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    let ok = unique("partial");
    let d = conn
        .send(
            envelope(&[&ok, "reject@example.net"]),
            message(&ok, "partial\r\n"),
        )
        .await
        .expect("delivered to the accepted one");
    assert_queued(d.reply());
    assert_eq!(
        d.accepted().map(ToString::to_string).collect::<Vec<_>>(),
        vec![ok.clone()]
    );
    let refused: Vec<_> = d.refused().collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0.to_string(), "reject@example.net");
    assert_eq!(refused[0].1.expect("a reply").code().value(), 550);

    // Every recipient refused: a permanent error naming the RCPT stage.
    let e = conn
        .send(
            envelope(&["reject@example.net"]),
            message("reject@example.net", "x\r\n"),
        )
        .await
        .expect_err("nobody accepted");
    assert!(e.is_rejected() && e.is_permanent(), "{e}");
    assert_eq!(e.stage(), Some(Stage::Rcpt));
    assert!(!e.body_was_sent());
    assert!(conn.is_usable(), "RSET keeps the connection usable");

    // all-recipients-required turns a partial acceptance into a failure.
    let strict = env
        .settings(env.postfix_port, TlsMode::StartTls)
        .require_all_recipients(true)
        .build()
        .expect("settings");
    let mut strict_conn = Connection::open(&strict).await.expect("connects");
    let e = strict_conn
        .send(envelope(&[&ok, "reject@example.net"]), message(&ok, "strict\r\n"))
        .await
        .expect_err("one refused");
    assert_eq!(e.stage(), Some(Stage::Rcpt));
    assert!(!e.body_was_sent());
    let again = unique("after-rset");
    let d = strict_conn
        .send(envelope(&[&again]), message(&again, "after RSET\r\n"))
        .await
        .expect("usable after RSET");
    assert_queued(d.reply());
}

#[tokio::test]
async fn smtputf8_and_dsn_parameters_are_accepted() {
    let Some(env) = Interop::get("postfix smtputf8/dsn") else {
        return;
    };
    let s = env
        .settings(env.postfix_port, TlsMode::StartTls)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    let utf8 = format!("josé-{}@example.net", std::process::id());
    let dsn = unique("dsn");
    let addr = |a: &str| a.parse::<relaymail::Address>().expect("a valid address");
    let env_ = Envelope::with_recipients(
        Some(addr("alerts@example.com")),
        vec![
            Recipient::new(addr(&dsn)).with_params(
                RcptParams::default()
                    .with_notify(Notify::On {
                        success: false,
                        failure: true,
                        delay: true,
                    })
                    .with_orcpt("Billing <billing+nov@example.net>"),
            ),
            Recipient::new(addr(&utf8)),
        ],
    )
    .expect("envelope")
    .with_params(
        MailParams::default()
            .with_ret(DsnReturn::Headers)
            .with_envid("invoice 2041+nov="),
    );
    let d = conn
        .send(
            env_,
            "From: alerts@example.com\r\nSubject: Grüße\r\n\r\nÜber 8 bit.\r\n"
                .as_bytes()
                .to_vec(),
        )
        .await
        .expect("delivered");
    assert_queued(d.reply());
    assert_eq!(d.accepted().count(), 2, "{:?}", d.recipients());
}

#[tokio::test]
async fn oversized_message_is_refused_before_sending() {
    let Some(env) = Interop::get("postfix size") else {
        return;
    };
    let s = env
        .settings(env.postfix_port, TlsMode::StartTls)
        .build()
        .expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    let mut big = message("ops@example.net", "");
    big.resize(10_240_001 + 100, b'a');
    let e = conn
        .send(envelope(&["ops@example.net"]), big)
        .await
        .expect_err("too big");
    assert!(e.is_unsupported() && e.to_string().contains("SIZE"), "{e}");
    assert!(conn.is_usable(), "nothing was written");
    let to = unique("after-size");
    conn.send(envelope(&[&to]), message(&to, "small\r\n"))
        .await
        .expect("delivered");
}

#[tokio::test]
async fn implicit_tls_against_a_starttls_port_says_so() {
    let Some(env) = Interop::get("postfix implicit on 2525") else {
        return;
    };
    let s = env
        .settings(env.postfix_port, TlsMode::Implicit)
        .build()
        .expect("settings");
    let e = Connection::open(&s).await.expect_err("plain text answer");
    assert!(e.is_tls(), "{e}");
    let hint = e.hint().expect("hint");
    assert!(hint.contains("speaks plain SMTP"), "{hint}");
}

#[tokio::test]
async fn starttls_against_an_implicit_port_says_so() {
    let Some(env) = Interop::get("postfix starttls on 2465") else {
        return;
    };
    // Postfix waits for a TLS ClientHello and never greets in clear text.
    let s = env
        .settings(env.postfix_smtps_port, TlsMode::StartTls)
        .timeout(Duration::from_secs(1))
        .build()
        .expect("settings");
    let e = Connection::open(&s).await.expect_err("no greeting");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.stage(), Some(Stage::Greeting));
    assert!(e.hint().is_some_and(|h| h.contains("implicit TLS")), "{e:?}");
}

#[tokio::test]
async fn untrusted_certificate_is_refused_with_a_hint() {
    let Some(env) = Interop::get("postfix untrusted") else {
        return;
    };
    let s = relaymail::SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(env.postfix_port))
        .tls(TlsMode::StartTls)
        .sender("alerts@example.com")
        .build()
        .expect("settings");
    let e = Connection::open(&s).await.expect_err("untrusted");
    assert!(e.is_tls(), "{e}");
    assert!(e.hint().is_some_and(|h| h.contains("trusted")), "{e:?}");
    // Opportunistic mode does not fall back to clear text after a failed
    // handshake either.
    let s = s
        .to_builder()
        .tls(TlsMode::StartTlsOpportunistic)
        .build()
        .expect("settings");
    assert!(Connection::open(&s).await.expect_err("untrusted").is_tls());
}

#[tokio::test]
async fn verify_reports_what_it_found() {
    let Some(env) = Interop::get("postfix verify") else {
        return;
    };
    let s = env
        .settings(env.postfix_port, TlsMode::StartTls)
        .build()
        .expect("settings");
    let info = relaymail::probe(&s).await.expect("verified");
    assert!(info.tls.is_some());
    assert_eq!(info.auth_mechanism, None);
    assert_eq!(info.helo_name, "client.example.com");
    assert!(info.peer.ip().is_loopback());
}

#[tokio::test]
async fn mailer_pool_delivers_through_postfix() {
    let Some(env) = Interop::get("postfix mailer") else {
        return;
    };
    let s = env
        .settings(env.postfix_port, TlsMode::StartTls)
        .max_deliveries_per_connection(10)
        .build()
        .expect("settings");
    let mailer = relaymail::Mailer::builder(s)
        .max_connections(3)
        .build()
        .expect("mailer");
    let mut pending = Vec::new();
    for i in 0..60 {
        let to = unique("pool");
        let m = relaymail::Message::new(envelope(&[&to]), message(&to, &format!("pooled {i}\r\n")));
        pending.push(mailer.submit(m).await.expect("queued"));
    }
    for p in pending {
        let receipt = p.await.expect("delivered");
        assert_queued(receipt.reply());
    }
    let stats = mailer.shutdown(Duration::from_secs(10)).await;
    assert_eq!((stats.delivered, stats.failed), (60, 0));
    assert!(stats.connections_opened >= 6, "10 per connection: {stats:?}");
    assert!(
        stats.deliveries_per_connection.iter().all(|(n, _)| *n <= 10),
        "{stats:?}"
    );
}
