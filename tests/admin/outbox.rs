//! The outbox page: drafts listed with their last error, inspected without
//! their body, retried and deleted; a save that fixes the settings releases
//! the drafts that waited on them and says how many.

use std::time::Duration;

use axum::http::StatusCode;
use std::time::SystemTime;

use relaymail::outbox::{Deferral, DirSpool, DraftId, Outbox, OutboxPolicy};
use relaymail::{Email, Mailer, RetryPolicy};

use super::{relay_config, App, TempDir, MOUNT, PASSWORD, WAIT};

/// The page with a mailer that follows the store, its outbox in a temp dir
/// holding one draft per subject, each waiting on a settings fix (its
/// last attempt failed on AUTH: the profile's password is wrong). The
/// drafts are written before the mailer starts, due in an hour: nothing
/// sends them until the page or a release makes them due.
async fn app_with_outbox(name: &str, subjects: &[&str]) -> (App, TempDir, Vec<DraftId>) {
    app_with_drafts(name, subjects, true).await
}

/// [`app_with_outbox`], or with `on_settings` false: the profile's password
/// is right and the drafts wait after a 421 (nothing releases them).
async fn app_with_drafts(name: &str, subjects: &[&str], on_settings: bool) -> (App, TempDir, Vec<DraftId>) {
    let spool_dir = TempDir::new(&format!("{name}-spool"));
    let spool = DirSpool::open(&spool_dir.0).expect("spool");
    let mut app = App::new(name).await;
    let password = if on_settings { "wrong" } else { PASSWORD };
    assert_eq!(
        app.create(&[("password", password)]).await.status,
        StatusCode::SEE_OTHER
    );
    let settings = app
        .store
        .load()
        .expect("load")
        .get("main")
        .expect("main")
        .settings()
        .clone();
    let composer = Mailer::new(settings).expect("composer").composer();
    let mut ids = Vec::new();
    for subject in subjects {
        let message = composer
            .compose(
                Email::new()
                    .to("ops@example.net")
                    .subject(*subject)
                    .text("the secret body text"),
            )
            .await
            .expect("composed");
        ids.push(Outbox::enqueue(&spool, &message).await.expect("enqueued"));
    }
    let later = SystemTime::now() + Duration::from_secs(3600);
    for claim in Outbox::claim_due(&spool, SystemTime::now(), 100)
        .await
        .expect("claims")
    {
        let deferral = if on_settings {
            Deferral::new("535 5.7.8 authentication failed", later).with_waiting_on_settings(true)
        } else {
            Deferral::new("421 4.3.2 try again later", later)
        };
        Outbox::defer_claim(&spool, claim, deferral)
            .await
            .expect("deferred");
    }
    let mailer = app
        .store
        .mailer(|settings| {
            Mailer::builder(settings)
                .retry(RetryPolicy::never())
                .outbox(
                    spool,
                    OutboxPolicy::default().with_initial_backoff(Duration::from_secs(3600)),
                )
                .build()
        })
        .expect("mailer");
    // The router again over the same store, now with the mailer.
    let store = std::sync::Arc::clone(&app.store);
    app.router = axum::Router::new().nest(
        MOUNT,
        relaymail::admin::router(relaymail::admin::AdminState::new(store).with_mailer(mailer.clone())),
    );
    app.mailer = Some(mailer);
    (app, spool_dir, ids)
}

