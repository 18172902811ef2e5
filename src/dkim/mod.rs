//! DKIM signing (RFC 6376; feature `dkim`): every message a [`Mailer`] or
//! [`Connection`] sends carries a `DKIM-Signature` of the settings' domain,
//! so that receivers can tell it really comes from that domain.
//!
//! ```
//! # #[cfg(feature = "dkim")] {
//! use relaymail::dkim::DkimConfig;
//! use relaymail::SmtpSettings;
//!
//! // A test key (tests/dkim/keys/ed25519.pem): read yours from a secret store.
//! let key_pem = "-----BEGIN PRIVATE KEY-----
//! MC4CAQAwBQYDK2VwBCIEINjFBi93RU5GikpOFM+VjK8e7hCKZ+oIbTe/5yCoVUoW
//! -----END PRIVATE KEY-----";
//! let settings = SmtpSettings::builder()
//!     .host("smtp.example.com")
//!     .sender("noreply@example.com")
//!     .dkim(DkimConfig::new("example.com", "mail2024", key_pem))
//!     .build()
//!     .unwrap();
//! let dkim = settings.dkim().unwrap();
//! // What to publish in DNS, at mail2024._domainkey.example.com:
//! assert!(dkim.dns_record().starts_with("v=DKIM1; k=ed25519; p="));
//! # }
//! ```
//!
//! - **Keys**: RSA (`rsa-sha256`) of 2048 to 4096 bits — 2048 is the usual
//!   size, and ring, which signs, refuses shorter keys (RFC 8301 forbids
//!   keys under 1024 bits and recommends 2048) — or Ed25519
//!   (`ed25519-sha256`, RFC 8463), from unencrypted PEM: PKCS#8 (`BEGIN
//!   PRIVATE KEY`) for both, PKCS#1 (`BEGIN RSA PRIVATE KEY`) for RSA.
//!   Ed25519 signatures are small and fast, but not every receiver checks
//!   them yet: sign with RSA unless you know yours do. [`DkimSigner::dns_record`]
//!   is the TXT record to publish.
//! - **Canonicalization**: relaxed/relaxed by default (survives the
//!   re-folding and white-space changes relays make); simple selectable for
//!   the header and the body each.
//! - **Signed fields**: those of RFC 6376 §5.4.1 present in the message
//!   ([`DEFAULT_SIGNED_HEADERS`], or a list of your own), each instance of
//!   each; `From` always, and **oversigned**: listed once more than the
//!   message has it, so that no second `From` can be added without breaking
//!   the signature. No `l=` (a body length limit would let anyone append
//!   to the body).
//! - **When**: once per message, when it is handed to the mailer
//!   ([`Mailer::send`], [`send_email`](crate::Mailer::send_email),
//!   [`submit`](crate::Mailer::submit), [`try_send`](crate::Mailer::try_send),
//!   outbox drafts), after a [`Redirect`](crate::Redirect) rewrote it and
//!   before any attempt: retries send the same signed bytes. Drafts are
//!   stored unsigned and signed when the outbox hands them to the mailer,
//!   with the settings in force then (a new key or a reload applies to
//!   them). [`Connection::send`] signs each message it is given, and the
//!   test email of [`diagnose::send_test`](crate::diagnose::send_test) is
//!   signed too (its report says so). The signature covers the message as
//!   it goes on the wire (line endings normalised to CRLF).
//! - **Alignment**: the signature is made for the configured domain
//!   whatever the message's `From` says. DMARC passes on DKIM only when the
//!   `From` domain is the signing domain or under it (or, with relaxed
//!   alignment, shares its organisational domain): a `From` of another
//!   domain still gets a valid signature, which DMARC does not count.
//!   [`DkimSigner::aligns_with`] tells, and the test email's report warns.
//! - **Secrecy**: the private key is never in `Debug`, `Display`, an error,
//!   a URL, serialised settings or a trace; relaymail's copy of it as given
//!   is wiped from memory when the last clone of the settings is dropped (the
//!   key as loaded by ring lives as long as the settings). Sealed settings
//!   (feature `serde`) store it sealed, like the password.
//!
//! [`Mailer`]: crate::Mailer
//! [`Mailer::send`]: crate::Mailer::send
//! [`Connection`]: crate::Connection
//! [`Connection::send`]: crate::Connection::send

