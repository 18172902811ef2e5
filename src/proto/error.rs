//! [`SessionError`]: what went wrong in a [`Session`](super::session::Session),
//! in typed form.
//!
//! The sans-IO core says what happened — which stage, which reply, which
//! extension was missing — and nothing more: its messages are plain facts.
//! Advice for administrators ("set the TLS mode to implicit") is added by
//! the layers above, when they turn a `SessionError` into relaymail's
//! application-level `Error` (`relaymail::Error` implements
//! `From<SessionError>`).

use std::fmt::{self, Write as _};
use std::sync::Arc;

use super::auth::{BearerError, Mechanism, SaslError};
use super::command::CommandError;
use super::ehlo::Extension;
use super::reply::{EscapeWriter, Reply, ReplyError};
use super::stage::Stage;

/// Why a [`Session`](super::session::Session) call failed or a transaction
/// or AUTH exchange ended badly.
///
/// Its `Display` text names the stage, the fact and the server's reply,
/// with control characters escaped as [`Escaped`](super::reply::Escaped)
/// does; the reply itself (raw) is in the variant. Never contains a
/// password, token, AUTH line or message body.
///
/// ```
/// use relaymail::proto::session::{Session, SessionConfig};
/// use relaymail::proto::{SessionError, Stage};
///
/// let mut config = SessionConfig::new("client.example.com");
/// config.allow_helo_fallback = false;
/// let mut s = Session::new(config).unwrap();
/// s.receive(b"220 mx.example.com ESMTP\r\n").unwrap();
/// let e = s.receive(b"550 5.7.1 go away\r\n").unwrap_err();
/// match &e {
///     SessionError::Refused { stage: Stage::Ehlo, reply } => assert_eq!(reply.code().value(), 550),
///     other => panic!("{other}"),
/// }
/// assert_eq!(e.to_string(), "ehlo: EHLO was refused (server replied: 550 5.7.1 go away)");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SessionError {
    /// The server answered a command (or the greeting) with a negative
    /// reply: the greeting was not 220 ([`Stage::Greeting`]), or EHLO
    /// ([`Stage::Ehlo`]), MAIL ([`Stage::Mail`]), DATA ([`Stage::Data`]),
    /// the message ([`Stage::EndOfData`] — also a refused `BDAT … LAST`) or
    /// NOOP ([`Stage::Noop`]) was refused.
    Refused {
        /// What was refused.
        stage: Stage,
        /// The server's reply.
        reply: Reply,
    },
    /// After a refused EHLO, the HELO fallback was refused too (stage
    /// [`Stage::Ehlo`]).
    HeloRefused {
        /// The server's reply to HELO.
        reply: Reply,
    },
    /// STARTTLS is required and the server refused it (stage
    /// [`Stage::StartTls`]).
    StartTlsRefused {
        /// The server's reply to STARTTLS.
        reply: Reply,
    },
    /// The server sent 421: it is closing the connection, whatever was asked.
    Closing {
        /// The stage whose reply it was.
        stage: Stage,
        /// The 421 reply.
        reply: Reply,
    },
    /// The transaction cannot go on because of its recipients (stage
    /// [`Stage::Rcpt`]): every one was refused, or some were and the
    /// transaction required all of them. Each recipient's reply is in the
    /// transaction's outcome.
    RecipientsRefused {
        /// Recipients accepted.
        accepted: usize,
        /// Recipients refused.
        refused: usize,
        /// Recipients in the envelope.
        total: usize,
        /// Every refusal was transient (4yz): another attempt may succeed.
        transient: bool,
        /// The first refusal.
        reply: Option<Reply>,
    },
    /// The server does not offer an extension this session or this message
    /// needs: [`Extension::Auth`] for AUTH, [`Extension::StartTls`] when
    /// STARTTLS is required, and for a transaction (stage [`Stage::Mail`],
    /// nothing sent) [`Extension::SmtpUtf8`] for a non-ASCII address,
    /// [`Extension::EightBitMime`] for 8-bit content, [`Extension::Chunking`]
    /// (BDAT) or [`Extension::BinaryMime`] for `BODY=BINARYMIME`, and
    /// [`Extension::RequireTls`] (which also needs a TLS connection) for
    /// REQUIRETLS.
    NotOffered {
        /// The extension missing.
        extension: Extension,
        /// Whether the connection was TLS at the time.
        secure: bool,
    },
    /// The server offers AUTH but not this mechanism (stage [`Stage::Auth`];
    /// nothing sent).
    MechanismNotOffered {
        /// The mechanism asked for.
        mechanism: Mechanism,
        /// The mechanisms the server offers, as it spelled them.
        offered: Vec<String>,
    },
    /// The message is larger than the server's SIZE limit (stage
    /// [`Stage::Mail`]; nothing sent).
    TooLarge {
        /// The message size on the wire, in bytes.
        size: u64,
        /// The server's limit, in bytes.
        limit: u64,
    },
    /// AUTH was refused by the session itself: the connection is not TLS
    /// and [`allow_plaintext_auth`](super::session::SessionConfig::allow_plaintext_auth)
    /// is off (stage [`Stage::Auth`]; nothing sent).
    PlaintextAuthRefused,
    /// The server refused the AUTH exchange (stage [`Stage::Auth`]). The
    /// session stays usable.
    AuthRejected {
        /// The mechanism.
        mechanism: Mechanism,
        /// The server's final reply.
        reply: Reply,
        /// The error the server reported inside the exchange (the JSON
        /// error challenge of XOAUTH2 and OAUTHBEARER, see
        /// [`bearer_error`](SessionError::bearer_error)), as it sent it.
        detail: Option<String>,
    },
    /// The client side of the exchange gave up (the challenge was invalid,
    /// or the credential cannot be used) and cancelled it with `*` (stage
    /// [`Stage::Auth`]).
    AuthFailed {
        /// The mechanism.
        mechanism: Mechanism,
        /// Why.
        source: SaslError,
    },
    /// The server claimed success without proving it knows the password
    /// (SCRAM): the connection is not trusted (stage [`Stage::Auth`]).
    AuthUnverified {
        /// The mechanism.
        mechanism: Mechanism,
        /// Why.
        source: SaslError,
    },
    /// The server closed the connection (at [`Stage::Greeting`]: it sent
    /// no greeting; at [`Stage::Ehlo`]: it closed right after its greeting).
    Closed {
        /// What the session waited for.
        stage: Option<Stage>,
    },
    /// The shell's timer for the current phase ran out.
    Timeout {
        /// What the session waited for.
        stage: Option<Stage>,
    },
    /// A read or write failed ([`Session::io_failed`](super::session::Session::io_failed)).
    Io {
        /// What the session waited for.
        stage: Option<Stage>,
        /// The IO error.
        source: Arc<std::io::Error>,
    },
    /// The shell failed the session with its own error (a TLS handshake
    /// failure and the like).
    Aborted {
        /// What the session waited for.
        stage: Option<Stage>,
        /// The shell's error.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The server's bytes are not a valid reply.
    Unreadable {
        /// What the session waited for.
        stage: Option<Stage>,
        /// Why.
        source: ReplyError,
    },
    /// The server broke the protocol.
    Protocol {
        /// What the session waited for.
        stage: Option<Stage>,
        /// How.
        violation: Violation,
        /// The reply at fault, when there is one.
        reply: Option<Reply>,
    },
    /// The server sent bytes after its STARTTLS 220 and before the TLS
    /// handshake (RFC 3207 §6): possible command injection (stage
    /// [`Stage::StartTls`]).
    StartTlsInjection,
    /// The EHLO name is not a domain or an address literal.
    InvalidHeloName(CommandError),
    /// The envelope has no recipient (nothing sent).
    NoRecipient,
    /// An envelope address or parameter cannot be sent safely (nothing
    /// sent).
    InvalidEnvelope(CommandError),
    /// A command could not be encoded (nothing of it sent).
    Unencodable {
        /// The command verb, e.g. `"EHLO"`.
        verb: &'static str,
        /// Why.
        source: CommandError,
    },
    /// The session was used out of order (nothing sent).
    Misuse(Misuse),
    /// The session has ended (after QUIT).
    SessionClosed,
}

