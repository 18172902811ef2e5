//! An in-process SMTP server for tests (feature `test-server`).
//!
//! [`TestServer::start`] binds `127.0.0.1:0` and serves SMTP to real
//! clients, relaymail's or any other: ESMTP with the extensions a
//! [`ServerConfig`] turns on, STARTTLS and implicit TLS with a certificate
//! signed by a CA generated for this server ([`TestServer::ca_pem`]),
//! client certificates issued by that CA when required
//! ([`ServerConfig::require_client_cert`], [`TestServer::client_identity_pem`]),
//! SMTP AUTH (PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256, XOAUTH2, OAUTHBEARER),
//! DATA and BDAT. OAuth2 bearer tokens can be checked against a set the test
//! changes while the server runs ([`BearerTokens`]: expire a token mid-run),
//! and a refused token gets the error challenge real servers send.
//!
//! Tests observe what happened through records and events:
//!
//! - [`TestServer::messages`]: every accepted message with its envelope,
//!   parameters and body exactly as the client meant it (DATA un-dot-stuffed,
//!   BDAT chunks concatenated), and whether a bare CR or LF was seen;
//! - [`TestServer::sessions`]: every connection with the command lines it
//!   sent (AUTH payloads redacted, never a secret) and which client write
//!   delivered each line, so pipelining can be checked;
//! - [`TestServer::wait_for_messages`], [`TestServer::wait_for_closed_sessions`]
//!   and [`TestServer::subscribe`] wait for progress without sleeping.
//!
//! [`Fault`]s inject failures: a different reply, a delay, a dropped or
//! stalled connection, or extra bytes after a reply (the STARTTLS injection
//! case of RFC 3207 §6).
//!
//! [`TestProxy`] ([`proxy`]) is a SOCKS5 and HTTP CONNECT proxy on
//! `127.0.0.1` that tunnels to loopback targets only and records what it
//! was asked, to test connections through a proxy.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use relaymail::testing::{Fault, ServerConfig, TestServer};
//!
//! let server = TestServer::start(
//!     ServerConfig::new()
//!         .starttls(true)
//!         .auth_mechanisms(&["PLAIN"])
//!         .user("alice", "s3cret")
//!         .auth_after_tls_only(true)
//!         .fault(Fault::on_command("RCPT").nth(2).reply("450 4.2.0 Mailbox busy")),
//! )
//! .await?;
//! // Point the client at server.addr(), trusting server.ca_pem() ...
//! let messages = server.wait_for_messages(1, Duration::from_secs(5)).await.expect("a message");
//! assert_eq!(messages[0].auth_user.as_deref(), Some("alice"));
//! # Ok(()) }
//! ```
//!
//! The server stops when the [`TestServer`] is dropped: the accept task and
//! every session task are aborted and their connections closed.

mod bearer;
mod conformance;
mod conn;
pub mod proxy;
mod sasl;
mod session;
mod shared;
mod tls;

#[cfg(test)]
mod tests;

pub use bearer::BearerTokens;
pub use conformance::{check_outbox, ConformanceFailure, CHECKS};
pub use proxy::{ProxyAuth, ProxyConfig, ProxyRequest, TestProxy};

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use shared::Shared;

/// Greeting sent by default.
const DEFAULT_GREETING: &str = "220 relaymail-test ESMTP";

/// A mechanism the server implements (names as on the wire).
const SUPPORTED_MECHANISMS: [&str; 6] = [
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "SCRAM-SHA-256",
    "XOAUTH2",
    "OAUTHBEARER",
];

