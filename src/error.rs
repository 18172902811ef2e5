//! The one error type of relaymail.
//!
//! [`Error`] is opaque: ask it what happened with its predicates
//! ([`is_transient`](Error::is_transient), [`is_timeout`](Error::is_timeout),
//! [`is_auth`](Error::is_auth) …), where with [`stage`](Error::stage) and what
//! the server said with [`reply`](Error::reply). Its `Display` text names the
//! stage, the server's reply and, for common misconfigurations, the likely
//! fix; the wording is for people and may change between releases.
//!
//! An `Error` never contains a password, token, AUTH line or message body.
//!
//! Its `Display` (and `Debug`) text escapes control characters, as
//! [`Escaped`] does, wherever they come from: server replies, EHLO keywords
//! and challenge text reach the message, the hint and the source, and the
//! text goes to terminals and logs. [`Error::reply`] keeps the raw reply.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use crate::proto::reply::{EscapeWriter, Escaped, Reply};

/// The step of an SMTP session in which something failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// Resolving the server's host name.
    Resolve,
    /// Opening the TCP connection.
    Connect,
    /// Waiting for the server's 220 greeting.
    Greeting,
    /// EHLO (or HELO).
    Ehlo,
    /// The STARTTLS command.
    StartTls,
    /// The TLS handshake (implicit TLS or after STARTTLS).
    Tls,
    /// SMTP AUTH.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// The DATA or BDAT command and the transfer of the message.
    Data,
    /// Waiting for the server's verdict after the end of the message.
    EndOfData,
    /// RSET.
    Rset,
    /// NOOP.
    Noop,
    /// QUIT.
    Quit,
    /// Waiting in the mailer's queue (or out a retry back-off) for a
    /// connection: the message was not on the wire when its send timeout
    /// ran out.
    Queue,
}

impl Stage {
    /// Lower-case name used in messages, e.g. `"rcpt"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Resolve => "resolve",
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "ehlo",
            Stage::StartTls => "starttls",
            Stage::Tls => "tls",
            Stage::Auth => "auth",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::EndOfData => "end of data",
            Stage::Rset => "rset",
            Stage::Noop => "noop",
            Stage::Quit => "quit",
            Stage::Queue => "queue",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The server answered with a negative reply.
    Rejected,
    /// A network read or write failed.
    Io,
    /// The peer closed the connection.
    Closed,
    /// A phase took longer than its timeout.
    Timeout,
    /// TLS could not be established or verified, or was required and refused.
    Tls,
    /// Authentication failed or could not be attempted.
    Auth,
    /// Invalid settings or input; nothing was sent.
    Config,
    /// The server violated the protocol.
    Protocol,
    /// The server lacks an extension the message needs.
    Unsupported,
    /// The mailer was shut down (or its queue closed) before the message
    /// could be delivered.
    Shutdown,
    /// The mailer's queue was full (only from non-waiting calls).
    Full,
    /// Something is larger than a configured limit (an attachment).
    TooLarge,
    /// A stored object changed since it was loaded (optimistic concurrency).
    Conflict,
    /// Sealed settings were changed outside relaymail: they no longer match
    /// their seal.
    Tampered,
}

#[derive(Clone)]
struct Inner {
    kind: Kind,
    stage: Option<Stage>,
    transient: bool,
    message: String,
    reply: Option<Reply>,
    hint: Option<String>,
    body_sent: bool,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// What went wrong, where, and whether trying again may help.
#[derive(Clone)]
pub struct Error(Box<Inner>);

impl Error {
    pub(crate) fn new(kind: Kind, stage: Option<Stage>, message: impl Into<String>) -> Error {
        let transient = matches!(kind, Kind::Io | Kind::Closed | Kind::Timeout);
        Error(Box::new(Inner {
            kind,
            stage,
            transient,
            message: message.into(),
            reply: None,
            hint: None,
            body_sent: false,
            source: None,
        }))
    }

    /// A negative server reply at `stage`; transient for 4yz, permanent for 5yz.
    pub(crate) fn rejected(stage: Stage, message: impl Into<String>, reply: Reply) -> Error {
        let mut e = Error::new(Kind::Rejected, Some(stage), message);
        e.0.transient = reply.is_transient();
        e.0.hint = reply_hint(stage, &reply).map(str::to_owned);
        e.0.reply = Some(reply);
        e
    }

