//! The SMTP URL form of settings:
//!
//! ```text
//! smtp://[user[:password]@]host[:port][?tls=starttls|starttls-opportunistic|none&helo=NAME&timeout=SECS&proxy=PROXY&from=ADDR&system_roots=true]
//! smtps://[user[:password]@]host[:port][?helo=…&timeout=…&proxy=…&from=…&system_roots=true]
//! ```
//!
//! and, for development and tests (see [`crate::dev`]),
//!
//! ```text
//! file:///absolute/dir?from=ADDR
//! memory://inbox-name?from=ADDR
//! ```
//!
//! Connection routing parameters (both schemes): `backup=HOST[:PORT]`
//! (repeatable, or comma-separated; tried in order when the primary cannot
//! be reached), `primary_retry_after=SECS`, `source_address=IP` and
//! `connect_attempt_delay=SECS` (see [`SmtpSettings::backup_relays`] and
//! the others).
//!
//! `smtp://` means STARTTLS (required) unless `tls=` says otherwise;
//! `smtps://` means implicit TLS. User name and password are
//! percent-decoded. [`SmtpUrl`]'s `Display` never shows the password.
//! `system_roots=true` trusts the operating system's certificate store too
//! (feature `system-roots`; see [`SmtpSettingsBuilder::system_roots`]).
//!
//! A client certificate has no place in a URL: its private key is a secret,
//! and URLs end up in logs, shell history and process lists. Parameters
//! that try (`client_cert`, `client_certificate`, `client_key`, `cert`,
//! `key`) are refused with a `url` field error that does not repeat them,
//! and settings with a client certificate are written without it (the URL
//! of such settings reads back without one). DKIM signing likewise: its
//! private key has no place in a URL, so every `dkim` parameter (`dkim`,
//! `dkim_key`, `dkim_private_key`, `dkim_domain`, `dkim_selector`, …) is
//! refused the same way, and the URL of settings that sign is written
//! without their DKIM settings.
//!
//! OAuth2 has no place in a URL either: neither an access token, nor a
//! refresh token, nor the client secret, nor the public half of OAuth2
//! sign-in (token endpoint, client id), which is of no use without them.
//! Parameters that try (`oauth2`, `refresh_token`, `access_token`,
//! `token`, `client_secret`, `client_id`, `token_url`) are refused with a
//! `url` field error that does not repeat them; settings with OAuth2
//! sign-in are written without any credentials (the URL reads back without
//! AUTH).
//!
//! `proxy=` names a [`Proxy`](super::Proxy) (feature `proxy`):
//!
//! ```text
//! proxy=socks5://[user:password@]host[:port]     SOCKS5, port 1080 by default (socks5h:// is read alike)
//! proxy=http://[user:password@]host:port          HTTP CONNECT, port required
//! ```
//!
//! The whole value is one query parameter, percent-decoded once (so a `&`,
//! `#` or `%` in it is written `%26`, `%23`, `%25`); the proxy's user name
//! and password inside it are percent-decoded once more (relaymail writes a
//! `%40` in a proxy password as `%2540`). The relay's host name is always
//! resolved by the proxy. As for the relay, `Display` shows the proxy
//! password as `***`, and no error quotes any part of the `proxy=` value.

use std::fmt;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::{
    Auth, FieldError, Proxy, ProxyKind, SettingsErrors, SmtpSettings, SmtpSettingsBuilder, TlsMode,
    MAX_TIMEOUT,
};
use crate::dev::Destination;
use crate::proto::auth::Credential;

fn percent_decode(field: &'static str, s: &str) -> Result<String, FieldError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| FieldError::new(field, "a '%' is not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| FieldError::new(field, "percent-decoding gives invalid UTF-8"))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether text of the user name or password may have been taken for the
/// host, port or query: an unencoded `?` (or `#`, `/`) in the password ends
/// the authority early, so the `@` that should close the user information
/// turns up in the query, or the user name and the start of the password
/// look like `host:port` with a port that is not a number.
fn misplaced_userinfo(authority: &str, query: Option<&str>) -> bool {
    if authority.contains('@') {
        return false;
    }
    let bad_port = !authority.starts_with('[')
        && authority
            .split_once(':')
            .is_some_and(|(_, port)| !port.bytes().all(|b| b.is_ascii_digit()));
    // In a well-formed URL an '@' after the '?' can only be in a sender
    // address or a proxy's user information.
    let stray_at = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.contains('@') && !pair.starts_with("from=") && !pair.starts_with("proxy="))
    });
    bad_port || stray_at
}

