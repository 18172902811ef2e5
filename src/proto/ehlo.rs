//! Server capabilities announced in the EHLO reply (RFC 5321 §4.1.1.1).

use std::collections::HashSet;

use super::reply::Reply;

/// An SMTP service extension relaymail understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Extension {
    /// RFC 2920 command pipelining.
    Pipelining,
    /// RFC 3207 STARTTLS.
    StartTls,
    /// RFC 4954 AUTH.
    Auth,
    /// RFC 1870 SIZE declaration.
    Size,
    /// RFC 6152 8-bit MIME transport.
    EightBitMime,
    /// RFC 6531 internationalised addresses.
    SmtpUtf8,
    /// RFC 3030 BDAT.
    Chunking,
    /// RFC 3030 binary MIME (requires CHUNKING).
    BinaryMime,
    /// RFC 3461 delivery status notifications.
    Dsn,
    /// RFC 2034 enhanced status codes.
    EnhancedStatusCodes,
    /// RFC 8689 REQUIRETLS.
    RequireTls,
}

impl Extension {
    /// The EHLO keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Extension::Pipelining => "PIPELINING",
            Extension::StartTls => "STARTTLS",
            Extension::Auth => "AUTH",
            Extension::Size => "SIZE",
            Extension::EightBitMime => "8BITMIME",
            Extension::SmtpUtf8 => "SMTPUTF8",
            Extension::Chunking => "CHUNKING",
            Extension::BinaryMime => "BINARYMIME",
            Extension::Dsn => "DSN",
            Extension::EnhancedStatusCodes => "ENHANCEDSTATUSCODES",
            Extension::RequireTls => "REQUIRETLS",
        }
    }

    const ALL: [Extension; 11] = [
        Extension::Pipelining,
        Extension::StartTls,
        Extension::Auth,
        Extension::Size,
        Extension::EightBitMime,
        Extension::SmtpUtf8,
        Extension::Chunking,
        Extension::BinaryMime,
        Extension::Dsn,
        Extension::EnhancedStatusCodes,
        Extension::RequireTls,
    ];

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// What a server announced in its EHLO reply.
///
/// ```
/// use relaymail::proto::{ehlo::{Capabilities, Extension}, reply::ReplyParser};
/// let mut p = ReplyParser::new();
/// p.push(b"250-mx.example.com\r\n250-SIZE 10240000\r\n250-AUTH PLAIN LOGIN\r\n250 pipelining\r\n");
/// let caps = Capabilities::from_ehlo(&p.next_reply().unwrap().unwrap());
/// assert!(caps.supports(Extension::Pipelining));
/// assert_eq!(caps.size_limit(), Some(10_240_000));
/// assert_eq!(caps.auth_mechanisms(), ["PLAIN", "LOGIN"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    domain: String,
    known: u16,
    size: Option<u64>,
    auth: Vec<String>,
    other: Vec<(String, Vec<String>)>,
}

