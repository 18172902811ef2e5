//! `relaymail`: check SMTP settings, send mail, and look after an outbox
//! spool from the command line.
//!
//! ```text
//! relaymail verify [CONNECTION] [--json]
//! relaymail send   [CONNECTION] --from ADDR --to ADDR [--to ADDR ...] [--subject S]
//!                  [--body TEXT | --eml FILE] [--json]
//!                  [--count N [--connections K] [--max-per-connection M] [--size BYTES]]
//! relaymail bulk   [CONNECTION] --from ADDR --to ADDR [--to …] [--subject S] --count N
//!                  [--connections K] [--max-per-connection M] [--size BYTES] [--json]
//! relaymail outbox list    --spool DIR [--area drafts|failed|all] [--json]
//! relaymail outbox inspect --spool DIR ID [--area drafts|failed] [--json]
//! relaymail outbox retry   --spool DIR (ID | --all) [--area …] [--json]
//! relaymail outbox delete  --spool DIR ID [--area drafts|failed] [--json]
//!
//! CONNECTION: [--url URL] [--host H] [--port P]
//!             [--tls none|starttls|starttls-opportunistic|implicit] [--user U]
//!             [--helo NAME] [--ca-file PEM] [--timeout SECS] [--allow-plaintext-auth]
//! ```
//!
//! `relaymail help`, `relaymail SUBCOMMAND --help` describe every flag.
//!
//! **Connection.** Either `--host` (and the other flags), or an SMTP URL
//! (`smtp[s]://[user[:password]@]host[:port][?tls=…&helo=…&timeout=…&from=…]`,
//! see `SmtpSettings::from_url`) in `--url` or the environment variable
//! `RELAYMAIL_URL`. With a URL, each flag given replaces that part of it
//! (`--host`, `--port`, `--tls`, `--helo`, `--timeout`, `--from`), `--ca-file`
//! adds a trusted root and `--user` replaces the URL's user. The URL's
//! credentials go only to the URL's host: `--host` naming another host
//! drops them.
//!
//! **Password.** Never on the command line, where other users of the machine
//! can see it: `--password` is refused (exit 2), and so is a URL holding a
//! password in `--url`. It comes from `RELAYMAIL_PASSWORD` (for `--user`, or
//! for a URL with a user and no password) or from the URL in `RELAYMAIL_URL`.
//! No output, help text included, shows it.
//!
//! **send** sends one message (`--body`, or the bytes of an `.eml` file with
//! `--eml`: relaymail normalises line endings and dot-stuffs on the wire).
//! Recipients the server refuses are listed; the exit status stays 0 when
//! the message was accepted for the others.
//!
//! **bulk** (also `send --count N`) generates N distinct messages of about
//! `--size` bytes (default 2048) and sends them through a pooled `Mailer`
//! with K connections (default 4), each carrying at most M messages
//! (default 20). A progress bar goes to stderr on a terminal (none
//! otherwise); `--json` prints
//! `{"sent":…,"failed":…,"seconds":…,"msgs_per_s":…,"connections_opened":…}`.
//!
//! **outbox** works on a `DirSpool` directory (`--spool`, or
//! `RELAYMAIL_SPOOL`): `list` the drafts waiting and failed, `inspect` one,
//! `retry` one (or `--all`: makes them due now, failed ones go back to the
//! drafts; the `Mailer` using the spool delivers them), `delete` one. An id
//! is looked for in the drafts, then in the failed area, unless `--area`
//! says where.
//!
//! **Exit status**: 0 on success; 2 for a usage error (unknown or missing
//! flag, bad value, unreadable `--ca-file`/`--eml`, invalid settings,
//! missing password, not a spool, malformed draft id); 1 when the operation
//! failed (connection, TLS, AUTH, the server refused the message, some bulk
//! messages failed, a spool operation failed). The error (stage and hint)
//! goes to stderr as `relaymail: …`; with `--json`, one JSON object with the
//! outcome goes to stdout. `--help` prints to stdout and exits 0.
//!
//! Run: `cargo run --release --example relaymail -- verify --host smtp.example.com --tls starttls`

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::parser::ValueSource;
use clap::{ArgGroup, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use relaymail::outbox::{Area, DirSpool, DraftId, DraftInfo};
use relaymail::settings::SmtpSettingsBuilder;
use relaymail::{
    Address, AddressPolicy, Connection, Envelope, Error, Mailer, Message, SmtpSettings, TlsMode,
};

/// Exit status of a usage error (clap's own, and the one this tool always used).
const USAGE: u8 = 2;

const ENVIRONMENT: &str = "Environment:
  RELAYMAIL_PASSWORD  the password for --user (or for a URL with a user and no password);
                      never taken from the command line
  RELAYMAIL_URL       an SMTP URL, used when --url is not given
  RELAYMAIL_SPOOL     the outbox spool directory, used when --spool is not given

Exit status: 0 success, 1 the operation failed, 2 usage error.";

/// Check SMTP settings, send mail, and look after an outbox spool.
#[derive(Parser)]
// A flag given twice: the last one counts (as it always did).
#[command(name = "relaymail", version, after_help = ENVIRONMENT, subcommand_required = true)]
#[command(args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Whether the arguments hold `--password` (refused before any parsing, so
/// that no message can echo its value).
fn password_flag(args: &[std::ffi::OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .filter_map(|a| a.to_str())
        .any(|a| a == "--password" || a.starts_with("--password="))
}

#[derive(Subcommand)]
enum Command {
    /// Connect, greet, negotiate TLS and AUTH, then QUIT: checks the settings.
    Verify(VerifyCmd),
    /// Send one message (or, with --count, as many generated ones as bulk does).
    Send(SendCmd),
    /// Send N generated messages through a pooled Mailer (a load test).
    Bulk(BulkCmd),
    /// Look after an outbox spool directory: list, inspect, retry, delete drafts.
    Outbox(OutboxCmd),
}

/// Where and how to connect.
#[derive(Args)]
#[command(next_help_heading = "Connection")]
struct Conn {
    /// An SMTP URL, smtp[s]://[user@]host[:port][?tls=…&helo=…&timeout=…&from=…];
    /// flags override its parts (a user:password only in RELAYMAIL_URL).
    #[arg(long, value_name = "URL", env = "RELAYMAIL_URL", hide_env_values = true)]
    url: Option<String>,
    /// The relay's host name or IP address (required unless a URL is given).
    #[arg(
        long,
        value_name = "HOST",
        allow_hyphen_values = true,
        required_unless_present = "url"
    )]
    host: Option<String>,
    /// The port [default: 25, 587 or 465 by TLS mode].
    #[arg(long, value_name = "PORT")]
    port: Option<u32>,
    /// TLS mode: none, starttls, starttls-opportunistic or implicit [default: starttls].
    #[arg(long, value_name = "MODE", value_parser = tls_mode)]
    tls: Option<TlsMode>,
    /// Log in as this user; the password comes from RELAYMAIL_PASSWORD.
    #[arg(long, value_name = "USER", allow_hyphen_values = true)]
    user: Option<String>,
    /// The name to greet with (EHLO) [default: this machine's name].
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    helo: Option<String>,
    /// Also trust the certificate authorities in this PEM file.
    #[arg(long, value_name = "PEM", allow_hyphen_values = true)]
    ca_file: Option<PathBuf>,
    /// Timeout of each step, in seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Allow AUTH without TLS (the password crosses the network in clear).
    #[arg(long)]
    allow_plaintext_auth: bool,
}

