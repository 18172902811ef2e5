//! SMTP replies (RFC 5321 §4.2) and an incremental reply parser.
//!
//! The parser owns a small input buffer: push whatever bytes arrived from the
//! network with [`ReplyParser::push`], then call [`ReplyParser::next_reply`]
//! until it returns `Ok(None)` ("need more bytes"). Any split of the input gives
//! the same replies. Line length and total reply size are capped, so a hostile
//! server cannot make the client buffer without bound.
//!
//! Reply text is server-controlled. The `Display` of a [`Reply`] (and of every
//! [`SessionError`](crate::proto::SessionError), and relaymail's `Error`,
//! that shows one) escapes control characters with
//! [`Escaped`], so a hostile server cannot drive a terminal or forge log
//! lines; [`Reply::lines`] and [`Reply::text`] give the raw text.

use std::fmt::{self, Write as _};

/// A three-digit SMTP reply code, such as 250 or 550.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyCode(u16);

impl ReplyCode {
    /// Builds a code from its numeric value; `None` unless it is 200..=599
    /// (RFC 5321 reply codes start with 2, 3, 4 or 5).
    pub fn new(code: u16) -> Option<ReplyCode> {
        (200..=599).contains(&code).then_some(ReplyCode(code))
    }

    /// The numeric value, e.g. `250`.
    pub fn value(self) -> u16 {
        self.0
    }

    /// The first digit as a [`Severity`].
    pub fn severity(self) -> Severity {
        match self.0 / 100 {
            2 => Severity::PositiveCompletion,
            3 => Severity::PositiveIntermediate,
            4 => Severity::TransientNegative,
            _ => Severity::PermanentNegative,
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The class of a reply, from the first digit of its code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(
    clippy::exhaustive_enums,
    reason = "RFC 5321 defines exactly these four reply classes"
)]
pub enum Severity {
    /// 2yz: the command succeeded.
    PositiveCompletion,
    /// 3yz: the command was accepted, more input is expected (354, 334).
    PositiveIntermediate,
    /// 4yz: a temporary failure; the same command may succeed later.
    TransientNegative,
    /// 5yz: a permanent failure; repeating the command will not help.
    PermanentNegative,
}

/// An enhanced mail system status code (RFC 3463), such as `5.1.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct EnhancedCode {
    /// Class: 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// Subject (0..=999), e.g. 1 for addressing.
    pub subject: u16,
    /// Detail (0..=999).
    pub detail: u16,
}

impl EnhancedCode {
    /// Parses `class.subject.detail` at the start of `text`, followed by a space
    /// or the end of the text. Returns the code and the number of bytes it used.
    fn parse_prefix(text: &str) -> Option<(EnhancedCode, usize)> {
        let bytes = text.as_bytes();
        let class = *bytes.first()?;
        if !matches!(class, b'2' | b'4' | b'5') || bytes.get(1) != Some(&b'.') {
            return None;
        }
        let mut pos = 2;
        let subject = parse_number(bytes, &mut pos)?;
        if bytes.get(pos) != Some(&b'.') {
            return None;
        }
        pos += 1;
        let detail = parse_number(bytes, &mut pos)?;
        match bytes.get(pos) {
            None | Some(b' ') => {}
            Some(_) => return None,
        }
        Some((
            EnhancedCode {
                class: class - b'0',
                subject,
                detail,
            },
            pos,
        ))
    }
}

fn parse_number(bytes: &[u8], pos: &mut usize) -> Option<u16> {
    let start = *pos;
    let mut value: u16 = 0;
    while let Some(d) = bytes.get(*pos).filter(|b| b.is_ascii_digit()) {
        if *pos - start == 3 {
            return None;
        }
        value = value * 10 + u16::from(d - b'0');
        *pos += 1;
    }
    (*pos > start).then_some(value)
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One complete SMTP reply: a code and one or more text lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: ReplyCode,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

impl Reply {
    /// Builds a reply from a code and its text lines (the text after `250-` /
    /// `250 `). The enhanced status code is taken from the first line if it
    /// has one whose class matches the reply code.
    pub fn new(code: ReplyCode, lines: Vec<String>) -> Reply {
        let enhanced = lines
            .first()
            .and_then(|l| EnhancedCode::parse_prefix(l))
            .map(|(e, _)| e)
            .filter(|e| u16::from(e.class) == code.value() / 100);
        let lines = if lines.is_empty() {
            vec![String::new()]
        } else {
            lines
        };
        Reply {
            code,
            enhanced,
            lines,
        }
    }

    /// The reply code.
    pub fn code(&self) -> ReplyCode {
        self.code
    }

    /// The enhanced status code (RFC 3463), when the server sent one.
    pub fn enhanced_code(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The class of the reply.
    pub fn severity(&self) -> Severity {
        self.code.severity()
    }

    /// 2yz.
    pub fn is_positive(&self) -> bool {
        self.severity() == Severity::PositiveCompletion
    }

    /// 3yz.
    pub fn is_intermediate(&self) -> bool {
        self.severity() == Severity::PositiveIntermediate
    }

    /// 4yz: retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        self.severity() == Severity::TransientNegative
    }

    /// 5yz: retrying will not help.
    pub fn is_permanent(&self) -> bool {
        self.severity() == Severity::PermanentNegative
    }

    /// The text lines as received, without the code and separator (the
    /// enhanced code, if any, is still at the start of each line).
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The text of all lines joined with a space, each line's leading enhanced
    /// status code removed: what a person should read.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            let mut t = line.as_str();
            if self.enhanced.is_some() {
                if let Some((_, used)) = EnhancedCode::parse_prefix(t) {
                    t = t[used..].trim_start_matches(' ');
                }
            }
            if t.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(t);
        }
        out
    }
}

