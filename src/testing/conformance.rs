//! A conformance suite for [`Outbox`] implementations: the behaviour the
//! [`Mailer`](crate::Mailer) and its deliverer rely on, checked the same way
//! for [`DirSpool`](crate::outbox::DirSpool), for the other backends
//! relaymail ships, and for one you write.
//!
//! ```no_run
//! use relaymail::outbox::DirSpool;
//! use relaymail::testing::check_outbox;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut n = 0;
//! let passed = check_outbox(|| {
//!     n += 1;
//!     let dir = std::env::temp_dir().join(format!("my-outbox-check-{n}"));
//!     async move { DirSpool::open(dir).expect("spool") }
//! })
//! .await
//! .unwrap_or_else(|failure| panic!("{failure}"));
//! assert!(passed.len() >= 10);
//! # }
//! ```
//!
//! Every check gets a fresh, empty outbox from the closure, so the checks
//! do not depend on one another.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::address::Address;
use crate::message::Message;
use crate::outbox::{Area, Claim, Deferral, DraftId, DraftInfo, Outbox};
use crate::proto::command::{DsnReturn, MailParams, Notify, RcptParams};
use crate::proto::session::{Envelope, Recipient};

/// A check the outbox failed: which one, and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConformanceFailure {
    /// The check's name (one of [`CHECKS`]).
    pub check: &'static str,
    /// What the outbox did instead of what it should have.
    pub problem: String,
}

impl fmt::Display for ConformanceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "outbox conformance check {:?} failed: {}",
            self.check, self.problem
        )
    }
}

impl std::error::Error for ConformanceFailure {}

/// The names of the checks [`check_outbox`] runs, in order.
pub const CHECKS: [&str; 11] = [
    "an enqueued draft is due now and inspects as it was given",
    "a claim carries the message and reserves the draft",
    "a completed draft is gone",
    "a deferred draft records the attempt and waits for its time",
    "a deferral keeps only the recipients still owed",
    "a failed draft moves to the failed area and retry brings it back",
    "a deleted draft is gone",
    "pages list every draft once, oldest first",
    "retry_all_now makes every failed draft due",
    "envelope parameters survive the outbox",
    "drafts waiting on the settings are flagged, and released alone",
];

type Outcome = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

fn address(text: &str) -> Address {
    text.parse().expect("the suite's addresses are valid")
}

fn message(i: usize) -> Message {
    let envelope = Envelope::new(
        Some(address("app@example.com")),
        vec![address(&format!("user{i}@example.net"))],
    )
    .expect("envelope");
    Message::new(
        envelope,
        format!("Subject: conformance {i}\r\n\r\nbody {i}\r\n.\r\nend\r\n").into_bytes(),
    )
}

