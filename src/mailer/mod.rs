//! [`Mailer`]: what applications hold. Cheap to clone, shared across tasks,
//! it sends through a pool of connections built from one [`SmtpSettings`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), relaymail::Error> {
//! use relaymail::{Envelope, Mailer, Message, SmtpSettings, TlsMode};
//!
//! let settings = SmtpSettings::builder()
//!     .host("smtp.example.com")
//!     .tls(TlsMode::StartTls)
//!     .sender("noreply@example.com")
//!     .credentials("noreply@example.com", "app-password")
//!     .build()?;
//! let mailer = Mailer::builder(settings).max_connections(4).build()?;
//! let envelope = Envelope::new(Some("noreply@example.com".parse()?), vec!["user@example.net".parse()?])?;
//! let receipt = mailer
//!     .send(Message::new(envelope, &b"Subject: Reset your password\r\n\r\nFollow the link.\r\n"[..]))
//!     .await?;
//! println!("{} (after {} attempt(s))", receipt.reply(), receipt.attempts());
//! mailer.shutdown(std::time::Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```
//!
//! # Behaviour
//!
//! - **Connections**: at most `max_connections` open at once — a hard cap on
//!   all connections, busy or idle. Each carries at most
//!   [`SmtpSettings::max_deliveries_per_connection`] transactions (default
//!   20; after a reload, the new settings' value) and lives at
//!   most `max_connection_age`; then it QUITs and a new one is opened. Idle
//!   connections close after `idle_timeout`. A connection that sat idle
//!   longer than `probe_after_idle` is probed with NOOP before use — never a
//!   NOOP per message. A connection that timed out, lost sync or got a 421
//!   is dropped, never reused.
//! - **Pipelining**: a connection takes a batch of waiting messages and
//!   writes the next transaction's commands right behind the previous
//!   message (RFC 2920 §3.1); BDAT is used where CHUNKING is offered.
//! - **Retries** follow [`RetryPolicy`]: transient failures (4yz, connection
//!   failures, timeouts) are retried with exponential back-off and jitter on a
//!   new connection; permanent ones (5yz) are not. Recipients refused with a
//!   4yz while others were accepted are retried alone. A connection lost after
//!   the body was sent is retried by default (**at-least-once**: a recipient
//!   may receive such a message twice).
//! - **Back-pressure**: the queue holds at most `queue_capacity` messages;
//!   [`Mailer::send`] and [`Mailer::submit`] wait for room,
//!   [`Mailer::try_send`] hands the message back.
//! - **Rate limit** (optional): at most N messages per interval across the
//!   pool, from the first message on.
//! - **Reload**: [`Mailer::reload`] switches new transactions to new settings
//!   without a restart; idle connections of the old settings close, busy ones
//!   finish their messages first.
//! - **Redirect**: with a [`Redirect`] switched on in the settings
//!   ([`SmtpSettingsBuilder::redirect`](crate::SmtpSettingsBuilder::redirect)),
//!   every message goes only to the enabled report addresses; the original
//!   recipients are kept in an `X-Relaymail-Original-Recipients` header.
//! - **Policies from the settings**: the redirect, the
//!   [`AddressPolicy`](crate::AddressPolicy) and the
//!   [`AttachmentLimit`](crate::settings::AttachmentLimit) are read from the
//!   current settings for each message handed over, so a reload (or a
//!   saved profile the mailer follows) changes them. Attachments sent as
//!   links go to the application's store
//!   ([`MailerBuilder::attachment_store`]).
//! - **DKIM** (feature `dkim`): with `SmtpSettingsBuilder::dkim`
//!   set, each message is signed once when it is handed over (after a
//!   redirect, before the first attempt; retries resend the same bytes).
//!   A message that cannot be signed (no `From` field) is refused with a
//!   config error, nothing sent. Outbox drafts are stored unsigned and
//!   signed when delivered, with the settings in force then.
//! - **Shutdown**: [`Mailer::shutdown`] stops accepting, delivers what is
//!   queued until its deadline, fails the rest with
//!   [`Error::is_shutdown`], and QUITs every connection.

mod deliver;
mod health;
mod limit;
mod local;
mod pool;
mod retry;
#[cfg(test)]
mod tests;
mod trace;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;

/// Redirect to report addresses is a setting now
/// ([`SmtpSettingsBuilder::redirect`](crate::SmtpSettingsBuilder::redirect)); re-exported here
/// where it has always been.
pub use crate::settings::{Redirect, ReportAddress};
pub use health::RelayDownPolicy;
pub use limit::RateLimit;
pub use retry::RetryPolicy;

