//! The address and domain grammar, written once.
//!
//! Every layer that reads an address or a host name calls these functions:
//! [`Address::parse`](super::address::Address::parse) (the composer and the
//! validated types), the wire check of [`command`](super::command) (the last
//! defence before MAIL FROM / RCPT TO / EHLO are written) and the settings'
//! host validation. They therefore cannot disagree about what a domain is.
//!
//! # The rules
//!
//! - **atext** (RFC 5322 §3.2.3), extended by RFC 6531 with every non-ASCII
//!   character; a **dot-string** is atext runs joined by single dots.
//! - A **quoted string** is `"…"` with `\x` pairs; it is read here, its
//!   content unescaped.
//! - A **domain** is dot-separated labels of ASCII letters, digits and inner
//!   hyphens, or (where allowed) U-labels holding non-ASCII characters; or an
//!   **address literal** `[192.0.2.1]` / `[IPv6:2001:db8::1]`.
//! - **Label length**: at most 63 bytes *in the A-label form*, which is what
//!   DNS enforces. A U-label is converted with IDNA (UTS 46) and its `xn--…`
//!   form counted; a name that has no IDNA form is refused. The whole
//!   domain is at most 255 bytes, as given and as A-labels.
//! - A **host name** (the server to connect to) follows the same label rules
//!   and also allows `_` (DNS names may hold it; SMTP domains may not), a
//!   final dot, and bare IP addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest label, in bytes of its A-label (`xn--…`) form.
pub const MAX_LABEL_LEN: usize = 63;
/// The longest domain, in bytes (as given, and as A-labels).
pub const MAX_DOMAIN_LEN: usize = 255;
/// The longest host name, in bytes, without a final dot (DNS: 255 octets
/// on the wire).
pub const MAX_HOST_LEN: usize = 253;
/// The longest local part, in bytes (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_LEN: usize = 64;

/// Why a domain, host name or address literal was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DomainError {
    /// Nothing was given.
    Empty,
    /// Longer than [`MAX_DOMAIN_LEN`] bytes.
    TooLong,
    /// Two dots in a row, or a dot at the start or end.
    EmptyLabel,
    /// A label longer than [`MAX_LABEL_LEN`] bytes in its A-label form.
    LabelTooLong,
    /// A label that starts or ends with `-`.
    Hyphen,
    /// A character that no label may hold (space, `_`, `<`, `/` …), or a
    /// non-ASCII character where only ASCII is allowed.
    Character,
    /// Non-ASCII labels that have no IDNA (A-label) form.
    Idna,
    /// `[` without `]`, or a literal that is neither IPv4 nor `IPv6:…`.
    Literal,
}

impl DomainError {
    /// What is wrong, in words.
    pub fn reason(self) -> &'static str {
        match self {
            DomainError::Empty => "the domain is empty",
            DomainError::TooLong => "the domain is too long (255 bytes at most, 253 for a host name)",
            DomainError::EmptyLabel => {
                "the domain has an empty label (two dots in a row, or a dot at its start or end)"
            }
            DomainError::LabelTooLong => "a domain label is longer than 63 bytes (as an IDNA A-label)",
            DomainError::Hyphen => "a domain label starts or ends with '-'",
            DomainError::Character => "a domain may hold only letters, digits, hyphens and dots",
            DomainError::Idna => "the domain is not a valid internationalised domain name",
            DomainError::Literal => "an address literal must be [IPv4] or [IPv6:address]",
        }
    }
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for DomainError {}

/// RFC 5322 `atext` for one ASCII byte: letters, digits and
/// ``!#$%&'*+-/=?^_`{|}~``.
pub fn is_ascii_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// RFC 6531 `atext`: ASCII atext or any non-ASCII character.
pub fn is_atext(c: char) -> bool {
    if c.is_ascii() {
        is_ascii_atext(c as u8)
    } else {
        true
    }
}

/// Whether `s` is a dot-string: atext runs joined by single dots (no dot at
/// the start or end, none doubled).
pub fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// Reads a quoted string after its opening `"`: the content with `\x`
/// pairs unescaped, and the number of bytes consumed (the closing quote
/// included). `None` when it is not closed (or ends in a lone `\`).
pub fn read_quoted(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => {
                let (_, escaped) = chars.next()?;
                out.push(escaped);
            }
            c => out.push(c),
        }
    }
    None
}

/// A local part as written in a path: itself when it is a dot-string,
/// otherwise quoted with `"` and `\` escaped.
pub fn quote_local_part(local: &str) -> String {
    if is_dot_string(local) {
        return local.to_owned();
    }
    let mut out = String::with_capacity(local.len() + 2);
    out.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Checks an address literal, brackets included: `[192.0.2.1]` or
/// `[IPv6:2001:db8::1]` (the tag in any case).
pub fn check_address_literal(literal: &str) -> Result<(), DomainError> {
    let inner = literal
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or(DomainError::Literal)?;
    if inner.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") && inner[5..].parse::<Ipv6Addr>().is_ok() => Ok(()),
        _ => Err(DomainError::Literal),
    }
}

