//! The durable outbox (seed 003: mail is saved as a draft when the relay is
//! offline or the settings are invalid): the async [`Outbox`] trait, and
//! [`DirSpool`], a directory spool that needs no external service, with
//! its [`OutboxPolicy`]. The [`Mailer`](crate::Mailer)'s background
//! deliverer uses the trait; nothing here depends on the mailer.
//!
//! [`DirSpool::enqueue`] returns only once the message and its envelope are
//! on disk: written to a temporary file, fsynced, renamed into `drafts/`, the
//! directory fsynced. A draft is a small text header (the whole envelope
//! with its parameters — REQUIRETLS, DSN RET/ENVID/NOTIFY/ORCPT —, attempts,
//! next attempt, last error, whether it waits on the settings; a versioned
//! format, older versions still read)
//! followed by the message bytes. Drafts are listed
//! a page at a time straight from the directory, never loaded all at once.
//! Files that cannot be read as drafts are moved to `corrupt/` and reported;
//! the others go on.
//!
//! [`Outbox`] is async: its methods return futures, and [`DirSpool`]'s
//! implementation of it does the file work on tokio's blocking threads
//! (`spawn_blocking`), never on the async ones. `DirSpool`'s inherent
//! methods of the same names are the blocking operations themselves (file
//! IO; [`DirSpool::retry_now`] and [`DirSpool::delete`] also wait for a
//! delivery attempt in progress on the same draft), for synchronous code:
//! tools, scripts, tests. From async code, go through the trait —
//! `Outbox::list(&spool, ..).await`, or an `Arc<dyn Outbox>` such as
//! [`Mailer::outbox`](crate::Mailer::outbox).
//!
//! A draft whose last attempt failed on the settings (authentication, TLS,
//! configuration) is marked [`DraftInfo::waiting_on_settings`]; when the
//! settings are fixed, [`Outbox::release_waiting_on_settings`] makes such
//! drafts due at once. [`Mailer::reload`](crate::Mailer::reload) has the
//! deliverer run it, and
//! [`Mailer::reload_and_release`](crate::Mailer::reload_and_release) runs
//! it and says how many.
//!
//! Layout: `drafts/`, `failed/`, `corrupt/`, `tmp/` under the spool
//! directory; a draft's id is its file name without `.draft`, sortable by
//! creation time. A draft file's modification time is its next attempt
//! time (as Postfix does with its deferred queue), so looking for due
//! drafts reads only the directory and file metadata, however many drafts
//! wait for a relay that is down. A time lost by copying or restoring the
//! spool is harmless: the draft's header decides, and the next look puts
//! the time back. Do not set spool files' times into the future by hand:
//! such a draft waits until then.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::error::Error;
use crate::future::BoxFuture;
use crate::message::Message;
use crate::proto::session::{Envelope, Recipient};

mod codec;
#[cfg(feature = "postgres")]
pub mod pg;
mod policy;
mod spool;

pub(crate) use codec::{decode_draft, encode_draft};
#[cfg(feature = "postgres")]
pub use pg::PgOutbox;
pub use policy::OutboxPolicy;
pub use spool::DirSpool;

/// Where a draft is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Area {
    /// Waiting for (another) attempt.
    Drafts,
    /// Failed for good (5yz for every recipient, refused, or too old).
    Failed,
}

impl Area {
    /// The area's name in storage: the spool's directory, the database's
    /// `area` column.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Area::Drafts => "drafts",
            Area::Failed => "failed",
        }
    }
}

/// A draft's identity: sortable by creation time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DraftId(String);

