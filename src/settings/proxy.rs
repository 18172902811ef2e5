//! [`Proxy`]: reaching the relay through a SOCKS5 or HTTP CONNECT proxy
//! (the rules and field names are in its docs).

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use super::{FieldError, SmtpSettingsBuilder};
use crate::proto::grammar;

/// The protocol spoken to a [`Proxy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyKind {
    /// SOCKS5 (RFC 1928), optionally with a user name and password
    /// (RFC 1929). The relay's host name is resolved by the proxy.
    Socks5,
    /// An HTTP proxy's `CONNECT` tunnel (RFC 9110 §9.3.6), optionally with
    /// `Proxy-Authorization: Basic` credentials. The connection to the proxy
    /// itself is plain TCP (the credentials travel in clear text to it); the
    /// relay's TLS runs inside the tunnel.
    HttpConnect,
}

impl ProxyKind {
    /// The URL scheme: `socks5` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Socks5 => "socks5",
            ProxyKind::HttpConnect => "http",
        }
    }

    /// The name for people: `SOCKS5` or `HTTP CONNECT`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ProxyKind::Socks5 => "SOCKS5",
            ProxyKind::HttpConnect => "HTTP CONNECT",
        }
    }
}

impl fmt::Display for ProxyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A proxy kind name that [`ProxyKind::from_str`](std::str::FromStr::from_str)
/// does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown proxy kind: use socks5 or http")]
#[non_exhaustive]
pub struct UnknownProxyKind;

impl std::str::FromStr for ProxyKind {
    type Err = UnknownProxyKind;

    /// Parses `socks5` (also `socks5h`: the name is always resolved by the
    /// proxy) and `http` (also `http-connect`), ignoring ASCII case.
    fn from_str(name: &str) -> Result<ProxyKind, UnknownProxyKind> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "socks5" | "socks5h" => ProxyKind::Socks5,
            "http" | "http-connect" => ProxyKind::HttpConnect,
            _ => return Err(UnknownProxyKind),
        })
    }
}

/// A proxy to reach the relay through (feature `proxy`).
///
/// The proxy is part of the settings ([`SmtpSettingsBuilder::proxy`],
/// [`SmtpSettings::proxy`](super::SmtpSettings::proxy), the URL form's
/// `proxy=` parameter, `ProxyData` with the `serde`
/// feature) and is checked by [`build`](SmtpSettingsBuilder::build) with
/// the other fields. Its field errors are named:
///
/// | field | what is wrong |
/// |---|---|
/// | `proxy` | relaymail was built without its `proxy` feature (never a silent direct connection), or the URL form's `proxy=` value is not a proxy URL |
/// | `proxy_host` | empty, or not a host name or IP address |
/// | `proxy_port` | 0 (or, in the URL form, not a number from 1 to 65535) |
/// | `proxy_username` | empty, with control characters, over 255 bytes (SOCKS5), or with a `:` (HTTP Basic) |
/// | `proxy_password` | with control characters, empty or over 255 bytes (SOCKS5), or kept across a change of the proxy (see below) |
///
/// The proxy's password is a secret: it lives in a [`SecretString`], and no
/// `Debug`, `Display`, error, report or trace shows it. A password carried
/// over by [`SmtpSettings::to_builder`](super::SmtpSettings::to_builder)
/// (or kept by a [`SettingsUpdate`](super::SettingsUpdate)) is only kept
/// while the proxy's kind, host, port and user name stay the same;
/// otherwise `build` reports a `proxy_password` error ("enter the proxy
/// password again"). The relay's password is kept only while the proxy's
/// kind, host and port (and whether there is one) stay the same.
///
/// The relay's host **name** is sent to the proxy, which resolves it (as
/// `socks5h://` does): this machine never resolves the relay's name, so a
/// relay only the proxy's network knows is reachable, and no DNS query for
/// it leaves here. Implicit TLS and STARTTLS then run through the tunnel,
/// end to end with the relay, whose certificate is verified for the
/// relay's name (never the proxy's): the proxy sees only encrypted bytes
/// (with [`TlsMode::None`](super::TlsMode::None) it sees the whole session).
/// Connection failures on the way are at [`Stage::Proxy`](crate::Stage::Proxy).
///
/// ```
/// use relaymail::settings::Proxy;
/// use relaymail::SmtpSettings;
///
/// let settings = SmtpSettings::builder()
///     .host("smtp.example.com")
///     .sender("noreply@example.com")
///     .proxy(Proxy::socks5("proxy.internal", 1080).with_credentials("app", "proxy-pw"))
///     .build();
/// # #[cfg(feature = "proxy")] {
/// let settings = settings.unwrap();
/// let proxy = settings.proxy().unwrap();
/// assert_eq!((proxy.host(), proxy.port(), proxy.username()), ("proxy.internal", 1080, Some("app")));
/// assert!(!format!("{settings:?}").contains("proxy-pw"));
/// # }
/// ```
#[derive(Clone)]
pub struct Proxy {
    pub(crate) kind: ProxyKind,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) credentials: Option<(String, SecretString)>,
}