impl SmtpSettingsBuilder {
    /// Reads an SMTP URL into a builder:
    /// `smtp[s]://[user:password@]host[:port][?tls=starttls|starttls-opportunistic|none&helo=NAME&timeout=SECS&proxy=PROXY&from=ADDR]`
    /// (`smtp://` is STARTTLS unless `tls=` says otherwise, `smtps://` is
    /// implicit TLS; user and password percent-decoded). Set anything else
    /// (sender, roots …) on it, then [`build`](Self::build). Every problem
    /// is reported at once, by field.
    ///
    /// `proxy=` names a [`Proxy`]: `socks5://[user:password@]host[:port]`
    /// (port 1080 by default; `socks5h://` is read alike: the relay's name
    /// is always resolved by the proxy) or `http://[user:password@]host:port`
    /// (HTTP CONNECT), e.g. `proxy=socks5://proxy.internal:1080`. The value
    /// is one query parameter, percent-decoded once (a `&`, `#` or `%` in it
    /// is written `%26`, `%23`, `%25`); the proxy's user name and password
    /// in it are percent-decoded once more. [`SmtpUrl`]'s `Display` shows
    /// the proxy's password as `***`, and no error quotes the value.
    pub fn from_url(url: &str) -> Result<SmtpSettingsBuilder, SettingsErrors> {
        let mut errors = Vec::new();
        let url = url.trim();
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => {
                return Err(SettingsErrors(vec![FieldError::new(
                    "url",
                    "not an SMTP URL: it should start with smtp:// or smtps://",
                )]))
            }
        };
        if scheme == "file" || scheme == "memory" {
            return local_from_url(&scheme, rest);
        }
        let mut tls = match scheme.as_str() {
            "smtp" => TlsMode::StartTls,
            "smtps" => TlsMode::Implicit,
            other => {
                errors.push(FieldError::new(
                    "url",
                    format!("unknown scheme {other:?}: use smtp or smtps (or file or memory in development)"),
                ));
                TlsMode::StartTls
            }
        };
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if misplaced_userinfo(authority, query) {
            // Part of the user name or password ended up where the host,
            // port or query should be: say so without showing any of it.
            return Err(SettingsErrors(vec![FieldError::new(
                "url",
                "the host and port cannot be told apart from the user name and password: \
                 percent-encode any '?', '#', '/' or '@' in them (%3F, %23, %2F, %40)",
            )]));
        }
        if authority.contains('/') || authority.contains('#') {
            errors.push(FieldError::new("url", "an SMTP URL has no path or fragment"));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut b = SmtpSettings::builder();
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, after)) => (format!("[{h}]"), after.strip_prefix(':')),
                None => {
                    errors.push(FieldError::new(
                        "host",
                        "an IPv6 address in brackets is not closed",
                    ));
                    (String::new(), None)
                }
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (hostport.to_owned(), None),
            }
        };
        // Checked here, without repeating the text: a malformed URL can put
        // part of the password where the host or port should be.
        if super::validate_host(&host).is_err() {
            errors.push(FieldError::new(
                "host",
                "the URL holds no valid host name or IP address",
            ));
        }
        b = b.host(host);
        if let Some(p) = port {
            match p.parse::<u16>() {
                Ok(p) if p > 0 => b = b.port(u32::from(p)),
                _ => errors.push(FieldError::new(
                    "port",
                    "the URL's port is not a number from 1 to 65535",
                )),
            }
        }
        if let Some(info) = userinfo {
            let (user, password) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            match percent_decode("username", user) {
                Ok(user) => match password.map(|p| percent_decode("password", p)) {
                    Some(Ok(password)) => b = b.credentials(user, password),
                    Some(Err(e)) => errors.push(e),
                    None => errors.push(FieldError::new(
                        "password",
                        "a user name without a password; give user:password (percent-encoded)",
                    )),
                },
                Err(e) => errors.push(e),
            }
        }
        let mut backups: Vec<String> = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = match percent_decode("url", raw) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match key {
                "tls" => match (scheme.as_str(), value.parse::<TlsMode>().ok()) {
                    (_, None) => errors.push(FieldError::new(
                        "tls",
                        "unknown TLS mode: use none, starttls or starttls-opportunistic",
                    )),
                    ("smtps", Some(TlsMode::Implicit)) => {}
                    ("smtps", Some(_)) => errors.push(FieldError::new(
                        "tls",
                        "smtps:// is implicit TLS; use smtp:// for other modes",
                    )),
                    (_, Some(TlsMode::Implicit)) => {
                        errors.push(FieldError::new("tls", "for implicit TLS use the smtps:// scheme"))
                    }
                    (_, Some(mode)) => tls = mode,
                },
                "helo" => b = b.helo_name(value),
                "timeout" => match value.parse::<f64>() {
                    Ok(secs) if secs > 0.0 && secs.is_finite() && secs <= MAX_TIMEOUT.as_secs_f64() => {
                        b = b.timeout(Duration::from_secs_f64(secs))
                    }
                    _ => errors.push(FieldError::new(
                        "timeout",
                        format!(
                            "the timeout is not a number of seconds between 0 and {}",
                            MAX_TIMEOUT.as_secs()
                        ),
                    )),
                },
                "from" => b = b.sender(value),
                "backup" => backups.extend(value.split(',').map(str::to_owned)),
                "source_address" => match value.parse::<std::net::IpAddr>() {
                    Ok(ip) => b = b.source_address(ip),
                    Err(_) => errors.push(FieldError::new(
                        "source_address",
                        format!("{value:?} is not an IP address"),
                    )),
                },
                "primary_retry_after" | "connect_attempt_delay" => match value.parse::<f64>() {
                    Ok(secs) if secs > 0.0 && secs.is_finite() && secs <= MAX_TIMEOUT.as_secs_f64() => {
                        let d = Duration::from_secs_f64(secs);
                        b = if key == "primary_retry_after" {
                            b.primary_retry_after(d)
                        } else {
                            b.connect_attempt_delay(d)
                        };
                    }
                    _ => errors.push(FieldError::new(
                        if key == "primary_retry_after" {
                            "primary_retry_after"
                        } else {
                            "connect_attempt_delay"
                        },
                        "not a number of seconds",
                    )),
                },
                "system_roots" => match value.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => b = b.system_roots(true),
                    "false" | "0" | "no" | "off" => b = b.system_roots(false),
                    _ => errors.push(FieldError::new(
                        "system_roots",
                        "system_roots is true or false",
                    )),
                },
                "client_cert" | "client_certificate" | "client_key" | "cert" | "key" => {
                    errors.push(FieldError::new(
                        "url",
                        "a client certificate and its private key do not belong in a URL (URLs end up in logs and shell history): set them with client_certificate_pem, or store the settings sealed",
                    ))
                }
                k if k == "dkim" || k.starts_with("dkim_") || k.starts_with("dkim-") => errors.push(FieldError::new(
                    "url",
                    "DKIM signing is not set in a URL: its private key does not belong in one (URLs end up in logs and shell history); set it with SmtpSettingsBuilder::dkim, or store the settings sealed",
                )),
                "oauth2" | "refresh_token" | "access_token" | "token" | "client_secret" | "client_id"
                | "token_url" => errors.push(FieldError::new(
                    "url",
                    "OAuth2 sign-in does not belong in a URL (its tokens and client secret are secrets, and URLs end up in logs and shell history): set it with SmtpSettingsBuilder::oauth2, or store the settings sealed",
                )),
                "proxy" => match proxy_from_url(&value) {
                    Ok(proxy) => b = b.proxy(proxy),
                    Err(more) => errors.extend(more),
                },
                _ => errors.push(FieldError::new(
                    "url",
                    "unknown parameter: use tls, helo, timeout, from, proxy, system_roots, backup, source_address, primary_retry_after or connect_attempt_delay",
                )),
            }
        }
        b = b.tls(tls);
        if !backups.is_empty() {
            b = b.backup_relays(backups);
        }
        if errors.is_empty() {
            Ok(b)
        } else {
            Err(SettingsErrors(errors))
        }
    }
}

