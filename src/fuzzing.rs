//! Fuzz harnesses: one function per target, each asserting the invariants of
//! its component on arbitrary input. The cargo-fuzz targets in `fuzz/` call
//! them, and `tests/fuzz_corpus.rs` replays the committed corpora through the
//! same functions, so a corpus entry is a regression test.
//!
//! Not part of the public API.

use std::sync::Arc;

use secrecy::SecretString;

use crate::proto::auth::{self, Credential, Mechanism, SaslClient};
use crate::proto::command::{Command, MailParams, Notify, RcptParams};
use crate::proto::data::{self, BdatEncoder, DataEncoder};
use crate::proto::ehlo::Capabilities;
use crate::proto::reply::{ReplyLimits, ReplyParser};
use crate::proto::session::{Envelope, Event, Session, SessionConfig, StartTlsPolicy, Transaction};
use crate::proto::SessionError;

/// A harness: panics when an invariant breaks.
pub type Harness = fn(&[u8]);

/// The harnesses by name, for the corpus replay test.
pub const TARGETS: &[(&str, Harness)] = &[
    ("reply_parser", reply_parser),
    ("ehlo", ehlo),
    ("body_encoder", body_encoder),
    ("command_encoder", command_encoder),
    ("sasl", sasl),
    ("session", session),
    ("message_parser", message_parser),
    ("smtp_url", smtp_url),
    ("draft", draft),
];

fn parse_all(p: &mut ReplyParser) -> (Vec<crate::proto::reply::Reply>, bool) {
    let mut out = Vec::new();
    loop {
        match p.next_reply() {
            Ok(Some(r)) => out.push(r),
            Ok(None) => return (out, false),
            Err(_) => return (out, true),
        }
    }
}

/// Reply parser: never panics, and splitting the input at any point gives
/// the same replies as feeding it whole (up to the first error).
pub fn reply_parser(input: &[u8]) {
    let limits = ReplyLimits {
        max_line: 512,
        max_reply: 2048,
    };
    let mut whole = ReplyParser::with_limits(limits);
    whole.push(input);
    let (replies, failed) = parse_all(&mut whole);

    let cut = input.first().map_or(0, |&b| usize::from(b)) % (input.len() + 1);
    let mut split = ReplyParser::with_limits(limits);
    split.push(&input[..cut]);
    let (mut got, mut split_failed) = parse_all(&mut split);
    if !split_failed {
        split.push(&input[cut..]);
        let (more, f) = parse_all(&mut split);
        got.extend(more);
        split_failed = f;
    }
    assert_eq!(failed, split_failed, "error depends on the split");
    assert_eq!(replies, got, "replies depend on the split");
    for r in &replies {
        let _ = (r.text(), r.to_string(), r.enhanced_code());
    }
}

/// EHLO capabilities: any reply text parses without panicking.
pub fn ehlo(input: &[u8]) {
    let mut p = ReplyParser::new();
    p.push(b"250-");
    p.push(input);
    p.push(b"\r\n250 X\r\n");
    if let Ok(Some(reply)) = p.next_reply() {
        let caps = Capabilities::from_ehlo(&reply);
        let _ = (
            caps.size_limit(),
            caps.auth_mechanisms(),
            caps.extensions().count(),
        );
    }
    let text = String::from_utf8_lossy(input);
    let lines: Vec<String> = text.split(['\n', '\r']).map(str::to_owned).collect();
    if let Some(code) = crate::proto::reply::ReplyCode::new(250) {
        let caps = Capabilities::from_ehlo(&crate::proto::reply::Reply::new(code, lines));
        for m in caps.auth_mechanisms() {
            assert_eq!(m, &m.to_ascii_uppercase());
        }
    }
}