use crate::address::Address;
use crate::dev::Destination;
use crate::email::{AttachmentPolicy, AttachmentStore, Composer, Email, OverLimit};
use crate::error::Error;
use crate::message::Message;
use crate::outbox::{DraftId, Outbox, OutboxPolicy};
use crate::proto::reply::Reply;
use crate::proto::session::{Envelope, RecipientReply, TxId};
use crate::settings::{Relay, SmtpSettings};
use crate::transport::{Connection, Connector, Delivery};
use deliver::Verdict;
use local::LocalConn;
use pool::{Job, Pool, PoolConfig};

/// The longest duration a mailer setting takes: longer ones are refused by
/// [`MailerBuilder::build`] (they would overflow the clock, or mean "never").
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The most messages a [`RateLimit`] window may allow.
const MAX_RATE_MESSAGES: u32 = 1_000_000;

/// The header that keeps the original recipients of a redirected message.
pub const ORIGINAL_RECIPIENTS_HEADER: &str = "X-Relaymail-Original-Recipients";

/// The result of a delivered message: the [`Delivery`] it came to (over
/// every attempt) and how it got there.
#[derive(Clone, Debug)]
pub struct Receipt {
    delivery: Delivery,
    attempts: u32,
    possibly_duplicated: bool,
}

impl Receipt {
    /// The outcome: every recipient with the server's last answer for it,
    /// in the order of the envelope, and the final reply.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Every recipient with the server's last answer for it, in the order of
    /// the envelope ([`Delivery::recipients`]).
    pub fn recipients(&self) -> &[RecipientReply] {
        self.delivery.recipients()
    }

    /// The recipients that accepted the message ([`Delivery::accepted`]).
    pub fn accepted(&self) -> impl Iterator<Item = &Address> {
        self.delivery.accepted()
    }

    /// The recipients that did not, with the server's reply when there was
    /// one ([`Delivery::refused`]).
    pub fn refused(&self) -> impl Iterator<Item = (&Address, Option<&Reply>)> {
        self.delivery.refused()
    }

    /// The server's final reply to the (last) transaction, usually naming
    /// its queue id ([`Delivery::reply`]).
    pub fn reply(&self) -> &Reply {
        self.delivery.reply()
    }

    /// How many attempts it took (1 = first time).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether a recipient may have received this message more than once:
    /// an earlier attempt failed after the whole body was sent (the final
    /// reply timed out, or the connection was lost before it), so the
    /// server may have accepted that copy too. Only possible with
    /// [`RetryPolicy::retry_after_body_sent`] on (at-least-once, the
    /// default); see [`Stats::possibly_duplicated`].
    pub fn possibly_duplicated(&self) -> bool {
        self.possibly_duplicated
    }
}

/// A snapshot of the mailer's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Messages waiting in the queue.
    pub queued: usize,
    /// Messages being sent on a connection.
    pub in_flight: usize,
    /// Messages waiting out a retry back-off.
    pub deferred: usize,
    /// Messages accepted into the queue since the start.
    pub offered: u64,
    /// Messages delivered to at least one recipient.
    pub delivered: u64,
    /// Messages that failed for good (including those failed at shutdown).
    pub failed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Messages delivered after an earlier attempt had failed once the whole
    /// body was sent: each may have reached its recipients twice (see
    /// [`Receipt::possibly_duplicated`]).
    pub possibly_duplicated: u64,
    /// Operations of the background outbox deliverer that failed: claiming
    /// due drafts, looking for the next due one, recording an attempt's
    /// outcome (a broken disk, an unreachable database). Each also emits a
    /// `tracing` event (feature `tracing`). The deliverer keeps going and
    /// waits the policy's `poll_interval` before it claims again; a draft
    /// whose outcome could not be recorded stays where it was and is
    /// delivered again (at-least-once).
    pub outbox_errors: u64,
    /// Outbox drafts that waited on the settings
    /// ([`DraftInfo::waiting_on_settings`](crate::outbox::DraftInfo::waiting_on_settings))
    /// and were made due by the release that follows each
    /// [`Mailer::reload`] or [`Mailer::reload_and_release`] of this mailer,
    /// in total.
    pub released_on_reload: u64,
    /// Connections open now.
    pub connections_open: usize,
    /// Connections opened since the start.
    pub connections_opened: u64,
    /// For closed connections: (transactions carried, how many connections
    /// carried that many), ascending.
    pub deliveries_per_connection: Vec<(usize, u64)>,
    /// Messages failed at once, without an attempt of their own, because
    /// the relay was marked down (see [`RelayDownPolicy`]); counted in
    /// `failed` too.
    pub failed_fast: u64,
    /// Messages delivered by each relay: the primary, and any backup that
    /// carried messages while the primary could not be reached.
    pub delivered_by_relay: Vec<(Relay, u64)>,
}