impl Proxy {
    /// A proxy of this kind at `host` (name or IP address) and `port`
    /// (1–65535), without credentials.
    pub fn new(kind: ProxyKind, host: impl Into<String>, port: u16) -> Proxy {
        Proxy {
            kind,
            host: host.into(),
            port,
            credentials: None,
        }
    }

    /// A SOCKS5 proxy (its usual port is 1080).
    pub fn socks5(host: impl Into<String>, port: u16) -> Proxy {
        Proxy::new(ProxyKind::Socks5, host, port)
    }

    /// An HTTP proxy, used with `CONNECT` (usual ports: 3128, 8080).
    pub fn http_connect(host: impl Into<String>, port: u16) -> Proxy {
        Proxy::new(ProxyKind::HttpConnect, host, port)
    }

    /// The same proxy with a user name and password (SOCKS5: RFC 1929, each
    /// 1–255 bytes; HTTP: `Proxy-Authorization: Basic`, no `:` in the user
    /// name).
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<SecretString>,
    ) -> Proxy {
        self.credentials = Some((username.into(), password.into()));
        self
    }

    /// The same proxy without credentials.
    pub fn without_credentials(mut self) -> Proxy {
        self.credentials = None;
        self
    }

    /// The protocol spoken to the proxy.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// The proxy's host name or IP address (in built settings: without
    /// brackets, an internationalised name as A-labels).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name given to the proxy, if any.
    pub fn username(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(user, _)| user.as_str())
    }

    /// The password given to the proxy, if any.
    pub fn password(&self) -> Option<&SecretString> {
        self.credentials.as_ref().map(|(_, password)| password)
    }

    /// `host:port`, with an IPv6 address in brackets.
    pub(crate) fn address(&self) -> String {
        host_port(&self.host, self.port)
    }

    /// Everything a kept proxy password is bound to.
    pub(crate) fn credential_destination(&self) -> Option<ProxyDestination> {
        let (username, _) = self.credentials.as_ref()?;
        Some(ProxyDestination {
            endpoint: self.endpoint(),
            username: username.clone(),
        })
    }

    /// Where connections go first: kind, host (lower case) and port.
    pub(crate) fn endpoint(&self) -> ProxyEndpoint {
        ProxyEndpoint {
            kind: self.kind,
            host: self.host.to_ascii_lowercase(),
            port: self.port,
        }
    }

    /// Checks every field (reporting to `errors`) and returns the proxy
    /// with its host normalised: trimmed, brackets removed, A-labels.
    pub(crate) fn validated(mut self, errors: &mut Vec<FieldError>) -> Proxy {
        let host = self.host.trim();
        if host.is_empty() {
            errors.push(FieldError::new("proxy_host", "the proxy host is required"));
        } else if let Err(e) = grammar::check_host(host) {
            errors.push(FieldError::new(
                "proxy_host",
                format!("{host:?} is not a valid host name or IP address: {e}"),
            ));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        self.host = grammar::to_ascii(&host).unwrap_or(host);
        if self.port == 0 {
            errors.push(FieldError::new("proxy_port", "0 is not a port: use 1 to 65535"));
        }
        if let Some((user, password)) = &self.credentials {
            if let Some(message) = check_username(self.kind, user) {
                errors.push(FieldError::new("proxy_username", message));
            }
            if let Some(message) = check_password(self.kind, password.expose_secret()) {
                errors.push(FieldError::new("proxy_password", message));
            }
        }
        if !cfg!(feature = "proxy") {
            errors.push(FieldError::new(
                "proxy",
                format!(
                    "connecting through a {} proxy needs relaymail's `proxy` feature, which this build lacks: enable it (features = [\"proxy\"]) or remove the proxy",
                    self.kind.label()
                ),
            ));
        }
        self
    }
}

