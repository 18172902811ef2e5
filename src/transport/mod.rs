//! One SMTP connection over tokio: DNS and TCP, implicit TLS or a STARTTLS
//! upgrade of the same stream, AUTH, transactions, QUIT — a thin shell that
//! moves bytes for the sans-IO [`crate::proto::session::Session`]
//! and enforces the timeout of each phase.
//!
//! ```no_run
//! # async fn demo() -> Result<(), relaymail::Error> {
//! use relaymail::{Connection, Envelope, SmtpSettings, TlsMode};
//!
//! let settings = SmtpSettings::builder()
//!     .host("smtp.example.com")
//!     .tls(TlsMode::StartTls)
//!     .sender("noreply@example.com")
//!     .credentials("noreply@example.com", "app-password")
//!     .build()?;
//! let mut conn = Connection::open(&settings).await?;
//! let envelope = Envelope::new(Some(settings.sender().address.clone()), vec!["user@example.net".parse()?])?;
//! let delivery = conn.send(envelope, b"Subject: hi\r\n\r\nhello\r\n".to_vec()).await?;
//! println!("queued: {}", delivery.reply());
//! conn.quit().await?;
//! # Ok(()) }
//! ```

mod connect;
mod proxy;
pub(crate) mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Kind, Stage};
use crate::proto::address::Address;
use crate::proto::auth::{self, Credential, Mechanism, SaslClient};
use crate::proto::ehlo::Capabilities;
use crate::proto::reply::Reply;
use crate::proto::session::{
    Envelope, Event, Phase, RecipientReply, Session, SessionConfig, StartTlsPolicy, Transaction,
    TransactionOutcome, TxId,
};
use crate::settings::{Auth, CredentialProvider, Relay, SmtpSettings, TlsMode};

pub use connect::{default_helo_name, Resolver};

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the TCP stream is handed to the TLS handshake.
    Detached,
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Detached => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
            Stream::Detached => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Detached => Ok(()),
        };
    }
}

/// Time spent waiting in one stage of a connection (diagnostics).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StageTiming {
    /// The stage.
    pub stage: Stage,
    /// How long it took.
    pub duration: std::time::Duration,
    /// Whether it ended well (false: the connection failed in it).
    pub ok: bool,
}

/// Stage timings and replies of one connection, when recording is on.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    pub(crate) on: bool,
    current: Option<(Stage, tokio::time::Instant)>,
    pub(crate) stages: Vec<StageTiming>,
    pub(crate) replies: Vec<(Stage, Reply)>,
    /// Relays that failed before the one connected (or before giving up),
    /// with why.
    pub(crate) failovers: Vec<(Relay, Error)>,
}

impl Trace {
    fn new(on: bool) -> Trace {
        Trace {
            on,
            ..Trace::default()
        }
    }

    /// Notes that the connection now waits in `stage`.
    fn enter(&mut self, stage: Option<Stage>) {
        if !self.on || self.current.map(|c| c.0) == stage {
            return;
        }
        self.close(true);
        self.current = stage.map(|s| (s, tokio::time::Instant::now()));
    }

    /// Closes the stage in progress: done, or failed by `error`. An error
    /// found by the client in another stage (AUTH not offered, a message over
    /// SIZE, a refused RCPT read together with MAIL's reply) is recorded at
    /// its own stage.
    fn end(&mut self, error: Option<&Error>) {
        let current = self.current.map(|c| c.0);
        match error.and_then(Error::stage) {
            Some(stage) if self.on && Some(stage) != current => {
                self.close(true);
                self.stages.push(StageTiming {
                    stage,
                    duration: std::time::Duration::ZERO,
                    ok: false,
                });
            }
            _ => self.close(error.is_none()),
        }
    }

    fn close(&mut self, ok: bool) {
        if let Some((stage, since)) = self.current.take() {
            self.stages.push(StageTiming {
                stage,
                duration: since.elapsed(),
                ok,
            });
        }
    }
}

/// The TLS parameters negotiated on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// Whether TLS came from STARTTLS (false: implicit TLS).
    pub via_starttls: bool,
    /// The DNS names the server's certificate covers.
    pub certificate_names: Vec<String>,
    /// The subject of the client certificate sent in this handshake (see
    /// [`ClientIdentity::subject`](crate::settings::ClientIdentity::subject)):
    /// `None` when the settings have none, or the server did not ask for
    /// one (also on a resumed TLS session, where the server remembers the
    /// certificate of the first).
    pub client_certificate: Option<String>,
}

