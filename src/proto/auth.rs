//! SMTP AUTH (RFC 4954): SASL mechanism selection and the client side of
//! one SASL exchange.
//!
//! Everything here is sans-IO: the session code feeds in decoded server
//! challenges (the payload of `334` replies) and sends back what
//! [`SaslClient`] returns. No clock and no randomness source are used; the
//! SCRAM client nonce is supplied by the caller.
//!
//! Supported mechanisms, strongest first:
//!
//! * `SCRAM-SHA-256` (RFC 5802, RFC 7677), without channel binding: the
//!   password never crosses the wire and the server proves it knows it too.
//! * `CRAM-MD5` (RFC 2195): challenge/response, the password is not sent.
//! * `PLAIN` (RFC 4616) and `LOGIN` (draft-murchison-sasl-login): the password
//!   is sent in a recoverable form and must only be used over TLS.
//! * `OAUTHBEARER` (RFC 7628) and `XOAUTH2` (its Google/Microsoft
//!   predecessor): an OAuth2 bearer token, also recoverable. When the server
//!   refuses the token it sends an error challenge (a `334` with a JSON
//!   object, [`BearerError`]) that the client answers (`\x01` for
//!   OAUTHBEARER, an empty line for XOAUTH2) before the final `5yz`.
//!
//! Secret material (passwords, tokens, SCRAM keys and proofs, responses that
//! carry them) is held in zeroizing buffers and dropped as soon as the
//! exchange no longer needs it. No error, and no `Debug` output, contains a
//! secret.

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use ring::{digest, hmac as ring_hmac, pbkdf2};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

/// A SASL mechanism relaymail can use for SMTP AUTH (RFC 4954).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mechanism {
    /// `SCRAM-SHA-256` (RFC 5802, RFC 7677), without channel binding.
    ScramSha256,
    /// `CRAM-MD5` (RFC 2195).
    CramMd5,
    /// `PLAIN` (RFC 4616).
    Plain,
    /// `LOGIN` (draft-murchison-sasl-login).
    Login,
    /// `XOAUTH2`: OAuth2 bearer token (Google and Microsoft mail services).
    XOAuth2,
    /// `OAUTHBEARER` (RFC 7628): OAuth2 bearer token, the standard form of
    /// XOAUTH2 (Google; preferred when the server offers both).
    OAuthBearer,
}

impl Mechanism {
    /// Every mechanism, in declaration order.
    const ALL: [Mechanism; 6] = [
        Mechanism::ScramSha256,
        Mechanism::CramMd5,
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::XOAuth2,
        Mechanism::OAuthBearer,
    ];

    /// Wire name: "SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN", "XOAUTH2",
    /// "OAUTHBEARER".
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    fn from_name(name: &str) -> Option<Mechanism> {
        Self::ALL
            .into_iter()
            .find(|mechanism| mechanism.name().eq_ignore_ascii_case(name))
    }

    /// Whether this mechanism sends the secret in a recoverable form:
    /// `true` for PLAIN, LOGIN, XOAUTH2 and OAUTHBEARER (a bearer token),
    /// `false` for CRAM-MD5 and SCRAM-SHA-256.
    pub fn exposes_secret(self) -> bool {
        match self {
            Mechanism::Plain | Mechanism::Login | Mechanism::XOAuth2 | Mechanism::OAuthBearer => true,
            Mechanism::ScramSha256 | Mechanism::CramMd5 => false,
        }
    }

    /// Whether the mechanism authenticates with an OAuth2 bearer token
    /// ([`Credential::OAuth2`]): XOAUTH2 and OAUTHBEARER.
    pub fn takes_token(self) -> bool {
        matches!(self, Mechanism::XOAuth2 | Mechanism::OAuthBearer)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A SASL mechanism name relaymail does not implement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown or unsupported AUTH mechanism: use SCRAM-SHA-256, CRAM-MD5, PLAIN, LOGIN, OAUTHBEARER or XOAUTH2"
)]
#[non_exhaustive]
pub struct UnknownMechanism;

impl std::str::FromStr for Mechanism {
    type Err = UnknownMechanism;

    /// Case-insensitive parse of a wire name (`"scram-sha-256"`).
    fn from_str(name: &str) -> Result<Mechanism, UnknownMechanism> {
        Mechanism::from_name(name).ok_or(UnknownMechanism)
    }
}

/// Password mechanisms, strongest first.
pub const PASSWORD_PREFERENCE: &[Mechanism] = &[
    Mechanism::ScramSha256,
    Mechanism::CramMd5,
    Mechanism::Plain,
    Mechanism::Login,
];

/// Token mechanisms, in order of preference: the standard OAUTHBEARER
/// (RFC 7628) when the server offers it, else XOAUTH2.
pub const TOKEN_PREFERENCE: &[Mechanism] = &[Mechanism::OAuthBearer, Mechanism::XOAuth2];

/// What the client authenticates with.
#[derive(Clone)]
#[non_exhaustive]
pub enum Credential {
    /// User name and password.
    Password {
        /// The user name (authentication identity).
        username: String,
        /// The password.
        password: SecretString,
    },
    /// User name and an OAuth2 bearer token (OAUTHBEARER or XOAUTH2).
    OAuth2 {
        /// The user name the token was issued for.
        username: String,
        /// The OAuth2 access token.
        token: SecretString,
    },
}

impl Credential {
    /// The user name, whatever the kind of credential.
    pub fn username(&self) -> &str {
        match self {
            Credential::Password { username, .. } | Credential::OAuth2 { username, .. } => username,
        }
    }

    /// The mechanisms usable with this kind of credential, strongest first:
    /// [`PASSWORD_PREFERENCE`] or [`TOKEN_PREFERENCE`].
    pub fn preference(&self) -> &'static [Mechanism] {
        match self {
            Credential::Password { .. } => PASSWORD_PREFERENCE,
            Credential::OAuth2 { .. } => TOKEN_PREFERENCE,
        }
    }

    /// Human-readable kind, for [`SaslError::WrongCredential`].
    fn kind(&self) -> &'static str {
        match self {
            Credential::Password { .. } => "password",
            Credential::OAuth2 { .. } => "bearer token",
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .field("password", &"[redacted]")
                .finish(),
            Credential::OAuth2 { username, .. } => f
                .debug_struct("OAuth2")
                .field("username", username)
                .field("token", &"[redacted]")
                .finish(),
        }
    }
}

/// Picks the first mechanism of `preference` that the server offered.
///
/// `offered` are the names from the EHLO `AUTH` line, compared
/// case-insensitively; unknown names are ignored. `None` when nothing
/// matches.
pub fn select<'a>(preference: &[Mechanism], offered: impl IntoIterator<Item = &'a str>) -> Option<Mechanism> {
    let offered: Vec<Mechanism> = offered.into_iter().filter_map(Mechanism::from_name).collect();
    preference
        .iter()
        .copied()
        .find(|mechanism| offered.contains(mechanism))
}

/// Errors of the client side of a SASL exchange.
///
/// Never contains a secret: no password, token, proof or AUTH line bytes.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaslError {
    /// The mechanism cannot be used with this kind of credential (e.g.
    /// XOAUTH2 or OAUTHBEARER with a password).
    #[error("{mechanism} cannot be used with a {credential} credential")]
    WrongCredential {
        /// The mechanism that was asked for.
        mechanism: Mechanism,
        /// The kind of credential given ("password" or "bearer token").
        credential: &'static str,
    },
    /// The server's challenge was not valid base64.
    #[error("the server's AUTH challenge is not valid base64")]
    InvalidBase64,
    /// The server sent a challenge the mechanism does not expect at this
    /// step (e.g. a third LOGIN prompt).
    #[error("unexpected {mechanism} challenge at this step of the exchange")]
    UnexpectedChallenge {
        /// The mechanism in use.
        mechanism: Mechanism,
    },
    /// A SCRAM server message was malformed.
    #[error("malformed {mechanism} server message: {detail}")]
    MalformedServerMessage {
        /// The mechanism in use.
        mechanism: Mechanism,
        /// Which part of the message was wrong (fixed text, no secret).
        detail: &'static str,
    },
    /// SCRAM: the server nonce does not extend the client nonce.
    #[error("the SCRAM server nonce does not extend the client nonce")]
    NonceMismatch,
    /// SCRAM: iteration count outside
    /// [`SCRAM_MIN_ITERATIONS`]`..=`[`SCRAM_MAX_ITERATIONS`] (refuses both a
    /// downgrade and CPU exhaustion). The server misbehaved: nothing of the
    /// client-final message is sent.
    #[error(
        "SCRAM iteration count {count} is outside the accepted range \
         4096..=100000"
    )]
    IterationCount {
        /// The count the server asked for (`u64::MAX` if it did not even
        /// fit in 64 bits).
        count: u64,
    },
    /// SCRAM: the server signature did not verify (the server does not know
    /// the password, or an attacker is in the middle).
    #[error(
        "the SCRAM server signature did not verify: the server does not know \
         the password, or an attacker is in the middle"
    )]
    ServerSignatureMismatch,
    /// SCRAM: the server-final message carried `e=<error>`.
    #[error("the SCRAM server reported an error: {message:?}")]
    ServerError {
        /// The server's error value (server text, not a secret).
        message: String,
    },
    /// The server reported success before the mechanism finished (SCRAM
    /// without a verified server signature).
    #[error("the server reported success before the {mechanism} exchange finished")]
    IncompleteExchange {
        /// The mechanism in use.
        mechanism: Mechanism,
    },
    /// SASLprep refused the user name or password (prohibited characters),
    /// or the credential contains a character the mechanism cannot carry
    /// (e.g. NUL for PLAIN, `\x01` for XOAUTH2 and OAUTHBEARER).
    #[error("the user name or secret contains characters {mechanism} cannot carry")]
    InvalidCredentialText {
        /// The mechanism that refused the text.
        mechanism: Mechanism,
    },
    /// The client nonce is empty or contains `,` or bytes outside printable
    /// ASCII `0x21..=0x7e`.
    #[error("the SCRAM client nonce must be non-empty printable ASCII without ','")]
    InvalidNonce,
}

impl SaslError {
    /// Whether the server broke the protocol: a challenge that is not
    /// base64, a malformed SCRAM message, or an iteration count outside
    /// [`SCRAM_MIN_ITERATIONS`]`..=`[`SCRAM_MAX_ITERATIONS`]. The other
    /// errors are about the credential, or a server that could not prove it
    /// knows the password.
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            SaslError::InvalidBase64
                | SaslError::MalformedServerMessage { .. }
                | SaslError::IterationCount { .. }
        )
    }
}

