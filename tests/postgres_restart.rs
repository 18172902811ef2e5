//! `PgOutbox` across a PostgreSQL restart (`pg_ctl restart`): a test binary
//! of its own, so that the restart cannot cut other tests' connections.
//! Needs `RELAYMAIL_PG_URL`, `RELAYMAIL_PG_CTL` and `RELAYMAIL_PG_DATA`
//! (`.ci/postgres/start.sh` writes them); skipped without, failed under
//! `CI=true`.
#![cfg(all(feature = "postgres", feature = "test-server"))]

use std::time::Duration;

use relaymail::outbox::{Area, Outbox, OutboxPolicy};
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::Mailer;

#[path = "support/pg.rs"]
mod pg;
use pg::{message, relay};

const WAIT: Duration = Duration::from_secs(30);

/// The database's URL, `pg_ctl` as its owner runs it, and its data
/// directory (see [`pg::required_env`]).
fn env(test: &str) -> Option<(String, String, String)> {
    Some((
        pg::pg_url(test)?,
        pg::required_env(test, "RELAYMAIL_PG_CTL")?,
        pg::required_env(test, "RELAYMAIL_PG_DATA")?,
    ))
}

/// The tests here stop or restart the one server: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `pg_ctl … ACTION` (`restart`, `stop`, `start`) and waits for it.
async fn pg_ctl(ctl: &str, data: &str, action: &'static str) {
    let (ctl, data) = (ctl.to_owned(), data.to_owned());
    let status = tokio::task::spawn_blocking(move || {
        let mut words = ctl.split_whitespace();
        let program = words.next().expect("a command");
        std::process::Command::new(program)
            .args(words)
            .args(["-D", &data, "-w", "-t", "60", "-m", "fast", action])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("pg_ctl runs")
    })
    .await
    .expect("joined");
    assert!(status.success(), "pg_ctl {action}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_enqueue_fails_clearly_and_send_or_enqueue_returns_that_error() {
    let Some((url, ctl, data)) = env("down") else {
        return;
    };
    let _one_at_a_time = SERIAL.lock().await;
    let schema = format!("t{}_down", std::process::id());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .expect("connects");
    let outbox = pg::fresh_schema(&url, &schema, Some(pool)).await;
    // The relay is down too: nothing listens on this loopback port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let settings = relay(dead_port, "client.example.com");
    let mailer = Mailer::builder(settings)
        .retry(relaymail::RetryPolicy::never())
        .outbox(outbox.clone(), OutboxPolicy::default())
        .build()
        .expect("mailer");

    pg_ctl(&ctl, &data, "stop").await;
    let e = outbox
        .enqueue(&message("down@example.net"))
        .await
        .expect_err("not acknowledged while the database is down");
    assert!(
        e.is_transient() && e.to_string().contains("outbox database"),
        "{e}"
    );
    let e = mailer
        .send_or_enqueue(message("down@example.net"))
        .await
        .expect_err("neither sent nor saved");
    assert!(
        e.to_string().contains("outbox database"),
        "the outbox's error: {e}"
    );
    pg_ctl(&ctl, &data, "start").await;

    let id = outbox
        .enqueue(&message("back@example.net"))
        .await
        .expect("saved once the database is back");
    assert!(outbox.inspect(Area::Drafts, &id).await.is_ok());
    let _ = mailer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliverers_reconnect_after_a_restart_and_lose_nothing() {
    let Some((url, ctl, data)) = env("restart") else {
        return;
    };
    let _one_at_a_time = SERIAL.lock().await;
    let schema = format!("t{}_restart", std::process::id());
    let outbox = pg::fresh_schema(&url, &schema, None).await;
    let srv = TestServer::start(ServerConfig::new()).await.expect("server");
    let settings = relay(srv.port(), "client.example.com");
    let mailer = Mailer::builder(settings)
        .outbox(
            outbox.clone(),
            OutboxPolicy::default().with_poll_interval(Duration::from_millis(200)),
        )
        .build()
        .expect("mailer");
    for i in 0..3 {
        mailer
            .enqueue(message(&format!("before{i}@example.net")))
            .await
            .expect("enqueued");
    }
    srv.wait_for_messages(3, WAIT)
        .await
        .expect("delivered before the restart");

    // Restart the server: every pooled connection (and the LISTEN one) dies.
    pg_ctl(&ctl, &data, "restart").await;

    // The pool replaces its dead connections: enqueue works at once.
    for i in 0..3 {
        mailer
            .enqueue(message(&format!("after{i}@example.net")))
            .await
            .expect("enqueued after the restart");
    }
    // Wait, on the relay's records, until every address has arrived. The
    // outbox is at-least-once: a "before" draft whose delivery was being
    // recorded when the server went down is released and sent again, so
    // such drafts (and only they) may arrive twice.
    let expected = [
        "after0@example.net",
        "after1@example.net",
        "after2@example.net",
        "before0@example.net",
        "before1@example.net",
        "before2@example.net",
    ];
    let mut got = srv
        .wait_for_messages(expected.len(), WAIT)
        .await
        .expect("delivered after the restart");
    loop {
        let arrived: std::collections::BTreeSet<String> =
            got.iter().flat_map(|m| m.rcpt_to.clone()).collect();
        let missing = expected.iter().filter(|a| !arrived.contains(**a)).count();
        if missing == 0 {
            break;
        }
        got = srv
            .wait_for_messages(got.len() + missing, WAIT)
            .await
            .unwrap_or_else(|_| panic!("{missing} drafts were lost across the restart"));
    }
    let mut counts = std::collections::BTreeMap::new();
    for to in got.iter().flat_map(|m| m.rcpt_to.clone()) {
        *counts.entry(to).or_insert(0) += 1;
    }
    for (to, n) in &counts {
        assert!(
            *n == 1 || (to.starts_with("before") && *n == 2),
            "{to} arrived {n} times: only a draft in flight at the restart may come twice"
        );
    }
    let stats = mailer.shutdown(WAIT).await;
    assert!(stats.delivered >= 6, "{stats:?}");
    assert!(outbox
        .list(Area::Drafts, None, 10)
        .await
        .expect("list")
        .drafts
        .is_empty());
}
