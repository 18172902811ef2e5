//! Email addresses: parsing under an [`AddressPolicy`], and the forms they
//! take in SMTP commands and in headers.
//!
//! An [`Address`] keeps the local part as meant (quotes removed, escapes
//! resolved) and the domain as given. [`Address::to_smtp`] writes it back
//! safely: a local part that is not a plain dot-string is quoted, so that a
//! quoted local part stays one argument and can never add ESMTP parameters
//! (the go-mail CVE-2025-59937 class); internationalised domains are written
//! as IDNA A-labels unless the local part itself needs SMTPUTF8.

use std::fmt;

use crate::error::{Error, Kind};

/// How strictly addresses are read (seed 002's "MIME address strict").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AddressPolicy {
    /// RFC 5321/5322 exactly: the local part is a dot-atom (atoms joined by
    /// single dots) or a quoted string; the domain is host name labels or an
    /// address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`). The default.
    #[default]
    Strict,
    /// Also accepts what real address books contain, and quotes it on the
    /// wire so that it still means the same mailbox:
    ///
    /// - dots at the start or end of the local part, or doubled
    ///   (`john..doe@`, `.kim@`, `kim.@`), as used by some legacy providers;
    /// - a trailing dot on the domain (`example.com.`), which is dropped;
    /// - spaces around the whole address, which are trimmed.
    ///
    /// Never accepted, in either policy: control characters (CR, LF, NUL …),
    /// angle brackets, unquoted spaces or other characters that would change
    /// an SMTP command or a header.
    Lenient,
}

/// A parsed email address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    local: String,
    domain: String,
}

/// A display name and an address: `Ana Lima <ana@example.net>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    /// The display name (any text; encoded in headers as needed).
    pub name: Option<String>,
    /// The address.
    pub address: Address,
}

fn bad(input: &str, why: impl fmt::Display) -> Error {
    // The input is shown escaped: it may hold the very bytes that are wrong.
    Error::new(Kind::Config, None, format!("invalid address {input:?}: {why}"))
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

impl Address {
    /// Parses `local@domain` (without angle brackets or display name).
    pub fn parse(input: &str, policy: AddressPolicy) -> Result<Address, Error> {
        let text = if policy == AddressPolicy::Lenient {
            input.trim()
        } else {
            input
        };
        if text.is_empty() {
            return Err(bad(input, "it is empty"));
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(bad(
                input,
                format_args!("it contains the control character {c:?}"),
            ));
        }
        if text.contains(['<', '>']) {
            return Err(bad(input, "it contains an angle bracket"));
        }
        let (local, rest) = if let Some(quoted) = text.strip_prefix('"') {
            let (local, len) =
                unquote(quoted).ok_or_else(|| bad(input, "the quoted local part is not closed"))?;
            (local, &quoted[len..])
        } else {
            let at = text.rfind('@').ok_or_else(|| bad(input, "there is no '@'"))?;
            let local = &text[..at];
            if let Some(c) = local.chars().find(|&c| !(is_atext(c) || c == '.')) {
                return Err(bad(
                    input,
                    format_args!("{c:?} is not allowed in a local part outside quotes"),
                ));
            }
            if !is_dot_string(local) {
                let lenient_ok = policy == AddressPolicy::Lenient && local.chars().any(|c| c != '.');
                if !lenient_ok {
                    return Err(bad(
                        input,
                        "the local part has a dot at its start or end, or two dots in a row",
                    ));
                }
            }
            (local.to_owned(), &text[at..])
        };
        let domain = rest
            .strip_prefix('@')
            .ok_or_else(|| bad(input, "there is no '@' after the local part"))?;
        let domain = if policy == AddressPolicy::Lenient && domain.len() > 1 {
            domain.strip_suffix('.').unwrap_or(domain)
        } else {
            domain
        };
        check_domain(domain).map_err(|why| bad(input, why))?;
        if local.is_empty() {
            return Err(bad(input, "the local part is empty"));
        }
        if local.len() > 64 {
            return Err(bad(input, "the local part is longer than 64 bytes"));
        }
        Ok(Address {
            local,
            domain: domain.to_owned(),
        })
    }

    /// The local part as meant (without quotes).
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain as given (may be a U-label IDN or an address literal).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether the address can only be sent with SMTPUTF8: its local part is
    /// not ASCII. (A non-ASCII domain alone does not need it: it is sent as
    /// an A-label.)
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii()
    }

    /// The domain as IDNA A-labels (`xn--…`), or as given when it is ASCII
    /// or an address literal.
    pub fn ascii_domain(&self) -> Result<String, Error> {
        if self.domain.is_ascii() {
            return Ok(self.domain.clone());
        }
        idna::domain_to_ascii(&self.domain).map_err(|_| {
            Error::new(
                Kind::Config,
                None,
                format!(
                    "the domain {:?} is not a valid internationalised domain name",
                    self.domain
                ),
            )
        })
    }

    /// The address as it goes into MAIL FROM / RCPT TO (and headers): the
    /// local part quoted when it is not a dot-string, the domain as A-labels
    /// unless the local part needs SMTPUTF8 anyway.
    pub fn to_smtp(&self) -> Result<String, Error> {
        let domain = if self.needs_smtputf8() {
            self.domain.clone()
        } else {
            self.ascii_domain()?
        };
        Ok(format!("{}@{domain}", quote_local(&self.local)))
    }
}