/// Shows code, enhanced code and [`text`](Reply::text), with control
/// characters escaped as [`Escaped`] does.
impl Reply {
    /// The reply as [`Display`](fmt::Display) shows it, but its text as the
    /// server sent it: for a writer that escapes everything itself.
    pub(crate) fn write_unescaped(&self, f: &mut dyn fmt::Write) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_unescaped(&mut EscapeWriter(f))
    }
}

/// Displays a value with the characters that could drive a terminal or forge
/// a log line escaped: every Unicode control character (C0 such as ESC, BEL,
/// NUL, CR and LF, DEL, and C1) and the bidirectional overrides and isolates
/// (U+202A..=U+202E, U+2066..=U+2069). Each is shown as Rust's `\u{..}`
/// escape with lower-case hex: ESC as `\u{1b}`, CR as `\u{d}`; so are the
/// invisible direction marks and separators (U+200E, U+200F, U+061C,
/// U+2028, U+2029, U+FEFF). A backslash is shown doubled, so that server
/// text cannot pass for an escape. Other text is shown as is.
///
/// Use it wherever server text is printed or logged.
///
/// ```
/// use relaymail::proto::reply::Escaped;
/// assert_eq!(Escaped("a\x1b[2Jb\r\n").to_string(), "a\\u{1b}[2Jb\\u{d}\\u{a}");
/// // Text that looks like an escape, and a line separator.
/// assert_eq!(Escaped("a\\u{1b}\u{2028}").to_string(), "a\\\\u{1b}\\u{2028}");
/// ```
#[derive(Clone, Copy, Debug)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wrapper built by callers; it will never hold more"
)]
pub struct Escaped<T>(pub T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapeWriter(f), "{}", self.0)
    }
}

/// Whether [`Escaped`] shows `c` as an escape.
fn is_escaped(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\\'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{feff}'
        )
}

/// A [`fmt::Write`] that passes text on with [`is_escaped`] characters
/// replaced by their `\u{..}` escapes.
pub(crate) struct EscapeWriter<W>(pub(crate) W);

impl<W: fmt::Write> fmt::Write for EscapeWriter<W> {
    fn write_str(&mut self, mut s: &str) -> fmt::Result {
        while let Some((at, c)) = s.char_indices().find(|&(_, c)| is_escaped(c)) {
            self.0.write_str(&s[..at])?;
            if c == '\\' {
                self.0.write_str("\\\\")?;
            } else {
                write!(self.0, "\\u{{{:x}}}", u32::from(c))?;
            }
            s = &s[at + c.len_utf8()..];
        }
        self.0.write_str(s)
    }
}

/// Why the server's bytes could not be parsed as a reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// A line did not start with a three-digit code followed by space, hyphen
    /// or the end of the line.
    #[error("malformed reply line from the server")]
    Malformed,
    /// A continuation line of a multi-line reply carried another code.
    #[error("reply code changed inside a multi-line reply ({first} then {other})")]
    CodeChanged {
        /// The code of the first line.
        first: u16,
        /// The differing code.
        other: u16,
    },
    /// A line longer than the configured limit.
    #[error("reply line longer than {limit} bytes")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A multi-line reply larger than the configured limit.
    #[error("reply larger than {limit} bytes")]
    ReplyTooLong {
        /// The limit in bytes.
        limit: usize,
    },
}