/// How a [`TestServer`] behaves. Start from [`ServerConfig::new`] and chain
/// the builder methods.
///
/// `Debug` output never shows the configured secrets.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub(crate) greeting: String,
    pub(crate) pipelining: bool,
    pub(crate) chunking: bool,
    pub(crate) smtputf8: bool,
    pub(crate) eightbitmime: bool,
    pub(crate) dsn: bool,
    pub(crate) requiretls: bool,
    pub(crate) size_limit: Option<u64>,
    pub(crate) starttls: bool,
    pub(crate) implicit_tls: bool,
    pub(crate) auth_mechanisms: Vec<String>,
    pub(crate) users: Vec<User>,
    pub(crate) bearer_tokens: Option<BearerTokens>,
    pub(crate) auth_after_tls_only: bool,
    pub(crate) require_auth: bool,
    pub(crate) cert_names: Vec<String>,
    pub(crate) untrusted_cert: bool,
    pub(crate) require_client_cert: bool,
    pub(crate) tls12_only: bool,
    pub(crate) ehlo: bool,
    pub(crate) ehlo_lines: Vec<String>,
    pub(crate) reject_senders: Vec<(String, String)>,
    pub(crate) reject_recipients: Vec<(String, String)>,
    pub(crate) faults: Vec<Fault>,
    pub(crate) port: u16,
}

/// Accepted credentials: a user name and its password or bearer token.
#[derive(Clone, Debug)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) secret: SecretString,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::new()
    }
}

impl ServerConfig {
    /// The defaults: greeting `220 relaymail-test ESMTP`; EHLO offers
    /// PIPELINING, 8BITMIME and ENHANCEDSTATUSCODES; no SIZE, STARTTLS, AUTH,
    /// CHUNKING, SMTPUTF8, DSN or REQUIRETLS; certificate names `localhost` and
    /// `127.0.0.1`; no faults.
    pub fn new() -> ServerConfig {
        ServerConfig {
            greeting: DEFAULT_GREETING.to_owned(),
            pipelining: true,
            chunking: false,
            smtputf8: false,
            eightbitmime: true,
            dsn: false,
            requiretls: false,
            size_limit: None,
            starttls: false,
            implicit_tls: false,
            auth_mechanisms: Vec::new(),
            users: Vec::new(),
            bearer_tokens: None,
            auth_after_tls_only: false,
            require_auth: false,
            cert_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            untrusted_cert: false,
            require_client_cert: false,
            tls12_only: false,
            ehlo: true,
            ehlo_lines: Vec::new(),
            reject_senders: Vec::new(),
            reject_recipients: Vec::new(),
            faults: Vec::new(),
            port: 0,
        }
    }

    /// The port to listen on, on `127.0.0.1`. Default: 0, a free port the
    /// system picks ([`TestServer::port`] tells which).
    ///
    /// A fixed port is for a relay that goes down and comes back at the same
    /// address, as a client configured with that address sees it:
    /// [`TestServer::stop`] the first server (which waits until its port is
    /// free), then start another with `.port(first_port)`. Starting fails
    /// with `AddrInUse` while something else listens there.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The greeting line, without CRLF (default `220 relaymail-test ESMTP`).
    /// Separate the lines of a multi-line greeting with `"\r\n"`.
    pub fn greeting(mut self, line: &str) -> Self {
        self.greeting = line.to_owned();
        self
    }

    /// Offer PIPELINING (RFC 2920). Pipelined input is processed correctly
    /// either way; this only changes the EHLO reply. Default: on.
    pub fn pipelining(mut self, on: bool) -> Self {
        self.pipelining = on;
        self
    }

    /// Offer CHUNKING (RFC 3030) and accept BDAT. When off, BDAT is an
    /// unknown command (`502`). Default: off.
    pub fn chunking(mut self, on: bool) -> Self {
        self.chunking = on;
        self
    }

    /// Offer SMTPUTF8 (RFC 6531) and accept the `SMTPUTF8` MAIL parameter.
    /// Addresses with non-ASCII characters are refused (`553 5.6.7`) in a
    /// transaction without that parameter. Default: off.
    pub fn smtputf8(mut self, on: bool) -> Self {
        self.smtputf8 = on;
        self
    }

    /// Offer 8BITMIME (RFC 6152) and accept `BODY=8BITMIME`. Default: on.
    pub fn eightbitmime(mut self, on: bool) -> Self {
        self.eightbitmime = on;
        self
    }

    /// Offer DSN (RFC 3461) and accept `RET`, `ENVID`, `NOTIFY` and `ORCPT`.
    /// Default: off.
    pub fn dsn(mut self, on: bool) -> Self {
        self.dsn = on;
        self
    }

