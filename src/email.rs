//! Notification emails: an [`Email`] describes what to send (people,
//! subject, bodies, attachments); a [`Composer`] turns it into a [`Message`]
//! (MIME through `mail-builder`, envelope derived, policies applied).
//!
//! ```no_run
//! # async fn demo(settings: relaymail::SmtpSettings) -> Result<(), relaymail::Error> {
//! use std::sync::Arc;
//! use relaymail::email::{Attachment, Email, FsAttachmentStore};
//! use relaymail::settings::AttachmentLimit;
//! use relaymail::Mailer;
//!
//! // Attachments over 5 MB are stored and sent as links instead: the limit
//! // is a setting (saved with a profile), the store is the application's.
//! let settings = settings
//!     .to_builder()
//!     .attachment_limit(AttachmentLimit::links_above(5_000_000))
//!     .build()?;
//! let store = FsAttachmentStore::new("/var/lib/app/attachments", "https://files.example.com/a");
//! let mailer = Mailer::builder(settings).attachment_store(Arc::new(store)).build()?;
//! let report = std::fs::read("/var/lib/app/reports/2026-11.pdf").expect("report");
//! let email = Email::new()
//!     .to(("Ana Lima", "ana@example.net"))
//!     .bcc("audit@example.com") // in the envelope, never in the headers
//!     .subject("Your November report")
//!     .text("Hello Ana,\n\nyour report is ready.")
//!     .html("<p>Hello Ana,</p><p>your report is ready.</p>")
//!     .attachment(Attachment::new("report-2026-11.pdf", "application/pdf", report));
//! let receipt = mailer.send_email(email).await?;
//! println!("{}", receipt.reply());
//! # Ok(()) }
//! ```
//!
//! # Where From and the envelope sender come from
//!
//! The settings' sender address and display name are the default `From:`
//! and the envelope sender (MAIL FROM). An email's own [`Email::from`] (from
//! a template, say) replaces the `From:` header only: the envelope sender
//! stays the settings' address — relays usually require the authenticated
//! address there — unless [`Email::envelope_from`] sets it.
//!
//! # Recipients
//!
//! The envelope goes to every To, Cc and Bcc address, each once (addresses
//! compared with the domain case-insensitively), unless
//! [`Email::envelope_to`] overrides it. Bcc addresses never appear in the
//! headers sent.
//!
//! # Header safety
//!
//! Subjects, display names, custom header values and file names are written
//! by `mail-builder` (RFC 2047 / RFC 2231 encoding where needed). Control
//! characters in them (CR, LF, …) are replaced by spaces first, so no value
//! can start a header line of its own. Custom header names must be plain
//! field names and may not replace the headers relaymail writes.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mail_builder::headers::address::Address as HeaderAddress;
use mail_builder::headers::text::Text;
use mail_builder::headers::HeaderType;
use mail_builder::MessageBuilder;

use crate::error::{Error, Kind};
use crate::future::BoxFuture;
use crate::message::Message;
use crate::proto::address::{unique_recipients, Address, AddressPolicy, Mailbox};
use crate::proto::session::Envelope;
use crate::settings::{Sender, SmtpSettings};

/// What [`Email`]'s `from`, `to`, `cc`, `bcc` and `reply_to` take: an
/// address as text (`"ana@example.net"`), a display name and an address
/// (`("Ana Lima", "ana@example.net")`), or an [`Address`] or [`Mailbox`]
/// already parsed. Text is parsed when the email is
/// [composed](Composer::compose), under the composer's [`AddressPolicy`];
/// a parsed address is used as it is.
///
/// Sealed: implemented for `&str`, `String`, `(&str, &str)`,
/// `(String, String)`, [`Address`] and [`Mailbox`].
pub trait IntoMailbox: sealed::Sealed {}

mod sealed {
    use crate::proto::address::Mailbox;

    /// A mailbox as the caller gave it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum MailboxInput {
        /// Text, parsed at compose time: display name and address.
        Text(Option<String>, String),
        /// Already parsed.
        Parsed(Mailbox),
    }

    pub trait Sealed {
        fn into_input(self) -> MailboxInput;
    }
}

use sealed::{MailboxInput, Sealed};

impl Sealed for &str {
    fn into_input(self) -> MailboxInput {
        MailboxInput::Text(None, self.to_owned())
    }
}
impl IntoMailbox for &str {}

impl Sealed for String {
    fn into_input(self) -> MailboxInput {
        MailboxInput::Text(None, self)
    }
}
impl IntoMailbox for String {}

