//! The outbox end to end: drafts saved while the relay is unreachable are
//! delivered once the settings are fixed; send falls back to a draft;
//! two spools on one directory never claim the same draft; the deliverer
//! counts the errors of its outbox and recovers from them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use relaymail::outbox::{Area, Claim, Deferral, DirSpool, DraftId, DraftInfo, Outbox, OutboxPolicy, Page};
use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{BoxFuture, Email, Error, Mailer, Message, RetryPolicy, SendOutcome, SmtpSettings, TlsMode};

const WAIT: Duration = Duration::from_secs(10);

fn spool_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relaymail-outbox-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn settings(port: u16) -> SmtpSettings {
    SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(port))
        .tls(TlsMode::None)
        .sender("noreply@example.com")
        .timeout(Duration::from_secs(2))
        .build()
        .expect("settings")
}

fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn policy() -> OutboxPolicy {
    OutboxPolicy::default()
        .with_initial_backoff(Duration::from_secs(3600))
        .with_poll_interval(Duration::from_millis(200))
}

async fn email(mailer: &Mailer, i: usize) -> relaymail::Message {
    mailer
        .composer()
        .compose(
            Email::new()
                .to("ops@example.net")
                .subject(format!("draft {i}"))
                .text("x"),
        )
        .await
        .expect("composed")
}