mod canon;
mod key;

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::proto::grammar;
use crate::settings::FieldError;
use key::SigningKey;

/// The header fields signed by default, when the message has them (RFC 6376
/// §5.4.1's list, with `Message-ID`, the MIME fields, `Sender` and RFC
/// 8058's `List-Unsubscribe-Post`). `from` is always signed, and oversigned.
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "sender",
    "resent-date",
    "resent-from",
    "resent-to",
    "resent-cc",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
];

/// The `dkim_key` field error when a kept key would sign for another DNS
/// name than the one it was entered for.
pub(crate) const ENTER_DKIM_KEY_AGAIN: &str =
    "enter the DKIM private key again: the DKIM domain or selector changed, and the key belongs to the DNS record of the old ones";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The signing algorithm, which follows from the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DkimAlgorithm {
    /// `rsa-sha256`: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 6376).
    RsaSha256,
    /// `ed25519-sha256`: Ed25519 over SHA-256 (RFC 8463).
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The name in the `a=` tag: `rsa-sha256` or `ed25519-sha256`.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The algorithm of an `a=` name (case-insensitive).
    #[cfg(any(test, feature = "serde"))]
    pub(crate) fn from_name(name: &str) -> Option<DkimAlgorithm> {
        match name.trim().to_ascii_lowercase().as_str() {
            "rsa-sha256" => Some(DkimAlgorithm::RsaSha256),
            "ed25519-sha256" => Some(DkimAlgorithm::Ed25519Sha256),
            _ => None,
        }
    }
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the header fields or the body are put into canonical form before
/// hashing (RFC 6376 §3.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Canonicalization {
    /// Byte for byte (only trailing empty body lines are ignored): any
    /// change by a relay, a re-folded header, breaks the signature.
    Simple,
    /// White space runs count as one space, header names are compared
    /// without case, header lines may be re-folded (the default).
    #[default]
    Relaxed,
}

impl Canonicalization {
    /// `simple` or `relaxed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Canonicalization::Simple => "simple",
            Canonicalization::Relaxed => "relaxed",
        }
    }

    /// The header and body canonicalization of a `c=` value: `header/body`,
    /// or one name for the header with `simple` for the body (RFC 6376
    /// §3.5).
    #[cfg(any(test, feature = "serde"))]
    pub(crate) fn pair_from_name(text: &str) -> Option<(Canonicalization, Canonicalization)> {
        let one = |name: &str| match name.trim().to_ascii_lowercase().as_str() {
            "simple" => Some(Canonicalization::Simple),
            "relaxed" => Some(Canonicalization::Relaxed),
            _ => None,
        };
        match text.split_once('/') {
            Some((h, b)) => Some((one(h)?, one(b)?)),
            None => Some((one(text)?, Canonicalization::Simple)),
        }
    }
}

impl fmt::Display for Canonicalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the key of a [`DkimConfig`] comes from.
#[derive(Clone)]
enum KeySource {
    /// PEM text given to be read by `build()`; wiped when dropped.
    Pem(Zeroizing<Vec<u8>>),
    /// A key carried over from built settings, with the domain and selector
    /// (normalised) it was entered for.
    Kept {
        key: Arc<SigningKey>,
        domain: String,
        selector: String,
    },
}

/// DKIM signing settings as given, for
/// [`SmtpSettingsBuilder::dkim`](crate::SmtpSettingsBuilder::dkim);
/// [`build`](crate::SmtpSettingsBuilder::build) checks them (each problem a
/// field error: `dkim_domain`, `dkim_selector`, `dkim_key`, `dkim_headers`)
/// and makes the [`DkimSigner`] the settings hold.
///
/// `Debug` never shows the key.
#[derive(Clone)]
#[non_exhaustive]
pub struct DkimConfig {
    domain: String,
    selector: String,
    key: KeySource,
    headers: Option<Vec<String>>,
    header_canonicalization: Canonicalization,
    body_canonicalization: Canonicalization,
}

