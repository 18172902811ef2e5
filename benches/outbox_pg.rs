//! PgOutbox: enqueue rates (one committed transaction per draft, and
//! batched with `enqueue_many`) and drain rates with 1, 2 and 4 deliverer
//! processes, each with its own Mailer, to an in-process SMTP sink.
//!
//! Run: `RELAYMAIL_PG_URL=postgres://… cargo bench --bench outbox_pg --features postgres,test-server`
//! (`-- --quick` for smaller counts). Without `RELAYMAIL_PG_URL` it says so
//! and exits. It creates and drops its own schemas. The database's own
//! settings decide durability: state `synchronous_commit` and `fsync`
//! beside the figures.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relaymail::outbox::{OutboxPolicy, PgOutbox};
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Envelope, Mailer, Message, SmtpSettings, TlsMode};

fn message(i: usize) -> Message {
    let address = |a: &str| a.parse::<relaymail::Address>().expect("address");
    let mut body = format!("Message-ID: <pgbench-{i}@example.com>\r\nSubject: note {i}\r\n\r\n");
    while body.len() < 2048 {
        body.push_str("The quick brown fox jumps over the lazy dog.\r\n");
    }
    Message::new(
        Envelope::new(
            Some(address("app@example.com")),
            vec![address(&format!("user{i}@example.net"))],
        )
        .expect("envelope"),
        body.into_bytes(),
    )
}

async fn fresh(url: &str, schema: &str) -> PgOutbox {
    let outbox = PgOutbox::connect(url, schema).await.expect("connect");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(outbox.pool())
        .await
        .expect("drop");
    outbox.migrate().await.expect("migrate");
    outbox
}

/// A deliverer process: a Mailer on the outbox, sending to the sink, until
/// it is killed.
async fn deliverer(url: &str, schema: &str, port: u16) {
    let outbox = PgOutbox::connect(url, schema).await.expect("connect");
    let settings = SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(port))
        .tls(TlsMode::None)
        .sender("app@example.com")
        .helo_name("bench.example.com")
        .build()
        .expect("settings");
    let _mailer = Mailer::builder(settings)
        .max_connections(4)
        .outbox(
            outbox,
            OutboxPolicy::default()
                .with_batch(128)
                .with_poll_interval(Duration::from_millis(100)),
        )
        .build()
        .expect("mailer");
    println!("ready");
    std::future::pending::<()>().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--deliverer") {
        let port = args[at + 3].parse().expect("port");
        deliverer(&args[at + 1], &args[at + 2], port).await;
        return;
    }
    let Ok(url) = std::env::var("RELAYMAIL_PG_URL") else {
        println!("outbox_pg: set RELAYMAIL_PG_URL (bash .ci/postgres/start.sh DIR starts a private cluster)");
        return;
    };
    let quick = args.iter().any(|a| a == "--quick");
    let (singles, batched, drained) = if quick {
        (500, 5_000, 2_000)
    } else {
        (5_000, 50_000, 10_000)
    };
    let pid = std::process::id();

    let probe = fresh(&url, &format!("bench{pid}_probe")).await;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'server_version')",
    )
    .fetch_all(probe.pool())
    .await
    .expect("settings");
    println!("database: {settings:?}");

    // One committed transaction per draft, 8 at a time.
    let outbox = fresh(&url, &format!("bench{pid}_single")).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let outbox = outbox.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..singles).step_by(8) {
                relaymail::outbox::Outbox::enqueue(&outbox, &message(i))
                    .await
                    .expect("enqueue");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "enqueue, one committed transaction per draft (8 concurrent): {singles} drafts in {secs:.2} s = {:.0} drafts/s",
        singles as f64 / secs
    );

    // Batched: enqueue_many, 500 drafts per transaction.
    let outbox = fresh(&url, &format!("bench{pid}_batch")).await;
    let batch: Vec<Message> = (0..500).map(message).collect();
    let start = Instant::now();
    for _ in 0..batched / 500 {
        outbox.enqueue_many(&batch).await.expect("enqueue_many");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "enqueue_many, 500 per transaction: {batched} drafts in {secs:.2} s = {:.0} drafts/s",
        batched as f64 / secs
    );

    // Drain with 1, 2 and 4 deliverer processes.
    for processes in [1usize, 2, 4] {
        let schema = format!("bench{pid}_drain{processes}");
        let outbox = fresh(&url, &schema).await;
        for chunk in (0..drained).collect::<Vec<_>>().chunks(500) {
            let messages: Vec<Message> = chunk.iter().map(|&i| message(i)).collect();
            outbox.enqueue_many(&messages).await.expect("fill");
        }
        let sink = TestServer::start(ServerConfig::new()).await.expect("sink");
        let start = Instant::now();
        let mut children: Vec<Child> = (0..processes)
            .map(|_| {
                Command::new(std::env::current_exe().expect("exe"))
                    .args(["--deliverer", &url, &schema, &sink.port().to_string()])
                    .stdout(Stdio::null())
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("deliverer")
            })
            .collect();
        let got = sink
            .wait_for_messages(drained, Duration::from_secs(600))
            .await
            .expect("drained");
        let secs = start.elapsed().as_secs_f64();
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        println!(
            "drain with {processes} deliverer process(es): {} drafts in {secs:.2} s = {:.0} drafts/s (process start included)",
            got.len(),
            got.len() as f64 / secs
        );
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(outbox.pool())
            .await
            .expect("drop");
    }
    for suffix in ["probe", "single", "batch"] {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS bench{pid}_{suffix} CASCADE"))
            .execute(probe.pool())
            .await;
    }
}
