//! The SMTP client session as a sans-IO state machine.
//!
//! A [`Session`] never touches a socket or a clock. The caller (the "shell")
//! moves bytes and enforces time:
//!
//! 1. write [`Session::output`] to the connection, then call
//!    [`Session::consume_output`] with the number of bytes written;
//! 2. read from the connection and hand the bytes to [`Session::receive`]
//!    (or call [`Session::receive_eof`] when the peer closed);
//! 3. take [`Event`]s from [`Session::poll_event`] and act on them: run a TLS
//!    handshake on [`Event::StartTls`], authenticate or send mail on
//!    [`Event::Ready`], report each [`Event::Transaction`], and, with
//!    [`SessionConfig::offload_key_derivation`], run the SCRAM key derivation
//!    of [`Event::DeriveKey`] off the async threads and hand its result to
//!    [`Session::key_derived`];
//! 4. apply the timeout of [`Session::phase`] to each wait.
//!
//! ```text
//! greeting ─▶ EHLO ─┬─▶ STARTTLS ─▶ (TLS handshake by the shell) ─▶ EHLO ─┐
//!                   │   (HELO fallback only where allowed)                 │
//!                   └──────────────────────────────────────────────────────┴─▶ Ready
//! Ready ─▶ AUTH … ─▶ Ready ─▶ MAIL, RCPT×n, DATA/BDAT, body ─▶ Ready … ─▶ QUIT ─▶ Closed
//! ```
//!
//! With PIPELINING the MAIL, RCPT and DATA (or BDAT with the message) of a
//! transaction go out in one write, their replies are matched in order, and
//! after the end of one message the next transaction's commands follow in the
//! same write (RFC 2920 §3.1). A fatal error puts the session in a failed state
//! that it never leaves; every later call returns the same error.
//!
//! Errors are [`SessionError`]s: what happened, in typed form, without advice
//! for administrators (relaymail's `Error` adds that when it converts one).

use std::collections::VecDeque;
use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use super::address::Address;
use super::auth::{self, DerivedKey, KeyDerivation, Mechanism, SaslClient, SaslError, Step};
use super::command::{check_helo_name, check_mailbox, Argument, BodyType, Command, MailParams, RcptParams};
use super::data::{self, DataEncoder};
use super::ehlo::{Capabilities, Extension};
use super::error::{Misuse, SessionError, Violation};
use super::reply::{Reply, ReplyLimits, ReplyParser};
use super::stage::Stage;

/// When to upgrade a plain connection with STARTTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StartTlsPolicy {
    /// Never send STARTTLS (clear text, or a connection that is already TLS).
    Never,
    /// Upgrade when the server offers STARTTLS; otherwise, or when the server
    /// refuses it, continue in clear text.
    Opportunistic,
    /// Upgrade or fail: no byte of mail is sent in clear text.
    Required,
}

/// How one session behaves. Build with [`SessionConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionConfig {
    /// The EHLO/HELO name (a domain or an address literal).
    pub helo_name: String,
    /// The stream is already TLS (implicit TLS): STARTTLS is never sent and
    /// credentials may be sent.
    pub implicit_tls: bool,
    /// STARTTLS behaviour for a plain stream.
    pub starttls: StartTlsPolicy,
    /// Fall back to HELO when EHLO is refused. Never used when STARTTLS is
    /// required or after a TLS upgrade. Default: true.
    pub allow_helo_fallback: bool,
    /// Allow sending credentials on a connection without TLS. Default: false.
    pub allow_plaintext_auth: bool,
    /// Use PIPELINING when offered. Default: true.
    pub pipelining: bool,
    /// Use BDAT when CHUNKING is offered. Default: true.
    pub chunking: bool,
    /// Reply parser limits.
    pub reply_limits: ReplyLimits,
    /// Hand SCRAM's key derivation (up to
    /// [`SCRAM_MAX_ITERATIONS`](auth::SCRAM_MAX_ITERATIONS) rounds of
    /// PBKDF2) to the shell as [`Event::DeriveKey`] instead of running it
    /// inside [`Session::receive`]. An async shell sets it and runs the
    /// derivation off its executor threads. Default: false.
    pub offload_key_derivation: bool,
}

impl SessionConfig {
    /// Defaults for the given EHLO name: no TLS, HELO fallback allowed,
    /// plain-text AUTH refused, PIPELINING and CHUNKING used when offered.
    pub fn new(helo_name: impl Into<String>) -> SessionConfig {
        SessionConfig {
            helo_name: helo_name.into(),
            implicit_tls: false,
            starttls: StartTlsPolicy::Never,
            allow_helo_fallback: true,
            allow_plaintext_auth: false,
            pipelining: true,
            chunking: true,
            reply_limits: ReplyLimits::default(),
            offload_key_derivation: false,
        }
    }
}

/// What the session is waiting for, so the shell can pick a timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// The 220 greeting.
    Greeting,
    /// The EHLO/HELO reply.
    Ehlo,
    /// The STARTTLS reply.
    StartTls,
    /// The shell must run the TLS handshake now.
    TlsHandshake,
    /// A reply during AUTH.
    Auth,
    /// The reply to MAIL, RCPT, DATA, RSET or NOOP.
    Command,
    /// The final reply after the end of a message.
    FinalReply,
    /// The reply to QUIT.
    Quit,
    /// Nothing: the session is idle (or closed).
    Idle,
}

/// Identifies a transaction handed to [`Session::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(u64);

impl TxId {
    /// The `n`th transaction of a connection that has no session (the
    /// file and memory destinations).
    pub(crate) fn nth(n: u64) -> TxId {
        TxId(n)
    }

    #[cfg(test)]
    pub(crate) fn for_tests(n: u64) -> TxId {
        TxId(n)
    }

    /// The sequence number within the session (starting at 0).
    pub fn value(self) -> u64 {
        self.0
    }
}

/// One recipient and its RCPT parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recipient {
    /// The mailbox (written into RCPT TO in its [SMTP form](Address::to_smtp)).
    pub address: Address,
    /// DSN parameters.
    pub params: RcptParams,
}

impl Recipient {
    /// A recipient without parameters.
    pub fn new(address: Address) -> Recipient {
        Recipient {
            address,
            params: RcptParams::default(),
        }
    }

    /// The same recipient with these DSN parameters.
    pub fn with_params(mut self, params: RcptParams) -> Recipient {
        self.params = params;
        self
    }
}

impl From<Address> for Recipient {
    fn from(address: Address) -> Recipient {
        Recipient::new(address)
    }
}

/// Why an [`Envelope`] cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The recipient list is empty.
    #[error("the envelope has no recipient")]
    NoRecipient,
}