impl DkimConfig {
    /// Signing for `domain` (the `d=` tag: the domain whose DNS publishes
    /// the key, e.g. `example.com`; an internationalised name is used as
    /// A-labels) with the key published under `selector` (`s=`: the key's
    /// record is at `selector._domainkey.domain`), and the private key as
    /// unencrypted PEM: RSA (2048 to 4096 bits) in PKCS#8 or PKCS#1,
    /// Ed25519 in PKCS#8. Relaxed/relaxed canonicalization and
    /// [`DEFAULT_SIGNED_HEADERS`] unless changed.
    pub fn new(
        domain: impl Into<String>,
        selector: impl Into<String>,
        private_key_pem: impl AsRef<[u8]>,
    ) -> DkimConfig {
        DkimConfig {
            domain: domain.into(),
            selector: selector.into(),
            key: KeySource::Pem(Zeroizing::new(private_key_pem.as_ref().to_vec())),
            headers: None,
            header_canonicalization: Canonicalization::Relaxed,
            body_canonicalization: Canonicalization::Relaxed,
        }
    }

    /// Another signing domain. With a key carried over from built settings
    /// ([`DkimSigner::to_config`]), `build` then asks for the key again (a
    /// `dkim_key` field error): the key belongs to the DNS record of the
    /// domain and selector it was entered for.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = domain.into();
        self
    }

    /// Another selector; the same rule as for [`domain`](Self::domain)
    /// holds for a kept key.
    pub fn selector(mut self, selector: impl Into<String>) -> Self {
        self.selector = selector.into();
        self
    }

    /// Another private key (PEM, as for [`new`](Self::new)).
    pub fn private_key_pem(mut self, private_key_pem: impl AsRef<[u8]>) -> Self {
        self.key = KeySource::Pem(Zeroizing::new(private_key_pem.as_ref().to_vec()));
        self
    }

    /// The canonicalization of the header fields and of the body (default
    /// relaxed for both).
    pub fn canonicalization(mut self, header: Canonicalization, body: Canonicalization) -> Self {
        self.header_canonicalization = header;
        self.body_canonicalization = body;
        self
    }

    /// The header fields to sign when present, instead of
    /// [`DEFAULT_SIGNED_HEADERS`] (case-insensitive; each name once).
    /// `From` is signed and oversigned whether listed or not. Names are
    /// field names as in the message (`List-Unsubscribe`), without the
    /// colon; a name that is not one is a `dkim_headers` field error.
    pub fn signed_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.headers = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// The default list of signed header fields again.
    pub fn default_signed_headers(mut self) -> Self {
        self.headers = None;
        self
    }

    /// Checks every field and loads the key.
    pub(crate) fn validate(&self) -> Result<DkimSigner, Vec<FieldError>> {
        let mut errors = Vec::new();
        let domain = check_domain(&self.domain)
            .map_err(|m| errors.push(FieldError::new("dkim_domain", m)))
            .ok();
        let selector = check_selector(&self.selector)
            .map_err(|m| errors.push(FieldError::new("dkim_selector", m)))
            .ok();
        if let (Some(d), Some(s)) = (&domain, &selector) {
            // The record's name: selector._domainkey.domain, 253 bytes at most.
            if s.len() + "._domainkey.".len() + d.len() > grammar::MAX_HOST_LEN {
                errors.push(FieldError::new(
                    "dkim_selector",
                    "the selector is too long: selector._domainkey.domain must fit in 253 bytes",
                ));
            }
        }
        let headers = match &self.headers {
            None => DEFAULT_SIGNED_HEADERS.iter().map(|h| (*h).to_owned()).collect(),
            Some(list) => match check_headers(list) {
                Ok(headers) => headers,
                Err(m) => {
                    errors.push(FieldError::new("dkim_headers", m));
                    Vec::new()
                }
            },
        };
        let key = match &self.key {
            KeySource::Pem(pem) => match SigningKey::from_pem(pem) {
                Ok(key) => Some(Arc::new(key)),
                Err(m) => {
                    errors.push(FieldError::new("dkim_key", m));
                    None
                }
            },
            KeySource::Kept {
                key,
                domain: kept_domain,
                selector: kept_selector,
            } => {
                let moved = domain.as_ref().is_some_and(|d| d != kept_domain)
                    || selector.as_ref().is_some_and(|s| s != kept_selector);
                if moved {
                    errors.push(FieldError::new("dkim_key", ENTER_DKIM_KEY_AGAIN));
                }
                Some(Arc::clone(key))
            }
        };
        match (domain, selector, key) {
            (Some(domain), Some(selector), Some(key)) if errors.is_empty() => {
                Ok(DkimSigner(Arc::new(Inner {
                    domain,
                    selector,
                    key,
                    headers,
                    header_canonicalization: self.header_canonicalization,
                    body_canonicalization: self.body_canonicalization,
                })))
            }
            _ => Err(errors),
        }
    }
}