impl fmt::Display for Address {
    /// The address with its local part quoted when needed and the domain as
    /// given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", quote_local(&self.local), self.domain)
    }
}

impl Mailbox {
    /// A mailbox from a display name (optional) and an address string.
    pub fn new(name: Option<&str>, address: &str, policy: AddressPolicy) -> Result<Mailbox, Error> {
        Ok(Mailbox {
            name: name.map(str::to_owned).filter(|n| !n.trim().is_empty()),
            address: Address::parse(address, policy)?,
        })
    }
}

/// The recipients' SMTP forms ([`Address::to_smtp`]), each mailbox once:
/// local parts compared exactly, domains without regard to case; first
/// occurrence kept, order preserved.
pub(crate) fn unique_recipients<'a>(
    addresses: impl IntoIterator<Item = &'a Address>,
) -> Result<Vec<String>, Error> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for a in addresses {
        if seen.insert((a.local.clone(), a.domain.to_lowercase())) {
            out.push(a.to_smtp()?);
        }
    }
    Ok(out)
}

/// The local part as a dot-string, or quoted (with `"` and `\` escaped).
fn quote_local(local: &str) -> String {
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

/// Reads a quoted string after its opening quote: the content unescaped and
/// the number of bytes consumed (closing quote included).
fn unquote(s: &str) -> Option<(String, usize)> {
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

fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("the domain is empty".into());
    }
    if domain.len() > 255 {
        return Err("the domain is longer than 255 bytes".into());
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let inner = literal
            .strip_suffix(']')
            .ok_or("the address literal is not closed with ']'")?;
        let ok = match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                inner[5..].parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if ok {
            Ok(())
        } else {
            Err(format!("{domain:?} is not an IPv4 or IPv6 address literal"))
        };
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(
                "the domain has an empty label (two dots in a row, or a dot at its start or end)".into(),
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the domain label {label:?} starts or ends with '-'"));
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii()))
        {
            return Err(format!("{c:?} is not allowed in a domain"));
        }
        if label.len() > 63 && label.is_ascii() {
            return Err(format!("the domain label {label:?} is longer than 63 characters"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressPolicy::{Lenient, Strict};

    #[test]
    fn both_policies_accept_and_write() {
        for (input, smtp) in [
            ("ana@example.net", "ana@example.net"),
            (
                "first.last+tag@sub.example.co.uk",
                "first.last+tag@sub.example.co.uk",
            ),
            ("o'hara@example.ie", "o'hara@example.ie"),
            ("\"john doe\"@example.com", "\"john doe\"@example.com"),
            ("\"john.doe\"@example.com", "john.doe@example.com"),
            ("\"a\\\"b\"@example.com", "\"a\\\"b\"@example.com"),
            ("user@[192.0.2.1]", "user@[192.0.2.1]"),
            ("user@[IPv6:2001:db8::1]", "user@[IPv6:2001:db8::1]"),
            ("josé@example.com", "josé@example.com"),
            ("user@bücher.example", "user@xn--bcher-kva.example"),
            ("用户@例子.广告", "用户@例子.广告"),
        ] {
            for policy in [Strict, Lenient] {
                let a = Address::parse(input, policy).unwrap_or_else(|e| panic!("{input}: {e}"));
                assert_eq!(a.to_smtp().expect("smtp form"), smtp, "{input} {policy:?}");
            }
        }
    }

    #[test]
    fn lenient_deviations_are_quoted_on_the_wire() {
        for (input, smtp) in [
            ("john..doe@example.com", "\"john..doe\"@example.com"),
            (".kim@example.com", "\".kim\"@example.com"),
            ("kim.@example.com", "\"kim.\"@example.com"),
            ("  ana@example.net ", "ana@example.net"),
            ("ana@example.net.", "ana@example.net"),
        ] {
            assert!(Address::parse(input, Strict).is_err(), "strict refuses {input:?}");
            let a = Address::parse(input, Lenient).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(a.to_smtp().expect("smtp"), smtp);
        }
    }

    #[test]
    fn never_accepted() {
        for input in [
            "",
            "ana",
            "@example.net",
            "ana@",
            "ana@example..net",
            "ana@-example.net",
            "an a@example.net",
            "ana@exa mple.net",
            "ana\r\n@example.net",
            "ana@example.net\r\nRCPT TO:<x@evil.example>",
            "ana\0@example.net",
            "<ana@example.net>",
            "\"x> NOTIFY=NEVER\"@example.net",
            "\"unclosed@example.net",
            "a\"b@example.net",
            "ana@[300.1.1.1]",
            "ana@[IPv6:zz::1]",
            "..@example.net",
            "ana@exam_ple.net",
        ] {
            for policy in [Strict, Lenient] {
                let e = Address::parse(input, policy).expect_err(input);
                assert!(e.is_config(), "{input}: {e}");
                assert!(!e.to_string().contains('\r'), "the error shows the input escaped");
            }
        }
        let long = format!("{}@example.net", "a".repeat(65));
        assert!(Address::parse(&long, Strict).is_err());
    }

    #[test]
    fn smtputf8_only_for_non_ascii_local_parts() {
        assert!(Address::parse("josé@example.com", Strict)
            .expect("ok")
            .needs_smtputf8());
        assert!(!Address::parse("jose@exämple.com", Strict)
            .expect("ok")
            .needs_smtputf8());
    }
}
