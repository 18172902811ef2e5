//! SMTP command encoder.
//!
//! Every argument is checked as the bytes that would go on the wire before
//! anything is written: a CR, LF, NUL or other control byte, an angle bracket
//! in a mailbox, or a space where the grammar has none is refused with a
//! [`CommandError`], and the output buffer is left exactly as it was. No
//! argument can therefore end a command early or smuggle a second command or
//! an extra parameter into the line.
//!
//! ```
//! use relaymail::proto::command::{Command, MailParams, BodyType};
//! let mut out = Vec::new();
//! let params = MailParams::default().with_size(1234).with_body(BodyType::EightBitMime);
//! Command::Mail { from: "alerts@example.com", params: &params }.encode(&mut out).unwrap();
//! assert_eq!(out, b"MAIL FROM:<alerts@example.com> SIZE=1234 BODY=8BITMIME\r\n");
//!
//! let evil = "x@example.com> NOTIFY=NEVER\r\nRCPT TO:<victim@example.net";
//! assert!(Command::Rcpt { to: evil, params: &Default::default() }.encode(&mut out).is_err());
//! assert_eq!(out.len(), 56); // unchanged
//! ```

use std::fmt;

use super::grammar::{self, DomainError};

/// Which argument of a command was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Argument {
    /// The EHLO/HELO name.
    HeloName,
    /// The MAIL FROM address.
    ReversePath,
    /// A RCPT TO address.
    ForwardPath,
    /// A SASL mechanism name.
    Mechanism,
    /// A base64 AUTH response.
    AuthResponse,
    /// The DSN envelope identifier (ENVID).
    EnvelopeId,
    /// The DSN original recipient (ORCPT).
    OriginalRecipient,
}

impl fmt::Display for Argument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Argument::HeloName => "HELO name",
            Argument::ReversePath => "sender address",
            Argument::ForwardPath => "recipient address",
            Argument::Mechanism => "SASL mechanism name",
            Argument::AuthResponse => "AUTH response",
            Argument::EnvelopeId => "DSN envelope id",
            Argument::OriginalRecipient => "DSN original recipient",
        })
    }
}

/// A command argument that cannot be sent safely. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The argument is empty where the grammar needs a value.
    #[error("{argument} is empty")]
    Empty {
        /// The refused argument.
        argument: Argument,
    },
    /// A control byte (CR, LF, NUL, TAB, DEL …) that could end or split the command.
    #[error("{argument} contains the control byte 0x{byte:02x} at offset {offset}")]
    ControlByte {
        /// The refused argument.
        argument: Argument,
        /// The byte.
        byte: u8,
        /// Its offset in the argument.
        offset: usize,
    },
    /// `<` or `>` inside a mailbox: it could close the path and add parameters.
    #[error("{argument} contains an angle bracket")]
    AngleBracket {
        /// The refused argument.
        argument: Argument,
    },
    /// A space outside a quoted local part.
    #[error("{argument} contains a space outside a quoted local part")]
    Space {
        /// The refused argument.
        argument: Argument,
    },
    /// The value does not follow the grammar (explained by `reason`).
    #[error("{argument} is not valid: {reason}")]
    Syntax {
        /// The refused argument.
        argument: Argument,
        /// What is wrong, in words.
        reason: &'static str,
    },
    /// The value is longer than the protocol allows.
    #[error("{argument} is longer than {limit} bytes")]
    TooLong {
        /// The refused argument.
        argument: Argument,
        /// The limit in bytes.
        limit: usize,
    },
}

impl CommandError {
    /// The argument that was refused.
    pub fn argument(&self) -> Argument {
        match self {
            CommandError::Empty { argument }
            | CommandError::ControlByte { argument, .. }
            | CommandError::AngleBracket { argument }
            | CommandError::Space { argument }
            | CommandError::Syntax { argument, .. }
            | CommandError::TooLong { argument, .. } => *argument,
        }
    }
}