impl fmt::Debug for DkimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimConfig")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field(
                "key",
                &match self.key {
                    KeySource::Pem(_) => "[redacted]",
                    KeySource::Kept { .. } => "[redacted, kept]",
                },
            )
            .field("headers", &self.headers)
            .field(
                "canonicalization",
                &format_args!("{}/{}", self.header_canonicalization, self.body_canonicalization),
            )
            .finish()
    }
}

/// The DKIM domain: a domain name of two labels or more, as lower-case
/// A-labels.
fn check_domain(domain: &str) -> Result<String, String> {
    let d = domain.trim();
    if d.is_empty() {
        return Err(
            "the DKIM domain (d=) is required: the domain whose DNS publishes the key, such as example.com"
                .to_owned(),
        );
    }
    if d.starts_with('[') {
        return Err(
            "an address literal is no DKIM domain: give a domain name such as example.com".to_owned(),
        );
    }
    grammar::check_domain(d)
        .and_then(|()| grammar::to_ascii(d))
        .map_err(|e| format!("{d:?} is not a valid domain: {}", e.reason()))
        .and_then(|ascii| {
            if ascii.contains('.') {
                Ok(ascii.to_ascii_lowercase())
            } else {
                Err(format!(
                    "{d:?} is not a domain of its own: give a registered domain such as example.com"
                ))
            }
        })
}

/// The selector: one or more DNS labels (letters, digits, inner hyphens),
/// lower case.
fn check_selector(selector: &str) -> Result<String, String> {
    let s = selector.trim();
    if s.is_empty() {
        return Err(
            "the DKIM selector (s=) is required: the name the key is published under, such as mail2024"
                .to_owned(),
        );
    }
    if s.starts_with('[') || grammar::check_ascii_domain(s).is_err() {
        return Err(format!(
            "{s:?} is not a valid selector: use DNS labels of letters, digits and inner hyphens, separated by dots (such as mail2024 or eu.mail2024)"
        ));
    }
    Ok(s.to_ascii_lowercase())
}

/// The names to sign: lower case, each once, `from` first when not given.
fn check_headers(names: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let n = name.trim();
        if n.is_empty() || !n.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            return Err(format!(
                "{n:?} is not a header field name: use printable ASCII without spaces or a colon, such as List-Unsubscribe"
            ));
        }
        let n = n.to_ascii_lowercase();
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if !out.iter().any(|n| n == "from") {
        out.insert(0, "from".to_owned());
    }
    Ok(out)
}

/// Checked DKIM signing settings with the key loaded: what
/// [`SmtpSettings::dkim`](crate::SmtpSettings::dkim) holds.
///
/// Cheap to clone (shared). Its `Debug` shows the domain, selector,
/// algorithm, key size, canonicalization and signed fields, never the key.
#[derive(Clone)]
pub struct DkimSigner(Arc<Inner>);

struct Inner {
    domain: String,
    selector: String,
    key: Arc<SigningKey>,
    headers: Vec<String>,
    header_canonicalization: Canonicalization,
    body_canonicalization: Canonicalization,
}

impl DkimSigner {
    /// The signing domain (`d=`), lower case, as A-labels.
    pub fn domain(&self) -> &str {
        &self.0.domain
    }

    /// The selector (`s=`), lower case.
    pub fn selector(&self) -> &str {
        &self.0.selector
    }

    /// The algorithm (`a=`), from the key.
    pub fn algorithm(&self) -> DkimAlgorithm {
        self.0.key.algorithm()
    }