#[tokio::test]
async fn drafts_wait_for_fixed_settings_then_go() {
    let dir = spool_dir("fixed");
    let spool = DirSpool::open(&dir).expect("spool");
    let mailer = Mailer::builder(settings(dead_port()))
        .retry(RetryPolicy::never())
        .outbox(spool.clone(), policy())
        .build()
        .expect("mailer");
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(mailer.enqueue(email(&mailer, i).await).await.expect("on disk"));
    }
    // The relay is unreachable: every draft stays, with its attempt and error.
    // (Each attempt fails at once: nothing listens on that port.)
    let srv = TestServer::start(ServerConfig::new()).await.expect("server");
    // The administrator fixes the settings and retries everything now.
    mailer.reload(settings(srv.port())).expect("reload");
    // Through the mailer's outbox, as an application's admin page would.
    mailer
        .outbox()
        .expect("an outbox")
        .retry_all_now(Area::Drafts)
        .await
        .expect("retried");
    mailer.wake_outbox();
    let got = srv.wait_for_messages(20, WAIT).await.expect("all delivered");
    let subjects: std::collections::HashSet<String> = got
        .iter()
        .map(|m| {
            String::from_utf8_lossy(&m.data)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(subjects.len(), 20, "each draft once");
    mailer.shutdown(WAIT).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A mailer whose relay is unreachable (no retry), with a fresh spool.
fn offline_mailer(name: &str) -> (std::path::PathBuf, DirSpool, Mailer) {
    let dir = spool_dir(name);
    let spool = DirSpool::open(&dir).expect("spool");
    let mailer = Mailer::builder(settings(dead_port()))
        .retry(RetryPolicy::never())
        .outbox(spool.clone(), policy())
        .build()
        .expect("mailer");
    (dir, spool, mailer)
}

#[tokio::test]
async fn send_falls_back_to_a_draft_on_transient_failure_only() {
    let (dir, spool, mailer) = offline_mailer("fallback");
    match mailer
        .send_or_enqueue(email(&mailer, 1).await)
        .await
        .expect("deferred")
    {
        SendOutcome::Deferred { draft, error } => {
            assert_eq!(error.stage(), Some(relaymail::Stage::Connect), "{error}");
            assert!(spool.inspect(Area::Drafts, &draft).is_ok(), "on disk");
        }
        other => panic!("{other:?}"),
    }
    mailer.shutdown(Duration::from_secs(1)).await;

    // A permanent refusal is an error, not a draft.
    let srv =
        TestServer::start(ServerConfig::new().reject_recipient("ops@example.net", "550 5.1.1 no such user"))
            .await
            .expect("server");
    let mailer = Mailer::builder(settings(srv.port()))
        .outbox(DirSpool::open(spool_dir("fallback2")).expect("spool"), policy())
        .build()
        .expect("mailer");
    let e = mailer
        .send_or_enqueue(email(&mailer, 2).await)
        .await
        .expect_err("550");
    assert!(e.is_permanent(), "{e}");
    mailer.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn two_spools_never_claim_the_same_draft_and_a_dead_holder_lets_go() {
    let dir = spool_dir("locks");
    let a = DirSpool::open(&dir).expect("a");
    let b = DirSpool::open(&dir).expect("b");
    let m = relaymail::Message::new(
        relaymail::Envelope::new(
            Some("app@example.com".parse().expect("address")),
            vec!["ops@example.net".parse().expect("address")],
        )
        .expect("envelope"),
        b"Subject: x\r\n\r\nx\r\n".to_vec(),
    );
    for _ in 0..5 {
        a.enqueue(&m).expect("queued");
    }
    let now = SystemTime::now() + Duration::from_secs(1);
    let held = a.claim_due(now, 3).expect("claim");
    assert_eq!(held.len(), 3);
    let other = b.claim_due(now, 10).expect("claim");
    assert_eq!(other.len(), 2, "b gets only the two a does not hold");
    let held_ids: Vec<_> = held.iter().map(|c| c.info().id.clone()).collect();
    assert!(other.iter().all(|c| !held_ids.contains(&c.info().id)));
    // The holder "dies" (its files close): the locks go with it.
    drop(held);
    drop(other);
    assert_eq!(b.claim_due(now, 10).expect("claim").len(), 5);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mailers_on_one_spool_never_send_a_draft_twice() {
    let dir = spool_dir("two-mailers");
    let srv = TestServer::start(ServerConfig::new()).await.expect("server");
    let a = Mailer::builder(settings(srv.port()))
        .outbox(DirSpool::open(&dir).expect("spool"), policy().with_batch(8))
        .build()
        .expect("a");
    let b = Mailer::builder(settings(srv.port()))
        .outbox(DirSpool::open(&dir).expect("spool"), policy().with_batch(8))
        .build()
        .expect("b");
    for i in 0..300 {
        let m = email(&a, i).await;
        if i % 2 == 0 {
            a.enqueue(m).await
        } else {
            b.enqueue(m).await
        }
        .expect("queued");
    }
    let got = srv.wait_for_messages(300, WAIT).await.expect("all delivered");
    let mut subjects = std::collections::HashMap::new();
    for m in &got {
        let s = String::from_utf8_lossy(&m.data)
            .lines()
            .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
            .unwrap_or_default();
        *subjects.entry(s).or_insert(0) += 1;
    }
    assert_eq!(subjects.len(), 300);
    assert!(subjects.values().all(|&n| n == 1), "no draft sent twice");
    // Both took part.
    let sessions = srv.sessions();
    assert!(sessions.len() >= 2, "{} sessions", sessions.len());
    a.shutdown(WAIT).await;
    b.shutdown(WAIT).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_permanent_refusal_moves_the_draft_to_the_failed_area() {
    let dir = spool_dir("failed");
    let spool = DirSpool::open(&dir).expect("spool");
    let srv =
        TestServer::start(ServerConfig::new().reject_recipient("ops@example.net", "550 5.1.1 no such user"))
            .await
            .expect("server");
    let mut events = srv.subscribe();
    let mailer = Mailer::builder(settings(srv.port()))
        .outbox(spool.clone(), policy())
        .build()
        .expect("mailer");
    let id = mailer.enqueue(email(&mailer, 1).await).await.expect("queued");
    // Wait for the server to see the RCPT, then stop: shutdown lets the
    // deliverer record the attempt it is in.
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(relaymail::testing::ServerEvent::Command { verb, .. }) = events.recv().await {
                if verb == "RCPT" {
                    break;
                }
            }
        }
    })
    .await
    .expect("RCPT seen");
    mailer.shutdown(WAIT).await;
    let failed = spool.inspect(Area::Failed, &id).expect("in the failed area");
    assert!(
        failed.last_error.as_deref().is_some_and(|e| e.contains("550")),
        "{failed:?}"
    );
    assert!(spool.inspect(Area::Drafts, &id).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// A full disk: `enqueue` fails with a clear error and nothing half-written
/// is left or reported as queued. Needs to mount a small tmpfs (root, as in
/// CI); says so and returns where that is not allowed.
#[test]
fn a_full_disk_refuses_to_queue() {
    let dir = spool_dir("full");
    std::fs::create_dir_all(&dir).expect("dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("a_full_disk_refuses_to_queue: skipped (cannot mount a tmpfs here)");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let spool = DirSpool::open(&dir).expect("spool");
        let body = vec![b'x'; 10_000];
        let m = relaymail::Message::new(
            relaymail::Envelope::new(
                Some("app@example.com".parse().expect("address")),
                vec!["ops@example.net".parse().expect("address")],
            )
            .expect("envelope"),
            body,
        );
        let mut queued = 0;
        let error = loop {
            match spool.enqueue(&m) {
                Ok(_) => queued += 1,
                Err(e) => break e,
            }
            assert!(queued < 1000, "a 256 KiB disk cannot hold this many");
        };
        assert!(
            error.is_io() && error.hint().is_some_and(|h| h.contains("full")),
            "{error}"
        );
        let listed = spool.list(Area::Drafts, None, 1000).expect("list");
        assert_eq!(listed.drafts.len(), queued, "exactly the acknowledged drafts");
        assert!(listed.quarantined.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.join("tmp")).expect("tmp").count(),
            0,
            "no partial file left"
        );
    });
    let _ = std::process::Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A REQUIRETLS + DSN message as an application builds it.
fn requiretls_dsn_message() -> relaymail::Message {
    use relaymail::proto::command::{DsnReturn, MailParams, Notify, RcptParams};
    relaymail::Message::new(
        relaymail::Envelope::with_recipients(
            Some("app@example.com".parse().expect("address")),
            vec![
                relaymail::Recipient::new("ops@example.net".parse().expect("address")).with_params(
                    RcptParams::default()
                        .with_notify(Notify::On {
                            success: false,
                            failure: true,
                            delay: true,
                        })
                        .with_orcpt("ops+orig@example.net"),
                ),
            ],
        )
        .expect("envelope")
        .with_params(
            MailParams::default()
                .with_requiretls(true)
                .with_ret(DsnReturn::Headers)
                .with_envid("reset 42+x=y"),
        ),
        b"Subject: password reset\r\n\r\nhttps://example.com/reset/secret\r\n".to_vec(),
    )
}

#[tokio::test]
async fn a_queued_requiretls_dsn_draft_is_delivered_with_every_envelope_parameter() {
    let srv = TestServer::start(ServerConfig::new().starttls(true).dsn(true).requiretls(true))
        .await
        .expect("server");
    let dir = spool_dir("params");
    let spool = DirSpool::open(&dir).expect("spool");
    // Queued while no deliverer runs: the envelope lives only on disk.
    let id = spool.enqueue(&requiretls_dsn_message()).expect("queued");
    assert_eq!(
        spool.inspect(Area::Drafts, &id).expect("inspect").envelope,
        requiretls_dsn_message().envelope().clone(),
        "the draft keeps the whole envelope"
    );
    let settings = SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(srv.port()))
        .tls(TlsMode::StartTls)
        .add_root_certificates_pem(srv.ca_pem())
        .webpki_roots(false)
        .sender("app@example.com")
        .timeout(Duration::from_secs(5))
        .build()
        .expect("settings");
    let mailer = Mailer::builder(settings)
        .outbox(spool.clone(), policy())
        .build()
        .expect("mailer");
    mailer.wake_outbox();
    srv.wait_for_messages(1, WAIT).await.expect("delivered");
    let got = &srv.messages()[0];
    assert!(got.tls);
    assert_eq!(got.mail_from, "app@example.com");
    for param in ["REQUIRETLS", "RET=HDRS", "ENVID=reset+2042+2Bx+3Dy"] {
        assert!(
            got.mail_params.iter().any(|p| p == param),
            "{param} in {:?}",
            got.mail_params
        );
    }
    assert_eq!(got.rcpt_to, ["ops@example.net"]);
    for param in ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;ops+2Borig@example.net"] {
        assert!(
            got.rcpt_params[0].iter().any(|p| p == param),
            "{param} in {:?}",
            got.rcpt_params
        );
    }
    mailer.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn send_or_enqueue_keeps_requiretls_when_it_falls_back_to_a_draft() {
    let (dir, spool, mailer) = offline_mailer("params-fallback");
    let outcome = mailer
        .send_or_enqueue(requiretls_dsn_message())
        .await
        .expect("deferred");
    let SendOutcome::Deferred { draft, .. } = outcome else {
        panic!("{outcome:?}")
    };
    mailer.shutdown(Duration::from_secs(1)).await;
    let kept = spool.message(Area::Drafts, &draft).expect("draft");
    assert_eq!(kept.envelope(), requiretls_dsn_message().envelope());
    assert!(kept.envelope().params().requiretls, "not downgraded");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_draft_written_by_the_previous_version_is_read_and_delivered_as_it_was() {
    // Committed as the previous version wrote it (format 1: no envelope
    // parameters, values as they were).
    let old = include_bytes!("fixtures/v1.draft");
    let dir = spool_dir("v1");
    let spool = DirSpool::open(&dir).expect("spool");
    let id = relaymail::outbox::DraftId::parse("019ab6a7f1000-0123456789abcdef").expect("id");
    std::fs::write(dir.join("drafts").join(format!("{id}.draft")), old).expect("copied in");
    let info = spool.inspect(Area::Drafts, &id).expect("an old draft reads");
    assert_eq!(info.envelope.reverse_path(), "app@example.com");
    let to: Vec<String> = info
        .envelope
        .recipients()
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    assert_eq!(to, ["ana@example.net", "\"bo smith\"@example.org"]);
    assert_eq!(info.attempts, 3);
    assert_eq!(
        info.last_error.as_deref(),
        Some("421 4.3.2 Service not available, closing channel")
    );
    let body = spool.message(Area::Drafts, &id).expect("message");
    assert!(body.content().ends_with(b"Hello Ana,\r\n.\r\nbye\r\n"));
    // Its next attempt rewrites it in the current format, keeping everything.
    let claims = spool.claim_due(SystemTime::now(), 10).expect("claim");
    assert_eq!(claims.len(), 1);
    spool
        .defer_claim(
            claims.into_iter().next().expect("one"),
            Deferral::new("421 again", SystemTime::now()),
        )
        .expect("deferred");
    let again = spool.inspect(Area::Drafts, &id).expect("rewritten");
    assert_eq!(again.envelope, info.envelope);
    assert_eq!((again.attempts, again.created), (4, info.created));
    let raw = std::fs::read(dir.join("drafts").join(format!("{id}.draft"))).expect("read");
    assert!(raw.starts_with(b"relaymail-draft 2\n"));
    let _ = std::fs::remove_dir_all(dir);
}

mod release;

#[cfg(unix)]
#[path = "../support/umask.rs"]
mod umask;

#[cfg(unix)]
use umask::mode;

#[cfg(unix)]
#[test]
fn spool_directories_and_drafts_are_private_to_their_owner() {
    if !umask::in_child_with_umask_022("spool_directories_and_drafts_are_private_to_their_owner") {
        return;
    }
    let dir = spool_dir("modes");
    let spool = DirSpool::open(&dir).expect("spool");
    let m = requiretls_dsn_message();
    let id = spool.enqueue(&m).expect("queued");
    for sub in ["", "drafts", "failed", "corrupt", "tmp"] {
        assert_eq!(mode(&dir.join(sub)), 0o700, "{sub}/");
    }
    let draft = dir.join("drafts").join(format!("{id}.draft"));
    assert_eq!(mode(&draft), 0o600, "a new draft");
    // Rewritten by an attempt, moved to the failed area: still private.
    spool
        .defer(&id, Deferral::new("421 later", SystemTime::now()))
        .expect("defer");
    assert_eq!(mode(&draft), 0o600, "a rewritten draft");
    spool.fail(&id, "550 no").expect("fail");
    assert_eq!(mode(&dir.join("failed").join(format!("{id}.draft"))), 0o600);
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(unix)]
#[test]
fn opening_a_spool_made_world_readable_by_an_older_version_makes_its_directories_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = spool_dir("old-modes");
    for sub in ["drafts", "failed", "corrupt", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).expect("dir");
        std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    DirSpool::open(&dir).expect("spool");
    for sub in ["drafts", "failed", "corrupt", "tmp"] {
        assert_eq!(mode(&dir.join(sub)), 0o700, "{sub}/");
    }
    // The root may be shared with other things: left as it was.
    assert_eq!(mode(&dir), 0o755);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_draft_whose_final_reply_was_lost_is_marked_possibly_delivered() {
    use relaymail::testing::{Fault, ServerEvent};
    let dir = spool_dir("possibly-delivered");
    let spool = DirSpool::open(&dir).expect("spool");
    // The first final reply never comes: the relay may have the message.
    let srv = TestServer::start(ServerConfig::new().fault(Fault::on_end_of_data().nth(1).stall()))
        .await
        .expect("server");
    let mut events = srv.subscribe();
    let mut timeouts = relaymail::Timeouts::all(Duration::from_secs(5));
    timeouts.final_reply = Duration::from_millis(300);
    let settings = SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(srv.port()))
        .tls(TlsMode::None)
        .sender("noreply@example.com")
        .timeouts(timeouts)
        .build()
        .expect("settings");
    let mailer = Mailer::builder(settings.clone())
        .retry(RetryPolicy::never())
        .outbox(spool.clone(), policy())
        .build()
        .expect("mailer");
    let id = mailer.enqueue(email(&mailer, 0).await).await.expect("on disk");
    // The client gives up on the final reply and closes; shutdown waits for
    // the deliverer to record the attempt.
    tokio::time::timeout(WAIT, async {
        while !matches!(events.recv().await, Ok(ServerEvent::Closed { .. })) {}
    })
    .await
    .expect("the attempt ended");
    mailer.shutdown(WAIT).await;
    let info = spool.inspect(Area::Drafts, &id).expect("still a draft");
    assert_eq!(info.attempts, 1);
    assert!(info.possibly_delivered, "{info:?}");

    // Delivered on a later attempt: counted as a possible duplicate.
    let mailer = Mailer::builder(settings)
        .retry(RetryPolicy::never())
        .outbox(spool.clone(), policy())
        .build()
        .expect("mailer");
    spool.retry_now(Area::Drafts, &id).expect("due now");
    mailer.wake_outbox();
    srv.wait_for_messages(1, WAIT).await.expect("delivered");
    let stats = mailer.shutdown(WAIT).await;
    assert_eq!(stats.possibly_duplicated, 1);
    assert!(spool.inspect(Area::Drafts, &id).is_err(), "the draft is gone");
    let _ = std::fs::remove_dir_all(dir);
}

/// An outbox over a spool whose claims fail while `broken` is set (a disk
/// or database fault under the deliverer, reported with the error
/// constructors a third-party backend uses); each failed claim is reported on `failures`
/// with its time. `dropped` hears when the deliverer lets it go.
#[derive(Debug)]
struct Faulty {
    spool: DirSpool,
    broken: Arc<AtomicBool>,
    failures: tokio::sync::mpsc::UnboundedSender<tokio::time::Instant>,
    dropped: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Faulty {
    fn new(name: &str) -> (Faulty, std::path::PathBuf, FaultyHandles) {
        let dir = spool_dir(name);
        let broken = Arc::new(AtomicBool::new(false));
        let (failures, failed) = tokio::sync::mpsc::unbounded_channel();
        let (dropped, released) = tokio::sync::oneshot::channel();
        let faulty = Faulty {
            spool: DirSpool::open(&dir).expect("spool"),
            broken: broken.clone(),
            failures,
            dropped: Some(dropped),
        };
        (
            faulty,
            dir,
            FaultyHandles {
                broken,
                failed,
                released,
            },
        )
    }
}

struct FaultyHandles {
    broken: Arc<AtomicBool>,
    failed: tokio::sync::mpsc::UnboundedReceiver<tokio::time::Instant>,
    released: tokio::sync::oneshot::Receiver<()>,
}

impl Drop for Faulty {
    fn drop(&mut self) {
        if let Some(tx) = self.dropped.take() {
            let _ = tx.send(());
        }
    }
}

impl Outbox for Faulty {
    fn enqueue<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<DraftId, Error>> {
        Outbox::enqueue(&self.spool, message)
    }
    fn claim_due(&self, now: SystemTime, max: usize) -> BoxFuture<'_, Result<Vec<Claim>, Error>> {
        if !self.broken.load(Ordering::SeqCst) {
            return Outbox::claim_due(&self.spool, now, max);
        }
        Box::pin(async move {
            let _ = self.failures.send(tokio::time::Instant::now());
            // Built as a third-party backend builds its errors.
            Err(Error::unavailable("the outbox store is unreachable")
                .with_source(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)))
        })
    }
    fn next_due(&self) -> BoxFuture<'_, Result<Option<SystemTime>, Error>> {
        Outbox::next_due(&self.spool)
    }
    fn complete(&self, claim: Claim) -> BoxFuture<'_, Result<(), Error>> {
        Outbox::complete(&self.spool, claim)
    }
    fn defer_claim(&self, claim: Claim, deferral: Deferral) -> BoxFuture<'_, Result<(), Error>> {
        Outbox::defer_claim(&self.spool, claim, deferral)
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
}

