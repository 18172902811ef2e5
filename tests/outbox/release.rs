//! Drafts that waited on the settings (a wrong password here) are due at
//! once when the settings are fixed: through `Mailer::reload_and_release`,
//! `ProfileStore::save_and_release`, and the plain `Mailer::reload`. Drafts
//! that wait for an unreachable relay keep their time.

use tokio::sync::mpsc;

use super::*;

/// What the deliverer recorded in the outbox.
#[derive(Debug, PartialEq, Eq)]
enum Recorded {
    /// Deferred, waiting on the settings or not.
    Deferred(DraftId, bool),
    /// Delivered and removed.
    Completed(DraftId),
}

/// A directory spool that reports each recorded deferral and delivery, so
/// that the tests wait for them instead of sleeping.
#[derive(Debug)]
struct Watched {
    spool: DirSpool,
    recorded: mpsc::UnboundedSender<Recorded>,
}

impl Watched {
    fn open(dir: &std::path::Path) -> (Watched, mpsc::UnboundedReceiver<Recorded>) {
        let (recorded, rx) = mpsc::unbounded_channel();
        let spool = DirSpool::open(dir).expect("spool");
        (Watched { spool, recorded }, rx)
    }
}

impl Outbox for Watched {
    fn enqueue<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<DraftId, Error>> {
        Outbox::enqueue(&self.spool, message)
    }
    fn claim_due(&self, now: SystemTime, max: usize) -> BoxFuture<'_, Result<Vec<Claim>, Error>> {
        Outbox::claim_due(&self.spool, now, max)
    }
    fn next_due(&self) -> BoxFuture<'_, Result<Option<SystemTime>, Error>> {
        Outbox::next_due(&self.spool)
    }
    fn complete(&self, claim: Claim) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let id = claim.info().id.clone();
            Outbox::complete(&self.spool, claim).await?;
            let _ = self.recorded.send(Recorded::Completed(id));
            Ok(())
        })
    }
    fn defer_claim(&self, claim: Claim, deferral: Deferral) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let (id, waiting) = (claim.info().id.clone(), deferral.waiting_on_settings);
            Outbox::defer_claim(&self.spool, claim, deferral).await?;
            let _ = self.recorded.send(Recorded::Deferred(id, waiting));
            Ok(())
        })
    }
    fn fail_claim<'a>(&'a self, claim: Claim, reason: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Outbox::fail_claim(&self.spool, claim, reason)
    }
    fn list<'a>(
        &'a self,
        area: Area,
        after: Option<&'a DraftId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, Error>> {
        Outbox::list(&self.spool, area, after, limit)
    }
    fn inspect<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<DraftInfo, Error>> {
        Outbox::inspect(&self.spool, area, id)
    }
    fn retry_now<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<(), Error>> {
        Outbox::retry_now(&self.spool, area, id)
    }
    fn delete<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<(), Error>> {
        Outbox::delete(&self.spool, area, id)
    }
    // The spool's own release, not the trait's default.
    fn release_waiting_on_settings(&self) -> BoxFuture<'_, Result<usize, Error>> {
        Outbox::release_waiting_on_settings(&self.spool)
    }
}

/// The next thing the deliverer recorded (within `WAIT`).
async fn next(recorded: &mut mpsc::UnboundedReceiver<Recorded>) -> Recorded {
    tokio::time::timeout(WAIT, recorded.recv())
        .await
        .expect("the deliverer recorded an outcome in time")
        .expect("the outbox is still there")
}

/// A relay that wants AUTH PLAIN as app / right before MAIL.
async fn auth_server() -> TestServer {
    TestServer::start(
        ServerConfig::new()
            .auth_mechanisms(&["PLAIN"])
            .user("app", "right")
            .require_auth(true),
    )
    .await
    .expect("server")
}

/// Settings for the relay on `port`, logging in as app with `password`.
fn auth_settings(port: u16, password: &str) -> SmtpSettings {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(port))
        .tls(TlsMode::None)
        .sender("noreply@example.com")
        .credentials("app", password)
        .dangerous(|d| d.allow_plaintext_auth(true))
        .timeout(Duration::from_secs(2))
        .build()
        .expect("settings")
}

/// A mailer on `settings` with a watched spool in `dir` whose back-off
/// is an hour: nothing is tried again by itself during a test.
fn mailer(settings: SmtpSettings, dir: &std::path::Path) -> (Mailer, mpsc::UnboundedReceiver<Recorded>) {
    let (watched, recorded) = Watched::open(dir);
    let mailer = Mailer::builder(settings)
        .retry(RetryPolicy::never())
        .outbox(watched, policy())
        .build()
        .expect("mailer");
    (mailer, recorded)
}

/// `send_or_enqueue` of message `i`, which must fall back to a draft; the
/// draft and the error.
async fn deferred(mailer: &Mailer, i: usize) -> (DraftId, Error) {
    match mailer
        .send_or_enqueue(email(mailer, i).await)
        .await
        .expect("saved as a draft")
    {
        SendOutcome::Deferred { draft, error } => (draft, error),
        other => panic!("not deferred: {other:?}"),
    }
}

