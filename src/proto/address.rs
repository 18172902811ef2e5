//! Email addresses: parsing under an [`AddressPolicy`], and the forms they
//! take in SMTP commands and in headers.
//!
//! An [`Address`] keeps the local part as meant (quotes removed, escapes
//! resolved) and the domain as given. [`Address::to_smtp`] writes it back
//! safely: a local part that is not a plain dot-string is quoted, so that a
//! quoted local part stays one argument and can never add ESMTP parameters
//! (the go-mail CVE-2025-59937 class); internationalised domains are written
//! as IDNA A-labels unless the local part itself needs SMTPUTF8.

use std::borrow::Cow;
use std::fmt;

use super::grammar::{self, is_atext, is_dot_string};

/// How strictly addresses are read (seed 002's "MIME address strict").
/// As data (feature `serde`): `"strict"` or `"lenient"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
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

/// A parsed, valid email address: it can only be made by
/// [`Address::parse`] (or [`str::parse`], strict), so every `Address`
/// follows the rules of [`super::grammar`] and can be written into MAIL FROM,
/// RCPT TO and headers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    /// The local part (as meant) followed by the domain (as given), in one
    /// allocation: an `Address` is no bigger than a `String`.
    parts: Box<str>,
    /// Where the domain starts in `parts`.
    at: usize,
}

/// A display name and an address: `Ana Lima <ana@example.net>`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Mailbox {
    /// The display name (any text; encoded in headers as needed).
    pub name: Option<String>,
    /// The address.
    pub address: Address,
}

/// An address that was refused, and why. Its `Display` shows the input
/// escaped (it may hold the very bytes that are wrong):
/// `invalid address "a<b@example.net": it contains an angle bracket`.
///
/// Converts into a `relaymail::Error` whose `is_config()` is true, so `?`
/// works in functions returning the crate's error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AddressError {
    input: String,
    reason: Cow<'static, str>,
}

impl AddressError {
    fn new(input: &str, reason: impl Into<Cow<'static, str>>) -> AddressError {
        AddressError {
            input: input.to_owned(),
            reason: reason.into(),
        }
    }

    /// The text that was refused.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// What is wrong with it, in words.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid address {:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for AddressError {}

impl Address {
    /// Parses `local@domain` (without angle brackets or display name).
    pub fn parse(input: &str, policy: AddressPolicy) -> Result<Address, AddressError> {
        let bad = |why: Cow<'static, str>| AddressError::new(input, why);
        let text = if policy == AddressPolicy::Lenient {
            input.trim()
        } else {
            input
        };
        if text.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(bad(format!("it contains the control character {c:?}").into()));
        }
        if text.contains(['<', '>']) {
            return Err(bad("it contains an angle bracket".into()));
        }
        let (local, rest) = if let Some(quoted) = text.strip_prefix('"') {
            let (local, len) = grammar::read_quoted(quoted)
                .ok_or_else(|| bad("the quoted local part is not closed".into()))?;
            (local, &quoted[len..])
        } else {
            let at = text.rfind('@').ok_or_else(|| bad("there is no '@'".into()))?;
            let local = &text[..at];
            if let Some(c) = local.chars().find(|&c| !(is_atext(c) || c == '.')) {
                return Err(bad(format!(
                    "{c:?} is not allowed in a local part outside quotes"
                )
                .into()));
            }
            if !is_dot_string(local) {
                let lenient_ok = policy == AddressPolicy::Lenient && local.chars().any(|c| c != '.');
                if !lenient_ok {
                    return Err(bad(
                        "the local part has a dot at its start or end, or two dots in a row".into(),
                    ));
                }
            }
            (local.to_owned(), &text[at..])
        };
        let domain = rest
            .strip_prefix('@')
            .ok_or_else(|| bad("there is no '@' after the local part".into()))?;
        let domain = if policy == AddressPolicy::Lenient && domain.len() > 1 {
            domain.strip_suffix('.').unwrap_or(domain)
        } else {
            domain
        };
        grammar::check_domain(domain).map_err(|why| bad(why.reason().into()))?;
        if local.is_empty() {
            return Err(bad("the local part is empty".into()));
        }
        if local.len() > grammar::MAX_LOCAL_LEN {
            return Err(bad("the local part is longer than 64 bytes".into()));
        }
        Ok(Address {
            parts: format!("{local}{domain}").into_boxed_str(),
            at: local.len(),
        })
    }