/// A message in the mailer's hands; await it for the outcome.
///
/// With a [send timeout](MailerBuilder::send_timeout), the outcome comes by
/// that deadline: a timeout error whose [stage](Error::stage) says where the
/// message was ([`Stage::Queue`](crate::Stage::Queue) when it never reached
/// a connection, which also means it will not be sent).
#[derive(Debug)]
pub struct Pending {
    rx: oneshot::Receiver<Result<Receipt, Error>>,
    expiry: Option<PendingExpiry>,
}

#[derive(Debug)]
struct PendingExpiry {
    shared: Arc<pool::Expiry>,
    timer: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl Pending {
    fn new(
        rx: oneshot::Receiver<Result<Receipt, Error>>,
        expiry: Option<(Arc<pool::Expiry>, Duration)>,
    ) -> Pending {
        Pending {
            rx,
            expiry: expiry.map(|(shared, timeout)| PendingExpiry {
                timer: Box::pin(tokio::time::sleep_until(shared.at)),
                shared,
                timeout,
            }),
        }
    }
}

impl Future for Pending {
    type Output = Result<Receipt, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(r) = Pin::new(&mut self.rx).poll(cx) {
            return Poll::Ready(r.unwrap_or_else(|_| Err(pool::shutdown_error())));
        }
        if let Some(expiry) = self.expiry.as_mut() {
            if expiry.timer.as_mut().poll(cx).is_ready() {
                if expiry.shared.give_up() {
                    // Not on a connection: it never will be.
                    let timeout = expiry.timeout;
                    return Poll::Ready(Err(pool::queue_timeout(timeout)));
                }
                // On a connection whose deadline is this one: the worker
                // answers with the stage it reached.
                self.expiry = None;
            }
        }
        Poll::Pending
    }
}

/// [`Mailer::try_send`] could not take the message; it is handed back.
#[derive(Debug)]
pub struct TrySendError {
    error: Error,
    message: Message,
}

impl TrySendError {
    /// Why: [`Error::is_full`], [`Error::is_shutdown`], or a config error
    /// (bad envelope, redirect without address).
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The message, untouched.
    pub fn into_message(self) -> Message {
        self.message
    }
}

impl std::fmt::Display for TrySendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for TrySendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Opens connections for the pool: SMTP [`Connection`]s to the relay, or
/// local ones to a file or memory destination.
struct SmtpManager {
    connector: Connector,
    /// The relay new connections try first (an index into
    /// [`Connector::relays`]), and since when.
    preferred: std::sync::Mutex<(usize, tokio::time::Instant)>,
}

impl SmtpManager {
    fn new(settings: SmtpSettings) -> Result<SmtpManager, Error> {
        Ok(SmtpManager {
            connector: Connector::new(settings)?,
            preferred: std::sync::Mutex::new((0, tokio::time::Instant::now())),
        })
    }

    fn preferred(&self) -> std::sync::MutexGuard<'_, (usize, tokio::time::Instant)> {
        self.preferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a backup relay has been used long enough for the primary
    /// to be tried again.
    fn primary_due(&self, since: tokio::time::Instant) -> bool {
        since.elapsed() >= self.connector.settings().primary_retry_after()
    }
}

impl pool::Manager for SmtpManager {
    type Conn = AnyConn;

    async fn connect(&self, deadline: Option<tokio::time::Instant>) -> Result<AnyConn, Error> {
        let local = match self.connector.settings().destination() {
            Destination::Relay => None,
            local => Some(local.clone()),
        };
        if let Some(local) = local {
            return LocalConn::open(local).map(AnyConn::Local);
        }
        // A backup stays first until the primary is due again (Postfix
        // falls back per delivery; a pool keeps what worked for a while).
        let first = {
            let (index, since) = *self.preferred();
            if index != 0 && self.primary_due(since) {
                0
            } else {
                index
            }
        };
        let conn = self
            .connector
            .connect_from(false, deadline, first)
            .await
            .map_err(|(e, _)| e)?;
        let used = self
            .connector
            .relays()
            .iter()
            .position(|r| *r == conn.info().relay)
            .unwrap_or(0);
        let mut preferred = self.preferred();
        if used != preferred.0 || (used != 0 && first == 0) {
            *preferred = (used, tokio::time::Instant::now());
        }
        Ok(AnyConn::Smtp(Box::new(conn)))
    }

    /// Asked after every batch: compares without building the primary's
    /// `Relay`.
    fn keep(&self, conn: &AnyConn) -> bool {
        match conn {
            AnyConn::Smtp(c) if !is_primary(&c.info().relay, self.connector.settings()) => {
                let (_, since) = *self.preferred();
                !self.primary_due(since)
            }
            _ => true,
        }
    }
}

/// Whether `relay` is the settings' primary relay.
fn is_primary(relay: &Relay, settings: &SmtpSettings) -> bool {
    relay.port() == settings.port() && relay.host() == settings.host()
}

