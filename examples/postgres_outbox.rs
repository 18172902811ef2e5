//! A sign-up handler that creates the user and enqueues the welcome mail in
//! one PostgreSQL transaction, and the deliverer that sends it.
//!
//! ```sh
//! RELAYMAIL_PG_URL=postgres://app@127.0.0.1/app \
//!     cargo run --example postgres_outbox --features postgres,test-server
//! ```
//!
//! The relay is an in-process test server on 127.0.0.1, so the example sends
//! real mail without any setup beyond the database (`.ci/postgres/start.sh
//! DIR` starts a private one and writes `DIR/env`). A second sign-up with
//! the same address fails on the `users` table's unique key: its
//! transaction rolls back, and no welcome mail is sent for it.

use std::time::Duration;

use relaymail::outbox::{OutboxPolicy, PgOutbox};
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Email, Mailer, SmtpSettings, TlsMode};

/// What a web framework's handler would get as its state.
struct App {
    outbox: PgOutbox,
    mailer: Mailer,
}

/// `POST /signup` in an axum-style application: the user row and the
/// welcome mail commit together, or neither does.
async fn sign_up(app: &App, email: &str, name: &str) -> Result<i64, String> {
    let mut tx = app.outbox.pool().begin().await.map_err(|e| e.to_string())?;
    let id: i64 = sqlx::query_scalar("INSERT INTO example_users (email, name) VALUES ($1, $2) RETURNING id")
        .bind(email)
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| format!("cannot create the user: {e}"))?;
    let welcome = app
        .mailer
        .composer()
        .compose(
            Email::new()
                .to((name, email))
                .subject("Welcome!")
                .text(format!("Hello {name}, your account number is {id}.")),
        )
        .await
        .map_err(|e| e.to_string())?;
    app.outbox
        .enqueue_in(&mut tx, &welcome)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(id)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(url) = std::env::var("RELAYMAIL_PG_URL") else {
        eprintln!("set RELAYMAIL_PG_URL (bash .ci/postgres/start.sh DIR starts a private PostgreSQL and writes DIR/env)");
        std::process::exit(2);
    };
    let outbox = PgOutbox::connect(&url, "example_mail").await?;
    outbox.migrate().await?;
    sqlx::query("DROP TABLE IF EXISTS example_users")
        .execute(outbox.pool())
        .await?;
    sqlx::query("CREATE TABLE example_users (id bigserial PRIMARY KEY, email text UNIQUE NOT NULL, name text NOT NULL)")
        .execute(outbox.pool())
        .await?;

    let relay = TestServer::start(ServerConfig::new()).await?;
    let settings = SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(relay.port()))
        .tls(TlsMode::None)
        .sender("welcome@example.com")
        .build()?;
    // The deliverer: this Mailer claims the committed drafts (in a real
    // deployment, every replica runs one on the same table).
    let mailer = Mailer::builder(settings)
        .outbox(outbox.clone(), OutboxPolicy::default())
        .build()?;
    let app = App { outbox, mailer };

    let ana = sign_up(&app, "ana@example.net", "Ana").await?;
    println!("signed up Ana as user {ana}");
    match sign_up(&app, "ana@example.net", "Ana again").await {
        Ok(id) => return Err(format!("a duplicate sign-up became user {id}").into()),
        Err(e) => println!("second sign-up refused, rolled back: {e}"),
    }
    let kim = sign_up(&app, "kim@example.net", "Kim").await?;
    println!("signed up Kim as user {kim}");

    let received = relay.wait_for_messages(2, Duration::from_secs(10)).await?;
    for m in &received {
        println!("relay received mail for {}", m.rcpt_to.join(", "));
    }
    let stats = app.mailer.shutdown(Duration::from_secs(10)).await;
    println!("delivered {}, failed {}", stats.delivered, stats.failed);
    if received.len() != 2 || stats.delivered != 2 {
        return Err("expected exactly two welcome mails".into());
    }
    Ok(())
}
