//! Retries, rate limit, back-pressure, reload, redirect and shutdown.

use std::collections::HashSet;
use std::time::Duration;

use relaymail::testing::{Fault, ServerConfig};
use relaymail::{Mailer, RateLimit, Redirect, ReportAddress, RetryPolicy};

use crate::{message, quick_retries, server, settings, subject, WAIT};

fn addr(text: &str) -> relaymail::Address {
    text.parse().expect("a valid address")
}

#[tokio::test]
async fn transient_failures_are_retried_on_a_new_connection() {
    for (name, fault) in [
        (
            "451 after the body",
            Fault::on_end_of_data().nth(1).reply("451 4.3.0 try again later"),
        ),
        (
            "421 at MAIL",
            Fault::on_command("MAIL").nth(1).reply("421 4.3.2 going down"),
        ),
        (
            "dropped at RCPT",
            Fault::on_command("RCPT").nth(1).drop_connection(),
        ),
        (
            "dropped after the body",
            Fault::on_end_of_data().nth(1).drop_connection(),
        ),
    ] {
        let srv = server(ServerConfig::new().fault(fault)).await;
        let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
            .retry(quick_retries())
            .build()
            .expect("mailer");
        let receipt = mailer
            .send(message("ops@example.net", name))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(receipt.attempts(), 2, "{name}");
        assert_eq!(srv.messages().len(), 1, "{name}: delivered once");
        let stats = mailer.shutdown(WAIT).await;
        assert_eq!(
            (stats.retried, stats.delivered, stats.failed),
            (1, 1, 0),
            "{name}"
        );
    }
}

#[tokio::test]
async fn permanent_refusal_is_not_retried() {
    let srv =
        server(ServerConfig::new().reject_recipient("gone@example.net", "550 5.1.1 no such user")).await;
    let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
        .retry(quick_retries())
        .build()
        .expect("mailer");
    let e = mailer
        .send(message("gone@example.net", "x"))
        .await
        .expect_err("550");
    assert!(e.is_permanent() && e.is_rejected(), "{e}");
    assert_eq!(e.reply().map(|r| r.code().value()), Some(550));
    let rcpts: usize = srv
        .sessions()
        .iter()
        .map(|s| s.commands.iter().filter(|c| c.line.starts_with("RCPT")).count())
        .sum();
    assert_eq!(rcpts, 1, "asked once");
    assert_eq!(mailer.stats().retried, 0);
}

#[tokio::test]
async fn retries_stop_after_max_attempts() {
    let srv = server(ServerConfig::new().fault(Fault::on_end_of_data().reply("452 4.3.1 queue full"))).await;
    let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
        .retry(quick_retries())
        .build()
        .expect("mailer");
    let e = mailer
        .send(message("ops@example.net", "x"))
        .await
        .expect_err("gives up");
    assert!(e.is_transient(), "{e}");
    let ends: usize = srv
        .sessions()
        .iter()
        .map(|s| s.commands.iter().filter(|c| c.line == "DATA").count())
        .sum();
    assert_eq!(ends, 3, "max_attempts = 3");
    let stats = mailer.shutdown(WAIT).await;
    assert_eq!((stats.failed, stats.retried), (1, 2));
}

#[tokio::test]
async fn rate_limit_holds_from_the_first_message() {
    let srv = server(ServerConfig::new()).await;
    let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
        .rate_limit(RateLimit::new(2, Duration::from_secs(3600)))
        .build()
        .expect("mailer");
    let mut pending = Vec::new();
    for i in 0..3 {
        pending.push(
            mailer
                .submit(message("ops@example.net", &format!("r{i}")))
                .await
                .expect("queued"),
        );
    }
    srv.wait_for_messages(2, WAIT).await.expect("two go at once");
    assert!(
        srv.wait_for_messages(3, Duration::from_millis(300))
            .await
            .is_err(),
        "the third waits for the window"
    );
    let stats = mailer.stats();
    assert_eq!(stats.delivered, 2);
    assert_eq!(stats.queued + stats.in_flight, 1);
    let stats = mailer.shutdown(Duration::ZERO).await;
    assert_eq!((stats.delivered, stats.failed), (2, 1));
    let third = pending.pop().expect("third").await.expect_err("never sent");
    assert!(third.is_shutdown(), "{third}");
    assert_eq!(srv.messages().len(), 2);
}

