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
//! The sans-IO core ([`proto`](crate::proto)) has its own typed error,
//! [`SessionError`], which states facts only;
//! `Error` implements `From<SessionError>` and adds the hints there, so the
//! core depends on nothing above it.
//!
//! Its `Display` (and `Debug`) text escapes control characters, as
//! [`Escaped`] does, wherever they come from: server replies, EHLO keywords
//! and challenge text reach the message, the hint and the source, and the
//! text goes to terminals and logs. [`Error::reply`] keeps the raw reply.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use crate::proto::auth::BearerError;
use crate::proto::ehlo::Extension;
use crate::proto::reply::{EscapeWriter, Escaped, Reply};
use crate::proto::SessionError;
pub use crate::proto::Stage;

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
    /// The server refused an OAuth2 access token as expired or invalid.
    token_rejected: bool,
    /// The OAuth2 authorization server refused the refresh token (revoked,
    /// expired, consent withdrawn): the user must sign in again.
    reauthorize: bool,
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
            token_rejected: false,
            reauthorize: false,
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

    /// The same error with a hint for whoever must fix it (shown after the
    /// message as `; hint: …`, and by [`hint`](Error::hint)).
    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.0.hint = Some(hint.into());
        self
    }

    /// The same error with its underlying cause: returned by
    /// [`source`](std::error::Error::source), and its text shown after the
    /// message unless the message already contains it.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
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

    /// The server refused the OAuth2 access token (XOAUTH2 or OAUTHBEARER)
    /// as expired, revoked or unknown ([`SessionError::is_token_rejected`]):
    /// a renewed token may succeed. A [`CredentialProvider`](crate::CredentialProvider)
    /// that can renew its token is asked to
    /// ([`token_rejected`](crate::CredentialProvider::token_rejected)) and
    /// AUTH is tried once more with the new one before such an error is
    /// reported. [`is_auth`](Error::is_auth) holds too.
    pub fn is_token_rejected(&self) -> bool {
        self.0.token_rejected
    }

    /// The OAuth2 authorization server refused the refresh token (it was
    /// revoked, expired, or the user withdrew consent: `invalid_grant`):
    /// no new access token can be had until the user signs in again and
    /// grants access anew, which gives a new refresh token.
    /// [`is_auth`](Error::is_auth) holds too.
    pub fn needs_reauthorization(&self) -> bool {
        self.0.reauthorize
    }

    /// Marks the error as needing the user to sign in again
    /// ([`needs_reauthorization`](Error::needs_reauthorization)).
    #[cfg_attr(not(feature = "oauth2"), allow(dead_code))]
    pub(crate) fn reauthorization(mut self) -> Error {
        self.0.reauthorize = true;
        self
    }

    /// A plain-language suggestion for fixing a likely misconfiguration.
    pub fn hint(&self) -> Option<&str> {
        self.0.hint.as_deref()
    }
}

/// The likely fix for the refusals administrators meet most.
fn reply_hint(stage: Stage, reply: &Reply) -> Option<&'static str> {
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

/// Constructors for code that plugs into relaymail: an
/// [`Outbox`](crate::outbox::Outbox), an
/// [`AttachmentStore`](crate::email::AttachmentStore) or a
/// [`CredentialProvider`](crate::settings::CredentialProvider) of your own
/// reports its failures with these, so that the Mailer, its deliverer and
/// your callers can tell them apart like relaymail's own.
///
/// ```
/// use relaymail::Error;
///
/// let io = std::io::Error::other("connection refused");
/// let e = Error::unavailable("the outbox database is unreachable")
///     .with_source(io)
///     .with_hint("check that PostgreSQL is running");
/// assert!(e.is_io() && e.is_transient());
/// assert_eq!(
///     e.to_string(),
///     "the outbox database is unreachable: connection refused; hint: check that PostgreSQL is running"
/// );
/// assert!(Error::invalid("draft 17 is corrupt").is_config());
/// assert!(Error::conflict("draft 17 was claimed by another deliverer").is_conflict());
/// ```
impl Error {
    /// Storage or a service is unavailable (a disk, a database, a network
    /// peer): transient, since trying again later may succeed.
    /// [`is_io`](Error::is_io) is true.
    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::new(Kind::Io, None, message)
    }

    /// The input or the stored data is wrong (an unknown or corrupt record,
    /// a bad value): permanent, since trying again will not help.
    /// [`is_config`](Error::is_config) is true.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(Kind::Config, None, message)
    }

    /// Something changed since it was read (another process updated or
    /// took it): permanent as such; read it again and decide.
    /// [`is_conflict`](Error::is_conflict) is true.
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(Kind::Conflict, None, message)
    }
}

