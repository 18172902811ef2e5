//! The durable outbox (seed 003: mail is saved as a draft when the relay is
//! offline or the settings are invalid): a directory spool that needs no
//! external service.
//!
//! [`DirSpool::enqueue`] returns only once the message and its envelope are
//! on disk: written to a temporary file, fsynced, renamed into `drafts/`, the
//! directory fsynced. A draft is a small text header (the whole envelope
//! with its parameters — REQUIRETLS, DSN RET/ENVID/NOTIFY/ORCPT —, attempts,
//! next attempt, last error; a versioned format, older versions still read)
//! followed by the message bytes. Drafts are listed
//! a page at a time straight from the directory, never loaded all at once.
//! Files that cannot be read as drafts are moved to `corrupt/` and reported;
//! the others go on.
//!
//! The spool's methods do blocking file IO (and [`DirSpool::retry_now`],
//! [`DirSpool::delete`] wait for a delivery attempt in progress on the same
//! draft): from async code, call them through `tokio::task::spawn_blocking`.
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

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Kind};
use crate::message::Message;
use crate::proto::session::{Envelope, Recipient};

mod codec;
pub(crate) use codec::{decode_draft, encode_draft};

const EXT: &str = "draft";
/// The spool's directories under its root.
const SUBDIRS: [&str; 4] = ["drafts", "failed", "corrupt", "tmp"];

/// Where a draft is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// Waiting for (another) attempt.
    Drafts,
    /// Failed for good (5yz for every recipient, refused, or too old).
    Failed,
}

impl Area {
    fn dir(self) -> &'static str {
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
}