/// A [`Session`](super::session::Session) call at the wrong time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Misuse {
    /// `authenticate` while the session is not idle and ready.
    AuthNotIdle,
    /// `authenticate` on an authenticated session.
    AlreadyAuthenticated,
    /// `send` before the session is ready (or while it is busy with AUTH).
    SendNotReady,
    /// `noop` before the session is ready.
    NoopNotReady,
    /// `quit` before the session is ready.
    QuitNotReady,
    /// `quit` with transactions still queued.
    QuitWithTransactions,
    /// `tls_established` without a pending STARTTLS.
    NoPendingStartTls,
    /// `key_derived` without a pending `Event::DeriveKey`.
    NoPendingKeyDerivation,
}

impl fmt::Display for Misuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Misuse::AuthNotIdle => "AUTH is only possible on an idle, ready session",
            Misuse::AlreadyAuthenticated => "the session is already authenticated",
            Misuse::SendNotReady => "the session is not ready for a transaction",
            Misuse::NoopNotReady => "NOOP is only possible on a ready session",
            Misuse::QuitNotReady => "QUIT is only possible on a ready session",
            Misuse::QuitWithTransactions => "QUIT with transactions still queued",
            Misuse::NoPendingStartTls => "tls_established called without a pending STARTTLS",
            Misuse::NoPendingKeyDerivation => "key_derived called without a pending Event::DeriveKey",
        })
    }
}