/// The SMTP envelope: reverse path, its parameters and the recipients.
///
/// Its addresses are [`Address`]es, valid by construction, and it has at
/// least one recipient: an envelope that cannot be sent cannot be made.
///
/// ```
/// use relaymail::{Address, Envelope};
/// # fn main() -> Result<(), relaymail::Error> {
/// let from: Address = "alerts@example.com".parse()?;
/// let envelope = Envelope::new(Some(from), vec!["ops@example.net".parse()?])?;
/// assert_eq!(envelope.reverse_path(), "alerts@example.com");
/// // The null reverse path `<>` (bounces, auto-replies) is `None`.
/// let bounce = Envelope::new(None, vec!["ops@example.net".parse()?])?;
/// assert_eq!(bounce.reverse_path(), "");
/// assert!(Envelope::new(None, vec![]).is_err());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    from: Option<Address>,
    params: MailParams,
    recipients: Vec<Recipient>,
}

impl Envelope {
    /// An envelope from `from` (`None`: the null reverse path `<>`) to these
    /// addresses, without parameters. Refuses an empty recipient list.
    pub fn new(from: Option<Address>, to: Vec<Address>) -> Result<Envelope, EnvelopeError> {
        Envelope::with_recipients(from, to.into_iter().map(Recipient::new).collect())
    }

    /// An envelope to recipients that may carry RCPT parameters. Refuses an
    /// empty recipient list.
    pub fn with_recipients(
        from: Option<Address>,
        recipients: Vec<Recipient>,
    ) -> Result<Envelope, EnvelopeError> {
        if recipients.is_empty() {
            return Err(EnvelopeError::NoRecipient);
        }
        Ok(Envelope {
            from,
            params: MailParams::default(),
            recipients,
        })
    }

    /// The same envelope with these MAIL parameters.
    pub fn with_params(mut self, params: MailParams) -> Envelope {
        self.params = params;
        self
    }

    /// The sender; `None` for the null reverse path `<>`.
    pub fn from(&self) -> Option<&Address> {
        self.from.as_ref()
    }

    /// The MAIL FROM argument: the sender's [SMTP form](Address::to_smtp),
    /// or empty for the null reverse path.
    pub fn reverse_path(&self) -> String {
        self.from.as_ref().map(Address::to_smtp).unwrap_or_default()
    }

    /// MAIL parameters set by the caller. SIZE, BODY=8BITMIME and SMTPUTF8
    /// are added by the session when needed and offered; DSN parameters are
    /// left out when the server does not offer DSN.
    pub fn params(&self) -> &MailParams {
        &self.params
    }

    /// The MAIL parameters, to change.
    pub fn params_mut(&mut self) -> &mut MailParams {
        &mut self.params
    }

    /// The recipients, in order (never empty).
    pub fn recipients(&self) -> &[Recipient] {
        &self.recipients
    }

    /// The recipients, to change their addresses or parameters (the list
    /// keeps its length, so it stays non-empty).
    pub fn recipients_mut(&mut self) -> &mut [Recipient] {
        &mut self.recipients
    }

    /// Replaces the recipients; refuses an empty list (and then keeps the
    /// old one).
    pub fn set_recipients(&mut self, recipients: Vec<Recipient>) -> Result<(), EnvelopeError> {
        if recipients.is_empty() {
            return Err(EnvelopeError::NoRecipient);
        }
        self.recipients = recipients;
        Ok(())
    }
}

/// A message to deliver: envelope, raw RFC 5322 bytes and delivery options.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Transaction {
    /// The envelope.
    pub envelope: Envelope,
    /// The message (headers and body). Line endings are normalised and lines
    /// are dot-stuffed on the wire; the caller passes the message as is.
    pub message: Arc<[u8]>,
    /// Fail (and RSET) unless every recipient is accepted. Default: false —
    /// the message goes to those accepted and the refused are reported.
    pub require_all_recipients: bool,
}

impl Transaction {
    /// A transaction with the default options.
    pub fn new(envelope: Envelope, message: impl Into<Arc<[u8]>>) -> Transaction {
        Transaction {
            envelope,
            message: message.into(),
            require_all_recipients: false,
        }
    }
}

/// The server's answer for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecipientReply {
    /// The recipient address.
    pub address: Address,
    /// The reply to its RCPT; `None` when the transaction ended before it.
    pub reply: Option<Reply>,
}

impl RecipientReply {
    /// Whether the server accepted this recipient.
    pub fn accepted(&self) -> bool {
        self.reply.as_ref().is_some_and(Reply::is_positive)
    }

    /// Whether the server refused this recipient for now (4yz): another
    /// attempt may succeed.
    pub fn is_deferred(&self) -> bool {
        self.reply.as_ref().is_some_and(Reply::is_transient)
    }
}

/// The recipients (with their parameters) whose reply in `replies` defers
/// them (4yz), in envelope order: the ones owed another attempt.
pub(crate) fn deferred_recipients(recipients: &[Recipient], replies: &[RecipientReply]) -> Vec<Recipient> {
    let deferred: std::collections::HashSet<&Address> = replies
        .iter()
        .filter(|r| r.is_deferred())
        .map(|r| &r.address)
        .collect();
    recipients
        .iter()
        .filter(|r| deferred.contains(&r.address))
        .cloned()
        .collect()
}

/// The addresses among `recipients` that the server accepted, in order.
pub(crate) fn accepted_addresses(recipients: &[RecipientReply]) -> impl Iterator<Item = &Address> {
    recipients.iter().filter(|r| r.accepted()).map(|r| &r.address)
}

/// The end of one transaction.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TransactionOutcome {
    /// Which transaction.
    pub id: TxId,
    /// Each recipient's reply, in envelope order.
    pub recipients: Vec<RecipientReply>,
    /// The final reply after the message (queue id text) on success.
    pub result: Result<Reply, SessionError>,
    /// The transaction failed with the session (the connection failed, timed
    /// out …) after the whole message had been handed out for writing, and
    /// no final reply was read: the server may have accepted it, and trying
    /// again may deliver it twice. Never set for a refusal.
    pub body_sent: bool,
}

/// Something the shell must act on or may report.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// Write out [`Session::output`], then run the TLS handshake on the same
    /// stream and call [`Session::tls_established`]. Any byte the server sent
    /// after its 220 has already been refused.
    StartTls,
    /// Greeting, EHLO and TLS negotiation are done: the session accepts
    /// [`Session::authenticate`] and [`Session::send`].
    Ready,
    /// The AUTH exchange ended.
    Authenticated(Result<Mechanism, SessionError>),
    /// Only with [`SessionConfig::offload_key_derivation`]: run this SCRAM
    /// key derivation (CPU-bound, for an async shell on a blocking thread)
    /// and pass its result to [`Session::key_derived`]. Until then the
    /// session writes nothing and waits for no reply.
    DeriveKey(KeyDerivation),
    /// A transaction ended.
    Transaction(TransactionOutcome),
    /// A NOOP was answered positively.
    Noop,
    /// QUIT was answered (or the server closed after QUIT).
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    TlsUpgrade,
    Ready,
    Auth,
    Quitting,
    Closed,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Mail(TxId),
    Rcpt(TxId),
    Data(TxId),
    EndOfData(TxId),
    Bdat(TxId),
    Rset,
    Noop,
    Quit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyMode {
    Data,
    Bdat,
}