/// A page of a listing.
#[derive(Clone, Debug)]
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
/// enough) would implement. Methods block: the [`Mailer`](crate::Mailer)
/// calls them through `spawn_blocking`.
pub trait Outbox: Send + Sync + std::fmt::Debug + 'static {
    /// Saves a message as a draft due now; `Ok` only once it is durable.
    fn enqueue(&self, message: &Message) -> Result<DraftId, Error>;
    /// Reserves up to `max` drafts due at `now`; a reserved draft is not
    /// returned to anyone else until its claim is dropped or recorded.
    fn claim_due(&self, now: SystemTime, max: usize) -> Result<Vec<Claim>, Error>;
    /// The earliest next attempt among the drafts.
    fn next_due(&self) -> Result<Option<SystemTime>, Error>;
    /// Delivered: remove the draft.
    fn complete(&self, claim: Claim) -> Result<(), Error>;
    /// Failed for now: record the attempt, the error and the next attempt
    /// (and the recipients still owed, when given).
    fn defer_claim(
        &self,
        claim: Claim,
        error: &str,
        next_attempt: SystemTime,
        recipients: Option<Vec<Recipient>>,
    ) -> Result<(), Error>;
    /// Failed for good: move to the failed area.
    fn fail_claim(&self, claim: Claim, reason: &str) -> Result<(), Error>;
    /// A page of drafts, oldest first.
    fn list(&self, area: Area, after: Option<&DraftId>, limit: usize) -> Result<Page, Error>;
    /// One draft's info.
    fn inspect(&self, area: Area, id: &DraftId) -> Result<DraftInfo, Error>;
    /// Due now (from the failed area: back to the drafts).
    fn retry_now(&self, area: Area, id: &DraftId) -> Result<(), Error>;
    /// Removes a draft.
    fn delete(&self, area: Area, id: &DraftId) -> Result<(), Error>;

    /// Every draft of `area` due now (e.g. after the administrator fixed the
    /// settings); returns how many. Drafts delivered meanwhile are skipped.
    fn retry_all_now(&self, area: Area) -> Result<usize, Error> {
        let mut after = None;
        let mut n = 0;
        loop {
            let page = self.list(area, after.as_ref(), 256)?;
            for d in &page.drafts {
                match self.retry_now(area, &d.id) {
                    Ok(()) => n += 1,
                    // Delivered or deleted meanwhile: nothing to retry.
                    Err(_) if self.inspect(area, &d.id).is_err() => {}
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
    }
}

impl Outbox for DirSpool {
    fn enqueue(&self, message: &Message) -> Result<DraftId, Error> {
        DirSpool::enqueue(self, message)
    }
    fn claim_due(&self, now: SystemTime, max: usize) -> Result<Vec<Claim>, Error> {
        DirSpool::claim_due(self, now, max)
    }
    fn next_due(&self) -> Result<Option<SystemTime>, Error> {
        DirSpool::next_due(self)
    }
    fn complete(&self, claim: Claim) -> Result<(), Error> {
        DirSpool::complete(self, claim)
    }
    fn defer_claim(
        &self,
        claim: Claim,
        error: &str,
        next_attempt: SystemTime,
        recipients: Option<Vec<Recipient>>,
    ) -> Result<(), Error> {
        DirSpool::defer_claim(self, claim, error, next_attempt, recipients)
    }
    fn fail_claim(&self, claim: Claim, reason: &str) -> Result<(), Error> {
        DirSpool::fail_claim(self, claim, reason)
    }
    fn list(&self, area: Area, after: Option<&DraftId>, limit: usize) -> Result<Page, Error> {
        DirSpool::list(self, area, after, limit)
    }
    fn inspect(&self, area: Area, id: &DraftId) -> Result<DraftInfo, Error> {
        DirSpool::inspect(self, area, id)
    }
    fn retry_now(&self, area: Area, id: &DraftId) -> Result<(), Error> {
        DirSpool::retry_now(self, area, id)
    }
    fn delete(&self, area: Area, id: &DraftId) -> Result<(), Error> {
        DirSpool::delete(self, area, id)
    }
}

/// The directory spool. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct DirSpool {
    root: PathBuf,
}

fn io(what: impl Into<String>, e: std::io::Error) -> Error {
    let what = what.into();
    let mut err = Error::new(Kind::Io, None, format!("{what}: {e}"));
    if matches!(e.raw_os_error(), Some(28) | Some(122)) {
        err = err.with_hint("the disk (or quota) is full: the message was not queued");
    } else if e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(30) {
        err = err.with_hint("the spool directory is not writable: the message was not queued");
    }
    err
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The time `ms` milliseconds after the epoch (`None` past what the
/// platform's clock can hold).
fn from_millis(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// `t` rounded down to the millisecond, as the draft header stores it.
fn whole_millis(t: SystemTime) -> SystemTime {
    from_millis(millis(t)).unwrap_or(t)
}

/// The next attempt time a draft file's modification time says, when it
/// is later than `now` (the draft is not due: no need to read it).
fn waits_until(entry: &fs::DirEntry, now: SystemTime) -> Option<SystemTime> {
    let modified = entry.metadata().ok()?.modified().ok()?;
    (modified > now).then_some(modified)
}

fn one_line(text: &str) -> String {
    crate::email::one_line(text).into_owned()
}

/// The draft id a spool file name stands for (`<id>.draft`).
fn draft_id(name: &std::ffi::OsStr) -> Option<DraftId> {
    name.to_str()?
        .strip_suffix(&format!(".{EXT}"))
        .and_then(DraftId::parse)
}

/// Whether `path` still names the (locked) `file`: a deliverer replaces or
/// removes a draft's file when it records an attempt.
fn still_at(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        matches!((file.metadata(), fs::metadata(path)), (Ok(a), Ok(b)) if a.ino() == b.ino() && a.dev() == b.dev())
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(format!("cannot sync {}", dir.display()), e))
}

impl DirSpool {
    /// Opens (creating when needed) a spool in `root`.
    ///
    /// Drafts hold whole messages, so the spool is private to its owner: on
    /// unix, directories are created 0700 (`root` too, when it is created
    /// here) and files 0600 whatever the umask. Opening a spool made by an
    /// older version (0755 directories, 0644 files) takes group and other
    /// permissions away from its four directories, which makes the older
    /// files unreachable to other users too; an existing `root` is left as
    /// it is (it may be shared). A spool shared between several user
    /// accounts is not supported.
    pub fn open(root: impl Into<PathBuf>) -> Result<DirSpool, Error> {
        let root = root.into();
        for dir in SUBDIRS.map(|sub| root.join(sub)) {
            crate::fsutil::create_private_dir(&dir)
                .map_err(|e| io(format!("cannot create {}", dir.display()), e))?;
            crate::fsutil::make_private_dir(&dir).map_err(|e| {
                io(
                    format!("cannot make {} private to its owner (chmod 700)", dir.display()),
                    e,
                )
            })?;
        }
        Ok(DirSpool { root })
    }

    fn path(&self, area: Area, id: &DraftId) -> PathBuf {
        self.root.join(area.dir()).join(format!("{}.{EXT}", id.0))
    }

    /// Writes a draft's file in its area, atomically and durably; in the
    /// drafts area the file's modification time is its next attempt time.
    fn save(&self, info: &DraftInfo, content: &[u8]) -> Result<(), Error> {
        let tmp = self.root.join("tmp").join(format!(
            "{}.{:016x}.tmp",
            std::process::id(),
            crate::rand::random_u64()
        ));
        let due = (info.area == Area::Drafts).then(|| whole_millis(info.next_attempt));
        crate::fsutil::write_atomic(
            &tmp,
            &self.path(info.area, &info.id),
            &encode_draft(info, content),
            due,
        )
        .map_err(|e| io(format!("{} {}", e.step, e.path.display()), e.error))
    }

    /// Saves a message as a draft, due now. Returns its id only once it is
    /// on disk; on any error (disk full, directory not writable …) nothing is
    /// queued and the error says so.
    pub fn enqueue(&self, message: &Message) -> Result<DraftId, Error> {
        message.envelope().validate()?;
        let now = SystemTime::now();
        let id = DraftId(format!("{:013x}-{:016x}", millis(now), crate::rand::random_u64()));
        let info = DraftInfo {
            id: id.clone(),
            area: Area::Drafts,
            envelope: message.envelope().clone(),
            size: message.content().len() as u64,
            created: now,
            attempts: 0,
            next_attempt: now,
            last_error: None,
            possibly_delivered: false,
        };
        self.save(&info, message.content())?;
        Ok(id)
    }

    fn read(&self, area: Area, id: &DraftId, with_content: bool) -> Result<(DraftInfo, Vec<u8>), Error> {
        let path = self.path(area, id);
        let mut raw = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut raw))
            .map_err(|e| io(format!("cannot read draft {id}"), e))?;
        match decode_draft(id.clone(), area, &raw, with_content) {
            Some(d) => Ok(d),
            None => {
                let moved = self.quarantine(&path);
                Err(Error::new(
                    Kind::Config,
                    None,
                    format!("draft {id} is corrupt; moved to {}", moved.display()),
                ))
            }
        }
    }

    /// A draft's info (envelope, size, attempts, last error).
    pub fn inspect(&self, area: Area, id: &DraftId) -> Result<DraftInfo, Error> {
        self.read(area, id, false).map(|(info, _)| info)
    }

    /// A draft's message, ready to send.
    pub fn message(&self, area: Area, id: &DraftId) -> Result<Message, Error> {
        let (info, content) = self.read(area, id, true)?;
        Ok(Message::new(info.envelope, content))
    }

    fn quarantine(&self, path: &Path) -> PathBuf {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = self
            .root
            .join("corrupt")
            .join(format!("{name}.{:08x}", crate::rand::random_u64() as u32));
        match fs::rename(path, &target) {
            Ok(()) => target,
            Err(_) => path.to_owned(),
        }
    }

    /// Up to `limit` drafts of `area` after `after` (ids sort by creation),
    /// read straight from the directory: memory follows `limit`, not the
    /// size of the spool. Unreadable files are quarantined and reported.
    pub fn list(&self, area: Area, after: Option<&DraftId>, limit: usize) -> Result<Page, Error> {
        let dir = self.root.join(area.dir());
        let entries = fs::read_dir(&dir).map_err(|e| io(format!("cannot list {}", dir.display()), e))?;
        // Keep only the `limit` smallest ids above `after` (a bounded max-heap).
        let mut best: std::collections::BinaryHeap<DraftId> = std::collections::BinaryHeap::new();
        let mut quarantined = Vec::new();
        for entry in entries.flatten() {
            let Some(id) = draft_id(&entry.file_name()) else {
                quarantined.push(self.quarantine(&entry.path()));
                continue;
            };
            if after.is_some_and(|a| &id <= a) {
                continue;
            }
            if best.len() < limit {
                best.push(id);
            } else if best.peek().is_some_and(|top| &id < top) {
                best.pop();
                best.push(id);
            }
        }
        let mut ids = best.into_sorted_vec();
        let next = (ids.len() == limit && limit > 0).then(|| ids[ids.len() - 1].clone());
        let mut drafts = Vec::with_capacity(ids.len());
        for id in ids.drain(..) {
            match self.read(area, &id, false) {
                Ok((info, _)) => drafts.push(info),
                Err(e) if e.is_config() => quarantined.push(self.root.join("corrupt")),
                Err(_) => {} // removed meanwhile (delivered, deleted)
            }
        }
        Ok(Page {
            drafts,
            next,
            quarantined,
        })
    }

    /// Claims up to `max` drafts due at `now` for delivery: each is locked
    /// (an advisory lock on its file, released by the kernel if this process
    /// dies), so two processes — or two mailers — on the same spool never
    /// deliver the same draft at once. A draft locked elsewhere is skipped.
    pub fn claim_due(&self, now: SystemTime, max: usize) -> Result<Vec<Claim>, Error> {
        let dir = self.root.join(Area::Drafts.dir());
        let entries = fs::read_dir(&dir).map_err(|e| io(format!("cannot list {}", dir.display()), e))?;
        let mut claims = Vec::new();
        for entry in entries.flatten() {
            if claims.len() >= max {
                break;
            }
            let Some(id) = draft_id(&entry.file_name()) else {
                continue;
            };
            if waits_until(&entry, now).is_some() {
                continue; // not due: known without reading it
            }
            let path = entry.path();
            let Ok(mut file) = OpenOptions::new().read(true).write(true).open(&path) else {
                continue; // delivered or deleted meanwhile
            };
            if file.try_lock().is_err() {
                continue; // another process or mailer has it
            }
            // Locked — but the file may have been replaced or removed since
            // it was opened (delivered by the previous holder).
            if !still_at(&file, &path) {
                continue;
            }
            let mut raw = Vec::new();
            if file.read_to_end(&mut raw).is_err() {
                continue;
            }
            match decode_draft(id.clone(), Area::Drafts, &raw, true) {
                Some((info, content)) if info.next_attempt <= now => {
                    claims.push(Claim::new(info, content, file))
                }
                Some((info, _)) => {
                    // Written by something that did not set the time (an
                    // older version, a copy): set it, so later polls skip
                    // this draft without reading it.
                    let _ = file.set_modified(whole_millis(info.next_attempt));
                }
                None => {
                    drop(file);
                    self.quarantine(&path);
                }
            }
        }
        Ok(claims)
    }

    /// The earliest next attempt among the drafts (`None`: no draft).
    pub fn next_due(&self) -> Result<Option<SystemTime>, Error> {
        let dir = self.root.join(Area::Drafts.dir());
        let entries = fs::read_dir(&dir).map_err(|e| io(format!("cannot list {}", dir.display()), e))?;
        let now = SystemTime::now();
        let mut earliest: Option<SystemTime> = None;
        for entry in entries.flatten() {
            let Some(id) = draft_id(&entry.file_name()) else {
                continue;
            };
            let next = match waits_until(&entry, now) {
                Some(t) => t,
                None => match self.read(Area::Drafts, &id, false) {
                    Ok((info, _)) => info.next_attempt,
                    Err(_) => continue,
                },
            };
            earliest = Some(earliest.map_or(next, |e| e.min(next)));
        }
        Ok(earliest)
    }

    /// A delivered draft leaves the spool.
    pub fn complete(&self, claim: Claim) -> Result<(), Error> {
        let id = claim.info.id.clone();
        let result = self.remove(Area::Drafts, &id);
        drop(claim);
        result
    }

    /// Rewrites a claimed draft for a later attempt, keeping only
    /// `recipients` when given (the others were delivered).
    pub fn defer_claim(
        &self,
        claim: Claim,
        error: &str,
        next_attempt: SystemTime,
        recipients: Option<Vec<Recipient>>,
    ) -> Result<(), Error> {
        let mut info = claim.info.clone();
        info.area = Area::Drafts;
        info.attempts += 1;
        info.last_error = Some(one_line(error));
        info.next_attempt = next_attempt;
        if let Some(r) = recipients {
            info.envelope.recipients = r;
        }
        let result = self.save(&info, &claim.content);
        drop(claim);
        result
    }

    /// Moves a claimed draft to the failed area with the reason.
    pub fn fail_claim(&self, claim: Claim, reason: &str) -> Result<(), Error> {
        let mut info = claim.info.clone();
        info.attempts += 1;
        info.last_error = Some(one_line(reason));
        info.area = Area::Failed;
        self.save(&info, &claim.content)?;
        let result = self.remove(Area::Drafts, &info.id);
        drop(claim);
        result
    }

    /// Locks a draft's file, waiting while a deliverer holds it, and checks
    /// that the path still names the locked file (a deliverer replaces the
    /// file when it records an attempt).
    fn lock_draft(&self, area: Area, id: &DraftId) -> Result<File, Error> {
        let path = self.path(area, id);
        for _ in 0..16 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io(format!("cannot open draft {id}"), e))?;
            file.lock()
                .map_err(|e| io(format!("cannot lock draft {id}"), e))?;
            if still_at(&file, &path) {
                return Ok(file);
            }
            if let Err(e) = fs::metadata(&path) {
                return Err(io(format!("draft {id} is gone"), e));
            }
        }
        Err(Error::new(
            Kind::Io,
            None,
            format!("draft {id} keeps changing; try again"),
        ))
    }

    /// Deletes a draft (waiting for a delivery attempt in progress).
    pub fn delete(&self, area: Area, id: &DraftId) -> Result<(), Error> {
        let _lock = self.lock_draft(area, id)?;
        self.remove(area, id)
    }

    fn remove(&self, area: Area, id: &DraftId) -> Result<(), Error> {
        let path = self.path(area, id);
        fs::remove_file(&path).map_err(|e| io(format!("cannot delete draft {id}"), e))?;
        sync_dir(path.parent().unwrap_or(&self.root))
    }

    /// Makes a draft due now (after the administrator fixed the settings);
    /// from the failed area it goes back to the drafts. Waits for a delivery
    /// attempt in progress on it, then makes the result due now.
    pub fn retry_now(&self, area: Area, id: &DraftId) -> Result<(), Error> {
        let _lock = self.lock_draft(area, id)?;
        let (mut info, content) = self.read(area, id, true)?;
        info.next_attempt = SystemTime::now();
        info.area = Area::Drafts;
        self.save(&info, &content)?;
        if area == Area::Failed {
            self.remove(Area::Failed, id)?;
        }
        Ok(())
    }

    /// A draft locked as a [`Claim`], waiting for a delivery attempt in
    /// progress on it.
    fn claim_waiting(&self, area: Area, id: &DraftId) -> Result<Claim, Error> {
        let lock = self.lock_draft(area, id)?;
        let (info, content) = self.read(area, id, true)?;
        Ok(Claim::new(info, content, lock))
    }

    /// Records a failed attempt: attempts + 1, the error, the next attempt time.
    pub fn defer(&self, id: &DraftId, error: &str, next_attempt: SystemTime) -> Result<(), Error> {
        self.defer_claim(self.claim_waiting(Area::Drafts, id)?, error, next_attempt, None)
    }

    /// Moves a draft to the failed area with the reason.
    pub fn fail(&self, id: &DraftId, reason: &str) -> Result<(), Error> {
        self.fail_claim(self.claim_waiting(Area::Drafts, id)?, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(name: &str) -> (DirSpool, PathBuf) {
        let dir = std::env::temp_dir().join(format!("relaymail-spool-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        (DirSpool::open(&dir).expect("spool"), dir)
    }

    fn message(i: usize) -> Message {
        Message::new(
            Envelope {
                from: "app@example.com".into(),
                recipients: vec![Recipient::new(format!("user{i}@example.net"))],
                ..Envelope::default()
            },
            format!("Subject: {i}\r\n\r\nbody {i}\n\n.\n").into_bytes(),
        )
    }

    #[test]
    fn enqueue_inspect_message_defer_fail_retry_delete() {
        let (s, dir) = spool("cycle");
        let id = s.enqueue(&message(1)).expect("queued");
        let info = s.inspect(Area::Drafts, &id).expect("inspect");
        assert_eq!((info.attempts, info.size), (0, message(1).content().len() as u64));
        assert_eq!(
            s.message(Area::Drafts, &id).expect("message").content(),
            message(1).content()
        );
        let later = SystemTime::now() + Duration::from_secs(60);
        s.defer(&id, "421 4.3.2 try later\r\nX-Injected: no", later)
            .expect("defer");
        let info = s.inspect(Area::Drafts, &id).expect("inspect");
        assert_eq!(info.attempts, 1);
        assert_eq!(
            info.last_error.as_deref(),
            Some("421 4.3.2 try later  X-Injected: no")
        );
        assert_eq!(millis(info.next_attempt), millis(later));
        s.fail(&id, "550 5.1.1 no such user").expect("fail");
        assert!(s.inspect(Area::Drafts, &id).is_err());
        assert_eq!(s.inspect(Area::Failed, &id).expect("failed").attempts, 2);
        s.retry_now(Area::Failed, &id).expect("retry");
        assert!(s.inspect(Area::Drafts, &id).is_ok() && s.inspect(Area::Failed, &id).is_err());
        s.delete(Area::Drafts, &id).expect("delete");
        assert!(s.list(Area::Drafts, None, 10).expect("list").drafts.is_empty());
        let _ = fs::remove_dir_all(dir);
    }

    fn mtime(s: &DirSpool, id: &DraftId) -> SystemTime {
        fs::metadata(s.path(Area::Drafts, id))
            .and_then(|m| m.modified())
            .expect("mtime")
    }

    #[test]
    fn a_waiting_draft_is_skipped_by_its_file_time_and_a_lost_time_is_repaired() {
        let (s, dir) = spool("mtime");
        let now = SystemTime::now();
        let later = now + Duration::from_secs(3600);
        let waiting = s.enqueue(&message(1)).expect("queued");
        s.defer(&waiting, "421 try later", later).expect("defer");
        assert_eq!(mtime(&s, &waiting), whole_millis(later));
        assert_eq!(s.next_due().expect("next"), Some(whole_millis(later)));

        // The file time decides before anything is read: a waiting draft
        // is not opened (were it read, this damage would be quarantined).
        let path = s.path(Area::Drafts, &waiting);
        let original = fs::read(&path).expect("read");
        fs::write(&path, b"damaged").expect("damage");
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(later))
            .expect("time");
        assert!(s.claim_due(now, 10).expect("claim").is_empty());
        assert!(path.exists(), "not read, so not moved aside");

        // A copied or restored spool loses the times: the header decides,
        // and the first poll puts the time back.
        fs::write(&path, &original).expect("restore");
        assert!(mtime(&s, &waiting) <= SystemTime::now());
        assert_eq!(s.next_due().expect("next"), Some(whole_millis(later)));
        assert!(s.claim_due(SystemTime::now(), 10).expect("claim").is_empty());
        assert_eq!(mtime(&s, &waiting), whole_millis(later));

        // Retry now makes it due at once, by its time as well.
        s.retry_now(Area::Drafts, &waiting).expect("retry");
        assert!(mtime(&s, &waiting) <= SystemTime::now());
        let claims = s.claim_due(SystemTime::now(), 10).expect("claim");
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].info().id, waiting);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn listing_is_paged_in_creation_order() {
        let (s, dir) = spool("pages");
        let ids: Vec<DraftId> = (0..25).map(|i| s.enqueue(&message(i)).expect("queued")).collect();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s.list(Area::Drafts, after.as_ref(), 10).expect("page");
            assert!(page.drafts.len() <= 10);
            seen.extend(page.drafts.iter().map(|d| d.id.clone()));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(seen, sorted);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn corrupt_and_truncated_files_are_moved_aside() {
        let (s, dir) = spool("corrupt");
        let good = s.enqueue(&message(1)).expect("queued");
        let bad = s.enqueue(&message(2)).expect("queued");
        let path = s.path(Area::Drafts, &bad);
        let raw = fs::read(&path).expect("read");
        fs::write(&path, &raw[..raw.len() - 3]).expect("truncate");
        fs::write(dir.join("drafts").join("junk.txt"), b"not a draft").expect("junk");
        let page = s.list(Area::Drafts, None, 10).expect("list");
        assert_eq!(
            page.drafts.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
            vec![good]
        );
        assert_eq!(page.quarantined.len(), 2, "{:?}", page.quarantined);
        assert_eq!(fs::read_dir(dir.join("corrupt")).expect("dir").count(), 2);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn damaged_headers_are_refused() {
        let id = DraftId::parse("019abc0000000-0123456789abcdef").expect("id");
        let good = encode_draft(
            &DraftInfo {
                id: id.clone(),
                area: Area::Drafts,
                envelope: message(1).envelope().clone(),
                size: 4,
                created: UNIX_EPOCH,
                attempts: 0,
                next_attempt: UNIX_EPOCH,
                last_error: None,
                possibly_delivered: false,
            },
            b"body",
        );
        assert!(decode_draft(id.clone(), Area::Drafts, &good, true).is_some());
        let text = String::from_utf8(good).expect("utf-8");
        for bad in [
            text.replace("from ", "from x\nfrom "),          // a field twice
            text.replace("size 4", "size 5"),                // truncated
            text.replace("draft 2", "draft 3"),              // a newer format
            text.replace("attempts 0", "attempts 0\nbcc x"), // unknown field
            text.replace("attempts 0", "attempts 0\nrequiretls yes"),
            text.replace("example.net", "example.net notify=SOMETIMES"),
            text.replace("example.net", "example%2.net"),
            text.replace("example.net", "example.net%0D%0AX: y"),
        ] {
            assert_eq!(
                decode_draft(id.clone(), Area::Drafts, bad.as_bytes(), true),
                None,
                "{bad}"
            );
        }
    }

    mod roundtrip {
        use super::super::*;
        use crate::proto::command::{BodyType, DsnReturn, MailParams, Notify, RcptParams};
        use proptest::prelude::*;

        fn local_part() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(\\.[a-zA-Z0-9%+_-]{1,8}){0,2}",
                // Quoted: spaces, '%' and escaped quotes are kept.
                "\"[a-z %@.,]{1,10}(\\\\\"[a-z]{0,3})?\"",
                "[a-zé日本]{1,6}",
            ]
        }

        fn domain() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9]{1,10}(\\.[a-z0-9]([a-z0-9-]{0,5}[a-z0-9])?){0,3}\\.[a-z]{2,6}",
                Just("[127.0.0.1]".to_owned()),
                Just("例え.テスト".to_owned()),
            ]
        }

        fn address() -> impl Strategy<Value = String> {
            (local_part(), domain()).prop_map(|(l, d)| format!("{l}@{d}"))
        }

        /// Printable text (ENVID, ORCPT): no control bytes, as the
        /// protocol requires; spaces, '%', '+', '=' and UTF-8 included.
        fn text(max: usize) -> impl Strategy<Value = String> {
            proptest::string::string_regex(&format!("[ -~é<>%+=]{{1,{max}}}")).expect("regex")
        }

        fn notify() -> impl Strategy<Value = Notify> {
            prop_oneof![
                Just(Notify::Never),
                (any::<bool>(), any::<bool>(), any::<bool>())
                    .prop_filter("at least one condition", |(s, f, d)| *s || *f || *d)
                    .prop_map(|(success, failure, delay)| Notify::On {
                        success,
                        failure,
                        delay
                    }),
            ]
        }

        fn recipient() -> impl Strategy<Value = Recipient> {
            (
                address(),
                proptest::option::of(notify()),
                proptest::option::of(text(60)),
            )
                .prop_map(|(address, notify, orcpt)| Recipient {
                    address,
                    params: RcptParams { notify, orcpt },
                })
        }

        fn mail_params() -> impl Strategy<Value = MailParams> {
            (
                proptest::option::of(any::<u64>()),
                proptest::option::of(prop_oneof![
                    Just(BodyType::SevenBit),
                    Just(BodyType::EightBitMime),
                    Just(BodyType::BinaryMime)
                ]),
                any::<bool>(),
                proptest::option::of(prop_oneof![Just(DsnReturn::Full), Just(DsnReturn::Headers)]),
                // xtext triples non-ASCII bytes on the wire: 12 characters stay under 100 bytes.
                proptest::option::of(text(12)),
                any::<bool>(),
            )
                .prop_map(|(size, body, smtputf8, ret, envid, requiretls)| MailParams {
                    size,
                    body,
                    smtputf8,
                    ret,
                    envid,
                    requiretls,
                })
        }

        /// A time the header stores exactly: whole milliseconds.
        fn time() -> impl Strategy<Value = SystemTime> {
            (0u64..8_000_000_000_000).prop_map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn every_draft_info_round_trips(
                from in prop_oneof![Just(String::new()), address()],
                params in mail_params(),
                recipients in proptest::collection::vec(recipient(), 1..4),
                content in proptest::collection::vec(any::<u8>(), 0..64),
                created in time(),
                next_attempt in time(),
                attempts in any::<u32>(),
                // Any text: line breaks and controls included.
                last_error in proptest::option::of("(.|\r|\n|\u{0}){0,40}"),
                failed in any::<bool>(),
                possibly_delivered in any::<bool>(),
            ) {
                let envelope = Envelope { from, params, recipients };
                prop_assert!(envelope.validate().is_ok(), "{:?}: {:?}", envelope, envelope.validate());
                let info = DraftInfo {
                    id: DraftId::parse("019abc0000000-0123456789abcdef").expect("id"),
                    area: if failed { Area::Failed } else { Area::Drafts },
                    envelope,
                    size: content.len() as u64,
                    created,
                    attempts,
                    next_attempt,
                    last_error,
                    possibly_delivered,
                };
                let raw = encode_draft(&info, &content);
                let decoded = decode_draft(info.id.clone(), info.area, &raw, true);
                prop_assert_eq!(decoded, Some((info.clone(), content)));
                let (header_only, _) = decode_draft(info.id.clone(), info.area, &raw, false).expect("reads");
                prop_assert_eq!(header_only, info);
            }
        }
    }

    #[test]
    fn unwritable_spool_refuses_to_queue() {
        let (s, dir) = spool("readonly");
        // Where the temporary file must go there is a plain file: every
        // create fails, as on a read-only or broken spool (and unlike a
        // permission bit, this also holds for root).
        fs::remove_dir_all(dir.join("tmp")).expect("rm");
        fs::write(dir.join("tmp"), b"in the way").expect("file");
        let e = s.enqueue(&message(1)).expect_err("not writable");
        assert!(e.is_io() && e.to_string().contains("cannot create"), "{e}");
        assert!(
            s.list(Area::Drafts, None, 10).expect("list").drafts.is_empty(),
            "nothing queued"
        );
        let _ = fs::remove_dir_all(dir);
    }
}

