//! `PgOutbox` against a real PostgreSQL: `.ci/run` starts a private cluster
//! on 127.0.0.1 (`.ci/postgres/start.sh`) and sets `RELAYMAIL_PG_URL`.
//! Without it these tests say "skipped" — and fail under `CI=true`.
#![cfg(all(feature = "postgres", feature = "test-server"))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use relaymail::outbox::{Area, Deferral, Outbox, OutboxPolicy, PgOutbox};
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Mailer, Message};

#[path = "support/pg.rs"]
mod pg;
use pg::{message, pg_url as url, relay};

const WAIT: Duration = Duration::from_secs(10);

/// A fresh, migrated outbox in a schema of its own.
async fn fresh(url: &str, name: &str) -> PgOutbox {
    fresh_named(url, name).await.0
}

/// [`fresh`], and the schema's name.
async fn fresh_named(url: &str, name: &str) -> (PgOutbox, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let schema = format!(
        "t{}_{name}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    (pg::fresh_schema(url, &schema, None).await, schema)
}

#[tokio::test]
async fn pg_outbox_passes_the_outbox_conformance_suite() {
    let Some(url) = url("conformance") else { return };
    let passed = relaymail::testing::check_outbox(|| fresh(&url, "conf"))
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(passed, relaymail::testing::CHECKS);
}

#[tokio::test]
async fn migrate_is_idempotent_versioned_and_safe_to_run_at_once() {
    let Some(url) = url("migrate") else { return };
    let a = fresh(&url, "mig").await;
    assert_eq!(
        a.migrate().await.expect("again"),
        relaymail::outbox::pg::SCHEMA_VERSION
    );
    // Two replicas starting together on a new schema.
    let schema = format!("t{}_mig_race", std::process::id());
    let (x, y) = (
        PgOutbox::connect(&url, &schema).await.expect("x"),
        PgOutbox::connect(&url, &schema).await.expect("y"),
    );
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(x.pool())
        .await
        .expect("clean");
    let (rx, ry) = tokio::join!(x.migrate(), y.migrate());
    let mut found = [rx.expect("x migrates"), ry.expect("y migrates")];
    found.sort();
    assert_eq!(
        found,
        [0, relaymail::outbox::pg::SCHEMA_VERSION],
        "one created the schema, the other found it"
    );
    assert!(
        PgOutbox::connect(&url, "Robert'); DROP TABLE x;--")
            .await
            .is_err(),
        "schema names are checked where they enter"
    );
}

#[tokio::test]
async fn a_rolled_back_transaction_sends_nothing_and_a_committed_one_always_does() {
    let Some(url) = url("transactional") else { return };
    let outbox = fresh(&url, "tx").await;

    let mut signup = outbox.pool().begin().await.expect("begin");
    outbox
        .enqueue_in(&mut signup, &message("welcome@example.net"))
        .await
        .expect("in the transaction");
    signup.rollback().await.expect("rollback");
    let page = outbox.list(Area::Drafts, None, 10).await.expect("list");
    assert!(
        page.drafts.is_empty(),
        "a rolled-back signup sends no welcome mail"
    );

    let mut change = outbox.pool().begin().await.expect("begin");
    let id = outbox
        .enqueue_in(&mut change, &message("notice@example.net"))
        .await
        .expect("in the transaction");
    // Not visible before the commit.
    assert!(outbox.inspect(Area::Drafts, &id).await.is_err());
    change.commit().await.expect("commit");
    let claims = outbox.claim_due(SystemTime::now(), 10).await.expect("claim");
    assert_eq!(
        claims.len(),
        1,
        "a committed password change always sends its notice"
    );
    assert_eq!(claims[0].info().id, id);
}

#[tokio::test]
async fn a_deliverer_whose_lease_lapsed_cannot_record_over_the_one_that_took_over() {
    let Some(url) = url("fencing") else { return };
    let (first, schema) = fresh_named(&url, "fence").await;
    let first = first.with_lease(Duration::from_secs(60));
    let id = first.enqueue(&message("ops@example.net")).await.expect("enqueue");
    let mut held = first.claim_due(SystemTime::now(), 10).await.expect("claim");
    assert_eq!(held.len(), 1);
    // A second deliverer on the same table sees nothing while the lease runs.
    let second = first.clone();
    assert!(second
        .claim_due(SystemTime::now(), 10)
        .await
        .expect("claim")
        .is_empty());
    // The first deliverer stalls past its lease (made to lapse here rather
    // than waited for).
    sqlx::query(&format!(
        "UPDATE {schema}.relaymail_drafts SET lease_until = now() - interval '1 second'"
    ))
    .execute(first.pool())
    .await
    .expect("lapse");
    let mut taken = second.claim_due(SystemTime::now(), 10).await.expect("claim");
    assert_eq!(taken.len(), 1, "the lapsed draft is taken over");
    let e = first
        .complete(held.remove(0))
        .await
        .expect_err("the stale claim is fenced off");
    assert!(e.is_conflict(), "{e}");
    assert!(
        second.inspect(Area::Drafts, &id).await.is_ok(),
        "nothing was recorded by the stale claim"
    );
    second
        .complete(taken.remove(0))
        .await
        .expect("the holder records");
    assert!(second.inspect(Area::Drafts, &id).await.is_err());
}

#[tokio::test]
async fn a_mailer_delivers_the_drafts_of_a_pg_outbox() {
    let Some(url) = url("mailer") else { return };
    let outbox = fresh(&url, "mailer").await;
    let srv = TestServer::start(ServerConfig::new()).await.expect("server");
    let settings = relay(srv.port(), "client.example.com");
    let mailer = Mailer::builder(settings)
        .outbox(
            outbox.clone(),
            OutboxPolicy::default().with_poll_interval(Duration::from_millis(50)),
        )
        .build()
        .expect("mailer");
    for i in 0..3 {
        mailer
            .enqueue(message(&format!("user{i}@example.net")))
            .await
            .expect("enqueued");
    }
    let got = srv.wait_for_messages(3, WAIT).await.expect("delivered");
    assert_eq!(got.len(), 3);
    let stats = mailer.shutdown(WAIT).await;
    assert_eq!(stats.delivered, 3);
    let left = outbox.list(Area::Drafts, None, 10).await.expect("list");
    assert!(
        left.drafts.is_empty(),
        "delivered rows are deleted: {:?}",
        left.drafts
    );
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error_that_shows_no_password() {
    // Nothing listens on port 1 of the loopback interface.
    let e = PgOutbox::connect("postgres://app:s3cret-pw@127.0.0.1:1/mail", "relaymail")
        .await
        .expect_err("refused");
    let shown = format!("{e} {e:?}");
    assert!(e.is_io() && e.is_transient(), "{e}");
    assert!(shown.contains("cannot connect to the outbox database"), "{shown}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
}

#[tokio::test]
async fn a_draft_committed_elsewhere_wakes_an_idle_deliverer_at_once() {
    let Some(url) = url("listen") else { return };
    let (outbox, schema) = fresh_named(&url, "listen").await;
    let srv = TestServer::start(ServerConfig::new()).await.expect("server");
    let settings = relay(srv.port(), "client.example.com");
    // The deliverer would poll only once an hour: only NOTIFY can wake it.
    let mailer = Mailer::builder(settings)
        .outbox(
            outbox,
            OutboxPolicy::default().with_poll_interval(Duration::from_secs(3600)),
        )
        .build()
        .expect("mailer");
    // Another replica commits drafts on the same table.
    let replica = PgOutbox::connect(&url, &schema).await.expect("replica");
    for i in 1..=2 {
        let mut tx = replica.pool().begin().await.expect("begin");
        replica
            .enqueue_in(&mut tx, &message(&format!("woken{i}@example.net")))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        let got = srv
            .wait_for_messages(i, WAIT)
            .await
            .expect("delivered without a poll");
        assert_eq!(got.len(), i);
    }
    let stats = mailer.shutdown(WAIT).await;
    assert_eq!(stats.delivered, 2);
}

#[tokio::test]
async fn enqueue_many_writes_every_draft_or_none() {
    let Some(url) = url("many") else { return };
    let outbox = fresh(&url, "many").await;
    let batch: Vec<Message> = (0..250)
        .map(|i| message(&format!("user{i}@example.net")))
        .collect();
    let ids = outbox.enqueue_many(&batch).await.expect("batch");
    assert_eq!(ids.len(), 250);
    let mut listed = 0;
    let mut after = None;
    loop {
        let page = outbox
            .list(Area::Drafts, after.as_ref(), 100)
            .await
            .expect("list");
        listed += page.drafts.len();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(listed, 250);
    // One bad envelope parameter: nothing of the batch is written.
    let other = fresh(&url, "many_bad").await;
    let mut bad = message("bad@example.net");
    let (mut envelope, content) = bad.clone().into_parts();
    envelope.params_mut().envid = Some("x\r\nRSET".into());
    bad = Message::new(envelope, content);
    let e = other
        .enqueue_many(&[message("good@example.net"), bad])
        .await
        .expect_err("refused");
    assert!(e.is_config(), "{e}");
    let page = other.list(Area::Drafts, None, 10).await.expect("list");
    assert!(page.drafts.is_empty(), "all or none");
}

async fn rows_in(outbox: &PgOutbox, schema: &str, area: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {schema}.relaymail_drafts WHERE area = $1"
    ))
    .bind(area)
    .fetch_one(outbox.pool())
    .await
    .expect("count")
}

#[tokio::test]
async fn delivered_rows_are_kept_for_the_retention_period_then_purged() {
    let Some(url) = url("retention") else { return };
    let (outbox, schema) = fresh_named(&url, "keep").await;
    let outbox = outbox.with_retention(Some(Duration::from_secs(3600)));
    let id = outbox
        .enqueue(&message("kept@example.net"))
        .await
        .expect("enqueue");
    let claim = outbox
        .claim_due(SystemTime::now(), 1)
        .await
        .expect("claim")
        .pop()
        .expect("one");
    outbox.complete(claim).await.expect("complete");
    assert!(
        outbox.inspect(Area::Drafts, &id).await.is_err(),
        "not a draft any more"
    );
    assert_eq!(
        rows_in(&outbox, &schema, "delivered").await,
        1,
        "kept for the audit"
    );
    assert_eq!(
        outbox.purge_delivered().await.expect("purge"),
        0,
        "still within retention"
    );
    // An hour and more later (the delivery time is moved back).
    sqlx::query(&format!(
        "UPDATE {schema}.relaymail_drafts SET next_attempt_ms = next_attempt_ms - 3601000"
    ))
    .execute(outbox.pool())
    .await
    .expect("age");
    assert_eq!(outbox.purge_delivered().await.expect("purge"), 1);
    assert_eq!(
        rows_in(&outbox, &schema, "delivered").await,
        0,
        "the table does not bloat"
    );
}

#[tokio::test]
async fn migrate_upgrades_a_version_1_schema_and_keeps_its_drafts() {
    let Some(url) = url("upgrade") else { return };
    let schema = format!("t{}_upgrade", std::process::id());
    let outbox = PgOutbox::connect(&url, &schema)
        .await
        .expect("connects")
        .with_retention(Some(Duration::from_secs(60)));
    let pool = outbox.pool();
    // Version 1, as an earlier release (or a team's own migration) made it.
    for sql in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.relaymail_schema (version integer NOT NULL)"),
        format!("INSERT INTO {schema}.relaymail_schema (version) VALUES (1)"),
        format!(
            "CREATE TABLE {schema}.relaymail_drafts (id text PRIMARY KEY,
               area text NOT NULL CHECK (area IN ('drafts', 'failed')),
               next_attempt_ms bigint NOT NULL, lease_token bigint, lease_until timestamptz,
               draft bytea NOT NULL)"
        ),
    ] {
        sqlx::query(&sql).execute(pool).await.expect("v1");
    }
    let id = outbox
        .enqueue(&message("old@example.net"))
        .await
        .expect("enqueue on v1");
    assert_eq!(outbox.migrate().await.expect("upgrade"), 1, "found version 1");
    assert_eq!(
        outbox.migrate().await.expect("again"),
        relaymail::outbox::pg::SCHEMA_VERSION
    );
    assert!(
        outbox.inspect(Area::Drafts, &id).await.is_ok(),
        "the draft survived"
    );
    let claim = outbox
        .claim_due(SystemTime::now(), 1)
        .await
        .expect("claim")
        .pop()
        .expect("one");
    outbox
        .complete(claim)
        .await
        .expect("kept as delivered: allowed by version 2");
    assert_eq!(rows_in(&outbox, &schema, "delivered").await, 1);
}

