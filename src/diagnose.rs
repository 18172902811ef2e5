//! "Test connection" and "Send test email" for a settings page: one-off
//! connections (never the pool; unsaved settings work) that report every
//! stage — resolve, connect (or, through a proxy, the proxy stage instead of
//! both), greeting, EHLO, STARTTLS, TLS handshake, AUTH, MAIL, RCPT, DATA —
//! with its duration, outcome and the server's replies, the TLS version and
//! the certificate's names, whether a client certificate was sent (and its
//! subject), the relay reached (a backup, when the primary could not be),
//! whether the test email was DKIM-signed (feature `dkim`: domain, selector,
//! algorithm, and a warning when its `From` domain is not under the signing
//! domain), and on failure the stage, the reply and a plain-language hint.
//! No secret is ever in a report.
//!
//! ```no_run
//! # async fn demo(settings: relaymail::SmtpSettings) {
//! let report = relaymail::diagnose::send_test(&settings, "admin@example.com", None).await;
//! println!("{report}"); // one line per stage, then the verdict
//! if let Some(e) = report.error() {
//!     eprintln!("failed at {:?}: {}", e.stage(), e.hint().unwrap_or(""));
//! }
//! # }
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Stage};
use crate::proto::address::{Address, AddressPolicy};
use crate::proto::auth::Mechanism;
use crate::proto::reply::{Escaped, Reply};
use crate::proto::session::Envelope;
use crate::settings::{Relay, SmtpSettings};
use crate::transport::{Connector, Delivery, StageTiming, TlsInfo, Trace};

/// One stage of a diagnostic connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StageReport {
    /// The stage.
    pub stage: Stage,
    /// Time spent in it.
    pub duration: Duration,
    /// Whether it went well.
    pub ok: bool,
    /// The server's replies in this stage.
    pub replies: Vec<Reply>,
}

/// How the test email was DKIM-signed (feature `dkim`; see
/// [`Report::dkim`]).
#[cfg(feature = "dkim")]
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DkimReport {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// The algorithm (`a=`).
    pub algorithm: crate::dkim::DkimAlgorithm,
    /// Where receivers look the public key up: `selector._domainkey.domain`.
    pub dns_name: String,
    /// The domain of the test email's `From` address.
    pub from_domain: String,
    /// Whether the `From` domain is the signing domain or under it (see
    /// [`DkimSigner::aligns_with`](crate::dkim::DkimSigner::aligns_with)):
    /// when not, DMARC may not count the signature.
    pub aligned: bool,
}

/// What a diagnostic connection found. `Display` prints it for people.
#[derive(Clone, Debug)]
pub struct Report {
    host: String,
    port: u16,
    /// The proxy, as `Display` shows it (never its credentials).
    proxy: Option<String>,
    /// The local source address, when the settings set one.
    source: Option<std::net::IpAddr>,
    stages: Vec<StageReport>,
    tls: Option<TlsInfo>,
    client_certificate: Option<String>,
    auth: Option<Mechanism>,
    extensions: Vec<String>,
    delivery: Option<Delivery>,
    error: Option<Error>,
    relay: Option<Relay>,
    failovers: Vec<(Relay, Error)>,
    #[cfg(feature = "dkim")]
    dkim: Option<DkimReport>,
}

impl Report {
    /// Every stage reached, in order.
    pub fn stages(&self) -> &[StageReport] {
        &self.stages
    }

    /// The TLS parameters, when TLS was established.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The subject of the client certificate the settings hold, if any;
    /// whether it was sent is [`TlsInfo::client_certificate`].
    pub fn client_certificate(&self) -> Option<&str> {
        self.client_certificate.as_deref()
    }

    /// The AUTH mechanism that succeeded.
    pub fn auth_mechanism(&self) -> Option<Mechanism> {
        self.auth
    }