/// The `proxy=` value (already percent-decoded once): see the module docs.
/// No error quotes any part of it: it may hold a password.
fn proxy_from_url(value: &str) -> Result<Proxy, Vec<FieldError>> {
    let not_a_proxy = || {
        vec![FieldError::new(
            "proxy",
            "not a proxy URL: use socks5://host:port or http://host:port",
        )]
    };
    let Some((scheme, rest)) = value.trim().split_once("://") else {
        return Err(not_a_proxy());
    };
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "socks5" | "socks5h" => ProxyKind::Socks5,
        "http" => ProxyKind::HttpConnect,
        "https" => {
            return Err(vec![FieldError::new(
                "proxy",
                "a proxy reached over TLS (https://) is not supported: use http:// (the relay's own TLS runs inside the tunnel)",
            )])
        }
        "socks4" | "socks4a" => {
            return Err(vec![FieldError::new(
                "proxy",
                "SOCKS4 is not supported: use socks5://",
            )])
        }
        _ => return Err(not_a_proxy()),
    };
    let mut errors = Vec::new();
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    if hostport.contains(['/', '?', '#']) {
        return Err(vec![FieldError::new(
            "proxy",
            "a proxy URL has no path, query or fragment: percent-encode any '?', '#', '/' or '@' in the proxy's user name and password",
        )]);
    }
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, after)) if after.is_empty() || after.starts_with(':') => {
                (h.to_owned(), after.strip_prefix(':'))
            }
            _ => (String::new(), None),
        },
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        },
    };
    if super::validate_host(&host).is_err() {
        errors.push(FieldError::new(
            "proxy_host",
            "the proxy URL holds no valid host name or IP address",
        ));
    }
    let port = match (port, kind) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                errors.push(FieldError::new(
                    "proxy_port",
                    "the proxy URL's port is not a number from 1 to 65535",
                ));
                0
            }
        },
        (None, ProxyKind::Socks5) => SOCKS5_PORT,
        (None, _) => {
            errors.push(FieldError::new(
                "proxy_port",
                "give the HTTP proxy's port, as in http://host:3128",
            ));
            0
        }
    };
    let mut proxy = Proxy::new(kind, host, port);
    if let Some(info) = userinfo {
        match info.split_once(':') {
            None => errors.push(FieldError::new(
                "proxy_password",
                "a proxy user name without a password; give user:password (percent-encoded)",
            )),
            Some((user, password)) => match (
                percent_decode("proxy_username", user),
                percent_decode("proxy_password", password),
            ) {
                (Ok(user), Ok(password)) => proxy = proxy.with_credentials(user, password),
                (user, password) => errors.extend(user.err().into_iter().chain(password.err())),
            },
        }
    }
    if errors.is_empty() {
        Ok(proxy)
    } else {
        Err(errors)
    }
}