    /// Offer REQUIRETLS (RFC 8689) on TLS connections and accept the
    /// `REQUIRETLS` MAIL parameter there (over plain text it is neither
    /// offered nor accepted). Default: off.
    pub fn requiretls(mut self, on: bool) -> Self {
        self.requiretls = on;
        self
    }

    /// Offer `SIZE n` (RFC 1870). A MAIL with `SIZE=` above `n`, and a DATA
    /// or BDAT body above `n`, get `552 5.3.4`. `Some(0)` advertises `SIZE 0`
    /// (no fixed limit) and enforces nothing. Default: `None` (SIZE not
    /// offered). Whatever the setting, bodies above 64 MiB are refused so a
    /// runaway client cannot exhaust memory.
    pub fn size_limit(mut self, bytes: Option<u64>) -> Self {
        self.size_limit = bytes;
        self
    }

    /// Offer STARTTLS (RFC 3207) on a plain connection. Default: off.
    pub fn starttls(mut self, on: bool) -> Self {
        self.starttls = on;
        self
    }

    /// Run the TLS handshake before the greeting (implicit TLS, "SMTPS",
    /// RFC 8314). STARTTLS is then never offered. Default: off.
    pub fn implicit_tls(mut self, on: bool) -> Self {
        self.implicit_tls = on;
        self
    }

    /// The mechanisms offered on the EHLO `AUTH` line, in this order.
    /// Implemented: `PLAIN`, `LOGIN`, `CRAM-MD5`, `SCRAM-SHA-256`, `XOAUTH2`,
    /// `OAUTHBEARER`; other names are advertised but answered with `504`.
    /// Default: none (no AUTH offered).
    ///
    /// A bearer token XOAUTH2 or OAUTHBEARER does not accept gets the error
    /// challenge: a `334` with a JSON error (`{"status":"401",…}` for
    /// XOAUTH2, `{"status":"invalid_token",…}` for OAUTHBEARER); the client's
    /// answer (an empty line, or `AQ==`, the base64 of `\x01`) is recorded as
    /// sent, and the exchange ends with `535 5.7.8`.
    pub fn auth_mechanisms(mut self, mechs: &[&str]) -> Self {
        self.auth_mechanisms = mechs.iter().map(|m| m.to_ascii_uppercase()).collect();
        self
    }

    /// Accept these credentials; call several times for several users. The
    /// secret is the password, or the bearer token for XOAUTH2 and
    /// OAUTHBEARER (unless [`bearer_tokens`](Self::bearer_tokens) decides
    /// those).
    pub fn user(mut self, username: &str, secret: &str) -> Self {
        self.users.push(User {
            name: username.to_owned(),
            secret: SecretString::from(secret),
        });
        self
    }

    /// Check the bearer tokens of XOAUTH2 and OAUTHBEARER against `tokens`
    /// instead of the [`user`](Self::user) secrets: a token is accepted only
    /// while it is in the set, for its user. The test keeps a clone and
    /// changes the set while the server runs (a token that
    /// [expires](BearerTokens::expire) between two connections is refused
    /// on the next AUTH).
    pub fn bearer_tokens(mut self, tokens: &BearerTokens) -> Self {
        self.bearer_tokens = Some(tokens.clone());
        self
    }

    /// Advertise and accept AUTH only once TLS is active (Postfix's
    /// `smtpd_tls_auth_only`). Default: off.
    pub fn auth_after_tls_only(mut self, on: bool) -> Self {
        self.auth_after_tls_only = on;
        self
    }

    /// Refuse MAIL before a successful AUTH with
    /// `530 5.7.0 Authentication required`. Default: off.
    pub fn require_auth(mut self, on: bool) -> Self {
        self.require_auth = on;
        self
    }

    /// Subject alternative names of the server certificate: IP addresses
    /// become IP SANs, everything else DNS names. Default: `localhost` and
    /// `127.0.0.1`.
    pub fn cert_names(mut self, names: &[&str]) -> Self {
        self.cert_names = names.iter().map(|&n| n.to_owned()).collect();
        self
    }

    /// Present a self-signed certificate that [`TestServer::ca_pem`] does not
    /// vouch for, so certificate verification fails. Default: off.
    pub fn untrusted_cert(mut self, on: bool) -> Self {
        self.untrusted_cert = on;
        self
    }

