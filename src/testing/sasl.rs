//! Server side of the SASL mechanisms, as a step machine: the session
//! sends each [`Step::Challenge`] as a `334` reply and feeds the decoded
//! client response back.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use secrecy::zeroize::Zeroizing;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::shared::Shared;
use super::User;

/// SCRAM iteration count.
const SCRAM_ITERATIONS: u32 = 4096;

/// The `334` text of an XOAUTH2 failure (before base64), as Google sends it.
const XOAUTH2_ERROR: &str = r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#;

/// The `334` text of an OAUTHBEARER failure (RFC 7628 §3.2.2).
const OAUTHBEARER_ERROR: &str =
    r#"{"status":"invalid_token","scope":"https://mail.google.com/","schemes":"bearer"}"#;

/// Reply when the client answered the error challenge with something else
/// than the mechanism's acknowledgement.
const BAD_ERROR_ANSWER: &str = "501 5.5.2 Malformed answer to the error challenge";

/// Reply when the credentials are wrong.
pub(super) const INVALID: &str = "535 5.7.8 Authentication credentials invalid";

/// What the session does next.
pub(super) enum Step {
    /// Send `334 <base64 of this>` and wait for a response.
    Challenge(Vec<u8>),
    /// `235`: this user is authenticated.
    Success(String),
    /// Send this (final) reply.
    Failure(&'static str),
}

/// One SASL exchange in progress.
pub(super) struct Exchange {
    state: State,
}

enum State {
    Plain,
    LoginUser,
    LoginPassword {
        username: String,
    },
    CramMd5 {
        challenge: String,
    },
    /// XOAUTH2 (`oauthbearer` false) or OAUTHBEARER, waiting for the message.
    Bearer {
        oauthbearer: bool,
    },
    /// The error challenge was sent: waiting for the client's answer.
    BearerFailed {
        oauthbearer: bool,
    },
    ScramFirst,
    ScramFinal(Box<ScramPending>),
    ScramVerified {
        username: String,
    },
    Done,
}

/// The SCRAM exchange after server-first.
struct ScramPending {
    /// The user, when known (unknown users fail at the proof).
    user: Option<User>,
    username: String,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl Exchange {
    /// Starts `mechanism` (upper case, one of the implemented ones) with the
    /// decoded initial response, if the client sent one. `None` for an
    /// unknown mechanism.
    pub(super) fn start(
        mechanism: &str,
        initial: Option<Vec<u8>>,
        shared: &Shared,
    ) -> Option<(Exchange, Step)> {
        let initial = initial.map(Zeroizing::new);
        let state = match mechanism {
            "PLAIN" => State::Plain,
            "LOGIN" => State::LoginUser,
            "CRAM-MD5" => {
                if initial.is_some() {
                    let exchange = Exchange { state: State::Done };
                    return Some((
                        exchange,
                        Step::Failure("501 5.5.2 CRAM-MD5 takes no initial response"),
                    ));
                }
                let challenge = shared.cram_challenge();
                let step = Step::Challenge(challenge.clone().into_bytes());
                return Some((
                    Exchange {
                        state: State::CramMd5 { challenge },
                    },
                    step,
                ));
            }
            "XOAUTH2" => State::Bearer { oauthbearer: false },
            "OAUTHBEARER" => State::Bearer { oauthbearer: true },
            "SCRAM-SHA-256" => State::ScramFirst,
            _ => return None,
        };
        let mut exchange = Exchange { state };
        let step = match initial {
            Some(response) => exchange.step(&response, shared),
            None => match exchange.state {
                State::LoginUser => Step::Challenge(b"Username:".to_vec()),
                _ => Step::Challenge(Vec::new()),
            },
        };
        Some((exchange, step))
    }

    /// Handles one decoded client response.
    pub(super) fn step(&mut self, response: &[u8], shared: &Shared) -> Step {
        let users = &shared.config.users;
        match std::mem::replace(&mut self.state, State::Done) {
            State::Plain => plain(response, users),
            State::LoginUser => match std::str::from_utf8(response) {
                Ok(username) => {
                    self.state = State::LoginPassword {
                        username: username.to_owned(),
                    };
                    Step::Challenge(b"Password:".to_vec())
                }
                Err(_) => Step::Failure(INVALID),
            },
            State::LoginPassword { username } => match find(users, &username) {
                Some(user) if user.secret.expose_secret().as_bytes() == response => Step::Success(username),
                _ => Step::Failure(INVALID),
            },
            State::CramMd5 { challenge } => cram_md5(response, &challenge, users),
            State::Bearer { oauthbearer } => {
                let parsed = if oauthbearer {
                    oauthbearer_message(response)
                } else {
                    xoauth2_message(response)
                };
                match parsed.filter(|(username, token)| bearer_accepted(shared, username, token)) {
                    Some((username, _)) => Step::Success(username),
                    None => {
                        self.state = State::BearerFailed { oauthbearer };
                        let error = if oauthbearer {
                            OAUTHBEARER_ERROR
                        } else {
                            XOAUTH2_ERROR
                        };
                        Step::Challenge(error.as_bytes().to_vec())
                    }
                }
            }
            State::BearerFailed { oauthbearer } => {
                if response == error_answer(oauthbearer) {
                    Step::Failure(INVALID)
                } else {
                    Step::Failure(BAD_ERROR_ANSWER)
                }
            }
            State::ScramFirst => match scram_first(response, shared) {
                Ok(pending) => {
                    let step = Step::Challenge(pending.server_first.clone().into_bytes());
                    self.state = State::ScramFinal(Box::new(pending));
                    step
                }
                Err(reply) => Step::Failure(reply),
            },
            State::ScramFinal(pending) => match scram_final(response, &pending, &shared.scram_salt) {
                Some(server_final) => {
                    self.state = State::ScramVerified {
                        username: pending.username.clone(),
                    };
                    Step::Challenge(server_final.into_bytes())
                }
                None => Step::Failure(INVALID),
            },
            State::ScramVerified { username } => {
                if response.is_empty() {
                    Step::Success(username)
                } else {
                    Step::Failure(INVALID)
                }
            }
            State::Done => Step::Failure(INVALID),
        }
    }
}

impl Exchange {
    /// The answer the client owes now, when it is the one to an error
    /// challenge (`\x01` for OAUTHBEARER, empty for XOAUTH2): nothing secret.
    pub(super) fn error_answer_expected(&self) -> Option<&'static [u8]> {
        match self.state {
            State::BearerFailed { oauthbearer } => Some(error_answer(oauthbearer)),
            _ => None,
        }
    }
}

/// The acknowledgement of an error challenge.
fn error_answer(oauthbearer: bool) -> &'static [u8] {
    if oauthbearer {
        b"\x01"
    } else {
        b""
    }
}