/// What a connection found out about the server.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The server's address (through a proxy: the proxy's).
    pub peer: SocketAddr,
    /// Our local address.
    pub local: SocketAddr,
    /// The relay connected to: the primary, or a backup when the primary
    /// could not be reached (see [`SmtpSettings::backup_relays`]).
    pub relay: Relay,
    /// The EHLO name sent.
    pub helo_name: String,
    /// The capabilities from the last EHLO.
    pub capabilities: Capabilities,
    /// The TLS parameters, when the connection is encrypted.
    pub tls: Option<TlsInfo>,
    /// Why opportunistic STARTTLS did not happen, when it did not.
    pub tls_skipped: Option<String>,
    /// The mechanism AUTH succeeded with.
    pub auth_mechanism: Option<Mechanism>,
}

/// The result of one delivered message.
#[derive(Clone, Debug)]
pub struct Delivery {
    recipients: Vec<RecipientReply>,
    reply: Reply,
    relay: Option<Relay>,
}

impl Delivery {
    pub(crate) fn new(recipients: Vec<RecipientReply>, reply: Reply) -> Delivery {
        Delivery {
            recipients,
            reply,
            relay: None,
        }
    }

    pub(crate) fn with_relay(mut self, relay: Option<Relay>) -> Delivery {
        self.relay = relay;
        self
    }

    /// The relay that accepted the message: the primary, or the backup
    /// that carried it while the primary could not be reached. `None` for a
    /// development destination (files or memory).
    pub fn relay(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }

    /// Each recipient's reply, in envelope order.
    pub fn recipients(&self) -> &[RecipientReply] {
        &self.recipients
    }

    /// The recipients the server accepted.
    pub fn accepted(&self) -> impl Iterator<Item = &Address> {
        crate::proto::session::accepted_addresses(&self.recipients)
    }

    /// The recipients that did not accept the message, with the server's
    /// reply when there was one.
    pub fn refused(&self) -> impl Iterator<Item = (&Address, Option<&Reply>)> {
        self.recipients
            .iter()
            .filter(|r| !r.accepted())
            .map(|r| (&r.address, r.reply.as_ref()))
    }

    /// The server's final reply (usually names the queue id).
    pub fn reply(&self) -> &Reply {
        &self.reply
    }
}

/// Everything needed to open connections for one [`SmtpSettings`]: the
/// settings and the TLS configuration built once from them.
#[derive(Clone, Debug)]
pub struct Connector {
    settings: Arc<SmtpSettings>,
    tls: Option<Arc<rustls::ClientConfig>>,
    resolver: Option<Resolver>,
}

impl Connector {
    /// Prepares connections for these settings (builds the TLS configuration).
    pub fn new(settings: SmtpSettings) -> Result<Connector, Error> {
        let tls = match settings.tls {
            TlsMode::None => None,
            _ => Some(tls::client_config(&settings.tls_options)?),
        };
        Ok(Connector {
            settings: Arc::new(settings),
            tls,
            resolver: None,
        })
    }

    /// Resolves host names with `resolver` instead of the system resolver:
    /// a DNS client of the application's choice, or a test that needs the
    /// addresses it controls (say, one that never answers before a good
    /// one, to see Happy Eyeballs at work).
    pub fn with_resolver(mut self, resolver: Resolver) -> Connector {
        self.resolver = Some(resolver);
        self
    }

    /// Every relay, the primary first, then the backups in order.
    pub(crate) fn relays(&self) -> Vec<Relay> {
        let s = &self.settings;
        let mut all = Vec::with_capacity(1 + s.backup_relays().len());
        all.push(s.primary_relay());
        all.extend(s.backup_relays().iter().cloned());
        all
    }

    /// The settings.
    pub fn settings(&self) -> &SmtpSettings {
        &self.settings
    }

    /// Opens a connection: connect, greeting, EHLO, TLS, AUTH.
    pub async fn connect(&self) -> Result<Connection, Error> {
        self.connect_traced(false, None).await.map_err(|(e, _)| e)
    }

    /// [`connect`](Connector::connect), recording stage timings and replies
    /// when `on`; on failure the trace so far comes with the error.
    pub(crate) async fn connect_traced(
        &self,
        on: bool,
        deadline: Option<Instant>,
    ) -> Result<Connection, (Error, Trace)> {
        self.connect_from(on, deadline, 0).await
    }