/// How the server broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Violation {
    /// A reply when none was awaited.
    UnrequestedReply,
    /// A reply for a transaction that had already ended.
    ReplyForFinishedTransaction,
    /// A reply after the session ended.
    ReplyAfterEnd,
    /// An AUTH reply with no exchange in progress.
    AuthReplyWithoutExchange,
    /// An AUTH reply before the client answered the challenge.
    AuthReplyBeforeResponse,
    /// A reply during AUTH that is neither 235, 334 nor a refusal.
    UnexpectedAuthReply,
    /// A 3yz reply to DATA other than 354.
    UnexpectedDataReply,
    /// A 3yz reply after the end of the message.
    UnexpectedFinalReply,
    /// RSET was refused: the session no longer knows the server's state.
    RsetFailed,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Violation::UnrequestedReply => "the server sent a reply nobody asked for",
            Violation::ReplyForFinishedTransaction => "reply for a finished transaction",
            Violation::ReplyAfterEnd => "reply after the session ended",
            Violation::AuthReplyWithoutExchange => "AUTH reply without an exchange",
            Violation::AuthReplyBeforeResponse => {
                "the server replied before the client answered its AUTH challenge"
            }
            Violation::UnexpectedAuthReply => "unexpected reply during AUTH",
            Violation::UnexpectedDataReply => "unexpected reply to DATA",
            Violation::UnexpectedFinalReply => "unexpected reply after the message",
            Violation::RsetFailed => "RSET failed; the session is out of step",
        })
    }
}