#[derive(Debug)]
struct Tx {
    id: TxId,
    from: String,
    params: MailParams,
    recipients: Vec<Recipient>,
    replies: Vec<RecipientReply>,
    message: Arc<[u8]>,
    require_all: bool,
    mode: BodyMode,
    mail_written: bool,
    rcpts_written: usize,
    data_written: bool,
    body_written: bool,
    mail_reply: Option<Reply>,
    failure: Option<SessionError>,
}

impl Tx {
    fn accepted(&self) -> usize {
        self.replies.iter().filter(|r| r.accepted()).count()
    }

    fn rcpt_replies(&self) -> usize {
        self.replies.iter().filter(|r| r.reply.is_some()).count()
    }

    fn mail_accepted(&self) -> bool {
        self.mail_reply.as_ref().is_some_and(Reply::is_positive)
    }

    /// The error for a transaction whose recipients were refused.
    fn recipients_error(&self) -> SessionError {
        let refused: Vec<&Reply> = self
            .replies
            .iter()
            .filter_map(|r| r.reply.as_ref())
            .filter(|r| !r.is_positive())
            .collect();
        SessionError::RecipientsRefused {
            accepted: self.accepted(),
            refused: refused.len(),
            total: self.replies.len(),
            transient: !refused.is_empty() && refused.iter().all(|r| r.is_transient()),
            reply: refused.first().map(|r| (*r).clone()),
        }
    }
}

/// One SMTP client session. See the [module docs](self).
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    state: State,
    parser: ReplyParser,
    out: Vec<u8>,
    /// Bytes at the start of `out` that carry AUTH data; wiped when consumed.
    sensitive: usize,
    events: VecDeque<Event>,
    expects: VecDeque<Expect>,
    caps: Option<Capabilities>,
    secure: bool,
    upgraded: bool,
    authenticated: Option<Mechanism>,
    sasl: Option<SaslClient>,
    sasl_cancelled: Option<SessionError>,
    /// An [`Event::DeriveKey`] is out; [`Session::key_derived`] is awaited.
    deriving: bool,
    tls_note: Option<String>,
    txs: VecDeque<Tx>,
    next_id: u64,
    failure: Option<SessionError>,
    /// Every reply with the stage it answered, when recording is on.
    replies: Option<Vec<(Stage, Reply)>>,
    /// Complete replies read (see [`Session::replies_received`]).
    received: u64,
}

impl Session {
    /// A session that waits for the server's greeting. Fails if the EHLO name
    /// is not a valid domain or address literal.
    pub fn new(config: SessionConfig) -> Result<Session, SessionError> {
        check_helo_name(&config.helo_name).map_err(SessionError::InvalidHeloName)?;
        Ok(Session {
            parser: ReplyParser::with_limits(config.reply_limits),
            secure: config.implicit_tls,
            config,
            state: State::Greeting,
            out: Vec::new(),
            sensitive: 0,
            events: VecDeque::new(),
            expects: VecDeque::new(),
            caps: None,
            upgraded: false,
            authenticated: None,
            sasl: None,
            sasl_cancelled: None,
            deriving: false,
            tls_note: None,
            txs: VecDeque::new(),
            next_id: 0,
            failure: None,
            replies: None,
            received: 0,
        })
    }

    /// Starts keeping every reply with the stage it answered (for
    /// diagnostics; replies never contain our secrets).
    pub(crate) fn record_replies(&mut self) {
        self.replies.get_or_insert_with(Vec::new);
    }

    /// The replies recorded so far (see [`Session::record_replies`]).
    pub(crate) fn take_replies(&mut self) -> Vec<(Stage, Reply)> {
        self.replies.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Bytes to write to the server.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Whether there is output to write.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Marks `n` bytes of [`output`](Session::output) as written. While the
    /// output holds AUTH data, the bytes it no longer uses are overwritten
    /// with zeros: no copy of an AUTH line stays behind in the buffer.
    pub fn consume_output(&mut self, n: usize) {
        let n = n.min(self.out.len());
        if self.sensitive == 0 {
            self.out.drain(..n);
            return;
        }
        self.sensitive = self.sensitive.saturating_sub(n);
        let kept = drain_front_wiping(&mut self.out, n);
        self.out.truncate(kept);
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// What the session waits for.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Greeting => Phase::Greeting,
            State::Ehlo | State::Helo => Phase::Ehlo,
            State::StartTls => Phase::StartTls,
            State::TlsUpgrade => Phase::TlsHandshake,
            State::Auth => Phase::Auth,
            State::Closed | State::Failed => Phase::Idle,
            State::Ready | State::Quitting => match self.expects.front() {
                None => Phase::Idle,
                Some(Expect::EndOfData(_) | Expect::Bdat(_)) => Phase::FinalReply,
                Some(Expect::Quit) => Phase::Quit,
                Some(_) => Phase::Command,
            },
        }
    }

    /// Whether the session waits for bytes from the server (not while an
    /// [`Event::DeriveKey`] is being run: the server waits for us then).
    pub fn wants_read(&self) -> bool {
        !self.deriving && !matches!(self.phase(), Phase::Idle | Phase::TlsHandshake)
    }