#[tokio::test]
async fn drafts_are_listed_inspected_without_body_retried_and_deleted() {
    let mut empty = App::with("outbox-empty", relay_config(), |s| s).await;
    let none = empty.get("/outbox").await;
    assert!(none.body.contains("id=\"no-outbox\""), "{}", none.body);
    let (mut app, _spool, ids) = app_with_outbox("outbox-page", &["Invoice 1", "Invoice 2"]).await;
    let (a, b) = (&ids[0], &ids[1]);

    let page = app.get("/outbox").await;
    assert_eq!(page.status, StatusCode::OK);
    for id in [a, b] {
        assert!(
            page.body.contains(&format!("data-draft=\"{id}\"")),
            "{}",
            page.body
        );
    }
    let table = page.text_of("drafts").expect("drafts table");
    assert!(
        table.contains("ops@example.net") && table.contains("waits for a settings fix"),
        "{table}"
    );
    assert!(table.to_lowercase().contains("auth"), "the last error: {table}");

    let one = app.get(&format!("/outbox/drafts/{a}")).await;
    assert_eq!(one.status, StatusCode::OK);
    let headers = one.text_of("headers").expect("headers");
    assert!(headers.contains("Subject: Invoice 1"), "{headers}");
    assert!(
        !one.body.contains("the secret body text"),
        "not the body by default"
    );
    let with_body = app.get(&format!("/outbox/drafts/{a}?body=1")).await;
    assert!(with_body
        .text_of("body")
        .expect("body")
        .contains("the secret body text"));
    assert_eq!(
        app.get("/outbox/drafts/0000000000000-0000000000000000")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get("/outbox/elsewhere/x").await.status, StatusCode::NOT_FOUND);

    let token = App::token(&page);
    let forged = app
        .post_form(&format!("/outbox/drafts/{b}/delete"), &[("csrf", "00ff")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "no valid token");
    let deleted = app
        .post_form(&format!("/outbox/drafts/{b}/delete"), &[("csrf", &token)])
        .await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER);
    let after = app.get(deleted.location().trim_start_matches(MOUNT)).await;
    assert_eq!(after.text_of("flash").as_deref(), Some("The draft was deleted."));
    assert!(!after.body.contains(&format!("data-draft=\"{b}\"")));

    let retried = app
        .post_form(&format!("/outbox/drafts/{a}/retry"), &[("csrf", &token)])
        .await;
    assert_eq!(retried.status, StatusCode::SEE_OTHER);
    assert!(retried.location().contains("retried=1"), "{}", retried.location());
    let gone = app
        .post_form(&format!("/outbox/drafts/{b}/retry"), &[("csrf", &token)])
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "a deleted draft");
}

#[tokio::test]
async fn fixing_the_password_releases_the_waiting_drafts_and_says_how_many() {
    let (mut app, _spool, _) = app_with_outbox("outbox-release", &["Reset your password"]).await;
    let form = app.get("/profiles/main").await;
    let fixed = app.profile_fields(&form, &[("password", PASSWORD)]);
    let saved = app.post_multipart("/profiles/main", &fixed, None).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    assert_eq!(saved.location(), format!("{MOUNT}?saved=main&released=1"));
    let list = app
        .get(&format!("/{}", saved.location().trim_start_matches(MOUNT)))
        .await;
    assert!(list
        .text_of("flash")
        .expect("flash")
        .contains("1 draft that waited for a settings fix is due now"));
    let got = app
        .relay
        .wait_for_messages(1, WAIT)
        .await
        .expect("delivered after the fix");
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: Reset your password"));
}

#[tokio::test]
async fn retry_all_sends_every_waiting_draft() {
    let (mut app, _spool, _) = app_with_drafts("outbox-retry-all", &["one", "two"], false).await;
    let page = app.get("/outbox").await;
    let token = App::token(&page);
    let done = app
        .post_form("/outbox/retry-all", &[("csrf", &token), ("area", "drafts")])
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert!(done.location().contains("retried=2"), "{}", done.location());
    if app.relay.wait_for_messages(2, WAIT).await.is_err() {
        let after = app.get("/outbox").await;
        panic!(
            "not delivered: {:?} {:?}",
            after.text_of("drafts"),
            app.mailer.as_ref().map(|m| m.stats())
        );
    }
}

#[tokio::test]
async fn the_outbox_is_shown_a_page_at_a_time() {
    let subjects: Vec<String> = (0..51).map(|i| format!("message {i}")).collect();
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    let (mut app, _spool, ids) = app_with_drafts("outbox-pages", &subjects, false).await;
    let first = app.get("/outbox").await;
    assert_eq!(first.body.matches("data-draft=").count(), 50);
    let next = first.tag_of("next-page").expect("a next page link").to_owned();
    let href = next
        .split("href=\"")
        .nth(1)
        .and_then(|h| h.split('"').next())
        .expect("href")
        .replace("&amp;", "&");
    let second = app.get(href.trim_start_matches(MOUNT)).await;
    assert_eq!(second.body.matches("data-draft=").count(), 1);
    let last = ids.iter().max().expect("ids");
    assert!(
        second.body.contains(&format!("data-draft=\"{last}\"")),
        "the newest comes last"
    );
    assert!(second.tag_of("next-page").is_none());
    let failed = app.get("/outbox?area=failed").await;
    assert!(failed.body.contains("id=\"outbox-empty\""), "nothing failed");
}