impl Sealed for (&str, &str) {
    /// `(display name, address)`.
    fn into_input(self) -> MailboxInput {
        MailboxInput::Text(Some(self.0.to_owned()), self.1.to_owned())
    }
}
impl IntoMailbox for (&str, &str) {}

impl Sealed for (String, String) {
    /// `(display name, address)`.
    fn into_input(self) -> MailboxInput {
        MailboxInput::Text(Some(self.0), self.1)
    }
}
impl IntoMailbox for (String, String) {}

impl Sealed for Address {
    fn into_input(self) -> MailboxInput {
        MailboxInput::Parsed(Mailbox::from(self))
    }
}
impl IntoMailbox for Address {}

impl Sealed for Mailbox {
    fn into_input(self) -> MailboxInput {
        MailboxInput::Parsed(self)
    }
}
impl IntoMailbox for Mailbox {}

/// A file sent with the email: as an attachment, or inline (referenced
/// from the HTML body as `cid:…`).
#[derive(Clone, Debug)]
pub struct Attachment {
    filename: String,
    content_type: String,
    data: Arc<[u8]>,
    content_id: Option<String>,
}

impl Attachment {
    /// An attachment. `content_type` is a MIME type as RFC 2045 writes it
    /// (`application/pdf`, `text/plain; charset=utf-8`); it is checked when
    /// the email is [composed](Composer::compose), which refuses one that
    /// is not valid (a line break in it would add header lines) with a
    /// [config](Error::is_config) error naming the attachment. Control
    /// characters in `filename` become spaces.
    pub fn new(
        filename: impl Into<String>,
        content_type: impl Into<String>,
        data: impl Into<Arc<[u8]>>,
    ) -> Attachment {
        Attachment {
            filename: filename.into(),
            content_type: content_type.into(),
            data: data.into(),
            content_id: None,
        }
    }

    /// An inline part, referenced from the HTML body as `cid:{content_id}`.
    /// Inline parts are never turned into links. The content id is written
    /// as `<content_id>`: [composing](Composer::compose) refuses one with
    /// `<`, `>`, whitespace or control characters, and checks the content
    /// type as for [`Attachment::new`].
    pub fn inline(
        content_id: impl Into<String>,
        content_type: impl Into<String>,
        data: impl Into<Arc<[u8]>>,
    ) -> Attachment {
        let content_id = content_id.into();
        Attachment {
            filename: content_id.clone(),
            content_type: content_type.into(),
            data: data.into(),
            content_id: Some(content_id),
        }
    }

    /// The file name.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// The MIME type.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }
}

/// Stores an attachment somewhere reachable and returns its URL (for
/// [`AttachmentPolicy::links_above`], and a [`Mailer`](crate::Mailer)'s
/// [`attachment_store`](crate::MailerBuilder::attachment_store)).
pub trait AttachmentStore: Send + Sync {
    /// Stores the attachment; returns the URL recipients will follow.
    fn store<'a>(&'a self, attachment: &'a Attachment) -> BoxFuture<'a, Result<String, Error>>;
}

/// What happens to an attachment larger than the limit.
#[derive(Clone)]
#[non_exhaustive]
pub enum OverLimit {
    /// The email is refused with an error naming the file and the sizes.
    Refuse,
    /// The file is stored and replaced by a link in the text and HTML bodies.
    Link(Arc<dyn AttachmentStore>),
}

impl std::fmt::Debug for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OverLimit::Refuse => "Refuse",
            OverLimit::Link(_) => "Link",
        })
    }
}

/// The attachment size limit of a [`Composer`] (seed 002's "maximum
/// attachment size" and "attachments as links"), with the store for links.
/// A [`Mailer`](crate::Mailer) derives its own from the settings'
/// [`AttachmentLimit`](crate::settings::AttachmentLimit) and its
/// [attachment store](crate::MailerBuilder::attachment_store).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AttachmentPolicy {
    /// Attachments larger than this many bytes follow `over_limit`; `None`:
    /// no limit (the server's SIZE still applies).
    pub max_size: Option<u64>,
    /// What happens to them.
    pub over_limit: OverLimit,
}

impl Default for AttachmentPolicy {
    fn default() -> Self {
        AttachmentPolicy {
            max_size: None,
            over_limit: OverLimit::Refuse,
        }
    }
}

impl AttachmentPolicy {
    /// Refuse emails with an attachment over `max_size` bytes.
    pub fn refuse_above(max_size: u64) -> AttachmentPolicy {
        AttachmentPolicy {
            max_size: Some(max_size),
            over_limit: OverLimit::Refuse,
        }
    }