impl DraftId {
    /// Parses an id (as shown by [`DraftId::as_str`]).
    pub fn parse(text: &str) -> Option<DraftId> {
        let ok = text.len() == 30
            && text.bytes().enumerate().all(|(i, b)| match i {
                13 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        ok.then(|| DraftId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DraftId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a draft holds, without its bytes. Never a secret: drafts hold
/// messages and envelopes, not settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DraftInfo {
    /// Its id.
    pub id: DraftId,
    /// Its area.
    pub area: Area,
    /// The envelope.
    pub envelope: Envelope,
    /// Message size in bytes.
    pub size: u64,
    /// When it was enqueued.
    pub created: SystemTime,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt: SystemTime,
    /// Why the last attempt failed (or why it is in the failed area).
    pub last_error: Option<String>,
    /// An attempt failed after the whole message was sent (the final reply
    /// timed out, or the connection was lost before it): the relay may
    /// already have it, and a later delivery may reach a recipient twice.
    pub possibly_delivered: bool,
    /// The last attempt failed because of the settings, not the relay:
    /// authentication ([`Error::is_auth`], which covers an OAuth2 token
    /// the server rejected and a grant that needs the user to authorize
    /// again), TLS ([`Error::is_tls`]) or configuration
    /// ([`Error::is_config`]). A 4yz reply, a timeout or an unreachable
    /// relay is not a settings error. Such a draft waits for the settings
    /// to be fixed: [`Outbox::release_waiting_on_settings`] (which
    /// [`Mailer::reload`](crate::Mailer::reload) runs) makes it due at
    /// once instead of at the end of its back-off.
    ///
    /// Set by a [`Deferral`] that says so; cleared by a later deferral for
    /// another cause, by [`Outbox::retry_now`] and by the release. Always
    /// `false` in the failed area. Drafts stored by a version without it
    /// read as `false`.
    pub waiting_on_settings: bool,
}

impl DraftInfo {
    /// A new draft of `message`, due at `now`, with a fresh id (creation
    /// time, then random: ids sort by age). Refuses an envelope that could
    /// not be sent.
    pub(crate) fn new_draft(message: &Message, now: SystemTime) -> Result<DraftInfo, Error> {
        message.envelope().validate()?;
        Ok(DraftInfo {
            id: DraftId(format!(
                "{:013x}-{:016x}",
                codec::millis(now),
                crate::rand::random_u64()
            )),
            area: Area::Drafts,
            envelope: message.envelope().clone(),
            size: message.content().len() as u64,
            created: now,
            attempts: 0,
            next_attempt: now,
            last_error: None,
            possibly_delivered: false,
            waiting_on_settings: false,
        })
    }
}

/// A failed attempt, as [`Outbox::defer_claim`] records it: why, when to
/// try again, the recipients still owed, and whether the draft now waits
/// for the settings to be fixed.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use relaymail::outbox::Deferral;
///
/// let later = SystemTime::now() + Duration::from_secs(600);
/// let deferral = Deferral::new("535 5.7.8 authentication failed", later).with_waiting_on_settings(true);
/// assert!(deferral.waiting_on_settings && deferral.recipients.is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deferral {
    /// Why the attempt failed; stored on one line as the draft's
    /// [`last_error`](DraftInfo::last_error).
    pub error: String,
    /// When the next attempt is due.
    pub next_attempt: SystemTime,
    /// The recipients still owed, when only some are (the others were
    /// delivered); `None`: every recipient of the draft.
    pub recipients: Option<Vec<Recipient>>,
    /// The attempt failed because of the settings (see
    /// [`DraftInfo::waiting_on_settings`], which stores it).
    pub waiting_on_settings: bool,
}

impl Deferral {
    /// A deferral for every recipient, not waiting on the settings.
    pub fn new(error: impl Into<String>, next_attempt: SystemTime) -> Deferral {
        Deferral {
            error: error.into(),
            next_attempt,
            recipients: None,
            waiting_on_settings: false,
        }
    }

    /// Only `recipients` are still owed.
    pub fn with_recipients(mut self, recipients: Vec<Recipient>) -> Deferral {
        self.recipients = Some(recipients);
        self
    }

    /// Whether the attempt failed because of the settings.
    pub fn with_waiting_on_settings(mut self, waiting: bool) -> Deferral {
        self.waiting_on_settings = waiting;
        self
    }

    /// `info` after this deferral: in the drafts area, one attempt more,
    /// the error on one line, the next attempt time, the recipients still
    /// owed and the settings flag.
    pub(crate) fn apply(self, info: &mut DraftInfo) -> Result<(), Error> {
        info.area = Area::Drafts;
        info.attempts += 1;
        info.last_error = Some(crate::email::one_line(&self.error).into_owned());
        info.next_attempt = self.next_attempt;
        info.waiting_on_settings = self.waiting_on_settings;
        if let Some(r) = self.recipients {
            info.envelope.set_recipients(r)?;
        }
        Ok(())
    }
}

/// A page of a listing.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Page {
    /// The drafts, oldest first.
    pub drafts: Vec<DraftInfo>,
    /// Pass this to get the next page; `None` at the end.
    pub next: Option<DraftId>,
    /// Files found unreadable on the way and moved to `corrupt/`.
    pub quarantined: Vec<PathBuf>,
}

/// A draft reserved for delivery by [`Outbox::claim_due`]; the reservation
/// goes with it (dropping it releases the draft).
pub struct Claim {
    info: DraftInfo,
    content: Vec<u8>,
    _lease: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("info", &self.info).finish()
    }
}

impl Claim {
    /// A claim for another [`Outbox`] implementation: `lease` is whatever
    /// keeps the draft reserved (a row lock, a lease token …) and is dropped
    /// with the claim.
    pub fn new(info: DraftInfo, content: Vec<u8>, lease: impl std::any::Any + Send + Sync) -> Claim {
        Claim {
            info,
            content,
            _lease: Box::new(lease),
        }
    }