/// Whether `token` authenticates `username`: in the test's
/// [`BearerTokens`](super::BearerTokens) when the server has them, else a
/// configured user's secret.
fn bearer_accepted(shared: &Shared, username: &str, token: &str) -> bool {
    match &shared.config.bearer_tokens {
        Some(tokens) => tokens.accepts(username, token),
        None => find(&shared.config.users, username).is_some_and(|user| user.secret.expose_secret() == token),
    }
}

fn find<'a>(users: &'a [User], name: &str) -> Option<&'a User> {
    users.iter().find(|user| user.name == name)
}

/// `authzid \0 authcid \0 passwd` (RFC 4616).
fn plain(message: &[u8], users: &[User]) -> Step {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failure(INVALID);
    };
    let Ok(username) = std::str::from_utf8(authcid) else {
        return Step::Failure(INVALID);
    };
    if !authzid.is_empty() && authzid != authcid {
        return Step::Failure(INVALID);
    }
    match find(users, username) {
        Some(user) if user.secret.expose_secret().as_bytes() == password => {
            Step::Success(username.to_owned())
        }
        _ => Step::Failure(INVALID),
    }
}

/// `username SP hex(HMAC-MD5(password, challenge))` (RFC 2195).
fn cram_md5(response: &[u8], challenge: &str, users: &[User]) -> Step {
    let Ok(response) = std::str::from_utf8(response) else {
        return Step::Failure(INVALID);
    };
    let Some((username, digest)) = response.rsplit_once(' ') else {
        return Step::Failure(INVALID);
    };
    let Some(user) = find(users, username) else {
        return Step::Failure(INVALID);
    };
    let Ok(mut mac) = Hmac::<Md5>::new_from_slice(user.secret.expose_secret().as_bytes()) else {
        return Step::Failure(INVALID);
    };
    mac.update(challenge.as_bytes());
    let expected = hex(&mac.finalize().into_bytes());
    if digest.eq_ignore_ascii_case(&expected) {
        Step::Success(username.to_owned())
    } else {
        Step::Failure(INVALID)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `user=U \x01 auth=Bearer T \x01 \x01`: the user name and token.
fn xoauth2_message(message: &[u8]) -> Option<(String, &str)> {
    let message = std::str::from_utf8(message).ok()?;
    let body = message.strip_suffix("\x01\x01")?;
    let mut username = None;
    let mut token = None;
    for field in body.split('\x01') {
        if let Some(value) = field.strip_prefix("user=") {
            username = Some(value);
        } else if let Some(value) = field.strip_prefix("auth=") {
            token = Some(bearer_value(value)?);
        }
    }
    Some((username?.to_owned(), token?))
}

/// `Bearer T`: the token.
fn bearer_value(value: &str) -> Option<&str> {
    let (scheme, value) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then_some(value)
}

/// `n,a=U, \x01 *(key=value \x01) \x01` (RFC 7628 §3.1): the user name of
/// the GS2 header (`=2C` and `=3D` decoded) and the `auth` token. Channel
/// binding (`p=`) is refused; a header without `a=` names no user.
fn oauthbearer_message(message: &[u8]) -> Option<(String, &str)> {
    let message = std::str::from_utf8(message).ok()?;
    let (header, pairs) = message.split_once('\x01')?;
    let rest = header.strip_prefix("n,").or_else(|| header.strip_prefix("y,"))?;
    let authzid = rest.strip_suffix(',')?.strip_prefix("a=")?;
    let username = decode_saslname(authzid)?;
    let pairs = pairs.strip_suffix("\x01\x01")?;
    let mut token = None;
    for pair in pairs.split('\x01') {
        let (key, value) = pair.split_once('=')?;
        if key == "auth" {
            token = Some(bearer_value(value)?);
        } else if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) {
            return None;
        }
    }
    Some((username, token?))
}

/// SASLprep when it succeeds, else the text as is.
fn prepared(text: &str) -> String {
    stringprep::saslprep(text).map_or_else(|_| text.to_owned(), |p| p.into_owned())
}

/// Decodes a SCRAM `saslname` (`=2C` → `,`, `=3D` → `=`).
fn decode_saslname(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3)?;
        match escape {
            "=2C" => out.push(','),
            "=3D" => out.push('='),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Parses client-first and builds server-first (RFC 5802 §5).
fn scram_first(message: &[u8], shared: &Shared) -> Result<ScramPending, &'static str> {
    const MALFORMED: &str = "501 5.5.2 Malformed SCRAM client-first message";
    let message = std::str::from_utf8(message).map_err(|_| MALFORMED)?;
    let (flag, rest) = message.split_once(',').ok_or(MALFORMED)?;
    match flag {
        "n" | "y" => {}
        _ if flag.starts_with("p=") => return Err("535 5.7.8 Channel binding is not supported"),
        _ => return Err(MALFORMED),
    }
    let (authzid, bare) = rest.split_once(',').ok_or(MALFORMED)?;
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err(MALFORMED);
    }
    let gs2_header = format!("{flag},{authzid},");
    let mut attributes = bare.split(',');
    let username = attributes
        .next()
        .and_then(|a| a.strip_prefix("n="))
        .and_then(decode_saslname)
        .ok_or(MALFORMED)?;
    let client_nonce = attributes
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(MALFORMED)?;
    if client_nonce.is_empty()
        || !client_nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(MALFORMED);
    }
    let user = shared
        .config
        .users
        .iter()
        .find(|user| prepared(&user.name) == username)
        .cloned();
    let nonce = format!("{client_nonce}{}", shared.nonce());
    let server_first = format!(
        "r={nonce},s={},i={SCRAM_ITERATIONS}",
        STANDARD.encode(shared.scram_salt)
    );
    Ok(ScramPending {
        user,
        username,
        gs2_header,
        client_first_bare: bare.to_owned(),
        server_first,
        nonce,
    })
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
    mac.update(data);
    Some(Zeroizing::new(mac.finalize().into_bytes().to_vec()))
}

