//! Delivery without a network, for development and for your own tests.
//!
//! A [`Destination`] in the settings decides where a [`Mailer`] delivers:
//! the SMTP relay (the default), a directory of `.eml` files, or an
//! in-memory inbox. Everything above the delivery works unchanged with all
//! three: composing, redirect, the pool and its limits, retries and the
//! outbox. Only the last step differs: instead of an SMTP transaction, the
//! message is written or recorded, and the [`Receipt`] says every recipient
//! was accepted with a `250` reply naming where it went.
//!
//! | destination | settings | URL | stored settings |
//! |---|---|---|---|
//! | SMTP relay | the default | `smtp://…`, `smtps://…` | no `destination` |
//! | files | [`Destination::file`] | `file:///var/mail/dev?from=app@example.com` | `"destination": "file:///var/mail/dev"` |
//! | memory | [`Destination::memory`] | `memory://signup-tests?from=app@example.com` | `"destination": "memory://signup-tests"` |
//!
//! With a file or memory destination, the host and port are never
//! contacted (the host defaults to `localhost`), and credentials are never
//! used.
//!
//! **Files**: each message becomes `{id}.eml` (the message bytes as handed
//! to the relay) and `{id}.json`, its envelope:
//! `{"id":"…","from":"…","to":["…"]}` (`from` is `""` for the null reverse
//! path). Both are written atomically (a temporary file renamed into
//! place), private to their owner (0600; the directory 0700 when it is
//! created), the `.json` first, so a watcher that sees an `.eml` finds its
//! envelope. IDs sort by time.
//!
//! **Memory**: [`MemoryInbox::named`] gives the process-wide inbox of that
//! name, the same one a `memory://name` URL or stored profile refers to, so
//! a test can read back what the application under test sent:
//!
//! ```
//! use relaymail::dev::{Destination, MemoryInbox};
//! use relaymail::{Email, Mailer, SmtpSettings};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = SmtpSettings::from_url("memory://doc-signup?from=app@example.com")?;
//! let mailer = Mailer::builder(settings).build()?;
//! mailer
//!     .send_email(Email::new().to("ana@example.net").subject("Welcome").text("Hi Ana"))
//!     .await?;
//! let inbox = MemoryInbox::named("doc-signup");
//! let sent = inbox.messages();
//! assert_eq!(sent.len(), 1);
//! assert_eq!(sent[0].to(), ["ana@example.net"]);
//! assert!(sent[0].text().contains("Subject: Welcome"));
//! # Ok(())
//! # }
//! ```
//!
//! [`Mailer`]: crate::Mailer
//! [`Receipt`]: crate::Receipt

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Kind};
use crate::proto::reply::{Reply, ReplyCode};
use crate::proto::session::{Envelope, RecipientReply, TxId};
use crate::transport::Delivery;

/// Where a [`Mailer`](crate::Mailer) delivers. See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// The SMTP relay the settings name (the default).
    #[default]
    Relay,
    /// Each message is written to this directory as `.eml` and `.json`.
    File(PathBuf),
    /// Each message is recorded in this inbox.
    Memory(MemoryInbox),
}

impl Destination {
    /// Files in `dir` (created, private to its owner, when missing).
    pub fn file(dir: impl Into<PathBuf>) -> Destination {
        Destination::File(dir.into())
    }

    /// The process-wide in-memory inbox `name` (see [`MemoryInbox::named`]).
    pub fn memory(name: &str) -> Destination {
        Destination::Memory(MemoryInbox::named(name))
    }

    /// Whether messages go to an SMTP relay.
    pub fn is_relay(&self) -> bool {
        matches!(self, Destination::Relay)
    }

    /// The URL form (`file:///dir`, `memory://name`); `None` for the relay,
    /// whose URL is the settings' own.
    pub fn url(&self) -> Option<String> {
        match self {
            Destination::Relay => None,
            Destination::File(dir) => Some(format!("file://{}", dir.display())),
            Destination::Memory(inbox) => Some(format!("memory://{}", inbox.name())),
        }
    }

    /// Reads the URL form: `file:///absolute/dir` or `memory://name`.
    pub fn from_url(url: &str) -> Result<Destination, String> {
        if let Some(path) = url.strip_prefix("file://") {
            let dir = Path::new(path);
            if !dir.is_absolute() {
                return Err(format!(
                    "{path:?} is not an absolute path: write file:///absolute/dir"
                ));
            }
            if path.chars().any(char::is_control) {
                return Err("the path contains a control character".into());
            }
            Ok(Destination::File(dir.to_owned()))
        } else if let Some(name) = url.strip_prefix("memory://") {
            check_inbox_name(name)?;
            Ok(Destination::memory(name))
        } else {
            Err("use file:///dir or memory://name".into())
        }
    }
}