#[tokio::test]
async fn deliverer_errors_are_counted_and_the_deliverer_recovers_when_the_fault_goes() {
    let srv = TestServer::start(ServerConfig::new()).await.expect("server");
    let (faulty, dir, mut h) = Faulty::new("faulty");
    h.broken.store(true, Ordering::SeqCst);
    let policy = policy().with_poll_interval(Duration::from_millis(30));
    let mailer = Mailer::builder(settings(srv.port()))
        .outbox(faulty, policy.clone())
        .build()
        .expect("mailer");
    let id = mailer.enqueue(email(&mailer, 1).await).await.expect("on disk");
    // Three failed claims in a row: the deliverer goes on after each, and
    // waits the poll interval in between instead of spinning.
    let mut at = Vec::new();
    for _ in 0..3 {
        let t = tokio::time::timeout(WAIT, h.failed.recv())
            .await
            .expect("claimed again")
            .expect("open");
        at.push(t);
    }
    assert!(
        at.windows(2).all(|w| w[1] - w[0] >= policy.poll_interval),
        "{at:?}"
    );
    let errors = mailer.stats().outbox_errors;
    assert!(errors >= 2, "counted: {errors}");
    assert_eq!(srv.messages().len(), 0, "nothing claimed, nothing sent");

    // The fault goes away: the draft is delivered and leaves the outbox.
    h.broken.store(false, Ordering::SeqCst);
    srv.wait_for_messages(1, WAIT).await.expect("delivered");
    let stats = mailer.shutdown(WAIT).await;
    assert_eq!(stats.delivered, 1);
    assert!(stats.outbox_errors >= 3, "{stats:?}");
    let outbox = DirSpool::open(&dir).expect("spool");
    assert!(
        outbox.inspect(Area::Drafts, &id).is_err(),
        "recorded as delivered"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_mailer_dropped_without_shutdown_lets_its_deliverer_end() {
    let (faulty, dir, h) = Faulty::new("dropped");
    let mailer = Mailer::builder(settings(dead_port()))
        .outbox(faulty, policy())
        .build()
        .expect("mailer");
    drop(mailer);
    // The deliverer held the outbox: it ends, and the outbox is dropped.
    tokio::time::timeout(WAIT, h.released)
        .await
        .expect("the deliverer ended")
        .expect("dropped");
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(unix)]
#[test]
fn a_symbolic_link_in_place_of_a_spool_directory_is_refused_and_its_target_untouched() {
    use std::os::unix::fs::PermissionsExt;
    let base = spool_dir("symlinked");
    let (root, elsewhere) = (base.join("spool"), base.join("elsewhere"));
    std::fs::create_dir_all(&root).expect("root");
    std::fs::create_dir_all(&elsewhere).expect("elsewhere");
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(elsewhere.join("important.txt"), b"not a draft").expect("file");
    std::os::unix::fs::symlink(&elsewhere, root.join("drafts")).expect("symlink");
    let e = DirSpool::open(&root).map(|_| ()).expect_err("refused");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(mode(&elsewhere), 0o755, "the link's target keeps its mode");
    assert!(elsewhere.join("important.txt").exists());
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test]
async fn the_directory_spool_passes_the_outbox_conformance_suite() {
    let base = spool_dir("conformance");
    let mut n = 0;
    let passed = relaymail::testing::check_outbox(|| {
        n += 1;
        let dir = base.join(format!("case-{n}"));
        async move { DirSpool::open(dir).expect("spool") }
    })
    .await
    .unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(passed, relaymail::testing::CHECKS);
    let _ = std::fs::remove_dir_all(base);
}

/// An outbox that loses deferrals: the suite must notice (it is a real
/// check, not a formality).
#[derive(Debug)]
struct ForgetsDeferrals(DirSpool);

impl Outbox for ForgetsDeferrals {
    fn enqueue<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<DraftId, Error>> {
        Outbox::enqueue(&self.0, message)
    }
    fn claim_due(&self, now: SystemTime, max: usize) -> BoxFuture<'_, Result<Vec<Claim>, Error>> {
        Outbox::claim_due(&self.0, now, max)
    }
    fn next_due(&self) -> BoxFuture<'_, Result<Option<SystemTime>, Error>> {
        Outbox::next_due(&self.0)
    }
    fn complete(&self, claim: Claim) -> BoxFuture<'_, Result<(), Error>> {
        Outbox::complete(&self.0, claim)
    }
    fn defer_claim(&self, claim: Claim, _deferral: Deferral) -> BoxFuture<'_, Result<(), Error>> {
        // Drops the claim: the draft is due again at once, its attempt lost.
        drop(claim);
        Box::pin(async { Ok(()) })
    }
    fn fail_claim<'a>(&'a self, claim: Claim, reason: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Outbox::fail_claim(&self.0, claim, reason)
    }
    fn list<'a>(
        &'a self,
        area: Area,
        after: Option<&'a DraftId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<relaymail::outbox::Page, Error>> {
        Outbox::list(&self.0, area, after, limit)
    }
    fn inspect<'a>(
        &'a self,
        area: Area,
        id: &'a DraftId,
    ) -> BoxFuture<'a, Result<relaymail::outbox::DraftInfo, Error>> {
        Outbox::inspect(&self.0, area, id)
    }
    fn retry_now<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<(), Error>> {
        Outbox::retry_now(&self.0, area, id)
    }
    fn delete<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<(), Error>> {
        Outbox::delete(&self.0, area, id)
    }
}

#[tokio::test]
async fn the_conformance_suite_names_the_check_a_broken_outbox_fails() {
    let base = spool_dir("conformance-broken");
    let mut n = 0;
    let failure = relaymail::testing::check_outbox(|| {
        n += 1;
        let dir = base.join(format!("case-{n}"));
        async move { ForgetsDeferrals(DirSpool::open(dir).expect("spool")) }
    })
    .await
    .expect_err("a lost deferral is noticed");
    assert_eq!(
        failure.check,
        "a deferred draft records the attempt and waits for its time"
    );
    assert!(failure.problem.contains("attempts 0"), "{failure}");
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test]
async fn the_default_release_passes_the_outbox_conformance_suite() {
    // Faulty, not broken, does not override release_waiting_on_settings:
    // the trait's default runs.
    let mut n = 0;
    let passed = relaymail::testing::check_outbox(|| {
        n += 1;
        let (faulty, _, _) = Faulty::new(&format!("conformance-default-{n}"));
        async move { faulty }
    })
    .await
    .unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(passed, relaymail::testing::CHECKS);
    for i in 1..=n {
        let _ = std::fs::remove_dir_all(spool_dir(&format!("conformance-default-{i}")));
    }
}