fn tls_mode(v: &str) -> Result<TlsMode, String> {
    v.parse::<TlsMode>()
        .map_err(|_| "use none, starttls, starttls-opportunistic or implicit".to_owned())
}

fn positive(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("not a positive number".to_owned()),
    }
}

/// The message's addresses and subject.
#[derive(Args)]
#[command(next_help_heading = "Message")]
struct Addresses {
    /// The sender (envelope and From:) [default: the URL's from=].
    #[arg(long, value_name = "ADDR", allow_hyphen_values = true)]
    from: Option<String>,
    /// A recipient (repeat for more).
    #[arg(long, value_name = "ADDR", allow_hyphen_values = true, required = true)]
    to: Vec<String>,
    /// The subject [default: "relaymail test", or "relaymail bulk test"].
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    subject: Option<String>,
}

/// The pool of a bulk send.
#[derive(Args)]
#[command(next_help_heading = "Bulk")]
struct Pool {
    /// Connections at once [default: 4].
    #[arg(long, value_name = "K", value_parser = positive, requires = "count")]
    connections: Option<usize>,
    /// Messages per connection before it is closed [default: 20].
    #[arg(long, value_name = "M", value_parser = positive, requires = "count")]
    max_per_connection: Option<usize>,
    /// Approximate size of each message in bytes [default: 2048].
    #[arg(long, value_name = "BYTES", value_parser = positive, requires = "count")]
    size: Option<usize>,
}

#[derive(Args)]
struct VerifyCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(flatten)]
    message: IgnoredMessage,
    /// Print one JSON object with the outcome on stdout.
    #[arg(long, help_heading = "Output")]
    json: bool,
}

/// The message flags `verify` always accepted (one parser served both
/// commands), so that scripts can give both the same flags: `--from` is
/// the settings' sender, the others are ignored. Not in the help.
#[derive(Args)]
#[allow(dead_code)] // read by no one: accepted, then ignored
struct IgnoredMessage {
    #[arg(long, hide = true, allow_hyphen_values = true)]
    from: Option<String>,
    #[arg(long, hide = true, allow_hyphen_values = true)]
    to: Vec<String>,
    #[arg(long, hide = true, allow_hyphen_values = true)]
    subject: Option<String>,
    #[arg(long, hide = true, allow_hyphen_values = true)]
    body: Option<String>,
    #[arg(long, hide = true, allow_hyphen_values = true)]
    eml: Option<PathBuf>,
}