/// Body encoders: the DATA output has only CRLF line endings, no end of data
/// before its own, un-stuffs to the normalised input, and does not depend on
/// how the input was split; BDAT framing carries the same normalised bytes.
pub fn body_encoder(input: &[u8]) {
    let cut = input.first().map_or(0, |&b| usize::from(b)) % (input.len() + 1);
    let mut out = Vec::new();
    let mut enc = DataEncoder::new();
    enc.encode(&input[..cut], &mut out);
    enc.encode(&input[cut..], &mut out);
    enc.finish(&mut out);

    let mut whole = Vec::new();
    DataEncoder::encode_all(input, &mut whole);
    assert_eq!(out, whole, "DATA output depends on the split");

    if let Some(pos) = out.windows(5).position(|w| w == b"\r\n.\r\n") {
        assert_eq!(pos + 5, out.len(), "early end of data");
    }
    assert!(
        out.len() == 3 || !out.starts_with(b".\r\n"),
        "early end of data at the start"
    );
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF");
        }
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR");
        }
    }
    let normalized = data::normalize(input);
    assert_eq!(data::decode_data(&out).as_deref(), Ok(normalized.as_slice()));
    assert_eq!(normalized.len() as u64, data::normalized_len(input));

    let chunk = 1 + input.last().map_or(0, |&b| usize::from(b));
    let mut framed = Vec::new();
    let mut bdat = BdatEncoder::new(chunk);
    let mut n = bdat.encode(&input[..cut], &mut framed);
    n += bdat.encode(&input[cut..], &mut framed);
    n += bdat.finish(&mut framed);
    let mut carried = Vec::new();
    let mut rest = framed.as_slice();
    for i in 0..n {
        let eol = rest.windows(2).position(|w| w == b"\r\n").expect("BDAT line");
        let line = std::str::from_utf8(&rest[..eol]).expect("ASCII command");
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("BDAT"));
        let size: usize = words.next().and_then(|w| w.parse().ok()).expect("size");
        assert!(size <= chunk);
        assert_eq!(
            words.next() == Some("LAST"),
            i + 1 == n,
            "LAST only on the last chunk"
        );
        rest = &rest[eol + 2..];
        carried.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
    }
    assert!(rest.is_empty());
    assert_eq!(carried, normalized);
}

/// Command encoder: a command is either refused with nothing written, or is
/// exactly one line with no CR, LF or NUL inside and a path closed once.
pub fn command_encoder(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let mut parts = text.split('\u{1}');
    let a = parts.next().unwrap_or_default();
    let b = parts.next().unwrap_or_default();
    let c = parts.next();
    let mp = MailParams {
        size: Some(input.len() as u64),
        envid: c.map(str::to_owned),
        ..MailParams::default()
    };
    let rp = RcptParams {
        notify: Some(Notify::On {
            success: true,
            failure: input.len().is_multiple_of(2),
            delay: false,
        }),
        orcpt: c.map(str::to_owned),
    };
    let commands = [
        Command::Ehlo(a),
        Command::Helo(b),
        Command::Mail { from: a, params: &mp },
        Command::Rcpt { to: b, params: &rp },
        Command::Auth {
            mechanism: a,
            initial: Some(b.as_bytes()),
        },
        Command::AuthResponse(a.as_bytes()),
    ];
    for cmd in commands {
        let mut out = b"x".to_vec();
        match cmd.encode(&mut out) {
            Err(_) => assert_eq!(out, b"x", "partial write on error"),
            Ok(()) => {
                let line = &out[1..];
                assert!(line.ends_with(b"\r\n"));
                let body = &line[..line.len() - 2];
                assert!(
                    !body.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
                    "control byte in {cmd:?}"
                );
                if matches!(cmd, Command::Mail { .. } | Command::Rcpt { .. }) {
                    assert_eq!(body.iter().filter(|&&b| b == b'>').count(), 1);
                    assert_eq!(body.iter().filter(|&&b| b == b'<').count(), 1);
                }
            }
        }
    }
}

const FUZZ_PASSWORD: &str = "Fuzz-Secret-Pa55word";

