//! `relaymail`: check SMTP settings or send mail from the command line.
//!
//! ```text
//! relaymail verify --host H --port P --tls none|starttls|starttls-opportunistic|implicit [--user U]
//!                  [--helo NAME] [--ca-file PEM] [--timeout SECS] [--allow-plaintext-auth]
//! relaymail send   (same options) --from ADDR --to ADDR [--to ADDR ...] [--subject S]
//!                  [--body TEXT | --eml FILE] [--json]
//!                  [--count N [--connections K] [--max-per-connection M] [--size BYTES]]
//! ```
//!
//! With `--count N`, `send` generates N distinct messages of about `--size`
//! bytes (default 2048) and sends them through a pooled `Mailer` with K
//! connections (default 4), each carrying at most M messages (default 20). A
//! progress bar goes to stderr on a terminal (none otherwise); `--json` prints
//! `{"sent":…,"failed":…,"seconds":…,"msgs_per_s":…,"connections_opened":…}`.
//!
//! The password is read only from the environment variable
//! `RELAYMAIL_PASSWORD` (never from the command line, where other users of
//! the machine could see it). `--eml` sends the file's bytes as the message;
//! relaymail normalises line endings and dot-stuffs on the wire. Exit status
//! 0 on success; otherwise the error (stage and hint) goes to stderr.
//! `--json` prints one JSON object with the outcome on stdout.
//!
//! Run: `cargo run --release --example relaymail -- verify --host smtp.example.com --tls starttls`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use relaymail::{
    Address, AddressPolicy, Connection, Envelope, Error, Mailer, Message, SmtpSettings, TlsMode,
};

const USAGE: &str = "usage:
  relaymail verify --host H --port P --tls none|starttls|starttls-opportunistic|implicit [--user U]
                   [--helo NAME] [--ca-file PEM] [--timeout SECS] [--allow-plaintext-auth]
  relaymail send   (same options) --from ADDR --to ADDR [--to ADDR ...] [--subject S]
                   [--body TEXT | --eml FILE] [--json]
                   [--count N [--connections K] [--max-per-connection M] [--size BYTES]]
The password is read from the environment variable RELAYMAIL_PASSWORD.";

#[derive(Default)]
struct Args {
    command: String,
    host: Option<String>,
    port: Option<u32>,
    tls: Option<TlsMode>,
    user: Option<String>,
    helo: Option<String>,
    ca_file: Option<String>,
    timeout: Option<u64>,
    allow_plaintext_auth: bool,
    from: Option<String>,
    to: Vec<String>,
    subject: Option<String>,
    body: Option<String>,
    eml: Option<String>,
    json: bool,
    count: Option<usize>,
    connections: Option<usize>,
    max_per_connection: Option<usize>,
    size: Option<usize>,
}