    /// The local part as meant (without quotes).
    pub fn local_part(&self) -> &str {
        &self.parts[..self.at]
    }

    /// The domain as given (may be a U-label IDN or an address literal).
    pub fn domain(&self) -> &str {
        &self.parts[self.at..]
    }

    /// Whether the address can only be sent with SMTPUTF8: its local part is
    /// not ASCII. (A non-ASCII domain alone does not need it: it is sent as
    /// an A-label.)
    pub fn needs_smtputf8(&self) -> bool {
        !self.local_part().is_ascii()
    }

    /// The domain as IDNA A-labels (`xn--…`), or as given when it is ASCII
    /// or an address literal. (Parsing checked that it has an A-label form.)
    pub fn ascii_domain(&self) -> String {
        // Parsing made sure the conversion works; were it ever to fail, the
        // domain as given goes to the wire check, which refuses it there.
        grammar::to_ascii(self.domain()).unwrap_or_else(|_| self.domain().to_owned())
    }

    /// The address as it goes into MAIL FROM / RCPT TO (and headers): the
    /// local part quoted when it is not a dot-string, the domain as A-labels
    /// unless the local part needs SMTPUTF8 anyway.
    pub fn to_smtp(&self) -> String {
        let domain = if self.needs_smtputf8() {
            self.domain().to_owned()
        } else {
            self.ascii_domain()
        };
        format!("{}@{domain}", grammar::quote_local_part(self.local_part()))
    }
}

impl fmt::Display for Address {
    /// The address with its local part quoted when needed and the domain as
    /// given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}",
            grammar::quote_local_part(self.local_part()),
            self.domain()
        )
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;

    /// Parses under [`AddressPolicy::Strict`].
    fn from_str(s: &str) -> Result<Address, AddressError> {
        Address::parse(s, AddressPolicy::Strict)
    }
}

impl TryFrom<&str> for Address {
    type Error = AddressError;

    /// Parses under [`AddressPolicy::Strict`].
    fn try_from(s: &str) -> Result<Address, AddressError> {
        Address::parse(s, AddressPolicy::Strict)
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;

    /// Parses under [`AddressPolicy::Strict`].
    fn try_from(s: String) -> Result<Address, AddressError> {
        Address::parse(&s, AddressPolicy::Strict)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Address {
    /// As its [`Display`](fmt::Display) text.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Address {
    /// From a string, parsed under [`AddressPolicy::Lenient`] (what stored
    /// settings and address books hold); an invalid address is an error.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Address, D::Error> {
        let text = <Cow<'de, str>>::deserialize(deserializer)?;
        Address::parse(&text, AddressPolicy::Lenient).map_err(serde::de::Error::custom)
    }
}

impl Mailbox {
    /// A mailbox from a display name (optional) and an address string.
    pub fn new(name: Option<&str>, address: &str, policy: AddressPolicy) -> Result<Mailbox, AddressError> {
        Ok(Mailbox {
            name: name.map(str::to_owned).filter(|n| !n.trim().is_empty()),
            address: Address::parse(address, policy)?,
        })
    }

    /// A mailbox from a display name and an address already parsed.
    pub fn with_name(name: impl Into<String>, address: Address) -> Mailbox {
        let name = name.into();
        Mailbox {
            name: (!name.trim().is_empty()).then_some(name),
            address,
        }
    }
}

impl From<Address> for Mailbox {
    /// A mailbox without display name.
    fn from(address: Address) -> Mailbox {
        Mailbox { name: None, address }
    }
}

/// The recipients each once: local parts compared exactly, domains without
/// regard to case; first occurrence kept, order preserved.
pub(crate) fn unique_recipients<'a>(addresses: impl IntoIterator<Item = &'a Address>) -> Vec<Address> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for a in addresses {
        if seen.insert((a.local_part(), a.domain().to_lowercase())) {
            out.push(a.clone());
        }
    }
    out
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
                assert_eq!(a.to_smtp(), smtp, "{input} {policy:?}");
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
            assert_eq!(a.to_smtp(), smtp);
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