/// The BODY= parameter of MAIL FROM (RFC 6152, RFC 3030).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BodyType {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
    /// `BODY=BINARYMIME` (only with BDAT).
    BinaryMime,
}

/// The DSN RET= parameter (RFC 3461): what a failure notice carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(
    clippy::exhaustive_enums,
    reason = "RFC 3461 defines exactly RET=FULL and RET=HDRS"
)]
pub enum DsnReturn {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: the headers only.
    Headers,
}

/// The DSN NOTIFY= parameter (RFC 3461).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(
    clippy::exhaustive_enums,
    reason = "RFC 3461: NOTIFY is NEVER or a set of SUCCESS, FAILURE and DELAY"
)]
pub enum Notify {
    /// `NOTIFY=NEVER`.
    Never,
    /// `NOTIFY=` a list of the conditions set to true (at least one must be).
    On {
        /// Notify on successful delivery.
        success: bool,
        /// Notify on failure.
        failure: bool,
        /// Notify on delay.
        delay: bool,
    },
}

/// Parameters of MAIL FROM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailParams {
    /// `SIZE=` (RFC 1870): the message size in bytes.
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `RET=` (DSN).
    pub ret: Option<DsnReturn>,
    /// `ENVID=` (DSN), given raw; it is xtext-encoded on the wire.
    pub envid: Option<String>,
    /// `REQUIRETLS` (RFC 8689).
    pub requiretls: bool,
}

/// Parameters of RCPT TO.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RcptParams {
    /// `NOTIFY=` (DSN).
    pub notify: Option<Notify>,
    /// `ORCPT=rfc822;…` (DSN): the original recipient, given raw; it is
    /// xtext-encoded on the wire.
    pub orcpt: Option<String>,
}

impl MailParams {
    /// Sets `SIZE=`.
    pub fn with_size(mut self, size: u64) -> MailParams {
        self.size = Some(size);
        self
    }

    /// Sets `BODY=`.
    pub fn with_body(mut self, body: BodyType) -> MailParams {
        self.body = Some(body);
        self
    }

    /// Sets `SMTPUTF8`.
    pub fn with_smtputf8(mut self, smtputf8: bool) -> MailParams {
        self.smtputf8 = smtputf8;
        self
    }

    /// Sets the DSN `RET=`.
    pub fn with_ret(mut self, ret: DsnReturn) -> MailParams {
        self.ret = Some(ret);
        self
    }

    /// Sets the DSN `ENVID=` (raw; xtext-encoded on the wire).
    pub fn with_envid(mut self, envid: impl Into<String>) -> MailParams {
        self.envid = Some(envid.into());
        self
    }

    /// Sets `REQUIRETLS`.
    pub fn with_requiretls(mut self, requiretls: bool) -> MailParams {
        self.requiretls = requiretls;
        self
    }
}

impl RcptParams {
    /// Sets the DSN `NOTIFY=`.
    pub fn with_notify(mut self, notify: Notify) -> RcptParams {
        self.notify = Some(notify);
        self
    }

    /// Sets the DSN `ORCPT=` (raw; xtext-encoded on the wire).
    pub fn with_orcpt(mut self, orcpt: impl Into<String>) -> RcptParams {
        self.orcpt = Some(orcpt.into());
        self
    }
}