/// The error an OAuth2 server reports when it refuses a bearer token: the
/// JSON object of the error challenge that ends a failed OAUTHBEARER
/// (RFC 7628 §3.2.2) or XOAUTH2 exchange, e.g.
/// `{"status":"invalid_token","scope":"https://mail.google.com/"}`.
///
/// Read by a small reader of the object's top-level members (no JSON
/// library in the sans-IO core): anything but an object with a `status`
/// gives `None`. Server text, never a secret.
///
/// ```
/// use relaymail::proto::auth::BearerError;
///
/// let e = BearerError::parse(r#"{"status":"invalid_token","scope":"example_scope"}"#).unwrap();
/// assert_eq!(e.status, "invalid_token");
/// assert_eq!(e.scope.as_deref(), Some("example_scope"));
/// assert!(e.is_invalid_token());
/// // XOAUTH2 servers send an HTTP status code instead.
/// assert!(BearerError::parse(r#"{"status":"401","schemes":"bearer"}"#).unwrap().is_invalid_token());
/// assert!(!BearerError::parse(r#"{"status":"400"}"#).unwrap().is_invalid_token());
/// assert_eq!(BearerError::parse("not json"), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BearerError {
    /// The `status` member: `invalid_token`, `insufficient_scope` or
    /// `invalid_request` (RFC 6750 §3.1, as RFC 7628 uses them), or for
    /// XOAUTH2 an HTTP status code such as `401` or `400`. A number is
    /// kept as its text.
    pub status: String,
    /// The `scope` member: the scope a token needs, when the server says.
    pub scope: Option<String>,
}

impl BearerError {
    /// Longest error challenge read; longer text is no error object any
    /// server sends.
    const MAX_LEN: usize = 16 * 1024;

    /// Reads the JSON text of an error challenge. `None` unless it is a
    /// JSON object (of at most 16 KiB) whose top-level `status` member is a
    /// string or a number. Never panics, whatever the text.
    pub fn parse(json: &str) -> Option<BearerError> {
        if json.len() > Self::MAX_LEN {
            return None;
        }
        let mut status = None;
        let mut scope = None;
        let mut reader = JsonReader {
            text: json,
            bytes: json.as_bytes(),
            pos: 0,
        };
        reader.members(|name, value| match name {
            "status" => status = Some(value),
            "scope" => scope = Some(value),
            _ => {}
        })?;
        Some(BearerError {
            status: status??,
            scope: scope.flatten(),
        })
    }

    /// Whether the token itself was refused: it expired, was revoked, or is
    /// unknown to the server (`invalid_token`, or XOAUTH2's `401`). A
    /// renewed token may succeed; for any other status (a missing scope, a
    /// malformed request) it would not.
    pub fn is_invalid_token(&self) -> bool {
        matches!(self.status.as_str(), "invalid_token" | "401")
    }

    /// Whether the token lacks a scope the server needs
    /// (`insufficient_scope`, or XOAUTH2's `403`): the user must authorize
    /// the application again with that scope.
    pub fn is_insufficient_scope(&self) -> bool {
        matches!(self.status.as_str(), "insufficient_scope" | "403")
    }
}

/// Deepest nesting [`JsonReader`] follows.
const JSON_MAX_DEPTH: usize = 32;

/// A reader of just enough JSON for [`BearerError`]: the top-level members
/// of an object whose values are strings or numbers are given to the
/// caller, every other value is checked and skipped.
struct JsonReader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl JsonReader<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.whitespace();
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(word.len())?;
        (self.bytes.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// The whole text: one object, then only whitespace. `each` gets the
    /// name of every top-level member and its value when that is a string
    /// or a number (else `None`).
    fn members(&mut self, mut each: impl FnMut(&str, Option<String>)) -> Option<()> {
        if !self.eat(b'{') {
            return None;
        }
        if !self.eat(b'}') {
            loop {
                self.whitespace();
                let name = self.string()?;
                if !self.eat(b':') {
                    return None;
                }
                self.whitespace();
                let value = match self.peek()? {
                    b'"' => Some(self.string()?),
                    b'-' | b'0'..=b'9' => Some(self.number()?),
                    _ => {
                        self.skip_value(1)?;
                        None
                    }
                };
                each(&name, value);
                if self.eat(b',') {
                    continue;
                }
                if self.eat(b'}') {
                    break;
                }
                return None;
            }
        }
        self.whitespace();
        (self.pos == self.bytes.len()).then_some(())
    }

    /// A string, unescaped (an unpaired surrogate becomes U+FFFD). Control
    /// characters are tolerated inside it: the text is only ever shown
    /// escaped.
    fn string(&mut self) -> Option<String> {
        if self.peek()? != b'"' {
            return None;
        }
        self.pos += 1;
        let mut out = String::new();
        // UTF-16 units of consecutive \u escapes (surrogate pairs).
        let mut units: Vec<u16> = Vec::new();
        loop {
            let byte = self.peek()?;
            if byte == b'\\' && self.bytes.get(self.pos + 1) == Some(&b'u') {
                let hex = self.bytes.get(self.pos + 2..self.pos + 6)?;
                let unit = hex
                    .iter()
                    .try_fold(0u32, |n, &b| Some(n * 16 + char::from(b).to_digit(16)?))?;
                units.push(u16::try_from(unit).ok()?);
                self.pos += 6;
                continue;
            }
            out.extend(char::decode_utf16(units.drain(..)).map(|c| c.unwrap_or('\u{fffd}')));
            match byte {
                b'"' => {
                    self.pos += 1;
                    return Some(out);
                }
                b'\\' => {
                    let escape = *self.bytes.get(self.pos + 1)?;
                    self.pos += 2;
                    out.push(match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        _ => return None,
                    });
                }
                _ => {
                    // One whole character: `pos` only ever stops on a
                    // character boundary, and `get` says so if not.
                    let c = self.text.get(self.pos..)?.chars().next()?;
                    out.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
    }

    /// A number, as its text (`-`, digits, `.`, exponent).
    fn number(&mut self) -> Option<String> {
        let start = self.pos;
        while matches!(self.peek(), Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')) {
            self.pos += 1;
        }
        let text = self.text.get(start..self.pos)?;
        let digits = text.strip_prefix('-').unwrap_or(text);
        digits
            .starts_with(|c: char| c.is_ascii_digit())
            .then(|| text.to_owned())
    }

    /// Any value, skipped (objects and arrays at most [`JSON_MAX_DEPTH`]
    /// deep).
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > JSON_MAX_DEPTH {
            return None;
        }
        self.whitespace();
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            open @ (b'{' | b'[') => {
                self.pos += 1;
                let close = if open == b'{' { b'}' } else { b']' };
                if self.eat(close) {
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.whitespace();
                        self.string()?;
                        if !self.eat(b':') {
                            return None;
                        }
                    }
                    self.skip_value(depth + 1)?;
                    if self.eat(b',') {
                        continue;
                    }
                    return self.eat(close).then_some(());
                }
            }
            _ => None,
        }
    }
}

/// Length of a SHA-256 output, and so of every SCRAM-SHA-256 key.
const SCRAM_KEY_LEN: usize = 32;

/// A SCRAM key (salted password, client key, ...), wiped on drop.
type ScramKey = Zeroizing<[u8; SCRAM_KEY_LEN]>;

/// Smallest SCRAM iteration count accepted (RFC 7677 §4 minimum).
pub const SCRAM_MIN_ITERATIONS: u64 = 4096;

/// Largest SCRAM iteration count accepted, so a hostile server cannot make
/// the client burn CPU (RFC 5802 §9): PBKDF2 runs once per attempt, and
/// 100,000 rounds of HMAC-SHA-256 cost tens of milliseconds. Servers use
/// 4096 by default (the RFC 7677 minimum: Dovecot, Cyrus, PostgreSQL,
/// ejabberd) or a few times that; 100,000 is also the cap PostgreSQL's JDBC
/// and Node.js drivers adopted for the same attack. A server that asks for
/// more is refused with [`SaslError::IterationCount`].
pub const SCRAM_MAX_ITERATIONS: u64 = 100_000;

/// GS2 header: no channel binding, no authorization identity.
const GS2_HEADER: &str = "n,,";

/// `c=` attribute value: base64 of [`GS2_HEADER`].
const CHANNEL_BINDING: &str = "biws";

/// Base64 engine for `334` challenge text: standard alphabet, padding
/// optional (some servers omit it).
const CHALLENGE_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What [`SaslClient::step`] asks the caller to do with a challenge.
/// `Debug` shows no response bytes (they may carry the secret).
#[non_exhaustive]
pub enum Step {
    /// Send this raw response (base64-encode it first).
    Respond(Zeroizing<Vec<u8>>),
    /// SCRAM: run this key derivation (it is slow on purpose: run it off any
    /// async executor thread) and pass its result to
    /// [`SaslClient::resume`], which returns the response to send.
    Derive(KeyDerivation),
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Respond(response) => write!(f, "Respond([redacted, {} bytes])", response.len()),
            Step::Derive(derivation) => f.debug_tuple("Derive").field(derivation).finish(),
        }
    }
}

/// The expensive, pure part of a SCRAM exchange: PBKDF2-HMAC-SHA-256 of the
/// password over the server's salt, at most [`SCRAM_MAX_ITERATIONS`]
/// rounds. It holds the password (wiped on drop; `Debug` shows no secret).
#[derive(Clone)]
pub struct KeyDerivation {
    password: Zeroizing<String>,
    salt: Vec<u8>,
    iterations: u32,
}

impl KeyDerivation {
    /// The iteration count the server asked for (already checked against
    /// [`SCRAM_MIN_ITERATIONS`] and [`SCRAM_MAX_ITERATIONS`]).
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Computes the salted password. CPU-bound, no IO: in async code run it
    /// with `spawn_blocking` or the like.
    pub fn run(self) -> DerivedKey {
        let mut salted_password = Zeroizing::new([0u8; SCRAM_KEY_LEN]);
        // At least SCRAM_MIN_ITERATIONS, checked when the challenge was read.
        let iterations = std::num::NonZeroU32::new(self.iterations).unwrap_or(std::num::NonZeroU32::MIN);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &self.salt,
            self.password.as_bytes(),
            &mut salted_password[..],
        );
        DerivedKey(salted_password)
    }
}

impl fmt::Debug for KeyDerivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyDerivation")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// The result of a [`KeyDerivation`] (the SCRAM salted password), for
/// [`SaslClient::resume`]. Wiped on drop; `Debug` shows no secret.
#[derive(Clone)]
pub struct DerivedKey(ScramKey);