/// Limits applied by [`ReplyParser`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplyLimits {
    /// Longest accepted line, terminator included. Default 4096 (RFC 5321
    /// allows 512; real servers exceed it).
    pub max_line: usize,
    /// Largest accepted reply (all lines). Default 65536.
    pub max_reply: usize,
}

impl ReplyLimits {
    /// Limits of `max_line` bytes per line and `max_reply` bytes per reply.
    pub fn new(max_line: usize, max_reply: usize) -> ReplyLimits {
        ReplyLimits { max_line, max_reply }
    }
}

impl Default for ReplyLimits {
    fn default() -> Self {
        ReplyLimits {
            max_line: 4096,
            max_reply: 65536,
        }
    }
}

/// Incremental SMTP reply parser.
///
/// ```
/// use relaymail::proto::reply::ReplyParser;
/// let mut p = ReplyParser::new();
/// p.push(b"250-mx.example.com\r\n250 PIPEL");
/// assert!(p.next_reply().unwrap().is_none());
/// p.push(b"INING\r\n");
/// let reply = p.next_reply().unwrap().unwrap();
/// assert_eq!(reply.code().value(), 250);
/// assert_eq!(reply.lines(), ["mx.example.com", "PIPELINING"]);
/// ```
#[derive(Debug, Default)]
pub struct ReplyParser {
    limits: ReplyLimits,
    buf: Vec<u8>,
    /// Start of unconsumed input in `buf`.
    start: usize,
    /// How far past `start` we already looked for a line end.
    scanned: usize,
    /// Lines of the reply being assembled.
    pending: Vec<String>,
    pending_code: Option<u16>,
    pending_size: usize,
}

impl ReplyParser {
    /// A parser with the default [`ReplyLimits`].
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// A parser with the given limits.
    pub fn with_limits(limits: ReplyLimits) -> ReplyParser {
        ReplyParser {
            limits,
            ..ReplyParser::default()
        }
    }

