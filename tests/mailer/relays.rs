//! Backup relays and the relay-down rule, through the pooled `Mailer`.

use std::time::{Duration, Instant};

use relaymail::outbox::{DirSpool, OutboxPolicy};
use relaymail::testing::{Fault, ServerConfig};
use relaymail::{Mailer, RelayDownPolicy, SendOutcome};

use crate::{message, quick_retries, server, settings, WAIT};

const BUSY: &str = "421 4.3.2 Shutting down";

#[tokio::test]
async fn a_backup_carries_mail_until_the_primary_is_due_again() {
    // The primary answers its first greeting with 421, then recovers.
    let primary = server(ServerConfig::new().fault(Fault::on_greeting().nth(1).reply(BUSY))).await;
    let backup = server(ServerConfig::new()).await;
    let retry_after = Duration::from_millis(300);
    let s = settings(&primary)
        .backup_relays([format!("127.0.0.1:{}", backup.port())])
        .primary_retry_after(retry_after)
        .build()
        .expect("settings");
    let mailer = Mailer::builder(s).max_connections(1).build().expect("mailer");
    let first = mailer
        .send(message("ops@example.net", "m0"))
        .await
        .expect("delivered");
    let failed_over = Instant::now();
    let relay = |r: &relaymail::Receipt| r.delivery().relay().expect("a relay").port();
    assert_eq!(relay(&first), backup.port(), "the backup took over");

    // One message after another until one reaches the primary.
    let mut via_backup = 1;
    let switched = tokio::time::timeout(WAIT, async {
        for i in 1.. {
            let r = mailer
                .send(message("ops@example.net", &format!("m{i}")))
                .await
                .expect("delivered");
            if relay(&r) == primary.port() {
                return failed_over.elapsed();
            }
            via_backup += 1;
        }
        unreachable!()
    })
    .await
    .expect("the primary is used again");
    assert!(
        switched >= retry_after,
        "the backup is kept for primary_retry_after: switched after {switched:?}"
    );
    // The failover timeline, for the closing note (--nocapture).
    println!(
        "failover: m0 via the backup at 0 ms (primary 421 at its greeting); {via_backup} message(s) via the backup; the primary again after {} ms (primary_retry_after {} ms)",
        switched.as_millis(),
        retry_after.as_millis()
    );
    let next = mailer
        .send(message("ops@example.net", "after"))
        .await
        .expect("delivered");
    assert_eq!(relay(&next), primary.port(), "and the primary stays in use");

    let stats = mailer.stats();
    let by_port: Vec<(u16, u64)> = stats
        .delivered_by_relay
        .iter()
        .map(|(r, n)| (r.port(), *n))
        .collect();
    assert!(by_port.contains(&(backup.port(), via_backup)), "{by_port:?}");
    assert!(by_port.contains(&(primary.port(), 2)), "{by_port:?}");
    assert_eq!(backup.messages().len() as u64, via_backup);
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn a_relay_that_keeps_failing_is_marked_down_and_messages_fail_at_once() {
    // Every greeting is 421: each connection counts on the server.
    let relay = server(ServerConfig::new().fault(Fault::on_greeting().reply(BUSY))).await;
    let mailer = Mailer::builder(settings(&relay).build().expect("settings"))
        .retry(
            quick_retries()
                .with_max_attempts(5)
                .with_initial_backoff(Duration::from_millis(20)),
        )
        .max_connections(4)
        .build()
        .expect("mailer");
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..200 {
        pending.push(
            mailer
                .submit(message("ops@example.net", &format!("m{i}")))
                .await
                .expect("queued"),
        );
    }
    for p in pending {
        let e = p.await.expect_err("the relay never accepts");
        assert!(e.is_transient(), "{e}");
    }
    println!(
        "relay down: 200 messages failed in {} ms",
        started.elapsed().as_millis()
    );
    let stats = mailer.stats();
    assert_eq!(stats.failed, 200);
    assert!(stats.failed_fast > 150, "most failed at once: {stats:?}");
    let tried = relay.connections_total();
    // 200 messages with 5 attempts each would be up to 1,000 connections.
    assert!(tried < 20, "{tried} connections");

    // While it is down, a new message fails at once: no connection.
    let e = mailer
        .send(message("ops@example.net", "late"))
        .await
        .expect_err("down");
    let hint = e.hint().expect("hint");
    assert!(
        hint.contains("the relay is marked down after 3 failed connections"),
        "{hint}"
    );
    assert!(
        e.to_string().contains("421"),
        "the relay's own answer is kept: {e}"
    );
    assert_eq!(relay.connections_total(), tried);
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn one_probe_finds_the_relay_back() {
    // Three 421 greetings, then the relay is back.
    let mut config = ServerConfig::new();
    for n in 1..=3 {
        config = config.fault(Fault::on_greeting().nth(n).reply(BUSY));
    }
    let relay = server(config).await;
    let mailer = Mailer::builder(settings(&relay).build().expect("settings"))
        .retry(relaymail::RetryPolicy::never())
        .relay_down(
            RelayDownPolicy::default()
                .with_after_failures(3)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .max_connections(1)
        .build()
        .expect("mailer");
    for i in 0..3 {
        mailer
            .send(message("ops@example.net", &format!("f{i}")))
            .await
            .expect_err("421");
    }
    assert_eq!(relay.connections_total(), 3);
    // Until the down period ends, messages fail without a connection; then
    // one probe connection carries the next message.
    let failed_fast = tokio::time::timeout(WAIT, async {
        let mut failed_fast = 0;
        loop {
            match mailer.send(message("ops@example.net", "probe")).await {
                Ok(_) => return failed_fast,
                Err(e) => {
                    assert!(e.hint().unwrap_or("").contains("marked down"), "{e}");
                    failed_fast += 1;
                }
            }
        }
    })
    .await
    .expect("the relay is found back");
    assert_eq!(
        relay.connections_total(),
        4,
        "one probe, no connection while down"
    );
    assert_eq!(mailer.stats().failed_fast, failed_fast);
    mailer
        .send(message("ops@example.net", "after"))
        .await
        .expect("up again");
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn retry_relay_now_ends_the_down_period_at_once() {
    // One 421 greeting marks the relay down for an hour; then it is back.
    let relay = server(ServerConfig::new().fault(Fault::on_greeting().nth(1).reply(BUSY))).await;
    let mailer = Mailer::builder(settings(&relay).build().expect("settings"))
        .retry(relaymail::RetryPolicy::never())
        .relay_down(
            RelayDownPolicy::default()
                .with_after_failures(1)
                .with_initial_backoff(Duration::from_secs(3600)),
        )
        .build()
        .expect("mailer");
    mailer
        .send(message("ops@example.net", "a"))
        .await
        .expect_err("421");
    let e = mailer
        .send(message("ops@example.net", "b"))
        .await
        .expect_err("down: failed at once");
    assert!(e.hint().unwrap_or("").contains("marked down"), "{e}");
    assert_eq!(relay.connections_total(), 1);
    mailer.retry_relay_now();
    mailer
        .send(message("ops@example.net", "c"))
        .await
        .expect("tried at once, and the relay is back");
    assert_eq!(relay.connections_total(), 2);
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn send_or_enqueue_saves_the_draft_at_once_when_the_relay_is_down() {
    let relay = server(ServerConfig::new().fault(Fault::on_greeting().reply(BUSY))).await;
    let dir = std::env::temp_dir().join(format!("relaymail-relays-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mailer = Mailer::builder(settings(&relay).build().expect("settings"))
        // A long retry cycle: without the relay-down rule each message
        // would wait through it before being saved.
        .retry(
            relaymail::RetryPolicy::default()
                .with_max_attempts(10)
                .with_initial_backoff(Duration::from_millis(5)),
        )
        .outbox(
            DirSpool::open(&dir).expect("spool"),
            OutboxPolicy::default().with_initial_backoff(Duration::from_secs(3600)),
        )
        .build()
        .expect("mailer");
    let outcome = mailer
        .send_or_enqueue(message("ops@example.net", "first"))
        .await
        .expect("saved");
    let SendOutcome::Deferred { error, .. } = outcome else {
        panic!("not delivered: {outcome:?}")
    };
    assert!(error.hint().unwrap_or("").contains("marked down"), "{error}");
    assert_eq!(
        relay.connections_total(),
        3,
        "three attempts marked it down, not ten"
    );
    let outcome = mailer
        .send_or_enqueue(message("ops@example.net", "second"))
        .await
        .expect("saved");
    assert!(matches!(outcome, SendOutcome::Deferred { .. }));
    assert_eq!(relay.connections_total(), 3, "saved without a connection");
    mailer.shutdown(WAIT).await;
    let _ = std::fs::remove_dir_all(dir);
}