/// Whether `text` reveals the password. Errors may quote what the server
/// said, so when the server's own bytes carry the password (a fuzzer lifts
/// string constants into its inputs), quoting it is not a leak.
fn leaks(text: &str, server_input: &[u8]) -> bool {
    let secret = FUZZ_PASSWORD.as_bytes();
    // The harnesses cut their input at 0xfe / 0xff into pieces that reach the
    // parser back to back: the server "sent" the secret if it appears once
    // those separators are gone.
    let joined: Vec<u8> = server_input.iter().copied().filter(|&b| b < 0xfe).collect();
    text.contains(FUZZ_PASSWORD) && !joined.windows(secret.len()).any(|w| w == secret)
}

/// Whether a session error reveals the password: its own text or what
/// relaymail's `Error` makes of it (hint included).
fn error_leaks(e: &SessionError, server_input: &[u8]) -> bool {
    let app = crate::Error::from(e.clone());
    [
        e.to_string(),
        format!("{e:?}"),
        app.to_string(),
        format!("{app:?}"),
    ]
    .iter()
    .any(|text| leaks(text, server_input))
}

/// SASL clients: arbitrary server challenges never panic, and no error text
/// contains the password. The bearer mechanisms (OAUTHBEARER, XOAUTH2)
/// answer the challenge after their message — the error challenge — with
/// exactly `\x01` or an empty response, and its JSON reader never panics.
///
/// Input: a selector byte (low six bits: the mechanism; 0x80: no initial
/// response; 0x40: challenges are base64 text), then challenges separated
/// by 0xff.
pub fn sasl(input: &[u8]) {
    let Some((&selector, rest)) = input.split_first() else {
        return;
    };
    let mechs = [
        Mechanism::ScramSha256,
        Mechanism::CramMd5,
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::XOAuth2,
        Mechanism::OAuthBearer,
    ];
    let mech = mechs[usize::from(selector & 0x3f) % mechs.len()];
    let cred = if mech.takes_token() {
        Credential::OAuth2 {
            username: "user,name=@example.com".into(),
            token: SecretString::from(FUZZ_PASSWORD),
        }
    } else {
        Credential::Password {
            username: "user@example.com".into(),
            password: SecretString::from(FUZZ_PASSWORD),
        }
    };
    let Ok(mut client) = SaslClient::new(mech, &cred, "fyko+d2lbbFgONRv9qkxdawL") else {
        return;
    };
    // Whether the bearer message went out: the next challenge is the error
    // challenge.
    let mut message_sent = false;
    if selector & 0x80 == 0 {
        message_sent = client.initial_response().is_some();
    }
    for challenge in rest.split(|&b| b == 0xff).take(6) {
        // Challenges arrive base64-encoded in 334 replies; fuzz both layers.
        let decoded = match std::str::from_utf8(challenge) {
            Ok(t) if selector & 0x40 != 0 => auth::decode_challenge(t),
            _ => Ok(challenge.to_vec()),
        };
        if let Ok(raw) = &decoded {
            let _ = auth::BearerError::parse(&String::from_utf8_lossy(raw));
        }
        let error_challenge = mech.takes_token() && message_sent && client.server_error().is_none();
        let result = decoded.and_then(|c| client.respond(&c));
        match result {
            Ok(response) if error_challenge => {
                let expected: &[u8] = if mech == Mechanism::OAuthBearer {
                    b"\x01"
                } else {
                    b""
                };
                assert_eq!(&response[..], expected, "the error challenge's answer");
            }
            Ok(_) => message_sent = true,
            Err(e) => {
                assert!(!leaks(&e.to_string(), input));
                assert!(!leaks(&format!("{e:?}"), input));
                break;
            }
        }
    }
    if let Err(e) = client.finish() {
        assert!(!leaks(&e.to_string(), input));
    }
    if let Some(detail) = client.server_error() {
        assert!(!leaks(detail, input));
    }
    let _ = client.bearer_error();
    assert!(!format!("{client:?}").contains(FUZZ_PASSWORD));
}