/// Creates `schema` at version 2 by hand, as the previous release's
/// migration left it.
async fn version_2_schema(outbox: &PgOutbox, schema: &str) {
    for sql in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.relaymail_schema (version integer NOT NULL)"),
        format!("INSERT INTO {schema}.relaymail_schema (version) VALUES (2)"),
        format!(
            "CREATE TABLE {schema}.relaymail_drafts (id text PRIMARY KEY,
               area text NOT NULL CONSTRAINT relaymail_drafts_area_check
               CHECK (area IN ('drafts', 'failed', 'delivered')),
               next_attempt_ms bigint NOT NULL, lease_token bigint, lease_until timestamptz,
               draft bytea NOT NULL)"
        ),
        format!(
            "CREATE INDEX relaymail_drafts_due ON {schema}.relaymail_drafts (next_attempt_ms) WHERE area = 'drafts'"
        ),
        format!(
            "CREATE INDEX relaymail_drafts_delivered ON {schema}.relaymail_drafts (next_attempt_ms) WHERE area = 'delivered'"
        ),
    ] {
        sqlx::query(&sql).execute(outbox.pool()).await.expect("v2");
    }
}

#[tokio::test]
async fn migrate_upgrades_a_version_2_schema_and_its_drafts_can_wait_on_the_settings() {
    let Some(url) = url("upgrade2") else { return };
    let schema = format!("t{}_upgrade2", std::process::id());
    let outbox = PgOutbox::connect(&url, &schema).await.expect("connects");
    version_2_schema(&outbox, &schema).await;
    let later = SystemTime::now() + Duration::from_secs(3600);
    // A draft enqueued before the upgrade, deferred after it (an
    // unreachable relay, say).
    let old = outbox
        .enqueue(&message("old@example.net"))
        .await
        .expect("enqueue on v2");
    assert_eq!(outbox.migrate().await.expect("upgrade"), 2, "found version 2");
    assert_eq!(outbox.migrate().await.expect("again"), 3);
    let claim = outbox
        .claim_due(SystemTime::now(), 1)
        .await
        .expect("claim")
        .pop()
        .expect("one");
    outbox
        .defer_claim(claim, Deferral::new("connection refused", later))
        .await
        .expect("deferred");
    let info = outbox.inspect(Area::Drafts, &old).await.expect("survived");
    assert!(
        !info.waiting_on_settings,
        "existing drafts do not wait on the settings"
    );
    // A new draft fails on the settings, and a release makes it due.
    let new = outbox
        .enqueue(&message("new@example.net"))
        .await
        .expect("enqueue on v3");
    let claim = outbox
        .claim_due(SystemTime::now(), 1)
        .await
        .expect("claim")
        .pop()
        .expect("one");
    assert_eq!(claim.info().id, new);
    outbox
        .defer_claim(
            claim,
            Deferral::new("535 5.7.8 authentication failed", later).with_waiting_on_settings(true),
        )
        .await
        .expect("deferred");
    assert!(
        outbox
            .inspect(Area::Drafts, &new)
            .await
            .expect("draft")
            .waiting_on_settings
    );
    assert_eq!(outbox.release_waiting_on_settings().await.expect("release"), 1);
    let claims = outbox.claim_due(SystemTime::now(), 10).await.expect("claim");
    assert_eq!(
        claims.iter().map(|c| c.info().id.clone()).collect::<Vec<_>>(),
        [new],
        "the released draft is due, the other waits"
    );
    assert!(!claims[0].info().waiting_on_settings);
}