#[tokio::test]
async fn full_queue_hands_messages_back_and_memory_stays_bounded() {
    let srv = server(ServerConfig::new()).await;
    let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
        .max_connections(1)
        .queue_capacity(10)
        // The one connection takes one message, then waits an hour.
        .rate_limit(RateLimit::new(1, Duration::from_secs(3600)))
        .build()
        .expect("mailer");
    let mut accepted = Vec::new();
    let mut handed_back = 0;
    for i in 0..1000 {
        match mailer.try_send(message("ops@example.net", &format!("q{i}"))) {
            Ok(p) => accepted.push(p),
            Err(e) => {
                assert!(e.error().is_full(), "{e}");
                let m = e.into_message();
                assert_eq!(
                    m.envelope().recipients()[0].address.to_string(),
                    "ops@example.net"
                );
                handed_back += 1;
            }
        }
    }
    // The queue's 10, plus what the one connection took out of it.
    assert!(accepted.len() <= 10 + 20, "bounded: {}", accepted.len());
    assert_eq!(accepted.len() + handed_back, 1000);
    let stats = mailer.stats();
    assert_eq!(
        stats.queued + stats.in_flight + stats.delivered as usize,
        accepted.len()
    );
    let stats = mailer.shutdown(Duration::ZERO).await;
    assert_eq!(stats.delivered + stats.failed, accepted.len() as u64);
    let e = mailer
        .try_send(message("ops@example.net", "late"))
        .expect_err("shut down");
    assert!(e.error().is_shutdown());
}