/// The sans-IO core's error as relaymail's: the same stage, reply and
/// source, the kind and transience the predicates report, and the likely
/// fix for administrators as the hint.
impl From<SessionError> for Error {
    fn from(e: SessionError) -> Error {
        use SessionError as S;
        let stage = e.stage();
        let message = e.message();
        match &e {
            S::Refused { stage, reply } | S::Closing { stage, reply } => {
                let mut error = Error::rejected(*stage, message, reply.clone());
                if matches!(e, S::Refused { stage: Stage::Ehlo, .. }) && error.is_permanent() {
                    error = error.with_hint(
                        "some relays refuse EHLO names that do not resolve: set a HELO name the server accepts",
                    );
                }
                error
            }
            S::HeloRefused { reply } => Error::rejected(Stage::Ehlo, message, reply.clone()).with_hint(
                "some relays refuse HELO names that do not resolve: set a HELO name the server accepts",
            ),
            S::StartTlsRefused { reply } => Error::new(Kind::Tls, stage, message).with_reply(reply.clone()),
            S::RecipientsRefused { transient, reply, .. } => {
                let mut error = Error::new(Kind::Rejected, stage, message).transient(*transient);
                if let Some(reply) = reply {
                    if let Some(hint) = reply_hint(Stage::Rcpt, reply) {
                        error = error.with_hint(hint);
                    }
                    error = error.with_reply(reply.clone());
                }
                error
            }
            S::NotOffered { extension, secure } => not_offered(*extension, *secure, stage, message),
            S::MechanismNotOffered { .. } => Error::new(Kind::Auth, stage, message),
            S::TooLarge { .. } => Error::new(Kind::Unsupported, stage, message)
                .with_hint("shrink the message, or send large attachments as links"),
            S::PlaintextAuthRefused => Error::new(Kind::Auth, stage, message).with_hint(
                "use STARTTLS (required) or implicit TLS, or allow plain-text AUTH explicitly if the network is trusted",
            ),
            S::AuthRejected {
                mechanism,
                reply,
                detail,
            } => {
                let mut error = Error::new(Kind::Auth, stage, message)
                    .with_reply(reply.clone())
                    .transient(reply.is_transient());
                error.0.token_rejected = e.is_token_rejected();
                if mechanism.takes_token() {
                    error.with_hint(token_hint(&e, detail.as_deref()))
                } else if let Some(detail) = detail {
                    // Server text: escaped here too, so `Error::hint` is safe to print.
                    error.with_hint(format!("the server said: {}", Escaped(detail)))
                } else if reply.code().value() == 535 {
                    error.with_hint("check the user name and password")
                } else {
                    error
                }
            }
            S::AuthFailed { source, .. } => {
                // A server asking for what the client must refuse broke the
                // protocol (and will again: permanent); the rest is an
                // authentication failure.
                let kind = if source.is_protocol_violation() {
                    Kind::Protocol
                } else {
                    Kind::Auth
                };
                Error::new(kind, stage, message).with_source(source.clone())
            }
            S::AuthUnverified { source, .. } => Error::new(Kind::Auth, stage, message).with_source(source.clone()),
            S::Closed { stage: s } => {
                let error = Error::new(Kind::Closed, stage, message);
                match s {
                    Some(Stage::Greeting) => error.with_hint("the server accepted the connection but sent no greeting before closing: it may be overloaded, reject this client, or expect implicit TLS"),
                    Some(Stage::Ehlo) => error.with_hint("the server closed the connection right after its greeting: it may refuse this client (address blocked, too many connections); check the relay's logs"),
                    _ => error,
                }
            }
            S::Timeout { stage: s } => {
                let error = Error::new(Kind::Timeout, stage, message);
                if *s == Some(Stage::Greeting) {
                    error.with_hint(
                        "the server accepted the connection but sent no greeting: if this port expects implicit TLS (usually 465), use implicit TLS instead of STARTTLS or none",
                    )
                } else {
                    error
                }
            }
            S::Io { source, .. } => {
                let kind = if SessionError::io_closed(source) {
                    Kind::Closed
                } else {
                    Kind::Io
                };
                let mut error = Error::new(kind, stage, message);
                error.0.source = Some(source.clone());
                error
            }
            S::Aborted { source, .. } => match source.downcast_ref::<Error>() {
                // The shell's own error, as it was, in the session's stage
                // when it names none.
                Some(error) => match (error.stage(), stage) {
                    (None, Some(stage)) => error.clone().at_stage(stage),
                    _ => error.clone(),
                },
                None => {
                    let mut error = Error::new(Kind::Io, stage, message);
                    error.0.source = Some(source.clone());
                    error
                }
            },
            S::Unreadable { source, .. } => Error::protocol(stage, message).with_source(source.clone()),
            S::Protocol { reply, .. } => {
                let error = Error::protocol(stage, message);
                match reply {
                    Some(reply) => error.with_reply(reply.clone()),
                    None => error,
                }
            }
            S::StartTlsInjection => Error::new(Kind::Tls, stage, message),
            S::InvalidHeloName(source) | S::InvalidEnvelope(source) | S::Unencodable { source, .. } => {
                Error::config(message).with_source(source.clone())
            }
            S::NoRecipient | S::Misuse(_) => Error::config(message),
            S::SessionClosed => Error::new(Kind::Closed, stage, message),
        }
    }
}