    /// The extensions the server offered (after TLS, when TLS was used).
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }

    /// For a test email: the server's answer.
    pub fn delivery(&self) -> Option<&Delivery> {
        self.delivery.as_ref()
    }

    /// The relay the connection reached: the primary, or a backup when the
    /// relays before it could not be reached (see
    /// [`SmtpSettings::backup_relays`]). `None` when none was reached.
    pub fn relay(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }

    /// The relays tried before the one reached (or before giving up), each
    /// with why it was passed over: unreachable, or 421/4yz at its greeting
    /// or EHLO.
    pub fn failovers(&self) -> &[(Relay, Error)] {
        &self.failovers
    }

    /// For a test email with DKIM signing in the settings (feature
    /// `dkim`): how it was signed. `None` when it was not signed (no DKIM
    /// settings, or the test never got as far as the message).
    #[cfg(feature = "dkim")]
    pub fn dkim(&self) -> Option<&DkimReport> {
        self.dkim.as_ref()
    }

    /// The failure, if any: its stage, reply and hint.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// Whether everything worked.
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }

    fn from_trace(settings: &SmtpSettings, trace: Trace) -> Report {
        let Trace {
            stages,
            replies,
            failovers,
            ..
        } = trace;
        let stages = stages
            .into_iter()
            .map(|StageTiming { stage, duration, ok }| StageReport {
                stage,
                duration,
                ok,
                replies: replies
                    .iter()
                    .filter(|(s, _)| *s == stage)
                    .map(|(_, r)| r.clone())
                    .collect(),
            })
            .collect();
        Report {
            host: settings.host().to_owned(),
            port: settings.port(),
            proxy: settings
                .proxy()
                .map(|p| format!("{} proxy {}", p.kind().label(), p.address())),
            source: settings.source_address(),
            stages,
            tls: None,
            client_certificate: settings
                .tls_options()
                .client_identity()
                .map(|c| c.subject().to_owned()),
            auth: None,
            extensions: Vec::new(),
            delivery: None,
            error: None,
            relay: None,
            failovers,
            #[cfg(feature = "dkim")]
            dkim: None,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SMTP check of {}",
            crate::settings::host_port(&self.host, self.port)
        )?;
        if let Some(proxy) = &self.proxy {
            write!(f, " via the {proxy}")?;
        }
        if let Some(source) = &self.source {
            write!(f, " from {source}")?;
        }
        writeln!(f)?;
        for s in &self.stages {
            write!(
                f,
                "  {:<12} {:>8.1} ms  {}",
                s.stage.as_str(),
                s.duration.as_secs_f64() * 1000.0,
                if s.ok { "ok" } else { "FAILED" }
            )?;
            if let Some(r) = s.replies.last() {
                // Server text: control bytes escaped, never sent to a terminal raw.
                let first = r.lines().first().map(String::as_str).unwrap_or("");
                write!(f, "  ({} {})", r.code().value(), Escaped(first))?;
            }
            writeln!(f)?;
        }
        if let Some(tls) = &self.tls {
            writeln!(
                f,
                "  TLS: {} {}{}; certificate for {}",
                tls.version,
                tls.cipher_suite,
                if tls.via_starttls { " via STARTTLS" } else { "" },
                if tls.certificate_names.is_empty() {
                    "(no names)".to_owned()
                } else {
                    Escaped(tls.certificate_names.join(", ")).to_string()
                }
            )?;
        }
        match (&self.tls, &self.client_certificate) {
            (
                Some(TlsInfo {
                    client_certificate: Some(sent),
                    ..
                }),
                _,
            ) => writeln!(f, "  client certificate: {} (sent)", Escaped(sent))?,
            (Some(_), Some(configured)) => writeln!(
                f,
                "  client certificate: {} (not sent: the server did not ask for one)",
                Escaped(configured)
            )?,
            _ => {}
        }
        if let Some(m) = self.auth {
            writeln!(f, "  AUTH: {}", m.name())?;
        }
        #[cfg(feature = "dkim")]
        if let Some(d) = &self.dkim {
            write!(
                f,
                "  DKIM: signed as d={} s={} a={} (public key at {})",
                d.domain, d.selector, d.algorithm, d.dns_name
            )?;
            if !d.aligned {
                write!(
                    f,
                    "; the From domain {} is not {} or under it: DMARC may not count this signature",
                    Escaped(&d.from_domain),
                    d.domain
                )?;
            }
            writeln!(f)?;
        }
        for (relay, e) in &self.failovers {
            writeln!(
                f,
                "  relay {relay} passed over at {}: {e}",
                e.stage().map_or("connection", Stage::as_str)
            )?;
        }
        if let Some(relay) = self.relay.as_ref().filter(|_| !self.failovers.is_empty()) {
            writeln!(f, "  relay used: {relay}")?;
        }
        match &self.error {
            None => write!(f, "  result: ok"),
            Some(e) => write!(f, "  result: {e}"),
        }
    }
}

/// Connect, EHLO, TLS, AUTH, QUIT — cheap enough to run on every save of a
/// settings form — and report each stage.
pub async fn verify(settings: &SmtpSettings) -> Report {
    run(settings, None).await
}

/// Sends one standard test message to `recipient` over a one-off connection
/// (from `from`, or the settings' sender) and reports each stage. The
/// message says when it was sent, through which relay, with which TLS and
/// AUTH mechanism — never a secret.
pub async fn send_test(settings: &SmtpSettings, recipient: &str, from: Option<&str>) -> Report {
    run(settings, Some((recipient, from))).await
}