    /// Send attachments over `max_size` bytes as links to `store`.
    pub fn links_above(max_size: u64, store: Arc<dyn AttachmentStore>) -> AttachmentPolicy {
        AttachmentPolicy {
            max_size: Some(max_size),
            over_limit: OverLimit::Link(store),
        }
    }
}

/// What to send. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Email {
    from: Option<MailboxInput>,
    to: Vec<MailboxInput>,
    cc: Vec<MailboxInput>,
    bcc: Vec<MailboxInput>,
    reply_to: Vec<MailboxInput>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    attachments: Vec<Attachment>,
    headers: Vec<(String, String)>,
    envelope_from: Option<String>,
    envelope_to: Option<Vec<String>>,
}

impl Email {
    /// An empty email.
    pub fn new() -> Email {
        Email::default()
    }

    /// The `From:` header (default: the settings' sender and name).
    pub fn from(mut self, mailbox: impl IntoMailbox) -> Self {
        self.from = Some(mailbox.into_input());
        self
    }

    /// Adds a `To:` recipient.
    pub fn to(mut self, mailbox: impl IntoMailbox) -> Self {
        self.to.push(mailbox.into_input());
        self
    }

    /// Adds a `Cc:` recipient.
    pub fn cc(mut self, mailbox: impl IntoMailbox) -> Self {
        self.cc.push(mailbox.into_input());
        self
    }

    /// Adds a blind recipient: in the envelope, never in the headers.
    pub fn bcc(mut self, mailbox: impl IntoMailbox) -> Self {
        self.bcc.push(mailbox.into_input());
        self
    }

    /// Adds a `Reply-To:` mailbox.
    pub fn reply_to(mut self, mailbox: impl IntoMailbox) -> Self {
        self.reply_to.push(mailbox.into_input());
        self
    }

    /// The subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The plain-text body.
    pub fn text(mut self, body: impl Into<String>) -> Self {
        self.text = Some(body.into());
        self
    }

    /// The HTML body.
    pub fn html(mut self, body: impl Into<String>) -> Self {
        self.html = Some(body.into());
        self
    }

    /// Adds an attachment or inline part.
    pub fn attachment(mut self, attachment: Attachment) -> Self {
        self.attachments.push(attachment);
        self
    }

    /// Adds a custom header (e.g. `X-Campaign`). The value is encoded as
    /// needed; the name must be a plain field name and not one relaymail
    /// writes itself.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The envelope sender (MAIL FROM), instead of the settings' sender.
    pub fn envelope_from(mut self, address: impl Into<String>) -> Self {
        self.envelope_from = Some(address.into());
        self
    }

    /// The envelope recipients, instead of To + Cc + Bcc.
    pub fn envelope_to<I, S>(mut self, addresses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.envelope_to = Some(addresses.into_iter().map(Into::into).collect());
        self
    }
}

/// Turns [`Email`]s into [`Message`]s for given settings and policies.
#[derive(Clone, Debug)]
pub struct Composer {
    sender: Sender,
    addresses: AddressPolicy,
    attachments: AttachmentPolicy,
}

/// Control characters become spaces: a value stays on its header line.
/// A new Message-ID (without angle brackets) in `from`'s domain: random,
/// plus the time, so that two ids never collide.
pub(crate) fn message_id(from: &Address, now: std::time::Duration) -> String {
    let domain = from.ascii_domain();
    let domain = domain.trim_start_matches('[').trim_end_matches(']');
    format!("{:016x}.{:x}@{domain}", crate::rand::random_u64(), now.as_nanos())
}

pub(crate) fn one_line(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(
            text.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}

/// RFC 2045 `token`: printable ASCII except space and tspecials.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// The length of the RFC 822 `quoted-string` (ASCII, no control byte) that
/// `text` starts with: `"…"` with `\\` pairs; `None` when it is not one.
fn quoted_string_len(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let printable = |b: u8| b == b' ' || b.is_ascii_graphic();
    let mut i = 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => return Some(i + 1),
            b'\\' if bytes.get(i + 1).is_some_and(|&q| printable(q)) => i += 2,
            b if b != b'\\' && printable(b) => i += 1,
            _ => return None,
        }
    }
    None // not closed
}