    /// The server's capabilities from the latest EHLO (`None` before EHLO
    /// succeeded, and empty after a HELO fallback).
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.caps.as_ref()
    }

    /// Whether the stream is TLS (implicit, or upgraded with STARTTLS).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The mechanism used if AUTH succeeded.
    pub fn authenticated(&self) -> Option<Mechanism> {
        self.authenticated
    }

    /// Why an opportunistic STARTTLS did not happen, when it did not.
    pub fn tls_skipped_reason(&self) -> Option<&str> {
        self.tls_note.as_deref()
    }

    /// Whether the session is ready for AUTH, transactions, NOOP or QUIT.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Whether nothing is in flight: ready, no reply outstanding, no
    /// transaction queued.
    pub fn is_idle(&self) -> bool {
        self.state == State::Ready && self.expects.is_empty() && self.txs.is_empty()
    }

    /// Whether a new transaction may be started and none is unfinished: the
    /// session is ready and healthy. Unlike [`Session::is_idle`], a reply
    /// still awaited for an RSET after a failed transaction does not count.
    pub fn can_send(&self) -> bool {
        self.state == State::Ready && self.failure.is_none() && self.txs.is_empty()
    }

    /// Whether the session ended (closed after QUIT, or failed).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed | State::Failed)
    }

    /// The error that failed the session, if one did.
    pub fn failure(&self) -> Option<&SessionError> {
        self.failure.as_ref()
    }

    /// How many complete replies the session has read. The shell restarts
    /// a phase's timer when this changes: a reply that arrives in pieces,
    /// however slowly, never buys more time.
    pub fn replies_received(&self) -> u64 {
        self.received
    }

    /// Transactions accepted by [`send`](Session::send) and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.txs.len()
    }

    fn check_alive(&self) -> Result<(), SessionError> {
        match (&self.failure, self.state) {
            (Some(e), _) => Err(e.clone()),
            (None, State::Closed) => Err(SessionError::SessionClosed),
            _ => Ok(()),
        }
    }

    /// Hands bytes read from the server to the session and processes every
    /// complete reply. An error is fatal: the session stays failed, and
    /// every transaction in flight ends with an error event.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.check_alive()?;
        if self.state == State::TlsUpgrade && !bytes.is_empty() {
            return Err(self.fail(starttls_injection()));
        }
        self.parser.push(bytes);
        loop {
            if self.state == State::Closed {
                return Ok(());
            }
            let reply = match self.parser.next_reply() {
                Ok(Some(reply)) => reply,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let err = SessionError::Unreadable {
                        stage: self.current_stage(),
                        source: e,
                    };
                    return Err(self.fail(err));
                }
            };
            self.received += 1;
            if let Err(e) = self.on_reply(reply) {
                return Err(self.fail(e));
            }
            if self.state == State::TlsUpgrade && !self.parser.is_empty() {
                return Err(self.fail(starttls_injection()));
            }
        }
    }

    /// The server closed the connection. After QUIT this is the normal end;
    /// otherwise it fails the session (and everything in flight).
    pub fn receive_eof(&mut self) -> Result<(), SessionError> {
        self.check_alive()?;
        if self.state == State::Quitting && self.expects.front() == Some(&Expect::Quit) {
            self.expects.clear();
            self.state = State::Closed;
            self.events.push_back(Event::Closed);
            return Ok(());
        }
        let e = SessionError::Closed {
            stage: self.current_stage(),
        };
        Err(self.fail(e))
    }

    /// The shell's timer for the current [`phase`](Session::phase) expired.
    /// Fails the session (every transaction in flight ends with the error)
    /// and returns a timeout error naming the stage.
    pub fn timed_out(&mut self) -> SessionError {
        let e = SessionError::Timeout {
            stage: self.current_stage(),
        };
        self.fail_once(e)
    }

    /// A read or write on the connection failed. Fails the session and
    /// returns the error (an unexpected end of stream counts as the server
    /// closing the connection).
    pub fn io_failed(&mut self, error: std::io::Error) -> SessionError {
        let e = SessionError::Io {
            stage: self.current_stage(),
            source: Arc::new(error),
        };
        self.fail_once(e)
    }

    /// Fails the session with an error from the shell (TLS handshake failure
    /// and the like), as [`SessionError::Aborted`] with the
    /// current stage. The first failure is kept.
    pub(crate) fn abort(&mut self, cause: impl std::error::Error + Send + Sync + 'static) -> SessionError {
        let e = SessionError::Aborted {
            stage: self.current_stage(),
            source: Arc::new(cause),
        };
        self.fail_once(e)
    }

    /// Fails the session with `error`, unless it failed already: then the
    /// first failure is returned.
    fn fail_once(&mut self, error: SessionError) -> SessionError {
        if let Some(e) = &self.failure {
            return e.clone();
        }
        self.fail(error)
    }

    /// The stage of the reply the session waits for (for the shell's errors).
    pub fn current_stage(&self) -> Option<Stage> {
        Some(match self.state {
            State::Greeting => Stage::Greeting,
            State::Ehlo | State::Helo => Stage::Ehlo,
            State::StartTls => Stage::StartTls,
            State::TlsUpgrade => Stage::Tls,
            State::Auth => Stage::Auth,
            State::Closed | State::Failed => return None,
            State::Ready | State::Quitting => match self.expects.front()? {
                Expect::Mail(_) => Stage::Mail,
                Expect::Rcpt(_) => Stage::Rcpt,
                Expect::Data(_) => Stage::Data,
                Expect::EndOfData(_) | Expect::Bdat(_) => Stage::EndOfData,
                Expect::Rset => Stage::Rset,
                Expect::Noop => Stage::Noop,
                Expect::Quit => Stage::Quit,
            },
        })
    }

    fn fail(&mut self, error: SessionError) -> SessionError {
        self.state = State::Failed;
        self.expects.clear();
        self.sasl = None;
        self.deriving = false;
        for tx in self.txs.drain(..) {
            self.events.push_back(Event::Transaction(TransactionOutcome {
                id: tx.id,
                recipients: tx.replies,
                result: Err(error.clone()),
                body_sent: tx.body_written,
            }));
        }
        self.failure = Some(error.clone());
        error
    }

    /// Call after the TLS handshake that followed [`Event::StartTls`]
    /// succeeded. The capabilities are forgotten and EHLO is sent again.
    pub fn tls_established(&mut self) -> Result<(), SessionError> {
        self.check_alive()?;
        if self.state != State::TlsUpgrade {
            return Err(SessionError::Misuse(Misuse::NoPendingStartTls));
        }
        self.secure = true;
        self.upgraded = true;
        self.caps = None;
        self.state = State::Ehlo;
        self.write(Command::Ehlo(&self.config.helo_name.clone()))
    }

    fn write(&mut self, cmd: Command<'_>) -> Result<(), SessionError> {
        if self.sensitive == 0 {
            return cmd.encode(&mut self.out).map_err(|e| cmd_encode_error(&cmd, e));
        }
        // `out` holds AUTH data: encode apart and grow `out` without leaving
        // a copy in a freed allocation.
        let mut line = Vec::new();
        cmd.encode(&mut line).map_err(|e| cmd_encode_error(&cmd, e))?;
        append_wiping(&mut self.out, &line);
        Ok(())
    }

    /// Writes a command that carries AUTH data. The line is encoded into a
    /// zeroizing buffer sized beforehand (`payload` is the length of its
    /// argument), so neither it nor `out` reallocates while holding it.
    fn write_sensitive(&mut self, cmd: Command<'_>, payload: usize) -> Result<(), SessionError> {
        let mut line = Zeroizing::new(Vec::with_capacity(payload + SENSITIVE_LINE_OVERHEAD));
        cmd.encode(&mut line).map_err(|e| cmd_encode_error(&cmd, e))?;
        append_wiping(&mut self.out, &line);
        self.sensitive = self.out.len();
        Ok(())
    }

    /// Starts SMTP AUTH with a prepared SASL client. Refused (nothing sent)
    /// when the session is not ready, the server does not offer AUTH or this
    /// mechanism, or the connection is not encrypted and plain-text AUTH is
    /// not allowed.
    pub fn authenticate(&mut self, mut client: SaslClient) -> Result<(), SessionError> {
        self.check_alive()?;
        let mech = client.mechanism();
        if self.state != State::Ready || !self.expects.is_empty() || !self.txs.is_empty() {
            return Err(SessionError::Misuse(Misuse::AuthNotIdle));
        }
        if self.authenticated.is_some() {
            return Err(SessionError::Misuse(Misuse::AlreadyAuthenticated));
        }
        if !self.secure && !self.config.allow_plaintext_auth {
            return Err(SessionError::PlaintextAuthRefused);
        }
        let caps = self.caps.as_ref();
        if !caps.is_some_and(|c| c.supports(Extension::Auth)) {
            return Err(self.not_offered(Extension::Auth));
        }
        let offered = caps.map(|c| c.auth_mechanisms()).unwrap_or_default();
        if !offered.iter().any(|m| m.eq_ignore_ascii_case(mech.name())) {
            return Err(SessionError::MechanismNotOffered {
                mechanism: mech,
                offered: offered.to_vec(),
            });
        }
        let initial = client
            .initial_response()
            .map(|raw| auth::encode_initial_response(&raw));
        let initial = initial.as_deref().map(|v| v.as_slice());
        self.write_sensitive(
            Command::Auth {
                mechanism: mech.name(),
                initial,
            },
            initial.map_or(0, <[u8]>::len),
        )?;
        self.sasl = Some(client);
        self.state = State::Auth;
        Ok(())
    }

    /// Queues a transaction. Everything that can be checked before sending is
    /// checked here — addresses, parameters, the server's SIZE limit, the need
    /// for SMTPUTF8 or 8BITMIME — and a problem is returned without writing
    /// anything; the session stays usable.
    pub fn send(&mut self, tx: Transaction) -> Result<TxId, SessionError> {
        self.check_alive()?;
        if self.state != State::Ready {
            return Err(SessionError::Misuse(Misuse::SendNotReady));
        }
        let caps = self.caps.clone().unwrap_or_default();
        let Transaction {
            envelope,
            message,
            require_all_recipients,
        } = tx;
        if envelope.recipients.is_empty() {
            return Err(SessionError::NoRecipient);
        }
        let mut params = envelope.params.clone();
        let mut needs_utf8 = false;
        // The addresses are valid by type; the wire check still runs on what
        // will be written, and says whether it needs SMTPUTF8.
        let from = envelope.reverse_path();
        if !from.is_empty() {
            needs_utf8 |= mailbox(&from, Argument::ReversePath)?;
        }
        for r in &envelope.recipients {
            needs_utf8 |= mailbox(&r.address.to_smtp(), Argument::ForwardPath)?;
        }
        if needs_utf8 || params.smtputf8 {
            if !caps.supports(Extension::SmtpUtf8) {
                return Err(self.not_offered(Extension::SmtpUtf8));
            }
            params.smtputf8 = true;
        }
        let eight_bit = message.iter().any(|&b| b >= 0x80);
        if eight_bit && params.body.is_none() {
            if !caps.supports(Extension::EightBitMime) {
                return Err(self.not_offered(Extension::EightBitMime));
            }
            params.body = Some(BodyType::EightBitMime);
        }
        let mode = if self.config.chunking && caps.supports(Extension::Chunking) {
            BodyMode::Bdat
        } else {
            if params.body == Some(BodyType::BinaryMime) {
                return Err(self.not_offered(Extension::Chunking));
            }
            BodyMode::Data
        };
        if params.body == Some(BodyType::BinaryMime) && !caps.supports(Extension::BinaryMime) {
            return Err(self.not_offered(Extension::BinaryMime));
        }
        if params.requiretls && !(caps.supports(Extension::RequireTls) && self.secure) {
            return Err(self.not_offered(Extension::RequireTls));
        }
        let mut recipients = envelope.recipients;
        // The caller's own parameters are validated as given, before any is
        // dropped: a malformed ORCPT or ENVID is an error whether or not this
        // server would have seen it.
        encode_envelope(&from, &params, &recipients)?;
        if !caps.supports(Extension::Dsn) {
            params.ret = None;
            params.envid = None;
            for r in &mut recipients {
                r.params = RcptParams::default();
            }
        }
        let size = data::normalized_len(&message);
        if caps.supports(Extension::Size) {
            if let Some(limit) = caps.size_limit() {
                if size > limit {
                    return Err(SessionError::TooLarge { size, limit });
                }
            }
            params.size = Some(size);
        } else {
            params.size = None;
        }
        // Encode every command once now, so that no argument can fail later
        // with half a transaction on the wire.
        encode_envelope(&from, &params, &recipients)?;
        let id = TxId(self.next_id);
        self.next_id += 1;
        let replies = recipients
            .iter()
            .map(|r| RecipientReply {
                address: r.address.clone(),
                reply: None,
            })
            .collect();
        self.txs.push_back(Tx {
            id,
            from,
            params,
            recipients,
            replies,
            message,
            require_all: require_all_recipients,
            mode,
            mail_written: false,
            rcpts_written: 0,
            data_written: false,
            body_written: false,
            mail_reply: None,
            failure: None,
        });
        self.pump()?;
        Ok(id)
    }

    /// Sends NOOP (to probe an idle connection); answered by [`Event::Noop`].
    pub fn noop(&mut self) -> Result<(), SessionError> {
        self.check_alive()?;
        if self.state != State::Ready {
            return Err(SessionError::Misuse(Misuse::NoopNotReady));
        }
        self.write(Command::Noop)?;
        self.expects.push_back(Expect::Noop);
        Ok(())
    }

    /// Sends QUIT after anything already queued. [`Event::Closed`] follows
    /// the server's reply (or its closing the connection).
    pub fn quit(&mut self) -> Result<(), SessionError> {
        self.check_alive()?;
        match self.state {
            State::Ready => {}
            State::Quitting => return Ok(()),
            _ => return Err(SessionError::Misuse(Misuse::QuitNotReady)),
        }
        if !self.txs.is_empty() {
            return Err(SessionError::Misuse(Misuse::QuitWithTransactions));
        }
        self.write(Command::Quit)?;
        self.expects.push_back(Expect::Quit);
        self.state = State::Quitting;
        Ok(())
    }

    /// The error for an extension the server does not offer.
    fn not_offered(&self, extension: Extension) -> SessionError {
        SessionError::NotOffered {
            extension,
            secure: self.secure,
        }
    }

    fn can_write_command(&self) -> bool {
        self.pipelining() || self.expects.is_empty()
    }

    fn pipelining(&self) -> bool {
        self.config.pipelining
            && self
                .caps
                .as_ref()
                .is_some_and(|c| c.supports(Extension::Pipelining))
    }

    /// Writes whatever the queued transactions allow now.
    fn pump(&mut self) -> Result<(), SessionError> {
        while self.state == State::Ready {
            // The transaction whose commands or body are still to be written.
            let Some(idx) = self.txs.iter().position(|t| !t.body_written) else {
                return Ok(());
            };
            // BDAT ends a transaction only with its final reply (RFC 3030 does
            // not say a failed BDAT LAST closes it), so the next MAIL waits.
            if idx > 0 && self.txs[idx - 1].mode == BodyMode::Bdat {
                return Ok(());
            }
            let pipelining = self.pipelining();
            let can_write = self.can_write_command();
            let tx = &self.txs[idx];
            let id = tx.id;
            if !tx.mail_written {
                if !can_write {
                    return Ok(());
                }
                let (from, params) = (tx.from.clone(), tx.params.clone());
                self.write(Command::Mail {
                    from: &from,
                    params: &params,
                })?;
                self.txs[idx].mail_written = true;
                self.expects.push_back(Expect::Mail(id));
                continue;
            }
            if tx.rcpts_written < tx.recipients.len() {
                if !can_write || tx.failure.is_some() {
                    return Ok(());
                }
                let r = tx.recipients[tx.rcpts_written].clone();
                self.write(Command::Rcpt {
                    to: &r.address.to_smtp(),
                    params: &r.params,
                })?;
                self.txs[idx].rcpts_written += 1;
                self.expects.push_back(Expect::Rcpt(id));
                continue;
            }
            if tx.data_written {
                // Waiting for 354 before the body.
                return Ok(());
            }
            let all_replies_in = tx.mail_reply.is_some() && tx.rcpt_replies() == tx.recipients.len();
            let must_wait = tx.require_all || !pipelining;
            if must_wait && !all_replies_in {
                return Ok(());
            }
            if all_replies_in || tx.failure.is_some() {
                if let Some(abort) = self.verdict_before_data(idx) {
                    self.finish_tx(idx, Err(abort))?;
                    continue;
                }
            }
            if !can_write {
                return Ok(());
            }
            match tx.mode {
                BodyMode::Data => {
                    self.write(Command::Data)?;
                    self.txs[idx].data_written = true;
                    self.expects.push_back(Expect::Data(id));
                }
                BodyMode::Bdat => {
                    let normalized = data::normalize(&self.txs[idx].message);
                    data::frame_chunk(&normalized, true, &mut self.out);
                    let tx = &mut self.txs[idx];
                    tx.data_written = true;
                    tx.body_written = true;
                    self.expects.push_back(Expect::Bdat(id));
                }
            }
        }
        Ok(())
    }

    /// Once MAIL and every RCPT are answered: the error that ends the
    /// transaction before DATA, if any.
    fn verdict_before_data(&self, idx: usize) -> Option<SessionError> {
        let tx = &self.txs[idx];
        if let Some(e) = &tx.failure {
            return Some(e.clone());
        }
        let accepted = tx.accepted();
        if accepted == 0 || (tx.require_all && accepted < tx.recipients.len()) {
            return Some(tx.recipients_error());
        }
        None
    }

    /// Ends transaction `idx`, sending RSET when the server may still hold
    /// an open transaction for it.
    fn finish_tx(&mut self, idx: usize, result: Result<Reply, SessionError>) -> Result<(), SessionError> {
        let Some(tx) = self.txs.remove(idx) else {
            return Ok(());
        };
        let needs_rset = result.is_err() && tx.mail_accepted() && tx.mode == BodyMode::Bdat
            || result.is_err() && tx.mail_accepted() && !tx.body_written;
        self.events.push_back(Event::Transaction(TransactionOutcome {
            id: tx.id,
            recipients: tx.replies,
            result,
            body_sent: false,
        }));
        if needs_rset && self.state == State::Ready {
            self.write(Command::Rset)?;
            self.expects.push_back(Expect::Rset);
        }
        Ok(())
    }

    fn tx_index(&self, id: TxId) -> Result<usize, SessionError> {
        self.txs
            .iter()
            .position(|t| t.id == id)
            .ok_or(SessionError::Protocol {
                stage: None,
                violation: Violation::ReplyForFinishedTransaction,
                reply: None,
            })
    }

    fn on_reply(&mut self, reply: Reply) -> Result<(), SessionError> {
        if self.replies.is_some() {
            let stage = self.current_stage();
            if let (Some(log), Some(stage)) = (self.replies.as_mut(), stage) {
                log.push((stage, reply.clone()));
            }
        }
        // 421: the server is closing the channel, whatever we asked.
        if reply.code().value() == 421 && self.state != State::Quitting {
            let stage = self.current_stage();
            return Err(SessionError::Closing {
                stage: stage.unwrap_or(Stage::Greeting),
                reply,
            });
        }
        match self.state {
            State::Greeting => self.on_greeting(reply),
            State::Ehlo => self.on_ehlo(reply),
            State::Helo => self.on_helo(reply),
            State::StartTls => self.on_starttls(reply),
            State::Auth => self.on_auth(reply),
            State::Ready | State::Quitting => self.on_pipeline_reply(reply),
            State::TlsUpgrade => Err(starttls_injection()),
            State::Closed | State::Failed => Err(SessionError::Protocol {
                stage: None,
                violation: Violation::ReplyAfterEnd,
                reply: None,
            }),
        }
    }

    fn on_greeting(&mut self, reply: Reply) -> Result<(), SessionError> {
        if reply.code().value() != 220 {
            return Err(SessionError::Refused {
                stage: Stage::Greeting,
                reply,
            });
        }
        self.state = State::Ehlo;
        self.write(Command::Ehlo(&self.config.helo_name.clone()))
    }

    fn on_ehlo(&mut self, reply: Reply) -> Result<(), SessionError> {
        if reply.is_positive() {
            self.caps = Some(Capabilities::from_ehlo(&reply));
            return self.after_hello();
        }
        let fallback = self.config.allow_helo_fallback
            && !self.upgraded
            && self.config.starttls != StartTlsPolicy::Required
            && reply.is_permanent();
        if fallback {
            self.state = State::Helo;
            return self.write(Command::Helo(&self.config.helo_name.clone()));
        }
        Err(SessionError::Refused {
            stage: Stage::Ehlo,
            reply,
        })
    }

    fn on_helo(&mut self, reply: Reply) -> Result<(), SessionError> {
        if !reply.is_positive() {
            return Err(SessionError::HeloRefused { reply });
        }
        self.caps = Some(Capabilities::default());
        self.after_hello()
    }

    fn after_hello(&mut self) -> Result<(), SessionError> {
        let wants_tls = !self.secure && self.config.starttls != StartTlsPolicy::Never;
        if !wants_tls {
            return self.become_ready();
        }
        let offered = self
            .caps
            .as_ref()
            .is_some_and(|c| c.supports(Extension::StartTls));
        if offered {
            self.state = State::StartTls;
            return self.write(Command::StartTls);
        }
        if self.config.starttls == StartTlsPolicy::Required {
            return Err(self.not_offered(Extension::StartTls));
        }
        self.tls_note = Some("the server does not offer STARTTLS".into());
        self.become_ready()
    }

    fn become_ready(&mut self) -> Result<(), SessionError> {
        self.state = State::Ready;
        self.events.push_back(Event::Ready);
        Ok(())
    }

    fn on_starttls(&mut self, reply: Reply) -> Result<(), SessionError> {
        if reply.code().value() == 220 {
            // RFC 3207 §6: nothing may follow the 220 before the handshake;
            // `receive` checks the parser for leftover bytes.
            self.state = State::TlsUpgrade;
            self.events.push_back(Event::StartTls);
            return Ok(());
        }
        if self.config.starttls == StartTlsPolicy::Required {
            return Err(SessionError::StartTlsRefused { reply });
        }
        self.tls_note = Some(format!("the server refused STARTTLS: {reply}"));
        self.become_ready()
    }

    fn on_auth(&mut self, reply: Reply) -> Result<(), SessionError> {
        let Some(client) = self.sasl.as_mut() else {
            return Err(SessionError::Protocol {
                stage: Some(Stage::Auth),
                violation: Violation::AuthReplyWithoutExchange,
                reply: None,
            });
        };
        let mech = client.mechanism();
        if let Some(err) = self.sasl_cancelled.take() {
            // The server answered our "*": the exchange is over.
            self.sasl = None;
            self.state = State::Ready;
            self.events.push_back(Event::Authenticated(Err(err)));
            return Ok(());
        }
        if self.deriving {
            return Err(SessionError::Protocol {
                stage: Some(Stage::Auth),
                violation: Violation::AuthReplyBeforeResponse,
                reply: Some(reply),
            });
        }
        match reply.code().value() {
            334 => {
                let step = auth::decode_challenge(&reply.text()).and_then(|c| client.step(&c));
                match step {
                    Ok(Step::Derive(derivation)) if self.config.offload_key_derivation => {
                        self.deriving = true;
                        self.events.push_back(Event::DeriveKey(derivation));
                        Ok(())
                    }
                    Ok(Step::Derive(derivation)) => {
                        let response = client.resume(derivation.run());
                        self.answer_challenge(mech, response)
                    }
                    Ok(Step::Respond(response)) => self.answer_challenge(mech, Ok(response)),
                    Err(e) => self.answer_challenge(mech, Err(e)),
                }
            }
            235 => {
                let finished = client.finish();
                self.sasl = None;
                if let Err(e) = finished {
                    // The server claims success without proving it knows the
                    // password: do not trust this connection.
                    return Err(SessionError::AuthUnverified {
                        mechanism: mech,
                        source: e,
                    });
                }
                self.authenticated = Some(mech);
                self.state = State::Ready;
                self.events.push_back(Event::Authenticated(Ok(mech)));
                Ok(())
            }
            _ if !reply.is_intermediate() => {
                let detail = client.server_error().map(str::to_owned);
                self.sasl = None;
                self.state = State::Ready;
                let e = SessionError::AuthRejected {
                    mechanism: mech,
                    reply,
                    detail,
                };
                self.events.push_back(Event::Authenticated(Err(e)));
                Ok(())
            }
            _ => Err(SessionError::Protocol {
                stage: Some(Stage::Auth),
                violation: Violation::UnexpectedAuthReply,
                reply: Some(reply),
            }),
        }
    }

    /// Sends the response to a `334` challenge, or, when the mechanism
    /// refused the challenge, cancels the exchange with `*` (never a partial
    /// response).
    fn answer_challenge(
        &mut self,
        mech: Mechanism,
        response: Result<Zeroizing<Vec<u8>>, SaslError>,
    ) -> Result<(), SessionError> {
        match response {
            Ok(raw) => {
                let b64 = auth::encode_continuation(&raw);
                self.write_sensitive(Command::AuthResponse(&b64), b64.len())
            }
            Err(e) => {
                self.sasl_cancelled = Some(SessionError::AuthFailed {
                    mechanism: mech,
                    source: e,
                });
                self.write(Command::AuthCancel)
            }
        }
    }

    /// Call with the result of the [`KeyDerivation`] of an
    /// [`Event::DeriveKey`]: the session answers the server's challenge.
    pub fn key_derived(&mut self, key: DerivedKey) -> Result<(), SessionError> {
        self.check_alive()?;
        let client = match self.sasl.as_mut() {
            Some(client) if self.deriving => client,
            _ => return Err(SessionError::Misuse(Misuse::NoPendingKeyDerivation)),
        };
        self.deriving = false;
        let mech = client.mechanism();
        let response = client.resume(key);
        self.answer_challenge(mech, response)
    }

    fn on_pipeline_reply(&mut self, reply: Reply) -> Result<(), SessionError> {
        let Some(expect) = self.expects.pop_front() else {
            return Err(SessionError::Protocol {
                stage: self.current_stage(),
                violation: Violation::UnrequestedReply,
                reply: Some(reply),
            });
        };
        match expect {
            Expect::Mail(id) => {
                let idx = self.tx_index(id)?;
                let tx = &mut self.txs[idx];
                if !reply.is_positive() {
                    tx.failure = Some(SessionError::Refused {
                        stage: Stage::Mail,
                        reply: reply.clone(),
                    });
                }
                tx.mail_reply = Some(reply);
                self.settle(idx)?;
            }
            Expect::Rcpt(id) => {
                let idx = self.tx_index(id)?;
                let tx = &mut self.txs[idx];
                let n = tx.rcpt_replies();
                if let Some(slot) = tx.replies.get_mut(n) {
                    slot.reply = Some(reply);
                }
                self.settle(idx)?;
            }
            Expect::Data(id) => {
                let idx = self.tx_index(id)?;
                if reply.code().value() == 354 {
                    let tx = &mut self.txs[idx];
                    tx.body_written = true;
                    if tx.failure.is_some() || tx.accepted() == 0 {
                        // The server took DATA though nothing can be delivered:
                        // end it with an empty message, report the refusal.
                        self.out.extend_from_slice(b".\r\n");
                    } else {
                        DataEncoder::encode_all(&tx.message, &mut self.out);
                    }
                    self.expects.push_back(Expect::EndOfData(id));
                } else {
                    let err = match self.verdict_before_data(idx) {
                        Some(e) => e,
                        None if reply.is_intermediate() => {
                            return Err(SessionError::Protocol {
                                stage: Some(Stage::Data),
                                violation: Violation::UnexpectedDataReply,
                                reply: Some(reply),
                            })
                        }
                        None => SessionError::Refused {
                            stage: Stage::Data,
                            reply,
                        },
                    };
                    self.finish_tx(idx, Err(err))?;
                }
            }
            Expect::EndOfData(id) | Expect::Bdat(id) => {
                let idx = self.tx_index(id)?;
                let result = match self.verdict_before_data(idx) {
                    Some(e) => Err(e),
                    None if reply.is_positive() => Ok(reply),
                    None if reply.is_intermediate() => {
                        return Err(SessionError::Protocol {
                            stage: Some(Stage::EndOfData),
                            violation: Violation::UnexpectedFinalReply,
                            reply: Some(reply),
                        })
                    }
                    None => Err(SessionError::Refused {
                        stage: Stage::EndOfData,
                        reply,
                    }),
                };
                self.finish_tx(idx, result)?;
            }
            Expect::Rset => {
                if !reply.is_positive() {
                    return Err(SessionError::Protocol {
                        stage: Some(Stage::Rset),
                        violation: Violation::RsetFailed,
                        reply: Some(reply),
                    });
                }
            }
            Expect::Noop => {
                if !reply.is_positive() {
                    return Err(SessionError::Refused {
                        stage: Stage::Noop,
                        reply,
                    });
                }
                self.events.push_back(Event::Noop);
            }
            Expect::Quit => {
                self.expects.clear();
                self.state = State::Closed;
                self.events.push_back(Event::Closed);
                return Ok(());
            }
        }
        self.pump()
    }

    /// After a MAIL or RCPT reply: ends the transaction early when it can no
    /// longer succeed and nothing else of it is awaited.
    fn settle(&mut self, idx: usize) -> Result<(), SessionError> {
        let tx = &self.txs[idx];
        let id = tx.id;
        let awaiting = self.expects.iter().any(|e| match e {
            Expect::Mail(t) | Expect::Rcpt(t) | Expect::Data(t) | Expect::EndOfData(t) | Expect::Bdat(t) => {
                *t == id
            }
            _ => false,
        });
        // Without pipelining a refused MAIL ends the transaction at once.
        if !awaiting && tx.failure.is_some() && !tx.data_written {
            let e = tx.failure.clone();
            if let Some(e) = e {
                return self.finish_tx(idx, Err(e));
            }
        }
        Ok(())
    }
}

