//! What the PgOutbox test binaries share (included with `#[path]`): the
//! database from `RELAYMAIL_PG_URL`, fresh schemas, a relay on loopback and
//! the messages they send.
#![allow(dead_code, reason = "each test binary uses a part of it")]

use relaymail::outbox::PgOutbox;
use relaymail::{Envelope, Message, SmtpSettings, TlsMode};

/// The environment variable `name`, or, when it is missing: "skipped" for
/// `test` outside CI, a failure under `CI=true` (`.ci/run` starts
/// PostgreSQL and sets it).
pub(crate) fn required_env(test: &str, name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: {name} is not set under CI=true (.ci/run starts PostgreSQL)"
            );
            println!("{test}: skipped (no {name}; .ci/postgres/start.sh starts a private cluster)");
            None
        }
    }
}

/// The test database's URL (see [`required_env`]).
pub(crate) fn pg_url(test: &str) -> Option<String> {
    required_env(test, "RELAYMAIL_PG_URL")
}

/// An outbox in `schema`, dropped and migrated anew on `pool` (or on a pool
/// of its own).
pub(crate) async fn fresh_schema(url: &str, schema: &str, pool: Option<sqlx::PgPool>) -> PgOutbox {
    let outbox = match pool {
        Some(pool) => PgOutbox::with_pool(pool, schema).expect("outbox"),
        None => PgOutbox::connect(url, schema).await.expect("connects"),
    };
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(outbox.pool())
        .await
        .expect("clean");
    assert_eq!(outbox.migrate().await.expect("migrate"), 0, "a new schema");
    outbox
}

/// Settings for the relay on 127.0.0.1:`port`, greeting it as `helo`.
pub(crate) fn relay(port: u16, helo: &str) -> SmtpSettings {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(port))
        .tls(TlsMode::None)
        .sender("app@example.com")
        .helo_name(helo)
        .build()
        .expect("settings")
}

/// A message from app@example.com to `to`, with `headers` first.
pub(crate) fn message_with(to: &str, headers: &str) -> Message {
    let address = |a: &str| a.parse::<relaymail::Address>().expect("address");
    Message::new(
        Envelope::new(Some(address("app@example.com")), vec![address(to)]).expect("envelope"),
        format!("{headers}Subject: for {to}\r\n\r\nhello\r\n").into_bytes(),
    )
}

/// A message from app@example.com to `to`.
pub(crate) fn message(to: &str) -> Message {
    message_with(to, "")
}
