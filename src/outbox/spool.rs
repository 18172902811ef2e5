//! [`DirSpool`]: the directory spool (see the [module docs](super)).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::codec::{decode_draft, encode_draft, from_millis, millis, WAITING_LINE};
use super::{Area, Claim, Deferral, DraftId, DraftInfo, Outbox, Page};
use crate::error::{Error, Kind};
use crate::future::BoxFuture;
use crate::message::Message;

const EXT: &str = "draft";
/// The spool's directories under its root.
const SUBDIRS: [&str; 4] = ["drafts", "failed", "corrupt", "tmp"];

/// The directory spool. See the [module docs](crate::outbox).
///
/// Its inherent methods block (file IO, waiting for a lock); its [`Outbox`]
/// implementation runs the same code on tokio's blocking threads.
#[derive(Clone, Debug)]
pub struct DirSpool {
    root: PathBuf,
    /// The sorted ids of the last full scan of each area, shared by clones:
    /// the pages after the first are cut from it (see [`DirSpool::list`]).
    listings: Arc<Mutex<Vec<Listing>>>,
}

/// A draft id's 30 bytes: a snapshot of 100,000 ids takes 3 MB and no
/// allocation per id; they sort as the ids do.
type IdBytes = [u8; 30];

/// A sorted snapshot of one area's draft ids.
#[derive(Debug)]
struct Listing {
    area: Area,
    ids: Arc<Vec<IdBytes>>,
    taken: std::time::Instant,
}

/// A snapshot older than this is not used: the next page scans again.
const LISTING_MAX_AGE: Duration = Duration::from_secs(60);

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