impl Envelope {
    /// Checks the envelope as [`Session::send`] will: at least one recipient,
    /// and MAIL FROM and every RCPT TO (with their parameters) encodable —
    /// no control bytes, angle brackets or stray spaces. Lets a queue refuse
    /// a bad envelope when it is handed over rather than when its turn comes.
    pub fn validate(&self) -> Result<(), SessionError> {
        if self.recipients.is_empty() {
            return Err(SessionError::NoRecipient);
        }
        encode_envelope(&self.reverse_path(), &self.params, &self.recipients)
    }
}

/// Encodes MAIL FROM and every RCPT TO into scratch space: the check that
/// no argument can fail once the transaction has started on the wire.
fn encode_envelope(from: &str, params: &MailParams, recipients: &[Recipient]) -> Result<(), SessionError> {
    let mut scratch = Vec::new();
    Command::Mail { from, params }
        .encode(&mut scratch)
        .map_err(cmd_error)?;
    for r in recipients {
        scratch.clear();
        Command::Rcpt {
            to: &r.address.to_smtp(),
            params: &r.params,
        }
        .encode(&mut scratch)
        .map_err(cmd_error)?;
    }
    Ok(())
}

fn mailbox(addr: &str, argument: Argument) -> Result<bool, SessionError> {
    check_mailbox(addr, argument)
        .map(|info| info.needs_smtputf8)
        .map_err(cmd_error)
}