#[derive(Args)]
struct SendCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(flatten)]
    addresses: Addresses,
    /// The text body [default: "Sent with relaymail."].
    #[arg(
        long,
        value_name = "TEXT",
        allow_hyphen_values = true,
        conflicts_with = "eml",
        help_heading = "Message"
    )]
    body: Option<String>,
    /// Send this file's bytes as the message (RFC 5322, any line endings).
    #[arg(
        long,
        value_name = "FILE",
        allow_hyphen_values = true,
        conflicts_with = "count",
        help_heading = "Message"
    )]
    eml: Option<PathBuf>,
    /// Send N generated messages instead, as `relaymail bulk` does.
    #[arg(long, value_name = "N", value_parser = positive, help_heading = "Bulk")]
    count: Option<usize>,
    #[command(flatten)]
    pool: Pool,
    /// Print one JSON object with the outcome on stdout.
    #[arg(long, help_heading = "Output")]
    json: bool,
}

#[derive(Args)]
struct BulkCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(flatten)]
    addresses: Addresses,
    /// How many messages to generate and send.
    #[arg(long, value_name = "N", value_parser = positive, help_heading = "Bulk")]
    count: usize,
    #[command(flatten)]
    pool: Pool,
    /// Print {"sent","failed","seconds","msgs_per_s","connections_opened"} on stdout.
    #[arg(long, help_heading = "Output")]
    json: bool,
}

#[derive(Args)]
struct OutboxCmd {
    #[command(subcommand)]
    action: OutboxAction,
}