/// A connection of either kind.
enum AnyConn {
    // Boxed: a connection is large and moves between pool slots.
    Smtp(Box<Connection>),
    Local(LocalConn),
}

impl pool::Conn for AnyConn {
    fn submit(&mut self, envelope: Envelope, content: Arc<[u8]>) -> Result<TxId, Error> {
        match self {
            AnyConn::Smtp(c) => pool::Conn::submit(&mut **c, envelope, content),
            AnyConn::Local(c) => c.submit(envelope, content),
        }
    }

    async fn outcome(&mut self, id: TxId) -> Result<Delivery, Error> {
        match self {
            AnyConn::Smtp(c) => pool::Conn::outcome(&mut **c, id).await,
            AnyConn::Local(c) => c.outcome(id).await,
        }
    }

    async fn noop(&mut self) -> Result<(), Error> {
        match self {
            AnyConn::Smtp(c) => pool::Conn::noop(&mut **c).await,
            AnyConn::Local(_) => Ok(()),
        }
    }

    async fn quit(self) {
        if let AnyConn::Smtp(c) = self {
            pool::Conn::quit(*c).await;
        }
    }

    fn is_usable(&self) -> bool {
        match self {
            AnyConn::Smtp(c) => pool::Conn::is_usable(&**c),
            AnyConn::Local(_) => true,
        }
    }

    fn info(&self) -> Option<&crate::transport::ConnectionInfo> {
        match self {
            AnyConn::Smtp(c) => pool::Conn::info(&**c),
            AnyConn::Local(_) => None,
        }
    }

    fn set_deadline(&mut self, deadline: Option<tokio::time::Instant>) {
        if let AnyConn::Smtp(c) = self {
            pool::Conn::set_deadline(&mut **c, deadline);
        }
    }
}

impl pool::Conn for Connection {
    fn submit(&mut self, envelope: Envelope, content: Arc<[u8]>) -> Result<TxId, Error> {
        Connection::submit(self, envelope, content)
    }

    fn outcome(&mut self, id: TxId) -> impl Future<Output = Result<Delivery, Error>> + Send {
        Connection::outcome(self, id)
    }

    fn noop(&mut self) -> impl Future<Output = Result<(), Error>> + Send {
        Connection::noop(self)
    }

    async fn quit(self) {
        let _ = Connection::quit(self).await;
    }

    fn is_usable(&self) -> bool {
        Connection::is_usable(self)
    }

    fn info(&self) -> Option<&crate::transport::ConnectionInfo> {
        Some(Connection::info(self))
    }

    fn set_deadline(&mut self, deadline: Option<tokio::time::Instant>) {
        Connection::set_deadline(self, deadline);
    }
}

/// Sends messages through a pool of SMTP connections. See the
/// [module docs](self).
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool<SmtpManager>>,
    /// Where attachments over the settings' limit go when the settings ask
    /// for links.
    attachment_store: Option<Arc<dyn AttachmentStore>>,
    outbox: Option<OutboxRun>,
}

