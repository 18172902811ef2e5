//! Connection cap, deliveries per connection, age, idle handling and
//! pipelining across transactions, as the server sees them.

use std::time::Duration;

use relaymail::testing::ServerConfig;
use relaymail::Mailer;

use crate::{message, server, settings, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_holds_under_200_concurrent_senders_and_stats_add_up() {
    let srv = server(ServerConfig::new()).await;
    let mailer = Mailer::builder(
        settings(&srv)
            .max_deliveries_per_connection(20)
            .build()
            .expect("settings"),
    )
    .max_connections(3)
    .build()
    .expect("mailer");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let m = mailer.clone();
        tasks.push(tokio::spawn(async move {
            m.send(message(&format!("user{i}@example.net"), &format!("n{i}")))
                .await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("delivered");
    }
    assert!(srv.peak_connections() <= 3, "peak {}", srv.peak_connections());
    assert_eq!(srv.messages().len(), 200);
    let stats = mailer.shutdown(WAIT).await;
    assert_eq!(stats.offered, 200);
    assert_eq!(stats.delivered + stats.failed, stats.offered);
    assert_eq!(stats.failed, 0);
    assert_eq!((stats.queued, stats.in_flight, stats.deferred), (0, 0, 0));
    assert_eq!(stats.connections_open, 0);
    let carried: u64 = stats
        .deliveries_per_connection
        .iter()
        .map(|(n, c)| *n as u64 * c)
        .sum();
    assert_eq!(carried, 200);
    assert!(stats.deliveries_per_connection.iter().all(|(n, _)| *n <= 20));
    assert_eq!(stats.connections_opened, srv.connections_total() as u64);
    assert!(stats.connections_opened >= 10, "200 / 20 per connection");
}

#[tokio::test]
async fn sequential_messages_open_ceil_n_over_m_connections() {
    let srv = server(ServerConfig::new()).await;
    let mailer = Mailer::builder(
        settings(&srv)
            .max_deliveries_per_connection(3)
            .build()
            .expect("settings"),
    )
    .max_connections(4)
    .build()
    .expect("mailer");
    for i in 0..7 {
        mailer
            .send(message("ops@example.net", &format!("s{i}")))
            .await
            .expect("sent");
    }
    assert_eq!(srv.connections_total(), 3, "ceil(7 / 3)");
    let sessions = srv.wait_for_closed_sessions(2, WAIT).await.expect("two closed");
    let closed: Vec<_> = sessions.iter().filter(|s| s.closed).collect();
    assert_eq!(closed.len(), 2);
    assert!(
        closed.iter().all(|s| s.quit && s.messages == 3),
        "QUIT after 3: {closed:?}"
    );
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn max_age_retires_a_connection() {
    let srv = server(ServerConfig::new()).await;
    let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
        .max_connection_age(Some(Duration::ZERO))
        .build()
        .expect("mailer");
    for i in 0..3 {
        mailer
            .send(message("ops@example.net", &format!("a{i}")))
            .await
            .expect("sent");
    }
    assert_eq!(srv.connections_total(), 3);
    mailer.shutdown(WAIT).await;
}

#[tokio::test]
async fn noop_only_after_idle() {
    let srv = server(ServerConfig::new()).await;
    let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
        .build()
        .expect("mailer");
    for i in 0..5 {
        mailer
            .send(message("ops@example.net", &format!("b{i}")))
            .await
            .expect("sent");
    }
    mailer.shutdown(WAIT).await;
    let verbs: Vec<String> = srv.sessions()[0]
        .commands
        .iter()
        .map(|c| c.line.clone())
        .collect();
    assert!(
        !verbs.iter().any(|l| l == "NOOP"),
        "no NOOP per message: {verbs:?}"
    );

    let srv = server(ServerConfig::new()).await;
    let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
        .probe_after_idle(Duration::ZERO)
        .build()
        .expect("mailer");
    for i in 0..2 {
        mailer
            .send(message("ops@example.net", &format!("c{i}")))
            .await
            .expect("sent");
    }
    mailer.shutdown(WAIT).await;
    let lines: Vec<String> = srv.sessions()[0]
        .commands
        .iter()
        .map(|c| c.line.clone())
        .collect();
    let first_mail = lines.iter().position(|l| l.starts_with("MAIL")).expect("MAIL");
    let noop = lines
        .iter()
        .position(|l| l == "NOOP")
        .expect("probed before reuse");
    let second_mail = lines.iter().rposition(|l| l.starts_with("MAIL")).expect("MAIL");
    assert!(first_mail < noop && noop < second_mail, "{lines:?}");
    assert_eq!(srv.connections_total(), 1);
}

#[tokio::test]
async fn idle_connections_quit_after_the_idle_timeout() {
    let srv = server(ServerConfig::new()).await;
    let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
        .idle_timeout(Duration::from_millis(50))
        .build()
        .expect("mailer");
    mailer
        .send(message("ops@example.net", "idle"))
        .await
        .expect("sent");
    let sessions = srv
        .wait_for_closed_sessions(1, WAIT)
        .await
        .expect("closed when idle");
    assert!(sessions[0].quit, "closed with QUIT");
    // The next message opens a new connection.
    mailer
        .send(message("ops@example.net", "again"))
        .await
        .expect("sent");
    assert_eq!(srv.connections_total(), 2);
    let stats = mailer.stats();
    assert_eq!((stats.connections_opened, stats.connections_open), (2, 1));
    assert_eq!(stats.deliveries_per_connection, vec![(1, 1)]);
}

#[tokio::test]
async fn transactions_are_pipelined_across_messages() {
    for chunking in [false, true] {
        let srv = server(ServerConfig::new().pipelining(true).chunking(true)).await;
        let mailer = Mailer::builder(settings(&srv).chunking(chunking).build().expect("settings"))
            .max_connections(1)
            .build()
            .expect("mailer");
        let mut pending = Vec::new();
        for i in 0..10 {
            pending.push(
                mailer
                    .submit(message("ops@example.net", &format!("p{i}")))
                    .await
                    .expect("queued"),
            );
        }
        for p in pending {
            p.await.expect("delivered");
        }
        mailer.shutdown(WAIT).await;
        let cmds = &srv.sessions()[0].commands;
        let batch_of = |verb: &str| -> Vec<usize> {
            cmds.iter()
                .filter(|c| c.line.starts_with(verb))
                .map(|c| c.batch)
                .collect()
        };
        let mails = batch_of("MAIL");
        assert_eq!(mails.len(), 10);
        let pipelined = if chunking {
            // BDAT needs no 354: MAIL, RCPT and the whole message leave in
            // one write, one round trip per message. (The next MAIL waits for
            // the BDAT reply: after a refused BDAT LAST the transaction state
            // is not defined well enough to pipeline past it.)
            let bdats = batch_of("BDAT");
            let rcpts = batch_of("RCPT");
            assert_eq!(bdats.len(), 10);
            (0..10)
                .filter(|&i| mails[i] == rcpts[i] && rcpts[i] == bdats[i])
                .count()
        } else {
            // The next MAIL arrives in the read right after DATA: together
            // with the previous message's body.
            let datas = batch_of("DATA");
            datas
                .iter()
                .zip(&mails[1..])
                .filter(|(d, m)| **m == **d + 1)
                .count()
        };
        assert!(
            pipelined >= 5,
            "chunking={chunking}: {pipelined} pipelined; {cmds:?}"
        );
    }
}

#[tokio::test]
async fn a_250_and_a_421_in_one_write_deliver_once_and_retry_only_the_unanswered() {
    use relaymail::testing::Fault;
    for pipelining in [true, false] {
        // The second message's 250 comes with a 421 in the same write; the
        // third, pipelined behind it on the same connection, is unanswered.
        let srv = server(
            ServerConfig::new().pipelining(pipelining).fault(
                Fault::on_end_of_data()
                    .nth(2)
                    .append(b"421 4.3.2 Shutting down\r\n"),
            ),
        )
        .await;
        let mailer = Mailer::builder(settings(&srv).build().expect("settings"))
            .max_connections(1)
            .retry(crate::quick_retries())
            .build()
            .expect("mailer");
        let mut pending = Vec::new();
        for i in 0..3 {
            pending.push(
                mailer
                    .submit(message("ops@example.net", &format!("p{i}")))
                    .await
                    .expect("queued"),
            );
        }
        let mut attempts = Vec::new();
        for p in pending {
            let receipt = p.await.expect("delivered");
            assert!(!receipt.possibly_duplicated(), "pipelining {pipelining}");
            attempts.push(receipt.attempts());
        }
        assert_eq!(
            attempts,
            [1, 1, 2],
            "pipelining {pipelining}: only the unanswered one is retried"
        );
        let mut subjects: Vec<String> = srv.messages().iter().map(|m| crate::subject(&m.data)).collect();
        subjects.sort();
        assert_eq!(subjects, ["p0", "p1", "p2"], "pipelining {pipelining}: each once");
        mailer.shutdown(WAIT).await;
    }
}