fn number(flag: &str, v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} {v:?} is not a positive number")),
    }
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        command: argv.next().ok_or("missing command: verify or send")?,
        ..Args::default()
    };
    if a.command != "verify" && a.command != "send" {
        return Err(format!("unknown command {:?}: use verify or send", a.command));
    }
    while let Some(flag) = argv.next() {
        let mut value = |name: &str| argv.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--host" => a.host = Some(value("--host")?),
            "--port" => {
                let v = value("--port")?;
                a.port = Some(v.parse().map_err(|_| format!("--port {v:?} is not a number"))?);
            }
            "--tls" => {
                let v = value("--tls")?;
                a.tls = Some(v.parse::<TlsMode>().map_err(|_| {
                    format!("--tls {v:?}: use none, starttls, starttls-opportunistic or implicit")
                })?);
            }
            "--user" => a.user = Some(value("--user")?),
            "--helo" => a.helo = Some(value("--helo")?),
            "--ca-file" => a.ca_file = Some(value("--ca-file")?),
            "--timeout" => {
                let v = value("--timeout")?;
                a.timeout = Some(
                    v.parse()
                        .map_err(|_| format!("--timeout {v:?} is not a number of seconds"))?,
                );
            }
            "--allow-plaintext-auth" => a.allow_plaintext_auth = true,
            "--from" => a.from = Some(value("--from")?),
            "--to" => a.to.push(value("--to")?),
            "--subject" => a.subject = Some(value("--subject")?),
            "--body" => a.body = Some(value("--body")?),
            "--eml" => a.eml = Some(value("--eml")?),
            "--json" => a.json = true,
            "--count" => a.count = Some(number("--count", &value("--count")?)?),
            "--connections" => a.connections = Some(number("--connections", &value("--connections")?)?),
            "--max-per-connection" => {
                a.max_per_connection = Some(number("--max-per-connection", &value("--max-per-connection")?)?)
            }
            "--size" => a.size = Some(number("--size", &value("--size")?)?),
            "--password" => {
                return Err("pass the password in the RELAYMAIL_PASSWORD environment variable".into())
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if a.host.is_none() {
        return Err("--host is required".into());
    }
    if a.command == "send" {
        if a.from.is_none() {
            return Err("send needs --from".into());
        }
        if a.to.is_empty() {
            return Err("send needs at least one --to".into());
        }
        if a.body.is_some() && a.eml.is_some() {
            return Err("use either --body or --eml, not both".into());
        }
        if a.count.is_none()
            && (a.connections.is_some() || a.max_per_connection.is_some() || a.size.is_some())
        {
            return Err("--connections, --max-per-connection and --size go with --count".into());
        }
        if a.count.is_some() && a.eml.is_some() {
            return Err("--count generates its messages: --eml does not apply".into());
        }
    } else if a.count.is_some() {
        return Err("--count goes with send".into());
    }
    Ok(a)
}

fn settings(a: &Args) -> Result<SmtpSettings, String> {
    let tls = a.tls.unwrap_or_default();
    let mut b = SmtpSettings::builder()
        .host(a.host.clone().unwrap_or_default())
        .tls(tls)
        .sender(
            a.from
                .clone()
                .unwrap_or_else(|| "postmaster@localhost.localdomain".into()),
        )
        .dangerous(|d| d.allow_plaintext_auth(a.allow_plaintext_auth));
    if let Some(port) = a.port {
        b = b.port(port);
    }
    if let Some(helo) = &a.helo {
        b = b.helo_name(helo.clone());
    }
    if let Some(secs) = a.timeout {
        b = b.timeout(Duration::from_secs(secs));
    }
    if let Some(path) = &a.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read --ca-file {path}: {e}"))?;
        b = b.add_root_certificates_pem(pem);
    }
    if let Some(user) = &a.user {
        let password = std::env::var("RELAYMAIL_PASSWORD").map_err(|_| {
            "--user needs the password in the RELAYMAIL_PASSWORD environment variable".to_owned()
        })?;
        b = b.credentials(user.clone(), password);
    }
    b.build().map_err(|e| e.to_string())
}

fn message(a: &Args) -> Result<Vec<u8>, String> {
    if let Some(path) = &a.eml {
        return std::fs::read(path).map_err(|e| format!("cannot read --eml {path}: {e}"));
    }
    let from = a.from.clone().unwrap_or_default();
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d).to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let builder = mail_builder::MessageBuilder::new()
        .from(from.as_str())
        .to(a.to.iter().map(String::as_str).collect::<Vec<_>>())
        .subject(a.subject.clone().unwrap_or_else(|| "relaymail test".into()))
        .message_id(format!("{}.{}@{domain}", now.as_secs(), now.subsec_nanos()))
        .date(now.as_secs())
        .text_body(a.body.clone().unwrap_or_else(|| "Sent with relaymail.".into()));
    builder
        .write_to_vec()
        .map_err(|e| format!("cannot build the message: {e}"))
}

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

/// The envelope from the command line (no `--from`: the null reverse
/// path), addresses read as address books write them.
fn envelope(a: &Args) -> Result<Envelope, Error> {
    let parse = |s: &str| Address::parse(s, AddressPolicy::Lenient);
    let from = a
        .from
        .as_deref()
        .filter(|f| !f.is_empty())
        .map(parse)
        .transpose()?;
    let to = a.to.iter().map(|t| parse(t)).collect::<Result<Vec<_>, _>>()?;
    Ok(Envelope::new(from, to)?)
}