    /// Appends bytes received from the server.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a returned reply (including the
    /// lines of an incomplete multi-line reply).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start + self.pending_size
    }

    /// Whether no bytes at all are waiting (no partial line, no partial reply).
    pub fn is_empty(&self) -> bool {
        self.buffered() == 0
    }

    /// Returns the next complete reply, `Ok(None)` if more bytes are needed.
    ///
    /// After an error the parser's state is unspecified: the connection it
    /// reads from is out of sync and must be closed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(line) = self.next_line()? else {
                self.compact();
                return Ok(None);
            };
            if let Some(reply) = line {
                return Ok(Some(reply));
            }
        }
    }

    /// Reads one line; `Ok(Some(Some(reply)))` when it ended a reply,
    /// `Ok(Some(None))` when it was a continuation line, `Ok(None)` when no
    /// complete line is buffered.
    #[allow(clippy::option_option)]
    fn next_line(&mut self) -> Result<Option<Option<Reply>>, ReplyError> {
        let avail = &self.buf[self.start..];
        let Some(nl) = avail[self.scanned..].iter().position(|&b| b == b'\n') else {
            self.scanned = avail.len();
            if avail.len() >= self.limits.max_line {
                return Err(ReplyError::LineTooLong {
                    limit: self.limits.max_line,
                });
            }
            return Ok(None);
        };
        let line_len = self.scanned + nl + 1;
        if line_len > self.limits.max_line {
            return Err(ReplyError::LineTooLong {
                limit: self.limits.max_line,
            });
        }
        let mut line = &avail[..line_len - 1];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        let (code, last, text) = split_line(line)?;
        if let Some(first) = self.pending_code {
            if first != code {
                return Err(ReplyError::CodeChanged { first, other: code });
            }
        }
        self.pending_size += line_len;
        if self.pending_size > self.limits.max_reply {
            return Err(ReplyError::ReplyTooLong {
                limit: self.limits.max_reply,
            });
        }
        self.pending.push(String::from_utf8_lossy(text).into_owned());
        self.pending_code = Some(code);
        self.start += line_len;
        self.scanned = 0;
        if !last {
            return Ok(Some(None));
        }
        let lines = std::mem::take(&mut self.pending);
        self.pending_code = None;
        self.pending_size = 0;
        let code = ReplyCode::new(code).ok_or(ReplyError::Malformed)?;
        Ok(Some(Some(Reply::new(code, lines))))
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Splits `250-text` into (250, false, "text"); `250 text`, `250 ` and `250`
/// are final lines.
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let digits = line.get(..3).ok_or(ReplyError::Malformed)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return Err(ReplyError::Malformed);
    }
    let code = digits.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    match line.get(3) {
        None => Ok((code, true, &[])),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(ReplyError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = ReplyParser::new();
        p.push(input);
        let mut out = Vec::new();
        while let Some(r) = p.next_reply()? {
            out.push(r);
        }
        Ok(out)
    }

    fn one(input: &[u8]) -> Reply {
        let mut v = parse_all(input).expect("parses");
        assert_eq!(v.len(), 1, "exactly one reply in {input:?}");
        v.remove(0)
    }

    #[test]
    fn real_transcripts() {
        /// (input, code, enhanced code, lines, text)
        type Row<'a> = (&'a [u8], u16, Option<&'a str>, &'a [&'a str], &'a str);
        let table: &[Row<'_>] = &[
            (
                b"220 mx.example.com ESMTP Postfix (Debian/GNU)\r\n",
                220,
                None,
                &["mx.example.com ESMTP Postfix (Debian/GNU)"],
                "mx.example.com ESMTP Postfix (Debian/GNU)",
            ),
            (
                b"250 2.0.0 Ok: queued as 4Xk2Lq1Z3Hz9v\r\n",
                250,
                Some("2.0.0"),
                &["2.0.0 Ok: queued as 4Xk2Lq1Z3Hz9v"],
                "Ok: queued as 4Xk2Lq1Z3Hz9v",
            ),
            // Exchange rejects with an enhanced code.
            (
                b"550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain\r\n",
                550,
                Some("5.7.54"),
                &["5.7.54 SMTP; Unable to relay recipient in non-accepted domain"],
                "SMTP; Unable to relay recipient in non-accepted domain",
            ),
            // Gmail-style multi-line 5xx with the enhanced code on every line.
            (
                b"550-5.1.1 The email account that you tried to reach does not exist.\r\n550 5.1.1 https://support.example/?p=NoSuchUser x1si\r\n",
                550,
                Some("5.1.1"),
                &[
                    "5.1.1 The email account that you tried to reach does not exist.",
                    "5.1.1 https://support.example/?p=NoSuchUser x1si",
                ],
                "The email account that you tried to reach does not exist. https://support.example/?p=NoSuchUser x1si",
            ),
            // smtp-sink answers with a bare code and a space.
            (b"250 \r\n", 250, None, &[""], ""),
            (b"250\r\n", 250, None, &[""], ""),
            // Bare LF line endings.
            (b"354 End data with <CR><LF>.<CR><LF>\n", 354, None, &["End data with <CR><LF>.<CR><LF>"], "End data with <CR><LF>.<CR><LF>"),
            // Enhanced code whose class does not match the reply is not one.
            (b"250 5.1.1 odd\r\n", 250, None, &["5.1.1 odd"], "5.1.1 odd"),
            (b"421 4.4.2 mx.example.com Error: timeout exceeded\r\n", 421, Some("4.4.2"), &["4.4.2 mx.example.com Error: timeout exceeded"], "mx.example.com Error: timeout exceeded"),
        ];
        for (input, code, enhanced, lines, text) in table {
            let r = one(input);
            assert_eq!(r.code().value(), *code, "{input:?}");
            assert_eq!(
                r.enhanced_code().map(|e| e.to_string()).as_deref(),
                *enhanced,
                "{input:?}"
            );
            assert_eq!(r.lines(), *lines, "{input:?}");
            assert_eq!(r.text(), *text, "{input:?}");
        }
    }

    #[test]
    fn multi_line_ehlo() {
        let r = one(b"250-smtp.example.com at your service, [192.0.2.7]\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n");
        assert_eq!(r.lines().len(), 8);
        assert_eq!(r.lines()[7], "SMTPUTF8");
    }

    #[test]
    fn severities() {
        assert!(one(b"250 ok\r\n").is_positive());
        assert!(one(b"354 go\r\n").is_intermediate());
        assert!(one(b"451 later\r\n").is_transient());
        assert!(one(b"554 no\r\n").is_permanent());
        assert_eq!(one(b"334 \r\n").severity(), Severity::PositiveIntermediate);
    }

    #[test]
    fn several_replies_in_one_read_and_pipelined() {
        let v = parse_all(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data\r\n").expect("parses");
        let codes: Vec<u16> = v.iter().map(|r| r.code().value()).collect();
        assert_eq!(codes, [250, 250, 354]);
    }

    #[test]
    fn need_more_bytes() {
        let mut p = ReplyParser::new();
        p.push(b"250-first\r\n250 sec");
        assert_eq!(p.next_reply(), Ok(None));
        assert!(!p.is_empty());
        p.push(b"ond\r");
        assert_eq!(p.next_reply(), Ok(None));
        p.push(b"\n");
        assert_eq!(
            p.next_reply().expect("ok").expect("reply").lines(),
            ["first", "second"]
        );
        assert!(p.is_empty());
    }

    #[test]
    fn malformed_lines() {
        for bad in [
            &b"25\r\n"[..],
            b"abc ok\r\n",
            b"250:ok\r\n",
            b"150 too low\r\n",
            b"650 too high\r\n",
            b"\r\n",
            b" 250 ok\r\n",
        ] {
            assert_eq!(parse_all(bad), Err(ReplyError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn code_change_is_an_error() {
        assert_eq!(
            parse_all(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeChanged {
                first: 250,
                other: 251
            })
        );
    }

    #[test]
    fn non_utf8_text_never_panics() {
        let r = one(b"550 \xff\xfe bad \xc3\x28 bytes\r\n");
        assert_eq!(r.code().value(), 550);
        assert!(r.text().contains("bad"));
    }

    #[test]
    fn line_limit_without_newline() {
        let mut p = ReplyParser::with_limits(ReplyLimits {
            max_line: 64,
            max_reply: 1024,
        });
        p.push(&[b'2'; 63]);
        assert_eq!(p.next_reply(), Ok(None));
        p.push(b"5");
        assert_eq!(p.next_reply(), Err(ReplyError::LineTooLong { limit: 64 }));
    }

    #[test]
    fn line_limit_with_newline() {
        let mut p = ReplyParser::with_limits(ReplyLimits {
            max_line: 16,
            max_reply: 1024,
        });
        p.push(b"250 this line is far too long\r\n");
        assert_eq!(p.next_reply(), Err(ReplyError::LineTooLong { limit: 16 }));
    }

    #[test]
    fn reply_limit() {
        let mut p = ReplyParser::with_limits(ReplyLimits {
            max_line: 64,
            max_reply: 100,
        });
        for _ in 0..20 {
            p.push(b"250-0123456789\r\n");
        }
        assert_eq!(p.next_reply(), Err(ReplyError::ReplyTooLong { limit: 100 }));
    }

    #[test]
    fn display() {
        assert_eq!(
            one(b"550 5.1.1 <x@y>: Recipient address rejected\r\n").to_string(),
            "550 5.1.1 <x@y>: Recipient address rejected"
        );
        assert_eq!(one(b"250\r\n").to_string(), "250");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn reply_stream() -> impl Strategy<Value = Vec<u8>> {
            let line = (
                prop::sample::select(vec![220u16, 250, 354, 421, 451, 550, 554]),
                prop::collection::vec("[ -~]{0,40}", 1..5),
                any::<bool>(),
            )
                .prop_map(|(code, texts, lf_only)| {
                    let eol: &[u8] = if lf_only { b"\n" } else { b"\r\n" };
                    let mut out = Vec::new();
                    for (i, t) in texts.iter().enumerate() {
                        let sep = if i + 1 == texts.len() { ' ' } else { '-' };
                        out.extend_from_slice(format!("{code}{sep}{t}").as_bytes());
                        out.extend_from_slice(eol);
                    }
                    out
                });
            prop::collection::vec(line, 1..6).prop_map(|v| v.concat())
        }

        proptest! {
            #[test]
            fn split_invariant(input in reply_stream(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8)) {
                let whole = parse_all(&input).expect("generated replies parse");
                let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
                points.sort_unstable();
                let mut p = ReplyParser::new();
                let mut got = Vec::new();
                let mut prev = 0;
                for cut in points.into_iter().chain(std::iter::once(input.len())) {
                    p.push(&input[prev..cut]);
                    prev = cut;
                    while let Some(r) = p.next_reply().expect("parses") {
                        got.push(r);
                    }
                }
                prop_assert_eq!(got, whole);
            }

            #[test]
            fn byte_by_byte_equals_whole(input in reply_stream()) {
                let whole = parse_all(&input).expect("parses");
                let mut p = ReplyParser::new();
                let mut got = Vec::new();
                for b in &input {
                    p.push(std::slice::from_ref(b));
                    while let Some(r) = p.next_reply().expect("parses") {
                        got.push(r);
                    }
                }
                prop_assert_eq!(got, whole);
            }

            #[test]
            fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512)) {
                let mut p = ReplyParser::with_limits(ReplyLimits { max_line: 64, max_reply: 256 });
                p.push(&input);
                while let Ok(Some(_)) = p.next_reply() {}
            }
        }
    }
}