impl Capabilities {
    /// Reads the lines of a positive EHLO reply. The first line is the
    /// server's name and greeting; each further line is `KEYWORD [params]`.
    /// Keywords are compared case-insensitively; unknown ones are kept.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        let mut lines = reply.lines().iter();
        if let Some(first) = lines.next() {
            caps.domain = first.split(' ').next().unwrap_or_default().to_owned();
        }
        for line in lines {
            caps.add_line(line);
        }
        // Once, after every line: linear, where checking each new name
        // against those kept was quadratic (a hostile server may announce
        // tens of thousands of names within the reply limits).
        dedup_keep_first(&mut caps.auth);
        caps
    }

    fn add_line(&mut self, line: &str) {
        let mut words = line.split_ascii_whitespace();
        let Some(first) = words.next() else { return };
        // The pre-RFC 4954 form "AUTH=PLAIN LOGIN" announces the same mechanisms.
        let (keyword, inline) = match first.split_once('=') {
            Some((k, v)) if k.eq_ignore_ascii_case("AUTH") => (k, Some(v)),
            _ => (first, None),
        };
        let params: Vec<&str> = inline
            .into_iter()
            .filter(|v| !v.is_empty())
            .chain(words)
            .collect();
        let Some(ext) = Extension::ALL
            .into_iter()
            .find(|e| e.keyword().eq_ignore_ascii_case(keyword))
        else {
            self.other.push((
                keyword.to_ascii_uppercase(),
                params.iter().map(|p| (*p).to_owned()).collect(),
            ));
            return;
        };
        self.known |= ext.bit();
        match ext {
            Extension::Size => {
                // "SIZE" alone or "SIZE 0" means no announced limit.
                self.size = params
                    .first()
                    .and_then(|p| p.parse::<u64>().ok())
                    .filter(|&n| n > 0);
            }
            Extension::Auth => {
                // Upper-cased here, de-duplicated by `from_ehlo`.
                self.auth
                    .extend(params.iter().map(|mech| mech.to_ascii_uppercase()));
            }
            _ => {}
        }
    }

    /// Whether the server announced `ext`.
    pub fn supports(&self, ext: Extension) -> bool {
        self.known & ext.bit() != 0
    }

    /// The first word of the EHLO reply: how the server names itself.
    pub fn server_name(&self) -> &str {
        &self.domain
    }

    /// The maximum message size the server announced with `SIZE n`; `None`
    /// when it announced no SIZE, or SIZE without a (non-zero) number.
    pub fn size_limit(&self) -> Option<u64> {
        self.size
    }

    /// SASL mechanisms from the AUTH line(s), upper-cased, in server order.
    pub fn auth_mechanisms(&self) -> &[String] {
        &self.auth
    }

    /// Extensions relaymail does not interpret, as (upper-cased keyword, parameters).
    pub fn other(&self) -> &[(String, Vec<String>)] {
        &self.other
    }

    /// Whether the server announced a keyword, known or not (case-insensitive).
    pub fn has_keyword(&self, keyword: &str) -> bool {
        Extension::ALL
            .into_iter()
            .any(|e| self.supports(e) && e.keyword().eq_ignore_ascii_case(keyword))
            || self.other.iter().any(|(k, _)| k.eq_ignore_ascii_case(keyword))
    }

    /// The known extensions the server announced, in a fixed order.
    pub fn extensions(&self) -> impl Iterator<Item = Extension> + '_ {
        Extension::ALL.into_iter().filter(|e| self.supports(*e))
    }
}