/// Which characters the labels of a name may hold.
#[derive(Clone, Copy)]
struct Labels {
    non_ascii: bool,
    underscore: bool,
}

fn check_labels(name: &str, rules: Labels) -> Result<(), DomainError> {
    if name.is_empty() {
        return Err(DomainError::Empty);
    }
    if name.len() > MAX_DOMAIN_LEN {
        return Err(DomainError::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(DomainError::EmptyLabel);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DomainError::Hyphen);
        }
        let ok = |c: char| {
            c.is_ascii_alphanumeric()
                || c == '-'
                || (rules.underscore && c == '_')
                || (rules.non_ascii && !c.is_ascii())
        };
        if !label.chars().all(ok) {
            return Err(DomainError::Character);
        }
        if label.is_ascii() && label.len() > MAX_LABEL_LEN {
            return Err(DomainError::LabelTooLong);
        }
    }
    if !name.is_ascii() {
        // The A-label form decides the length; a name without one is refused.
        let ascii = to_ascii(name)?;
        if ascii.len() > MAX_DOMAIN_LEN {
            return Err(DomainError::TooLong);
        }
        if ascii.split('.').any(|l| l.len() > MAX_LABEL_LEN) {
            return Err(DomainError::LabelTooLong);
        }
    }
    Ok(())
}

/// The domain as IDNA A-labels (`xn--…`); ASCII names and address literals
/// are returned as given.
pub fn to_ascii(domain: &str) -> Result<String, DomainError> {
    if domain.is_ascii() {
        return Ok(domain.to_owned());
    }
    idna::domain_to_ascii(domain).map_err(|_| DomainError::Idna)
}

/// Checks the domain of a mailbox (RFC 5321 `Domain` / `address-literal`,
/// with RFC 6531 U-labels): host name labels or an address literal.
pub fn check_domain(domain: &str) -> Result<(), DomainError> {
    domain_or_literal(domain, true)
}

/// Checks an ASCII-only domain (the EHLO/HELO argument): letters, digits,
/// inner hyphens and dots, or an address literal.
pub fn check_ascii_domain(domain: &str) -> Result<(), DomainError> {
    domain_or_literal(domain, false)
}

fn domain_or_literal(domain: &str, non_ascii: bool) -> Result<(), DomainError> {
    if domain.starts_with('[') {
        return check_address_literal(domain);
    }
    check_labels(
        domain,
        Labels {
            non_ascii,
            underscore: false,
        },
    )
}

/// Checks a server host: an IP address (IPv6 optionally in brackets) or a
/// DNS name — the labels of [`check_domain`] plus `_`, and an optional
/// final dot.
pub fn check_host(host: &str) -> Result<(), DomainError> {
    if host.is_empty() {
        return Err(DomainError::Empty);
    }
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if unbracketed.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > MAX_HOST_LEN {
        return Err(DomainError::TooLong);
    }
    check_labels(
        name,
        Labels {
            non_ascii: true,
            underscore: true,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_length_counts_the_a_label() {
        // 64 bytes of UTF-8, but a short A-label: accepted.
        let short_a = "ü".repeat(32);
        assert_eq!(short_a.len(), 64);
        assert!(check_domain(&format!("{short_a}.example")).is_ok());
        // An A-label over 63 bytes: refused, however it was written.
        let long_a = "bücher".repeat(11);
        assert!(to_ascii(&long_a).expect("idna").len() > 63);
        assert_eq!(
            check_domain(&format!("{long_a}.example")),
            Err(DomainError::LabelTooLong)
        );
        assert_eq!(
            check_domain(&format!("{}.example", "a".repeat(64))),
            Err(DomainError::LabelTooLong)
        );
        assert!(check_domain(&format!("{}.example", "a".repeat(63))).is_ok());
    }

    #[test]
    fn literals_and_hosts() {
        for ok in ["[192.0.2.1]", "[IPv6:2001:db8::1]", "[ipv6:::1]"] {
            assert!(check_domain(ok).is_ok(), "{ok}");
        }
        for bad in ["[300.1.1.1]", "[IPv6:zz::1]", "[192.0.2.1", "[1.2.3]", "[]"] {
            assert_eq!(check_domain(bad), Err(DomainError::Literal), "{bad}");
        }
        assert!(check_host("mail_relay.corp").is_ok());
        assert!(check_domain("mail_relay.corp").is_err());
        assert!(check_host("x.example.").is_ok());
        assert!(check_host("::1").is_ok() && check_host("[::1]").is_ok());
        assert!(check_ascii_domain("bücher.example").is_err());
    }

    #[test]
    fn quoted_strings() {
        assert_eq!(read_quoted("a\\\"b\"@x"), Some(("a\"b".to_owned(), 5)));
        assert_eq!(read_quoted("abc"), None);
        assert_eq!(read_quoted("abc\\"), None);
        assert_eq!(quote_local_part("a.b"), "a.b");
        assert_eq!(quote_local_part("a..b"), "\"a..b\"");
        assert_eq!(quote_local_part("a\"b"), "\"a\\\"b\"");
    }
}