    pub(crate) fn protocol(stage: Option<Stage>, message: impl Into<String>) -> Error {
        // A confused server may be fine on a fresh connection.
        Error::new(Kind::Protocol, stage, message).transient(true)
    }

    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::new(Kind::Config, None, message)
    }

    pub(crate) fn with_reply(mut self, reply: Reply) -> Error {
        self.0.reply = Some(reply);
        self
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.0.hint = Some(hint.into());
        self
    }

    pub(crate) fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.0.source = Some(Arc::new(source));
        self
    }

    /// The same error, its message prefixed with what it concerns (e.g.
    /// `profile "primary"`).
    #[cfg(feature = "serde")]
    pub(crate) fn about(mut self, what: impl fmt::Display) -> Error {
        self.0.message = format!("{what}: {}", self.0.message);
        self
    }

    pub(crate) fn transient(mut self, transient: bool) -> Error {
        self.0.transient = transient;
        self
    }

    pub(crate) fn at_stage(mut self, stage: Stage) -> Error {
        self.0.stage = Some(stage);
        self
    }

    pub(crate) fn after_body(mut self) -> Error {
        self.0.body_sent = true;
        self
    }

    /// Trying again later (on a new connection) may succeed: a 4yz reply, a
    /// network failure, a timeout, a protocol hiccup.
    pub fn is_transient(&self) -> bool {
        self.0.transient
    }

    /// Trying again will fail the same way: a 5yz reply, invalid settings or
    /// input, a certificate that does not verify, a rejected login.
    pub fn is_permanent(&self) -> bool {
        !self.0.transient
    }

    /// A phase took longer than its configured timeout.
    pub fn is_timeout(&self) -> bool {
        self.0.kind == Kind::Timeout
    }

    /// TLS failed: handshake, certificate verification, or STARTTLS required
    /// but refused.
    pub fn is_tls(&self) -> bool {
        self.0.kind == Kind::Tls
    }

    /// Authentication failed or could not be attempted safely.
    pub fn is_auth(&self) -> bool {
        self.0.kind == Kind::Auth
    }

    /// The settings or the input were invalid; nothing was sent for it.
    pub fn is_config(&self) -> bool {
        self.0.kind == Kind::Config
    }

    /// The server broke the SMTP protocol (malformed or unexpected reply).
    pub fn is_protocol(&self) -> bool {
        self.0.kind == Kind::Protocol
    }

    /// The server (or the network) closed the connection unexpectedly.
    pub fn is_closed(&self) -> bool {
        self.0.kind == Kind::Closed
    }

    /// A network read or write failed (other than the peer closing).
    pub fn is_io(&self) -> bool {
        self.0.kind == Kind::Io
    }

    /// The server answered with a negative reply (see [`reply`](Error::reply)).
    pub fn is_rejected(&self) -> bool {
        self.0.kind == Kind::Rejected
    }

    /// The server does not support something the message needs (SMTPUTF8,
    /// 8BITMIME, a size under its SIZE limit …).
    pub fn is_unsupported(&self) -> bool {
        self.0.kind == Kind::Unsupported
    }

    /// The whole message had been sent when the failure happened, but no
    /// final reply was read: the server may have accepted it. Retrying may
    /// deliver it twice (at-least-once).
    pub fn body_was_sent(&self) -> bool {
        self.0.body_sent
    }

    /// Where it failed, when known.
    pub fn stage(&self) -> Option<Stage> {
        self.0.stage
    }

    /// The server's reply that caused the error, when there was one. Its
    /// [`text`](Reply::text) and [`lines`](Reply::lines) are raw, as the
    /// server sent them; its `Display` escapes control characters.
    pub fn reply(&self) -> Option<&Reply> {
        self.0.reply.as_ref()
    }

    /// The mailer was shut down before this message was delivered; nothing
    /// more will be tried for it.
    pub fn is_shutdown(&self) -> bool {
        self.0.kind == Kind::Shutdown
    }

    /// Something is larger than a configured limit: an attachment over the
    /// attachment policy's maximum (the message names the file and sizes).
    pub fn is_too_large(&self) -> bool {
        self.0.kind == Kind::TooLarge
    }

    /// Saving would overwrite a newer version (someone saved in between):
    /// load again, reapply the change, save again.
    pub fn is_conflict(&self) -> bool {
        self.0.kind == Kind::Conflict
    }

    /// Sealed settings were changed outside relaymail (a setting, the
    /// profile name or the sealed bytes no longer match the seal): their
    /// password was not opened. Restore them from a backup, or enter the
    /// settings and the password again.
    pub fn is_tampered(&self) -> bool {
        self.0.kind == Kind::Tampered
    }

    /// The mailer's queue was full and the call does not wait.
    pub fn is_full(&self) -> bool {
        self.0.kind == Kind::Full
    }

    /// A plain-language suggestion for fixing a likely misconfiguration.
    pub fn hint(&self) -> Option<&str> {
        self.0.hint.as_deref()
    }
}