impl fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivedKey([redacted])")
    }
}

/// Client side of one SASL exchange, a pure state machine.
///
/// Create it with [`SaslClient::new`], send [`SaslClient::initial_response`]
/// with the `AUTH` command (when it is `Some`), answer every `334` challenge
/// with [`SaslClient::respond`] (or [`SaslClient::step`], to run SCRAM's key
/// derivation elsewhere), and on `235` call [`SaslClient::finish`].
pub struct SaslClient {
    mechanism: Mechanism,
    state: State,
}

/// Per-mechanism state. Secrets are taken out (and so wiped) as soon as they
/// have been sent.
enum State {
    Plain {
        /// `\0user\0pass`, until sent.
        message: Option<Zeroizing<Vec<u8>>>,
    },
    Login {
        /// Until the first prompt has been answered.
        username: Option<Zeroizing<Vec<u8>>>,
        /// Until the second prompt has been answered.
        password: Option<Zeroizing<Vec<u8>>>,
    },
    CramMd5 {
        username: String,
        /// Until the challenge has been answered.
        password: Option<Zeroizing<Vec<u8>>>,
    },
    /// XOAUTH2 and OAUTHBEARER (the mechanism tells them apart).
    Bearer {
        /// `user=..\x01auth=Bearer ..\x01\x01` (XOAUTH2) or
        /// `n,a=..,\x01auth=Bearer ..\x01\x01` (OAUTHBEARER), until sent.
        message: Option<Zeroizing<Vec<u8>>>,
        /// The server's JSON error, once received.
        server_error: Option<String>,
    },
    Scram(Scram),
}

/// SCRAM-SHA-256 exchange state.
struct Scram {
    /// The caller's client nonce (validated printable ASCII).
    client_nonce: String,
    /// `n=<saslname>,r=<client nonce>`.
    client_first_bare: String,
    step: ScramStep,
}

enum ScramStep {
    /// Client-first not sent yet.
    Start { password: Zeroizing<String> },
    /// Client-first sent, waiting for server-first.
    ClientFirstSent { password: Zeroizing<String> },
    /// Server-first accepted; waiting for the caller's [`DerivedKey`].
    Deriving {
        /// `c=biws,r=<combined nonce>`.
        without_proof: String,
        auth_message: String,
    },
    /// Client-final sent, waiting for server-final.
    ClientFinalSent {
        server_key: ScramKey,
        auth_message: String,
    },
    /// The server signature verified.
    Verified,
    /// The exchange failed; nothing more is accepted.
    Failed,
}

impl fmt::Debug for SaslClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslClient")
            .field("mechanism", &self.mechanism)
            .field("step", &self.progress())
            .finish_non_exhaustive()
    }
}

impl SaslClient {
    /// Starts an exchange with `mechanism` for `credential`.
    ///
    /// `client_nonce` is used by SCRAM only (ignored otherwise, may be empty
    /// then); the caller draws it from a CSPRNG and passes it printable (e.g.
    /// base64 of 18 random bytes).
    ///
    /// # Errors
    ///
    /// [`SaslError::WrongCredential`] when the mechanism does not fit the
    /// credential kind, [`SaslError::InvalidCredentialText`] when the user
    /// name or secret cannot be carried (SASLprep refusal for SCRAM, NUL for
    /// PLAIN, `\x01` for XOAUTH2 and OAUTHBEARER, empty SCRAM user name) and
    /// [`SaslError::InvalidNonce`] for a bad SCRAM client nonce.
    pub fn new(
        mechanism: Mechanism,
        credential: &Credential,
        client_nonce: &str,
    ) -> Result<SaslClient, SaslError> {
        let wrong = || SaslError::WrongCredential {
            mechanism,
            credential: credential.kind(),
        };
        let invalid_text = SaslError::InvalidCredentialText { mechanism };
        let state = match (credential, mechanism.takes_token()) {
            (Credential::Password { username, password }, false) => {
                let password = password.expose_secret();
                match mechanism {
                    Mechanism::Plain => {
                        if username.contains('\0') || password.contains('\0') {
                            return Err(invalid_text);
                        }
                        State::Plain {
                            message: Some(plain_message(username, password)),
                        }
                    }
                    Mechanism::Login => State::Login {
                        username: Some(Zeroizing::new(username.as_bytes().to_vec())),
                        password: Some(Zeroizing::new(password.as_bytes().to_vec())),
                    },
                    Mechanism::CramMd5 => State::CramMd5 {
                        username: username.clone(),
                        password: Some(Zeroizing::new(password.as_bytes().to_vec())),
                    },
                    Mechanism::ScramSha256 => State::Scram(Scram::new(username, password, client_nonce)?),
                    Mechanism::XOAuth2 | Mechanism::OAuthBearer => return Err(wrong()),
                }
            }
            (Credential::OAuth2 { username, token }, true) => {
                let token = token.expose_secret();
                if username.contains('\x01') || token.contains('\x01') {
                    return Err(invalid_text);
                }
                let message = if mechanism == Mechanism::OAuthBearer {
                    oauthbearer_message(username, token)
                } else {
                    xoauth2_message(username, token)
                };
                State::Bearer {
                    message: Some(message),
                    server_error: None,
                }
            }
            _ => return Err(wrong()),
        };
        Ok(SaslClient { mechanism, state })
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Raw (not base64) initial response to send with
    /// `AUTH <mech> <initial>`.
    ///
    /// `Some` for PLAIN (`\0user\0pass`), XOAUTH2
    /// (`user=U\x01auth=Bearer T\x01\x01`), OAUTHBEARER
    /// (`n,a=U,\x01auth=Bearer T\x01\x01`, RFC 7628 §3.1) and SCRAM (client-first
    /// `n,,n=<saslname>,r=<nonce>`); `None` for LOGIN and CRAM-MD5 (they wait
    /// for a challenge). Call once, before any [`respond`](Self::respond);
    /// later calls return `None`.
    pub fn initial_response(&mut self) -> Option<Zeroizing<Vec<u8>>> {
        match &mut self.state {
            State::Plain { message } | State::Bearer { message, .. } => message.take(),
            State::Login { .. } | State::CramMd5 { .. } => None,
            State::Scram(scram) => scram.client_first(),
        }
    }

    /// Given one decoded (raw) server challenge (the payload of a `334`
    /// reply), returns the raw response to send.
    ///
    /// * LOGIN: 1st challenge → user name, 2nd → password, 3rd →
    ///   [`SaslError::UnexpectedChallenge`].
    /// * CRAM-MD5: `username SP lowercase-hex(HMAC-MD5(password, challenge))`;
    ///   a 2nd challenge → [`SaslError::UnexpectedChallenge`].
    /// * PLAIN: if the initial response was already given, any challenge is
    ///   unexpected; otherwise the challenge (usually empty) is answered with
    ///   the PLAIN message.
    /// * XOAUTH2 and OAUTHBEARER: without an initial response yet, the
    ///   challenge is answered with the mechanism's message; after it, the
    ///   challenge is the server's JSON error (the error challenge, RFC 7628
    ///   §3.2.3), answered with `\x01` (OAUTHBEARER) or an empty response
    ///   (XOAUTH2) and kept for [`server_error`](Self::server_error) and
    ///   [`bearer_error`](Self::bearer_error). The server then ends the
    ///   exchange with a `5yz`. Anything further is unexpected.
    /// * SCRAM-SHA-256: an empty challenge before the initial response is
    ///   answered with client-first; server-first is answered with
    ///   client-final (with the proof); server-final `v=` is verified in
    ///   constant time and answered with an empty response; `e=` gives
    ///   [`SaslError::ServerError`]. After any SCRAM error the exchange is
    ///   dead and every further challenge is unexpected.
    ///
    /// SCRAM's key derivation runs inline, on the calling thread: use
    /// [`step`](Self::step) to run it elsewhere.
    ///
    /// # Errors
    ///
    /// See [`SaslError`]; never panics, whatever the challenge.
    pub fn respond(&mut self, challenge: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
        match self.step(challenge)? {
            Step::Respond(response) => Ok(response),
            Step::Derive(derivation) => self.resume(derivation.run()),
        }
    }

    /// Like [`respond`](Self::respond), except that SCRAM's server-first
    /// message gives [`Step::Derive`]: the caller runs the key derivation
    /// (off its async threads) and hands the result to
    /// [`resume`](Self::resume). The server-first message is fully checked
    /// (nonce, salt, iteration count within [`SCRAM_MAX_ITERATIONS`]) before
    /// that, so a refused message costs no derivation.
    ///
    /// # Errors
    ///
    /// As [`respond`](Self::respond).
    pub fn step(&mut self, challenge: &[u8]) -> Result<Step, SaslError> {
        let mechanism = self.mechanism;
        let unexpected = SaslError::UnexpectedChallenge { mechanism };
        let response = match &mut self.state {
            State::Plain { message } => message.take().ok_or(unexpected),
            State::Login { username, password } => {
                username.take().or_else(|| password.take()).ok_or(unexpected)
            }
            State::CramMd5 { username, password } => {
                let password = password.take().ok_or(unexpected)?;
                cram_md5_response(username, &password, challenge)
            }
            State::Bearer {
                message,
                server_error,
            } => {
                if let Some(message) = message.take() {
                    return Ok(Step::Respond(message));
                }
                if server_error.is_some() {
                    return Err(unexpected);
                }
                *server_error = Some(String::from_utf8_lossy(challenge).into_owned());
                // RFC 7628 §3.2.3: the client answers the error challenge
                // with a lone %x01; XOAUTH2 with an empty response.
                let answer = if mechanism == Mechanism::OAuthBearer {
                    vec![0x01]
                } else {
                    Vec::new()
                };
                Ok(Zeroizing::new(answer))
            }
            State::Scram(scram) => return scram.step(challenge),
        };
        response.map(Step::Respond)
    }

    /// SCRAM: the client-final message (with the proof), from the result of
    /// the [`KeyDerivation`] that [`step`](Self::step) returned.
    ///
    /// # Errors
    ///
    /// [`SaslError::UnexpectedChallenge`] when no derivation is pending
    /// (another mechanism, or a second call).
    pub fn resume(&mut self, key: DerivedKey) -> Result<Zeroizing<Vec<u8>>, SaslError> {
        match &mut self.state {
            State::Scram(scram) => scram.resume(&key),
            _ => Err(SaslError::UnexpectedChallenge {
                mechanism: self.mechanism,
            }),
        }
    }

    /// Called when the server replied `235` (success).
    ///
    /// # Errors
    ///
    /// SCRAM: [`SaslError::IncompleteExchange`] unless the server signature
    /// was verified (a server that skips server-final has not proven it knows
    /// the password). Other mechanisms: always `Ok`.
    pub fn finish(&self) -> Result<(), SaslError> {
        match &self.state {
            State::Scram(Scram {
                step: ScramStep::Verified,
                ..
            }) => Ok(()),
            State::Scram(_) => Err(SaslError::IncompleteExchange {
                mechanism: self.mechanism,
            }),
            State::Plain { .. } | State::Login { .. } | State::CramMd5 { .. } | State::Bearer { .. } => {
                Ok(())
            }
        }
    }

    /// XOAUTH2 and OAUTHBEARER only: the server's JSON error detail (the
    /// error challenge), if one was received (server text, never a secret).
    /// `None` for every other mechanism.
    pub fn server_error(&self) -> Option<&str> {
        match &self.state {
            State::Bearer { server_error, .. } => server_error.as_deref(),
            _ => None,
        }
    }

    /// XOAUTH2 and OAUTHBEARER only: the error challenge read as a
    /// [`BearerError`], when one was received and is a JSON object with a
    /// `status`.
    pub fn bearer_error(&self) -> Option<BearerError> {
        self.server_error().and_then(BearerError::parse)
    }

    /// A short, non-secret description of where the exchange is.
    fn progress(&self) -> &'static str {
        match &self.state {
            State::Plain { message: Some(_) } => "initial",
            State::Plain { message: None } => "sent",
            State::Login {
                username: Some(_), ..
            } => "awaiting username prompt",
            State::Login {
                password: Some(_), ..
            } => "awaiting password prompt",
            State::Login { .. } => "done",
            State::CramMd5 {
                password: Some(_), ..
            } => "awaiting challenge",
            State::CramMd5 { .. } => "done",
            State::Bearer { message: Some(_), .. } => "initial",
            State::Bearer {
                server_error: None, ..
            } => "sent",
            State::Bearer { .. } => "error answered",
            State::Scram(scram) => match scram.step {
                ScramStep::Start { .. } => "initial",
                ScramStep::ClientFirstSent { .. } => "client-first sent",
                ScramStep::Deriving { .. } => "deriving the key",
                ScramStep::ClientFinalSent { .. } => "client-final sent",
                ScramStep::Verified => "verified",
                ScramStep::Failed => "failed",
            },
        }
    }
}