/// Checks a MIME type as RFC 2045 writes it: `type "/" subtype *(";"
/// attribute "=" value)`, each a token, values tokens or quoted strings,
/// spaces allowed around the parameters; no control byte anywhere.
/// Returns what is wrong.
fn check_content_type(value: &str) -> Result<(), &'static str> {
    if value.chars().any(char::is_control) {
        return Err("it contains a control character (a line break would start a new header line)");
    }
    if !value.is_ascii() {
        return Err("it contains a non-ASCII character");
    }
    let (media, mut rest) = value.split_at(value.find(';').unwrap_or(value.len()));
    match media.trim_matches(' ').split_once('/') {
        Some((kind, sub)) if is_token(kind) && is_token(sub) => {}
        _ => return Err("it is not `type/subtype` (e.g. `application/pdf`)"),
    }
    while let Some(param) = rest.strip_prefix(';') {
        let param = param.trim_start_matches(' ');
        let (attribute, after) = param
            .split_once('=')
            .ok_or("a parameter is not `attribute=value`")?;
        if !is_token(attribute) {
            return Err("a parameter name is not a token");
        }
        let len = match quoted_string_len(after) {
            Some(len) => len,
            None if after.starts_with('"') => {
                return Err("a quoted parameter value is not valid or not closed")
            }
            None => {
                let len = after.find([';', ' ']).unwrap_or(after.len());
                if !is_token(&after[..len]) {
                    return Err("a parameter value is neither a token nor a quoted string");
                }
                len
            }
        };
        rest = after[len..].trim_start_matches(' ');
        if !rest.is_empty() && !rest.starts_with(';') {
            return Err("text follows a parameter value without a ';'");
        }
    }
    Ok(())
}

/// Checks an inline part's content id: written as `<id>`, it may hold no
/// bracket, whitespace or control character.
fn check_content_id(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        Err("it is empty")
    } else if value.chars().any(|c| c == '<' || c == '>') {
        Err("it contains '<' or '>' (it is written between angle brackets)")
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("it contains whitespace or a control character")
    } else {
        Ok(())
    }
}

impl Attachment {
    /// Checks what this attachment writes into its part's headers: the
    /// content type (RFC 2045) and an inline part's content id. The file
    /// name needs no check: its control characters become spaces.
    fn check(&self) -> Result<(), Error> {
        let what = match &self.content_id {
            Some(cid) => format!("inline part {cid:?}"),
            None => format!("attachment {:?}", self.filename),
        };
        check_content_type(&self.content_type).map_err(|reason| {
            Error::config(format!(
                "{what}: the content type {:?} is not valid: {reason}",
                self.content_type
            ))
        })?;
        if let Some(cid) = &self.content_id {
            check_content_id(cid)
                .map_err(|reason| Error::config(format!("{what}: the content id is not valid: {reason}")))?;
        }
        Ok(())
    }
}

fn field_error(field: &str, e: impl std::fmt::Display) -> Error {
    Error::new(Kind::Config, None, format!("{field}: {e}"))
}

/// Headers relaymail writes itself; a custom header may not replace them.
const RESERVED: [&str; 13] = [
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "sender",
    "x-relaymail-original-recipients",
];