/// RFC 1929 gives each of user name and password one length byte, and
/// allows no empty value.
const SOCKS5_MAX: usize = 255;

fn check_username(kind: ProxyKind, user: &str) -> Option<String> {
    if user.is_empty() {
        return Some("the proxy user name is empty".into());
    }
    if user.chars().any(char::is_control) {
        return Some("the proxy user name may not contain control characters".into());
    }
    match kind {
        ProxyKind::Socks5 if user.len() > SOCKS5_MAX => Some(format!(
            "a SOCKS5 user name is at most {SOCKS5_MAX} bytes (RFC 1929), this one has {}",
            user.len()
        )),
        // RFC 7617 §2: the user-id of Basic credentials cannot contain a colon.
        ProxyKind::HttpConnect if user.contains(':') => {
            Some("an HTTP proxy user name may not contain ':' (Basic authentication)".into())
        }
        _ => None,
    }
}

/// Never quotes the password.
fn check_password(kind: ProxyKind, password: &str) -> Option<String> {
    if password.chars().any(char::is_control) {
        return Some("the proxy password may not contain control characters".into());
    }
    match kind {
        ProxyKind::Socks5 if password.is_empty() => {
            Some("a SOCKS5 password may not be empty (RFC 1929)".into())
        }
        ProxyKind::Socks5 if password.len() > SOCKS5_MAX => Some(format!(
            "a SOCKS5 password is at most {SOCKS5_MAX} bytes (RFC 1929), this one has {}",
            password.len()
        )),
        _ => None,
    }
}

/// `host:port`, with an IPv6 address in brackets.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Where connections go first: a relay password kept across an edit is
/// refused when this changes (the proxy is part of the relay's
/// `CredentialDestination`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProxyEndpoint {
    kind: ProxyKind,
    host: String,
    port: u16,
}

/// Everything a kept proxy password is bound to: the proxy and the user
/// name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProxyDestination {
    endpoint: ProxyEndpoint,
    username: String,
}

/// The `proxy_password` field error when a kept proxy password would go to
/// a changed proxy.
pub(crate) const ENTER_PROXY_PASSWORD_AGAIN: &str =
    "enter the proxy password again: the proxy settings changed";

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Proxy");
        d.field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port);
        if let Some((user, _)) = &self.credentials {
            d.field("username", user).field("password", &"[redacted]");
        }
        d.finish()
    }
}

impl fmt::Display for Proxy {
    /// `socks5://host:port` or `http://host:port`: never the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.kind.as_str(), self.address())
    }
}

impl SmtpSettingsBuilder {
    /// Connects to the relay through this proxy (feature `proxy`; without
    /// it, [`build`](Self::build) reports a `proxy` field error rather than
    /// connecting directly). Replaces any proxy set before, and its
    /// credentials: a proxy password carried over by
    /// [`to_builder`](super::SmtpSettings::to_builder) is then no longer kept.
    pub fn proxy(mut self, proxy: Proxy) -> Self {
        self.kept_proxy_credential = None;
        self.proxy = Some(proxy);
        self
    }