/// The outbox a mailer delivers from in the background.
struct OutboxRun {
    spool: Arc<dyn Outbox>,
    wake: Arc<tokio::sync::Notify>,
    reloads: Arc<deliver::Reloads>,
    stop: tokio::sync::watch::Sender<bool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The result of [`Mailer::send_or_enqueue`].
#[derive(Debug)]
#[non_exhaustive]
pub enum SendOutcome {
    /// Delivered now.
    Delivered(Receipt),
    /// A transient failure: saved as a draft, delivered later in the
    /// background.
    Deferred {
        /// The draft.
        draft: DraftId,
        /// Why it could not be sent now.
        error: Error,
    },
}

/// A [`Mailer`] handle that does not keep it alive (for followers such as
/// the profile store).
#[cfg(feature = "serde")]
#[derive(Clone, Debug)]
pub(crate) struct WeakMailer(std::sync::Weak<Inner>);

#[cfg(feature = "serde")]
impl WeakMailer {
    pub(crate) fn upgrade(&self) -> Option<Mailer> {
        self.0.upgrade().map(|inner| Mailer { inner })
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mailer")
    }
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("settings", self.settings().as_ref())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Mailer {
    #[cfg(feature = "serde")]
    pub(crate) fn downgrade(&self) -> WeakMailer {
        WeakMailer(Arc::downgrade(&self.inner))
    }

    /// A mailer with the default limits (see [`MailerBuilder`]).
    pub fn new(settings: SmtpSettings) -> Result<Mailer, Error> {
        Mailer::builder(settings).build()
    }

    /// Configures limits, retries, rate limit, an outbox and an attachment
    /// store.
    pub fn builder(settings: SmtpSettings) -> MailerBuilder {
        MailerBuilder::new(settings)
    }

    /// Sends a message and waits for the outcome (after any retries).
    /// Waits for room when the queue is full.
    pub async fn send(&self, message: Message) -> Result<Receipt, Error> {
        self.submit(message).await?.await
    }

    /// Composes an [`Email`] (see [`Composer`]: the settings' sender as the
    /// default From and envelope sender, the settings' address policy and
    /// attachment limit, with the mailer's attachment store for links) and
    /// sends it.
    pub async fn send_email(&self, email: Email) -> Result<Receipt, Error> {
        let message = self.composer().compose(email).await?;
        self.send(message).await
    }

    /// The composer [`send_email`](Mailer::send_email) uses: the current
    /// settings' sender, address policy and attachment limit (with the
    /// mailer's attachment store).
    pub fn composer(&self) -> Composer {
        let generation = self.inner.pool.generation();
        let settings = generation.manager.connector.settings();
        // Settings asking for links were refused without a store (build,
        // reload): the fallback (refuse) is never reached.
        let attachments =
            attachment_policy(settings, self.inner.attachment_store.as_ref()).unwrap_or_else(|_| {
                AttachmentPolicy::refuse_above(settings.attachment_limit().max_size.unwrap_or(0))
            });
        Composer::new(settings)
            .address_policy(settings.address_policy())
            .attachment_policy(attachments)
    }

    /// Saves a message in the outbox (see [`MailerBuilder::outbox`]): the
    /// returned id means it is durable (on disk, or committed in the outbox
    /// database); it is delivered in the background, retried with back-off
    /// while the relay is offline or the settings are wrong, and survives a
    /// restart. When the outbox cannot save it (disk full, database down)
    /// the error says so and nothing is queued: the caller still holds the
    /// message.
    pub async fn enqueue(&self, message: Message) -> Result<DraftId, Error> {
        let run = self
            .inner
            .outbox
            .as_ref()
            .ok_or_else(|| Error::config("this mailer has no outbox (MailerBuilder::outbox)"))?;
        let id = run.spool.enqueue(&message).await?;
        run.wake.notify_one();
        Ok(id)
    }

    /// Sends now; on a transient failure (relay offline, timeout, 4yz,
    /// invalid settings) saves the message as a draft instead and says so.
    /// Needs an outbox. When saving fails too (the disk is full, the outbox
    /// database is down), the outbox's error is returned: the message was
    /// neither sent nor saved, and the caller still holds it.
    pub async fn send_or_enqueue(&self, message: Message) -> Result<SendOutcome, Error> {
        if self.inner.outbox.is_none() {
            return Err(Error::config("this mailer has no outbox (MailerBuilder::outbox)"));
        }
        match self.send(message.clone()).await {
            Ok(receipt) => Ok(SendOutcome::Delivered(receipt)),
            Err(error) => match deliver::error_verdict(&error) {
                Verdict::Defer(..) => {
                    let draft = self.enqueue(message).await?;
                    Ok(SendOutcome::Deferred { draft, error })
                }
                _ => Err(error),
            },
        }
    }

    /// The outbox, to list, inspect, retry or delete drafts (its methods
    /// are async; see [`Outbox`]).
    pub fn outbox(&self) -> Option<Arc<dyn Outbox>> {
        self.inner.outbox.as_ref().map(|o| o.spool.clone())
    }

    /// Forgets that the relay was marked down ([`RelayDownPolicy`]): the
    /// next message opens a connection at once instead of failing fast
    /// until the down period ends. For an administrator's "retry now" once
    /// the relay is back (the settings page's retry buttons call it); a
    /// relay still down is marked down again after the policy's failures.
    pub fn retry_relay_now(&self) {
        self.inner.pool.relay_up_again();
    }

    /// Wakes the outbox deliverer (after `retry_now` on drafts, say).
    pub fn wake_outbox(&self) {
        if let Some(o) = &self.inner.outbox {
            o.wake.notify_one();
        }
    }

    /// Hands a message over, waiting only for room in the queue; await the
    /// returned [`Pending`] for the outcome.
    pub async fn submit(&self, message: Message) -> Result<Pending, Error> {
        let (job, pending) = self.job(message)?;
        self.inner.pool.push(job).await?;
        Ok(pending)
    }

    /// Hands a message over if the queue has room now; otherwise gives it
    /// back.
    pub fn try_send(&self, message: Message) -> Result<Pending, TrySendError> {
        let (job, pending) = match self.job(message.clone()) {
            Ok(j) => j,
            Err(error) => return Err(TrySendError { error, message }),
        };
        match self.inner.pool.try_push(job) {
            Ok(()) => Ok(pending),
            Err(error) => Err(TrySendError { error, message }),
        }
    }

    fn job(&self, message: Message) -> Result<(Job, Pending), Error> {
        if self.inner.pool.is_closed() {
            return Err(pool::shutdown_error());
        }
        let (mut envelope, mut content) = message.into_parts();
        envelope.validate()?;
        // One generation of settings for the redirect and the signature.
        let generation = self.inner.pool.generation();
        let settings = generation.manager.connector.settings();
        let redirect = settings.redirect();
        if redirect.enabled {
            redirect.apply(&mut envelope, &mut content)?;
        }
        // DKIM: once per message, after the redirect rewrote it and before
        // any attempt (retries send these bytes), with the settings in force.
        #[cfg(feature = "dkim")]
        let content = crate::dkim::sign_content(settings.dkim(), content)?;
        let (tx, rx) = oneshot::channel();
        let expiry = self
            .inner
            .pool
            .send_timeout()
            .map(|t| (pool::Expiry::new(tokio::time::Instant::now() + t), t));
        let job = Job::new(envelope, content, expiry.as_ref().map(|(e, _)| e.clone()), tx);
        Ok((job, Pending::new(rx, expiry)))
    }

    /// Switches to new settings without a restart: new transactions use them
    /// (their redirect, address policy and attachment limit apply to
    /// messages handed over from now on, their deliveries per connection to
    /// every later decision to use a connection again); idle connections of
    /// the old settings close; messages already on a connection finish on
    /// it. Nothing queued is lost.
    ///
    /// With an outbox, the drafts that waited on the settings (their last
    /// attempt failed on authentication, TLS or the configuration:
    /// [`DraftInfo::waiting_on_settings`](crate::outbox::DraftInfo::waiting_on_settings))
    /// become due at once: the background deliverer runs
    /// [`Outbox::release_waiting_on_settings`] and delivers them with the
    /// new settings, without waiting for their back-off (counted in
    /// [`Stats::released_on_reload`]). A draft whose attempt was in progress
    /// and fails on the settings is due again at once too. Drafts that wait
    /// for an unreachable relay or a 4yz keep their time. Use
    /// [`reload_and_release`](Mailer::reload_and_release) to learn how many
    /// were released.
    ///
    /// Refused, with the old settings left in place and nothing released,
    /// when the new ones cannot be used: a TLS configuration that does not
    /// load, or attachments as links on a mailer without an attachment
    /// store ([`MailerBuilder::attachment_store`]).
    pub fn reload(&self, settings: SmtpSettings) -> Result<(), Error> {
        self.apply(settings)?;
        if let Some(o) = &self.inner.outbox {
            o.reloads.reloaded();
            o.reloads.ask_release();
            o.wake.notify_one();
        }
        Ok(())
    }

    /// [`reload`](Mailer::reload), then the release of the drafts that
    /// waited on the settings done here rather than in the background:
    /// returns how many became due (0 without an outbox), and wakes the
    /// deliverer to send them. For a settings page that says "3 waiting
    /// messages released".
    ///
    /// Settings that are refused change nothing and release nothing (the
    /// error is returned). When the release fails (the outbox cannot be
    /// read or written), the new settings are in force all the same, the
    /// outbox's error is returned, and the deliverer tries the release
    /// again in the background.
    pub async fn reload_and_release(&self, settings: SmtpSettings) -> Result<usize, Error> {
        self.apply(settings)?;
        let Some(o) = &self.inner.outbox else {
            return Ok(0);
        };
        o.reloads.reloaded();
        deliver::release_now(&self.inner, o.spool.as_ref(), &o.reloads, &o.wake).await
    }

    /// Puts `settings` in force (the part [`reload`](Mailer::reload) and
    /// [`reload_and_release`](Mailer::reload_and_release) share).
    fn apply(&self, settings: SmtpSettings) -> Result<(), Error> {
        attachment_policy(&settings, self.inner.attachment_store.as_ref())?;
        let max_deliveries = settings.max_deliveries_per_connection();
        self.inner
            .pool
            .reload(SmtpManager::new(settings)?, max_deliveries);
        Ok(())
    }

    /// The settings new connections use.
    pub fn settings(&self) -> Arc<SmtpSettings> {
        Arc::new(self.inner.pool.generation().manager.connector.settings().clone())
    }

    /// The redirect of the current settings ([`SmtpSettings::redirect`]);
    /// change it with [`reload`](Mailer::reload) (or by saving a profile
    /// the mailer follows).
    pub fn redirect(&self) -> Redirect {
        self.inner
            .pool
            .generation()
            .manager
            .connector
            .settings()
            .redirect()
            .clone()
    }

    /// Stops accepting messages, delivers what is queued (and waiting for a
    /// retry) until `grace` has passed, fails what is left with
    /// [`Error::is_shutdown`], QUITs every connection and returns the final
    /// counters. Connections still busy one second after the deadline are
    /// cut off.
    pub async fn shutdown(&self, grace: Duration) -> Stats {
        if let Some(o) = &self.inner.outbox {
            // Drafts not yet handed to the pool stay on disk for next time.
            o.stop.send_replace(true);
            let task = o.task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(task) = task {
                let _ = tokio::time::timeout(grace, task).await;
            }
        }
        self.inner
            .pool
            .shutdown(tokio::time::Instant::now() + grace)
            .await;
        self.stats()
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        self.inner.pool.stats()
    }
}

/// Limits and policies of a [`Mailer`].
pub struct MailerBuilder {
    settings: SmtpSettings,
    config: PoolConfig,
    attachment_store: Option<Arc<dyn AttachmentStore>>,
    outbox: Option<(Arc<dyn Outbox>, OutboxPolicy)>,
}

impl std::fmt::Debug for MailerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailerBuilder")
            .field("settings", &self.settings)
            .field("config", &self.config)
            .field("attachment_store", &self.attachment_store.is_some())
            .field("outbox", &self.outbox.as_ref().map(|(_, policy)| policy))
            .finish()
    }
}