/// The likely fix for the refusals administrators meet most.
pub(crate) fn reply_hint(stage: Stage, reply: &Reply) -> Option<&'static str> {
    let code = reply.code().value();
    let enhanced = reply.enhanced_code().map(|c| c.to_string()).unwrap_or_default();
    let text = reply.text().to_ascii_lowercase();
    if code == 530 || enhanced == "5.7.0" && text.contains("auth") {
        return Some("the server requires authentication: set a user name and password (over TLS)");
    }
    if code == 552 || enhanced == "5.3.4" {
        return Some(
            "the message is larger than the server accepts: shrink it, or send large attachments as links",
        );
    }
    match stage {
        Stage::Rcpt if (code == 550 || code == 554) && (enhanced == "5.7.1" || text.contains("relay")) => Some(
            "the server does not relay mail for this client or sender: authenticate, or ask its administrator to allow this machine or sender address",
        ),
        Stage::Mail if reply.is_permanent() => Some(
            "the server refused the sender address: use one it accepts (often the authenticated user's own address)",
        ),
        _ => None,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every part may carry server text: escape all of it.
        let mut f = EscapeWriter(f);
        if let Some(stage) = self.0.stage {
            write!(f, "{stage}: ")?;
        }
        f.write_str(&self.0.message)?;
        if let Some(reply) = &self.0.reply {
            // Escaped once, here, with the rest.
            f.write_str(" (server replied: ")?;
            reply.write_unescaped(&mut f)?;
            f.write_str(")")?;
        }
        if let Some(source) = &self.0.source {
            // Said once: a message built from its source already says it.
            let source = source.to_string();
            if !self.0.message.contains(&source) {
                write!(f, ": {source}")?;
            }
        }
        if let Some(hint) = &self.0.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind)
            .field("stage", &self.0.stage)
            .field("transient", &self.0.transient)
            .field("message", &self.0.message);
        if let Some(reply) = &self.0.reply {
            d.field("reply", &format_args!("{reply}"));
        }
        if let Some(hint) = &self.0.hint {
            d.field("hint", hint);
        }
        if self.0.body_sent {
            d.field("body_sent", &true);
        }
        if let Some(source) = &self.0.source {
            d.field("source", &format_args!("{}", Escaped(source)));
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<crate::proto::address::AddressError> for Error {
    /// A [config](Error::is_config) error with the address error's text.
    fn from(e: crate::proto::address::AddressError) -> Error {
        Error::config(e.to_string())
    }
}

impl From<crate::proto::session::EnvelopeError> for Error {
    /// A [config](Error::is_config) error with the envelope error's text.
    fn from(e: crate::proto::session::EnvelopeError) -> Error {
        Error::config(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::proto::reply::ReplyParser;

    #[test]
    fn address_errors_are_config_errors() {
        let e =
            crate::Address::parse("a<b@example.net\r\n", crate::AddressPolicy::Strict).expect_err("refused");
        let e = Error::from(e);
        assert!(e.is_config());
        let text = e.to_string();
        assert!(text.starts_with("invalid address \"a<b@example.net"), "{text}");
        assert!(
            text.ends_with("it contains the control character '\\\\r'"),
            "{text}"
        );
        assert!(!text.contains('\r'), "shown escaped: {text}");
    }

    fn reply(s: &[u8]) -> Reply {
        let mut p = ReplyParser::new();
        p.push(s);
        p.next_reply().expect("ok").expect("reply")
    }

    #[test]
    fn predicates_follow_the_reply() {
        let e = Error::rejected(
            Stage::Rcpt,
            "recipient refused",
            reply(b"450 4.2.0 mailbox busy\r\n"),
        );
        assert!(e.is_transient() && !e.is_permanent() && e.is_rejected());
        assert_eq!(e.stage(), Some(Stage::Rcpt));
        assert_eq!(e.reply().map(|r| r.code().value()), Some(450));
        let e = Error::rejected(Stage::Mail, "sender refused", reply(b"550 5.7.1 no\r\n"));
        assert!(e.is_permanent());
        assert_eq!(
            e.to_string(),
            "mail: sender refused (server replied: 550 5.7.1 no); hint: the server refused the sender address: use one it accepts (often the authenticated user's own address)"
        );
        let e = Error::rejected(
            Stage::Rcpt,
            "refused",
            reply(b"554 5.7.1 Relay access denied\r\n"),
        );
        assert!(e.hint().is_some_and(|h| h.contains("does not relay")));
        let e = Error::rejected(
            Stage::Mail,
            "refused",
            reply(b"530 5.7.0 Authentication required\r\n"),
        );
        assert!(e.hint().is_some_and(|h| h.contains("requires authentication")));
        let e = Error::rejected(Stage::Rcpt, "refused", reply(b"550 5.1.1 no such user\r\n"));
        assert_eq!(e.hint(), None, "an unknown mailbox needs no configuration hint");
    }

    #[test]
    fn display_with_hint_and_source() {
        let e = Error::new(Kind::Tls, Some(Stage::Tls), "handshake failed")
            .with_source(std::io::Error::other("bad record"))
            .with_hint("port 587 speaks plain SMTP: use STARTTLS");
        assert!(e.is_tls() && e.is_permanent());
        assert_eq!(
            e.to_string(),
            "tls: handshake failed: bad record; hint: port 587 speaks plain SMTP: use STARTTLS"
        );
        assert!(std::error::Error::source(&e).is_some());
        assert!(format!("{e:?}").contains("hint"));
    }

    #[test]
    fn server_control_bytes_are_never_displayed_raw() {
        let raw = b"550-5.7.1 \x1b[2Jcleared\x07 bell\x00nul\x7fdel\rcr \xc2\x9bcsi \xe2\x80\xaeevil\r\n550 5.7.1 second\x1b]0;title\x07\r\n";
        let r = reply(raw);
        let bad = |c: char| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c);
        // The raw text stays available.
        assert!(r.text().contains("\x1b[2J") && r.text().contains('\0') && r.text().contains('\r'));
        assert!(r.lines()[0].contains('\u{7f}'));
        let shown = r.to_string();
        assert!(!shown.contains(bad), "{shown:?}");
        assert_eq!(
            shown,
            "550 5.7.1 \\u{1b}[2Jcleared\\u{7} bell\\u{0}nul\\u{7f}del\\u{d}cr \\u{9b}csi \\u{202e}evil second\\u{1b}]0;title\\u{7}"
        );
        let e = Error::rejected(Stage::Rcpt, "recipient refused", r.clone())
            .with_hint("the server said: \x1b[31mred")
            .with_source(std::io::Error::other("source \x1b[2J\x07"));
        // The pretty Debug form breaks its own lines; nothing else may.
        let pretty = format!("{e:#?}").replace('\n', " ");
        for text in [e.to_string(), format!("{e:?}"), pretty] {
            assert!(!text.contains(bad), "{text:?}");
            assert!(text.contains("\\u{1b}[2Jcleared"), "{text:?}");
        }
        assert!(e.to_string().contains("the server said: \\u{1b}[31mred"));
        assert!(e.to_string().contains("source \\u{1b}[2J\\u{7}"));
        let e = Error::new(Kind::Auth, Some(Stage::Auth), "the server offers X\x1bY\nZ");
        assert_eq!(e.to_string(), "auth: the server offers X\\u{1b}Y\\u{a}Z");
        // The accessor gives the reply as the server sent it.
        assert_eq!(e.reply(), None);
        let e = Error::rejected(Stage::Rcpt, "refused", r);
        assert!(e.reply().is_some_and(|r| r.text().contains('\x07')));
    }

    #[test]
    fn network_failures_are_transient() {
        for kind in [Kind::Io, Kind::Closed, Kind::Timeout] {
            assert!(Error::new(kind, None, "x").is_transient());
        }
        assert!(Error::config("bad").is_config());
        assert!(Error::config("bad").is_permanent());
        assert!(Error::new(Kind::Timeout, Some(Stage::Greeting), "t").is_timeout());
        assert!(Error::new(Kind::Closed, None, "c").after_body().body_was_sent());
    }
}