fn check_inbox_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err("an inbox name has 1 to 100 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{:?} is not an inbox name: use letters, digits, '-', '_' and '.'",
            crate::proto::reply::Escaped(name)
        ));
    }
    Ok(())
}

/// One message a file or memory destination received.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SentMessage {
    envelope: Envelope,
    data: Arc<[u8]>,
}

impl SentMessage {
    /// The envelope as it would have gone to the relay (after redirect).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The envelope sender as it goes into MAIL FROM (`""` for the null
    /// reverse path).
    pub fn from(&self) -> String {
        self.envelope.reverse_path()
    }

    /// The envelope recipients as they go into RCPT TO, in order.
    pub fn to(&self) -> Vec<String> {
        self.envelope
            .recipients()
            .iter()
            .map(|r| r.address.to_smtp())
            .collect()
    }

    /// The message bytes (headers and body).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The message as text (invalid UTF-8 replaced), for assertions.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

struct InboxState {
    messages: Vec<SentMessage>,
}

struct InboxInner {
    name: String,
    state: Mutex<InboxState>,
    arrived: tokio::sync::Notify,
}

/// An in-memory inbox that a [`Destination::Memory`] records messages in.
/// Clones share the inbox.
#[derive(Clone)]
pub struct MemoryInbox(Arc<InboxInner>);

impl MemoryInbox {
    /// The process-wide inbox `name`, created empty on first use. A
    /// `memory://name` URL and a stored `destination` refer to it by name.
    /// A name is 1 to 100 letters, digits, `-`, `_` and `.`; any other
    /// name gives the inbox `invalid` (the URL and stored forms refuse such
    /// names with an error).
    pub fn named(name: &str) -> MemoryInbox {
        static INBOXES: OnceLock<Mutex<HashMap<String, MemoryInbox>>> = OnceLock::new();
        let name = if check_inbox_name(name).is_ok() {
            name
        } else {
            "invalid"
        };
        let mut all = INBOXES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.entry(name.to_owned())
            .or_insert_with(|| {
                MemoryInbox(Arc::new(InboxInner {
                    name: name.to_owned(),
                    state: Mutex::new(InboxState { messages: Vec::new() }),
                    arrived: tokio::sync::Notify::new(),
                }))
            })
            .clone()
    }

    /// The inbox's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    fn state(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The messages recorded so far, oldest first.
    pub fn messages(&self) -> Vec<SentMessage> {
        self.state().messages.clone()
    }

    /// Removes and returns the messages recorded so far.
    pub fn take(&self) -> Vec<SentMessage> {
        std::mem::take(&mut self.state().messages)
    }

    /// How many messages are recorded.
    pub fn len(&self) -> usize {
        self.state().messages.len()
    }

    /// Whether no message is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until at least `n` messages are recorded and returns them all,
    /// or fails with a timeout error after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<SentMessage>, Error> {
        let wait = async {
            loop {
                let arrived = self.0.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                {
                    let state = self.state();
                    if state.messages.len() >= n {
                        return state.messages.clone();
                    }
                }
                arrived.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            Error::new(
                Kind::Timeout,
                None,
                format!(
                    "memory inbox {:?} has {} of {n} messages after {timeout:?}",
                    self.name(),
                    self.len()
                ),
            )
        })
    }

    fn record(&self, message: SentMessage) {
        self.state().messages.push(message);
        self.0.arrived.notify_waiters();
    }
}

impl fmt::Debug for MemoryInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryInbox")
            .field("name", &self.name())
            .field("messages", &self.len())
            .finish()
    }
}

impl PartialEq for MemoryInbox {
    fn eq(&self, other: &MemoryInbox) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MemoryInbox {}

/// A "connection" to a file or memory destination, for the Mailer's pool.
pub(crate) struct LocalConn {
    destination: Destination,
    next: u64,
    queued: VecDeque<(TxId, Envelope, Arc<[u8]>)>,
}

impl LocalConn {
    pub(crate) fn open(destination: Destination) -> Result<LocalConn, Error> {
        if let Destination::File(dir) = &destination {
            crate::fsutil::create_private_dir(dir).map_err(|e| {
                Error::new(
                    Kind::Io,
                    Some(crate::error::Stage::Connect),
                    format!("cannot create the mail directory {}", dir.display()),
                )
                .with_source(e)
            })?;
        }
        Ok(LocalConn {
            destination,
            next: 0,
            queued: VecDeque::new(),
        })
    }

