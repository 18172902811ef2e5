//! # relaymail
//!
//! An async SMTP client for applications that send their own notification
//! email — password resets, alerts, share links, invoices — through a relay
//! an administrator configures.
//!
//! Layers, bottom up:
//!
//! - [`proto`]: a sans-IO SMTP client (no sockets, no clock): incremental
//!   reply parser, EHLO capabilities, a command encoder that refuses
//!   injection, DATA/BDAT body encoders that cannot end a message early, SASL
//!   mechanisms and the session state machine with PIPELINING. Its errors
//!   are its own ([`proto::SessionError`]: typed facts); [`Error`] converts
//!   them and adds the likely fix.
//! - [`SmtpSettings`]: the typed, validated settings an administrator's form
//!   produces (host, port, [`TlsMode`], trust, credentials, HELO name,
//!   per-phase [`Timeouts`], and what the [`Mailer`] does with the mail:
//!   [`Redirect`], deliveries per connection, [`AddressPolicy`],
//!   [`settings::AttachmentLimit`]); `build()` reports every bad field at
//!   once.
//! - [`Connection`] ([`transport`]): one connection over tokio and rustls —
//!   DNS, implicit TLS or STARTTLS, AUTH, delivery, NOOP, QUIT — with the
//!   timeout of each phase enforced and errors that name the stage and the
//!   likely fix. [`probe`] checks settings end to end (and [`diagnose::verify`] reports it stage by stage).
//! - [`Email`] and [`Composer`] ([`email`]): notification emails built with
//!   `mail-builder` — From defaults from the settings, envelope derived (Bcc
//!   only in the envelope), [`AddressPolicy`] strict or lenient,
//!   internationalised addresses, attachment size limit with large files
//!   sent as links. [`Message::from_rfc5322`] takes raw messages.
//! - [`Mailer`] ([`mailer`]): the pooled dispatcher applications hold — a
//!   hard cap on connections, deliveries per connection, retries with
//!   back-off, rate limit, back-pressure, reload, redirect, shutdown.
//! - [`outbox`]: the durable outbox — an async [`outbox::Outbox`] trait and a
//!   directory spool; with [`MailerBuilder::outbox`] mail waits on disk while
//!   the relay is down or the settings are wrong, and survives a restart.
//! - [`diagnose`]: "test connection" and "send test email" reports, stage by
//!   stage, with the likely fix for the common misconfigurations.
//! - `oauth2` (feature `oauth2`): OAuth2 sign-in whose access tokens renew
//!   themselves from a refresh token, for OAUTHBEARER and XOAUTH2 (Microsoft
//!   365, Google Workspace).
//! - `profiles` and sealed settings (feature `serde`): named settings sets in
//!   a JSON file with encrypted passwords, followed live by the Mailer.
//! - Trust and identity: the Mozilla roots, added roots, the operating
//!   system's store ([`SmtpSettingsBuilder::system_roots`], feature
//!   `system-roots`), and client certificates for relays that require them
//!   ([`SmtpSettingsBuilder::client_certificate_pem`], mutual TLS).
//! - `dkim` (feature `dkim`): DKIM signing (RFC 6376) of every message
//!   sent, with an RSA or Ed25519 key from the settings
//!   (`SmtpSettingsBuilder::dkim`), once per message before any attempt.
//! - `testing` (feature `test-server`): an in-process SMTP server with TLS,
//!   AUTH, extension switches, fault injection and recorded sessions, for
//!   this crate's tests and for the tests of applications that embed it.
//!
//! ## Sending one message
//!
//! ```no_run
//! # async fn demo() -> Result<(), relaymail::Error> {
//! use relaymail::{Connection, Envelope, SmtpSettings, TlsMode};
//!
//! let settings = SmtpSettings::builder()
//!     .host("smtp.example.com")
//!     .tls(TlsMode::StartTls) // port 587 by default
//!     .sender("noreply@example.com")
//!     .credentials("noreply@example.com", "app-password")
//!     .build()?;
//! let mut conn = Connection::open(&settings).await?;
//! let envelope = Envelope::new(Some("noreply@example.com".parse()?), vec!["user@example.net".parse()?])?;
//! let delivery = conn
//!     .send(envelope, b"Subject: Reset your password\r\n\r\nFollow the link.\r\n".to_vec())
//!     .await?;
//! println!("queued: {}", delivery.reply());
//! conn.quit().await?;
//! # Ok(()) }
//! ```
//!
//! ## Driving a session
//!
//! ```
//! use relaymail::proto::session::{Envelope, Event, Session, SessionConfig, Transaction};
//!
//! let mut s = Session::new(SessionConfig::new("client.example.com")).unwrap();
//! s.receive(b"220 mx.example.com ESMTP\r\n").unwrap();
//! assert_eq!(s.output(), b"EHLO client.example.com\r\n");
//! s.consume_output(s.output().len());
//! s.receive(b"250-mx.example.com\r\n250 PIPELINING\r\n").unwrap();
//! assert!(matches!(s.poll_event(), Some(Event::Ready)));
//!
//! let from = "alerts@example.com".parse().unwrap();
//! let envelope = Envelope::new(Some(from), vec!["ops@example.net".parse().unwrap()]).unwrap();
//! s.send(Transaction::new(envelope, &b"Subject: disk full\r\n\r\n/var is at 99%\r\n"[..])).unwrap();
//! // PIPELINING: MAIL, RCPT and DATA leave in one write.
//! assert_eq!(s.output(), b"MAIL FROM:<alerts@example.com>\r\nRCPT TO:<ops@example.net>\r\nDATA\r\n");
//! s.consume_output(s.output().len());
//! s.receive(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n").unwrap();
//! assert!(s.output().ends_with(b"99%\r\n.\r\n"));
//! s.consume_output(s.output().len());
//! s.receive(b"250 2.0.0 Ok: queued as 4XyZ\r\n").unwrap();
//! match s.poll_event() {
//!     Some(Event::Transaction(t)) => assert_eq!(t.result.unwrap().text(), "Ok: queued as 4XyZ"),
//!     other => panic!("{other:?}"),
//! }
//! ```
//!
//! ## Security
//!
//! - Every command argument is checked as wire bytes before anything is
//!   written: CR, LF, NUL and other controls, angle brackets in mailboxes and
//!   stray spaces are refused ([`proto::command`]). Before that, an
//!   [`Envelope`] only holds parsed [`Address`]es (one grammar for every
//!   layer: [`proto::grammar`]), so a malformed address never gets that far.
//! - The body encoders normalise every bare CR and LF to CRLF and dot-stuff
//!   every line, so no message can end the DATA phase early (SMTP smuggling).
//! - Bytes the server sends after its STARTTLS `220` and before the TLS
//!   handshake abort the session (RFC 3207 §6, the STARTTLS command injection
//!   class).
//! - Credentials are never sent on a connection without TLS unless allowed
//!   explicitly; secrets live in [`secrecy`] types, are wiped from the output
//!   buffer once written, and never appear in `Debug`, `Display` or errors.
//! - `#![forbid(unsafe_code)]`.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod address;
#[cfg(feature = "admin")]
pub mod admin;
mod backoff;
pub mod dev;
pub mod diagnose;
#[cfg(feature = "dkim")]
pub mod dkim;
pub mod email;
pub mod error;
mod fsutil;
mod future;
pub mod mailer;
pub mod message;
#[cfg(feature = "oauth2")]
pub mod oauth2;
pub mod outbox;
#[cfg(feature = "serde")]
pub mod profiles;
pub mod proto;
mod rand;
pub mod settings;
#[cfg(feature = "test-server")]
pub mod testing;
pub mod transport;