    /// Require a client certificate (mutual TLS) issued by this server's CA
    /// in every TLS handshake, implicit or after STARTTLS: get one with
    /// [`TestServer::client_identity_pem`]. A handshake without one, or with
    /// one from another CA ([`foreign_client_identity_pem`]), fails with a
    /// TLS alert (with TLS 1.3 the client reads it after its side of the
    /// handshake is done), and the session ends;
    /// [`SessionRecord::tls_error`] says why. Default: off (no certificate
    /// asked for).
    pub fn require_client_cert(mut self, on: bool) -> Self {
        self.require_client_cert = on;
        self
    }

    /// Offer TLS 1.2 only (TLS 1.3 otherwise comes first): with TLS 1.2 a
    /// refused client certificate fails the handshake itself. Default: off.
    pub fn tls12_only(mut self, on: bool) -> Self {
        self.tls12_only = on;
        self
    }

    /// Accept EHLO. When off, EHLO gets `502 5.5.2` and only HELO works (an
    /// old server without ESMTP). Default: on.
    pub fn ehlo(mut self, on: bool) -> Self {
        self.ehlo = on;
        self
    }

    /// An extra EHLO keyword line (e.g. `"XFOO bar"`), after the built-in
    /// ones; call several times for several lines.
    pub fn ehlo_line(mut self, line: &str) -> Self {
        self.ehlo_lines.push(line.to_owned());
        self
    }

    /// Answer `MAIL FROM:<address>` (compared ignoring ASCII case) with
    /// `reply`, e.g. `"553 5.7.1 Sender address rejected"`.
    pub fn reject_sender(mut self, address: &str, reply: &str) -> Self {
        self.reject_senders.push((address.to_owned(), reply.to_owned()));
        self
    }

    /// Answer `RCPT TO:<address>` (compared ignoring ASCII case) with
    /// `reply`, e.g. `"550 5.1.1 User unknown"`. The recipient is not added.
    pub fn reject_recipient(mut self, address: &str, reply: &str) -> Self {
        self.reject_recipients
            .push((address.to_owned(), reply.to_owned()));
        self
    }

    /// Inject a fault; call several times for several faults. When more than
    /// one fires on the same occurrence, the first added wins (every fault's
    /// occurrence count still advances).
    pub fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }
}

/// Where a [`Fault`] triggers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    Greeting,
    Command(String),
    EndOfData,
}

/// What a [`Fault`] does instead of the normal handling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Normal,
    Reply(String),
    Drop,
    Stall,
    Append(Vec<u8>),
    Trickle(String, Duration),
    StopReading,
}

/// A fault to inject: a trigger, an optional occurrence filter, and what to
/// do instead of the normal handling.
///
/// ```
/// use std::time::Duration;
/// use relaymail::testing::Fault;
///
/// // The second DATA end across the whole server is refused.
/// let refuse = Fault::on_end_of_data().nth(2).reply("451 4.3.0 Try again later");
/// // Every greeting is sent after 200 ms.
/// let slow = Fault::on_greeting().delay(Duration::from_millis(200));
/// ```
#[derive(Clone, Debug)]
pub struct Fault {
    pub(crate) trigger: Trigger,
    pub(crate) nth: Option<usize>,
    pub(crate) delay: Option<Duration>,
    pub(crate) action: Action,
}

impl Fault {
    fn new(trigger: Trigger) -> Fault {
        Fault {
            trigger,
            nth: None,
            delay: None,
            action: Action::Normal,
        }
    }

    /// Trigger on the greeting (after the TLS handshake with implicit TLS).
    pub fn on_greeting() -> Fault {
        Fault::new(Trigger::Greeting)
    }

    /// Trigger on a command verb ("EHLO", "HELO", "STARTTLS", "AUTH",
    /// "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT"; any case).
    /// The command is recorded and announced ([`ServerEvent::Command`])
    /// before the fault applies.
    pub fn on_command(verb: &str) -> Fault {
        Fault::new(Trigger::Command(verb.to_ascii_uppercase()))
    }

    /// Trigger at the end of a message: after the final `.` of DATA, or
    /// after the `LAST` chunk of BDAT.
    pub fn on_end_of_data() -> Fault {
        Fault::new(Trigger::EndOfData)
    }