    pub(crate) fn submit(&mut self, envelope: Envelope, content: Arc<[u8]>) -> Result<TxId, Error> {
        let id = TxId::nth(self.next);
        self.next += 1;
        self.queued.push_back((id, envelope, content));
        Ok(id)
    }

    pub(crate) async fn outcome(&mut self, id: TxId) -> Result<Delivery, Error> {
        let position = self
            .queued
            .iter()
            .position(|(queued, _, _)| *queued == id)
            .ok_or_else(|| Error::config("no such transaction on this connection"))?;
        let (_, envelope, content) = self.queued.remove(position).expect("found above");
        let note = match &self.destination {
            Destination::Memory(inbox) => {
                inbox.record(SentMessage {
                    envelope: envelope.clone(),
                    data: content,
                });
                format!("2.0.0 recorded in memory inbox {}", inbox.name())
            }
            Destination::File(dir) => {
                let dir = dir.clone();
                let env = envelope.clone();
                let path = tokio::task::spawn_blocking(move || write_files(&dir, &env, &content))
                    .await
                    .map_err(|e| Error::new(Kind::Io, Some(crate::error::Stage::Data), e.to_string()))??;
                format!("2.0.0 written to {}", path.display())
            }
            Destination::Relay => return Err(Error::config("the relay is not a local destination")),
        };
        let ok = ReplyCode::new(250).expect("250 is a reply code");
        let recipients = envelope
            .recipients()
            .iter()
            .map(|r| RecipientReply {
                address: r.address.clone(),
                reply: Some(Reply::new(ok, vec!["2.1.5 OK".into()])),
            })
            .collect();
        Ok(Delivery::new(recipients, Reply::new(ok, vec![note])))
    }
}

/// Writes `{id}.json` then `{id}.eml` into `dir`, each atomically; returns
/// the `.eml` path.
fn write_files(dir: &Path, envelope: &Envelope, content: &[u8]) -> Result<PathBuf, Error> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let id = format!("{:013}-{:016x}", now.as_millis(), crate::rand::random_u64());
    let mut json = format!(
        "{{\"id\":{},\"from\":{},\"to\":[",
        json_string(&id),
        json_string(&envelope.reverse_path())
    );
    for (i, r) in envelope.recipients().iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&json_string(&r.address.to_smtp()));
    }
    json.push_str("]}\n");
    let eml = dir.join(format!("{id}.eml"));
    for (path, bytes) in [
        (dir.join(format!("{id}.json")), json.as_bytes()),
        (eml.clone(), content),
    ] {
        let tmp = dir.join(format!(".{id}.tmp"));
        crate::fsutil::write_atomic(&tmp, &path, bytes, None).map_err(|e| {
            Error::new(
                Kind::Io,
                Some(crate::error::Stage::Data),
                format!("{} {}", e.step, e.path.display()),
            )
            .with_source(e.error)
        })?;
    }
    Ok(eml)
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_what_json_needs() {
        assert_eq!(json_string("a\"b\\c\nd"), "\"a\\\"b\\\\c\\u000ad\"");
        assert_eq!(json_string("josé"), "\"josé\"");
    }

    #[test]
    fn destination_urls_round_trip_and_bad_ones_say_why() {
        for url in ["file:///var/mail/dev", "memory://unit-round-trip"] {
            let d = Destination::from_url(url).expect(url);
            assert_eq!(d.url().as_deref(), Some(url));
        }
        assert!(Destination::from_url("file://relative/dir")
            .expect_err("relative")
            .contains("absolute"));
        assert!(Destination::from_url("memory://a b").is_err());
        assert!(Destination::from_url("memory://").is_err());
        assert!(Destination::from_url("file:///a\nb").is_err());
    }

    #[test]
    fn a_named_inbox_is_the_same_inbox_everywhere() {
        let a = MemoryInbox::named("unit-same");
        let b = MemoryInbox::named("unit-same");
        assert_eq!(a, b);
        assert_ne!(a, MemoryInbox::named("unit-other"));
    }
}