    /// Opens a connection to the relay at index `first` of
    /// [`relays`](Connector::relays); when it cannot be reached or answers
    /// 421/4yz at its greeting or EHLO, to the next one, and so on (those
    /// before `first` last). The error of the last relay tried is returned,
    /// with a hint naming every relay when there are several.
    pub(crate) async fn connect_from(
        &self,
        on: bool,
        deadline: Option<Instant>,
        first: usize,
    ) -> Result<Connection, (Error, Trace)> {
        let mut trace = Trace::new(on);
        if let Some(url) = self.settings.destination().url() {
            // Never a connection to the placeholder host.
            return Err((
                Error::config(format!(
                    "these settings deliver to {url}, not to an SMTP relay: there is no connection to open"
                ))
                .with_hint("send through a Mailer, or choose the relay destination to test a relay"),
                trace,
            ));
        }
        let relays = self.relays();
        let first = first.min(relays.len() - 1);
        let order = (first..relays.len()).chain(0..first);
        let mut last = None;
        for (tried, index) in order.enumerate() {
            let relay = &relays[index];
            match self.connect_relay(relay, trace, deadline, on).await {
                Ok(conn) => return Ok(conn),
                Err((e, t)) => {
                    trace = t;
                    let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
                    if tried + 1 == relays.len() || out_of_time || !relay_unreachable(&e) {
                        last = Some((relay, e));
                        break;
                    }
                    trace.failovers.push((relay.clone(), e));
                }
            }
        }
        let Some((last_relay, mut e)) = last else {
            return Err((Error::protocol(None, "no relay to connect to"), trace));
        };
        let stage = |e: &Error| e.stage().map_or("connection", Stage::as_str);
        if !trace.failovers.is_empty() && relay_unreachable(&e) {
            let mut each: Vec<String> = trace
                .failovers
                .iter()
                .map(|(relay, e)| format!("{relay} ({})", stage(e)))
                .collect();
            each.push(format!("{last_relay} ({})", stage(&e)));
            let hint = format!(
                "every relay failed: {}; {}",
                each.join(", "),
                e.hint()
                    .unwrap_or("check that the relays are running and reachable")
            );
            e = e.with_hint(hint);
        }
        Err((e, trace))
    }

    /// One relay: TCP (Happy Eyeballs), then greeting, EHLO, TLS and AUTH.
    async fn connect_relay(
        &self,
        relay: &Relay,
        mut trace: Trace,
        deadline: Option<Instant>,
        on: bool,
    ) -> Result<Connection, (Error, Trace)> {
        let s = &self.settings;
        let limit = match deadline {
            Some(d) => s
                .timeouts
                .connect
                .min(d.saturating_duration_since(Instant::now())),
            None => s.timeouts.connect,
        };
        let dial = connect::Dial {
            limit,
            attempt_delay: s.connect_attempt_delay(),
            source: s.source_address(),
            resolver: self.resolver.as_ref(),
        };
        let tcp = match proxy::tcp(s, relay.host(), relay.port(), dial, &mut trace).await {
            Ok(tcp) => tcp,
            Err(e) => {
                let e = match deadline {
                    Some(d) if e.is_timeout() && Instant::now() >= d => send_timeout_error(e.stage()),
                    _ => e,
                };
                trace.end(Some(&e));
                return Err((e, trace));
            }
        };
        trace.enter(None);
        let mut conn = match self.session_for(tcp, relay.clone(), trace) {
            Ok(c) => c,
            Err((e, mut trace)) => {
                trace.close(false);
                return Err((e, trace));
            }
        };
        if on {
            conn.session.record_replies();
        }
        conn.cap = deadline;
        match conn.start().await {
            Ok(()) => Ok(conn),
            Err(e) => {
                let trace = conn.take_trace(Some(&e));
                Err((e, trace))
            }
        }
    }