impl SessionError {
    /// Where it happened, when known.
    pub fn stage(&self) -> Option<Stage> {
        use SessionError as E;
        match self {
            E::Refused { stage, .. } | E::Closing { stage, .. } => Some(*stage),
            E::HeloRefused { .. } => Some(Stage::Ehlo),
            E::StartTlsRefused { .. } | E::StartTlsInjection => Some(Stage::StartTls),
            E::RecipientsRefused { .. } => Some(Stage::Rcpt),
            E::NotOffered { extension, .. } => Some(match extension {
                Extension::Auth => Stage::Auth,
                Extension::StartTls => Stage::StartTls,
                _ => Stage::Mail,
            }),
            E::TooLarge { .. } => Some(Stage::Mail),
            E::MechanismNotOffered { .. }
            | E::PlaintextAuthRefused
            | E::AuthRejected { .. }
            | E::AuthFailed { .. }
            | E::AuthUnverified { .. } => Some(Stage::Auth),
            E::Closed { stage }
            | E::Timeout { stage }
            | E::Io { stage, .. }
            | E::Aborted { stage, .. }
            | E::Unreadable { stage, .. }
            | E::Protocol { stage, .. } => *stage,
            E::InvalidHeloName(_)
            | E::NoRecipient
            | E::InvalidEnvelope(_)
            | E::Unencodable { .. }
            | E::Misuse(_)
            | E::SessionClosed => None,
        }
    }

    /// The server's reply that caused it, when there was one (raw, as the
    /// server sent it).
    pub fn reply(&self) -> Option<&Reply> {
        use SessionError as E;
        match self {
            E::Refused { reply, .. }
            | E::HeloRefused { reply }
            | E::StartTlsRefused { reply }
            | E::Closing { reply, .. }
            | E::AuthRejected { reply, .. } => Some(reply),
            E::RecipientsRefused { reply, .. } | E::Protocol { reply, .. } => reply.as_ref(),
            _ => None,
        }
    }

    /// Whether the server refused an OAuth2 bearer token as such — expired,
    /// revoked or unknown — so that a renewed token may succeed: an
    /// [`AuthRejected`](SessionError::AuthRejected) of XOAUTH2 or
    /// OAUTHBEARER whose error challenge says `invalid_token` (or `401`),
    /// or, when the server sent no error it could read, whose final reply
    /// is `535` (the usual reply to an expired token). A token refused for
    /// a missing scope or a malformed request is not: a new token would be
    /// refused the same way.
    pub fn is_token_rejected(&self) -> bool {
        match self {
            SessionError::AuthRejected { mechanism, reply, .. } if mechanism.takes_token() => {
                match self.bearer_error() {
                    Some(error) => error.is_invalid_token(),
                    None => reply.code().value() == 535,
                }
            }
            _ => false,
        }
    }

    /// The server's error challenge of a refused XOAUTH2 or OAUTHBEARER
    /// exchange, read as a [`BearerError`] (when it is a JSON object with a
    /// `status`).
    pub fn bearer_error(&self) -> Option<BearerError> {
        match self {
            SessionError::AuthRejected {
                mechanism,
                detail: Some(detail),
                ..
            } if mechanism.takes_token() => BearerError::parse(detail),
            _ => None,
        }
    }

    /// Whether the IO failure of an [`Io`](SessionError::Io) error means the
    /// connection was closed (end of stream, reset, broken pipe).
    pub(crate) fn io_closed(source: &std::io::Error) -> bool {
        matches!(
            source.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        )
    }

