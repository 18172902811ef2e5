//! One SMTP session: the server side of RFC 5321 with the configured
//! extensions, faults and records.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use secrecy::zeroize::Zeroizing;
use tokio::net::TcpStream;

use super::conn::{Conn, Line};
use super::sasl::{Exchange, Step};
use super::shared::Shared;
use super::{Action, CommandRecord, ReceivedMessage, Trigger, SUPPORTED_MECHANISMS};

/// The server's name in replies.
const HOSTNAME: &str = "relaymail-test";

/// How long input is drained before closing after a protocol error.
const LINGER: Duration = Duration::from_secs(2);

/// Bodies above this are refused whatever the configured SIZE.
const HARD_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

const OK: &str = "250 2.0.0 Ok";
const LINE_TOO_LONG: &str = "500 5.5.2 Line too long";
const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed maximum message size";
const NO_RECIPIENTS: &str = "554 5.5.1 Error: no valid recipients";
const SEND_HELO: &str = "503 5.5.1 Error: send HELO/EHLO first";
const NEED_MAIL: &str = "503 5.5.1 Error: need MAIL command";
const NEED_RCPT: &str = "503 5.5.1 Error: need RCPT command";
const INVALID_BASE64: &str = "501 5.5.2 Cannot decode base64 data";

/// Base64 of SASL responses: padding optional.
const RESPONSE_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Serves one connection until it ends; the session is then marked closed
/// (also when the task is aborted).
pub(super) async fn run(shared: Arc<Shared>, id: usize, stream: TcpStream) {
    let _closed = CloseGuard {
        shared: Arc::clone(&shared),
        id,
    };
    let mut session = Session {
        shared,
        id,
        conn: Conn::new(stream),
        greeted: false,
        esmtp: false,
        no_service: false,
        auth_user: None,
        tx: None,
        append: None,
        deaf: false,
        linger: false,
    };
    // IO errors end the session like a close does.
    let _ = session.serve().await;
    if session.linger {
        session.conn.close_lingering(LINGER).await;
    } else {
        // Counted as closed before the socket closes: a client that saw the
        // close knows the server's connection count no longer includes it.
        session.shared.close_session(session.id);
        session.conn.close().await;
    }
}

/// Marks the session closed when dropped.
struct CloseGuard {
    shared: Arc<Shared>,
    id: usize,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.shared.close_session(self.id);
    }
}

/// Whether the session goes on after a command.
enum Flow {
    Continue,
    Close,
}

/// The outcome of the fault check for a trigger.
enum Fired {
    /// Handle normally.
    Normal,
    /// Send this reply instead.
    Reply(String),
    /// Drop the connection (a stall has already run until the peer closed).
    Stop,
}

/// A mail transaction in progress.
struct Transaction {
    mail_from: String,
    mail_params: Vec<String>,
    smtputf8: bool,
    rcpt_to: Vec<String>,
    rcpt_params: Vec<Vec<String>>,
    /// The BDAT chunks so far, once BDAT has started.
    bdat: Option<Vec<u8>>,
}

/// The result of reading a DATA body.
enum Body {
    Complete { data: Vec<u8>, bare: bool, over: bool },
    Eof,
    TooLong,
}

struct Session {
    shared: Arc<Shared>,
    id: usize,
    conn: Conn,
    /// EHLO or HELO received (since the last TLS handshake).
    greeted: bool,
    /// The greeting was EHLO.
    esmtp: bool,
    /// The greeting was replaced by a non-2xx fault reply.
    no_service: bool,
    auth_user: Option<String>,
    tx: Option<Transaction>,
    /// Bytes an `append` fault adds after the next reply.
    append: Option<Vec<u8>>,
    /// A `stop_reading` fault fired: after the next reply, read nothing more.
    deaf: bool,
    /// Closing after a protocol error: drain the input first.
    linger: bool,
}