    fn session_for(&self, tcp: TcpStream, relay: Relay, trace: Trace) -> Result<Connection, (Error, Trace)> {
        let s = &self.settings;
        let addrs = tcp.peer_addr().and_then(|p| Ok((p, tcp.local_addr()?)));
        let (peer, local) = match addrs {
            Ok(a) => a,
            Err(e) => {
                return Err((
                    Error::new(Kind::Io, Some(Stage::Connect), "no socket address").with_source(e),
                    trace,
                ))
            }
        };
        let helo_name = match &s.helo_name {
            Some(name) => name.clone(),
            None => default_helo_name(local.ip()),
        };
        let mut config = SessionConfig::new(helo_name.clone());
        config.implicit_tls = s.tls == TlsMode::Implicit;
        config.starttls = match s.tls {
            TlsMode::None | TlsMode::Implicit => StartTlsPolicy::Never,
            TlsMode::StartTlsOpportunistic => StartTlsPolicy::Opportunistic,
            TlsMode::StartTls => StartTlsPolicy::Required,
        };
        config.allow_plaintext_auth = s.allow_plaintext_auth;
        config.pipelining = s.pipelining;
        config.chunking = s.chunking;
        config.offload_key_derivation = true;
        let session = match Session::new(config) {
            Ok(s) => s,
            Err(e) => return Err((e.into(), trace)),
        };
        Ok(Connection {
            stream: Stream::Plain(tcp),
            session,
            connector: self.clone(),
            buf: vec![0; 16 * 1024],
            info: ConnectionInfo {
                peer,
                local,
                relay,
                helo_name,
                capabilities: Capabilities::default(),
                tls: None,
                tls_skipped: None,
                auth_mechanism: None,
            },
            deliveries: 0,
            trace,
            clock: None,
            cap: None,
            finished: Vec::new(),
        })
    }
}

/// One open SMTP connection. See the [module docs](self).
pub struct Connection {
    stream: Stream,
    session: Session,
    connector: Connector,
    buf: Vec<u8>,
    info: ConnectionInfo,
    deliveries: usize,
    trace: Trace,
    /// The deadline of the reply being read: set when the first byte of it
    /// is awaited, kept until a complete reply arrives or the phase changes.
    clock: Option<(ReplyClock, Instant)>,
    /// An outer deadline (a message's send timeout) that no phase may pass.
    cap: Option<Instant>,
    /// Outcomes of transactions read while waiting for another one.
    finished: Vec<TransactionOutcome>,
}

/// What a phase deadline belongs to: the phase, and which reply within it.
/// The AUTH exchange is one deadline, however many challenges it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReplyClock {
    phase: Phase,
    reply: u64,
}

/// The hint when a renewed access token was refused as well.
const RENEWED_TOKEN_REFUSED: &str = "a freshly renewed OAuth2 access token was refused too, so the token is not the problem: check that the user name is the mailbox the token was issued for, that the application was granted the mail scope (https://mail.google.com/ for Gmail, https://outlook.office.com/SMTP.Send for Microsoft 365) and that SMTP AUTH is enabled for the account";

/// The error when a message's send timeout ends an attempt.
fn send_timeout_error(stage: Option<Stage>) -> Error {
    Error::new(Kind::Timeout, stage, "the message's send timeout ran out")
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.info)
            .field("deliveries", &self.deliveries)
            .field("usable", &self.is_usable())
            .finish()
    }
}

impl Connection {
    /// Greeting, EHLO, TLS, AUTH on a fresh connection.
    async fn start(&mut self) -> Result<(), Error> {
        if self.settings().tls == TlsMode::Implicit {
            self.handshake(false).await?;
        }
        loop {
            match self.next_event().await? {
                Event::Ready => break,
                _ => continue,
            }
        }
        self.refresh_info();
        self.authenticate().await
    }

    /// The stage timings and replies recorded so far (when recording is on),
    /// the stage in progress closed as failed by `error` or as done.
    pub(crate) fn take_trace(&mut self, error: Option<&Error>) -> Trace {
        self.trace.end(error);
        self.trace.replies.extend(self.session.take_replies());
        let on = self.trace.on;
        std::mem::replace(&mut self.trace, Trace::new(on))
    }

    /// Opens a connection with these settings (see [`Connector`] to open
    /// many without rebuilding the TLS configuration each time).
    pub async fn open(settings: &SmtpSettings) -> Result<Connection, Error> {
        Connector::new(settings.clone())?.connect().await
    }

    /// What the connection found out about the server.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Messages delivered (successfully or not) on this connection.
    pub fn deliveries(&self) -> usize {
        self.deliveries
    }

    /// Whether the connection can carry another transaction: not failed,
    /// not closed, no transaction unfinished (an RSET still being answered
    /// after a refused transaction does not count). A connection that timed
    /// out or lost sync is never usable again.
    pub fn is_usable(&self) -> bool {
        self.session.can_send()
    }

    fn settings(&self) -> &SmtpSettings {
        &self.connector.settings
    }

    /// Fails the session with the shell's own error (the first failure is
    /// kept) and returns the failure.
    fn abort(&mut self, error: Error) -> Error {
        self.session.abort(error).into()
    }

    fn refresh_info(&mut self) {
        if let Some(caps) = self.session.capabilities() {
            self.info.capabilities = caps.clone();
        }
        self.info.tls_skipped = self.session.tls_skipped_reason().map(str::to_owned);
        self.info.auth_mechanism = self.session.authenticated();
    }

