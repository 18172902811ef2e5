//! Three deliverer processes, each with its own Mailer, on one PgOutbox
//! table and one relay: 10,000 committed drafts, two of the processes
//! SIGKILLed part way. Every draft arrives; duplicates stay within what the
//! killed processes had in flight, and come only from them.
//!
//! A test binary of its own (it starts copies of itself as the deliverer
//! processes). Needs `RELAYMAIL_PG_URL`; skipped without it, failed under
//! `CI=true`.
#![cfg(all(feature = "postgres", feature = "test-server", unix))]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use relaymail::outbox::{OutboxPolicy, PgOutbox};
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Mailer, Message};

#[path = "support/pg.rs"]
mod pg;

const DRAFTS: usize = 10_000;
const BATCH: usize = 64;
const WAIT: Duration = Duration::from_secs(180);

/// Draft `i`, numbered in its Message-ID.
fn message(i: usize) -> Message {
    pg::message_with(
        &format!("user{i}@example.net"),
        &format!("Message-ID: <pgkill-{i}@example.com>\r\n"),
    )
}

/// The deliverer process: runs only when started by the test below.
#[test]
fn deliverer_entry() {
    let Ok(schema) = std::env::var("RELAYMAIL_KILL_SCHEMA") else {
        return;
    };
    let url = std::env::var("RELAYMAIL_PG_URL").expect("url");
    let port: u16 = std::env::var("RELAYMAIL_KILL_PORT")
        .expect("port")
        .parse()
        .expect("port");
    let name = std::env::var("RELAYMAIL_KILL_NAME").expect("name");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // A short lease, so that the survivor takes over the killed
        // processes' drafts quickly; the heartbeat renews it every 0.67 s.
        let outbox = PgOutbox::connect(&url, &schema)
            .await
            .expect("connect")
            .with_lease(Duration::from_secs(2));
        let _mailer = Mailer::builder(pg::relay(port, &format!("{name}.example.com")))
            .max_connections(2)
            .outbox(
                outbox,
                OutboxPolicy::default()
                    .with_batch(BATCH)
                    .with_poll_interval(Duration::from_millis(200)),
            )
            .build()
            .expect("mailer");
        // Until killed (or the parent ends it).
        std::future::pending::<()>().await;
    });
}

fn deliverer(url: &str, schema: &str, port: u16, name: &str) -> Child {
    Command::new(std::env::current_exe().expect("exe"))
        .args(["deliverer_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env("RELAYMAIL_PG_URL", url)
        .env("RELAYMAIL_KILL_SCHEMA", schema)
        .env("RELAYMAIL_KILL_PORT", port.to_string())
        .env("RELAYMAIL_KILL_NAME", name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("deliverer process")
}

/// The Message-ID number of a received message.
fn number(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    let start = text.find("<pgkill-").expect("message id") + "<pgkill-".len();
    let end = start + text[start..].find('@').expect("@");
    text[start..end].parse().expect("number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_deliverers_lose_nothing_and_duplicate_only_what_they_had_in_flight() {
    let Some(url) = pg::pg_url("kill") else { return };
    let schema = format!("t{}_kill", std::process::id());
    let outbox = pg::fresh_schema(&url, &schema, None).await;
    // Every draft committed before any deliverer starts.
    for chunk in (0..DRAFTS).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<Message> = chunk.iter().map(|&i| message(i)).collect();
        outbox.enqueue_many(&batch).await.expect("committed");
    }

    let relay = TestServer::start(ServerConfig::new()).await.expect("relay");
    let names = ["killed-a", "killed-b", "survivor"];
    let mut children: Vec<Child> = names
        .iter()
        .map(|name| deliverer(&url, &schema, relay.port(), name))
        .collect();
    // Part way through: SIGKILL two of the three.
    relay
        .wait_for_messages(DRAFTS / 4, WAIT)
        .await
        .expect("a quarter delivered");
    for child in &mut children[..2] {
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    // Wait, on the relay's own records, until every draft has arrived.
    let mut received = relay.wait_for_messages(DRAFTS, WAIT).await.expect("delivered");
    loop {
        let distinct: std::collections::HashSet<usize> = received.iter().map(|m| number(&m.data)).collect();
        if distinct.len() == DRAFTS {
            break;
        }
        let missing = DRAFTS - distinct.len();
        received = relay
            .wait_for_messages(received.len() + missing, WAIT)
            .await
            .unwrap_or_else(|_| panic!("{missing} committed drafts never arrived"));
    }
    let mut survivor = children.pop().expect("survivor");
    let _ = survivor.kill();
    let _ = survivor.wait();

    let helo: HashMap<usize, String> = relay
        .sessions()
        .into_iter()
        .map(|s| (s.id, s.helo.unwrap_or_default()))
        .collect();
    let mut copies: HashMap<usize, Vec<String>> = HashMap::new();
    for m in &received {
        copies
            .entry(number(&m.data))
            .or_default()
            .push(helo.get(&m.session).cloned().unwrap_or_default());
    }
    assert_eq!(copies.len(), DRAFTS, "every committed draft arrived");
    let mut duplicates = 0;
    for (n, senders) in &copies {
        if senders.len() > 1 {
            duplicates += senders.len() - 1;
            assert!(
                senders.iter().any(|s| s.starts_with("killed-")),
                "draft {n} was sent twice by live deliverers: {senders:?}"
            );
            for name in names {
                let by = senders.iter().filter(|s| s.starts_with(name)).count();
                assert!(by <= 1, "draft {n} was sent {by} times by {name}");
            }
        }
    }
    // A killed process had at most its claimed batch in flight.
    assert!(
        duplicates <= 2 * BATCH,
        "{duplicates} duplicates, more than two batches of {BATCH} in flight"
    );
    let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.relaymail_drafts"))
        .fetch_one(outbox.pool())
        .await
        .expect("count");
    println!(
        "{DRAFTS} drafts, {} received, {duplicates} duplicates (bound {}), {left} rows left",
        received.len(),
        2 * BATCH
    );
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(outbox.pool())
        .await
        .expect("drop");
}