/// The usual SOCKS port (RFC 1928 §3), the default of `socks5://` URLs.
const SOCKS5_PORT: u16 = 1080;

/// A query value, readable: what a URL's query allows as it is stays as it
/// is (`:`, `/`, `@`, `*` and brackets included), the rest is
/// percent-encoded (`%`, `&`, `#`, `+`, `=`, spaces, non-ASCII …).
fn percent_encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/@[]*".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `file:///dir?from=…` and `memory://name?from=…` (see [`crate::dev`]).
fn local_from_url(scheme: &str, rest: &str) -> Result<SmtpSettingsBuilder, SettingsErrors> {
    let mut errors = Vec::new();
    let (place, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let mut b = SmtpSettings::builder();
    if place.contains('@') {
        // A user name and password have no place here; the text is not
        // echoed (it may be one).
        return Err(SettingsErrors(vec![FieldError::new(
            "url",
            format!("a {scheme}:// URL has no user name or password: write an '@' in a name as %40"),
        )]));
    }
    match percent_decode("url", place) {
        Ok(place) => match Destination::from_url(&format!("{scheme}://{place}")) {
            Ok(d) => b = b.destination(d),
            Err(why) => errors.push(FieldError::new("destination", why)),
        },
        Err(e) => errors.push(e),
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        match (key, percent_decode("url", raw)) {
            ("from", Ok(value)) => b = b.sender(value),
            (_, Err(e)) => errors.push(e),
            _ => errors.push(FieldError::new(
                "url",
                format!("unknown parameter: a {scheme}:// URL takes only from"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(b)
    } else {
        Err(SettingsErrors(errors))
    }
}

impl SmtpSettings {
    /// Reads an SMTP URL and builds the settings (the URL must carry
    /// `from=`; otherwise use [`SmtpSettingsBuilder::from_url`] and set the
    /// sender).
    pub fn from_url(url: &str) -> Result<SmtpSettings, SettingsErrors> {
        SmtpSettingsBuilder::from_url(url)?.build()
    }

    /// The settings as an SMTP URL; its `Display` shows the password (and
    /// a proxy's password) as `***`. A client certificate is not part of
    /// it: a URL is no place for its private key (see
    /// [`SmtpSettingsBuilder::client_certificate_pem`]).
    pub fn url(&self) -> SmtpUrl<'_> {
        SmtpUrl(self)
    }
}

/// Displays settings as an SMTP URL, password redacted. See
/// [`SmtpSettings::url`].
#[derive(Clone, Copy, Debug)]
pub struct SmtpUrl<'a>(&'a SmtpSettings);

impl SmtpUrl<'_> {
    /// The URL with the password (and a proxy's password) in it, for
    /// storing where secrets belong.
    pub fn expose_password(&self) -> String {
        self.render(true)
    }

    fn render(&self, with_password: bool) -> String {
        let s = self.0;
        match &s.destination {
            Destination::Relay => {}
            Destination::File(dir) => {
                let path: Vec<String> = dir.to_string_lossy().split('/').map(percent_encode).collect();
                return format!(
                    "file://{}?from={}",
                    path.join("/"),
                    percent_encode(&s.sender.address.to_string())
                );
            }
            Destination::Memory(inbox) => {
                return format!(
                    "memory://{}?from={}",
                    inbox.name(),
                    percent_encode(&s.sender.address.to_string())
                );
            }
        }
        let scheme = if s.tls == TlsMode::Implicit {
            "smtps"
        } else {
            "smtp"
        };
        let mut out = format!("{scheme}://");
        if let Auth::Credential(Credential::Password { username, password }) = &s.auth {
            out.push_str(&percent_encode(username));
            out.push(':');
            if with_password {
                out.push_str(&percent_encode(password.expose_secret()));
            } else {
                out.push_str("***");
            }
            out.push('@');
        }
        if s.host.contains(':') {
            out.push_str(&format!("[{}]", s.host));
        } else {
            out.push_str(&s.host);
        }
        out.push_str(&format!(":{}", s.port));
        let mut params = Vec::new();
        if !matches!(s.tls, TlsMode::Implicit | TlsMode::StartTls) {
            params.push(format!("tls={}", s.tls.as_str()));
        }
        if let Some(helo) = &s.helo_name {
            params.push(format!("helo={}", percent_encode(helo)));
        }
        let t = &s.timeouts;
        if [t.greeting, t.tls_handshake, t.command, t.data, t.final_reply]
            .iter()
            .all(|d| *d == t.connect)
        {
            params.push(format!("timeout={}", t.connect.as_secs_f64()));
        }
        if let Some(p) = &s.proxy {
            let mut value = format!("{}://", p.kind.as_str());
            if let Some((user, password)) = &p.credentials {
                value.push_str(&percent_encode(user));
                value.push(':');
                if with_password {
                    value.push_str(&percent_encode(password.expose_secret()));
                } else {
                    value.push_str("***");
                }
                value.push('@');
            }
            value.push_str(&p.address());
            params.push(format!("proxy={}", percent_encode_query_value(&value)));
        }
        params.push(format!("from={}", percent_encode(&s.sender.address.to_string())));
        let r = &s.route;
        for relay in &r.backups {
            params.push(format!("backup={}", percent_encode(&relay.to_string())));
        }
        if let Some(ip) = r.source_address {
            params.push(format!("source_address={}", percent_encode(&ip.to_string())));
        }
        if r.primary_retry_after != super::DEFAULT_PRIMARY_RETRY_AFTER {
            params.push(format!(
                "primary_retry_after={}",
                r.primary_retry_after.as_secs_f64()
            ));
        }
        if r.attempt_delay != super::DEFAULT_ATTEMPT_DELAY {
            params.push(format!("connect_attempt_delay={}", r.attempt_delay.as_secs_f64()));
        }
        if s.tls_options.system_roots {
            params.push("system_roots=true".to_owned());
        }
        out.push('?');
        out.push_str(&params.join("&"));
        out
    }
}

impl fmt::Display for SmtpUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routing_parameters_round_trip() {
        let s = SmtpSettings::from_url(
            "smtp://mail.example.com?backup=smtp2.example.com,[2001:db8::25]:2525&backup=10.0.0.9:26&source_address=192.0.2.10&primary_retry_after=60&connect_attempt_delay=0.1&from=a@example.com",
        )
        .expect("settings");
        let backups: Vec<String> = s.backup_relays().iter().map(ToString::to_string).collect();
        assert_eq!(
            backups,
            ["smtp2.example.com:587", "[2001:db8::25]:2525", "10.0.0.9:26"]
        );
        assert_eq!(s.source_address(), Some(std::net::IpAddr::from([192, 0, 2, 10])));
        assert_eq!(s.primary_retry_after(), Duration::from_secs(60));
        assert_eq!(s.connect_attempt_delay(), Duration::from_millis(100));
        let again = SmtpSettings::from_url(&s.url().to_string()).expect("round trip");
        assert_eq!(again.backup_relays(), s.backup_relays());
        assert_eq!(again.source_address(), s.source_address());
        assert_eq!(again.primary_retry_after(), s.primary_retry_after());
        assert_eq!(again.connect_attempt_delay(), s.connect_attempt_delay());

        let errors = SmtpSettings::from_url(
            "smtp://mail.example.com?source_address=nope&connect_attempt_delay=x&from=a@example.com",
        )
        .expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(|e| e.field()).collect();
        assert_eq!(fields, ["source_address", "connect_attempt_delay"]);
        let errors = SmtpSettings::from_url("smtp://mail.example.com?backup=bad%20host&from=a@example.com")
            .expect_err("invalid");
        assert!(errors.field("backup_relays").is_some(), "{errors}");
    }

    #[test]
    fn reads_the_common_forms() {
        let s = SmtpSettings::from_url(
            "smtps://app%40example.com:p%3Ass%40w0rd@mail.example.com?from=noreply@example.com",
        )
        .expect("settings");
        assert_eq!(
            (s.host(), s.port(), s.tls()),
            ("mail.example.com", 465, TlsMode::Implicit)
        );
        match s.auth() {
            Auth::Credential(Credential::Password { username, password }) => {
                assert_eq!(username, "app@example.com");
                assert_eq!(password.expose_secret(), "p:ss@w0rd");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.url().to_string(),
            "smtps://app%40example.com:***@mail.example.com:465?from=noreply%40example.com"
        );
        assert_eq!(
            s.url().expose_password(),
            "smtps://app%40example.com:p%3Ass%40w0rd@mail.example.com:465?from=noreply%40example.com"
        );

        let s = SmtpSettings::from_url(
            "smtp://[2001:db8::25]:2525?tls=starttls-opportunistic&helo=app.example.com&timeout=7.5&from=a@example.com",
        )
        .expect("settings");
        assert_eq!(
            (s.host(), s.port(), s.tls()),
            ("2001:db8::25", 2525, TlsMode::StartTlsOpportunistic)
        );
        assert_eq!(s.helo_name(), Some("app.example.com"));
        assert_eq!(s.timeouts().command, Duration::from_millis(7500));
        let s =
            SmtpSettings::from_url("smtp://relay.internal?tls=none&from=a@example.com").expect("settings");
        assert_eq!((s.port(), s.tls()), (25, TlsMode::None));
    }

    #[test]
    fn field_errors_all_at_once() {
        let e =
            SmtpSettings::from_url("smtp://user@:99999?tls=bogus&timeout=-1&colour=blue").expect_err("bad");
        let fields: Vec<&str> = e.iter().map(|f| f.field()).collect();
        for f in ["password", "tls", "timeout", "url"] {
            assert!(fields.contains(&f), "{f} in {fields:?}");
        }
        let e = SmtpSettings::from_url("smtps://mail.example.com?tls=none&from=a@example.com")
            .expect_err("conflict");
        assert!(e.field("tls").is_some());
        let e = SmtpSettings::from_url("mail.example.com:587").expect_err("no scheme");
        assert!(e.field("url").is_some());
        // Port and host are checked by build(), with the other fields.
        let e = SmtpSettings::from_url("smtp://:70000?from=a@example.com").expect_err("bad");
        assert!(e.field("host").is_some() && e.field("port").is_some(), "{e}");
    }

    #[test]
    fn display_never_shows_the_password() {
        let s = SmtpSettings::from_url("smtp://u:hunter2-secret@mail.example.com?from=a@example.com")
            .expect("ok");
        assert!(!s.url().to_string().contains("hunter2"));
        assert!(!format!("{:?}", s.url()).contains("hunter2"));
    }

    /// Every window of three characters of `secret`.
    fn pieces(secret: &str) -> Vec<String> {
        let chars: Vec<char> = secret.chars().collect();
        chars.windows(3).map(|w| w.iter().collect()).collect()
    }

    #[test]
    fn errors_never_show_the_user_information() {
        // (URL, its user information as the person meant it)
        let cases = [
            (
                "smtp://Zkqv:Xy7?Qz#Wv@Rt/Pk@mail.example.com?from=a@example.com",
                "Zkqv:Xy7?Qz#Wv@Rt/Pk",
            ),
            (
                "smtp://Zkqv:Xy7?Qz#Wv@Rt/Pk@mail.example.com",
                "Zkqv:Xy7?Qz#Wv@Rt/Pk",
            ),
            (
                "smtp://Zkqv:Xy7?Qz@mail.example.com:2525?from=a@example.com",
                "Zkqv:Xy7?Qz",
            ),
            (
                "smtp://Zkqv:Xy7#Qz@mail.example.com:2525?tls=none&from=a@example.com",
                "Zkqv:Xy7#Qz",
            ),
            (
                "smtp://Zkqv:Xy7@Qz@mail.example.com?tls=bogus&from=a@example.com",
                "Zkqv:Xy7@Qz",
            ),
            ("smtps://Zk@qv:Xy7?Qz@mail.example.com", "Zk@qv:Xy7?Qz"),
            // An `@` and a `?` in the password: the parser reads "Zk" as the
            // password and "Xy7Wv@mail…" as the query.
            (
                "smtp://Qkzv:Zk@Rw?Xy7Wv@mail.example.com?from=a@example.com",
                "Qkzv:Zk@Rw?Xy7Wv",
            ),
            (
                "smtp://Zkqv:Xy7?tls=Qz#Wv@mail.example.com&from=a@example.com",
                "Zkqv:Xy7?tls=Qz#Wv",
            ),
            (
                "smtp://Zkqv:Xy7?Qz#Wv&helo=Rt/Pk@mail.example.com?timeout=-1",
                "Zkqv:Xy7?Qz#Wv&helo=Rt/Pk",
            ),
            (
                "smtp://Zkqv:123?Qz#Wv&helo=Rt/Pk@mail.example.com",
                "Zkqv:123?Qz#Wv&helo=Rt/Pk",
            ),
            ("smtp://Zkqv:Xy7?Qz#Wv@Rt/Pk", "Zkqv:Xy7?Qz#Wv@Rt/Pk"),
            ("smtp://Zkqv:Xy7?Qz#Wv@Rt/Pk@", "Zkqv:Xy7?Qz#Wv@Rt/Pk"),
            (
                "smtp://Zkqv:Xy7 Qz?Wv@ex ample?from=a@example.com",
                "Zkqv:Xy7 Qz?Wv",
            ),
        ];
        for (url, userinfo) in cases {
            let mut shown = Vec::new();
            if let Err(e) = SmtpSettingsBuilder::from_url(url) {
                shown.push(format!("{e}\n{e:?}"));
            }
            let e = SmtpSettings::from_url(url).expect_err(url);
            shown.push(format!("{e}\n{e:?}"));
            for text in &shown {
                for piece in pieces(userinfo) {
                    assert!(!text.contains(&piece), "{url}: {piece:?} in {text}");
                }
            }
        }
        // The person learns what to do.
        let e = SmtpSettings::from_url("smtp://Zkqv:Xy7?Qz@mail.example.com:2525?from=a@example.com")
            .expect_err("unencoded '?'");
        assert!(
            e.field("url")
                .is_some_and(|f| f.message().contains("percent-encode")),
            "{e}"
        );
        // The same password percent-encoded is read as it was meant.
        let s =
            SmtpSettings::from_url("smtp://Zkqv:Xy7%3FQz%23Wv%40Rt%2FPk@mail.example.com?from=a@example.com")
                .expect("encoded");
        match s.auth() {
            Auth::Credential(Credential::Password { password, .. }) => {
                assert_eq!(password.expose_secret(), "Xy7?Qz#Wv@Rt/Pk")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn system_roots_in_the_url() {
        let url = "smtps://mail.example.com?from=a@example.com&system_roots=true";
        let parsed = SmtpSettingsBuilder::from_url(url).expect("parses");
        if cfg!(feature = "system-roots") {
            let s = parsed.build().expect("settings");
            assert!(s.tls_options().uses_system_roots());
            assert_eq!(
                s.url().to_string(),
                "smtps://mail.example.com:465?from=a%40example.com&system_roots=true"
            );
            let again = SmtpSettings::from_url(&s.url().to_string()).expect("round trip");
            assert!(again.tls_options().uses_system_roots());
        } else {
            assert!(parsed
                .build()
                .expect_err("feature")
                .field("system_roots")
                .is_some());
        }
        let s = SmtpSettings::from_url("smtps://mail.example.com?from=a@example.com&system_roots=false")
            .expect("settings");
        assert!(!s.tls_options().uses_system_roots());
        assert!(!s.url().to_string().contains("system_roots"));
        let e = SmtpSettings::from_url("smtps://mail.example.com?from=a@example.com&system_roots=maybe")
            .expect_err("bad value");
        assert!(e.field("system_roots").is_some(), "{e}");
    }

    #[test]
    fn a_client_key_has_no_place_in_a_url() {
        let key = "MHcCAQEEIKey-Material-Never-Echoed";
        for param in ["client_key", "client_cert", "client_certificate", "key", "cert"] {
            let url = format!("smtps://mail.example.com?from=a@example.com&{param}={key}");
            let e = SmtpSettings::from_url(&url).expect_err(param);
            let message = e.field("url").expect("url").message();
            assert!(message.contains("do not belong in a URL"), "{param}: {message}");
            assert!(!format!("{e}{e:?}").contains("Key-Material"), "{param}: {e}");
        }
        // Settings with a client certificate are written without it.
        let s = SmtpSettings::builder()
            .host("mail.example.com")
            .sender("a@example.com")
            .client_certificate_pem(
                include_str!("testdata/ec.crt"),
                include_str!("testdata/ec-sec1.key"),
            )
            .build()
            .expect("settings");
        let url = s.url().expose_password();
        assert_eq!(url, "smtp://mail.example.com:587?from=a%40example.com");
        assert!(SmtpSettings::from_url(&url)
            .expect("reads back")
            .tls_options()
            .client_identity()
            .is_none());
    }

    #[test]
    fn dkim_settings_have_no_place_in_a_url() {
        let key = "MC4CAQAwBQYDK2VwBCIEIKey-Material-Never-Echoed";
        for param in [
            "dkim",
            "dkim_key",
            "dkim_private_key",
            "dkim_domain",
            "dkim_selector",
            "dkim-key",
        ] {
            let url = format!("smtps://mail.example.com?from=a@example.com&{param}={key}");
            let e = SmtpSettings::from_url(&url).expect_err(param);
            let message = e.field("url").expect("url").message();
            assert!(
                message.contains("DKIM signing is not set in a URL"),
                "{param}: {message}"
            );
            assert!(!format!("{e}{e:?}").contains("Key-Material"), "{param}: {e}");
        }
        // Settings that sign are written without it.
        #[cfg(feature = "dkim")]
        {
            let s = SmtpSettings::builder()
                .host("mail.example.com")
                .sender("a@example.com")
                .dkim(crate::dkim::DkimConfig::new(
                    "example.com",
                    "s1",
                    include_str!("../../tests/dkim/keys/ed25519.pem"),
                ))
                .build()
                .expect("settings");
            let url = s.url().expose_password();
            assert_eq!(url, "smtp://mail.example.com:587?from=a%40example.com");
            assert!(SmtpSettings::from_url(&url).expect("reads back").dkim().is_none());
        }
    }

    fn proxy_of(url: &str) -> Proxy {
        SmtpSettingsBuilder::from_url(url)
            .expect("parses")
            .proxy
            .expect("a proxy")
    }

    #[test]
    fn reads_proxies() {
        let p = proxy_of("smtp://mail.example.com?proxy=socks5://proxy.internal&from=a@example.com");
        assert_eq!(
            (p.kind(), p.host(), p.port(), p.username()),
            (ProxyKind::Socks5, "proxy.internal", 1080, None)
        );
        let p = proxy_of("smtps://mail.example.com?proxy=SOCKS5H://bob:p%2540ss%253Aw@[2001:db8::8]:9050");
        assert_eq!(
            (p.kind(), p.host(), p.port()),
            (ProxyKind::Socks5, "2001:db8::8", 9050)
        );
        assert_eq!(p.username(), Some("bob"));
        assert_eq!(p.password().map(|s| s.expose_secret()), Some("p@ss:w"));
        // An '@' and ':' in the password unencoded but for the outer layer.
        let p = proxy_of("smtp://mail.example.com?proxy=http://bob:p%40ss@proxy.example:3128");
        assert_eq!((p.kind(), p.port()), (ProxyKind::HttpConnect, 3128));
        assert_eq!(p.password().map(|s| s.expose_secret()), Some("p@ss"));
        // The whole value percent-encoded, as some tools write query values.
        let p = proxy_of("smtp://mail.example.com?proxy=http%3A%2F%2Fproxy.example%3A8080%2F");
        assert_eq!((p.host(), p.port()), ("proxy.example", 8080));
    }

    #[test]
    fn proxy_errors_by_field_and_never_quoting_the_value() {
        for (value, field) in [
            ("proxy.example:1080", "proxy"),
            ("https://proxy.example:443", "proxy"),
            ("socks4://proxy.example:1080", "proxy"),
            ("ftp://proxy.example:21", "proxy"),
            ("http://proxy.example", "proxy_port"),
            ("http://proxy.example:0", "proxy_port"),
            ("socks5://proxy.example:99999", "proxy_port"),
            ("socks5://proxy.example:Qz9k", "proxy_port"),
            ("socks5://pr oxy:1080", "proxy_host"),
            ("socks5://[::1:1080", "proxy_host"),
            ("socks5://:1080", "proxy_host"),
            ("socks5://Zkqv@proxy.example:1080", "proxy_password"),
            ("socks5://Zkqv:Xy7%25ZZQz@proxy.example:1080", "proxy_password"),
            ("socks5://Zk%25ZZqv:Xy7Qz@proxy.example:1080", "proxy_username"),
            ("socks5://Zkqv:Xy7%ZZQz@proxy.example:1080", "url"),
            ("socks5://proxy.example:1080/path", "proxy"),
        ] {
            let url = format!("smtp://mail.example.com?proxy={value}&from=a@example.com");
            let e = SmtpSettingsBuilder::from_url(&url).expect_err(value);
            assert!(e.field(field).is_some(), "{value}: {e}");
            let text = format!("{e}\n{e:?}");
            for piece in ["Zkqv", "Xy7", "Qz", "proxy.example", "pr oxy", "99999"] {
                assert!(!text.contains(piece), "{value}: {piece:?} in {text}");
            }
        }
        let e = SmtpSettingsBuilder::from_url("smtp://mail.example.com?proxy=https://p.example:443")
            .expect_err("https");
        assert!(e.to_string().contains("use http://"), "{e}");
    }

    #[cfg(feature = "proxy")]
    #[test]
    fn proxies_round_trip_and_display_hides_their_password() {
        let s = SmtpSettings::builder()
            .host("mail.example.com")
            .sender("a@example.com")
            .credentials("relay-user", "Relay-Pw-1")
            .proxy(Proxy::socks5("proxy.example", 1080).with_credentials("b@b", "Pr0xy%&#@:pw/?"))
            .build()
            .expect("settings");
        let shown = s.url().to_string();
        assert_eq!(
            shown,
            "smtp://relay-user:***@mail.example.com:587?proxy=socks5://b%2540b:***@proxy.example:1080&from=a%40example.com"
        );
        assert!(!format!("{shown}{:?}", s.url()).contains("Pr0xy"));
        let again = SmtpSettings::from_url(&s.url().expose_password()).expect("parses");
        assert_eq!(again.url().expose_password(), s.url().expose_password());
        assert_eq!(format!("{again:?}"), format!("{s:?}"));
        let p = again.proxy().expect("proxy");
        assert_eq!(p.password().map(|s| s.expose_secret()), Some("Pr0xy%&#@:pw/?"));
        let http = s
            .to_builder()
            .proxy(Proxy::http_connect("2001:db8::3", 3128))
            .credentials("relay-user", "Relay-Pw-1")
            .build()
            .expect("settings");
        assert!(
            http.url()
                .to_string()
                .contains("?proxy=http://[2001:db8::3]:3128&"),
            "{}",
            http.url()
        );
        let again = SmtpSettings::from_url(&http.url().expose_password()).expect("parses");
        assert_eq!(format!("{again:?}"), format!("{http:?}"));
    }

    proptest! {
        #[test]
        fn parse_display_round_trips(
            host in "[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z][a-z0-9]{0,8}){0,3}",
            port in 1u32..=65535,
            tls in 0usize..4,
            user in proptest::option::of("[ -~]{1,20}"),
            password in "[ -~]{1,20}",
            helo in proptest::option::of("[a-z]{1,8}\\.example\\.com"),
            timeout in proptest::option::of(1u64..600),
        ) {
            let mode = [TlsMode::None, TlsMode::Implicit, TlsMode::StartTls, TlsMode::StartTlsOpportunistic][tls];
            let mut b = SmtpSettings::builder().host(host).port(port).tls(mode).sender("app@example.com");
            if let Some(u) = &user {
                b = b.credentials(u.clone(), password.clone());
            }
            if let Some(h) = helo {
                b = b.helo_name(h);
            }
            if let Some(t) = timeout {
                b = b.timeout(Duration::from_secs(t));
            }
            let s = b.build().expect("valid");
            let again = SmtpSettings::from_url(&s.url().expose_password()).expect("parses");
            prop_assert_eq!(again.url().expose_password(), s.url().expose_password());
            prop_assert_eq!(format!("{:?}", again), format!("{:?}", s));
        }
    }
}