    /// The key's size in bits (the RSA modulus; 256 for Ed25519).
    pub fn key_bits(&self) -> usize {
        self.0.key.bits()
    }

    /// The header and body canonicalization (`c=`).
    pub fn canonicalization(&self) -> (Canonicalization, Canonicalization) {
        (self.0.header_canonicalization, self.0.body_canonicalization)
    }

    /// The header fields signed when present, lower case, `from` among them.
    pub fn signed_headers(&self) -> &[String] {
        &self.0.headers
    }

    /// Whether the list of signed header fields is [`DEFAULT_SIGNED_HEADERS`].
    pub(crate) fn has_default_headers(&self) -> bool {
        self.0
            .headers
            .iter()
            .map(String::as_str)
            .eq(DEFAULT_SIGNED_HEADERS.iter().copied())
    }

    /// The DNS name the public key is published at:
    /// `selector._domainkey.domain`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.0.selector, self.0.domain)
    }

    /// The TXT record to publish at [`dns_name`](Self::dns_name), e.g.
    /// `v=DKIM1; k=rsa; p=MIIBIjAN…` (the public key only). An RSA record is
    /// longer than the 255 bytes of one TXT string: DNS providers split it
    /// into several strings of one record, which receivers join.
    pub fn dns_record(&self) -> String {
        self.0.key.dns_record()
    }

    /// Whether DMARC can count this signature for mail `From` `domain`:
    /// true when `domain` is the signing domain or under it (case and IDNA
    /// form do not matter). False does not always mean DMARC fails: relaxed
    /// alignment also accepts a signing domain under the same organisational
    /// domain as the `From` (`d=mail.example.com` for `From: a@example.com`),
    /// which needs the public suffix list to decide.
    pub fn aligns_with(&self, domain: &str) -> bool {
        let d = grammar::to_ascii(domain.trim().trim_end_matches('.'))
            .unwrap_or_else(|_| domain.to_owned())
            .to_ascii_lowercase();
        d == self.0.domain
            || d.strip_suffix(self.0.domain.as_str())
                .is_some_and(|sub| sub.ends_with('.'))
    }

    /// The same settings as a [`DkimConfig`] to change and build again, the
    /// key kept (it is never shown). A changed domain or selector makes
    /// `build` ask for the key again.
    pub fn to_config(&self) -> DkimConfig {
        let i = &self.0;
        DkimConfig {
            domain: i.domain.clone(),
            selector: i.selector.clone(),
            key: KeySource::Kept {
                key: Arc::clone(&i.key),
                domain: i.domain.clone(),
                selector: i.selector.clone(),
            },
            headers: (!self.has_default_headers()).then(|| i.headers.clone()),
            header_canonicalization: i.header_canonicalization,
            body_canonicalization: i.body_canonicalization,
        }
    }

    /// The key as PEM text (for sealing), wiped when dropped.
    #[cfg(feature = "serde")]
    pub(crate) fn key_pem(&self) -> Option<Zeroizing<String>> {
        self.0.key.key_pem()
    }

    /// Signs `message` (RFC 5322 bytes, headers and body): its line endings
    /// normalised to CRLF as they go on the wire, with a `DKIM-Signature`
    /// field in front (`t=` the current time). Errors (a
    /// [config](Error::is_config) error, nothing signed) when the message
    /// has no `From` field, or a header section with a line that is no
    /// field: RFC 6376 requires `From` to be signed.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.sign_at(message, now)
    }

    /// [`sign`](Self::sign) with `t=` set to `time` (seconds since 1970).
    pub(crate) fn sign_at(&self, message: &[u8], time: u64) -> Result<Vec<u8>, Error> {
        let i = &self.0;
        let wire = crate::proto::data::normalize(message);
        let (fields, body_at) = canon::split(&wire).map_err(|e| {
            Error::config(match e {
                canon::HeaderError::LeadingContinuation => {
                    "cannot DKIM-sign the message: its header section starts with a continuation line".to_owned()
                }
                canon::HeaderError::NotAField(n) => format!(
                    "cannot DKIM-sign the message: line {n} of its header section is not a header field (name: value)"
                ),
            })
        })?;
        if !fields.iter().any(|f| f.name.eq_ignore_ascii_case(b"from")) {
            return Err(Error::config(
                "cannot DKIM-sign the message: it has no From header field, which DKIM must sign",
            ));
        }
        let body_hash = canon::body_hash(i.body_canonicalization, &wire[body_at..]);
        let (names, chosen) = canon::select(&i.headers, &fields);
        let unsigned = self.unsigned_field(time, &names, body_hash.as_ref());
        let mut data = Vec::with_capacity(chosen.iter().map(|f| f.raw.len()).sum::<usize>() + unsigned.len());
        for field in chosen {
            canon::header(i.header_canonicalization, field, &mut data);
        }
        // The DKIM-Signature field itself, its b= empty, without a final CRLF.
        match i.header_canonicalization {
            Canonicalization::Simple => data.extend_from_slice(&unsigned),
            Canonicalization::Relaxed => {
                let value = &unsigned["DKIM-Signature:".len()..];
                canon::relaxed_header(b"DKIM-Signature", value, &mut data);
            }
        }
        let signature = i
            .key
            .sign(&data)
            .map_err(|()| Error::config("DKIM signing failed in the cryptography library"))?;
        let signature = B64.encode(signature);
        let mut out =
            Vec::with_capacity(unsigned.len() + signature.len() + signature.len() / 72 * 3 + 2 + wire.len());
        out.extend_from_slice(&unsigned);
        for (n, chunk) in signature.as_bytes().chunks(72).enumerate() {
            if n > 0 {
                out.extend_from_slice(b"\r\n\t");
            }
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&wire);
        Ok(out)
    }

    /// The `DKIM-Signature` field up to its empty `b=`, folded at 78
    /// characters: what is hashed, and what the signature is appended to.
    fn unsigned_field(&self, time: u64, names: &[String], body_hash: &[u8]) -> Vec<u8> {
        let i = &self.0;
        let mut out = String::from("DKIM-Signature: v=1");
        let mut line = out.len();
        let tag = |out: &mut String, line: &mut usize, text: &str| {
            if *line + 2 + text.len() > 78 {
                out.push_str(";\r\n\t");
                *line = 1;
            } else {
                out.push_str("; ");
                *line += 2;
            }
            out.push_str(text);
            *line += text.len();
        };
        tag(&mut out, &mut line, &format!("a={}", self.algorithm()));
        tag(
            &mut out,
            &mut line,
            &format!("c={}/{}", i.header_canonicalization, i.body_canonicalization),
        );
        tag(&mut out, &mut line, &format!("d={}", i.domain));
        tag(&mut out, &mut line, &format!("s={}", i.selector));
        tag(&mut out, &mut line, &format!("t={time}"));
        // h= on lines of its own, folded after a colon when long.
        out.push_str(";\r\n\th=");
        line = 3;
        for (n, name) in names.iter().enumerate() {
            if n > 0 {
                out.push(':');
                line += 1;
                if line + name.len() > 77 {
                    out.push_str("\r\n\t");
                    line = 1;
                }
            }
            out.push_str(name);
            line += name.len();
        }
        tag(&mut out, &mut line, &format!("bh={}", B64.encode(body_hash)));
        out.push_str(";\r\n\tb=");
        out.into_bytes()
    }
}

impl fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        f.debug_struct("DkimSigner")
            .field("domain", &i.domain)
            .field("selector", &i.selector)
            .field("algorithm", &self.algorithm())
            .field("key_bits", &self.key_bits())
            .field("key", &"[redacted]")
            .field(
                "canonicalization",
                &format_args!("{}/{}", i.header_canonicalization, i.body_canonicalization),
            )
            .field("headers", &i.headers)
            .finish()
    }
}

/// `content` signed when the settings sign (the single step every send
/// path goes through; see the module docs).
pub(crate) fn sign_content(signer: Option<&DkimSigner>, content: Arc<[u8]>) -> Result<Arc<[u8]>, Error> {
    match signer {
        None => Ok(content),
        Some(signer) => signer.sign(&content).map(Arc::from),
    }
}

#[cfg(test)]
mod tests;