    /// A direct connection to the relay (the default).
    pub fn no_proxy(mut self) -> Self {
        self.kept_proxy_credential = None;
        self.proxy = None;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SmtpSettings;

    fn base() -> SmtpSettingsBuilder {
        SmtpSettings::builder()
            .host("smtp.example.com")
            .sender("noreply@example.com")
    }

    #[test]
    fn every_proxy_problem_is_a_field_error() {
        let long = "x".repeat(256);
        let e = base()
            .proxy(Proxy::socks5("bad host!", 0).with_credentials(long.clone(), long.clone()))
            .build()
            .expect_err("invalid");
        let fields: Vec<&str> = e.iter().map(FieldError::field).collect();
        let mut expected = vec!["proxy_host", "proxy_port", "proxy_username", "proxy_password"];
        if !cfg!(feature = "proxy") {
            expected.push("proxy");
        }
        assert_eq!(fields, expected, "{e}");
        assert!(!e.to_string().contains(&long), "{e}");
        let e = base()
            .proxy(Proxy::http_connect("", 3128).with_credentials("a:b", "pw\r\nX-Evil: 1"))
            .build()
            .expect_err("invalid");
        assert!(e
            .field("proxy_host")
            .is_some_and(|f| f.message().contains("required")));
        assert!(e
            .field("proxy_username")
            .is_some_and(|f| f.message().contains("':'")));
        assert!(e
            .field("proxy_password")
            .is_some_and(|f| f.message().contains("control")));
        assert!(!e.to_string().contains("X-Evil"), "{e}");
        let e = base()
            .proxy(Proxy::socks5("proxy.example", 1080).with_credentials("", ""))
            .build()
            .expect_err("empty credentials");
        assert!(e.field("proxy_username").is_some() && e.field("proxy_password").is_some());
        // HTTP Basic allows longer values and an empty password.
        let ok = base()
            .proxy(Proxy::http_connect("proxy.example", 3128).with_credentials(long.clone(), ""))
            .build();
        assert_eq!(ok.is_ok(), cfg!(feature = "proxy"), "{ok:?}");
    }

    #[test]
    fn without_the_feature_a_proxy_is_refused_never_ignored() {
        let built = base().proxy(Proxy::socks5("proxy.example", 1080)).build();
        if cfg!(feature = "proxy") {
            let s = built.expect("valid");
            assert_eq!(s.proxy().map(Proxy::kind), Some(ProxyKind::Socks5));
        } else {
            let e = built.expect_err("no proxy feature");
            let message = e.field("proxy").expect("proxy field").message();
            assert!(message.contains("`proxy` feature"), "{message}");
        }
    }

    #[test]
    fn the_host_is_normalised_like_the_relay_host() {
        let p = Proxy::http_connect(" [::1] ", 3128).validated(&mut Vec::new());
        assert_eq!((p.host(), p.address()), ("::1", "[::1]:3128".to_owned()));
        let p = Proxy::socks5("proxy.bücher.example", 1080).validated(&mut Vec::new());
        assert_eq!(p.host(), "proxy.xn--bcher-kva.example");
        assert_eq!(p.to_string(), "socks5://proxy.xn--bcher-kva.example:1080");
    }

    #[test]
    fn the_password_is_never_shown() {
        let p = Proxy::socks5("proxy.example", 1080).with_credentials("app", "Pr0xy-Secret");
        for text in [format!("{p:?}"), format!("{p:#?}"), p.to_string()] {
            assert!(!text.contains("Pr0xy-Secret"), "{text}");
        }
        assert!(format!("{p:?}").contains("password: \"[redacted]\""));
        let s = base().proxy(p).build();
        if let Ok(s) = s {
            assert!(!format!("{s:?}").contains("Pr0xy-Secret"));
        }
    }

    #[test]
    fn kind_names() {
        for k in [ProxyKind::Socks5, ProxyKind::HttpConnect] {
            assert_eq!(k.as_str().parse(), Ok(k));
        }
        assert_eq!("SOCKS5H".parse(), Ok(ProxyKind::Socks5));
        assert_eq!("https".parse::<ProxyKind>(), Err(UnknownProxyKind));
    }
}