/// The line without its LF and CR.
fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A multi-line reply with `code` (lines joined with CRLF).
fn multiline(code: u16, lines: &[String]) -> String {
    let last = lines.len().saturating_sub(1);
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| format!("{code}{}{line}", if i == last { ' ' } else { '-' }))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Why MAIL or RCPT refuses `address`: a non-ASCII address in a transaction
/// without SMTPUTF8, or one of the configured refusals (case-insensitive).
fn address_refusal(address: &str, smtputf8: bool, refusals: &[(String, String)]) -> Option<String> {
    if !address.is_ascii() && !smtputf8 {
        return Some("553 5.6.7 Must declare SMTPUTF8 to send unicode address".to_owned());
    }
    refusals
        .iter()
        .find(|(refused, _)| refused.eq_ignore_ascii_case(address))
        .map(|(_, reply)| reply.clone())
}

/// Parses `<keyword>:<path> params` (keyword case-insensitive, optional
/// space after the colon). The path is returned without brackets, quoted
/// local parts untouched.
fn parse_path(args: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].strip_prefix(':')?.trim_start();
    let inner = rest.strip_prefix('<')?;
    let mut quoted = false;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == '>' && !quoted {
            end = Some(i);
            break;
        }
    }
    let end = end?;
    let address = &inner[..end];
    let after = &inner[end + 1..];
    if !after.is_empty() && !after.starts_with([' ', '\t']) {
        return None;
    }
    let params = after.split_whitespace().map(str::to_owned).collect();
    Some((address.to_owned(), params))
}

/// `BDAT <size> [LAST]`.
fn parse_bdat(args: &str) -> Option<(u64, bool)> {
    let mut parts = args.split_whitespace();
    let size = parts.next()?;
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = size.parse().ok()?;
    let last = match parts.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    parts.next().is_none().then_some((size, last))
}

impl Session {
    /// Queues a reply (CRLF added), then the bytes of a pending `append`
    /// fault.
    fn reply(&mut self, text: &str) {
        let text = text.strip_suffix("\r\n").unwrap_or(text);
        self.conn.queue(text.as_bytes());
        self.conn.queue(b"\r\n");
        if let Some(extra) = self.append.take() {
            self.conn.queue(&extra);
        }
    }

    /// Answers a line over the limit; the session then closes.
    fn line_too_long(&mut self) {
        self.reply(LINE_TOO_LONG);
        self.linger = true;
    }