    /// Fire only on the nth occurrence of the trigger, counted across the
    /// whole server (all sessions), starting at 1. `nth(0)` never fires.
    /// Default: every occurrence.
    pub fn nth(mut self, n: usize) -> Fault {
        self.nth = Some(n);
        self
    }

    /// Send `reply` instead of handling the event; the command then has no
    /// other effect (for BDAT, the chunk is still read and discarded). Write
    /// the reply without the final CRLF; separate the lines of a multi-line
    /// reply with `"\r\n"`. At the end of data the message is recorded as
    /// accepted only if the reply is `2xx`. After a non-`2xx` greeting, the
    /// server answers every command but QUIT with `503`.
    pub fn reply(mut self, reply: &str) -> Fault {
        self.action = Action::Reply(reply.to_owned());
        self
    }

    /// Wait `d`, then handle normally. Combines with the other actions: the
    /// wait comes first.
    pub fn delay(mut self, d: Duration) -> Fault {
        self.delay = Some(d);
        self
    }

    /// Close the connection without a reply (replies already produced for
    /// earlier pipelined commands are sent first).
    pub fn drop_connection(mut self) -> Fault {
        self.action = Action::Drop;
        self
    }

    /// Never reply, and never handle anything else on this connection, but
    /// keep it open until the client closes it or the server stops.
    pub fn stall(mut self) -> Fault {
        self.action = Action::Stall;
        self
    }

    /// Instead of replying, send `line` (a continuation line such as
    /// `"220-still here"`) every `interval`, never the last line of the
    /// reply, until the client closes the connection: a server that keeps a
    /// client waiting with a reply that never ends.
    pub fn trickle(mut self, line: &str, interval: Duration) -> Fault {
        self.action = Action::Trickle(line.trim_end_matches(['\r', '\n']).to_owned(), interval);
        self
    }

    /// Handle normally up to the reply, then never read from the client
    /// again, keeping the connection open: after DATA's `354`, a client
    /// writing a large body blocks once the socket buffers are full.
    pub fn stop_reading(mut self) -> Fault {
        self.action = Action::StopReading;
        self
    }

    /// Handle normally, then send `bytes` in the same write as the reply.
    /// After a STARTTLS `220` with appended bytes the TLS handshake is not
    /// started: the server keeps reading commands in clear text.
    pub fn append(mut self, bytes: &[u8]) -> Fault {
        self.action = Action::Append(bytes.to_vec());
        self
    }
}

/// One message the server accepted.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReceivedMessage {
    /// The session ([`SessionRecord::id`]) that sent it.
    pub session: usize,
    /// The queue id given in the `250` reply.
    pub queue_id: String,
    /// The reverse path without angle brackets (empty for `<>`).
    pub mail_from: String,
    /// The MAIL parameters as sent, e.g. `["SIZE=123", "BODY=8BITMIME"]`.
    pub mail_params: Vec<String>,
    /// The accepted recipients, without angle brackets, in order.
    pub rcpt_to: Vec<String>,
    /// The parameters of each accepted recipient (same order as `rcpt_to`).
    pub rcpt_params: Vec<Vec<String>>,
    /// The message as the client meant it: the DATA stream un-dot-stuffed
    /// without the terminating `.\r\n`, or the BDAT chunks concatenated.
    pub data: Vec<u8>,
    /// Sent with BDAT rather than DATA.
    pub via_bdat: bool,
    /// The session was TLS when the message was accepted.
    pub tls: bool,
    /// The authenticated user, if any.
    pub auth_user: Option<String>,
    /// A bare CR or bare LF appeared in the DATA stream (a correct client
    /// never sends one). Always false for BDAT.
    pub bare_line_endings: bool,
}