/// When drafts are tried again, and when they give up.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxPolicy {
    /// The wait after the first failed attempt. Default 30 s.
    pub initial_backoff: Duration,
    /// The longest wait between attempts. Default 1 hour.
    pub max_backoff: Duration,
    /// A draft older than this goes to the failed area after its next
    /// failure. Default 3 days.
    pub max_age: Duration,
    /// How often the spool is looked at when nothing wakes the deliverer.
    /// Default 5 s.
    pub poll_interval: Duration,
    /// Drafts claimed at a time. Default 64.
    pub batch: usize,
}

impl Default for OutboxPolicy {
    fn default() -> Self {
        OutboxPolicy {
            initial_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
            max_age: Duration::from_secs(3 * 24 * 3600),
            poll_interval: Duration::from_secs(5),
            batch: 64,
        }
    }
}

impl OutboxPolicy {
    /// When a draft that has failed `attempts` times (≥ 1) is due again, for
    /// a failure at `now`: `initial_backoff × 2^(attempts-1)`, capped at
    /// `max_backoff`, scaled by `0.5 + unit` (jitter; `unit` in [0, 1)).
    pub fn next_attempt(&self, attempts: u32, now: SystemTime, unit: f64) -> SystemTime {
        let exp = 2f64.powi(attempts.saturating_sub(1).min(40) as i32);
        let base = (self.initial_backoff.as_secs_f64() * exp).min(self.max_backoff.as_secs_f64());
        now + Duration::from_secs_f64(base * (0.5 + unit.clamp(0.0, 1.0)))
    }