async fn run(settings: &SmtpSettings, test: Option<(&str, Option<&str>)>) -> Report {
    let connector = match Connector::new(settings.clone()) {
        Ok(c) => c,
        Err(e) => {
            let mut r = Report::from_trace(settings, Trace::default());
            r.error = Some(e);
            return r;
        }
    };
    let mut conn = match connector.connect_traced(true, None).await {
        Ok(c) => c,
        Err((e, trace)) => {
            let mut r = Report::from_trace(settings, trace);
            r.error = Some(e);
            return r;
        }
    };
    let info = conn.info().clone();
    let mut delivery = None;
    let mut error = None;
    #[cfg(feature = "dkim")]
    let mut dkim = None;
    if let Some((recipient, from)) = test {
        // The form's text is read as address books write it; a bad address
        // is reported like any other failure of the test.
        let parse = |a: &str| Address::parse(a, AddressPolicy::Lenient).map_err(Error::from);
        let addresses = match from {
            Some(f) => parse(f).map(Some),
            None => Ok(Some(settings.sender().address.clone())),
        }
        .and_then(|from| Ok((from, parse(recipient)?)));
        let sent = match addresses {
            Ok((from, to)) => {
                let from_text = from.as_ref().map(Address::to_smtp).unwrap_or_default();
                let body = test_message(settings, &info, &from_text, &to.to_smtp());
                // Signed here rather than by `send`, to report how.
                #[cfg(feature = "dkim")]
                let body = match settings.dkim() {
                    None => Ok(body),
                    Some(signer) => signer.sign(&body).inspect(|_| {
                        let from_domain = from.as_ref().map(|a| a.domain().to_owned()).unwrap_or_default();
                        dkim = Some(DkimReport {
                            domain: signer.domain().to_owned(),
                            selector: signer.selector().to_owned(),
                            algorithm: signer.algorithm(),
                            dns_name: signer.dns_name(),
                            aligned: signer.aligns_with(&from_domain),
                            from_domain,
                        });
                    }),
                };
                #[cfg(not(feature = "dkim"))]
                let body: Result<Vec<u8>, Error> = Ok(body);
                match (body, Envelope::new(from, vec![to])) {
                    (Ok(body), Ok(envelope)) => match conn.submit(envelope, body.into()) {
                        Ok(id) => conn.outcome(id).await,
                        Err(e) => Err(e),
                    },
                    (Err(e), _) => Err(e),
                    (_, Err(e)) => Err(e.into()),
                }
            }
            Err(e) => Err(e),
        };
        match sent {
            Ok(d) => delivery = Some(d),
            Err(e) => error = Some(e),
        }
    }
    let mut trace = conn.take_trace(error.as_ref());
    if error.is_none() {
        // QUIT, timed as a stage of its own.
        let started = tokio::time::Instant::now();
        let quit = conn.quit().await;
        trace.stages.push(StageTiming {
            stage: Stage::Quit,
            duration: started.elapsed(),
            ok: quit.is_ok(),
        });
    }
    let mut r = Report::from_trace(settings, trace);
    r.relay = Some(info.relay.clone());
    r.tls = info.tls.clone();
    r.auth = info.auth_mechanism;
    r.extensions = info
        .capabilities
        .extensions()
        .map(|e| e.keyword().to_owned())
        .collect();
    r.delivery = delivery;
    r.error = error;
    #[cfg(feature = "dkim")]
    {
        r.dkim = dkim;
    }
    r
}

fn test_message(
    settings: &SmtpSettings,
    info: &crate::transport::ConnectionInfo,
    from: &str,
    to: &str,
) -> Vec<u8> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let tls = info.tls.as_ref().map_or("none (clear text)".to_owned(), |t| {
        format!("{} ({})", t.version, t.cipher_suite)
    });
    let auth = info.auth_mechanism.map_or("none", |m| m.name());
    let client_certificate = info
        .tls
        .as_ref()
        .and_then(|t| t.client_certificate.as_deref())
        .unwrap_or("none");
    // The proxy's kind and address only, never its credentials.
    let proxy = settings
        .proxy()
        .map(|p| format!("Proxy: {} {}\n", p.kind().label(), p.address()))
        .unwrap_or_default();
    let body = format!(
        "This is a test email sent to check the SMTP settings.\n\n\
         Relay: {}\n{proxy}TLS: {tls}\nClient certificate: {client_certificate}\nAuthentication: {auth}\n\
         Sent at: {} seconds after 1970-01-01 UTC\n\n\
         If you received it, outgoing email works.\n",
        info.relay,
        now.as_secs()
    );
    mail_builder::MessageBuilder::new()
        .from(from)
        .to(to)
        .subject("SMTP settings test")
        .date(now.as_secs() as i64)
        .message_id(
            Address::parse(from, AddressPolicy::Lenient)
                .map(|a| crate::email::message_id(&a, now))
                .unwrap_or_else(|_| format!("{:016x}@localhost", crate::rand::random_u64())),
        )
        .text_body(body)
        .write_to_vec()
        .unwrap_or_default()
}