async fn run(a: &Args, settings: &SmtpSettings, message: Vec<u8>) -> Result<String, Error> {
    let started = Instant::now();
    let mut conn = Connection::open(settings).await?;
    let info = conn.info().clone();
    let tls = info
        .tls
        .as_ref()
        .map_or("none".to_owned(), |t| format!("{} {}", t.version, t.cipher_suite));
    let auth = info.auth_mechanism.map_or("none", |m| m.name());
    let caps: Vec<&str> = info.capabilities.extensions().map(|e| e.keyword()).collect();
    if a.command == "verify" {
        conn.quit().await?;
        return Ok(if a.json {
            format!(
                "{{\"ok\":true,\"command\":\"verify\",\"server\":{},\"peer\":{},\"tls\":{},\"auth\":{},\"capabilities\":[{}],\"seconds\":{:.3}}}",
                json_str(info.capabilities.server_name()),
                json_str(&info.peer.to_string()),
                json_str(&tls),
                json_str(auth),
                caps.iter().map(|c| json_str(c)).collect::<Vec<_>>().join(","),
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
    }
    let envelope = envelope(a)?;
    let delivery = conn.send(envelope, message).await?;
    conn.quit().await?;
    let refused: Vec<String> = delivery
        .refused()
        .map(|(addr, reply)| match reply {
            Some(reply) => format!("{addr}: {reply}"),
            None => format!("{addr}: no reply"),
        })
        .collect();
    Ok(if a.json {
        format!(
            "{{\"ok\":true,\"command\":\"send\",\"reply\":{},\"accepted\":[{}],\"refused\":[{}],\"tls\":{},\"auth\":{},\"seconds\":{:.3}}}",
            json_str(&delivery.reply().to_string()),
            delivery.accepted().map(|a| json_str(&a.to_string())).collect::<Vec<_>>().join(","),
            refused.iter().map(|r| json_str(r)).collect::<Vec<_>>().join(","),
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

/// One of the `--count` messages: distinct Message-ID and subject, about
/// `size` bytes.
fn bulk_message(a: &Args, i: usize, size: usize) -> Result<Vec<u8>, String> {
    let from = a.from.clone().unwrap_or_default();
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d).to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let subject = a.subject.clone().unwrap_or_else(|| "relaymail bulk test".into());
    let mut body = format!("Message {} of {}.\n", i + 1, a.count.unwrap_or(1));
    let line = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\n";
    while body.len() + line.len() + 300 <= size {
        body.push_str(line);
    }
    mail_builder::MessageBuilder::new()
        .from(from.as_str())
        .to(a.to.iter().map(String::as_str).collect::<Vec<_>>())
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

/// `send --count N`: N messages through a pooled `Mailer`.
async fn bulk(a: &Args, settings: SmtpSettings) -> ExitCode {
    let count = a.count.unwrap_or(1);
    let size = a.size.unwrap_or(2048);
    let mailer = match Mailer::builder(settings)
        .max_connections(a.connections.unwrap_or(4))
        .max_deliveries_per_connection(a.max_per_connection.unwrap_or(20))
        .build()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("relaymail: {e}");
            return ExitCode::from(2);
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
    let envelope = match envelope(a) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("relaymail: {e}");
            return ExitCode::from(2);
        }
    };
    for i in 0..count {
        let bytes = match bulk_message(a, i, size) {
            Ok(b) => b,
            Err(msg) => {
                eprintln!("relaymail: {msg}");
                return ExitCode::from(2);
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
    if a.json {
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("relaymail: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.count.is_some() {
        return match settings(&args) {
            Ok(s) => bulk(&args, s).await,
            Err(msg) => {
                eprintln!("relaymail: {msg}");
                ExitCode::from(2)
            }
        };
    }
    let prepared = settings(&args).and_then(|s| {
        let body = if args.command == "send" {
            message(&args)?
        } else {
            Vec::new()
        };
        Ok((s, body))
    });
    let (settings, message) = match prepared {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("relaymail: {msg}");
            if args.json {
                println!(
                    "{{\"ok\":false,\"command\":{},\"stage\":null,\"error\":{}}}",
                    json_str(&args.command),
                    json_str(&msg)
                );
            }
            return ExitCode::from(2);
        }
    };
    match run(&args, &settings, message).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relaymail: {e}");
            if args.json {
                println!("{}", error_json(&args.command, &e));
            }
            ExitCode::FAILURE
        }
    }
}