/// Removes repeated strings, keeping the first of each in place: one hash
/// set look-up per string.
fn dedup_keep_first(items: &mut Vec<String>) {
    let mut seen = HashSet::with_capacity(items.len());
    let keep: Vec<bool> = items.iter().map(|item| seen.insert(item.as_str())).collect();
    let mut keep = keep.into_iter();
    // `retain` visits the elements in order, once each.
    items.retain(|_| keep.next().unwrap_or(true));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reply::ReplyParser;

    fn caps(input: &[u8]) -> Capabilities {
        let mut p = ReplyParser::new();
        p.push(input);
        Capabilities::from_ehlo(&p.next_reply().expect("ok").expect("reply"))
    }

    #[test]
    fn postfix() {
        let c = caps(b"250-mail.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n");
        assert_eq!(c.server_name(), "mail.example.org");
        for e in [
            Extension::Pipelining,
            Extension::Size,
            Extension::StartTls,
            Extension::Auth,
            Extension::EnhancedStatusCodes,
            Extension::EightBitMime,
            Extension::Dsn,
            Extension::SmtpUtf8,
            Extension::Chunking,
        ] {
            assert!(c.supports(e), "{e:?}");
        }
        assert!(!c.supports(Extension::BinaryMime));
        assert!(!c.supports(Extension::RequireTls));
        assert_eq!(c.size_limit(), Some(10_240_000));
        assert_eq!(c.auth_mechanisms(), ["PLAIN", "LOGIN"]);
        assert!(c.has_keyword("vrfy"));
        assert!(c.has_keyword("etrn"));
    }

    #[test]
    fn exchange() {
        let c = caps(b"250-EX01.corp.example.com Hello [10.0.0.5]\r\n250-SIZE 37748736\r\n250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-X-ANONYMOUSTLS\r\n250-AUTH NTLM\r\n250-X-EXPS GSSAPI NTLM\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250 XRDST\r\n");
        assert!(c.supports(Extension::BinaryMime));
        assert_eq!(c.auth_mechanisms(), ["NTLM"]);
        assert!(c
            .other()
            .iter()
            .any(|(k, p)| k == "X-EXPS" && p == &["GSSAPI", "NTLM"]));
    }

    #[test]
    fn gmail_style() {
        let c = caps(b"250-smtp.gmail.example at your service, [192.0.2.7]\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n");
        assert_eq!(c.server_name(), "smtp.gmail.example");
        assert_eq!(
            c.auth_mechanisms(),
            [
                "LOGIN",
                "PLAIN",
                "XOAUTH2",
                "PLAIN-CLIENTTOKEN",
                "OAUTHBEARER",
                "XOAUTH"
            ]
        );
        assert!(!c.supports(Extension::StartTls));
    }

    #[test]
    fn case_insensitive_and_old_auth_form() {
        let c = caps(b"250-x\r\n250-auth=login\r\n250-Size\r\n250 starttls\r\n");
        assert_eq!(c.auth_mechanisms(), ["LOGIN"]);
        assert!(c.supports(Extension::Size));
        assert_eq!(c.size_limit(), None);
        assert!(c.supports(Extension::StartTls));
    }

    #[test]
    fn size_zero_and_garbage_mean_no_limit() {
        assert_eq!(caps(b"250-x\r\n250 SIZE 0\r\n").size_limit(), None);
        assert_eq!(caps(b"250-x\r\n250 SIZE lots\r\n").size_limit(), None);
        assert!(caps(b"250-x\r\n250 SIZE lots\r\n").supports(Extension::Size));
    }

    #[test]
    fn many_auth_mechanisms_dedup_in_order_of_first_appearance() {
        // 20,000 distinct names over two AUTH lines (the old and the RFC 4954
        // form), each name announced again later in lower case, plus repeats
        // of the first names at the end: the first appearance wins and the
        // case is folded to upper.
        let mut input = b"250-mx.example.com\r\n250-AUTH".to_vec();
        for i in 0..10_000 {
            input.extend_from_slice(format!(" Mech-{i}").as_bytes());
        }
        input.extend_from_slice(b"\r\n250-AUTH=mech-9999");
        for i in 10_000..20_000 {
            input.extend_from_slice(format!(" mech-{i} MECH-{}", i - 10_000).as_bytes());
        }
        input.extend_from_slice(b"\r\n250 AUTH MECH-0 mech-19999 Mech-5\r\n");
        let mut p = ReplyParser::with_limits(crate::proto::reply::ReplyLimits {
            max_line: 1 << 20,
            max_reply: 1 << 20,
        });
        p.push(&input);
        let c = Capabilities::from_ehlo(&p.next_reply().expect("ok").expect("reply"));
        let want: Vec<String> = (0..20_000).map(|i| format!("MECH-{i}")).collect();
        assert_eq!(c.auth_mechanisms(), want.as_slice());
    }

    #[test]
    fn dedup_keep_first_keeps_order_and_is_case_sensitive() {
        let mut v: Vec<String> = ["B", "A", "B", "C", "a", "A", "B"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        dedup_keep_first(&mut v);
        assert_eq!(v, ["B", "A", "C", "a"]);
        let mut empty: Vec<String> = Vec::new();
        dedup_keep_first(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn single_line_and_empty_lines() {
        let c = caps(b"250 localhost\r\n");
        assert_eq!(c.extensions().count(), 0);
        let c = caps(b"250-localhost\r\n250-\r\n250  \r\n");
        assert_eq!(c.extensions().count(), 0);
        assert!(c.other().is_empty());
    }
}