    /// Checks the faults for `trigger`, runs a delay or stall.
    async fn fault(&mut self, trigger: &Trigger) -> io::Result<Fired> {
        let Some((delay, action)) = self.shared.fire(trigger) else {
            return Ok(Fired::Normal);
        };
        if let Some(delay) = delay {
            self.conn.flush().await?;
            tokio::time::sleep(delay).await;
        }
        Ok(match action {
            Action::Normal => Fired::Normal,
            Action::Append(bytes) => {
                self.append = Some(bytes);
                Fired::Normal
            }
            Action::Reply(text) => Fired::Reply(text),
            Action::Drop => Fired::Stop,
            Action::Stall => {
                self.conn.stall().await?;
                Fired::Stop
            }
            Action::Trickle(line, every) => {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    self.conn.queue(line.as_bytes());
                    self.conn.queue(b"\r\n");
                    if self.conn.flush().await.is_err() {
                        break Fired::Stop;
                    }
                }
            }
            Action::StopReading => {
                self.deaf = true;
                Fired::Normal
            }
        })
    }

    /// After a `stop_reading` fault: sends what is queued, then keeps the
    /// connection open without reading until the server stops.
    async fn deaf_if_asked(&mut self) -> io::Result<()> {
        if self.deaf {
            self.conn.flush().await?;
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    /// The greeting, then commands until the session ends.
    async fn serve(&mut self) -> io::Result<()> {
        if self.shared.config.implicit_tls {
            let acceptor = self.shared.acceptor.clone();
            if let Err(e) = self.conn.start_tls(&acceptor).await {
                self.tls_failed(&e);
                return Ok(());
            }
            let client_certificate = self.conn.client_certificate();
            self.shared.update_session(self.id, |r| {
                r.tls = true;
                r.client_certificate = client_certificate;
            });
        }
        match self.fault(&Trigger::Greeting).await? {
            Fired::Normal => {
                let greeting = self.shared.config.greeting.clone();
                self.reply(&greeting);
            }
            Fired::Reply(text) => {
                self.no_service = !text.starts_with('2');
                self.reply(&text);
            }
            Fired::Stop => return Ok(()),
        }
        loop {
            let (line, batch) = match self.conn.read_line().await? {
                Line::Complete(line, batch) => (line, batch),
                Line::Eof => return Ok(()),
                Line::TooLong => {
                    self.line_too_long();
                    return Ok(());
                }
            };
            if let Flow::Close = self.command(&line, batch).await? {
                return Ok(());
            }
            self.deaf_if_asked().await?;
        }
    }

    fn record(&self, line: String, batch: usize, verb: Option<String>) {
        let record = CommandRecord {
            line,
            batch,
            tls: self.conn.is_tls(),
        };
        self.shared.record_command(self.id, record, verb);
    }

    /// Handles one command line.
    async fn command(&mut self, raw: &[u8], batch: usize) -> io::Result<Flow> {
        let line = strip_eol(raw);
        let text = String::from_utf8_lossy(line);
        let (verb, args) = text.split_once(' ').unwrap_or((&text, ""));
        let verb = verb.to_ascii_uppercase();
        let recorded = if verb == "AUTH" {
            // Never the initial response.
            match args.split_whitespace().next() {
                Some(mechanism) => format!("AUTH {mechanism}"),
                None => "AUTH".to_owned(),
            }
        } else {
            text.to_string()
        };
        self.record(recorded, batch, Some(verb.clone()));

        match self.fault(&Trigger::Command(verb.clone())).await? {
            Fired::Normal => {}
            Fired::Reply(reply) => {
                if verb == "BDAT" {
                    // The chunk belongs to the command: read and drop it.
                    if let Some((size, _)) = parse_bdat(args) {
                        if !self.conn.read_exact(size, None).await? {
                            return Ok(Flow::Close);
                        }
                    }
                }
                self.reply(&reply);
                return Ok(Flow::Continue);
            }
            Fired::Stop => return Ok(Flow::Close),
        }

        if std::str::from_utf8(line).is_err() {
            self.reply("500 5.5.2 Error: command is not valid UTF-8");
            return Ok(Flow::Continue);
        }
        if self.no_service && verb != "QUIT" {
            self.reply("503 5.5.1 Error: no service");
            return Ok(Flow::Continue);
        }
        match verb.as_str() {
            "EHLO" => self.ehlo(args),
            "HELO" => self.helo(args),
            "STARTTLS" => return self.starttls(args).await,
            "AUTH" => return self.auth(args).await,
            "MAIL" => self.mail(args),
            "RCPT" => self.rcpt(args),
            "DATA" => return self.data(args).await,
            "BDAT" if self.shared.config.chunking => return self.bdat(args).await,
            "RSET" => {
                self.tx = None;
                self.reply(OK);
            }
            "NOOP" => self.reply(OK),
            "QUIT" => {
                self.shared.update_session(self.id, |r| r.quit = true);
                self.reply("221 2.0.0 Bye");
                return Ok(Flow::Close);
            }
            "" => self.reply("500 5.5.2 Error: bad syntax"),
            _ => self.reply("502 5.5.2 Error: command not recognized"),
        }
        Ok(Flow::Continue)
    }

    fn auth_offered(&self) -> bool {
        let config = &self.shared.config;
        !config.auth_mechanisms.is_empty() && (!config.auth_after_tls_only || self.conn.is_tls())
    }

    fn set_helo(&mut self, name: &str, esmtp: bool) {
        self.greeted = true;
        self.esmtp = esmtp;
        self.tx = None;
        let name = name.to_owned();
        self.shared.update_session(self.id, |r| r.helo = Some(name));
    }

    fn ehlo(&mut self, args: &str) {
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        if !config.ehlo {
            self.reply("502 5.5.2 Error: command not recognized");
            return;
        }
        let name = args.trim();
        if name.is_empty() {
            self.reply("501 5.5.4 Syntax: EHLO hostname");
            return;
        }
        let mut lines = vec![HOSTNAME.to_owned()];
        if config.pipelining {
            lines.push("PIPELINING".to_owned());
        }
        if let Some(size) = config.size_limit {
            lines.push(format!("SIZE {size}"));
        }
        if config.eightbitmime {
            lines.push("8BITMIME".to_owned());
        }
        lines.push("ENHANCEDSTATUSCODES".to_owned());
        if config.starttls && !self.conn.is_tls() {
            lines.push("STARTTLS".to_owned());
        }
        if self.auth_offered() {
            lines.push(format!("AUTH {}", config.auth_mechanisms.join(" ")));
        }
        if config.chunking {
            lines.push("CHUNKING".to_owned());
        }
        if config.smtputf8 {
            lines.push("SMTPUTF8".to_owned());
        }
        if config.dsn {
            lines.push("DSN".to_owned());
        }
        if config.requiretls && self.conn.is_tls() {
            lines.push("REQUIRETLS".to_owned());
        }
        lines.extend(config.ehlo_lines.iter().cloned());
        let reply = multiline(250, &lines);
        self.set_helo(name, true);
        self.reply(&reply);
    }

    fn helo(&mut self, args: &str) {
        let name = args.trim();
        if name.is_empty() {
            self.reply("501 5.5.4 Syntax: HELO hostname");
            return;
        }
        self.set_helo(name, false);
        self.reply(&format!("250 {HOSTNAME}"));
    }

    async fn starttls(&mut self, args: &str) -> io::Result<Flow> {
        if !args.trim().is_empty() {
            self.reply("501 5.5.4 Syntax: STARTTLS");
            return Ok(Flow::Continue);
        }
        if self.conn.is_tls() {
            self.reply("503 5.5.1 Error: TLS already active");
            return Ok(Flow::Continue);
        }
        if !self.shared.config.starttls {
            self.reply("502 5.5.1 Error: command not implemented");
            return Ok(Flow::Continue);
        }
        if self.append.is_some() {
            // Injection test: the 220 and the extra bytes go out together,
            // and the session goes on in clear text.
            self.reply("220 2.0.0 Ready to start TLS");
            return Ok(Flow::Continue);
        }
        self.reply("220 2.0.0 Ready to start TLS");
        // RFC 3207 §4.2: nothing the client sent before the handshake may be
        // taken as coming over TLS.
        let discarded = self.conn.discard_input();
        let acceptor = self.shared.acceptor.clone();
        if let Err(e) = self.conn.start_tls(&acceptor).await {
            self.tls_failed(&e);
            return Ok(Flow::Close);
        }
        self.greeted = false;
        self.esmtp = false;
        self.auth_user = None;
        self.tx = None;
        let client_certificate = self.conn.client_certificate();
        self.shared.update_session(self.id, |r| {
            r.tls = true;
            r.discarded_after_starttls += discarded;
            r.client_certificate = client_certificate;
        });
        Ok(Flow::Continue)
    }

    /// Records why a TLS handshake failed; the connection is then closed
    /// lingering, so that the alert reaches the client.
    fn tls_failed(&mut self, error: &io::Error) {
        let reason = error.to_string();
        self.shared
            .update_session(self.id, |r| r.tls_error = Some(reason));
        self.linger = true;
    }

    async fn auth(&mut self, args: &str) -> io::Result<Flow> {
        let error = if !self.greeted || !self.esmtp {
            Some("503 5.5.1 Error: send EHLO first")
        } else if !self.auth_offered() {
            Some("503 5.5.1 Error: authentication not enabled")
        } else if self.auth_user.is_some() {
            Some("503 5.5.1 Error: already authenticated")
        } else if self.tx.is_some() {
            Some("503 5.5.1 Error: MAIL transaction in progress")
        } else {
            None
        };
        if let Some(error) = error {
            self.reply(error);
            return Ok(Flow::Continue);
        }
        let mut parts = args.split_whitespace();
        let (Some(mechanism), initial, None) = (parts.next(), parts.next(), parts.next()) else {
            self.reply("501 5.5.4 Syntax: AUTH mechanism [initial-response]");
            return Ok(Flow::Continue);
        };
        let mechanism = mechanism.to_ascii_uppercase();
        if !self.shared.config.auth_mechanisms.contains(&mechanism)
            || !SUPPORTED_MECHANISMS.contains(&mechanism.as_str())
        {
            self.reply("504 5.5.4 Unrecognized authentication type");
            return Ok(Flow::Continue);
        }
        let initial = match initial {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(text) => match RESPONSE_ENGINE.decode(text) {
                Ok(raw) => Some(raw),
                Err(_) => {
                    self.reply(INVALID_BASE64);
                    return Ok(Flow::Continue);
                }
            },
        };
        let shared = Arc::clone(&self.shared);
        let Some((mut exchange, mut step)) = Exchange::start(&mechanism, initial, &shared) else {
            self.reply("504 5.5.4 Unrecognized authentication type");
            return Ok(Flow::Continue);
        };
        loop {
            let challenge = match step {
                Step::Success(user) => {
                    self.auth_user = Some(user.clone());
                    self.shared.update_session(self.id, |r| {
                        r.auth_user = Some(user);
                        r.auth_mechanism = Some(mechanism);
                    });
                    self.reply("235 2.7.0 Authentication successful");
                    return Ok(Flow::Continue);
                }
                Step::Failure(reply) => {
                    self.reply(reply);
                    return Ok(Flow::Continue);
                }
                Step::Challenge(challenge) => challenge,
            };
            self.reply(&format!("334 {}", STANDARD.encode(challenge)));
            let (line, batch) = match self.conn.read_line().await? {
                Line::Complete(line, batch) => (Zeroizing::new(line), batch),
                Line::Eof => return Ok(Flow::Close),
                Line::TooLong => {
                    self.line_too_long();
                    return Ok(Flow::Close);
                }
            };
            let text = strip_eol(&line).trim_ascii();
            // The answer to an error challenge carries no secret: recorded
            // as sent when it is the expected one.
            let acknowledgement = exchange
                .error_answer_expected()
                .and_then(|expected| RESPONSE_ENGINE.decode(text).ok().filter(|raw| raw == expected))
                .map(|_| String::from_utf8_lossy(text).into_owned());
            self.record(
                acknowledgement.unwrap_or_else(|| "[auth data]".to_owned()),
                batch,
                None,
            );
            if text == b"*" {
                self.reply("501 5.7.0 Authentication cancelled");
                return Ok(Flow::Continue);
            }
            let response = match RESPONSE_ENGINE.decode(text) {
                Ok(raw) => Zeroizing::new(raw),
                Err(_) => {
                    self.reply(INVALID_BASE64);
                    return Ok(Flow::Continue);
                }
            };
            step = exchange.step(&response, &shared);
        }
    }

    /// Checks the MAIL parameters; the error reply, or whether SMTPUTF8 was
    /// given.
    fn check_mail_params(&self, params: &[String]) -> Result<bool, String> {
        let config = &self.shared.config;
        let mut smtputf8 = false;
        for param in params {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let key = key.to_ascii_uppercase();
            let supported = match key.as_str() {
                "SIZE" if config.size_limit.is_some() => {
                    let size = value
                        .parse::<u64>()
                        .map_err(|_| "501 5.5.4 Bad SIZE parameter".to_owned())?;
                    if let Some(limit) = config.size_limit.filter(|&l| l > 0) {
                        if size > limit {
                            return Err(TOO_BIG.to_owned());
                        }
                    }
                    true
                }
                "BODY" => {
                    value.eq_ignore_ascii_case("7BIT")
                        || (value.eq_ignore_ascii_case("8BITMIME") && config.eightbitmime)
                }
                "SMTPUTF8" if config.smtputf8 && value.is_empty() => {
                    smtputf8 = true;
                    true
                }
                "RET" | "ENVID" => config.dsn,
                "REQUIRETLS" => config.requiretls && self.conn.is_tls() && value.is_empty(),
                "AUTH" => !config.auth_mechanisms.is_empty(),
                _ => false,
            };
            if !supported {
                return Err(format!("555 5.5.4 Unsupported option: {param}"));
            }
        }
        Ok(smtputf8)
    }

    fn mail(&mut self, args: &str) {
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        let error = if !self.greeted {
            Some(SEND_HELO)
        } else if config.require_auth && self.auth_user.is_none() {
            Some("530 5.7.0 Authentication required")
        } else if self.tx.is_some() {
            Some("503 5.5.1 Error: nested MAIL command")
        } else {
            None
        };
        if let Some(error) = error {
            self.reply(error);
            return;
        }
        let Some((address, params)) = parse_path(args, "FROM") else {
            self.reply("501 5.5.4 Syntax: MAIL FROM:<address>");
            return;
        };
        let smtputf8 = match self.check_mail_params(&params) {
            Ok(smtputf8) => smtputf8,
            Err(reply) => {
                self.reply(&reply);
                return;
            }
        };
        if let Some(reply) = address_refusal(&address, smtputf8, &config.reject_senders) {
            self.reply(&reply);
            return;
        }
        self.tx = Some(Transaction {
            mail_from: address,
            mail_params: params,
            smtputf8,
            rcpt_to: Vec::new(),
            rcpt_params: Vec::new(),
            bdat: None,
        });
        self.reply("250 2.1.0 Ok");
    }

    fn rcpt(&mut self, args: &str) {
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        let Some(tx) = &self.tx else {
            self.reply(NEED_MAIL);
            return;
        };
        if tx.bdat.is_some() {
            self.reply("503 5.5.1 Error: RCPT after BDAT");
            return;
        }
        let Some((address, params)) = parse_path(args, "TO") else {
            self.reply("501 5.5.4 Syntax: RCPT TO:<address>");
            return;
        };
        if address.is_empty() {
            self.reply("501 5.1.3 Bad recipient address syntax");
            return;
        }
        for param in &params {
            let key = param.split_once('=').map_or(param.as_str(), |(key, _)| key);
            let dsn_param = key.eq_ignore_ascii_case("NOTIFY") || key.eq_ignore_ascii_case("ORCPT");
            if !(dsn_param && config.dsn) {
                let reply = format!("555 5.5.4 Unsupported option: {param}");
                self.reply(&reply);
                return;
            }
        }
        if let Some(reply) = address_refusal(&address, tx.smtputf8, &config.reject_recipients) {
            self.reply(&reply);
            return;
        }
        if let Some(tx) = &mut self.tx {
            tx.rcpt_to.push(address);
            tx.rcpt_params.push(params);
        }
        self.reply("250 2.1.5 Ok");
    }

    /// The most a body may hold.
    fn body_limit(&self) -> u64 {
        match self.shared.config.size_limit {
            Some(limit) if limit > 0 => limit.min(HARD_SIZE_LIMIT),
            _ => HARD_SIZE_LIMIT,
        }
    }

    async fn data(&mut self, args: &str) -> io::Result<Flow> {
        let error = if !args.trim().is_empty() {
            Some("501 5.5.4 Syntax: DATA")
        } else {
            match &self.tx {
                None => Some(NEED_RCPT),
                Some(tx) if tx.bdat.is_some() => Some("503 5.5.1 Error: DATA after BDAT"),
                Some(tx) if tx.rcpt_to.is_empty() => Some(NO_RECIPIENTS),
                Some(_) => None,
            }
        };
        if let Some(error) = error {
            self.reply(error);
            return Ok(Flow::Continue);
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>");
        self.deaf_if_asked().await?;
        match self.read_body().await? {
            Body::Complete { data, bare, over } => self.end_of_message(data, false, bare, over).await,
            Body::Eof => Ok(Flow::Close),
            Body::TooLong => {
                self.line_too_long();
                Ok(Flow::Close)
            }
        }
    }

    /// Reads a DATA body up to the `.` line: un-dot-stuffs, notes bare CR
    /// and LF, stops storing beyond the size limit. Only `CRLF . CRLF` ends
    /// the body.
    async fn read_body(&mut self) -> io::Result<Body> {
        let limit = self.body_limit();
        let mut data = Vec::new();
        let mut bare = false;
        let mut over = false;
        let mut line_start = true;
        loop {
            let line = match self.conn.read_line().await? {
                Line::Complete(line, _) => line,
                Line::Eof => return Ok(Body::Eof),
                Line::TooLong => return Ok(Body::TooLong),
            };
            if line_start && line == b".\r\n" {
                return Ok(Body::Complete { data, bare, over });
            }
            let crlf = line.ends_with(b"\r\n");
            let content = if crlf {
                &line[..line.len() - 2]
            } else {
                strip_eol(&line)
            };
            if !crlf || content.contains(&b'\r') {
                bare = true;
            }
            let payload = match line.strip_prefix(b".") {
                Some(rest) if line_start => rest,
                _ => &line[..],
            };
            if !over {
                if (data.len() + payload.len()) as u64 > limit {
                    over = true;
                    data = Vec::new();
                } else {
                    data.extend_from_slice(payload);
                }
            }
            line_start = crlf;
        }
    }

    async fn bdat(&mut self, args: &str) -> io::Result<Flow> {
        let Some((size, last)) = parse_bdat(args) else {
            // The chunk cannot be skipped without its size: close rather
            // than read message content as commands.
            self.reply("501 5.5.4 Syntax: BDAT size [LAST]");
            self.linger = true;
            return Ok(Flow::Close);
        };
        let error = match &self.tx {
            None => Some(NEED_MAIL),
            Some(tx) if tx.rcpt_to.is_empty() => Some(NO_RECIPIENTS),
            Some(_) => None,
        };
        if let Some(error) = error {
            if !self.conn.read_exact(size, None).await? {
                return Ok(Flow::Close);
            }
            self.reply(error);
            return Ok(Flow::Continue);
        }
        let limit = self.body_limit();
        let Some(tx) = &mut self.tx else {
            return Ok(Flow::Continue);
        };
        let body = tx.bdat.get_or_insert_with(Vec::new);
        let over = (body.len() as u64).saturating_add(size) > limit;
        let keep = if over { None } else { Some(body) };
        if !self.conn.read_exact(size, keep).await? {
            return Ok(Flow::Close);
        }
        if over {
            self.tx = None;
            self.reply(TOO_BIG);
            return Ok(Flow::Continue);
        }
        if !last {
            self.reply(&format!("250 2.0.0 Ok: {size} octets received"));
            return Ok(Flow::Continue);
        }
        let data = self.tx.as_mut().and_then(|tx| tx.bdat.take()).unwrap_or_default();
        self.end_of_message(data, true, false, false).await
    }

    /// After the final `.` or the LAST chunk: the transaction ends, with the
    /// message accepted unless a fault or the size says otherwise.
    async fn end_of_message(
        &mut self,
        data: Vec<u8>,
        via_bdat: bool,
        bare: bool,
        over: bool,
    ) -> io::Result<Flow> {
        let tx = self.tx.take();
        let accept = match self.fault(&Trigger::EndOfData).await? {
            Fired::Stop => return Ok(Flow::Close),
            Fired::Reply(reply) => {
                let accept = reply.starts_with('2') && !over;
                if accept {
                    self.deliver(tx, data, via_bdat, bare);
                }
                self.reply(&reply);
                return Ok(Flow::Continue);
            }
            Fired::Normal => !over,
        };
        if !accept {
            self.reply(TOO_BIG);
            return Ok(Flow::Continue);
        }
        let queue_id = self.deliver(tx, data, via_bdat, bare);
        self.reply(&format!("250 2.0.0 Ok: queued as {queue_id}"));
        Ok(Flow::Continue)
    }

    /// Records an accepted message; returns its queue id.
    fn deliver(&mut self, tx: Option<Transaction>, data: Vec<u8>, via_bdat: bool, bare: bool) -> String {
        let queue_id = self.shared.queue_id();
        let Some(tx) = tx else {
            return queue_id;
        };
        self.shared.accept_message(ReceivedMessage {
            session: self.id,
            queue_id: queue_id.clone(),
            mail_from: tx.mail_from,
            mail_params: tx.mail_params,
            rcpt_to: tx.rcpt_to,
            rcpt_params: tx.rcpt_params,
            data,
            via_bdat,
            tls: self.conn.is_tls(),
            auth_user: self.auth_user.clone(),
            bare_line_endings: bare,
        });
        queue_id
    }
}