#[tokio::test]
async fn reload_switches_servers_without_losing_a_message() {
    let old = server(ServerConfig::new()).await;
    let new = server(ServerConfig::new()).await;
    let mailer = Mailer::builder(settings(&old).build().expect("settings"))
        .max_connections(2)
        .build()
        .expect("mailer");
    let mut pending = Vec::new();
    for i in 0..60 {
        if i == 30 {
            old.wait_for_messages(10, WAIT).await.expect("old server in use");
            mailer
                .reload(settings(&new).build().expect("settings"))
                .expect("reloaded");
        }
        pending.push(
            mailer
                .submit(message("ops@example.net", &format!("m{i}")))
                .await
                .expect("queued"),
        );
    }
    for p in pending {
        p.await.expect("delivered");
    }
    let mut seen = HashSet::new();
    for m in old.messages().iter().chain(new.messages().iter()) {
        assert!(seen.insert(subject(&m.data)), "duplicate {}", subject(&m.data));
    }
    assert_eq!(seen.len(), 60, "nothing lost");
    assert!(!new.messages().is_empty());
    // Messages handed over after the reload went to the new server.
    let late: Vec<String> = (30..60).map(|i| format!("m{i}")).collect();
    assert!(old.messages().iter().all(|m| !late.contains(&subject(&m.data))));
    // The old server's connections are closed with QUIT.
    let closed = old
        .wait_for_closed_sessions(old.connections_total(), WAIT)
        .await
        .expect("closed");
    assert!(closed.iter().all(|s| s.quit));
    assert_eq!(mailer.settings().port(), new.port());
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn redirect_sends_only_to_enabled_report_addresses() {
    let srv = server(ServerConfig::new()).await;
    let redirect = Redirect::new(
        true,
        vec![
            ReportAddress::new(addr("qa@example.com")),
            ReportAddress::new(addr("off@example.com")).with_enabled(false),
        ],
    );
    let mailer = Mailer::builder(
        settings(&srv)
            .redirect(redirect.clone())
            .build()
            .expect("settings"),
    )
    .build()
    .expect("mailer");
    let mut m = message("customer@example.net", "invoice");
    let (mut envelope, content) = m.clone().into_parts();
    let mut recipients = envelope.recipients().to_vec();
    recipients.push(relaymail::Recipient::new(addr("boss@example.net")));
    envelope.set_recipients(recipients).expect("recipients");
    m = relaymail::Message::new(envelope, content);
    let receipt = mailer.send(m).await.expect("sent");
    assert_eq!(
        receipt.accepted().collect::<Vec<_>>(),
        vec![&addr("qa@example.com")]
    );
    let got = srv.wait_for_messages(1, WAIT).await.expect("message");
    assert_eq!(got[0].rcpt_to, vec!["qa@example.com".to_owned()]);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.starts_with("X-Relaymail-Original-Recipients: customer@example.net, boss@example.net\r\n"),
        "{text}"
    );

    // Redirect on, nothing enabled: refused, never sent to the real ones.
    let none = Redirect::new(
        true,
        vec![ReportAddress::new(addr("qa@example.com")).with_enabled(false)],
    );
    let errors = settings(&srv)
        .redirect(none.clone())
        .build()
        .expect_err("refused");
    assert_eq!(errors.iter().map(|e| e.field()).collect::<Vec<_>>(), ["redirect"]);
    let e = relaymail::Error::from(errors);
    assert!(e.is_config(), "{e}");
    assert_eq!(mailer.redirect(), redirect, "unchanged");
    let mut update = relaymail::SettingsUpdate::new();
    update.redirect = Some(none);
    let e = mailer.settings().apply(update).expect_err("refused");
    assert!(e.field("redirect").is_some(), "{e}");
    assert_eq!(mailer.redirect(), redirect, "unchanged");

    // Switched off: real recipients again.
    mailer
        .reload(
            settings(&srv)
                .redirect(Redirect::default())
                .build()
                .expect("settings"),
        )
        .expect("off");
    mailer
        .send(message("customer@example.net", "real"))
        .await
        .expect("sent");
    let got = srv.wait_for_messages(2, WAIT).await.expect("messages");
    assert_eq!(got[1].rcpt_to, vec!["customer@example.net".to_owned()]);
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn shutdown_drains_the_queue_and_quits() {
    let srv = server(ServerConfig::new()).await;
    let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
        .max_connections(1)
        .build()
        .expect("mailer");
    let mut pending = Vec::new();
    for i in 0..30 {
        pending.push(
            mailer
                .submit(message("ops@example.net", &format!("d{i}")))
                .await
                .expect("queued"),
        );
    }
    let stats = mailer.shutdown(WAIT).await;
    assert_eq!(
        (stats.delivered, stats.failed, stats.connections_open),
        (30, 0, 0)
    );
    for p in pending {
        p.await.expect("delivered before shutdown returned");
    }
    assert_eq!(srv.messages().len(), 30);
    let sessions = srv
        .wait_for_closed_sessions(srv.connections_total(), WAIT)
        .await
        .expect("closed");
    assert!(sessions.iter().all(|s| s.quit), "every connection QUIT");
    let e = mailer
        .send(message("ops@example.net", "late"))
        .await
        .expect_err("closed");
    assert!(e.is_shutdown(), "{e}");
}

#[tokio::test]
async fn bad_envelope_is_refused_when_handed_over() {
    let srv = server(ServerConfig::new()).await;
    let mailer = Mailer::new(settings(&srv).build().expect("settings")).expect("mailer");
    // An address that would inject cannot be made at all …
    assert!("victim@example.net>\r\nRCPT TO:<x@evil.example"
        .parse::<relaymail::Address>()
        .is_err());
    // … and what the types leave open (a free-form DSN value) is checked
    // when the message is handed over.
    let (mut envelope, content) = message("ops@example.net", "x").into_parts();
    envelope.params_mut().envid = Some("x\r\nRSET".into());
    let e = mailer
        .send(relaymail::Message::new(envelope, content))
        .await
        .expect_err("refused");
    assert!(e.is_config(), "{e}");
    assert_eq!(mailer.stats().offered, 0);
    assert_eq!(srv.connections_total(), 0, "nothing was even connected");
    let never = RetryPolicy::never();
    assert_eq!(never.max_attempts, 1);
}

/// A server whose first final reply never comes (it has the message; the
/// client times out after 300 ms), and a mailer with `retry` for it.
async fn first_final_reply_lost(retry: RetryPolicy) -> (relaymail::testing::TestServer, Mailer) {
    let srv = server(ServerConfig::new().fault(Fault::on_end_of_data().nth(1).stall())).await;
    let mut timeouts = relaymail::Timeouts::all(Duration::from_secs(5));
    timeouts.final_reply = Duration::from_millis(300);
    let mailer = Mailer::builder(settings(&srv).timeouts(timeouts).build().expect("settings"))
        .retry(retry)
        .build()
        .expect("mailer");
    (srv, mailer)
}

#[tokio::test]
async fn a_retry_after_the_body_was_sent_is_reported_as_possibly_duplicated() {
    // At-least-once: sent again after the lost final reply.
    let (_srv, mailer) = first_final_reply_lost(quick_retries()).await;
    let receipt = mailer
        .send(message("ops@example.net", "twice"))
        .await
        .expect("delivered");
    assert_eq!(receipt.attempts(), 2);
    assert!(receipt.possibly_duplicated(), "the first copy may have arrived");
    // A message sent once is not flagged.
    let once = mailer
        .send(message("ops@example.net", "once"))
        .await
        .expect("delivered");
    assert!(!once.possibly_duplicated());
    let stats = mailer.shutdown(WAIT).await;
    assert_eq!(stats.possibly_duplicated, 1);
    assert_eq!(stats.delivered, 2);
}

#[tokio::test]
async fn at_most_once_reports_that_the_body_was_sent() {
    let (srv, mailer) = first_final_reply_lost(quick_retries().with_retry_after_body_sent(false)).await;
    let e = mailer
        .send(message("ops@example.net", "at most once"))
        .await
        .expect_err("not sent again");
    assert!(e.is_timeout() && e.body_was_sent(), "{e}");
    assert_eq!(srv.connections_total(), 1, "no second attempt");
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn send_timeout_ends_a_stuck_attempt_and_names_its_stage() {
    // The relay never answers MAIL; its per-phase timeouts are long.
    let srv = server(ServerConfig::new().fault(Fault::on_command("MAIL").stall())).await;
    let mailer = Mailer::builder(
        settings(&srv)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("settings"),
    )
    .send_timeout(Some(Duration::from_millis(300)))
    .retry(quick_retries())
    .build()
    .expect("mailer");
    let e = tokio::time::timeout(WAIT, mailer.send(message("ops@example.net", "stuck")))
        .await
        .expect("the send timeout ended it, not the 30 s phase timeout")
        .expect_err("times out");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.stage(), Some(relaymail::Stage::Mail), "{e}");
    assert!(!e.body_was_sent());
    assert!(srv.messages().is_empty());
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn send_timeout_in_the_queue_says_queue_and_the_message_is_never_sent() {
    // One message a day: the second waits for the rate limit until its send
    // timeout, and is then dropped, never sent.
    let srv = server(ServerConfig::new()).await;
    let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
        .rate_limit(RateLimit::new(1, Duration::from_secs(24 * 60 * 60)))
        .send_timeout(Some(Duration::from_millis(300)))
        .build()
        .expect("mailer");
    mailer
        .send(message("ops@example.net", "first"))
        .await
        .expect("delivered");
    let e = tokio::time::timeout(WAIT, mailer.send(message("ops@example.net", "second")))
        .await
        .expect("the send timeout ended it")
        .expect_err("times out");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.stage(), Some(relaymail::Stage::Queue), "{e}");
    let stats = mailer.shutdown(WAIT).await;
    assert_eq!(srv.messages().len(), 1, "the timed-out message was not sent");
    assert_eq!((stats.delivered, stats.failed), (1, 1));
}

#[tokio::test]
async fn huge_limits_are_refused_when_the_mailer_is_built() {
    let srv = server(ServerConfig::new()).await;
    let build = |b: relaymail::MailerBuilder| b.build().map(|_| ()).expect_err("refused");
    let base = || Mailer::builder(settings(&srv).build().expect("settings"));
    let e = build(base().rate_limit(RateLimit::new(u32::MAX, Duration::from_secs(1))));
    assert!(e.to_string().contains("rate_limit.messages"), "{e}");
    let e = build(base().rate_limit(RateLimit::new(10, Duration::MAX)));
    assert!(e.to_string().contains("rate_limit.per"), "{e}");
    let e = build(base().send_timeout(Some(Duration::MAX)));
    assert!(e.to_string().contains("send_timeout"), "{e}");
    let e = build(base().retry(RetryPolicy::default().with_max_backoff(Duration::MAX)));
    assert!(e.to_string().contains("back-offs"), "{e}");
    let e = build(base().idle_timeout(Duration::MAX));
    assert!(e.to_string().contains("idle_timeout"), "{e}");
}

#[tokio::test]
async fn every_bad_mailer_setting_is_reported_at_once() {
    let srv = server(ServerConfig::new()).await;
    let e = Mailer::builder(settings(&srv).build().expect("settings"))
        .max_connections(0)
        .queue_capacity(0)
        .send_timeout(Some(Duration::ZERO))
        .build()
        .map(|_| ())
        .expect_err("refused");
    assert!(e.is_config(), "{e}");
    assert_eq!(
        e.to_string(),
        "invalid mailer settings: max_connections: must be at least 1; queue_capacity: must be at least 1; send_timeout: must be more than zero and at most 1 day"
    );
}

#[tokio::test]
async fn a_message_whose_send_timeout_ran_out_while_its_batch_waited_is_never_written() {
    // Two messages a day. The first goes alone; the next two are batched
    // onto the same connection: the second passes the rate limit, the third
    // waits for it until both send timeouts have run out. Neither may then
    // be written (with CHUNKING the second's whole body would already be
    // buffered behind the third's wait).
    let srv = server(ServerConfig::new().chunking(true)).await;
    let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
        .max_connections(1)
        .rate_limit(RateLimit::new(2, Duration::from_secs(24 * 60 * 60)))
        .send_timeout(Some(Duration::from_millis(300)))
        .build()
        .expect("mailer");
    let first = mailer
        .submit(message("ops@example.net", "first"))
        .await
        .expect("queued");
    let second = mailer
        .submit(message("ops@example.net", "second"))
        .await
        .expect("queued");
    let third = mailer
        .submit(message("ops@example.net", "third"))
        .await
        .expect("queued");
    first.await.expect("delivered");
    for (name, pending) in [("second", second), ("third", third)] {
        let e = tokio::time::timeout(WAIT, pending)
            .await
            .expect("answered by the send timeout")
            .expect_err("timed out");
        assert!(e.is_timeout(), "{name}: {e}");
        assert_eq!(e.stage(), Some(relaymail::Stage::Queue), "{name}: {e}");
    }
    mailer.shutdown(WAIT).await;
    srv.wait_for_closed_sessions(srv.connections_total(), WAIT)
        .await
        .expect("closed");
    let got: Vec<String> = srv.messages().iter().map(|m| subject(&m.data)).collect();
    assert_eq!(got, ["first"], "nothing was written after its send timeout");
}