/// The attachment policy of `settings` with `store` for links: an error
/// when they ask for links and there is no store.
fn attachment_policy(
    settings: &SmtpSettings,
    store: Option<&Arc<dyn AttachmentStore>>,
) -> Result<AttachmentPolicy, Error> {
    let limit = settings.attachment_limit();
    let over_limit = match (limit.needs_store(), store) {
        (false, _) => OverLimit::Refuse,
        (true, Some(store)) => OverLimit::Link(store.clone()),
        (true, None) => {
            return Err(Error::config(
                "the settings send large attachments as links, but this mailer has no attachment store",
            )
            .with_hint(
                "give the mailer a store (MailerBuilder::attachment_store), or switch links off in the attachment limit",
            ))
        }
    };
    Ok(AttachmentPolicy {
        max_size: limit.max_size,
        over_limit,
    })
}

impl MailerBuilder {
    fn new(settings: SmtpSettings) -> MailerBuilder {
        MailerBuilder {
            config: PoolConfig {
                max_connections: 4,
                max_deliveries: settings.max_deliveries_per_connection(),
                max_age: Some(Duration::from_secs(300)),
                idle_timeout: Duration::from_secs(30),
                probe_after_idle: Duration::from_secs(5),
                queue_capacity: 1024,
                max_batch: 32,
                retry: RetryPolicy::default(),
                rate_limit: None,
                send_timeout: None,
                relay_down: RelayDownPolicy::default(),
            },
            settings,
            attachment_store: None,
            outbox: None,
        }
    }