/// Verifies client-final; returns server-final (`v=...`) when the proof is
/// right.
fn scram_final(message: &[u8], pending: &ScramPending, salt: &[u8]) -> Option<String> {
    let message = std::str::from_utf8(message).ok()?;
    let (without_proof, proof) = message.rsplit_once(",p=")?;
    let proof = Zeroizing::new(STANDARD.decode(proof).ok()?);
    let mut attributes = without_proof.split(',');
    let binding = attributes.next()?.strip_prefix("c=")?;
    let nonce = attributes.next()?.strip_prefix("r=")?;
    if binding != STANDARD.encode(&pending.gs2_header) || nonce != pending.nonce {
        return None;
    }
    let user = pending.user.as_ref()?;
    let password = Zeroizing::new(prepared(user.secret.expose_secret()));
    let auth_message = format!(
        "{},{},{}",
        pending.client_first_bare, pending.server_first, without_proof
    );

    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, SCRAM_ITERATIONS, &mut salted[..]);
    let client_key = hmac_sha256(&salted[..], b"Client Key")?;
    let stored_key = Sha256::digest(&client_key[..]);
    let client_signature = hmac_sha256(&stored_key, auth_message.as_bytes())?;
    if proof.len() != client_signature.len() {
        return None;
    }
    let recovered: Zeroizing<Vec<u8>> = Zeroizing::new(
        proof
            .iter()
            .zip(client_signature.iter())
            .map(|(p, s)| p ^ s)
            .collect(),
    );
    if Sha256::digest(&recovered[..]) != stored_key {
        return None;
    }
    let server_key = hmac_sha256(&salted[..], b"Server Key")?;
    let server_signature = hmac_sha256(&server_key[..], auth_message.as_bytes())?;
    Some(format!("v={}", STANDARD.encode(&server_signature[..])))
}