/// Whether a draft file's header (read up to the empty line that ends it,
/// not the message) has the line that says it waits on the settings.
fn header_says_waiting(file: &mut File) -> std::io::Result<bool> {
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(false);
        }
        match line.as_slice() {
            b"\n" => return Ok(false),
            l if l == WAITING_LINE.as_bytes() => return Ok(true),
            _ => {}
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    crate::fsutil::sync_dir(dir).map_err(|e| io(format!("cannot sync {}", dir.display()), e))
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
        Ok(DirSpool {
            root,
            listings: Arc::default(),
        })
    }

    fn path(&self, area: Area, id: &DraftId) -> PathBuf {
        self.root.join(area.name()).join(format!("{}.{EXT}", id.0))
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
        let info = DraftInfo::new_draft(message, SystemTime::now())?;
        self.save(&info, message.content())?;
        Ok(info.id)
    }

    fn read(&self, area: Area, id: &DraftId, with_content: bool) -> Result<(DraftInfo, Vec<u8>), Error> {
        let path = self.path(area, id);
        let mut raw = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut raw))
            .map_err(|e| io(format!("cannot read draft {id}"), e))?;
        match decode_draft(id.clone(), area, &raw, with_content) {
            Ok(d) => Ok(d),
            Err(why) => {
                let moved = self.quarantine(&path);
                Err(Error::new(
                    Kind::Config,
                    None,
                    format!("draft {id} is corrupt ({why}); moved to {}", moved.display()),
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
        let mut quarantined = Vec::new();
        // The first page scans the area and keeps its sorted ids; a later
        // page is cut from that snapshot (O(page), not O(spool)) while it is
        // fresh and still holds a whole page after the cursor. Drafts that
        // arrive meanwhile have later ids: the page that reaches the
        // snapshot's end scans again and finds them. A draft gone meanwhile
        // is skipped when read.
        let cached = after.and_then(|a| self.cached_listing(area, a, limit));
        let ids = match cached {
            Some(ids) => ids,
            None => {
                let ids = self.scan(area, &mut quarantined)?;
                self.keep_listing(area, ids.clone());
                ids
            }
        };
        let start = after.map_or(0, |a| {
            ids.partition_point(|id| id.as_slice() <= a.as_str().as_bytes())
        });
        let mut ids: Vec<DraftId> = ids[start..]
            .iter()
            .take(limit)
            .filter_map(|id| std::str::from_utf8(id).ok().and_then(DraftId::parse))
            .collect();
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

    /// Every draft id in `area`, sorted; files that are not drafts are
    /// quarantined.
    fn scan(&self, area: Area, quarantined: &mut Vec<PathBuf>) -> Result<Arc<Vec<IdBytes>>, Error> {
        let dir = self.root.join(area.name());
        let entries = fs::read_dir(&dir).map_err(|e| io(format!("cannot list {}", dir.display()), e))?;
        let mut ids = Vec::new();
        for entry in entries.flatten() {
            match draft_id(&entry.file_name()).and_then(|id| IdBytes::try_from(id.as_str().as_bytes()).ok()) {
                Some(id) => ids.push(id),
                None => quarantined.push(self.quarantine(&entry.path())),
            }
        }
        ids.sort_unstable();
        ids.shrink_to_fit();
        Ok(Arc::new(ids))
    }

    /// The fresh snapshot of `area`, when it holds `limit` ids after
    /// `after`.
    fn cached_listing(&self, area: Area, after: &DraftId, limit: usize) -> Option<Arc<Vec<IdBytes>>> {
        let listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        let l = listings.iter().find(|l| l.area == area)?;
        let fresh = l.taken.elapsed() < LISTING_MAX_AGE;
        let after = after.as_str().as_bytes();
        let left = l.ids.len() - l.ids.partition_point(|id| id.as_slice() <= after);
        (fresh && left >= limit.max(1)).then(|| l.ids.clone())
    }

    fn keep_listing(&self, area: Area, ids: Arc<Vec<IdBytes>>) {
        let mut listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        listings.retain(|l| l.area != area);
        listings.push(Listing {
            area,
            ids,
            taken: std::time::Instant::now(),
        });
    }

    /// Claims up to `max` drafts due at `now` for delivery: each is locked
    /// (an advisory lock on its file, released by the kernel if this process
    /// dies), so two processes — or two mailers — on the same spool never
    /// deliver the same draft at once. A draft locked elsewhere is skipped.
    pub fn claim_due(&self, now: SystemTime, max: usize) -> Result<Vec<Claim>, Error> {
        let dir = self.root.join(Area::Drafts.name());
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
                Ok((info, content)) if info.next_attempt <= now => {
                    claims.push(Claim::new(info, content, file))
                }
                Ok((info, _)) => {
                    // Written by something that did not set the time (an
                    // older version, a copy): set it, so later polls skip
                    // this draft without reading it.
                    let _ = file.set_modified(whole_millis(info.next_attempt));
                }
                Err(_) => {
                    drop(file);
                    self.quarantine(&path);
                }
            }
        }
        Ok(claims)
    }

    /// The earliest next attempt among the drafts (`None`: no draft).
    pub fn next_due(&self) -> Result<Option<SystemTime>, Error> {
        let dir = self.root.join(Area::Drafts.name());
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

    /// Rewrites a claimed draft for a later attempt, as `deferral` says
    /// (keeping only its recipients when given: the others were
    /// delivered).
    pub fn defer_claim(&self, claim: Claim, deferral: Deferral) -> Result<(), Error> {
        let mut info = claim.info.clone();
        deferral.apply(&mut info)?;
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
        info.waiting_on_settings = false;
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
    /// attempt in progress on it, then makes the result due now. It no
    /// longer waits on the settings.
    pub fn retry_now(&self, area: Area, id: &DraftId) -> Result<(), Error> {
        let _lock = self.lock_draft(area, id)?;
        let (mut info, content) = self.read(area, id, true)?;
        info.next_attempt = SystemTime::now();
        info.area = Area::Drafts;
        info.waiting_on_settings = false;
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

    /// Records a failed attempt as `deferral` says: attempts + 1, the
    /// error, the next attempt time, whether it waits on the settings
    /// (waiting for a delivery attempt in progress on it first).
    pub fn defer(&self, id: &DraftId, deferral: Deferral) -> Result<(), Error> {
        self.defer_claim(self.claim_waiting(Area::Drafts, id)?, deferral)
    }

    /// Makes every draft that waits on the settings
    /// ([`DraftInfo::waiting_on_settings`]) due now and clears the flag;
    /// returns how many. One pass over `drafts/`: each file's header is
    /// read up to its end (the message bytes only of the drafts it
    /// rewrites), under the draft's lock. A draft locked by a delivery
    /// attempt in progress is skipped, not waited for: the attempt records
    /// its own outcome. Unreadable files are left to
    /// [`claim_due`](Self::claim_due), which moves them aside.
    pub fn release_waiting_on_settings(&self) -> Result<usize, Error> {
        let dir = self.root.join(Area::Drafts.name());
        let entries = fs::read_dir(&dir).map_err(|e| io(format!("cannot list {}", dir.display()), e))?;
        let now = SystemTime::now();
        let mut released = 0;
        for entry in entries.flatten() {
            let Some(id) = draft_id(&entry.file_name()) else {
                continue;
            };
            let path = entry.path();
            let Ok(mut file) = OpenOptions::new().read(true).write(true).open(&path) else {
                continue; // delivered or deleted meanwhile
            };
            if file.try_lock().is_err() || !still_at(&file, &path) {
                continue; // being delivered, or just rewritten
            }
            if !header_says_waiting(&mut file).unwrap_or(false) {
                continue;
            }
            let mut raw = Vec::new();
            if file.seek(SeekFrom::Start(0)).is_err() || file.read_to_end(&mut raw).is_err() {
                continue;
            }
            let Ok((mut info, content)) = decode_draft(id, Area::Drafts, &raw, true) else {
                continue;
            };
            if !info.waiting_on_settings {
                continue;
            }
            info.waiting_on_settings = false;
            info.next_attempt = now;
            // Replaces the file while its lock is held, as an attempt's
            // outcome does.
            self.save(&info, &content)?;
            released += 1;
        }
        Ok(released)
    }

    /// Moves a draft to the failed area with the reason.
    pub fn fail(&self, id: &DraftId, reason: &str) -> Result<(), Error> {
        self.fail_claim(self.claim_waiting(Area::Drafts, id)?, reason)
    }
}

impl DirSpool {
    /// Runs `op` on a clone of this spool on tokio's blocking threads.
    fn off_thread<T: Send + 'static>(
        &self,
        op: impl FnOnce(DirSpool) -> Result<T, Error> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, Error>> {
        let spool = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || op(spool))
                .await
                .map_err(|e| Error::new(Kind::Io, None, format!("the outbox task failed: {e}")))?
        })
    }
}

/// The blocking inherent methods, run off the async threads.
impl Outbox for DirSpool {
    fn enqueue<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<DraftId, Error>> {
        let message = message.clone();
        self.off_thread(move |s| s.enqueue(&message))
    }
    fn claim_due(&self, now: SystemTime, max: usize) -> BoxFuture<'_, Result<Vec<Claim>, Error>> {
        self.off_thread(move |s| s.claim_due(now, max))
    }
    fn next_due(&self) -> BoxFuture<'_, Result<Option<SystemTime>, Error>> {
        self.off_thread(|s| s.next_due())
    }
    fn complete(&self, claim: Claim) -> BoxFuture<'_, Result<(), Error>> {
        self.off_thread(move |s| s.complete(claim))
    }
    fn defer_claim(&self, claim: Claim, deferral: Deferral) -> BoxFuture<'_, Result<(), Error>> {
        self.off_thread(move |s| s.defer_claim(claim, deferral))
    }
    fn fail_claim<'a>(&'a self, claim: Claim, reason: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        let reason = reason.to_owned();
        self.off_thread(move |s| s.fail_claim(claim, &reason))
    }
    fn list<'a>(
        &'a self,
        area: Area,
        after: Option<&'a DraftId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, Error>> {
        let after = after.cloned();
        self.off_thread(move |s| s.list(area, after.as_ref(), limit))
    }
    fn inspect<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<DraftInfo, Error>> {
        let id = id.clone();
        self.off_thread(move |s| s.inspect(area, &id))
    }
    fn retry_now<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<(), Error>> {
        let id = id.clone();
        self.off_thread(move |s| s.retry_now(area, &id))
    }
    fn delete<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<(), Error>> {
        let id = id.clone();
        self.off_thread(move |s| s.delete(area, &id))
    }
    fn read_message<'a>(&'a self, area: Area, id: &'a DraftId) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        let id = id.clone();
        self.off_thread(move |s| s.read(area, &id, true).map(|(_, content)| content))
    }
    fn release_waiting_on_settings(&self) -> BoxFuture<'_, Result<usize, Error>> {
        self.off_thread(|s| s.release_waiting_on_settings())
    }
}

#[cfg(test)]
mod tests;