    /// A durable outbox: [`Mailer::enqueue`] saves drafts in `spool` and a
    /// background task (started by `build`, which must then run inside a
    /// tokio runtime) delivers them through this mailer, following
    /// `policy`. Drafts already in the spool (from before a restart) are
    /// delivered too. Delivery is at-least-once: a draft whose delivery was
    /// in flight when the process died is sent again.
    pub fn outbox(mut self, spool: impl Outbox, policy: OutboxPolicy) -> Self {
        self.outbox = Some((Arc::new(spool), policy));
        self
    }

    /// Where attachments over the settings' limit are stored when the
    /// settings send them as links
    /// ([`AttachmentLimit::links_above`](crate::settings::AttachmentLimit::links_above)).
    /// Without one, settings asking for links are refused by
    /// [`build`](Self::build) and [`Mailer::reload`].
    pub fn attachment_store(mut self, store: Arc<dyn AttachmentStore>) -> Self {
        self.attachment_store = Some(store);
        self
    }

    /// Connections open at once, busy or idle (default 4).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n;
        self
    }

    /// The longest a connection is used (default 5 minutes; `None`: no limit).
    pub fn max_connection_age(mut self, age: Option<Duration>) -> Self {
        self.config.max_age = age;
        self
    }

    /// An idle connection is closed after this long (default 30 s).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = d;
        self
    }

    /// A connection idle for longer than this is probed with NOOP before it
    /// is used again (default 5 s).
    pub fn probe_after_idle(mut self, d: Duration) -> Self {
        self.config.probe_after_idle = d;
        self
    }

    /// Messages the queue holds before `send` waits (default 1024).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.config.queue_capacity = n;
        self
    }

    /// The retry policy (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// The longest a message may take from [`Mailer::send`] (or
    /// [`submit`](Mailer::submit)) to its outcome, queue wait, rate limit,
    /// back-offs and every attempt included (default `None`: only the
    /// settings' per-phase timeouts and the retry policy bound it).
    ///
    /// When it runs out, the caller gets a timeout error whose
    /// [stage](Error::stage) names where the message was: `queue` when it
    /// never reached a connection (it will not be sent), otherwise the stage
    /// of the attempt it ended (the connection is dropped; if
    /// [`Error::body_was_sent`], the server may have the message). Other
    /// messages pipelined on that connection are retried like after any
    /// lost connection. At most 1 day.
    pub fn send_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.send_timeout = timeout;
        self
    }

    /// A pool-wide rate limit (default none). At most 1,000,000 messages per
    /// window, and a window of at most 1 day.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.config.rate_limit = Some(limit);
        self
    }

    /// When the relay is marked down and messages fail at once instead of
    /// each running its own retries (default [`RelayDownPolicy::default`]:
    /// after 3 failed connections in a row, for 10 s, doubling up to 5
    /// minutes; one probe connection at a time then tests whether it is
    /// back). With an outbox, [`Mailer::send_or_enqueue`] saves the draft
    /// as soon as the relay is known down.
    pub fn relay_down(mut self, policy: RelayDownPolicy) -> Self {
        self.config.relay_down = policy;
        self
    }

    /// Checks the limits and builds the mailer. No connection is opened
    /// until the first message.
    pub fn build(self) -> Result<Mailer, Error> {
        let c = &self.config;
        let too_long = |d: &Duration| *d > MAX_DURATION;
        let checks = [
            (c.max_connections == 0, "max_connections", "must be at least 1"),
            (c.queue_capacity == 0, "queue_capacity", "must be at least 1"),
            (
                c.retry.max_attempts == 0,
                "retry.max_attempts",
                "must be at least 1",
            ),
            (
                c.rate_limit.is_some_and(|r| r.messages == 0 || r.per.is_zero()),
                "rate_limit",
                "needs at least 1 message per non-zero interval",
            ),
            (
                c.rate_limit.is_some_and(|r| r.messages > MAX_RATE_MESSAGES),
                "rate_limit.messages",
                "must be at most 1000000",
            ),
            (
                c.rate_limit.is_some_and(|r| too_long(&r.per)),
                "rate_limit.per",
                "must be at most 1 day",
            ),
            (c.idle_timeout.is_zero(), "idle_timeout", "must be more than zero"),
            (
                c.send_timeout.is_some_and(|t| t.is_zero() || too_long(&t)),
                "send_timeout",
                "must be more than zero and at most 1 day",
            ),
            (
                [c.retry.initial_backoff, c.retry.max_backoff]
                    .iter()
                    .any(too_long),
                "retry",
                "back-offs must be at most 1 day",
            ),
            (
                c.retry.deadline.as_ref().is_some_and(too_long),
                "retry.deadline",
                "must be at most 1 day",
            ),
            (too_long(&c.idle_timeout), "idle_timeout", "must be at most 1 day"),
            (
                too_long(&c.probe_after_idle),
                "probe_after_idle",
                "must be at most 1 day",
            ),
            (
                c.max_age.as_ref().is_some_and(too_long),
                "max_connection_age",
                "must be at most 1 day",
            ),
        ];
        // Every problem at once, as the settings builder reports them.
        let problems: Vec<String> = checks
            .iter()
            .filter(|(bad, _, _)| *bad)
            .map(|(_, field, why)| format!("{field}: {why}"))
            .collect();
        if !problems.is_empty() {
            return Err(Error::config(format!(
                "invalid mailer settings: {}",
                problems.join("; ")
            )));
        }
        attachment_policy(&self.settings, self.attachment_store.as_ref())?;
        let manager = SmtpManager::new(self.settings)?;
        let runtime = match &self.outbox {
            Some(_) => Some(tokio::runtime::Handle::try_current().map_err(|_| {
                Error::config("a mailer with an outbox must be built inside a tokio runtime")
            })?),
            None => None,
        };
        let (outbox_run, policy) = match self.outbox {
            Some((spool, policy)) => (
                Some(OutboxRun {
                    spool,
                    wake: Arc::new(tokio::sync::Notify::new()),
                    reloads: Arc::default(),
                    stop: tokio::sync::watch::channel(false).0,
                    task: std::sync::Mutex::new(None),
                }),
                Some(policy),
            ),
            None => (None, None),
        };
        let mailer = Mailer {
            inner: Arc::new(Inner {
                pool: Pool::new(self.config, manager),
                attachment_store: self.attachment_store,
                outbox: outbox_run,
            }),
        };
        if let (Some(run), Some(policy), Some(rt)) = (&mailer.inner.outbox, policy, runtime) {
            let task = rt.spawn(deliver::deliver_drafts(
                Arc::downgrade(&mailer.inner),
                run.spool.clone(),
                policy,
                run.wake.clone(),
                run.reloads.clone(),
                run.stop.subscribe(),
            ));
            *run.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
        Ok(mailer)
    }
}