/// The likely fix when the server refused an OAuth2 bearer token; the
/// server's own words (escaped) come last.
fn token_hint(e: &SessionError, detail: Option<&str>) -> String {
    let said = detail.map(|d| format!(" (the server said: {})", Escaped(d)));
    let said = said.as_deref().unwrap_or_default();
    let bearer = e.bearer_error();
    if e.is_token_rejected() {
        format!(
            "the OAuth2 access token was refused: it expired or was revoked, or was issued for another user or application; get a new one (a token source renews it by itself){said}"
        )
    } else if bearer.as_ref().is_some_and(BearerError::is_insufficient_scope) {
        format!(
            "the OAuth2 access token lacks the scope the server needs (https://mail.google.com/ for Gmail, https://outlook.office.com/SMTP.Send for Microsoft 365): sign in again granting it{said}"
        )
    } else {
        format!(
            "the server refused the OAuth2 login: check the user name (the mailbox the token was issued for) and that the account may use SMTP AUTH{said}"
        )
    }
}

/// The error (and likely fix) for an extension the server does not offer.
fn not_offered(extension: Extension, secure: bool, stage: Option<Stage>, message: String) -> Error {
    match extension {
        Extension::Auth => {
            let error = Error::new(Kind::Auth, stage, message);
            if secure {
                error
            } else {
                error.with_hint("many servers offer AUTH only after STARTTLS")
            }
        }
        Extension::StartTls => Error::new(Kind::Tls, stage, message).with_hint(
            "check the port (465 usually expects implicit TLS, 587 STARTTLS) or the server's TLS setup",
        ),
        Extension::SmtpUtf8 => Error::new(Kind::Unsupported, stage, message)
            .with_hint("use an ASCII (or IDNA A-label) address, or a relay that supports SMTPUTF8"),
        Extension::EightBitMime => Error::new(Kind::Unsupported, stage, message)
            .with_hint("encode the message as 7-bit (quoted-printable or base64 MIME parts)"),
        _ => Error::new(Kind::Unsupported, stage, message),
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
        if self.0.token_rejected {
            d.field("token_rejected", &true);
        }
        if self.0.reauthorize {
            d.field("reauthorize", &true);
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

    #[test]
    fn session_errors_keep_kind_stage_and_transience() {
        use crate::proto::auth::{Mechanism, SaslError};
        use crate::proto::{Misuse, Violation};
        use SessionError as S;

        let r421 = reply(b"421 4.4.2 bye\r\n");
        let r454 = reply(b"454 4.7.0 TLS not available\r\n");
        // (error, kind, stage, transient, hint)
        let cases: Vec<(SessionError, Kind, Option<Stage>, bool, bool)> = vec![
            (
                S::Closing {
                    stage: Stage::Mail,
                    reply: r421.clone(),
                },
                Kind::Rejected,
                Some(Stage::Mail),
                true,
                false,
            ),
            (
                S::StartTlsRefused { reply: r454.clone() },
                Kind::Tls,
                Some(Stage::StartTls),
                false,
                false,
            ),
            (
                S::HeloRefused {
                    reply: reply(b"501 no\r\n"),
                },
                Kind::Rejected,
                Some(Stage::Ehlo),
                false,
                true,
            ),
            (
                S::NotOffered {
                    extension: Extension::StartTls,
                    secure: false,
                },
                Kind::Tls,
                Some(Stage::StartTls),
                false,
                true,
            ),
            (
                S::NotOffered {
                    extension: Extension::Auth,
                    secure: false,
                },
                Kind::Auth,
                Some(Stage::Auth),
                false,
                true,
            ),
            (
                S::NotOffered {
                    extension: Extension::RequireTls,
                    secure: true,
                },
                Kind::Unsupported,
                Some(Stage::Mail),
                false,
                false,
            ),
            (
                S::TooLarge { size: 11, limit: 10 },
                Kind::Unsupported,
                Some(Stage::Mail),
                false,
                true,
            ),
            (
                S::PlaintextAuthRefused,
                Kind::Auth,
                Some(Stage::Auth),
                false,
                true,
            ),
            (
                S::AuthFailed {
                    mechanism: Mechanism::ScramSha256,
                    source: SaslError::IterationCount { count: 1 },
                },
                Kind::Protocol,
                Some(Stage::Auth),
                false,
                false,
            ),
            (
                S::AuthFailed {
                    mechanism: Mechanism::ScramSha256,
                    source: SaslError::NonceMismatch,
                },
                Kind::Auth,
                Some(Stage::Auth),
                false,
                false,
            ),
            (
                S::AuthUnverified {
                    mechanism: Mechanism::ScramSha256,
                    source: SaslError::ServerSignatureMismatch,
                },
                Kind::Auth,
                Some(Stage::Auth),
                false,
                false,
            ),
            (
                S::Closed {
                    stage: Some(Stage::Rcpt),
                },
                Kind::Closed,
                Some(Stage::Rcpt),
                true,
                false,
            ),
            (
                S::Closed {
                    stage: Some(Stage::Ehlo),
                },
                Kind::Closed,
                Some(Stage::Ehlo),
                true,
                true,
            ),
            (
                S::Timeout {
                    stage: Some(Stage::Data),
                },
                Kind::Timeout,
                Some(Stage::Data),
                true,
                false,
            ),
            (
                S::Io {
                    stage: None,
                    source: Arc::new(std::io::ErrorKind::BrokenPipe.into()),
                },
                Kind::Closed,
                None,
                true,
                false,
            ),
            (
                S::Protocol {
                    stage: Some(Stage::Rset),
                    violation: Violation::RsetFailed,
                    reply: None,
                },
                Kind::Protocol,
                Some(Stage::Rset),
                true,
                false,
            ),
            (
                S::StartTlsInjection,
                Kind::Tls,
                Some(Stage::StartTls),
                false,
                false,
            ),
            (S::NoRecipient, Kind::Config, None, false, false),
            (
                S::Misuse(Misuse::QuitWithTransactions),
                Kind::Config,
                None,
                false,
                false,
            ),
            (S::SessionClosed, Kind::Closed, None, true, false),
        ];
        for (e, kind, stage, transient, hint) in cases {
            let shown = e.to_string();
            let app = Error::from(e);
            assert_eq!(
                (app.0.kind, app.stage(), app.is_transient()),
                (kind, stage, transient),
                "{app:?}"
            );
            assert_eq!(app.hint().is_some(), hint, "{app:?}");
            // The core's text, then the hint: nothing else differs.
            match app.hint() {
                Some(h) => assert_eq!(app.to_string(), format!("{shown}; hint: {h}")),
                None => assert_eq!(app.to_string(), shown),
            }
        }
    }

    #[test]
    fn the_shells_error_comes_back_from_the_session_unchanged() {
        let shell = Error::new(Kind::Tls, None, "handshake failed").with_hint("use STARTTLS");
        let e = SessionError::Aborted {
            stage: Some(Stage::Tls),
            source: Arc::new(shell.clone()),
        };
        assert_eq!(e.to_string(), "handshake failed; hint: use STARTTLS");
        let back = Error::from(e);
        assert!(back.is_tls() && back.hint() == Some("use STARTTLS"));
        assert_eq!(
            back.stage(),
            Some(Stage::Tls),
            "the session's stage when it named none"
        );
        assert_eq!(back.to_string(), "tls: handshake failed; hint: use STARTTLS");
        let own = Error::new(Kind::Timeout, Some(Stage::Queue), "late");
        let e = SessionError::Aborted {
            stage: Some(Stage::Mail),
            source: Arc::new(own),
        };
        assert_eq!(
            Error::from(e).stage(),
            Some(Stage::Queue),
            "its own stage is kept"
        );
    }
}