    /// Sets (or clears) an outer deadline that every phase of this
    /// connection ends by, whatever its own timeout: a message's send
    /// timeout. Reaching it fails the connection with a timeout error that
    /// names the stage.
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.cap = deadline;
    }

    /// `phase_deadline`, or the outer deadline when that comes first; true
    /// when the outer one decides.
    fn capped(&self, phase_deadline: Instant) -> (Instant, bool) {
        match self.cap {
            Some(cap) if cap < phase_deadline => (cap, true),
            _ => (phase_deadline, false),
        }
    }

    /// Writes all pending output: everything queued (a whole message body
    /// included) within one data timeout, however slowly the server reads.
    async fn flush(&mut self) -> Result<(), Error> {
        if !self.session.wants_write() {
            return Ok(());
        }
        if self.cap.is_some_and(|cap| cap <= Instant::now()) {
            // Nothing is written once the outer deadline has passed (a
            // timer that already expired would still let one write through).
            return Err(self.abort(send_timeout_error(None)));
        }
        let limit = self.settings().timeouts.data;
        let (deadline, by_cap) = self.capped(Instant::now() + limit);
        let out = self.session.output();
        let n = out.len();
        match tokio::time::timeout_at(deadline, self.stream.write_all(out)).await {
            Ok(Ok(())) => {
                self.session.consume_output(n);
                Ok(())
            }
            Ok(Err(e)) => Err(self.session.io_failed(e).into()),
            Err(_) if by_cap => Err(self.abort(send_timeout_error(None))),
            Err(_) => {
                // Still writing: a body not yet sent in full belongs to the
                // DATA stage, whatever reply the session waits for next.
                let stage = match self.session.current_stage() {
                    Some(Stage::EndOfData) => Some(Stage::Data),
                    other => other,
                };
                let e = Error::new(
                    Kind::Timeout,
                    stage,
                    format!("sending to the server took longer than {limit:?}"),
                );
                Err(self.abort(e))
            }
        }
    }

    /// The deadline of the reply the session waits for: one per reply (one
    /// for the whole AUTH exchange), started when it is first awaited.
    /// Bytes that arrive without completing a reply do not move it.
    fn reply_deadline(&mut self) -> Result<Instant, Error> {
        let t = self.settings().timeouts;
        let phase = self.session.phase();
        let limit = match phase {
            Phase::Greeting => t.greeting,
            Phase::FinalReply => t.final_reply,
            Phase::TlsHandshake => t.tls_handshake,
            Phase::Idle => return Err(Error::protocol(None, "read while the session waits for nothing")),
            _ => t.command,
        };
        let key = ReplyClock {
            phase,
            reply: match phase {
                Phase::Auth => 0,
                _ => self.session.replies_received(),
            },
        };
        match self.clock {
            Some((k, at)) if k == key => Ok(at),
            _ => {
                let at = Instant::now() + limit;
                self.clock = Some((key, at));
                Ok(at)
            }
        }
    }

    /// Reads once, before the deadline of the reply being read.
    async fn read_once(&mut self) -> Result<(), Error> {
        let reply_deadline = self.reply_deadline()?;
        let (deadline, by_cap) = self.capped(reply_deadline);
        match tokio::time::timeout_at(deadline, self.stream.read(&mut self.buf)).await {
            Err(_) if by_cap => Err(self.abort(send_timeout_error(None))),
            Err(_) => {
                let mut e = Error::from(self.session.timed_out());
                let port = self.info.relay.port();
                if e.stage() == Some(Stage::Greeting) && self.settings().tls != TlsMode::Implicit {
                    e = e.with_hint(if port == 465 {
                        "port 465 usually expects implicit TLS: set the TLS mode to implicit".to_owned()
                    } else {
                        format!(
                            "no greeting from the server: if port {port} expects implicit TLS (as port 465 usually does), set the TLS mode to implicit"
                        )
                    });
                }
                Err(e)
            }
            Ok(Err(e)) => match tls::refusal_after_handshake(&e, &self.settings().tls_options) {
                // The wait in progress (greeting, EHLO) failed, at the TLS stage.
                Some(refused) => {
                    self.trace.close(false);
                    Err(self.abort(refused))
                }
                None => Err(self.session.io_failed(e).into()),
            },
            Ok(Ok(0)) => Ok(self.session.receive_eof()?),
            Ok(Ok(n)) => Ok(self.session.receive(&self.buf[..n])?),
        }
    }

    /// Moves bytes until the session has an event; runs the STARTTLS
    /// handshake itself.
    async fn next_event(&mut self) -> Result<Event, Error> {
        loop {
            if let Some(event) = self.session.poll_event() {
                if let Event::StartTls = event {
                    self.flush().await?;
                    self.handshake(true).await?;
                    continue;
                }
                return Ok(event);
            }
            self.flush().await?;
            self.trace.enter(self.session.current_stage());
            if !self.session.wants_read() {
                return Err(match self.session.failure() {
                    Some(e) => e.clone().into(),
                    None => Error::protocol(None, "the session waits for nothing"),
                });
            }
            self.read_once().await?;
        }
    }

    async fn handshake(&mut self, via_starttls: bool) -> Result<(), Error> {
        let Some(config) = self.connector.tls.clone() else {
            return Err(self.abort(Error::config("TLS requested without a TLS configuration")));
        };
        let (host, port, limit) = (
            self.info.relay.host().to_owned(),
            self.info.relay.port(),
            self.settings().timeouts.tls_handshake,
        );
        let name = tls::server_name(&host)?;
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Detached) else {
            return Err(self.abort(Error::protocol(
                Some(Stage::Tls),
                "TLS on a stream that is not plain",
            )));
        };
        self.trace.enter(Some(Stage::Tls));
        let (config, client_certificate) = tls::for_connection(config, &self.settings().tls_options);
        let handshake = TlsConnector::from(config).connect(name, tcp);
        let (deadline, by_cap) = self.capped(Instant::now() + limit);
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(tls)) => {
                let (_, conn) = tls.get_ref();
                self.info.tls = Some(TlsInfo {
                    version: match conn.protocol_version() {
                        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
                        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
                        other => format!("{other:?}"),
                    },
                    cipher_suite: conn
                        .negotiated_cipher_suite()
                        .map(|c| format!("{:?}", c.suite()))
                        .unwrap_or_default(),
                    via_starttls,
                    certificate_names: conn
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                        .map(|cert| cert.valid_dns_names().map(str::to_owned).collect())
                        .unwrap_or_default(),
                    client_certificate: client_certificate
                        .filter(|c| c.was_sent())
                        .and_then(|_| self.connector.settings.tls_options.client_identity())
                        .map(|identity| identity.subject().to_owned()),
                });
                self.stream = Stream::Tls(Box::new(tls));
                if via_starttls {
                    self.session.tls_established()?;
                }
                Ok(())
            }
            Ok(Err(e)) => {
                let e = tls::handshake_error(e, &host, port, !via_starttls, &self.settings().tls_options);
                Err(self.abort(e))
            }
            Err(_) if by_cap => Err(self.abort(send_timeout_error(Some(Stage::Tls)))),
            Err(_) => {
                let mut e = Error::new(Kind::Timeout, Some(Stage::Tls), "the TLS handshake timed out");
                if !via_starttls {
                    e = e.with_hint(format!(
                        "no TLS answer on port {port}: if the server speaks plain SMTP there, use STARTTLS or none"
                    ));
                }
                Err(self.abort(e))
            }
        }
    }

    /// AUTH with the settings' credential. A bearer token from a provider
    /// that the server refuses as expired or invalid is reported to the
    /// provider; when it renews, AUTH is tried once more with the new
    /// token, on this connection (servers allow AUTH again after a `535`).
    async fn authenticate(&mut self) -> Result<(), Error> {
        let provider = match &self.settings().auth {
            Auth::None => return Ok(()),
            Auth::Credential(c) => {
                let credential = c.clone();
                return self.authenticate_with(&credential).await;
            }
            Auth::Provider(p) => p.clone(),
        };
        let credential = self.provided_credential(&*provider).await?;
        let refused = match self.authenticate_with(&credential).await {
            Err(e) if e.is_token_rejected() => e,
            other => return other,
        };
        if !provider.token_rejected(&credential) {
            return Err(refused);
        }
        if !self.session.is_ready() {
            // The server ended the session: the renewed token is for the
            // next connection, which a retry opens.
            return Err(refused.transient(true).with_hint(
                "the server refused the OAuth2 access token and ended the session: the next attempt uses a renewed token",
            ));
        }
        #[cfg(feature = "tracing")]
        tracing::debug!("the server refused the access token; retrying AUTH once with a renewed one");
        let renewed = self.provided_credential(&*provider).await?;
        self.authenticate_with(&renewed).await.map_err(|e| {
            if e.is_token_rejected() {
                e.with_hint(RENEWED_TOKEN_REFUSED)
            } else {
                e
            }
        })
    }

    /// The provider's credential, within the command timeout.
    async fn provided_credential(&self, provider: &dyn CredentialProvider) -> Result<Credential, Error> {
        let limit = self.settings().timeouts.command;
        let (deadline, _) = self.capped(Instant::now() + limit);
        match tokio::time::timeout_at(deadline, provider.credential()).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                Kind::Timeout,
                Some(Stage::Auth),
                "the credential provider timed out",
            )),
        }
    }

    /// One AUTH exchange with `credential`.
    async fn authenticate_with(&mut self, credential: &Credential) -> Result<(), Error> {
        let mechanism = self.choose_mechanism(credential)?;
        let mut nonce = [0u8; 18];
        tls::provider().secure_random.fill(&mut nonce).map_err(|_| {
            Error::new(
                Kind::Auth,
                Some(Stage::Auth),
                "no secure random numbers for the SASL nonce",
            )
        })?;
        let nonce = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, nonce);
        let client = SaslClient::new(mechanism, credential, &nonce).map_err(|e| {
            Error::new(Kind::Auth, Some(Stage::Auth), format!("cannot use {mechanism}")).with_source(e)
        })?;
        self.session.authenticate(client)?;
        loop {
            match self.next_event().await? {
                Event::Authenticated(Ok(m)) => {
                    self.info.auth_mechanism = Some(m);
                    return Ok(());
                }
                Event::Authenticated(Err(e)) => return Err(e.into()),
                // SCRAM's PBKDF2 (capped, CPU-bound) runs off the async threads.
                Event::DeriveKey(job) => match tokio::task::spawn_blocking(move || job.run()).await {
                    Ok(key) => self.session.key_derived(key)?,
                    Err(join) => {
                        let e = Error::new(Kind::Auth, Some(Stage::Auth), "the SCRAM key derivation failed");
                        return Err(self.abort(e.with_source(join)));
                    }
                },
                _ => continue,
            }
        }
    }

    fn choose_mechanism(&self, credential: &Credential) -> Result<Mechanism, Error> {
        let preference: Vec<Mechanism> = match &self.settings().auth_mechanisms {
            Some(list) => list.clone(),
            None => credential.preference().to_vec(),
        };
        let caps = &self.info.capabilities;
        let offered = caps.auth_mechanisms();
        if offered.is_empty() {
            let mut e = Error::new(
                Kind::Auth,
                Some(Stage::Auth),
                "credentials are configured but the server does not offer AUTH",
            );
            e = if self.info.tls.is_none() {
                e.with_hint("many servers offer AUTH only after STARTTLS: use STARTTLS or implicit TLS")
            } else {
                e.with_hint("if this relay accepts mail without a login, remove the user name and password")
            };
            return Err(e);
        }
        auth::select(&preference, offered.iter().map(String::as_str)).ok_or_else(|| {
            let ours: Vec<&str> = preference.iter().map(|m| m.name()).collect();
            Error::new(
                Kind::Auth,
                Some(Stage::Auth),
                format!(
                    "no common AUTH mechanism: the server offers {}, relaymail may use {}",
                    offered.join(" "),
                    ours.join(" ")
                ),
            )
        })
    }

    /// Delivers one message: MAIL, RCPT for each recipient, DATA or BDAT.
    /// Line endings are normalised and lines dot-stuffed on the wire.
    ///
    /// Returns per-recipient results and the server's final reply. Refused
    /// recipients are reported in the [`Delivery`] while the others receive
    /// the message, unless the settings require all recipients. A failure
    /// after which the connection is still in step (a refused sender, every
    /// recipient refused, a refused message) leaves it usable; timeouts and
    /// protocol errors break it.
    ///
    /// With DKIM signing in the settings (feature `dkim`), the message is
    /// signed first; one that cannot be (no `From` field) is a config
    /// error and nothing is sent.
    pub async fn send(
        &mut self,
        envelope: Envelope,
        message: impl Into<Arc<[u8]>>,
    ) -> Result<Delivery, Error> {
        let message = message.into();
        #[cfg(feature = "dkim")]
        let message = crate::dkim::sign_content(self.settings().dkim(), message)?;
        let id = self.submit(envelope, message)?;
        self.outcome(id).await
    }

    /// Queues a transaction without waiting (pipelining across transactions).
    pub(crate) fn submit(&mut self, envelope: Envelope, message: Arc<[u8]>) -> Result<TxId, Error> {
        let mut tx = Transaction::new(envelope, message);
        tx.require_all_recipients = self.settings().require_all_recipients;
        let id = self.session.send(tx)?;
        self.deliveries += 1;
        Ok(id)
    }

    /// Waits for the outcome of transaction `id`. Outcomes of other
    /// transactions read meanwhile are kept for their own call.
    ///
    /// A transaction the server answered before the connection failed keeps
    /// its answer: `250 queued` followed by `421` in the same write (a
    /// server shutting down under load) is a delivered message, and only the
    /// transactions still unanswered fail with the 421.
    pub(crate) async fn outcome(&mut self, id: TxId) -> Result<Delivery, Error> {
        let relay = self.info.relay.clone();
        let delivery = |t: TransactionOutcome| -> Result<Delivery, Error> {
            match t.result {
                Ok(reply) => Ok(Delivery {
                    recipients: t.recipients,
                    reply,
                    relay: Some(relay.clone()),
                }),
                Err(e) if t.body_sent => Err(Error::from(e).after_body()),
                Err(e) => Err(e.into()),
            }
        };
        loop {
            if let Some(pos) = self.finished.iter().position(|t| t.id == id) {
                return delivery(self.finished.swap_remove(pos));
            }
            match self.next_event().await {
                Ok(Event::Transaction(t)) if t.id == id => return delivery(t),
                Ok(Event::Transaction(t)) => self.finished.push(t),
                Ok(_) => continue,
                Err(fatal) => {
                    // Replies read in the same bytes as the fatal one were
                    // processed first: their outcomes are queued, as are the
                    // errors of every transaction still unanswered (marked
                    // when their body had been sent).
                    while let Some(event) = self.session.poll_event() {
                        if let Event::Transaction(t) = event {
                            self.finished.push(t);
                        }
                    }
                    if let Some(pos) = self.finished.iter().position(|t| t.id == id) {
                        return delivery(self.finished.swap_remove(pos));
                    }
                    return Err(fatal);
                }
            }
        }
    }

    /// Sends NOOP and waits for the answer (a liveness probe).
    pub async fn noop(&mut self) -> Result<(), Error> {
        self.session.noop()?;
        loop {
            if let Event::Noop = self.next_event().await? {
                return Ok(());
            }
        }
    }

    /// Sends QUIT, waits for the reply (or the server closing) and closes.
    pub async fn quit(mut self) -> Result<(), Error> {
        self.session.quit()?;
        let result = loop {
            match self.next_event().await {
                Ok(Event::Closed) => break Ok(()),
                Ok(_) => continue,
                Err(e) => break Err(e),
            }
        };
        if result.is_ok() {
            // Let the server close first (it does after 221): the TIME_WAIT
            // state stays on its side, and once we see the close, the server
            // has let go of the connection too. Bounded: at most 2 s.
            let limit = self
                .settings()
                .timeouts
                .command
                .min(std::time::Duration::from_secs(2));
            let _ = tokio::time::timeout(limit, async {
                while let Ok(n) = self.stream.read(&mut self.buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        // TLS close_notify (and the TCP FIN) within the command timeout: a
        // server that stops reading must not hold the connection open.
        let limit = self.settings().timeouts.command;
        let _ = tokio::time::timeout(limit, self.stream.shutdown()).await;
        result
    }
}

/// Connects with these settings — TCP, greeting, EHLO, TLS, AUTH — then
/// QUITs, and reports what it found: capabilities, TLS version and cipher,
/// AUTH mechanism. Cheap enough to run when settings are saved.
pub async fn probe(settings: &SmtpSettings) -> Result<ConnectionInfo, Error> {
    let conn = Connection::open(settings).await?;
    let info = conn.info.clone();
    conn.quit().await?;
    Ok(info)
}

/// Whether this failure to connect means the relay is away (the next relay
/// is tried; the mailer counts it towards marking the relay down): it could
/// not be reached, or answered 421/4yz (or closed) at its greeting or EHLO.
/// Settings problems, TLS and AUTH failures and 5yz replies are not the
/// relay being away: another relay would fail the same way.
pub(crate) fn relay_unreachable(e: &Error) -> bool {
    match e.stage() {
        Some(Stage::Resolve | Stage::Connect) => !e.is_config(),
        // Through a proxy: the proxy could not be reached or could not
        // reach the relay (not refused credentials or a refused target).
        Some(Stage::Proxy | Stage::Greeting | Stage::Ehlo) => e.is_transient(),
        _ => false,
    }
}