    /// The lease given to [`Claim::new`], when it is a `T` (for the
    /// implementation that made the claim, to record its outcome).
    pub fn lease<T: std::any::Any>(&self) -> Option<&T> {
        self._lease.downcast_ref::<T>()
    }

    /// The draft's info.
    pub fn info(&self) -> &DraftInfo {
        &self.info
    }

    /// Notes that this attempt failed after the whole message was sent
    /// ([`DraftInfo::possibly_delivered`]); the deferral or failure recorded
    /// next keeps it.
    pub(crate) fn mark_possibly_delivered(&mut self) {
        self.info.possibly_delivered = true;
    }

    /// The message to send.
    pub fn message(&self) -> Message {
        Message::new(self.info.envelope.clone(), self.content.clone())
    }
}

/// Where drafts live. [`DirSpool`] is the embedded default; the trait is
/// what a shared store (a database queue, when one machine is no longer
/// enough) implements.
///
/// Every method is async and returns a [`BoxFuture`], so that the trait is
/// dyn-compatible (the [`Mailer`](crate::Mailer) holds an
/// `Arc<dyn Outbox>`) and a networked backend awaits its IO instead of
/// blocking an executor thread. An implementation whose work blocks (file
/// IO, a lock) does it off the async threads, as [`DirSpool`] does with
/// `tokio::task::spawn_blocking`; the futures are polled inside a tokio
/// runtime.
///
/// ```
/// use std::sync::Arc;
/// use relaymail::outbox::{Area, DirSpool, Outbox};
///
/// # async fn demo() -> Result<(), relaymail::Error> {
/// let outbox: Arc<dyn Outbox> = Arc::new(DirSpool::open("/var/spool/myapp-mail")?);
/// let page = outbox.list(Area::Failed, None, 50).await?;
/// for draft in &page.drafts {
///     println!("{} {:?}", draft.id, draft.last_error);
/// }
/// let retried = outbox.retry_all_now(Area::Failed).await?;
/// # let _ = retried;
/// # Ok(()) }
/// ```
pub trait Outbox: Send + Sync + std::fmt::Debug + 'static {
    /// Saves a message as a draft due now; `Ok` only once it is durable.
    fn enqueue<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<DraftId, Error>>;
    /// Reserves up to `max` drafts due at `now`; a reserved draft is not
    /// returned to anyone else until its claim is dropped or recorded.
    fn claim_due(&self, now: SystemTime, max: usize) -> BoxFuture<'_, Result<Vec<Claim>, Error>>;
    /// The earliest next attempt among the drafts.
    fn next_due(&self) -> BoxFuture<'_, Result<Option<SystemTime>, Error>>;
    /// Delivered: remove the draft.
    fn complete(&self, claim: Claim) -> BoxFuture<'_, Result<(), Error>>;
    /// Failed for now: record the attempt, the error and the next attempt,
    /// the recipients still owed when given, and whether the draft waits
    /// on the settings ([`DraftInfo::waiting_on_settings`], set or cleared
    /// as the deferral says).
    fn defer_claim(&self, claim: Claim, deferral: Deferral) -> BoxFuture<'_, Result<(), Error>>;
    /// Failed for good: move to the failed area (not waiting on the
    /// settings any more).
    fn fail_claim<'a>(&'a self, claim: Claim, reason: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// A page of drafts, oldest first.
    fn list<'a>(
        &'a self,
        area: Area,
        after: Option<&'a DraftId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, Error>>;
    /// One draft's info.
    fn inspect<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<DraftInfo, Error>>;
    /// Due now (from the failed area: back to the drafts); no longer
    /// waiting on the settings.
    fn retry_now<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<(), Error>>;
    /// Removes a draft.
    fn delete<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<(), Error>>;