    /// Whether a draft created at `created` is too old at `now`.
    pub fn too_old(&self, created: SystemTime, now: SystemTime) -> bool {
        now.duration_since(created).unwrap_or_default() > self.max_age
    }
}

/// What happens to a draft after an attempt ended with `result`.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Delivered to every recipient that will ever take it: remove.
    Done,
    /// Try again later, for these recipients only when given.
    Defer(String, Option<Vec<Recipient>>),
    /// Give up: move to the failed area.
    Fail(String),
    /// Not attempted (the mailer is stopping): leave it as it is.
    Release,
}

pub(crate) fn verdict(result: &Result<crate::mailer::Receipt, Error>) -> Verdict {
    match result {
        Ok(receipt) => {
            let again: Vec<Recipient> = receipt
                .recipients()
                .iter()
                .filter(|r| r.reply.as_ref().is_some_and(|rep| rep.is_transient()))
                .map(|r| Recipient::new(r.address.clone()))
                .collect();
            if again.is_empty() {
                Verdict::Done
            } else {
                let why = receipt
                    .refused()
                    .find_map(|(_, r)| r.map(ToString::to_string))
                    .unwrap_or_else(|| "some recipients deferred".into());
                Verdict::Defer(why, Some(again))
            }
        }
        Err(e) => error_verdict(e),
    }
}