fn human_size(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1_000_000.0)
    } else if bytes >= 1_000 {
        format!("{:.1} kB", bytes as f64 / 1_000.0)
    } else {
        format!("{bytes} bytes")
    }
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Composer {
    /// A composer for these settings (sender and display name), strict
    /// addresses and no attachment limit.
    pub fn new(settings: &SmtpSettings) -> Composer {
        Composer {
            sender: settings.sender().clone(),
            addresses: AddressPolicy::Strict,
            attachments: AttachmentPolicy::default(),
        }
    }

    /// The address policy.
    pub fn address_policy(mut self, policy: AddressPolicy) -> Self {
        self.addresses = policy;
        self
    }

    /// The attachment policy.
    pub fn attachment_policy(mut self, policy: AttachmentPolicy) -> Self {
        self.attachments = policy;
        self
    }

    fn mailbox(&self, field: &str, input: &MailboxInput) -> Result<Mailbox, Error> {
        match input {
            MailboxInput::Text(name, address) => {
                Mailbox::new(name.as_deref(), address, self.addresses).map_err(|e| field_error(field, e))
            }
            MailboxInput::Parsed(mailbox) => Ok(mailbox.clone()),
        }
    }

    fn mailboxes(&self, field: &str, specs: &[MailboxInput]) -> Result<Vec<Mailbox>, Error> {
        specs.iter().map(|s| self.mailbox(field, s)).collect()
    }

    /// Builds the message: checks every address and header, applies the
    /// attachment policy (storing large files when it says so), writes MIME
    /// with `Date` and a `Message-ID` in the sender's domain, and derives the
    /// envelope.
    pub async fn compose(&self, email: Email) -> Result<Message, Error> {
        // Valid by type: the settings builder parsed it.
        let sender = self.sender.address.clone();
        let from = match &email.from {
            Some(spec) => self.mailbox("from", spec)?,
            None => Mailbox {
                name: self.sender.name.clone(),
                address: sender.clone(),
            },
        };
        let to = self.mailboxes("to", &email.to)?;
        let cc = self.mailboxes("cc", &email.cc)?;
        let bcc = self.mailboxes("bcc", &email.bcc)?;
        let reply_to = self.mailboxes("reply-to", &email.reply_to)?;

        let envelope_from = match &email.envelope_from {
            Some(a) => Address::parse(a, self.addresses).map_err(|e| field_error("envelope sender", e))?,
            None => sender.clone(),
        };
        let recipients: Vec<Address> = match &email.envelope_to {
            Some(list) => list
                .iter()
                .map(|a| Address::parse(a, self.addresses).map_err(|e| field_error("envelope recipient", e)))
                .collect::<Result<_, _>>()?,
            None => to
                .iter()
                .chain(&cc)
                .chain(&bcc)
                .map(|m| m.address.clone())
                .collect(),
        };
        let rcpt = unique_recipients(&recipients);
        if rcpt.is_empty() {
            return Err(Error::config(
                "the email has no recipient (To, Cc, Bcc or envelope_to)",
            ));
        }

        let mut headers = Vec::new();
        for (name, value) in &email.headers {
            let valid = !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
            if !valid {
                return Err(Error::config(format!(
                    "custom header {name:?}: not a valid header field name"
                )));
            }
            if RESERVED.contains(&name.to_ascii_lowercase().as_str())
                || name.to_ascii_lowercase().starts_with("content-")
            {
                return Err(Error::config(format!(
                    "custom header {name:?}: relaymail writes this header itself"
                )));
            }
            headers.push((name.clone(), one_line(value).into_owned()));
        }

        // Nothing an attachment carries may add a header line.
        for a in &email.attachments {
            a.check()?;
        }
        // Attachments over the limit: refused, or stored and linked.
        let mut kept = Vec::new();
        let mut links: Vec<(String, u64, String)> = Vec::new();
        for a in email.attachments {
            let over = a.content_id.is_none() && self.attachments.max_size.is_some_and(|max| a.size() > max);
            if !over {
                kept.push(a);
                continue;
            }
            let max = self.attachments.max_size.unwrap_or_default();
            match &self.attachments.over_limit {
                OverLimit::Refuse => {
                    return Err(Error::new(
                        Kind::TooLarge,
                        None,
                        format!(
                            "the attachment {:?} is {} ({} bytes); the limit is {} ({max} bytes)",
                            a.filename,
                            human_size(a.size()),
                            a.size(),
                            human_size(max)
                        ),
                    )
                    .with_hint("send it as a link (AttachmentLimit::links_above with an attachment store) or raise the limit"))
                }
                OverLimit::Link(store) => {
                    let url = store.store(&a).await?;
                    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
                        return Err(Error::config(format!(
                            "the attachment store returned an unusable URL for {:?}",
                            a.filename
                        )));
                    }
                    links.push((a.filename.clone(), a.size(), url));
                }
            }
        }
        let mut text = email.text;
        let mut html = email.html;
        if !links.is_empty() {
            let mut t = text.take().unwrap_or_default();
            if !t.is_empty() {
                t.push_str("\n\n");
            }
            t.push_str("Attachments (download links):\n");
            for (name, size, url) in &links {
                t.push_str(&format!("- {} ({}): {url}\n", one_line(name), human_size(*size)));
            }
            text = Some(t);
            if let Some(h) = html.take() {
                let mut list = String::from("<p>Attachments (download links):</p><ul>");
                for (name, size, url) in &links {
                    list.push_str(&format!(
                        "<li><a href=\"{}\">{}</a> ({})</li>",
                        html_escape(url),
                        html_escape(&one_line(name)),
                        human_size(*size)
                    ));
                }
                list.push_str("</ul>");
                html = Some(match h.rfind("</body>") {
                    Some(at) => format!("{}{list}{}", &h[..at], &h[at..]),
                    None => format!("{h}{list}"),
                });
            }
        }

        let header_address = |m: &Mailbox| -> Result<HeaderAddress<'static>, Error> {
            Ok(HeaderAddress::new_address(
                m.name.as_deref().map(|n| one_line(n).into_owned()),
                m.address.to_smtp(),
            ))
        };
        let list = |ms: &[Mailbox]| -> Result<HeaderAddress<'static>, Error> {
            Ok(HeaderAddress::new_list(
                ms.iter().map(header_address).collect::<Result<_, _>>()?,
            ))
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut builder = MessageBuilder::new()
            .from(header_address(&from)?)
            .date(now.as_secs() as i64)
            .message_id(message_id(&from.address, now));
        if !to.is_empty() {
            builder = builder.to(list(&to)?);
        }
        if !cc.is_empty() {
            builder = builder.cc(list(&cc)?);
        }
        if !reply_to.is_empty() {
            builder = builder.reply_to(list(&reply_to)?);
        }
        if let Some(s) = &email.subject {
            builder = builder.subject(one_line(s).into_owned());
        }
        for (name, value) in headers {
            builder = builder.header(name, HeaderType::Text(Text::new(value)));
        }
        match (&text, &html) {
            (None, None) => builder = builder.text_body(""),
            _ => {
                if let Some(t) = text {
                    builder = builder.text_body(t);
                }
                if let Some(h) = html {
                    builder = builder.html_body(h);
                }
            }
        }
        for a in kept {
            let data: Vec<u8> = a.data.to_vec();
            builder = match &a.content_id {
                Some(cid) => builder.inline(a.content_type.clone(), cid.clone(), data),
                None => builder.attachment(a.content_type.clone(), one_line(&a.filename).into_owned(), data),
            };
        }
        let bytes = builder
            .write_to_vec()
            .map_err(|e| Error::new(Kind::Config, None, "the message could not be written").with_source(e))?;
        let envelope = Envelope::new(Some(envelope_from), rcpt)?;
        envelope.validate()?;
        Ok(Message::new(envelope, bytes))
    }
}

