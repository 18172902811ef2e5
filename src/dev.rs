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

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::error::{Error, Kind};
use crate::proto::session::Envelope;

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
            // The text is never echoed: a mistyped SMTP URL may have put a
            // password here.
            if !dir.is_absolute() {
                return Err("the path is not absolute: write file:///absolute/dir".into());
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
        // Not echoed, like the file path.
        return Err("an inbox name has only letters, digits, '-', '_' and '.'".into());
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
    pub(crate) fn new(envelope: Envelope, data: Arc<[u8]>) -> SentMessage {
        SentMessage { envelope, data }
    }

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

    pub(crate) fn record(&self, message: SentMessage) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