/// The session fed arbitrary server bytes (in pieces) while the client does
/// what a shell would: never panics; once failed it stays failed; every
/// transaction it accepted ends exactly once; no error text leaks the password.
pub fn session(input: &[u8]) {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let mut config = SessionConfig::new("client.example.com");
    config.pipelining = flags & 1 != 0;
    config.chunking = flags & 2 != 0;
    config.starttls = match (flags >> 2) & 3 {
        0 => StartTlsPolicy::Never,
        1 => StartTlsPolicy::Opportunistic,
        _ => StartTlsPolicy::Required,
    };
    config.implicit_tls = flags & 16 != 0;
    config.allow_helo_fallback = flags & 32 != 0;
    config.allow_plaintext_auth = flags & 64 != 0;
    let Ok(mut s) = Session::new(config) else {
        return;
    };
    let message: Arc<[u8]> = Arc::from(&b"Subject: t\r\n\r\nhello\n.\nworld"[..]);
    let mut submitted = 0usize;
    let mut ended = 0usize;
    let mut authed = false;
    let mut failed = false;
    for piece in rest.split(|&b| b == 0xfe) {
        let out_len = s.output().len();
        s.consume_output(out_len);
        let result = if piece == b"EOF" {
            s.receive_eof()
        } else {
            s.receive(piece)
        };
        if let Err(e) = result {
            assert!(!error_leaks(&e, input));
            failed = true;
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::StartTls => {
                    let _ = s.tls_established();
                }
                Event::Ready if !authed && flags & 128 != 0 => {
                    authed = true;
                    let cred = Credential::Password {
                        username: "u".into(),
                        password: SecretString::from(FUZZ_PASSWORD),
                    };
                    if let Ok(c) = SaslClient::new(Mechanism::Plain, &cred, "") {
                        if let Err(e) = s.authenticate(c) {
                            assert!(!error_leaks(&e, input));
                        }
                    }
                }
                Event::Transaction(t) => {
                    ended += 1;
                    if let Err(e) = &t.result {
                        assert!(!error_leaks(e, input));
                    }
                }
                Event::Authenticated(Err(e)) => {
                    assert!(!error_leaks(&e, input));
                }
                _ => {}
            }
        }
        if s.is_ready() && s.in_flight() < 2 {
            let addr = |a: &str| a.parse::<crate::Address>().expect("a valid address");
            let env = Envelope::new(
                Some(addr("a@example.com")),
                vec![addr("b@example.net"), addr("c@example.org")],
            )
            .expect("recipients");
            let mut tx = Transaction::new(env, message.clone());
            tx.require_all_recipients = piece.len() % 3 == 0;
            if s.send(tx).is_ok() {
                submitted += 1;
            }
        }
        if failed {
            assert!(s.is_closed());
            assert!(s.receive(b"250 ok\r\n").is_err(), "a failed session stays failed");
        }
    }
    if !failed {
        let _ = s.timed_out();
    }
    while let Some(ev) = s.poll_event() {
        if let Event::Transaction(_) = ev {
            ended += 1;
        }
    }
    assert_eq!(submitted, ended, "every accepted transaction ends exactly once");
}

/// Raw messages (`Message::from_rfc5322`), under both address policies:
/// never panics; an accepted message has an envelope that can be sent, at
/// least one recipient, no `Bcc` field left in its bytes, and bytes that
/// are the input minus whole header fields.
pub fn message_parser(input: &[u8]) {
    use crate::address::AddressPolicy;
    use crate::message::Message;
    for policy in [AddressPolicy::Strict, AddressPolicy::Lenient] {
        let Ok(m) = Message::from_rfc5322(input, policy) else {
            continue;
        };
        assert!(m.envelope().validate().is_ok(), "{:?}", m.envelope());
        assert!(!m.envelope().recipients().is_empty());
        assert!(m.content().len() <= input.len());
        if m.content().len() == input.len() {
            assert_eq!(m.content(), input, "same length, other bytes");
        }
        if let Some(headers) = mail_parser::MessageParser::new().parse_headers(m.content()) {
            assert!(
                !headers
                    .headers()
                    .iter()
                    .any(|h| matches!(h.name, mail_parser::HeaderName::Bcc)),
                "a Bcc field is left in the bytes sent"
            );
        }
    }
}