/// Room in a sensitive line beyond its argument: `AUTH `, the mechanism
/// name (at most 20 characters, RFC 4422), a space and CRLF.
const SENSITIVE_LINE_OVERHEAD: usize = 32;

fn cmd_encode_error(cmd: &Command<'_>, e: super::command::CommandError) -> SessionError {
    SessionError::Unencodable {
        verb: cmd.verb(),
        source: e,
    }
}

/// Removes the first `n` bytes of `buf` the wiping way: moves the rest to
/// the front, overwrites every byte after it (the consumed bytes and the
/// stale copies the move left) with zeros, and returns the new length. The
/// caller truncates to it; the bytes past it are all zero then.
fn drain_front_wiping(buf: &mut [u8], n: usize) -> usize {
    let n = n.min(buf.len());
    buf.copy_within(n.., 0);
    let kept = buf.len() - n;
    buf[kept..].zeroize();
    kept
}

/// Appends `bytes` to `buf`. When `buf` must grow, its contents move to a
/// new allocation and the old one is wiped (the whole capacity, by
/// `zeroize`) before it is freed, where `Vec`'s own growth would free it
/// as is.
fn append_wiping(buf: &mut Vec<u8>, bytes: &[u8]) {
    if buf.capacity() - buf.len() < bytes.len() {
        let needed = buf.len() + bytes.len();
        let mut grown = Vec::with_capacity(needed.max(2 * buf.capacity()));
        grown.extend_from_slice(buf);
        buf.zeroize();
        *buf = grown;
    }
    buf.extend_from_slice(bytes);
}