    /// The fact, without stage, reply or source (those are shown apart).
    pub(crate) fn write_message(&self, f: &mut dyn fmt::Write) -> fmt::Result {
        use SessionError as E;
        match self {
            E::Refused { stage, .. } => f.write_str(match stage {
                Stage::Greeting => "the server refused the session",
                Stage::Ehlo => "EHLO was refused",
                Stage::Mail => "the sender was refused",
                Stage::Data => "DATA was refused",
                Stage::EndOfData => "the message was refused",
                Stage::Noop => "NOOP failed",
                _ => "the command was refused",
            }),
            E::HeloRefused { .. } => f.write_str("HELO was refused"),
            E::StartTlsRefused { .. } => f.write_str("STARTTLS is required but the server refused it"),
            E::Closing { .. } => f.write_str("the server is closing the connection"),
            E::RecipientsRefused {
                accepted,
                refused,
                total,
                ..
            } => {
                if *accepted == 0 {
                    f.write_str("every recipient was refused")
                } else {
                    write!(f, "{refused} of {total} recipients refused and all were required")
                }
            }
            E::NotOffered { extension, .. } => match extension {
                Extension::Auth => f.write_str("the server does not offer AUTH"),
                Extension::StartTls => f.write_str("STARTTLS is required but the server does not offer it"),
                Extension::SmtpUtf8 => f.write_str(
                    "an address has non-ASCII characters but the server does not offer SMTPUTF8",
                ),
                Extension::EightBitMime => {
                    f.write_str("the message has 8-bit content but the server does not offer 8BITMIME")
                }
                Extension::Chunking => {
                    f.write_str("BODY=BINARYMIME needs BDAT, which the server does not offer (CHUNKING)")
                }
                Extension::RequireTls => {
                    f.write_str("REQUIRETLS was asked for but the server does not offer it over TLS")
                }
                other => write!(f, "the server does not offer {}", other.keyword()),
            },
            E::MechanismNotOffered { mechanism, offered } => write!(
                f,
                "the server does not offer {mechanism} (it offers {})",
                offered.join(" ")
            ),
            E::TooLarge { size, limit } => write!(
                f,
                "the message is {size} bytes but the server accepts at most {limit} (SIZE)"
            ),
            E::PlaintextAuthRefused => {
                f.write_str("refusing to send credentials over a connection without TLS")
            }
            E::AuthRejected { mechanism, .. } => {
                write!(f, "the server rejected {mechanism} authentication")
            }
            E::AuthFailed { mechanism, .. } => write!(f, "{mechanism} authentication failed"),
            E::AuthUnverified { mechanism, .. } => {
                write!(f, "{mechanism} authentication could not be verified")
            }
            E::Closed { .. } => f.write_str("the server closed the connection"),
            E::Timeout { .. } => f.write_str("no reply from the server within the timeout"),
            E::Io { source, .. } => f.write_str(if SessionError::io_closed(source) {
                "the connection was closed"
            } else {
                "network error"
            }),
            E::Aborted { source, .. } => write!(f, "{source}"),
            E::Unreadable { source, .. } => write!(f, "unreadable reply: {source}"),
            E::Protocol { violation, .. } => write!(f, "{violation}"),
            E::StartTlsInjection => f.write_str(
                "the server sent data after its STARTTLS reply, before the TLS handshake (RFC 3207 §6); possible command injection",
            ),
            E::InvalidHeloName(e) => write!(f, "invalid HELO name: {e}"),
            E::NoRecipient => f.write_str("the envelope has no recipient"),
            E::InvalidEnvelope(e) => write!(f, "{e}"),
            E::Unencodable { verb, source } => write!(f, "cannot send {verb}: {source}"),
            E::Misuse(m) => write!(f, "{m}"),
            E::SessionClosed => f.write_str("the session is closed"),
        }
    }

    /// The fact as a string (see [`write_message`](Self::write_message)).
    pub(crate) fn message(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_message(&mut s);
        s
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Server text reaches every part: escape all of it.
        let mut f = EscapeWriter(f);
        if let SessionError::Aborted { source, .. } = self {
            // The shell's error names its own stage.
            return write!(f, "{source}");
        }
        if let Some(stage) = self.stage() {
            write!(f, "{stage}: ")?;
        }
        let message = self.message();
        f.write_str(&message)?;
        if let Some(reply) = self.reply() {
            f.write_str(" (server replied: ")?;
            reply.write_unescaped(&mut f)?;
            f.write_str(")")?;
        }
        if let Some(source) = std::error::Error::source(self) {
            // Said once: a message built from its source already says it.
            let source = source.to_string();
            if !message.contains(&source) {
                write!(f, ": {source}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        use SessionError as E;
        match self {
            E::AuthFailed { source, .. } | E::AuthUnverified { source, .. } => Some(source),
            E::Io { source, .. } => Some(&**source),
            E::Aborted { source, .. } => Some(&**source),
            E::Unreadable { source, .. } => Some(source),
            E::InvalidHeloName(e) | E::InvalidEnvelope(e) | E::Unencodable { source: e, .. } => Some(e),
            _ => None,
        }
    }
}