#[derive(Subcommand)]
enum OutboxAction {
    /// List the drafts (oldest first).
    List {
        #[command(flatten)]
        spool: Spool,
        /// Which area to list.
        #[arg(long, value_enum, default_value_t = AreaArg::All)]
        area: AreaArg,
        /// Print one JSON object {"ok","drafts":[…],"quarantined":[…]} on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show one draft: envelope, size, attempts, last error.
    Inspect {
        #[command(flatten)]
        spool: Spool,
        /// The draft's id (as `list` shows it).
        id: String,
        /// Where the draft is [default: drafts, then failed].
        #[arg(long, value_enum)]
        area: Option<OneArea>,
        /// Print the draft as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Make a draft due now (a failed one goes back to the drafts).
    #[command(group(ArgGroup::new("which").required(true).args(["id", "all"])))]
    Retry {
        #[command(flatten)]
        spool: Spool,
        /// The draft's id.
        id: Option<String>,
        /// Every draft of the area (of both areas by default).
        #[arg(long)]
        all: bool,
        /// Where the draft(s) are [default: drafts, then failed].
        #[arg(long, value_enum)]
        area: Option<OneArea>,
        /// Print {"ok","retried":[…],"errors":[…]} on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Delete a draft.
    Delete {
        #[command(flatten)]
        spool: Spool,
        /// The draft's id.
        id: String,
        /// Where the draft is [default: drafts, then failed].
        #[arg(long, value_enum)]
        area: Option<OneArea>,
        /// Print {"ok","deleted":…} on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct Spool {
    /// The spool directory (the one given to DirSpool::open).
    #[arg(long, value_name = "DIR", env = "RELAYMAIL_SPOOL")]
    spool: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum AreaArg {
    Drafts,
    Failed,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum OneArea {
    Drafts,
    Failed,
}

impl OneArea {
    fn area(self) -> Area {
        match self {
            OneArea::Drafts => Area::Drafts,
            OneArea::Failed => Area::Failed,
        }
    }
}

// ---------------------------------------------------------------------------
// Envelopes: the only two places that build or read one (the address types
// are about to change).

/// The envelope of every message this tool sends: `from` to each of `to`.
/// An address it refuses is a failed send (exit 1), as when the server or
/// the session refused it.
fn envelope(from: &str, to: &[String]) -> Result<Envelope, Error> {
    // Addresses as address books write them; an empty --from is the null
    // reverse path.
    let parse = |s: &str| Address::parse(s, AddressPolicy::Lenient);
    let from = Some(from).filter(|f| !f.is_empty()).map(parse).transpose()?;
    let to = to.iter().map(|t| parse(t)).collect::<Result<Vec<_>, _>>()?;
    Ok(Envelope::new(from, to)?)
}

/// An envelope's sender and recipients as text.
fn envelope_text(e: &Envelope) -> (String, Vec<String>) {
    (
        e.reverse_path(),
        e.recipients().iter().map(|r| r.address.to_string()).collect(),
    )
}

// ---------------------------------------------------------------------------
// Settings.

/// `(userinfo, host)` of an SMTP URL, as far as they can be told apart.
fn url_authority(url: &str) -> (Option<&str>, &str) {
    let rest = url.trim().split_once("://").map_or("", |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => hostport.rsplit_once(':').map_or(hostport, |(h, _)| h),
    };
    (userinfo, host)
}

fn url_has_from(url: &str) -> bool {
    url.split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("from=")))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn env_password(why: &str) -> Result<String, String> {
    std::env::var("RELAYMAIL_PASSWORD")
        .map_err(|_| format!("{why} needs the password in the RELAYMAIL_PASSWORD environment variable"))
}

/// The settings builder an SMTP URL describes. `on_command_line`: the URL
/// came from `--url`, where it must hold no password.
fn url_builder(url: &str, on_command_line: bool) -> Result<SmtpSettingsBuilder, String> {
    let (userinfo, _) = url_authority(url);
    let with_password = match userinfo {
        Some(info) if info.contains(':') => {
            if on_command_line {
                return Err(
                    "--url holds a password: give it in RELAYMAIL_URL or RELAYMAIL_PASSWORD, \
                            never on the command line"
                        .into(),
                );
            }
            None
        }
        // A user and no password: the password from RELAYMAIL_PASSWORD.
        Some(info) => {
            let password = env_password("the URL's user")?;
            let (scheme, rest) = url.trim().split_once("://").unwrap_or(("", ""));
            let rest = rest.strip_prefix(info).unwrap_or(rest);
            Some(format!("{scheme}://{info}:{}{rest}", percent_encode(&password)))
        }
        None => None,
    };
    SmtpSettingsBuilder::from_url(with_password.as_deref().unwrap_or(url)).map_err(|e| e.to_string())
}

/// The settings from the connection flags; `from` is the sender (a
/// placeholder when there is none: `verify` sends nothing).
fn settings(c: &Conn, from: Option<&str>, url_on_command_line: bool) -> Result<SmtpSettings, String> {
    let url = c.url.as_deref();
    let mut b = match url {
        Some(url) => {
            let mut b = url_builder(url, url_on_command_line)?;
            let (_, url_host) = url_authority(url);
            if c.host
                .as_deref()
                .is_some_and(|h| !h.eq_ignore_ascii_case(url_host))
            {
                // The URL's credentials are for the URL's host only.
                b = b.no_auth();
            }
            b
        }
        None => SmtpSettings::builder().tls(TlsMode::default()),
    };
    match from {
        Some(from) => b = b.sender(from),
        None if url.is_some_and(url_has_from) => {}
        None => b = b.sender("postmaster@localhost.localdomain"),
    }
    if let Some(host) = &c.host {
        b = b.host(host.clone());
    }
    if let Some(tls) = c.tls {
        b = b.tls(tls);
    }
    if let Some(port) = c.port {
        b = b.port(port);
    }
    if let Some(helo) = &c.helo {
        b = b.helo_name(helo.clone());
    }
    if let Some(secs) = c.timeout {
        b = b.timeout(Duration::from_secs(secs));
    }
    if c.allow_plaintext_auth {
        b = b.dangerous(|d| d.allow_plaintext_auth(true));
    }
    if let Some(path) = &c.ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read --ca-file {}: {e}", path.display()))?;
        b = b.add_root_certificates_pem(pem);
    }
    if let Some(user) = &c.user {
        b = b.credentials(user.clone(), env_password("--user")?);
    }
    b.build().map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Output.

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let items: Vec<String> = items.into_iter().map(|s| json_str(s.as_ref())).collect();
    format!("[{}]", items.join(","))
}

fn error_json(command: &str, e: &Error) -> String {
    format!(
        "{{\"ok\":false,\"command\":{},\"stage\":{},\"transient\":{},\"reply_code\":{},\"error\":{},\"hint\":{}}}",
        json_str(command),
        e.stage().map_or("null".into(), |s| json_str(s.as_str())),
        e.is_transient(),
        e.reply().map_or("null".into(), |r| r.code().to_string()),
        json_str(&e.to_string()),
        e.hint().map_or("null".into(), json_str),
    )
}

/// A usage problem found after parsing: stderr (and the JSON outcome), exit 2.
fn usage_error(command: &str, json: bool, msg: &str) -> ExitCode {
    eprintln!("relaymail: {msg}");
    if json {
        println!(
            "{{\"ok\":false,\"command\":{},\"stage\":null,\"error\":{}}}",
            json_str(command),
            json_str(msg)
        );
    }
    ExitCode::from(USAGE)
}

/// A failed operation: stderr (and the JSON outcome), exit 1.
fn failure(command: &str, json: bool, e: &Error) -> ExitCode {
    eprintln!("relaymail: {e}");
    if json {
        println!("{}", error_json(command, e));
    }
    ExitCode::FAILURE
}

// ---------------------------------------------------------------------------
// verify and send.

fn message(a: &Addresses, from: &str, body: Option<&str>, eml: Option<&Path>) -> Result<Vec<u8>, String> {
    if let Some(path) = eml {
        return std::fs::read(path).map_err(|e| format!("cannot read --eml {}: {e}", path.display()));
    }
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d).to_owned();
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    mail_builder::MessageBuilder::new()
        .from(from)
        .to(a.to.iter().map(String::as_str).collect::<Vec<_>>())
        .subject(a.subject.clone().unwrap_or_else(|| "relaymail test".into()))
        .message_id(format!("{}.{}@{domain}", now.as_secs(), now.subsec_nanos()))
        .date(now.as_secs())
        .text_body(body.unwrap_or("Sent with relaymail."))
        .write_to_vec()
        .map_err(|e| format!("cannot build the message: {e}"))
}

/// Connects; with an envelope, sends `message`; QUITs. The outcome as text
/// or JSON.
async fn run(
    settings: &SmtpSettings,
    send: Option<(Envelope, Vec<u8>)>,
    json: bool,
) -> Result<String, Error> {
    let started = Instant::now();
    let mut conn = Connection::open(settings).await?;
    let info = conn.info().clone();
    let tls = info
        .tls
        .as_ref()
        .map_or("none".to_owned(), |t| format!("{} {}", t.version, t.cipher_suite));
    let auth = info.auth_mechanism.map_or("none", |m| m.name());
    let caps: Vec<&str> = info.capabilities.extensions().map(|e| e.keyword()).collect();
    let Some((envelope, message)) = send else {
        conn.quit().await?;
        return Ok(if json {
            format!(
                "{{\"ok\":true,\"command\":\"verify\",\"server\":{},\"peer\":{},\"tls\":{},\"auth\":{},\"capabilities\":{},\"seconds\":{:.3}}}",
                json_str(info.capabilities.server_name()),
                json_str(&info.peer.to_string()),
                json_str(&tls),
                json_str(auth),
                json_list(&caps),
                started.elapsed().as_secs_f64()
            )
        } else {
            format!(
                "ok: {} at {}\n  tls: {tls}\n  auth: {auth}\n  extensions: {}",
                info.capabilities.server_name(),
                info.peer,
                caps.join(" ")
            )
        });
    };
    let delivery = conn.send(envelope, message).await?;
    conn.quit().await?;
    let refused: Vec<String> = delivery
        .refused()
        .map(|(addr, reply)| match reply {
            Some(reply) => format!("{addr}: {reply}"),
            None => format!("{addr}: no reply"),
        })
        .collect();
    Ok(if json {
        format!(
            "{{\"ok\":true,\"command\":\"send\",\"reply\":{},\"accepted\":{},\"refused\":{},\"tls\":{},\"auth\":{},\"seconds\":{:.3}}}",
            json_str(&delivery.reply().to_string()),
            json_list(delivery.accepted().map(ToString::to_string)),
            json_list(&refused),
            json_str(&tls),
            json_str(auth),
            started.elapsed().as_secs_f64()
        )
    } else {
        let mut out = format!("sent: {}", delivery.reply());
        for r in &refused {
            out.push_str(&format!("\n  refused {r}"));
        }
        out
    })
}

async fn verify(cmd: &VerifyCmd, url_on_command_line: bool) -> ExitCode {
    let settings = match settings(&cmd.conn, cmd.message.from.as_deref(), url_on_command_line) {
        Ok(s) => s,
        Err(msg) => return usage_error("verify", cmd.json, &msg),
    };
    match run(&settings, None, cmd.json).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => failure("verify", cmd.json, &e),
    }
}

/// The envelope sender: `--from`, or the URL's `from=`.
fn sender(a: &Addresses, settings: &SmtpSettings) -> String {
    a.from
        .clone()
        .unwrap_or_else(|| settings.sender().address.to_string())
}

fn needs_from(a: &Addresses, c: &Conn) -> Option<&'static str> {
    (a.from.is_none() && !c.url.as_deref().is_some_and(url_has_from))
        .then_some("give the sender with --from (or from= in the URL)")
}

async fn send(cmd: &SendCmd, url_on_command_line: bool) -> ExitCode {
    if let Some(count) = cmd.count {
        let bulk_cmd = BulkRun {
            addresses: &cmd.addresses,
            count,
            pool: &cmd.pool,
            json: cmd.json,
        };
        return bulk_with(&cmd.conn, bulk_cmd, url_on_command_line).await;
    }
    if let Some(msg) = needs_from(&cmd.addresses, &cmd.conn) {
        return usage_error("send", cmd.json, msg);
    }
    let prepared = settings(&cmd.conn, cmd.addresses.from.as_deref(), url_on_command_line).and_then(|s| {
        let from = sender(&cmd.addresses, &s);
        let body = message(&cmd.addresses, &from, cmd.body.as_deref(), cmd.eml.as_deref())?;
        Ok((s, from, body))
    });
    let (settings, from, body) = match prepared {
        Ok(p) => p,
        Err(msg) => return usage_error("send", cmd.json, &msg),
    };
    let envelope = match envelope(&from, &cmd.addresses.to) {
        Ok(e) => e,
        Err(e) => return failure("send", cmd.json, &e),
    };
    match run(&settings, Some((envelope, body)), cmd.json).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => failure("send", cmd.json, &e),
    }
}