/// What happens to a draft whose attempt failed with `e`.
pub(crate) fn error_verdict(e: &Error) -> Verdict {
    if e.is_shutdown() {
        Verdict::Release
    } else if (e.is_rejected() && e.is_permanent()) || e.is_too_large() || e.is_unsupported() {
        // Refused for good, or impossible as it is: no retry will help.
        Verdict::Fail(e.to_string())
    } else {
        // Offline relay, timeouts, 4yz, and invalid settings (TLS, AUTH,
        // configuration): the administrator may fix them; keep the draft.
        Verdict::Defer(e.to_string(), None)
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn back_off_schedule_with_a_controlled_clock() {
        let p = OutboxPolicy {
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(100),
            ..OutboxPolicy::default()
        };
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let waits: Vec<u64> = (1..=6)
            .map(|a| {
                p.next_attempt(a, t0, 0.5)
                    .duration_since(t0)
                    .expect("later")
                    .as_secs()
            })
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 100, 100]);
        assert_eq!(
            p.next_attempt(1, t0, 0.0).duration_since(t0).expect("later"),
            Duration::from_secs(5)
        );
        assert!(p.next_attempt(1, t0, 0.999).duration_since(t0).expect("later") < Duration::from_secs(15));
        assert!(!p.too_old(t0, t0 + p.max_age));
        assert!(p.too_old(t0, t0 + p.max_age + Duration::from_secs(1)));
    }
}