fn err(what: &str, e: impl fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The time as the outbox may store it (whole milliseconds).
fn millis(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// `claim_due(at, max)`, its error in words.
async fn claim_at(o: &impl Outbox, at: SystemTime, max: usize) -> Result<Vec<Claim>, String> {
    o.claim_due(at, max).await.map_err(|e| err("claim_due", e))
}

/// The one draft due now.
async fn claim_one(o: &impl Outbox) -> Result<Claim, String> {
    claim_at(o, SystemTime::now(), 1)
        .await?
        .pop()
        .ok_or_else(|| "nothing claimed".to_owned())
}

/// `enqueue(message)`, its error in words.
async fn enqueue(o: &impl Outbox, message: &Message) -> Result<DraftId, String> {
    o.enqueue(message).await.map_err(|e| err("enqueue", e))
}

/// `inspect(area, id)`, its error in words.
async fn inspect(o: &impl Outbox, area: Area, id: &DraftId) -> Result<DraftInfo, String> {
    o.inspect(area, id).await.map_err(|e| err("inspect", e))
}

/// Runs every check in [`CHECKS`], each on a fresh outbox from `fresh`;
/// returns the names of the checks passed, or the first failure.
///
/// Must run inside a tokio runtime (outboxes may use it). The checks claim,
/// defer and fail drafts with times around `SystemTime::now()`; they take
/// well under a second on a local outbox.
pub async fn check_outbox<O, F, Fut>(mut fresh: F) -> Result<Vec<&'static str>, ConformanceFailure>
where
    O: Outbox,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    let mut passed = Vec::new();
    for (i, check) in CHECKS.into_iter().enumerate() {
        let outbox = fresh().await;
        let outcome = match i {
            0 => enqueue_inspect(&outbox).await,
            1 => claim_reserves(&outbox).await,
            2 => complete_removes(&outbox).await,
            3 => defer_records(&outbox).await,
            4 => defer_keeps_owed(&outbox).await,
            5 => fail_and_retry(&outbox).await,
            6 => delete_removes(&outbox).await,
            7 => paging(&outbox).await,
            8 => retry_all(&outbox).await,
            9 => parameters(&outbox).await,
            _ => waiting_on_settings(&outbox).await,
        };
        match outcome {
            Ok(()) => passed.push(check),
            Err(problem) => return Err(ConformanceFailure { check, problem }),
        }
    }
    Ok(passed)
}

async fn enqueue_inspect(o: &impl Outbox) -> Outcome {
    let before = SystemTime::now();
    let m = message(1);
    let id = enqueue(o, &m).await?;
    let info = inspect(o, Area::Drafts, &id).await?;
    ensure!(info.id == id, "inspect gave id {} for {id}", info.id);
    ensure!(info.area == Area::Drafts, "a new draft is in {:?}", info.area);
    ensure!(
        &info.envelope == m.envelope(),
        "the envelope changed: {:?}",
        info.envelope
    );
    ensure!(
        info.size == m.content().len() as u64,
        "size {} for {} bytes",
        info.size,
        m.content().len()
    );
    ensure!(
        info.attempts == 0 && info.last_error.is_none(),
        "a new draft has attempts or an error: {info:?}"
    );
    ensure!(
        millis(info.next_attempt) <= millis(SystemTime::now()),
        "a new draft is not due now"
    );
    ensure!(
        millis(info.created) + 1 >= millis(before),
        "created before it was enqueued"
    );
    let due = o.next_due().await.map_err(|e| err("next_due", e))?;
    ensure!(
        due.is_some_and(|t| millis(t) <= millis(SystemTime::now())),
        "next_due is {due:?}, not now"
    );
    ensure!(
        o.inspect(Area::Failed, &id).await.is_err(),
        "the draft is also in the failed area"
    );
    Ok(())
}

async fn claim_reserves(o: &impl Outbox) -> Outcome {
    let (a, b) = (message(1), message(2));
    enqueue(o, &a).await?;
    enqueue(o, &b).await?;
    let claims = claim_at(o, SystemTime::now(), 10).await?;
    ensure!(claims.len() == 2, "claimed {} of 2 due drafts", claims.len());
    let mut contents: Vec<Vec<u8>> = claims.iter().map(|c| c.message().content().to_vec()).collect();
    contents.sort();
    let mut want = vec![a.content().to_vec(), b.content().to_vec()];
    want.sort();
    ensure!(
        contents == want,
        "a claim's message bytes differ from what was enqueued"
    );
    let again = claim_at(o, SystemTime::now(), 10).await?;
    ensure!(
        again.is_empty(),
        "{} reserved drafts were claimed a second time",
        again.len()
    );
    let one = claim_at(o, SystemTime::now() + Duration::from_secs(3600), 1).await?;
    ensure!(one.is_empty(), "a reserved draft was claimed again later");
    drop(claims);
    Ok(())
}

async fn complete_removes(o: &impl Outbox) -> Outcome {
    let id = enqueue(o, &message(1)).await?;
    let mut claims = claim_at(o, SystemTime::now(), 10).await?;
    ensure!(claims.len() == 1, "claimed {} of 1", claims.len());
    let claim = claims.remove(0);
    o.complete(claim).await.map_err(|e| err("complete", e))?;
    ensure!(
        o.inspect(Area::Drafts, &id).await.is_err(),
        "a completed draft is still there"
    );
    let page = o.list(Area::Drafts, None, 10).await.map_err(|e| err("list", e))?;
    ensure!(page.drafts.is_empty(), "a completed draft is still listed");
    let due = o.next_due().await.map_err(|e| err("next_due", e))?;
    ensure!(due.is_none(), "next_due is {due:?} for an empty outbox");
    Ok(())
}

async fn defer_records(o: &impl Outbox) -> Outcome {
    let id = enqueue(o, &message(1)).await?;
    let claim = claim_one(o).await?;
    let later = SystemTime::now() + Duration::from_secs(3600);
    o.defer_claim(claim, Deferral::new("421 4.3.2 try again later", later))
        .await
        .map_err(|e| err("defer_claim", e))?;
    let info = inspect(o, Area::Drafts, &id).await?;
    ensure!(
        info.attempts == 1,
        "attempts {} after one deferral",
        info.attempts
    );
    ensure!(
        !info.waiting_on_settings,
        "a 4yz deferral says the draft waits on the settings"
    );
    ensure!(
        info.last_error
            .as_deref()
            .is_some_and(|e| e.contains("421 4.3.2")),
        "the error was not recorded: {:?}",
        info.last_error
    );
    ensure!(
        millis(info.next_attempt) == millis(later),
        "next attempt {:?}, asked for {later:?}",
        info.next_attempt
    );
    let now = claim_at(o, SystemTime::now(), 10).await?;
    ensure!(now.is_empty(), "a deferred draft was claimed before its time");
    let due = o.next_due().await.map_err(|e| err("next_due", e))?;
    ensure!(
        due.is_some_and(|t| millis(t) == millis(later)),
        "next_due is {due:?}, the deferral asked for {later:?}"
    );
    let then = claim_at(o, later + Duration::from_secs(1), 10).await?;
    ensure!(then.len() == 1, "the deferred draft was not claimed at its time");
    Ok(())
}

async fn defer_keeps_owed(o: &impl Outbox) -> Outcome {
    let owed = Recipient::new(address("later@example.net"))
        .with_params(RcptParams::default().with_notify(Notify::Never));
    let envelope = Envelope::with_recipients(
        Some(address("app@example.com")),
        vec![Recipient::new(address("done@example.net")), owed.clone()],
    )
    .map_err(|e| err("envelope", e))?;
    let id = enqueue(o, &Message::new(envelope, b"Subject: two\r\n\r\nx\r\n".to_vec())).await?;
    let claim = claim_one(o).await?;
    o.defer_claim(
        claim,
        Deferral::new("451 4.2.1 mailbox busy", SystemTime::now()).with_recipients(vec![owed.clone()]),
    )
    .await
    .map_err(|e| err("defer_claim", e))?;
    let info = inspect(o, Area::Drafts, &id).await?;
    ensure!(
        info.envelope.recipients() == [owed],
        "recipients after the deferral: {:?}",
        info.envelope.recipients()
    );
    Ok(())
}

async fn fail_and_retry(o: &impl Outbox) -> Outcome {
    let id = enqueue(o, &message(1)).await?;
    let claim = claim_one(o).await?;
    o.fail_claim(claim, "550 5.1.1 no such user")
        .await
        .map_err(|e| err("fail_claim", e))?;
    ensure!(
        o.inspect(Area::Drafts, &id).await.is_err(),
        "a failed draft is still among the drafts"
    );
    let info = o
        .inspect(Area::Failed, &id)
        .await
        .map_err(|e| err("inspect failed", e))?;
    ensure!(info.area == Area::Failed, "the failed draft says {:?}", info.area);
    ensure!(
        info.last_error
            .as_deref()
            .is_some_and(|e| e.contains("550 5.1.1")),
        "the reason was not recorded: {:?}",
        info.last_error
    );
    let listed = o.list(Area::Failed, None, 10).await.map_err(|e| err("list", e))?;
    ensure!(
        listed.drafts.iter().map(|d| &d.id).eq([&id]),
        "the failed area lists {:?}",
        listed.drafts
    );
    let none = claim_at(o, SystemTime::now() + Duration::from_secs(86_400), 10).await?;
    ensure!(none.is_empty(), "a failed draft was claimed");
    o.retry_now(Area::Failed, &id)
        .await
        .map_err(|e| err("retry_now", e))?;
    ensure!(
        o.inspect(Area::Failed, &id).await.is_err(),
        "a retried draft stayed in the failed area"
    );
    let claims = claim_at(o, SystemTime::now(), 10).await?;
    ensure!(
        claims.len() == 1 && claims[0].info().id == id,
        "a retried draft is not due now"
    );
    Ok(())
}

async fn delete_removes(o: &impl Outbox) -> Outcome {
    let id = enqueue(o, &message(1)).await?;
    o.delete(Area::Drafts, &id).await.map_err(|e| err("delete", e))?;
    ensure!(
        o.inspect(Area::Drafts, &id).await.is_err(),
        "a deleted draft is still there"
    );
    let claims = claim_at(o, SystemTime::now(), 10).await?;
    ensure!(claims.is_empty(), "a deleted draft was claimed");
    Ok(())
}

async fn paging(o: &impl Outbox) -> Outcome {
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(enqueue(o, &message(i)).await?);
    }
    let mut seen: Vec<DraftId> = Vec::new();
    let mut after: Option<DraftId> = None;
    for _ in 0..10 {
        let page = o
            .list(Area::Drafts, after.as_ref(), 10)
            .await
            .map_err(|e| err("list", e))?;
        ensure!(
            page.drafts.len() <= 10,
            "a page of {} for a limit of 10",
            page.drafts.len()
        );
        seen.extend(page.drafts.iter().map(|d| d.id.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let unique: HashSet<&DraftId> = seen.iter().collect();
    ensure!(unique.len() == seen.len(), "a draft was listed twice");
    let want: HashSet<&DraftId> = ids.iter().collect();
    ensure!(unique == want, "listed {} drafts of 25", unique.len());
    ensure!(seen.windows(2).all(|w| w[0] < w[1]), "pages are not in id order");
    Ok(())
}

async fn retry_all(o: &impl Outbox) -> Outcome {
    for i in 0..3 {
        enqueue(o, &message(i)).await?;
    }
    let claims = claim_at(o, SystemTime::now(), 10).await?;
    ensure!(claims.len() == 3, "claimed {} of 3", claims.len());
    for c in claims {
        o.fail_claim(c, "554 5.7.1 refused")
            .await
            .map_err(|e| err("fail_claim", e))?;
    }
    let n = o
        .retry_all_now(Area::Failed)
        .await
        .map_err(|e| err("retry_all_now", e))?;
    ensure!(n == 3, "retry_all_now retried {n} of 3");
    let failed = o.list(Area::Failed, None, 10).await.map_err(|e| err("list", e))?;
    ensure!(
        failed.drafts.is_empty(),
        "{} drafts stayed failed",
        failed.drafts.len()
    );
    let claims = claim_at(o, SystemTime::now(), 10).await?;
    ensure!(claims.len() == 3, "{} of 3 retried drafts are due", claims.len());
    Ok(())
}

async fn parameters(o: &impl Outbox) -> Outcome {
    let envelope = Envelope::with_recipients(
        Some(address("app@example.com")),
        vec![Recipient::new(address("ops@example.net")).with_params(
            RcptParams::default()
                .with_notify(Notify::On {
                    success: false,
                    failure: true,
                    delay: true,
                })
                .with_orcpt("ops+orig@example.net"),
        )],
    )
    .map_err(|e| err("envelope", e))?
    .with_params(
        MailParams::default()
            .with_requiretls(true)
            .with_ret(DsnReturn::Headers)
            .with_envid("reset 42+x=y"),
    );
    let m = Message::new(
        envelope,
        b"Subject: reset\r\n\r\nhttps://example.com/r\r\n".to_vec(),
    );
    enqueue(o, &m).await?;
    let claim = claim_one(o).await?;
    let got = claim.message();
    ensure!(
        got.envelope().params().requiretls
            && got.envelope().params().ret == Some(DsnReturn::Headers)
            && got.envelope().params().envid.as_deref() == Some("reset 42+x=y"),
        "MAIL parameters changed: {:?}",
        got.envelope().params()
    );
    ensure!(
        got.envelope().recipients() == m.envelope().recipients(),
        "RCPT parameters changed: {:?}",
        got.envelope().recipients()
    );
    Ok(())
}

/// `defer_claim(claim, deferral)`, its error in words.
async fn defer(o: &impl Outbox, claim: Claim, deferral: Deferral) -> Outcome {
    o.defer_claim(claim, deferral)
        .await
        .map_err(|e| err("defer_claim", e))
}

/// The one draft due now, which must be `id`.
async fn claim_id(o: &impl Outbox, id: &DraftId) -> Result<Claim, String> {
    let claim = claim_one(o).await?;
    ensure!(
        claim.info().id == *id,
        "claimed {} instead of {id}",
        claim.info().id
    );
    Ok(claim)
}

async fn waiting_on_settings(o: &impl Outbox) -> Outcome {
    let later = SystemTime::now() + Duration::from_secs(3600);
    let auth = "535 5.7.8 authentication failed";
    let [a, b, c, d] = [
        enqueue(o, &message(1)).await?,
        enqueue(o, &message(2)).await?,
        enqueue(o, &message(3)).await?,
        enqueue(o, &message(4)).await?,
    ];
    let claims = claim_at(o, SystemTime::now(), 10).await?;
    ensure!(claims.len() == 4, "claimed {} of 4", claims.len());
    for claim in claims {
        let id = claim.info().id.clone();
        let deferral = if id == b {
            Deferral::new("421 4.3.2 try again later", later)
        } else if id == c {
            // Due again now, to be deferred for another cause below.
            Deferral::new(auth, SystemTime::now()).with_waiting_on_settings(true)
        } else {
            Deferral::new(auth, later).with_waiting_on_settings(true)
        };
        defer(o, claim, deferral).await?;
    }
    for (id, want) in [(&a, true), (&b, false), (&c, true), (&d, true)] {
        let info = inspect(o, Area::Drafts, id).await?;
        ensure!(
            info.waiting_on_settings == want,
            "after a deferral that said waiting_on_settings = {want}, the draft says {}",
            info.waiting_on_settings
        );
    }
    // A later deferral for another cause clears the flag.
    let claim = claim_id(o, &c).await?;
    defer(o, claim, Deferral::new("connection refused", later)).await?;
    ensure!(
        !inspect(o, Area::Drafts, &c).await?.waiting_on_settings,
        "a deferral for an unreachable relay left the settings flag set"
    );
    // So does retry_now.
    o.retry_now(Area::Drafts, &d)
        .await
        .map_err(|e| err("retry_now", e))?;
    ensure!(
        !inspect(o, Area::Drafts, &d).await?.waiting_on_settings,
        "retry_now left the settings flag set"
    );
    let claim = claim_id(o, &d).await?;
    o.complete(claim).await.map_err(|e| err("complete", e))?;
    // Only `a` waits on the settings now.
    let n = o
        .release_waiting_on_settings()
        .await
        .map_err(|e| err("release_waiting_on_settings", e))?;
    ensure!(n == 1, "release_waiting_on_settings released {n} drafts, not 1");
    let info = inspect(o, Area::Drafts, &a).await?;
    ensure!(
        !info.waiting_on_settings && millis(info.next_attempt) <= millis(SystemTime::now()),
        "a released draft is not due now without the flag: {info:?}"
    );
    ensure!(
        info.attempts == 1 && info.last_error.as_deref() == Some(auth),
        "the release changed the draft's attempts or error: {info:?}"
    );
    for id in [&b, &c] {
        let info = inspect(o, Area::Drafts, id).await?;
        ensure!(
            millis(info.next_attempt) == millis(later),
            "the release moved a draft that did not wait on the settings: {info:?}"
        );
    }
    let due = o.next_due().await.map_err(|e| err("next_due", e))?;
    ensure!(
        due.is_some_and(|t| millis(t) <= millis(SystemTime::now())),
        "next_due is {due:?} after the release, not now"
    );
    let claim = claim_id(o, &a).await?;
    ensure!(
        claim_at(o, SystemTime::now(), 10).await?.is_empty(),
        "drafts not waiting on the settings became due"
    );
    drop(claim);
    let again = o
        .release_waiting_on_settings()
        .await
        .map_err(|e| err("release_waiting_on_settings", e))?;
    ensure!(again == 0, "a second release released {again} drafts");
    Ok(())
}