/// `%XX` decoded where it is valid, everything else kept: what a URL part
/// may turn into once the parser decodes it.
fn lenient_percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = text
            .get(i + 1..i + 3)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        match (bytes[i], hex) {
            (b'%', Some(h)) => {
                out.push(u8::from_str_radix(h, 16).unwrap_or_default());
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the URL parser turns `text` into when percent-decoding it: a
/// stand-in that decodes the same way (fine, a bad escape, or bytes that
/// are not UTF-8) and shows nothing of `text`.
fn same_decoding_stand_in(text: &str) -> &'static str {
    let bytes = text.as_bytes();
    let bad_escape = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !text
                .get(i + 1..i + 3)
                .is_some_and(|h| h.bytes().all(|d| d.is_ascii_hexdigit()))
    });
    if bad_escape {
        "%"
    } else if lenient_percent_decode(text).contains('\u{fffd}') && !text.contains('\u{fffd}') {
        "%FF"
    } else {
        "x"
    }
}

/// SMTP URLs (`SmtpSettings::from_url`): never panics, and neither an
/// error's text nor accepted settings (their URL form, their `Debug`) show
/// the password given in the URL's userinfo. Whatever the same URL with a
/// stand-in password (one that decodes alike) shows is not a leak: fixed
/// words ("Password"), or a host or parameter that happens to hold the
/// password's text. Passwords shorter than 3 characters are not checked.
pub fn smtp_url(input: &[u8]) {
    use crate::settings::SmtpSettings;
    let Ok(url) = std::str::from_utf8(input) else {
        return;
    };
    let shown = |url: &str| match SmtpSettings::from_url(url) {
        Ok(settings) => format!("{} {settings:?}", settings.url()),
        Err(errors) => format!("{errors} {errors:?}"),
    };
    let text = shown(url);
    // The userinfo as the parser finds it: in the authority (before any
    // '?'), up to the last '@'; the password after its first ':'.
    let trimmed = url.trim();
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        return;
    };
    let authority = rest.split('?').next().unwrap_or_default();
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return;
    };
    let Some((user, password)) = userinfo.split_once(':') else {
        return;
    };
    let stand_in = same_decoding_stand_in(password);
    let baseline = shown(&format!(
        "{scheme}://{user}:{stand_in}{}",
        &rest[userinfo.len()..]
    ));
    for secret in [password.to_owned(), lenient_percent_decode(password)] {
        if secret.chars().count() >= 3 && !baseline.contains(&secret) {
            assert!(
                !text.contains(&secret),
                "the password {secret:?} is shown: {text}"
            );
        }
    }
}

/// Draft files: never panics, and whatever reads as a draft reads back the
/// same once written again (decode ∘ encode ∘ decode = decode), and writes
/// the same bytes the second time.
pub fn draft(input: &[u8]) {
    use crate::outbox::{decode_draft, encode_draft, Area, DraftId};
    let id = DraftId::parse("019abc0000000-0123456789abcdef").expect("a valid id");
    for area in [Area::Drafts, Area::Failed] {
        let Ok((info, content)) = decode_draft(id.clone(), area, input, true) else {
            continue;
        };
        let (header_only, none) =
            decode_draft(id.clone(), area, input, false).expect("reads without content");
        assert!(none.is_empty());
        assert_eq!(header_only, info);
        let written = encode_draft(&info, &content);
        let again = decode_draft(id.clone(), area, &written, true).expect("a written draft reads");
        assert_eq!(again, (info, content));
        assert_eq!(encode_draft(&again.0, &again.1), written, "encoding is stable");
    }
}