// ---------------------------------------------------------------------------
// bulk.

/// What a bulk send needs (from `bulk` or `send --count`).
struct BulkRun<'a> {
    addresses: &'a Addresses,
    count: usize,
    pool: &'a Pool,
    json: bool,
}

/// One of the bulk messages: distinct Message-ID and subject, about `size`
/// bytes.
fn bulk_message(b: &BulkRun<'_>, from: &str, i: usize, size: usize) -> Result<Vec<u8>, String> {
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d).to_owned();
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let subject = b
        .addresses
        .subject
        .clone()
        .unwrap_or_else(|| "relaymail bulk test".into());
    let mut body = format!("Message {} of {}.\n", i + 1, b.count);
    let line = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\n";
    while body.len() + line.len() + 300 <= size {
        body.push_str(line);
    }
    mail_builder::MessageBuilder::new()
        .from(from)
        .to(b.addresses.to.iter().map(String::as_str).collect::<Vec<_>>())
        .subject(format!("{subject} #{}", i + 1))
        .message_id(format!(
            "bulk.{}.{}.{i}@{domain}",
            now.as_secs(),
            std::process::id()
        ))
        .date(now.as_secs())
        .text_body(body)
        .write_to_vec()
        .map_err(|e| format!("cannot build the message: {e}"))
}