/// One SMTP command, borrowing its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command<'a> {
    /// `EHLO name`.
    Ehlo(&'a str),
    /// `HELO name`.
    Helo(&'a str),
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]`; the initial response is already
    /// base64 (or `=` for an empty one).
    Auth {
        /// SASL mechanism name.
        mechanism: &'a str,
        /// Base64 initial response.
        initial: Option<&'a [u8]>,
    },
    /// A base64 SASL continuation line (may be empty).
    AuthResponse(&'a [u8]),
    /// `*`: cancels a SASL exchange.
    AuthCancel,
    /// `MAIL FROM:<from> params`; an empty `from` is the null reverse path `<>`.
    Mail {
        /// Sender mailbox.
        from: &'a str,
        /// Parameters.
        params: &'a MailParams,
    },
    /// `RCPT TO:<to> params`.
    Rcpt {
        /// Recipient mailbox.
        to: &'a str,
        /// Parameters.
        params: &'a RcptParams,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (the chunk bytes follow separately).
    Bdat {
        /// Chunk size in bytes.
        size: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `QUIT`.
    Quit,
}

impl Command<'_> {
    /// Appends the command and its CRLF to `out`, or returns why an argument
    /// cannot be sent, leaving `out` unchanged.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CommandError> {
        let mark = out.len();
        let result = self.encode_unchecked_rollback(out);
        if result.is_err() {
            out.truncate(mark);
        }
        result
    }

    fn encode_unchecked_rollback(&self, out: &mut Vec<u8>) -> Result<(), CommandError> {
        match *self {
            Command::Ehlo(name) => {
                check_helo_name(name)?;
                push(out, &[b"EHLO ", name.as_bytes()]);
            }
            Command::Helo(name) => {
                check_helo_name(name)?;
                push(out, &[b"HELO ", name.as_bytes()]);
            }
            Command::StartTls => out.extend_from_slice(b"STARTTLS"),
            Command::Auth { mechanism, initial } => {
                check_mechanism(mechanism)?;
                push(out, &[b"AUTH ", mechanism.as_bytes()]);
                if let Some(initial) = initial {
                    if initial.is_empty() {
                        return Err(CommandError::Empty {
                            argument: Argument::AuthResponse,
                        });
                    }
                    check_base64(initial)?;
                    push(out, &[b" ", initial]);
                }
            }
            Command::AuthResponse(b64) => {
                check_base64(b64)?;
                out.extend_from_slice(b64);
            }
            Command::AuthCancel => out.push(b'*'),
            Command::Mail { from, params } => {
                if !from.is_empty() {
                    check_mailbox(from, Argument::ReversePath)?;
                }
                push(out, &[b"MAIL FROM:<", from.as_bytes(), b">"]);
                encode_mail_params(params, out)?;
            }
            Command::Rcpt { to, params } => {
                check_mailbox(to, Argument::ForwardPath)?;
                push(out, &[b"RCPT TO:<", to.as_bytes(), b">"]);
                encode_rcpt_params(params, out)?;
            }
            Command::Data => out.extend_from_slice(b"DATA"),
            Command::Bdat { size, last } => {
                out.extend_from_slice(format!("BDAT {size}").as_bytes());
                if last {
                    out.extend_from_slice(b" LAST");
                }
            }
            Command::Rset => out.extend_from_slice(b"RSET"),
            Command::Noop => out.extend_from_slice(b"NOOP"),
            Command::Quit => out.extend_from_slice(b"QUIT"),
        }
        out.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// The command verb, for logs and errors (never includes arguments, so it
    /// never carries an address or an AUTH payload).
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } | Command::AuthResponse(_) | Command::AuthCancel => "AUTH",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
        }
    }
}

fn push(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for p in parts {
        out.extend_from_slice(p);
    }
}

fn encode_mail_params(p: &MailParams, out: &mut Vec<u8>) -> Result<(), CommandError> {
    if let Some(size) = p.size {
        out.extend_from_slice(format!(" SIZE={size}").as_bytes());
    }
    if let Some(body) = p.body {
        out.extend_from_slice(match body {
            BodyType::SevenBit => b" BODY=7BIT".as_slice(),
            BodyType::EightBitMime => b" BODY=8BITMIME",
            BodyType::BinaryMime => b" BODY=BINARYMIME",
        });
    }
    if p.smtputf8 {
        out.extend_from_slice(b" SMTPUTF8");
    }
    if p.requiretls {
        out.extend_from_slice(b" REQUIRETLS");
    }
    if let Some(ret) = p.ret {
        out.extend_from_slice(match ret {
            DsnReturn::Full => b" RET=FULL".as_slice(),
            DsnReturn::Headers => b" RET=HDRS",
        });
    }
    if let Some(envid) = &p.envid {
        if envid.is_empty() {
            return Err(CommandError::Empty {
                argument: Argument::EnvelopeId,
            });
        }
        check_no_controls(envid.as_bytes(), Argument::EnvelopeId)?;
        out.extend_from_slice(b" ENVID=");
        let start = out.len();
        xtext_encode(envid.as_bytes(), out);
        // RFC 3461 §4.4: at most 100 characters (xtext-encoded).
        if out.len() - start > 100 {
            return Err(CommandError::TooLong {
                argument: Argument::EnvelopeId,
                limit: 100,
            });
        }
    }
    Ok(())
}

fn encode_rcpt_params(p: &RcptParams, out: &mut Vec<u8>) -> Result<(), CommandError> {
    match p.notify {
        None => {}
        Some(Notify::Never) => out.extend_from_slice(b" NOTIFY=NEVER"),
        Some(Notify::On {
            success,
            failure,
            delay,
        }) => {
            let words: Vec<&str> = [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
                .into_iter()
                .filter_map(|(on, w)| on.then_some(w))
                .collect();
            if words.is_empty() {
                return Err(CommandError::Syntax {
                    argument: Argument::ForwardPath,
                    reason: "NOTIFY needs at least one of success, failure, delay (or Never)",
                });
            }
            out.extend_from_slice(b" NOTIFY=");
            out.extend_from_slice(words.join(",").as_bytes());
        }
    }
    if let Some(orcpt) = &p.orcpt {
        if orcpt.is_empty() {
            return Err(CommandError::Empty {
                argument: Argument::OriginalRecipient,
            });
        }
        check_no_controls(orcpt.as_bytes(), Argument::OriginalRecipient)?;
        out.extend_from_slice(b" ORCPT=rfc822;");
        let start = out.len();
        xtext_encode(orcpt.as_bytes(), out);
        if out.len() - start > 500 {
            return Err(CommandError::TooLong {
                argument: Argument::OriginalRecipient,
                limit: 500,
            });
        }
    }
    Ok(())
}

/// xtext (RFC 3461 §4): bytes outside `!`..=`~`, and `+` and `=`, become
/// `+XX`. `<` and `>` are encoded too (xtext allows encoding any byte), so a
/// parameter value never shows a bracket to a sloppy server parser.
pub fn xtext_encode(raw: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in raw {
        if (b'!'..=b'~').contains(&b) && !matches!(b, b'+' | b'=' | b'<' | b'>') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'+', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// Decodes xtext; `None` if a `+` is not followed by two upper-case hex digits.
pub fn xtext_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'+' {
            let hex = |b: u8| match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'A'..=b'F' => Some(b - b'A' + 10),
                _ => None,
            };
            let hi = hex(*text.get(i + 1)?)?;
            let lo = hex(*text.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    Some(out)
}

fn check_no_controls(bytes: &[u8], argument: Argument) -> Result<(), CommandError> {
    match bytes.iter().position(|&b| b < 0x20 || b == 0x7f) {
        Some(offset) => Err(CommandError::ControlByte {
            argument,
            byte: bytes[offset],
            offset,
        }),
        None => Ok(()),
    }
}

fn check_base64(b64: &[u8]) -> Result<(), CommandError> {
    check_no_controls(b64, Argument::AuthResponse)?;
    if b64 == b"=" {
        return Ok(());
    }
    if b64
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        Ok(())
    } else {
        Err(CommandError::Syntax {
            argument: Argument::AuthResponse,
            reason: "not base64",
        })
    }
}

fn check_mechanism(name: &str) -> Result<(), CommandError> {
    let argument = Argument::Mechanism;
    if name.is_empty() {
        return Err(CommandError::Empty { argument });
    }
    check_no_controls(name.as_bytes(), argument)?;
    if name.len() > 20 {
        return Err(CommandError::TooLong { argument, limit: 20 });
    }
    // RFC 4422: upper-case letters, digits, hyphen and underscore.
    if name
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(CommandError::Syntax {
            argument,
            reason: "SASL names are upper-case letters, digits, '-' and '_'",
        })
    }
}

/// Checks an EHLO/HELO argument: a domain name of letters, digits and
/// hyphens (RFC 5321 `Domain`), or an address literal `[192.0.2.1]` /
/// `[IPv6:2001:db8::1]`.
pub fn check_helo_name(name: &str) -> Result<(), CommandError> {
    let argument = Argument::HeloName;
    if name.is_empty() {
        return Err(CommandError::Empty { argument });
    }
    check_no_controls(name.as_bytes(), argument)?;
    if name.contains(' ') {
        return Err(CommandError::Space { argument });
    }
    if name.len() > 255 {
        return Err(CommandError::TooLong { argument, limit: 255 });
    }
    if name.contains(['<', '>']) {
        return Err(CommandError::AngleBracket { argument });
    }
    grammar::check_ascii_domain(name).map_err(|e| domain_error(e, argument))
}

/// The grammar's verdict on a domain or literal, as a [`CommandError`].
fn domain_error(e: DomainError, argument: Argument) -> CommandError {
    CommandError::Syntax {
        argument,
        reason: e.reason(),
    }
}

/// What [`check_mailbox`] learnt about an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailboxInfo {
    /// The address has non-ASCII characters: it needs SMTPUTF8.
    pub needs_smtputf8: bool,
}

/// Checks that a mailbox (`local@domain`, without angle brackets) can be put
/// between `<` and `>` in MAIL/RCPT without changing the command.
///
/// This is the wire-safety check; it accepts local parts with misplaced dots
/// (lenient address books) but never control bytes, angle brackets, spaces
/// outside a well-formed quoted local part, or an unterminated quote. The
/// special recipient `Postmaster` (no domain) is accepted as a forward path.
pub fn check_mailbox(addr: &str, argument: Argument) -> Result<MailboxInfo, CommandError> {
    if addr.is_empty() {
        return Err(CommandError::Empty { argument });
    }
    let bytes = addr.as_bytes();
    check_no_controls(bytes, argument)?;
    if addr.contains(['<', '>']) {
        return Err(CommandError::AngleBracket { argument });
    }
    // RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the brackets.
    if bytes.len() > 254 {
        return Err(CommandError::TooLong { argument, limit: 254 });
    }
    let info = MailboxInfo {
        needs_smtputf8: !addr.is_ascii(),
    };
    if argument == Argument::ForwardPath && addr.eq_ignore_ascii_case("postmaster") {
        return Ok(info);
    }
    let at = if bytes[0] == b'"' {
        quoted_local_end(addr, argument)?
    } else {
        let at = addr.rfind('@').ok_or(CommandError::Syntax {
            argument,
            reason: "no '@' between local part and domain",
        })?;
        let local = &bytes[..at];
        if local.is_empty() {
            return Err(CommandError::Syntax {
                argument,
                reason: "the local part is empty",
            });
        }
        if local.contains(&b' ') {
            return Err(CommandError::Space { argument });
        }
        if let Some(c) = addr[..at].chars().find(|&c| !(grammar::is_atext(c) || c == '.')) {
            return Err(CommandError::Syntax {
                argument,
                reason: if c == '"' || c == '\\' {
                    "a quote or backslash outside a quoted local part"
                } else {
                    "a character that needs a quoted local part"
                },
            });
        }
        at
    };
    let domain = &addr[at + 1..];
    if domain.contains(' ') {
        return Err(CommandError::Space { argument });
    }
    grammar::check_domain(domain).map_err(|e| domain_error(e, argument))?;
    Ok(info)
}

/// For a local part that starts with `"`: finds the closing quote, checks the
/// quoted content, and returns the offset of the `@` that must follow.
fn quoted_local_end(addr: &str, argument: Argument) -> Result<usize, CommandError> {
    let (content, len) = grammar::read_quoted(&addr[1..]).ok_or(CommandError::Syntax {
        argument,
        reason: "unterminated quoted local part",
    })?;
    if content.is_empty() {
        return Err(CommandError::Syntax {
            argument,
            reason: "the local part is empty",
        });
    }
    match addr.as_bytes().get(len + 1) {
        Some(b'@') => Ok(len + 1),
        _ => Err(CommandError::Syntax {
            argument,
            reason: "a quoted local part must be followed by '@' and the domain",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(c: Command<'_>) -> Result<String, CommandError> {
        let mut out = b"prefix".to_vec();
        let r = c.encode(&mut out);
        match r {
            Ok(()) => Ok(String::from_utf8(out[6..].to_vec()).expect("ascii")),
            Err(e) => {
                assert_eq!(out, b"prefix", "nothing written on error");
                Err(e)
            }
        }
    }

    #[test]
    fn simple_commands() {
        let none = MailParams::default();
        let rnone = RcptParams::default();
        let table: &[(Command<'_>, &str)] = &[
            (Command::Ehlo("client.example.com"), "EHLO client.example.com\r\n"),
            (Command::Ehlo("[192.0.2.1]"), "EHLO [192.0.2.1]\r\n"),
            (Command::Ehlo("[IPv6:2001:db8::1]"), "EHLO [IPv6:2001:db8::1]\r\n"),
            (Command::Helo("localhost"), "HELO localhost\r\n"),
            (Command::StartTls, "STARTTLS\r\n"),
            (
                Command::Auth {
                    mechanism: "PLAIN",
                    initial: Some(b"AHVzZXIAcGFzcw=="),
                },
                "AUTH PLAIN AHVzZXIAcGFzcw==\r\n",
            ),
            (
                Command::Auth {
                    mechanism: "LOGIN",
                    initial: None,
                },
                "AUTH LOGIN\r\n",
            ),
            (
                Command::Auth {
                    mechanism: "EXTERNAL",
                    initial: Some(b"="),
                },
                "AUTH EXTERNAL =\r\n",
            ),
            (Command::AuthResponse(b""), "\r\n"),
            (Command::AuthResponse(b"dGlt"), "dGlt\r\n"),
            (Command::AuthCancel, "*\r\n"),
            (
                Command::Mail {
                    from: "a@example.com",
                    params: &none,
                },
                "MAIL FROM:<a@example.com>\r\n",
            ),
            (
                Command::Mail {
                    from: "",
                    params: &none,
                },
                "MAIL FROM:<>\r\n",
            ),
            (
                Command::Rcpt {
                    to: "b@example.org",
                    params: &rnone,
                },
                "RCPT TO:<b@example.org>\r\n",
            ),
            (
                Command::Rcpt {
                    to: "Postmaster",
                    params: &rnone,
                },
                "RCPT TO:<Postmaster>\r\n",
            ),
            (Command::Data, "DATA\r\n"),
            (
                Command::Bdat {
                    size: 1024,
                    last: false,
                },
                "BDAT 1024\r\n",
            ),
            (Command::Bdat { size: 0, last: true }, "BDAT 0 LAST\r\n"),
            (Command::Rset, "RSET\r\n"),
            (Command::Noop, "NOOP\r\n"),
            (Command::Quit, "QUIT\r\n"),
        ];
        for (c, want) in table {
            assert_eq!(enc(*c).as_deref(), Ok(*want), "{c:?}");
        }
    }

    #[test]
    fn mail_and_rcpt_parameters() {
        let p = MailParams {
            size: Some(5000),
            body: Some(BodyType::EightBitMime),
            smtputf8: true,
            ret: Some(DsnReturn::Headers),
            envid: Some("QQ314159 id=7+x".into()),
            requiretls: false,
        };
        assert_eq!(
            enc(Command::Mail { from: "ä@bücher.example", params: &p }).as_deref(),
            Ok("MAIL FROM:<ä@bücher.example> SIZE=5000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159+20id+3D7+2Bx\r\n")
        );
        let r = RcptParams {
            notify: Some(Notify::On {
                success: true,
                failure: true,
                delay: false,
            }),
            orcpt: Some("Bob+tag@example.com".into()),
        };
        assert_eq!(
            enc(Command::Rcpt {
                to: "bob+tag@example.com",
                params: &r
            })
            .as_deref(),
            Ok("RCPT TO:<bob+tag@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Btag@example.com\r\n")
        );
        let never = RcptParams {
            notify: Some(Notify::Never),
            orcpt: None,
        };
        assert_eq!(
            enc(Command::Rcpt {
                to: "c@d.example",
                params: &never
            })
            .as_deref(),
            Ok("RCPT TO:<c@d.example> NOTIFY=NEVER\r\n")
        );
        let empty_notify = RcptParams {
            notify: Some(Notify::On {
                success: false,
                failure: false,
                delay: false,
            }),
            orcpt: None,
        };
        assert!(enc(Command::Rcpt {
            to: "c@d.example",
            params: &empty_notify
        })
        .is_err());
        let long = MailParams {
            envid: Some("x".repeat(101)),
            ..MailParams::default()
        };
        assert!(matches!(
            enc(Command::Mail {
                from: "a@b.example",
                params: &long
            }),
            Err(CommandError::TooLong { .. })
        ));
    }

    #[test]
    fn quoted_local_parts_keep_their_quotes() {
        let none = RcptParams::default();
        assert_eq!(
            enc(Command::Rcpt {
                to: "\"john doe\"@example.com",
                params: &none
            })
            .as_deref(),
            Ok("RCPT TO:<\"john doe\"@example.com>\r\n")
        );
        assert_eq!(
            enc(Command::Rcpt {
                to: "\"a\\\"b\"@example.com",
                params: &none
            })
            .as_deref(),
            Ok("RCPT TO:<\"a\\\"b\"@example.com>\r\n")
        );
    }

    #[test]
    fn injection_attempts_are_refused() {
        let none = RcptParams::default();
        let mnone = MailParams::default();
        // go-mail CVE-2025-59937 style: a quoted local part that closes the path.
        let bad_addresses = [
            "\"x> NOTIFY=NEVER\"@example.com",
            "a@example.com> SIZE=1",
            "a@example.com\r\nRSET",
            "a@example.com\nRSET",
            "a@exam\rple.com",
            "a\0@example.com",
            "a b@example.com",
            "a@exa mple.com",
            "\"unterminated@example.com",
            "\"q\"x@example.com",
            "\"\"@example.com",
            "@example.com",
            "a@",
            "a@.example.com",
            "a@example..com",
            "noat",
            "a\"b@example.com",
            "a@[999.1.1.1]",
            "a@-bad.example",
            "a\t@example.com",
            "a\u{7f}@example.com",
        ];
        for addr in bad_addresses {
            assert!(
                enc(Command::Rcpt {
                    to: addr,
                    params: &none
                })
                .is_err(),
                "RCPT {addr:?}"
            );
            assert!(
                enc(Command::Mail {
                    from: addr,
                    params: &mnone
                })
                .is_err(),
                "MAIL {addr:?}"
            );
        }
        assert!(matches!(
            enc(Command::Mail {
                from: "Postmaster",
                params: &mnone
            }),
            Err(CommandError::Syntax { .. })
        ));
        for name in [
            "",
            "a b",
            "x\r\nQUIT",
            "x\n",
            "-x.example",
            "x..example",
            "[1.2.3]",
            "[IPv6:zz]",
            "host_name",
            "[192.0.2.1",
        ] {
            assert!(enc(Command::Ehlo(name)).is_err(), "EHLO {name:?}");
        }
        for mech in ["", "plain", "PL AIN", "PLAIN\r\n", "X".repeat(21).as_str()] {
            assert!(
                enc(Command::Auth {
                    mechanism: mech,
                    initial: None
                })
                .is_err(),
                "AUTH {mech:?}"
            );
        }
        for resp in [&b"abc\r\nQUIT"[..], b"ab c", b"ab*c", b""] {
            assert!(
                enc(Command::Auth {
                    mechanism: "PLAIN",
                    initial: Some(resp)
                })
                .is_err(),
                "{resp:?}"
            );
        }
        assert!(enc(Command::AuthResponse(b"x\ny")).is_err());
        let evil_envid = MailParams {
            envid: Some("x\r\nRSET".into()),
            ..MailParams::default()
        };
        assert!(matches!(
            enc(Command::Mail {
                from: "a@b.example",
                params: &evil_envid
            }),
            Err(CommandError::ControlByte {
                argument: Argument::EnvelopeId,
                byte: b'\r',
                offset: 1
            })
        ));
        let evil_orcpt = RcptParams {
            notify: None,
            orcpt: Some("x\0".into()),
        };
        assert!(enc(Command::Rcpt {
            to: "a@b.example",
            params: &evil_orcpt
        })
        .is_err());
    }

    #[test]
    fn error_names_the_argument() {
        let e = enc(Command::Rcpt {
            to: "a@b.example\r\n",
            params: &RcptParams::default(),
        })
        .expect_err("refused");
        assert_eq!(e.argument(), Argument::ForwardPath);
        assert_eq!(
            e.to_string(),
            "recipient address contains the control byte 0x0d at offset 11"
        );
    }

    #[test]
    fn mailbox_info() {
        assert!(
            !check_mailbox("a@b.example", Argument::ForwardPath)
                .expect("ok")
                .needs_smtputf8
        );
        assert!(
            check_mailbox("δοκιμή@παράδειγμα.δοκιμή", Argument::ForwardPath)
                .expect("ok")
                .needs_smtputf8
        );
        assert!(
            check_mailbox("a..b.@example.com", Argument::ForwardPath).is_ok(),
            "lenient dots pass the wire check"
        );
        assert!(check_mailbox("x@[IPv6:::1]", Argument::ForwardPath).is_ok());
        assert!(check_mailbox(&format!("{}@example.com", "a".repeat(250)), Argument::ForwardPath).is_err());
    }

    #[test]
    fn xtext_round_trip() {
        let mut out = Vec::new();
        xtext_encode(b"a+b=c d\xff", &mut out);
        assert_eq!(out, b"a+2Bb+3Dc+20d+FF");
        assert_eq!(xtext_decode(&out).as_deref(), Some(&b"a+b=c d\xff"[..]));
        assert_eq!(xtext_decode(b"+2"), None);
        assert_eq!(xtext_decode(b"+zz"), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the arguments, an encoded command is one line: a
            /// single CRLF, at its end, and no other CR or LF.
            #[test]
            fn never_a_cr_or_lf_inside(from in ".{0,40}", to in ".{0,40}", helo in ".{0,20}", envid in proptest::option::of(".{0,20}"), orcpt in proptest::option::of(".{0,20}")) {
                let mp = MailParams { envid, size: Some(1), ..MailParams::default() };
                let rp = RcptParams { orcpt, notify: None };
                for c in [Command::Mail { from: &from, params: &mp }, Command::Rcpt { to: &to, params: &rp }, Command::Ehlo(&helo), Command::Helo(&helo)] {
                    let mut out = Vec::new();
                    if c.encode(&mut out).is_ok() {
                        prop_assert!(out.ends_with(b"\r\n"));
                        let body = &out[..out.len() - 2];
                        prop_assert!(!body.contains(&b'\r') && !body.contains(&b'\n'));
                        prop_assert!(!body.contains(&0));
                        // The path is closed exactly once.
                        if matches!(c, Command::Mail { .. } | Command::Rcpt { .. }) {
                            prop_assert_eq!(body.iter().filter(|&&b| b == b'>').count(), 1);
                        }
                    } else {
                        prop_assert!(out.is_empty());
                    }
                }
            }
        }
    }
}