fn cmd_error(e: super::command::CommandError) -> SessionError {
    SessionError::InvalidEnvelope(e)
}

fn starttls_injection() -> SessionError {
    SessionError::StartTlsInjection
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::auth::Credential;

    const AUTH_LINE: &[u8] = b"AUTH PLAIN AHVzZXIAczNjcjN0\r\n";

    #[test]
    fn drain_front_wiping_leaves_only_zeros_behind() {
        let mut buf = [AUTH_LINE, b"*\r\n"].concat();
        let old_len = buf.len();
        // A partial write: part of the AUTH line is still to be sent.
        let kept = drain_front_wiping(&mut buf, 7);
        assert_eq!(buf.len(), old_len, "the helper leaves truncating to the caller");
        assert_eq!(&buf[..kept], &[&AUTH_LINE[7..], b"*\r\n"].concat()[..]);
        assert!(buf[kept..].iter().all(|&b| b == 0), "{buf:?}");
        // Then the rest: nothing of the line is left anywhere.
        buf.truncate(kept);
        let kept = drain_front_wiping(&mut buf, kept);
        assert_eq!(kept, 0);
        assert!(buf.iter().all(|&b| b == 0), "{buf:?}");
        // More than the length is the whole buffer.
        let mut buf = AUTH_LINE.to_vec();
        assert_eq!(drain_front_wiping(&mut buf, 1000), 0);
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn append_wiping_keeps_contents_when_it_grows() {
        let mut buf = Vec::with_capacity(4);
        append_wiping(&mut buf, b"AUTH");
        assert_eq!(buf.capacity(), 4, "no growth while it fits");
        append_wiping(&mut buf, b" PLAIN x\r\n");
        assert_eq!(buf, b"AUTH PLAIN x\r\n");
        assert!(buf.capacity() >= 14);
        append_wiping(&mut buf, b"");
        assert_eq!(buf, b"AUTH PLAIN x\r\n");
    }

    fn ready_for_plain_auth() -> Session {
        let mut config = SessionConfig::new("client.example.com");
        config.implicit_tls = true;
        let mut s = Session::new(config).expect("config");
        s.receive(b"220 mx ESMTP\r\n").expect("greeting");
        s.consume_output(s.output().len());
        s.receive(b"250-mx\r\n250 AUTH PLAIN\r\n").expect("ehlo");
        assert!(matches!(s.poll_event(), Some(Event::Ready)));
        s
    }

    #[test]
    fn consume_output_of_an_auth_line_in_pieces() {
        let mut s = ready_for_plain_auth();
        let credential = Credential::Password {
            username: "user".into(),
            password: "s3cr3t".to_owned().into(),
        };
        let client = SaslClient::new(Mechanism::Plain, &credential, "").expect("client");
        s.authenticate(client).expect("auth");
        assert_eq!(s.output(), AUTH_LINE);
        assert_eq!(s.sensitive, AUTH_LINE.len());
        s.consume_output(5);
        assert_eq!(s.output(), &AUTH_LINE[5..]);
        assert_eq!(s.sensitive, AUTH_LINE.len() - 5);
        s.consume_output(usize::MAX);
        assert!(!s.wants_write());
        assert_eq!(s.sensitive, 0);
        // Plain output drains as before once the secret is gone.
        s.receive(b"235 2.7.0 ok\r\n").expect("235");
        s.noop().expect("noop");
        assert_eq!(s.output(), b"NOOP\r\n");
        s.consume_output(2);
        assert_eq!(s.output(), b"OP\r\n");
    }
}