async fn bulk_with(conn: &Conn, b: BulkRun<'_>, url_on_command_line: bool) -> ExitCode {
    // As before the subcommands: a usage problem here prints no JSON.
    if let Some(msg) = needs_from(b.addresses, conn) {
        return usage_error("bulk", false, msg);
    }
    let settings = match settings(conn, b.addresses.from.as_deref(), url_on_command_line) {
        Ok(s) => s,
        Err(msg) => return usage_error("bulk", false, &msg),
    };
    let from = sender(b.addresses, &settings);
    match envelope(&from, &b.addresses.to) {
        Ok(envelope) => bulk(&b, settings, &from, envelope).await,
        Err(e) => {
            eprintln!("relaymail: {e}");
            ExitCode::FAILURE
        }
    }
}

/// N messages through a pooled `Mailer`.
async fn bulk(b: &BulkRun<'_>, settings: SmtpSettings, from: &str, envelope: Envelope) -> ExitCode {
    let count = b.count;
    let size = b.pool.size.unwrap_or(2048);
    let settings = match settings
        .to_builder()
        .max_deliveries_per_connection(b.pool.max_per_connection.unwrap_or(20))
        .build()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("relaymail: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let mailer = match Mailer::builder(settings)
        .max_connections(b.pool.connections.unwrap_or(4))
        .build()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("relaymail: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = std::io::stderr().is_terminal().then(|| {
        let done = done.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed) as usize;
                let filled = n * 30 / count.max(1);
                let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-3);
                eprint!(
                    "\r[{}{}] {n}/{count}  {rate:.0} msg/s ",
                    "#".repeat(filled),
                    ".".repeat(30 - filled)
                );
                let _ = std::io::stderr().flush();
            }
        })
    });
    // Outcomes are collected as they come, while messages are still being
    // generated and handed over (the queue bounds memory).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<relaymail::Pending>(1024);
    let collector = {
        let (done, failed) = (done.clone(), failed.clone());
        tokio::spawn(async move {
            let mut first_error = None;
            while let Some(p) = rx.recv().await {
                if let Err(e) = p.await {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            first_error
        })
    };
    for i in 0..count {
        let bytes = match bulk_message(b, from, i, size) {
            Ok(bytes) => bytes,
            Err(msg) => {
                eprintln!("relaymail: {msg}");
                return ExitCode::from(USAGE);
            }
        };
        match mailer.submit(Message::new(envelope.clone(), bytes)).await {
            Ok(p) => {
                if tx.send(p).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                eprintln!("relaymail: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    drop(tx);
    let first_error = collector.await.ok().flatten();
    let seconds = started.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let stats = mailer.shutdown(Duration::from_secs(30)).await;
    let failed = failed.load(Ordering::Relaxed);
    let sent = count as u64 - failed;
    if b.json {
        println!(
            "{{\"sent\":{sent},\"failed\":{failed},\"seconds\":{seconds:.3},\"msgs_per_s\":{:.1},\"connections_opened\":{}}}",
            sent as f64 / seconds.max(1e-9),
            stats.connections_opened
        );
    } else {
        println!(
            "sent {sent}, failed {failed} in {seconds:.2} s ({:.0} msg/s) over {} connection(s)",
            sent as f64 / seconds.max(1e-9),
            stats.connections_opened
        );
    }
    match first_error {
        Some(e) => {
            eprintln!("relaymail: {failed} message(s) failed; first error: {e}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}

// ---------------------------------------------------------------------------
// outbox.

fn area_name(area: Area) -> &'static str {
    match area {
        Area::Failed => "failed",
        _ => "drafts",
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn draft_json(d: &DraftInfo) -> String {
    let (from, to) = envelope_text(&d.envelope);
    format!(
        "{{\"id\":{},\"area\":{},\"from\":{},\"to\":{},\"size\":{},\"created\":{:.3},\"attempts\":{},\"next_attempt\":{:.3},\"last_error\":{},\"possibly_delivered\":{},\"waiting_on_settings\":{}}}",
        json_str(d.id.as_str()),
        json_str(area_name(d.area)),
        json_str(&from),
        json_list(&to),
        d.size,
        unix_seconds(d.created),
        d.attempts,
        unix_seconds(d.next_attempt),
        d.last_error.as_deref().map_or("null".into(), json_str),
        d.possibly_delivered,
        d.waiting_on_settings,
    )
}

/// One line per draft (`list`).
fn draft_line(d: &DraftInfo) -> String {
    let (from, to) = envelope_text(&d.envelope);
    let mut line = format!(
        "{}  {:<6}  {} attempt(s)  {} bytes  <{from}> -> {}",
        d.id,
        area_name(d.area),
        d.attempts,
        d.size,
        to.join(", ")
    );
    if let Some(e) = &d.last_error {
        line.push_str(&format!("\n    last error: {e}"));
    }
    line
}

/// Every field of a draft (`inspect`).
fn draft_text(d: &DraftInfo) -> String {
    let (from, to) = envelope_text(&d.envelope);
    let when = |t: SystemTime| {
        let now = SystemTime::now();
        match t.duration_since(now) {
            Ok(ahead) => format!("in {} s", ahead.as_secs()),
            Err(e) => format!("{} s ago", e.duration().as_secs()),
        }
    };
    format!(
        "id: {}\narea: {}\nfrom: <{from}>\nto: {}\nsize: {} bytes\ncreated: {}\nattempts: {}\nnext attempt: {}\nlast error: {}\npossibly delivered: {}\nwaiting on the settings: {}",
        d.id,
        area_name(d.area),
        to.join(", "),
        d.size,
        when(d.created),
        d.attempts,
        if d.area == Area::Drafts {
            match d.next_attempt.duration_since(SystemTime::now()) {
                Ok(ahead) => format!("in {} s", ahead.as_secs()),
                Err(_) => "due now".into(),
            }
        } else {
            "never (failed)".into()
        },
        d.last_error.as_deref().unwrap_or("none"),
        if d.possibly_delivered { "yes" } else { "no" },
        if d.waiting_on_settings { "yes" } else { "no" },
    )
}

/// Opens an existing spool (never creates one for a mistyped path).
fn open_spool(s: &Spool) -> Result<DirSpool, String> {
    if !s.spool.join("drafts").is_dir() {
        return Err(format!(
            "{} is not an outbox spool (it has no drafts/ directory)",
            s.spool.display()
        ));
    }
    DirSpool::open(&s.spool).map_err(|e| e.to_string())
}

fn draft_id(text: &str) -> Result<DraftId, String> {
    DraftId::parse(text).ok_or_else(|| format!("{text:?} is not a draft id (as `outbox list` shows them)"))
}

/// The draft `id` in `area`, or (without) in the drafts, then the failed area.
fn find(spool: &DirSpool, id: &DraftId, area: Option<OneArea>) -> Result<DraftInfo, Error> {
    match area {
        Some(a) => spool.inspect(a.area(), id),
        None => spool
            .inspect(Area::Drafts, id)
            .or_else(|e| spool.inspect(Area::Failed, id).map_err(|_| e)),
    }
}

/// Every draft of the areas, a page at a time.
fn each_draft(
    spool: &DirSpool,
    areas: &[Area],
    mut f: impl FnMut(DraftInfo),
    quarantined: &mut Vec<PathBuf>,
) -> Result<(), Error> {
    for &area in areas {
        let mut after = None;
        loop {
            let page = spool.list(area, after.as_ref(), 100)?;
            quarantined.extend(page.quarantined);
            page.drafts.into_iter().for_each(&mut f);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(())
}

fn outbox(cmd: OutboxCmd) -> ExitCode {
    let (spool_arg, json, name) = match &cmd.action {
        OutboxAction::List { spool, json, .. } => (spool, *json, "outbox list"),
        OutboxAction::Inspect { spool, json, .. } => (spool, *json, "outbox inspect"),
        OutboxAction::Retry { spool, json, .. } => (spool, *json, "outbox retry"),
        OutboxAction::Delete { spool, json, .. } => (spool, *json, "outbox delete"),
    };
    let spool = match open_spool(spool_arg) {
        Ok(s) => s,
        Err(msg) => return usage_error(name, json, &msg),
    };
    match cmd.action {
        OutboxAction::List { area, .. } => {
            let areas: &[Area] = match area {
                AreaArg::Drafts => &[Area::Drafts],
                AreaArg::Failed => &[Area::Failed],
                AreaArg::All => &[Area::Drafts, Area::Failed],
            };
            let mut items = Vec::new();
            let mut quarantined = Vec::new();
            let mut stdout = std::io::stdout().lock();
            let listed = each_draft(
                &spool,
                areas,
                |d| {
                    if json {
                        items.push(draft_json(&d));
                    } else {
                        let _ = writeln!(stdout, "{}", draft_line(&d));
                    }
                },
                &mut quarantined,
            );
            drop(stdout);
            for q in &quarantined {
                eprintln!("relaymail: unreadable file moved to {}", q.display());
            }
            if let Err(e) = listed {
                return failure(name, json, &e);
            }
            if json {
                let quarantined: Vec<String> = quarantined.iter().map(|q| q.display().to_string()).collect();
                println!(
                    "{{\"ok\":true,\"command\":\"outbox list\",\"drafts\":[{}],\"quarantined\":{}}}",
                    items.join(","),
                    json_list(&quarantined)
                );
            }
            ExitCode::SUCCESS
        }
        OutboxAction::Inspect { id, area, .. } => {
            let id = match draft_id(&id) {
                Ok(id) => id,
                Err(msg) => return usage_error(name, json, &msg),
            };
            match find(&spool, &id, area) {
                Ok(d) if json => {
                    println!(
                        "{{\"ok\":true,\"command\":\"outbox inspect\",\"draft\":{}}}",
                        draft_json(&d)
                    );
                    ExitCode::SUCCESS
                }
                Ok(d) => {
                    println!("{}", draft_text(&d));
                    ExitCode::SUCCESS
                }
                Err(e) => failure(name, json, &e),
            }
        }
        OutboxAction::Delete { id, area, .. } => {
            let id = match draft_id(&id) {
                Ok(id) => id,
                Err(msg) => return usage_error(name, json, &msg),
            };
            let deleted = find(&spool, &id, area).and_then(|d| spool.delete(d.area, &id).map(|()| d.area));
            match deleted {
                Ok(area) => {
                    if json {
                        println!(
                            "{{\"ok\":true,\"command\":\"outbox delete\",\"deleted\":{},\"area\":{}}}",
                            json_str(id.as_str()),
                            json_str(area_name(area))
                        );
                    } else {
                        println!("deleted {id} ({})", area_name(area));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => failure(name, json, &e),
            }
        }
        OutboxAction::Retry { id, all, area, .. } => {
            let mut targets: Vec<(Area, DraftId)> = Vec::new();
            if all {
                let areas = match area {
                    Some(a) => vec![a.area()],
                    // The waiting drafts first: the failed ones join them.
                    None => vec![Area::Drafts, Area::Failed],
                };
                let mut quarantined = Vec::new();
                if let Err(e) = each_draft(&spool, &areas, |d| targets.push((d.area, d.id)), &mut quarantined)
                {
                    return failure(name, json, &e);
                }
                for q in &quarantined {
                    eprintln!("relaymail: unreadable file moved to {}", q.display());
                }
            } else {
                let id = match draft_id(id.as_deref().unwrap_or_default()) {
                    Ok(id) => id,
                    Err(msg) => return usage_error(name, json, &msg),
                };
                match find(&spool, &id, area) {
                    Ok(d) => targets.push((d.area, id)),
                    Err(e) => return failure(name, json, &e),
                }
            }
            let mut retried = Vec::new();
            let mut errors = Vec::new();
            for (area, id) in targets {
                match spool.retry_now(area, &id) {
                    Ok(()) => retried.push(id.to_string()),
                    Err(e) => {
                        eprintln!("relaymail: {e}");
                        errors.push(format!("{id}: {e}"));
                    }
                }
            }
            if json {
                println!(
                    "{{\"ok\":{},\"command\":\"outbox retry\",\"retried\":{},\"errors\":{}}}",
                    errors.is_empty(),
                    json_list(&retried),
                    json_list(&errors)
                );
            } else {
                for id in &retried {
                    println!("due now: {id}");
                }
                if all {
                    println!("{} draft(s) due now, {} error(s)", retried.len(), errors.len());
                }
            }
            if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

// ---------------------------------------------------------------------------

/// Whether `--url` came from the command line (not from RELAYMAIL_URL).
fn url_on_command_line(matches: &clap::ArgMatches) -> bool {
    matches
        .subcommand()
        .and_then(|(_, sub)| {
            sub.try_get_raw("url")
                .ok()
                .flatten()
                .map(|_| sub.value_source("url"))
        })
        .is_some_and(|source| source == Some(ValueSource::CommandLine))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // clap's usage errors exit with 2, as this tool always did; --help and
    // --version print to stdout and exit 0.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if password_flag(&args) {
        eprintln!("relaymail: pass the password in the RELAYMAIL_PASSWORD environment variable");
        eprintln!("For more information, try '--help'.");
        return ExitCode::from(USAGE);
    }
    let matches = Cli::command().get_matches_from(args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let url_on_command_line = url_on_command_line(&matches);
    match cli.command {
        Command::Verify(cmd) => verify(&cmd, url_on_command_line).await,
        Command::Send(cmd) => send(&cmd, url_on_command_line).await,
        Command::Bulk(cmd) => {
            let run = BulkRun {
                addresses: &cmd.addresses,
                count: cmd.count,
                pool: &cmd.pool,
                json: cmd.json,
            };
            bulk_with(&cmd.conn, run, url_on_command_line).await
        }
        // Blocking file work: nothing else runs meanwhile.
        Command::Outbox(cmd) => outbox(cmd),
    }
}