    /// One draft's message as it will be sent (headers and body), for an
    /// administrator to inspect. The default answers
    /// [unsupported](Error::is_unsupported): a backend that cannot read a
    /// draft without claiming it need not.
    fn read_message<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        let _ = (area, id);
        Box::pin(async {
            Err(Error::new(
                crate::error::Kind::Unsupported,
                None,
                "this outbox cannot show a draft's message",
            ))
        })
    }

    /// Resolves when new drafts may be due before the deliverer's next
    /// poll: a backend that hears of drafts written by other processes
    /// (PostgreSQL's `LISTEN`) wakes the idle deliverer with it. The
    /// default never resolves, and the deliverer polls
    /// ([`OutboxPolicy::poll_interval`]); drafts enqueued through the
    /// same [`Mailer`](crate::Mailer) wake it either way.
    fn wait_for_drafts(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }

    /// Every draft of `area` due now (e.g. after the administrator fixed the
    /// settings); returns how many. Drafts delivered meanwhile are skipped.
    fn retry_all_now(&self, area: Area) -> BoxFuture<'_, Result<usize, Error>> {
        Box::pin(async move {
            let mut after = None;
            let mut n = 0;
            loop {
                let page = self.list(area, after.as_ref(), 256).await?;
                for d in &page.drafts {
                    match self.retry_now(area, &d.id).await {
                        Ok(()) => n += 1,
                        // Delivered or deleted meanwhile: nothing to retry.
                        Err(_) if self.inspect(area, &d.id).await.is_err() => {}
                        Err(e) => return Err(e),
                    }
                }
                match page.next {
                    Some(next) if area == Area::Drafts => after = Some(next),
                    // Retried failed drafts left the failed area: start over.
                    Some(_) => after = None,
                    None => return Ok(n),
                }
            }
        })
    }

    /// Every draft of [`Area::Drafts`] that waits on the settings
    /// ([`DraftInfo::waiting_on_settings`]) due now, the flag cleared;
    /// returns how many. Other drafts keep their time. The
    /// [`Mailer`](crate::Mailer)'s deliverer runs it after each
    /// [`reload`](crate::Mailer::reload), since new settings may be what
    /// those drafts waited for.
    ///
    /// A draft claimed at the time (an attempt in progress) may be skipped:
    /// its attempt records its own outcome. [`DirSpool`] and
    /// `PgOutbox` (feature `postgres`) skip them; the mailer whose
    /// settings were reloaded makes such an attempt due again at once if it
    /// fails on the settings. The default goes through
    /// [`list`](Outbox::list) and [`retry_now`](Outbox::retry_now), one
    /// draft at a time, skipping drafts delivered, deferred again or being
    /// delivered (a [conflict](Error::is_conflict)) meanwhile; a backend
    /// overrides it with one operation where it can.
    fn release_waiting_on_settings(&self) -> BoxFuture<'_, Result<usize, Error>> {
        Box::pin(async move {
            let mut after = None;
            let mut n = 0;
            loop {
                let page = self.list(Area::Drafts, after.as_ref(), 256).await?;
                for d in page.drafts.iter().filter(|d| d.waiting_on_settings) {
                    match self.retry_now(Area::Drafts, &d.id).await {
                        Ok(()) => n += 1,
                        Err(e) if e.is_conflict() => {} // being delivered
                        Err(e) => match self.inspect(Area::Drafts, &d.id).await {
                            // Delivered, failed or deferred anew meanwhile.
                            Err(_) => {}
                            Ok(now) if !now.waiting_on_settings => {}
                            Ok(_) => return Err(e),
                        },
                    }
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => return Ok(n),
                }
            }
        })
    }
}