/// `\0user\0pass` (empty authorization identity).
fn plain_message(username: &str, password: &str) -> Zeroizing<Vec<u8>> {
    let mut message = Zeroizing::new(Vec::with_capacity(2 + username.len() + password.len()));
    message.push(0);
    message.extend_from_slice(username.as_bytes());
    message.push(0);
    message.extend_from_slice(password.as_bytes());
    message
}

/// `user=U\x01auth=Bearer T\x01\x01`.
fn xoauth2_message(username: &str, token: &str) -> Zeroizing<Vec<u8>> {
    const USER: &[u8] = b"user=";
    const AUTH: &[u8] = b"\x01auth=Bearer ";
    const END: &[u8] = b"\x01\x01";
    let len = USER.len() + username.len() + AUTH.len() + token.len() + END.len();
    let mut message = Zeroizing::new(Vec::with_capacity(len));
    message.extend_from_slice(USER);
    message.extend_from_slice(username.as_bytes());
    message.extend_from_slice(AUTH);
    message.extend_from_slice(token.as_bytes());
    message.extend_from_slice(END);
    message
}

/// `n,a=U,\x01auth=Bearer T\x01\x01` (RFC 7628 §3.1): the GS2 header
/// with the user name as authorization identity (`,` and `=` escaped as
/// `=2C` and `=3D`), then the `auth` key/value pair. No `host` and `port`
/// pairs: they are optional, and the servers that use OAUTHBEARER for SMTP
/// do not need them.
fn oauthbearer_message(username: &str, token: &str) -> Zeroizing<Vec<u8>> {
    const GS2: &[u8] = b"n,a=";
    const AUTH: &[u8] = b",\x01auth=Bearer ";
    const END: &[u8] = b"\x01\x01";
    let authzid = saslname(username);
    let len = GS2.len() + authzid.len() + AUTH.len() + token.len() + END.len();
    let mut message = Zeroizing::new(Vec::with_capacity(len));
    message.extend_from_slice(GS2);
    message.extend_from_slice(authzid.as_bytes());
    message.extend_from_slice(AUTH);
    message.extend_from_slice(token.as_bytes());
    message.extend_from_slice(END);
    message
}

/// `username SP lowercase-hex(HMAC-MD5(password, challenge))` (RFC 2195).
fn cram_md5_response(
    username: &str,
    password: &[u8],
    challenge: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // HMAC takes keys of any length; the error arm is unreachable in practice.
    let mut mac = Hmac::<Md5>::new_from_slice(password).map_err(|_| SaslError::InvalidCredentialText {
        mechanism: Mechanism::CramMd5,
    })?;
    mac.update(challenge);
    let digest = mac.finalize().into_bytes();
    let mut response = Zeroizing::new(Vec::with_capacity(username.len() + 1 + 2 * digest.len()));
    response.extend_from_slice(username.as_bytes());
    response.push(b' ');
    for byte in digest {
        response.push(HEX[usize::from(byte >> 4)]);
        response.push(HEX[usize::from(byte & 0x0f)]);
    }
    Ok(response)
}

/// Whether `byte` may appear in a SCRAM nonce (printable ASCII except ',').
fn is_nonce_byte(byte: u8) -> bool {
    (0x21..=0x7e).contains(&byte) && byte != b','
}

/// SCRAM and GS2 `saslname`: `,` → `=2C`, `=` → `=3D` (RFC 5802 §5.1,
/// RFC 5801 §4; OAUTHBEARER's authorization identity).
fn saslname(username: &str) -> String {
    let mut escaped = String::with_capacity(username.len());
    for c in username.chars() {
        match c {
            ',' => escaped.push_str("=2C"),
            '=' => escaped.push_str("=3D"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// `MalformedServerMessage` for SCRAM-SHA-256.
fn scram_malformed(detail: &'static str) -> SaslError {
    SaslError::MalformedServerMessage {
        mechanism: Mechanism::ScramSha256,
        detail,
    }
}

/// HMAC-SHA-256 of `data` under `key`, into a zeroizing buffer.
fn hmac_sha256(key: &[u8], data: &[u8]) -> ScramKey {
    let tag = ring_hmac::sign(&ring_hmac::Key::new(ring_hmac::HMAC_SHA256, key), data);
    let mut out = Zeroizing::new([0u8; SCRAM_KEY_LEN]);
    out.copy_from_slice(tag.as_ref());
    out
}

/// The parts of a SCRAM server-first message the client needs.
struct ServerFirst<'a> {
    /// Combined client + server nonce.
    nonce: &'a str,
    salt: Vec<u8>,
    iterations: u32,
}

/// Strict parse of server-first: `r=<nonce>,s=<salt>,i=<count>[,ext...]`.
fn parse_server_first<'a>(message: &'a str, client_nonce: &str) -> Result<ServerFirst<'a>, SaslError> {
    let mut attributes = message.split(',');

    let first = attributes.next().unwrap_or_default();
    if first.starts_with("m=") {
        return Err(scram_malformed("unsupported mandatory extension (m=)"));
    }
    let nonce = first
        .strip_prefix("r=")
        .ok_or_else(|| scram_malformed("first attribute is not the nonce (r=)"))?;
    if nonce.len() <= client_nonce.len() || !nonce.starts_with(client_nonce) {
        return Err(SaslError::NonceMismatch);
    }
    if !nonce.bytes().all(is_nonce_byte) {
        return Err(scram_malformed("nonce contains invalid characters"));
    }

    let salt = attributes
        .next()
        .and_then(|attribute| attribute.strip_prefix("s="))
        .ok_or_else(|| scram_malformed("second attribute is not the salt (s=)"))?;
    let salt = STANDARD
        .decode(salt)
        .map_err(|_| scram_malformed("salt is not valid base64"))?;
    if salt.is_empty() {
        return Err(scram_malformed("salt is empty"));
    }

    let count = attributes
        .next()
        .and_then(|attribute| attribute.strip_prefix("i="))
        .ok_or_else(|| scram_malformed("third attribute is not the iteration count (i=)"))?;
    if count.is_empty() || !count.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(scram_malformed("iteration count is not a decimal number"));
    }
    // Only ASCII digits: the sole possible failure is overflow.
    let count: u64 = count.parse().unwrap_or(u64::MAX);
    if !(SCRAM_MIN_ITERATIONS..=SCRAM_MAX_ITERATIONS).contains(&count) {
        return Err(SaslError::IterationCount { count });
    }
    let iterations = u32::try_from(count).map_err(|_| SaslError::IterationCount { count })?;

    for extension in attributes {
        let mut bytes = extension.bytes();
        let well_formed = matches!(
            (bytes.next(), bytes.next()),
            (Some(name), Some(b'=')) if name.is_ascii_alphabetic()
        );
        if !well_formed {
            return Err(scram_malformed("malformed extension attribute"));
        }
    }

    Ok(ServerFirst {
        nonce,
        salt,
        iterations,
    })
}

impl Scram {
    fn new(username: &str, password: &str, client_nonce: &str) -> Result<Scram, SaslError> {
        if client_nonce.is_empty() || !client_nonce.bytes().all(is_nonce_byte) {
            return Err(SaslError::InvalidNonce);
        }
        let invalid_text = SaslError::InvalidCredentialText {
            mechanism: Mechanism::ScramSha256,
        };
        let username = stringprep::saslprep(username).map_err(|_| invalid_text.clone())?;
        if username.is_empty() {
            return Err(invalid_text);
        }
        let password = Zeroizing::new(
            stringprep::saslprep(password)
                .map_err(|_| invalid_text)?
                .into_owned(),
        );
        let client_first_bare = format!("n={},r={}", saslname(&username), client_nonce);
        Ok(Scram {
            client_nonce: client_nonce.to_owned(),
            client_first_bare,
            step: ScramStep::Start { password },
        })
    }