/// A draft that failed on the wrong password: deferred by the deliverer's
/// attempt, waiting on the settings, for an hour.
async fn wrong_password_draft(
    mailer: &Mailer,
    recorded: &mut mpsc::UnboundedReceiver<Recorded>,
    spool: &DirSpool,
) -> DraftId {
    let (draft, error) = deferred(mailer, 2).await;
    assert!(error.is_auth(), "{error}");
    assert_eq!(next(recorded).await, Recorded::Deferred(draft.clone(), true));
    let info = spool.inspect(Area::Drafts, &draft).expect("a draft");
    assert!(info.waiting_on_settings, "{info:?}");
    assert!(
        info.next_attempt > SystemTime::now() + Duration::from_secs(600),
        "waits out its back-off: {info:?}"
    );
    draft
}

#[tokio::test]
async fn reload_and_release_sends_the_drafts_that_waited_on_the_settings_at_once() {
    let srv = auth_server().await;
    let dir = spool_dir("release-inline");
    let spool = DirSpool::open(&dir).expect("spool");
    let (mailer, mut recorded) = mailer(settings(dead_port()), &dir);
    // The relay is unreachable: a draft that does not wait on the settings.
    let (unreachable, error) = deferred(&mailer, 1).await;
    assert!(
        !error.is_auth() && !error.is_tls() && !error.is_config(),
        "{error}"
    );
    assert_eq!(
        next(&mut recorded).await,
        Recorded::Deferred(unreachable.clone(), false)
    );
    // Then a wrong password: a draft that does.
    mailer.reload(auth_settings(srv.port(), "wrong")).expect("reload");
    let waiting = wrong_password_draft(&mailer, &mut recorded, &spool).await;
    assert!(
        !spool
            .inspect(Area::Drafts, &unreachable)
            .expect("draft")
            .waiting_on_settings,
        "an unreachable relay is not a settings error"
    );
    assert!(srv.messages().is_empty());

    // The administrator fixes the password.
    let released = mailer
        .reload_and_release(auth_settings(srv.port(), "right"))
        .await
        .expect("released");
    assert_eq!(released, 1, "the draft that waited on the settings");
    srv.wait_for_messages(1, WAIT).await.expect("delivered");
    assert_eq!(next(&mut recorded).await, Recorded::Completed(waiting.clone()));
    assert!(spool.inspect(Area::Drafts, &waiting).is_err(), "delivered: gone");
    let still = spool.inspect(Area::Drafts, &unreachable).expect("still waits");
    assert!(
        still.attempts == 1 && still.next_attempt > SystemTime::now() + Duration::from_secs(600),
        "the unreachable relay's draft keeps its time: {still:?}"
    );
    assert_eq!(mailer.stats().released_on_reload, 1);
    mailer.shutdown(WAIT).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_plain_reload_releases_them_in_the_background() {
    let srv = auth_server().await;
    let dir = spool_dir("release-background");
    let spool = DirSpool::open(&dir).expect("spool");
    let (mailer, mut recorded) = mailer(auth_settings(srv.port(), "wrong"), &dir);
    let waiting = wrong_password_draft(&mailer, &mut recorded, &spool).await;
    mailer.reload(auth_settings(srv.port(), "right")).expect("reload");
    srv.wait_for_messages(1, WAIT).await.expect("delivered");
    assert_eq!(next(&mut recorded).await, Recorded::Completed(waiting));
    assert_eq!(mailer.stats().released_on_reload, 1);
    mailer.shutdown(WAIT).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(feature = "serde")]
#[tokio::test]
async fn saving_fixed_profiles_releases_the_drafts_of_the_following_mailer() {
    use relaymail::profiles::{ProfileStore, Profiles};
    use relaymail::settings::SecretKey;

    let srv = auth_server().await;
    let dir = spool_dir("release-profiles");
    let spool = DirSpool::open(dir.join("spool")).expect("spool");
    let store = ProfileStore::new(dir.join("profiles.json"), SecretKey::generate().expect("key"));
    let mut profiles = Profiles::new();
    profiles
        .add("primary", auth_settings(srv.port(), "wrong"), true)
        .expect("add");
    store.save(&mut profiles).expect("save");
    let mut recorded = None;
    let mailer = store
        .mailer(|settings| {
            let (mailer, rx) = mailer(settings, &dir.join("spool"));
            recorded = Some(rx);
            Ok(mailer)
        })
        .expect("a following mailer");
    let mut recorded = recorded.expect("built");
    let waiting = wrong_password_draft(&mailer, &mut recorded, &spool).await;

    profiles
        .edit("primary", auth_settings(srv.port(), "right"))
        .expect("edit");
    let released = store.save_and_release(&mut profiles).await.expect("saved");
    assert_eq!(released, 1, "the draft that waited on the settings");
    srv.wait_for_messages(1, WAIT).await.expect("delivered");
    assert_eq!(next(&mut recorded).await, Recorded::Completed(waiting));
    // Saved again, nothing waits any more.
    assert_eq!(store.save_and_release(&mut profiles).await.expect("saved"), 0);
    assert_eq!(mailer.stats().released_on_reload, 1);
    mailer.shutdown(WAIT).await;
    let _ = std::fs::remove_dir_all(dir);
}