/// An [`AttachmentStore`] that writes files into a directory served by a web
/// server under `url_prefix`. An example to adapt (S3, a CDN …): it names
/// each file with a random prefix so that names do not collide or guess.
#[derive(Clone, Debug)]
pub struct FsAttachmentStore {
    dir: PathBuf,
    url_prefix: String,
}

impl FsAttachmentStore {
    /// Files go into `dir`; links are `{url_prefix}/{name}`.
    pub fn new(dir: impl Into<PathBuf>, url_prefix: impl Into<String>) -> FsAttachmentStore {
        FsAttachmentStore {
            dir: dir.into(),
            url_prefix: url_prefix.into().trim_end_matches('/').to_owned(),
        }
    }
}

/// A file name safe on disk and in a URL path: ASCII letters, digits, `.`,
/// `-`, `_`; anything else becomes `_`.
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    if cleaned.is_empty() {
        "attachment".to_owned()
    } else {
        cleaned.chars().take(100).collect()
    }
}

impl AttachmentStore for FsAttachmentStore {
    fn store<'a>(&'a self, attachment: &'a Attachment) -> BoxFuture<'a, Result<String, Error>> {
        Box::pin(async move {
            // The URL is the only secret guarding the file: 128 bits from
            // the operating system's CSPRNG.
            let mut secret = [0u8; 16];
            getrandom::getrandom(&mut secret).map_err(|e| {
                Error::new(Kind::Io, None, "no randomness for the attachment link").with_source(e)
            })?;
            let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            let name = format!("{secret}-{}", safe_name(&attachment.filename));
            let path = self.dir.join(&name);
            let data = attachment.data.clone();
            tokio::task::spawn_blocking(move || std::fs::write(&path, &data))
                .await
                .map_err(|e| Error::new(Kind::Io, None, "the attachment store task failed").with_source(e))?
                .map_err(|e| {
                    Error::new(
                        Kind::Io,
                        None,
                        format!(
                            "cannot store the attachment {:?} in {}",
                            attachment.filename,
                            self.dir.display()
                        ),
                    )
                    .with_source(e)
                })?;
            Ok(format!("{}/{name}", self.url_prefix))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names() {
        assert_eq!(safe_name("report 2026/11.pdf"), "report_2026_11.pdf");
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name("..."), "attachment");
        assert_eq!(safe_name("Überweisung.pdf"), "_berweisung.pdf");
    }

    #[test]
    fn one_line_replaces_controls() {
        assert_eq!(one_line("a\r\nBcc: x@evil.example"), "a  Bcc: x@evil.example");
        assert!(matches!(one_line("plain"), Cow::Borrowed(_)));
    }
}