    /// Client-first, if not sent yet.
    fn client_first(&mut self) -> Option<Zeroizing<Vec<u8>>> {
        match std::mem::replace(&mut self.step, ScramStep::Failed) {
            ScramStep::Start { password } => {
                self.step = ScramStep::ClientFirstSent { password };
                let mut message = Vec::with_capacity(GS2_HEADER.len() + self.client_first_bare.len());
                message.extend_from_slice(GS2_HEADER.as_bytes());
                message.extend_from_slice(self.client_first_bare.as_bytes());
                Some(Zeroizing::new(message))
            }
            other => {
                self.step = other;
                None
            }
        }
    }

    fn step(&mut self, challenge: &[u8]) -> Result<Step, SaslError> {
        let unexpected = SaslError::UnexpectedChallenge {
            mechanism: Mechanism::ScramSha256,
        };
        // Any error below leaves the exchange in `Failed`.
        match std::mem::replace(&mut self.step, ScramStep::Failed) {
            ScramStep::Start { password } => {
                // AUTH without initial response: the server's empty 334 asks
                // for client-first.
                if !challenge.is_empty() {
                    return Err(unexpected);
                }
                self.step = ScramStep::Start { password };
                self.client_first().map(Step::Respond).ok_or(unexpected)
            }
            ScramStep::ClientFirstSent { password } => {
                let server_first = std::str::from_utf8(challenge)
                    .map_err(|_| scram_malformed("server-first message is not UTF-8"))?;
                let parsed = parse_server_first(server_first, &self.client_nonce)?;
                let without_proof = format!("c={CHANNEL_BINDING},r={}", parsed.nonce);
                let auth_message = format!("{},{},{}", self.client_first_bare, server_first, without_proof);
                self.step = ScramStep::Deriving {
                    without_proof,
                    auth_message,
                };
                Ok(Step::Derive(KeyDerivation {
                    password,
                    salt: parsed.salt,
                    iterations: parsed.iterations,
                }))
            }
            ScramStep::Deriving { .. } => Err(unexpected),
            ScramStep::ClientFinalSent {
                server_key,
                auth_message,
            } => {
                verify_server_final(&server_key[..], &auth_message, challenge)?;
                self.step = ScramStep::Verified;
                Ok(Step::Respond(Zeroizing::new(Vec::new())))
            }
            ScramStep::Verified => {
                // The server has proven itself; a stray challenge is refused
                // but does not undo that.
                self.step = ScramStep::Verified;
                Err(unexpected)
            }
            ScramStep::Failed => Err(unexpected),
        }
    }

    /// Answers server-first once its key is derived: client-final.
    fn resume(&mut self, key: &DerivedKey) -> Result<Zeroizing<Vec<u8>>, SaslError> {
        match std::mem::replace(&mut self.step, ScramStep::Failed) {
            ScramStep::Deriving {
                without_proof,
                auth_message,
            } => {
                let (response, server_key) = client_final(&key.0, &without_proof, &auth_message)?;
                self.step = ScramStep::ClientFinalSent {
                    server_key,
                    auth_message,
                };
                Ok(response)
            }
            // Nothing pending: a misuse, which leaves the exchange as it was.
            other => {
                self.step = other;
                Err(SaslError::UnexpectedChallenge {
                    mechanism: Mechanism::ScramSha256,
                })
            }
        }
    }
}

/// Client-final (`without_proof` and the proof) and the server key, from the
/// salted password.
fn client_final(
    salted_password: &ScramKey,
    without_proof: &str,
    auth_message: &str,
) -> Result<(Zeroizing<Vec<u8>>, ScramKey), SaslError> {
    let client_key = hmac_sha256(&salted_password[..], b"Client Key");
    let mut stored_key = Zeroizing::new([0u8; SCRAM_KEY_LEN]);
    stored_key.copy_from_slice(digest::digest(&digest::SHA256, &client_key[..]).as_ref());
    let client_signature = hmac_sha256(&stored_key[..], auth_message.as_bytes());
    let mut proof = Zeroizing::new([0u8; SCRAM_KEY_LEN]);
    for ((p, k), s) in proof
        .iter_mut()
        .zip(client_key.iter())
        .zip(client_signature.iter())
    {
        *p = k ^ s;
    }
    let server_key = hmac_sha256(&salted_password[..], b"Server Key");

    // Exact capacities, so no reallocation leaves copies of the proof.
    let mut proof_b64 = Zeroizing::new(String::with_capacity(2 * SCRAM_KEY_LEN));
    STANDARD.encode_string(&proof[..], &mut proof_b64);
    let mut response = Zeroizing::new(Vec::with_capacity(without_proof.len() + 3 + proof_b64.len()));
    response.extend_from_slice(without_proof.as_bytes());
    response.extend_from_slice(b",p=");
    response.extend_from_slice(proof_b64.as_bytes());

    Ok((response, server_key))
}

/// Checks server-final: `v=<signature>` must verify (constant time);
/// `e=<error>` is reported.
fn verify_server_final(server_key: &[u8], auth_message: &str, server_final: &[u8]) -> Result<(), SaslError> {
    let server_final = std::str::from_utf8(server_final)
        .map_err(|_| scram_malformed("server-final message is not UTF-8"))?;
    let first = server_final.split(',').next().unwrap_or_default();
    if let Some(error) = first.strip_prefix("e=") {
        return Err(SaslError::ServerError {
            message: error.to_owned(),
        });
    }
    let signature = first
        .strip_prefix("v=")
        .ok_or_else(|| scram_malformed("server-final message has neither v= nor e="))?;
    let signature = STANDARD
        .decode(signature)
        .map_err(|_| scram_malformed("server signature is not valid base64"))?;
    // Constant time.
    ring_hmac::verify(
        &ring_hmac::Key::new(ring_hmac::HMAC_SHA256, server_key),
        auth_message.as_bytes(),
        &signature,
    )
    .map_err(|_| SaslError::ServerSignatureMismatch)
}

/// Base64-encodes a raw response for the `AUTH <mech> <initial>` position:
/// an empty response is sent as `=` (RFC 4954 §4).
pub fn encode_initial_response(raw: &[u8]) -> Zeroizing<Vec<u8>> {
    if raw.is_empty() {
        Zeroizing::new(b"=".to_vec())
    } else {
        Zeroizing::new(STANDARD.encode(raw).into_bytes())
    }
}

/// Base64-encodes a raw response for a continuation line: an empty response
/// is the empty line (the caller appends CRLF).
pub fn encode_continuation(raw: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(STANDARD.encode(raw).into_bytes())
}