#[doc(hidden)]
pub mod fuzzing;

pub use address::{Address, AddressError, AddressPolicy, Mailbox};
pub use email::{Attachment, AttachmentPolicy, Composer, Email, IntoMailbox};
pub use error::{Error, Stage};
pub use future::BoxFuture;
pub use mailer::{
    Mailer, MailerBuilder, Pending, RateLimit, Receipt, Redirect, RelayDownPolicy, ReportAddress,
    RetryPolicy, SendOutcome, Stats, TrySendError,
};
pub use message::Message;
pub use proto::auth::{Credential, Mechanism, UnknownMechanism};
pub use proto::reply::Reply;
pub use proto::session::{Envelope, EnvelopeError, Recipient, RecipientReply};
#[cfg(feature = "dkim")]
pub use settings::DkimKeyChange;
pub use settings::{
    Auth, ClientCertificateChange, ClientIdentity, CredentialProvider, DangerousSettings, FieldError,
    PasswordChange, Proxy, ProxyKind, Relay, Sender, SettingsErrors, SettingsUpdate, SmtpSettings,
    SmtpSettingsBuilder, SmtpUrl, Timeouts, TlsMode, TlsOptions, UnknownTlsMode,
};
pub use transport::{probe, Connection, ConnectionInfo, Connector, Delivery, Resolver, TlsInfo};

/// The README's Rust examples, compiled as doctests (with every feature
/// they use) so that they cannot drift from the API.
#[cfg(all(doctest, feature = "serde"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