/// What happened on one connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionRecord {
    /// Session number, from 0 in accept order.
    pub id: usize,
    /// The client's address (where it connected from).
    pub peer: Option<std::net::SocketAddr>,
    /// The name given with the last EHLO or HELO.
    pub helo: Option<String>,
    /// TLS is (or was, at the end) active.
    pub tls: bool,
    /// The user that authenticated successfully.
    pub auth_user: Option<String>,
    /// The mechanism of the successful AUTH (upper case).
    pub auth_mechanism: Option<String>,
    /// Every command line received, in order. Not included: DATA and BDAT
    /// content, and input discarded after STARTTLS.
    pub commands: Vec<CommandRecord>,
    /// How many messages were accepted in this session.
    pub messages: usize,
    /// The client sent QUIT.
    pub quit: bool,
    /// The session has ended.
    pub closed: bool,
    /// How many plain-text bytes the client sent after its STARTTLS line and
    /// before the TLS handshake; they were discarded (RFC 3207 §4.2). A
    /// correct client sends none.
    pub discarded_after_starttls: usize,
    /// The subject of the client certificate presented in the TLS
    /// handshake (e.g. `CN=relaymail test client`); `None` when none was
    /// (or no handshake succeeded).
    pub client_certificate: Option<String>,
    /// Why a TLS handshake failed (rustls's words, e.g. that the client
    /// sent no certificate, or one from an unknown issuer); `None` when none
    /// did.
    pub tls_error: Option<String>,
}

/// One command line received.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandRecord {
    /// The line without CRLF. AUTH lines are recorded as `AUTH <MECH>` only,
    /// SASL continuation lines as `[auth data]`: never a secret. The one
    /// exception carries none: the answer to the error challenge of XOAUTH2
    /// or OAUTHBEARER is recorded as sent when it is the expected one (an
    /// empty line, or `AQ==` for `\x01`).
    pub line: String,
    /// Which read of this session (0-based) completed the line: commands the
    /// client sent in one write normally share a batch.
    pub batch: usize,
    /// Received over TLS.
    pub tls: bool,
}

/// Progress notifications, from [`TestServer::subscribe`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A connection was accepted.
    Connected {
        /// Its session number.
        session: usize,
    },
    /// A command line was received (before any fault applies).
    Command {
        /// The session.
        session: usize,
        /// The verb in upper case (e.g. `"MAIL"`).
        verb: String,
    },
    /// A message was accepted.
    MessageAccepted {
        /// The session.
        session: usize,
        /// Its queue id.
        queue_id: String,
    },
    /// A session ended.
    Closed {
        /// The session.
        session: usize,
    },
}

/// A wait on the [`TestServer`] ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out waiting for the SMTP test server")]
#[non_exhaustive]
pub struct WaitTimeout;

/// A running in-process SMTP server on `127.0.0.1`.
///
/// Dropping it stops the server: the accept task and all session tasks are
/// aborted and their connections closed.
pub struct TestServer {
    addr: SocketAddr,
    certs: tls::Certificates,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
    /// Tells the accept task to close the listener and every connection
    /// ([`TestServer::stop`]).
    stop: Option<oneshot::Sender<()>>,
}