/// Decodes the text of a `334` reply into a raw challenge.
///
/// Surrounding ASCII whitespace is trimmed; empty text is an empty
/// challenge. Padding is optional.
///
/// # Errors
///
/// [`SaslError::InvalidBase64`] when the text is not base64.
pub fn decode_challenge(text: &str) -> Result<Vec<u8>, SaslError> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if text.is_empty() {
        return Ok(Vec::new());
    }
    CHALLENGE_ENGINE
        .decode(text)
        .map_err(|_| SaslError::InvalidBase64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RFC7677_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC7677_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC7677_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
         p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC7677_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn password(username: &str, password: &str) -> Credential {
        Credential::Password {
            username: username.to_owned(),
            password: SecretString::from(password),
        }
    }

    fn token(username: &str, token: &str) -> Credential {
        Credential::OAuth2 {
            username: username.to_owned(),
            token: SecretString::from(token),
        }
    }

    fn rfc7677_client() -> SaslClient {
        SaslClient::new(Mechanism::ScramSha256, &password("user", "pencil"), RFC7677_NONCE).unwrap()
    }

    /// RFC 7677 client after the initial response.
    fn rfc7677_started() -> SaslClient {
        let mut client = rfc7677_client();
        client.initial_response().unwrap();
        client
    }

    /// RFC 7677 client after client-final.
    fn rfc7677_after_client_final() -> SaslClient {
        let mut client = rfc7677_started();
        client.respond(RFC7677_SERVER_FIRST.as_bytes()).unwrap();
        client
    }

    #[test]
    fn mechanism_names_round_trip() {
        for mechanism in Mechanism::ALL {
            assert_eq!(mechanism.name().parse(), Ok(mechanism));
            assert_eq!(mechanism.name().to_ascii_lowercase().parse(), Ok(mechanism));
            assert_eq!(mechanism.to_string(), mechanism.name());
        }
        assert_eq!("Scram-Sha-256".parse(), Ok(Mechanism::ScramSha256));
        for unknown in ["GSSAPI", "", "SCRAM-SHA-256-PLUS"] {
            assert_eq!(unknown.parse::<Mechanism>(), Err(UnknownMechanism));
        }
    }

    #[test]
    fn exposes_secret_flags() {
        assert!(Mechanism::Plain.exposes_secret());
        assert!(Mechanism::Login.exposes_secret());
        assert!(Mechanism::XOAuth2.exposes_secret());
        assert!(!Mechanism::CramMd5.exposes_secret());
        assert!(!Mechanism::ScramSha256.exposes_secret());
    }

    #[test]
    fn credential_accessors() {
        let pw = password("bob", "hunter2");
        assert_eq!(pw.username(), "bob");
        assert_eq!(pw.preference(), PASSWORD_PREFERENCE);
        let tok = token("alice", "tok123");
        assert_eq!(tok.username(), "alice");
        assert_eq!(tok.preference(), TOKEN_PREFERENCE);
    }

    #[test]
    fn select_honours_preference_and_case() {
        let offered = ["login", "PLAIN", "cram-md5", "X-UNKNOWN", "GSSAPI"];
        assert_eq!(select(PASSWORD_PREFERENCE, offered), Some(Mechanism::CramMd5));
        assert_eq!(
            select(PASSWORD_PREFERENCE, ["LOGIN", "plain"]),
            Some(Mechanism::Plain)
        );
        assert_eq!(
            select(PASSWORD_PREFERENCE, ["login", "Scram-Sha-256", "PLAIN"]),
            Some(Mechanism::ScramSha256)
        );
        assert_eq!(select(PASSWORD_PREFERENCE, ["XOAUTH2", "NTLM"]), None);
        assert_eq!(select(TOKEN_PREFERENCE, offered), None);
        assert_eq!(
            select(TOKEN_PREFERENCE, ["PLAIN", "xoauth2"]),
            Some(Mechanism::XOAuth2)
        );
        assert_eq!(select(PASSWORD_PREFERENCE, []), None);
        assert_eq!(select(&[], ["PLAIN"]), None);
        // A custom preference order is honoured too.
        assert_eq!(
            select(&[Mechanism::Login, Mechanism::Plain], ["PLAIN", "LOGIN"]),
            Some(Mechanism::Login)
        );
    }

    #[test]
    fn scram_rfc7677_vector() {
        let mut client = rfc7677_client();
        assert_eq!(client.mechanism(), Mechanism::ScramSha256);
        let first = client.initial_response().unwrap();
        assert_eq!(&first[..], b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        assert!(client.initial_response().is_none());

        let last = client.respond(RFC7677_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(std::str::from_utf8(&last).unwrap(), RFC7677_CLIENT_FINAL);
        assert_eq!(
            client.finish(),
            Err(SaslError::IncompleteExchange {
                mechanism: Mechanism::ScramSha256
            })
        );

        let empty = client.respond(RFC7677_SERVER_FINAL.as_bytes()).unwrap();
        assert!(empty.is_empty());
        assert_eq!(client.finish(), Ok(()));
        // Nothing more is expected.
        assert_eq!(
            client.respond(b""),
            Err(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::ScramSha256
            })
        );
        assert_eq!(client.finish(), Ok(()));
    }

    #[test]
    fn scram_server_final_extensions_are_ignored() {
        let mut client = rfc7677_after_client_final();
        let final_with_ext = format!("{RFC7677_SERVER_FINAL},x=ext");
        assert!(client.respond(final_with_ext.as_bytes()).unwrap().is_empty());
        assert_eq!(client.finish(), Ok(()));
    }

    #[test]
    fn scram_flipped_signature_byte_is_refused() {
        let mut signature = STANDARD.decode(&RFC7677_SERVER_FINAL[2..]).unwrap();
        signature[7] ^= 0x01;
        let tampered = format!("v={}", STANDARD.encode(&signature));
        let mut client = rfc7677_after_client_final();
        assert_eq!(
            client.respond(tampered.as_bytes()),
            Err(SaslError::ServerSignatureMismatch)
        );
        assert_eq!(
            client.finish(),
            Err(SaslError::IncompleteExchange {
                mechanism: Mechanism::ScramSha256
            })
        );
        // The exchange is dead: the genuine signature is no longer accepted.
        assert!(client.respond(RFC7677_SERVER_FINAL.as_bytes()).is_err());
        assert!(client.finish().is_err());
    }

    #[test]
    fn scram_truncated_signature_is_refused() {
        let mut client = rfc7677_after_client_final();
        assert_eq!(
            client.respond(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5n"),
            Err(SaslError::ServerSignatureMismatch)
        );
    }

    #[test]
    fn scram_finish_before_verification_is_incomplete() {
        let incomplete = Err(SaslError::IncompleteExchange {
            mechanism: Mechanism::ScramSha256,
        });
        let client = rfc7677_client();
        assert_eq!(client.finish(), incomplete);
        let client = rfc7677_started();
        assert_eq!(client.finish(), incomplete);
        let client = rfc7677_after_client_final();
        assert_eq!(client.finish(), incomplete);
    }

    #[test]
    fn scram_nonce_must_extend_client_nonce() {
        let mut client = rfc7677_started();
        assert_eq!(
            client.respond(b"r=someoneElsesNonce%hvYDpWUa2Ra,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            Err(SaslError::NonceMismatch)
        );
        // Exactly the client nonce, with no server part, does not extend it.
        let mut client = rfc7677_started();
        assert_eq!(
            client.respond(b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            Err(SaslError::NonceMismatch)
        );
        // A prefix of the client nonce does not either.
        let mut client = rfc7677_started();
        assert_eq!(
            client.respond(b"r=rOprNG,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            Err(SaslError::NonceMismatch)
        );
        assert!(client.finish().is_err());
    }

    fn server_first_with_count(count: &str) -> String {
        format!("r={RFC7677_NONCE}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i={count}")
    }

    #[test]
    fn scram_iteration_count_bounds() {
        for (text, count) in [
            ("1", 1),
            ("0", 0),
            ("4095", 4095),
            ("100001", 100_001),
            ("1000000", 1_000_000),
            ("1000001", 1_000_001),
            ("100000000", 100_000_000),
            ("99999999999999999999999999", u64::MAX),
        ] {
            let mut client = rfc7677_started();
            assert_eq!(
                client.respond(server_first_with_count(text).as_bytes()),
                Err(SaslError::IterationCount { count }),
                "i={text}"
            );
        }
        for count in [SCRAM_MIN_ITERATIONS, SCRAM_MAX_ITERATIONS] {
            let mut client = rfc7677_started();
            let step = client.step(server_first_with_count(&count.to_string()).as_bytes());
            let Ok(Step::Derive(derivation)) = step else {
                panic!("i={count}: {step:?}");
            };
            assert_eq!(u64::from(derivation.iterations()), count);
        }
    }

    #[test]
    fn scram_step_and_resume_give_what_respond_gives() {
        let server_first = server_first_with_count("4096");
        let mut inline = rfc7677_started();
        let want = inline.respond(server_first.as_bytes()).unwrap();

        let mut client = rfc7677_started();
        // Nothing to resume yet.
        assert_eq!(
            client.resume(key_for_tests()),
            Err(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::ScramSha256
            })
        );
        let Ok(Step::Derive(derivation)) = client.step(server_first.as_bytes()) else {
            panic!("no derivation");
        };
        assert_eq!(
            format!("{derivation:?}"),
            "KeyDerivation { iterations: 4096, .. }"
        );
        let key = derivation.run();
        assert_eq!(format!("{key:?}"), "DerivedKey([redacted])");
        assert!(format!("{client:?}").contains("deriving the key"));
        // A challenge while the key is derived is refused.
        assert!(client.step(b"v=x").is_err());
        let mut client = rfc7677_started();
        let Ok(Step::Derive(derivation)) = client.step(server_first.as_bytes()) else {
            panic!("no derivation");
        };
        assert_eq!(client.resume(derivation.run()).unwrap(), want);
        // Once only.
        assert!(client.resume(key).is_err());
        // Other mechanisms never ask for a derivation.
        let mut plain = SaslClient::new(Mechanism::Plain, &password("u", "p"), "").unwrap();
        let step = plain.step(b"").unwrap();
        assert_eq!(format!("{step:?}"), "Respond([redacted, 4 bytes])");
        assert!(matches!(step, Step::Respond(r) if &r[..] == b"\0u\0p"));
        assert!(plain.resume(key_for_tests()).is_err());
    }

    fn key_for_tests() -> DerivedKey {
        DerivedKey(Zeroizing::new([7; SCRAM_KEY_LEN]))
    }

    #[test]
    fn protocol_violations_are_the_servers_format_errors() {
        assert!(SaslError::IterationCount { count: 100_001 }.is_protocol_violation());
        assert!(SaslError::InvalidBase64.is_protocol_violation());
        assert!(scram_malformed("salt is empty").is_protocol_violation());
        assert!(!SaslError::ServerSignatureMismatch.is_protocol_violation());
        assert!(!SaslError::NonceMismatch.is_protocol_violation());
        assert!(!SaslError::InvalidNonce.is_protocol_violation());
    }

    #[test]
    fn scram_server_error() {
        let mut client = rfc7677_after_client_final();
        assert_eq!(
            client.respond(b"e=invalid-proof"),
            Err(SaslError::ServerError {
                message: "invalid-proof".to_owned()
            })
        );
        assert!(client.finish().is_err());
    }

    #[test]
    fn scram_malformed_server_first() {
        let cases: [&[u8]; 13] = [
            b"",
            b"m=ext,r=rOprNGfwEbeRWgbNEkqOsrv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqOsrv,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOsrv",
            b"r=rOprNGfwEbeRWgbNEkqOsrv,i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ==",
            b"r=rOprNGfwEbeRWgbNEkqOsrv,s=,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOsrv,s=not base64!,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOsrv,s=W22ZaJ0SNY7soEsUEjb6gQ==",
            b"r=rOprNGfwEbeRWgbNEkqOsrv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=",
            b"r=rOprNGfwEbeRWgbNEkqOsrv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=+4096",
            b"r=rOprNGfwEbeRWgbNEkqOsrv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,",
            b"r=rOprNGfwEbeRWgbNEkqOs rv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOsrv\xff,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        ];
        for case in cases {
            let mut client = rfc7677_started();
            let result = client.respond(case);
            assert!(
                matches!(
                    result,
                    Err(SaslError::MalformedServerMessage {
                        mechanism: Mechanism::ScramSha256,
                        ..
                    })
                ),
                "{:?} gave {result:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn scram_tolerates_extensions_after_iteration_count() {
        let mut client = rfc7677_started();
        let server_first = format!("{RFC7677_SERVER_FIRST},x=extension,y=");
        let client_final = client.respond(server_first.as_bytes()).unwrap();
        let client_final = std::str::from_utf8(&client_final).unwrap();
        assert!(client_final.starts_with("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p="));
        // The extension is part of AuthMessage, so the proof differs.
        assert_ne!(client_final, RFC7677_CLIENT_FINAL);
    }

    #[test]
    fn scram_malformed_server_final() {
        for case in [&b"x=abc"[..], b"", b"v=***", b"v\xff"] {
            let mut client = rfc7677_after_client_final();
            assert!(matches!(
                client.respond(case),
                Err(SaslError::MalformedServerMessage { .. })
            ));
        }
    }

    #[test]
    fn scram_without_initial_response_answers_empty_challenge() {
        let mut client = rfc7677_client();
        let first = client.respond(b"").unwrap();
        assert_eq!(&first[..], b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        assert!(client.initial_response().is_none());
        let last = client.respond(RFC7677_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(&last[..], RFC7677_CLIENT_FINAL.as_bytes());

        // A non-empty challenge before client-first is unexpected.
        let mut client = rfc7677_client();
        assert_eq!(
            client.respond(RFC7677_SERVER_FIRST.as_bytes()),
            Err(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::ScramSha256
            })
        );
    }

    #[test]
    fn scram_username_is_escaped() {
        let mut client =
            SaslClient::new(Mechanism::ScramSha256, &password("a=b,c", "pencil"), "nonce").unwrap();
        assert_eq!(&client.initial_response().unwrap()[..], b"n,,n=a=3Db=2Cc,r=nonce");
    }

    #[test]
    fn scram_applies_saslprep() {
        // U+00A0 NO-BREAK SPACE maps to a plain space; U+00AD SOFT HYPHEN
        // maps to nothing.
        let mut client = SaslClient::new(
            Mechanism::ScramSha256,
            &password("us\u{00A0}er\u{00AD}", "pencil"),
            "nonce",
        )
        .unwrap();
        assert_eq!(&client.initial_response().unwrap()[..], b"n,,n=us er,r=nonce");

        // The password goes through SASLprep too: "pen\u{00AD}cil" is "pencil".
        let mut client = SaslClient::new(
            Mechanism::ScramSha256,
            &password("user", "pen\u{00AD}cil"),
            RFC7677_NONCE,
        )
        .unwrap();
        client.initial_response().unwrap();
        let last = client.respond(RFC7677_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(&last[..], RFC7677_CLIENT_FINAL.as_bytes());
    }

    #[test]
    fn scram_refuses_prohibited_text() {
        let invalid = Err(SaslError::InvalidCredentialText {
            mechanism: Mechanism::ScramSha256,
        });
        for (user, pass) in [
            ("user", "pen\u{0007}cil"),
            ("us\u{0000}er", "pencil"),
            ("", "pencil"),
            ("\u{00AD}", "pencil"),
        ] {
            let result = SaslClient::new(Mechanism::ScramSha256, &password(user, pass), "nonce");
            assert_eq!(result.map(|_| ()), invalid, "{user:?}");
        }
    }

    #[test]
    fn scram_refuses_bad_nonce() {
        for nonce in ["", "a,b", "with space", "tab\t", "caf\u{e9}", "\x7f"] {
            let result = SaslClient::new(Mechanism::ScramSha256, &password("u", "p"), nonce);
            assert_eq!(result.map(|_| ()), Err(SaslError::InvalidNonce), "{nonce:?}");
        }
        // Other mechanisms ignore the nonce.
        for mechanism in [Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5] {
            assert!(SaslClient::new(mechanism, &password("u", "p"), "").is_ok());
        }
        assert!(SaslClient::new(Mechanism::XOAuth2, &token("u", "t"), "a,b").is_ok());
    }

    #[test]
    fn cram_md5_rfc2195_vector() {
        let mut client =
            SaslClient::new(Mechanism::CramMd5, &password("tim", "tanstaaftanstaaf"), "").unwrap();
        assert!(client.initial_response().is_none());
        let response = client
            .respond(b"<1896.697170952@postoffice.reston.mci.net>")
            .unwrap();
        assert_eq!(&response[..], b"tim b913a602c7eda7a495b4e6e7334d3890");
        assert_eq!(
            client.respond(b"<1896.697170952@postoffice.reston.mci.net>"),
            Err(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::CramMd5
            })
        );
        assert_eq!(client.finish(), Ok(()));
    }

    #[test]
    fn cram_md5_wire_round_trip() {
        // The RFC 2195 challenge as it appears on the wire.
        let challenge = decode_challenge("PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+").unwrap();
        assert_eq!(challenge, b"<1896.697170952@postoffice.reston.mci.net>");
        let mut client =
            SaslClient::new(Mechanism::CramMd5, &password("tim", "tanstaaftanstaaf"), "").unwrap();
        let response = client.respond(&challenge).unwrap();
        assert_eq!(
            &encode_continuation(&response)[..],
            b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"
        );
    }

    #[test]
    fn plain_initial_response() {
        let mut client = SaslClient::new(Mechanism::Plain, &password("user", "pass"), "").unwrap();
        assert_eq!(&client.initial_response().unwrap()[..], b"\0user\0pass");
        assert!(client.initial_response().is_none());
        assert_eq!(
            client.respond(b""),
            Err(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::Plain
            })
        );
        assert_eq!(client.finish(), Ok(()));
        assert_eq!(&encode_initial_response(b"\0user\0pass")[..], b"AHVzZXIAcGFzcw==");
    }

    #[test]
    fn plain_without_initial_response_answers_challenge() {
        let mut client = SaslClient::new(Mechanism::Plain, &password("user", "pass"), "").unwrap();
        assert_eq!(&client.respond(b"").unwrap()[..], b"\0user\0pass");
        assert!(client.initial_response().is_none());
        assert!(client.respond(b"").is_err());
    }

    #[test]
    fn plain_refuses_nul() {
        for (user, pass) in [("us\0er", "pass"), ("user", "pa\0ss")] {
            assert_eq!(
                SaslClient::new(Mechanism::Plain, &password(user, pass), "").map(|_| ()),
                Err(SaslError::InvalidCredentialText {
                    mechanism: Mechanism::Plain
                })
            );
        }
    }

    const XOAUTH2_TOKEN: &str = "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg";

    fn xoauth2_client() -> SaslClient {
        SaslClient::new(
            Mechanism::XOAuth2,
            &token("someuser@example.com", XOAUTH2_TOKEN),
            "",
        )
        .unwrap()
    }

    #[test]
    fn xoauth2_initial_response() {
        let mut client = xoauth2_client();
        let initial = client.initial_response().unwrap();
        assert_eq!(
            &initial[..],
            b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
        );
        assert_eq!(
            &encode_initial_response(&initial)[..],
            b"dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
        assert_eq!(client.server_error(), None);
        assert_eq!(client.finish(), Ok(()));
    }

    #[test]
    fn xoauth2_json_error_is_answered_empty_and_kept() {
        let json = r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#;
        let mut client = xoauth2_client();
        client.initial_response().unwrap();
        let challenge = decode_challenge(&STANDARD.encode(json)).unwrap();
        let response = client.respond(&challenge).unwrap();
        assert!(response.is_empty());
        assert_eq!(&encode_continuation(&response)[..], b"");
        assert_eq!(client.server_error(), Some(json));
        assert_eq!(
            client.respond(b"{}"),
            Err(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::XOAuth2
            })
        );
        assert_eq!(client.server_error(), Some(json));
    }

    #[test]
    fn xoauth2_without_initial_response_answers_challenge() {
        let mut client = xoauth2_client();
        let response = client.respond(b"").unwrap();
        assert!(response.starts_with(b"user=someuser@example.com\x01"));
        assert!(client.respond(b"{\"status\":\"400\"}").unwrap().is_empty());
        assert_eq!(client.server_error(), Some("{\"status\":\"400\"}"));
    }

    #[test]
    fn xoauth2_refuses_separator_in_text() {
        for (user, tok) in [("some\x01user", "tok"), ("user", "to\x01k")] {
            assert_eq!(
                SaslClient::new(Mechanism::XOAuth2, &token(user, tok), "").map(|_| ()),
                Err(SaslError::InvalidCredentialText {
                    mechanism: Mechanism::XOAuth2
                })
            );
        }
    }

    fn oauthbearer_client(user: &str) -> SaslClient {
        SaslClient::new(Mechanism::OAuthBearer, &token(user, XOAUTH2_TOKEN), "").unwrap()
    }

    #[test]
    fn oauthbearer_initial_response() {
        let mut client = oauthbearer_client("user@example.com");
        let initial = client.initial_response().unwrap();
        assert_eq!(
            &initial[..],
            b"n,a=user@example.com,\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
        );
        assert_eq!(
            &encode_initial_response(&initial)[..],
            b"bixhPXVzZXJAZXhhbXBsZS5jb20sAWF1dGg9QmVhcmVyIHlhMjkudkY5ZGZ0NHFtVGMyTnZiM1JsY2tCaGRIUmhkbWx6ZEdFdVkyOXRDZwEB"
        );
        assert!(client.initial_response().is_none());
        assert_eq!(client.server_error(), None);
        assert_eq!(client.finish(), Ok(()));
    }

    #[test]
    fn oauthbearer_escapes_the_authorization_identity() {
        let mut client = oauthbearer_client("a,b=c,=d@example.com");
        let initial = client.initial_response().unwrap();
        assert!(
            initial.starts_with(b"n,a=a=2Cb=3Dc=2C=3Dd@example.com,\x01auth=Bearer "),
            "{:?}",
            String::from_utf8_lossy(&initial)
        );
        assert!(initial.ends_with(b"\x01\x01"));
        // The separator cannot be carried.
        for (user, tok) in [("some\x01user", "tok"), ("user", "to\x01k")] {
            assert_eq!(
                SaslClient::new(Mechanism::OAuthBearer, &token(user, tok), "").map(|_| ()),
                Err(SaslError::InvalidCredentialText {
                    mechanism: Mechanism::OAuthBearer
                })
            );
        }
    }

    #[test]
    fn oauthbearer_error_challenge_is_answered_with_0x01() {
        let json = r#"{"status":"invalid_token","scope":"example_scope","openid-configuration":"https://example.com/.well-known/openid-configuration"}"#;
        let mut client = oauthbearer_client("user@example.com");
        client.initial_response().unwrap();
        let challenge = decode_challenge(&STANDARD.encode(json)).unwrap();
        let response = client.respond(&challenge).unwrap();
        assert_eq!(&response[..], b"\x01");
        assert_eq!(&encode_continuation(&response)[..], b"AQ==");
        assert_eq!(client.server_error(), Some(json));
        let error = client.bearer_error().unwrap();
        assert_eq!(error.status, "invalid_token");
        assert_eq!(error.scope.as_deref(), Some("example_scope"));
        assert!(error.is_invalid_token() && !error.is_insufficient_scope());
        // Only one error challenge.
        assert_eq!(
            client.respond(&challenge),
            Err(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::OAuthBearer
            })
        );
        // Without an initial response, the first (empty) challenge asks for
        // the message.
        let mut client = oauthbearer_client("u");
        assert!(client
            .respond(b"")
            .unwrap()
            .starts_with(b"n,a=u,\x01auth=Bearer "));
        assert_eq!(
            &client.respond(b"{\"status\":\"invalid_request\"}").unwrap()[..],
            b"\x01"
        );
        assert!(!client.bearer_error().unwrap().is_invalid_token());
    }

    #[test]
    fn oauthbearer_is_preferred_to_xoauth2() {
        assert_eq!(
            select(TOKEN_PREFERENCE, ["XOAUTH2", "OAUTHBEARER", "PLAIN"]),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(
            select(TOKEN_PREFERENCE, ["PLAIN", "xoauth2"]),
            Some(Mechanism::XOAuth2)
        );
        assert_eq!(select(TOKEN_PREFERENCE, ["PLAIN", "LOGIN"]), None);
        assert_eq!("oauthbearer".parse(), Ok(Mechanism::OAuthBearer));
        assert!(Mechanism::OAuthBearer.exposes_secret() && Mechanism::OAuthBearer.takes_token());
        assert!(!Mechanism::Plain.takes_token());
    }

    #[test]
    fn bearer_errors_are_read_from_json() {
        type Expected<'a> = Option<(&'a str, Option<&'a str>)>;
        let cases: &[(&str, Expected<'_>)] = &[
            (r#"{"status":"invalid_token"}"#, Some(("invalid_token", None))),
            (
                " {\n \"scope\" : \"a b\" , \"status\":\"insufficient_scope\" } \r\n",
                Some(("insufficient_scope", Some("a b"))),
            ),
            (r#"{"status":401,"schemes":"bearer"}"#, Some(("401", None))),
            (
                r#"{"x":{"y":[1,-2.5e3,true,false,null,{"z":"}"}]},"status":"400"}"#,
                Some(("400", None)),
            ),
            (
                r#"{"status":"in\u0076alid_\"token\\\/"}"#,
                Some(("invalid_\"token\\/", None)),
            ),
            (
                r#"{"status":"\ud83d\ude00 \ud800"}"#,
                Some(("\u{1f600} \u{fffd}", None)),
            ),
            (
                r#"{"status":"caf\u00e9 \u00e9t\u00e9"}"#,
                Some(("café été", None)),
            ),
            (r#"{"status":null}"#, None),
            (r#"{"status":{"nested":"x"}}"#, None),
            (r#"{"scope":"s"}"#, None),
            (r#"{"status":"x""#, None),
            (r#"{"status":"x"} trailing"#, None),
            (r#"{"status":"x",}"#, None),
            (r#"{"status" "x"}"#, None),
            (r#"{"status":"\q"}"#, None),
            (r#"{"status":"\u12"}"#, None),
            (r#"{"status":-}"#, None),
            (r#"{"status":tru}"#, None),
            (r#"["status","x"]"#, None),
            ("", None),
            ("{", None),
            ("401", None),
        ];
        for (json, expected) in cases {
            let parsed = BearerError::parse(json);
            let got = parsed.as_ref().map(|e| (e.status.as_str(), e.scope.as_deref()));
            assert_eq!(got, *expected, "{json:?}");
        }
        // Nesting is bounded, not recursed into without end.
        let deep = format!(
            "{{\"a\":{}1{},\"status\":\"s\"}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(BearerError::parse(&deep), None);
        let fine = format!("{{\"a\":{}1{},\"status\":\"s\"}}", "[".repeat(20), "]".repeat(20));
        assert!(BearerError::parse(&fine).is_some());
        let huge = format!("{{\"status\":\"{}\"}}", "x".repeat(20_000));
        assert_eq!(BearerError::parse(&huge), None);
    }

    #[test]
    fn server_error_is_xoauth2_only() {
        let mut client = SaslClient::new(Mechanism::Login, &password("u", "p"), "").unwrap();
        client.respond(b"{\"status\":\"401\"}").unwrap();
        assert_eq!(client.server_error(), None);
    }

    #[test]
    fn login_two_prompts_then_unexpected() {
        let mut client = SaslClient::new(Mechanism::Login, &password("user", "pass"), "").unwrap();
        assert!(client.initial_response().is_none());
        assert_eq!(&client.respond(b"Username:").unwrap()[..], b"user");
        assert_eq!(&client.respond(b"Password:").unwrap()[..], b"pass");
        assert_eq!(
            client.respond(b"Password:"),
            Err(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::Login
            })
        );
        assert_eq!(client.finish(), Ok(()));
    }

    #[test]
    fn wrong_credential_kind() {
        assert_eq!(
            SaslClient::new(Mechanism::XOAuth2, &password("u", "p"), "").map(|_| ()),
            Err(SaslError::WrongCredential {
                mechanism: Mechanism::XOAuth2,
                credential: "password"
            })
        );
        for mechanism in PASSWORD_PREFERENCE {
            let error = SaslClient::new(*mechanism, &token("u", "t"), "nonce")
                .map(|_| ())
                .unwrap_err();
            assert_eq!(
                error,
                SaslError::WrongCredential {
                    mechanism: *mechanism,
                    credential: "bearer token"
                }
            );
            assert_eq!(
                error.to_string(),
                format!("{mechanism} cannot be used with a bearer token credential")
            );
        }
    }

    #[test]
    fn debug_output_is_redacted() {
        let secret = "s3cr3t-Pa55w0rd";
        let credentials = [password("bob", secret), token("bob", secret)];
        for credential in &credentials {
            for text in [format!("{credential:?}"), format!("{credential:#?}")] {
                assert!(text.contains("bob"), "{text}");
                assert!(text.contains("[redacted]"), "{text}");
                assert!(!text.contains(secret), "{text}");
            }
        }
        assert_eq!(
            format!("{:?}", credentials[0]),
            r#"Password { username: "bob", password: "[redacted]" }"#
        );
        assert_eq!(
            format!("{:?}", credentials[1]),
            r#"OAuth2 { username: "bob", token: "[redacted]" }"#
        );

        for mechanism in Mechanism::ALL {
            let credential = if mechanism.takes_token() {
                &credentials[1]
            } else {
                &credentials[0]
            };
            let mut client = SaslClient::new(mechanism, credential, "nonce").unwrap();
            let check = |client: &SaslClient| {
                let text = format!("{client:?} {client:#?}");
                assert!(text.contains(&format!("{mechanism:?}")), "{text}");
                assert!(!text.contains(secret), "{text}");
            };
            check(&client);
            let _ = client.initial_response();
            check(&client);
            let _ = client.respond(b"challenge");
            check(&client);
        }
    }

    #[test]
    fn encoding_helpers() {
        assert_eq!(&encode_initial_response(b"")[..], b"=");
        assert_eq!(&encode_continuation(b"")[..], b"");
        assert_eq!(&encode_initial_response(b"user")[..], b"dXNlcg==");
        assert_eq!(&encode_continuation(b"user")[..], b"dXNlcg==");
        assert_eq!(decode_challenge("").unwrap(), b"");
        assert_eq!(decode_challenge(" \t\r\n").unwrap(), b"");
        assert_eq!(decode_challenge(" VXNlcm5hbWU6\r\n").unwrap(), b"Username:");
        assert_eq!(decode_challenge("dXNlcg").unwrap(), b"user");
        assert_eq!(decode_challenge("not base64!"), Err(SaslError::InvalidBase64));
        assert_eq!(decode_challenge("VXNl cm5hbWU6"), Err(SaslError::InvalidBase64));
        assert_eq!(decode_challenge("\u{e9}"), Err(SaslError::InvalidBase64));
    }

    #[test]
    fn error_messages_are_descriptive() {
        let cases = [
            (SaslError::InvalidBase64, "base64"),
            (SaslError::NonceMismatch, "nonce"),
            (SaslError::IterationCount { count: 1 }, "1 is outside"),
            (SaslError::ServerSignatureMismatch, "signature"),
            (
                SaslError::ServerError {
                    message: "invalid-proof".to_owned(),
                },
                "\"invalid-proof\"",
            ),
            (
                SaslError::IncompleteExchange {
                    mechanism: Mechanism::ScramSha256,
                },
                "SCRAM-SHA-256",
            ),
            (
                SaslError::MalformedServerMessage {
                    mechanism: Mechanism::ScramSha256,
                    detail: "salt is empty",
                },
                "salt is empty",
            ),
            (SaslError::InvalidNonce, "nonce"),
        ];
        for (error, needle) in cases {
            let text = error.to_string();
            assert!(text.contains(needle), "{text}");
        }
    }

    /// A challenge: arbitrary bytes, or text shaped like SCRAM messages so
    /// the deeper states are reached too.
    fn challenge_strategy() -> impl Strategy<Value = Vec<u8>> {
        let salt = prop_oneof![Just("W22ZaJ0SNY7soEsUEjb6gQ==".to_owned()), "[ -~]{0,24}",];
        let count = prop_oneof![4096u64..4200, any::<u64>()];
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..96),
            ("[!-~]{0,12}", salt, count, "[ -~]{0,16}").prop_map(|(ext, salt, count, tail)| {
                format!("r={RFC7677_NONCE}{ext},s={salt},i={count}{tail}").into_bytes()
            }),
            "[ve]=[ -~]{0,48}".prop_map(String::into_bytes),
            Just(Vec::new()),
        ]
    }

    fn mechanism_strategy() -> impl Strategy<Value = Mechanism> {
        prop::sample::select(Mechanism::ALL.to_vec())
    }

    fn assert_no_secret(error: &SaslError, secret: &str) {
        assert!(!error.to_string().contains(secret));
        assert!(!format!("{error:?}").contains(secret));
    }

    proptest! {
        #[test]
        fn respond_never_panics(
            mechanism in mechanism_strategy(),
            secret in "[A-Za-z0-9]{20,32}",
            mismatch in prop::bool::weighted(0.1),
            send_initial in any::<bool>(),
            challenges in prop::collection::vec(challenge_strategy(), 0..=4),
        ) {
            let credential = if mechanism.takes_token() != mismatch {
                token("user", &secret)
            } else {
                password("user", &secret)
            };
            let mut client = match SaslClient::new(mechanism, &credential, RFC7677_NONCE) {
                Ok(client) => client,
                Err(error) => {
                    assert_no_secret(&error, &secret);
                    return Ok(());
                }
            };
            if send_initial {
                let _ = client.initial_response();
            }
            for challenge in &challenges {
                if let Err(error) = client.respond(challenge) {
                    assert_no_secret(&error, &secret);
                }
                let debug = format!("{client:?}");
                prop_assert!(!debug.contains(&secret));
            }
            if let Err(error) = client.finish() {
                assert_no_secret(&error, &secret);
            }
            if let Some(text) = client.server_error() {
                prop_assert!(!text.contains(&secret));
            }
        }

        #[test]
        fn respond_never_panics_on_wire_text(
            mechanism in mechanism_strategy(),
            lines in prop::collection::vec(".{0,64}", 0..=4),
        ) {
            let credential = if mechanism.takes_token() {
                token("user", "tok")
            } else {
                password("user", "pass")
            };
            let mut client = SaslClient::new(mechanism, &credential, RFC7677_NONCE).unwrap();
            for line in &lines {
                if let Ok(challenge) = decode_challenge(line) {
                    let _ = client.respond(&challenge);
                }
            }
            let _ = client.finish();
        }

        #[test]
        fn bearer_error_never_panics(text in ".{0,64}", raw in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = BearerError::parse(&text);
            let _ = BearerError::parse(&String::from_utf8_lossy(&raw));
            let wrapped = format!("{{\"status\":\"{text}\",\"k\":[{text}]}}");
            let _ = BearerError::parse(&wrapped);
        }

        #[test]
        fn continuation_round_trips(raw in prop::collection::vec(any::<u8>(), 0..128)) {
            let encoded = encode_continuation(&raw);
            let text = std::str::from_utf8(&encoded).unwrap();
            prop_assert_eq!(decode_challenge(text).unwrap(), raw);
        }
    }
}