#[tokio::test]
async fn a_release_leaves_a_draft_leased_by_a_deliverer_alone() {
    let Some(url) = url("release-leased") else { return };
    let outbox = fresh(&url, "relleased").await;
    let auth = "535 5.7.8 authentication failed";
    let (x, y) = (
        outbox.enqueue(&message("x@example.net")).await.expect("x"),
        outbox.enqueue(&message("y@example.net")).await.expect("y"),
    );
    // Both failed on the settings: x is due again (a short back-off), y
    // waits an hour.
    let later = SystemTime::now() + Duration::from_secs(3600);
    for claim in outbox.claim_due(SystemTime::now(), 10).await.expect("claim") {
        let next = if claim.info().id == x {
            SystemTime::now()
        } else {
            later
        };
        outbox
            .defer_claim(claim, Deferral::new(auth, next).with_waiting_on_settings(true))
            .await
            .expect("deferred");
    }
    // A deliverer holds x: its attempt is in progress.
    let held = outbox
        .claim_due(SystemTime::now(), 10)
        .await
        .expect("claim")
        .pop()
        .expect("x is due");
    assert_eq!(held.info().id, x);
    assert_eq!(
        outbox.release_waiting_on_settings().await.expect("release"),
        1,
        "y only: x is leased"
    );
    let y_info = outbox.inspect(Area::Drafts, &y).await.expect("y");
    assert!(!y_info.waiting_on_settings, "the free draft was released");
    let x_info = outbox.inspect(Area::Drafts, &x).await.expect("x");
    assert!(x_info.waiting_on_settings, "the leased draft was not touched");
    // The attempt on x ends: recorded, fenced by its lease, as it was.
    outbox
        .defer_claim(held, Deferral::new(auth, later).with_waiting_on_settings(true))
        .await
        .expect("the holder records its outcome");
    assert_eq!(
        outbox.release_waiting_on_settings().await.expect("release"),
        1,
        "now x"
    );
}