impl TestServer {
    /// Generates the certificates, binds `127.0.0.1` on
    /// [`ServerConfig::port`] (by default a free port) and starts accepting
    /// connections. Must be called within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// Binding failed (`AddrInUse` for a fixed port something listens on),
    /// or the certificate could not be made (e.g. an invalid name in
    /// [`ServerConfig::cert_names`], `InvalidInput`).
    pub async fn start(config: ServerConfig) -> std::io::Result<TestServer> {
        let certs = tls::Certificates::generate(&config.cert_names, config.untrusted_cert)?;
        let acceptor = certs.acceptor(config.require_client_cert, config.tls12_only)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, config.port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, acceptor, addr.port()));
        let (stop, stopped) = oneshot::channel();
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopped));
        Ok(TestServer {
            addr,
            certs,
            shared,
            accept_task,
            stop: Some(stop),
        })
    }

    /// Stops the server and returns once it is gone: the listener is closed
    /// (its port is free for another server, see [`ServerConfig::port`])
    /// and every connection is closed, so a client sees the relay go down.
    /// Dropping the server stops it too, without waiting.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            // Sending fails only when the task has already ended.
            let _ = stop.send(());
        }
        // The task ends by itself once told; an aborted or panicked task
        // has dropped its listener and connections as well.
        let _ = (&mut self.accept_task).await;
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// PEM of the CA that signed the server's certificate, to add to the
    /// client's trusted roots. With [`ServerConfig::untrusted_cert`] the
    /// server's certificate is not signed by it.
    pub fn ca_pem(&self) -> &str {
        &self.certs.ca_pem
    }

    /// A new client certificate issued by this server's CA, for
    /// [`ServerConfig::require_client_cert`]: `(certificate PEM, private key
    /// PEM)`, an ECDSA P-256 key in PKCS#8 form, subject
    /// `CN=relaymail test client` (as [`SessionRecord::client_certificate`]
    /// records it). Give both to
    /// [`SmtpSettingsBuilder::client_certificate_pem`](crate::SmtpSettingsBuilder::client_certificate_pem).
    ///
    /// # Errors
    ///
    /// The certificate could not be made (`InvalidInput`).
    pub fn client_identity_pem(&self) -> std::io::Result<(String, String)> {
        self.certs.client_identity()
    }

    /// A snapshot of the accepted messages, in acceptance order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared.lock().messages.clone()
    }

    /// A snapshot of the sessions, in connection order.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        self.shared.lock().sessions.clone()
    }

    /// Waits until at least `n` messages were accepted and returns a snapshot
    /// of them all ([`TestServer::messages`]). Never sleeps: it wakes on
    /// each acceptance.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] when fewer than `n` were accepted within `timeout`.
    pub async fn wait_for_messages(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>, WaitTimeout> {
        let mut progress = self.shared.progress.subscribe();
        let reached = tokio::time::timeout(timeout, progress.wait_for(|p| p.messages >= n))
            .await
            .is_ok_and(|seen| seen.is_ok());
        if reached {
            Ok(self.messages())
        } else {
            Err(WaitTimeout)
        }
    }

    /// Waits until at least `n` sessions have ended (the client closed, sent
    /// QUIT, or a fault dropped it) and returns a snapshot of every session
    /// ([`TestServer::sessions`]). Never sleeps.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] when fewer than `n` ended within `timeout`.
    pub async fn wait_for_closed_sessions(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<SessionRecord>, WaitTimeout> {
        let mut progress = self.shared.progress.subscribe();
        let reached = tokio::time::timeout(timeout, progress.wait_for(|p| p.closed >= n))
            .await
            .is_ok_and(|seen| seen.is_ok());
        if reached {
            Ok(self.sessions())
        } else {
            Err(WaitTimeout)
        }
    }

    /// Subscribes to [`ServerEvent`]s from now on. The channel keeps the last
    /// 1024 events; a slow receiver gets `Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        self.shared.events.subscribe()
    }

    /// Connections open now.
    pub fn connections_open(&self) -> usize {
        self.shared.lock().open
    }

    /// Connections accepted since the start.
    pub fn connections_total(&self) -> usize {
        self.shared.lock().sessions.len()
    }

    /// The highest number of connections open at once.
    pub fn peak_connections(&self) -> usize {
        self.shared.lock().peak
    }
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Dropping the accept task's future drops its JoinSet, which aborts
        // every session task.
        self.accept_task.abort();
    }
}

/// A client certificate and key that no [`TestServer`] accepts: issued by
/// a CA made for this call (`CN=relaymail foreign test CA`), subject
/// `CN=relaymail foreign client`. `(certificate PEM, private key PEM)`, as
/// [`TestServer::client_identity_pem`].
///
/// # Errors
///
/// The certificate could not be made (`InvalidInput`).
pub fn foreign_client_identity_pem() -> std::io::Result<(String, String)> {
    tls::foreign_client_identity()
}

/// Accepts connections and spawns one session task each; the tasks live in
/// a `JoinSet` owned by this future, so aborting it aborts them all. When
/// `stop` fires it closes the listener, aborts the sessions and waits until
/// they have ended (their connections closed).
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut sessions = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => {
                drop(listener);
                sessions.shutdown().await;
                return;
            }
        };
        while sessions.try_join_next().is_some() {}
        let Ok((stream, peer)) = accepted else {
            // Transient (e.g. out of file descriptors): let others run.
            tokio::task::yield_now().await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = shared.open_session(Some(peer));
        sessions.spawn(session::run(Arc::clone(&shared), id, stream));
    }
}
