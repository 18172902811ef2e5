//! Where connections go and how they are opened: backup relays, the local
//! source address, and the Happy Eyeballs attempt delay.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use super::{validate_host, FieldError, SmtpSettings, SmtpSettingsBuilder, MAX_TIMEOUT};
use crate::proto::grammar;

/// One relay: a host name or IP address and a port. The primary relay is
/// [`SmtpSettings::host`] and [`SmtpSettings::port`]; backups are listed by
/// [`SmtpSettings::backup_relays`]. `Display` writes `host:port` (an IPv6
/// address in brackets), the form [`SmtpSettingsBuilder::backup_relays`]
/// reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Relay {
    host: String,
    port: u16,
}

impl Relay {
    pub(crate) fn new(host: impl Into<String>, port: u16) -> Relay {
        Relay {
            host: host.into(),
            port,
        }
    }

    /// The host name (as A-labels) or IP address, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Reads `host`, `host:port`, `[v6]` or `[v6]:port`; without a port,
    /// `default_port`.
    fn parse(text: &str, default_port: u16) -> Result<Relay, String> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let Some((host, after)) = rest.split_once(']') else {
                return Err(format!("{text:?}: a '[' without its ']'"));
            };
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(format!("{text:?}: write host:port")),
            }
        } else if text.matches(':').count() > 1 {
            // A bare IPv6 address: no port.
            (text, None)
        } else {
            match text.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        if host.is_empty() {
            return Err("a backup relay needs a host name or IP address".to_owned());
        }
        validate_host(host)?;
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("{text:?}: {p:?} is not a port (1 to 65535)")),
            },
        };
        let host = grammar::to_ascii(host).unwrap_or_else(|_| host.to_owned());
        Ok(Relay { host, port })
    }
}

impl fmt::Display for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The default [`SmtpSettings::connect_attempt_delay`] (RFC 8305's
/// recommendation).
pub const DEFAULT_ATTEMPT_DELAY: Duration = Duration::from_millis(250);
/// The default [`SmtpSettings::primary_retry_after`].
pub const DEFAULT_PRIMARY_RETRY_AFTER: Duration = Duration::from_secs(300);

const MIN_ATTEMPT_DELAY: Duration = Duration::from_millis(10);
const MAX_ATTEMPT_DELAY: Duration = Duration::from_secs(10);

/// The validated route settings, held by [`SmtpSettings`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) backups: Vec<Relay>,
    pub(crate) primary_retry_after: Duration,
    pub(crate) source_address: Option<IpAddr>,
    pub(crate) attempt_delay: Duration,
}

impl Default for Route {
    fn default() -> Self {
        Route {
            backups: Vec::new(),
            primary_retry_after: DEFAULT_PRIMARY_RETRY_AFTER,
            source_address: None,
            attempt_delay: DEFAULT_ATTEMPT_DELAY,
        }
    }
}

/// The route settings as given to the builder, checked by `build`.
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteInput {
    backups: Vec<String>,
    primary_retry_after: Option<Duration>,
    source_address: Option<IpAddr>,
    attempt_delay: Option<Duration>,
}

impl RouteInput {
    pub(crate) fn from_route(route: &Route) -> RouteInput {
        RouteInput {
            backups: route.backups.iter().map(ToString::to_string).collect(),
            primary_retry_after: Some(route.primary_retry_after),
            source_address: route.source_address,
            attempt_delay: Some(route.attempt_delay),
        }
    }

    /// Checks every field; a problem is pushed to `errors`. `primary` is the
    /// primary relay (already validated), whose port a backup without one
    /// takes.
    pub(crate) fn validate(&self, primary: &Relay, errors: &mut Vec<FieldError>) -> Route {
        let mut backups: Vec<Relay> = Vec::with_capacity(self.backups.len());
        for text in self.backups.iter().filter(|t| !t.trim().is_empty()) {
            match Relay::parse(text, primary.port) {
                Ok(relay) if relay.same_as(primary) => errors.push(FieldError::new(
                    "backup_relays",
                    format!("{relay} is the primary relay: a backup must be another server"),
                )),
                Ok(relay) if backups.iter().any(|b| b.same_as(&relay)) => errors.push(FieldError::new(
                    "backup_relays",
                    format!("{relay} is listed twice"),
                )),
                Ok(relay) => backups.push(relay),
                Err(message) => errors.push(FieldError::new("backup_relays", message)),
            }
        }
        let primary_retry_after = self.primary_retry_after.unwrap_or(DEFAULT_PRIMARY_RETRY_AFTER);
        if primary_retry_after.is_zero() || primary_retry_after > MAX_TIMEOUT {
            errors.push(FieldError::new(
                "primary_retry_after",
                format!(
                    "the time before the primary relay is tried again must be more than 0 and at most {} s",
                    MAX_TIMEOUT.as_secs()
                ),
            ));
        }
        let attempt_delay = self.attempt_delay.unwrap_or(DEFAULT_ATTEMPT_DELAY);
        if !(MIN_ATTEMPT_DELAY..=MAX_ATTEMPT_DELAY).contains(&attempt_delay) {
            errors.push(FieldError::new(
                "connect_attempt_delay",
                format!(
                    "the delay between connection attempts must be between {} ms and {} s (RFC 8305 recommends 250 ms)",
                    MIN_ATTEMPT_DELAY.as_millis(),
                    MAX_ATTEMPT_DELAY.as_secs()
                ),
            ));
        }
        if let Some(ip) = self.source_address {
            if ip.is_unspecified() || ip.is_multicast() {
                errors.push(FieldError::new(
                    "source_address",
                    format!("{ip} cannot be a source address: use one of this machine's addresses"),
                ));
            }
        }
        Route {
            backups,
            primary_retry_after,
            source_address: self.source_address,
            attempt_delay,
        }
    }
}

impl Relay {
    fn same_as(&self, other: &Relay) -> bool {
        self.port == other.port && self.host.eq_ignore_ascii_case(&other.host)
    }
}

impl SmtpSettings {
    /// The primary relay: [`host`](SmtpSettings::host) and
    /// [`port`](SmtpSettings::port).
    pub fn primary_relay(&self) -> Relay {
        Relay::new(self.host.clone(), self.port)
    }

    /// The backup relays, in the order they are tried when the primary
    /// cannot be reached or answers 421/4yz at its greeting or EHLO
    /// (Postfix's `relayhost` list and `smtp_fallback_relay`). Each is
    /// reached with the same TLS mode, trust, credentials and timeouts as
    /// the primary, and its certificate is verified for its own name.
    pub fn backup_relays(&self) -> &[Relay] {
        &self.route.backups
    }

    /// After a backup relay took over, how long a [`Mailer`](crate::Mailer)
    /// keeps using it before it tries the primary again (connections to the
    /// backup then close as they finish their work). Default 5 minutes.
    pub fn primary_retry_after(&self) -> Duration {
        self.route.primary_retry_after
    }

    /// The local address connections are made from (Postfix's
    /// `smtp_bind_address`, Nodemailer's `localAddress`), when one is set.
    /// Only the relay's addresses of the same family are tried.
    pub fn source_address(&self) -> Option<IpAddr> {
        self.route.source_address
    }

    /// Happy Eyeballs (RFC 8305): the time between the start of one
    /// connection attempt and the next, IPv6 and IPv4 addresses
    /// interleaved. Default 250 ms.
    pub fn connect_attempt_delay(&self) -> Duration {
        self.route.attempt_delay
    }
}

impl SmtpSettingsBuilder {
    /// The backup relays, tried in order when the primary cannot be reached
    /// or answers 421/4yz at its greeting or EHLO: each `host`, `host:port`,
    /// `[IPv6]` or `[IPv6]:port` (without a port, the primary's port).
    /// Replaces the list; an empty list means no backup. Each problem is a
    /// `backup_relays` field error.
    ///
    /// ```
    /// use relaymail::SmtpSettings;
    ///
    /// let settings = SmtpSettings::builder()
    ///     .host("smtp1.example.com")
    ///     .backup_relays(["smtp2.example.com", "[2001:db8::25]:2525"])
    ///     .sender("noreply@example.com")
    ///     .build()
    ///     .unwrap();
    /// let backups: Vec<String> = settings.backup_relays().iter().map(ToString::to_string).collect();
    /// assert_eq!(backups, ["smtp2.example.com:587", "[2001:db8::25]:2525"]);
    /// ```
    pub fn backup_relays<I, S>(mut self, relays: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.route.backups = relays.into_iter().map(Into::into).collect();
        self
    }

    /// See [`SmtpSettings::primary_retry_after`]. More than zero, at most
    /// [`MAX_TIMEOUT`]. Default 5 minutes.
    pub fn primary_retry_after(mut self, after: Duration) -> Self {
        self.route.primary_retry_after = Some(after);
        self
    }

    /// The local address to connect from (`None`: the system chooses). See
    /// [`SmtpSettings::source_address`].
    pub fn source_address(mut self, address: impl Into<Option<IpAddr>>) -> Self {
        self.route.source_address = address.into();
        self
    }

    /// See [`SmtpSettings::connect_attempt_delay`]: 10 ms to 10 s. Default
    /// 250 ms.
    pub fn connect_attempt_delay(mut self, delay: Duration) -> Self {
        self.route.attempt_delay = Some(delay);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SmtpSettingsBuilder {
        SmtpSettings::builder()
            .host("smtp.example.com")
            .sender("noreply@example.com")
    }

    #[test]
    fn backup_relays_are_read_and_checked() {
        let s = base()
            .port(2525)
            .backup_relays(["b1.example.com", "b2.example.com:26", "[::1]:27", "192.0.2.1"])
            .build()
            .expect("valid");
        let shown: Vec<String> = s.backup_relays().iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "b1.example.com:2525",
                "b2.example.com:26",
                "[::1]:27",
                "192.0.2.1:2525"
            ]
        );
        assert_eq!(s.primary_relay().to_string(), "smtp.example.com:2525");

        for (bad, says) in [
            ("smtp.example.com", "is the primary relay"),
            ("bad host", "not a valid host"),
            ("b.example.com:0", "not a port"),
            ("b.example.com:99999", "not a port"),
            ("[::1", "without its ']'"),
            (":25", "needs a host"),
        ] {
            let errors = base().backup_relays([bad]).build().expect_err(bad);
            let e = errors.field("backup_relays").expect("backup_relays error");
            assert!(e.message().contains(says), "{bad}: {}", e.message());
        }
        let errors = base()
            .backup_relays(["b.example.com", "B.example.com:587"])
            .build()
            .expect_err("twice");
        assert!(errors
            .field("backup_relays")
            .expect("error")
            .message()
            .contains("twice"));
    }

    #[test]
    fn a_kept_password_does_not_follow_a_changed_backup_list() {
        let stored = base()
            .credentials("app", "pw")
            .backup_relays(["b.example.com"])
            .build()
            .expect("valid");
        assert!(stored.to_builder().build().is_ok(), "unchanged: kept");
        for changed in [
            vec!["evil.example.net"],
            vec![],
            vec!["b.example.com", "c.example.com"],
        ] {
            let errors = stored
                .to_builder()
                .backup_relays(changed.clone())
                .build()
                .expect_err("a changed list needs the password again");
            assert!(errors.field("password").is_some(), "{changed:?}");
        }
        assert!(stored
            .to_builder()
            .backup_relays(["evil.example.net"])
            .credentials("app", "pw")
            .build()
            .is_ok());
    }

    #[test]
    fn route_values_are_checked_and_carried_over() {
        let errors = base()
            .connect_attempt_delay(Duration::from_millis(1))
            .primary_retry_after(Duration::ZERO)
            .source_address(IpAddr::from([0, 0, 0, 0]))
            .build()
            .expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(FieldError::field).collect();
        assert_eq!(
            fields,
            ["primary_retry_after", "connect_attempt_delay", "source_address"]
        );

        let s = base()
            .backup_relays(["b.example.com:26"])
            .source_address(IpAddr::from([127, 0, 0, 2]))
            .connect_attempt_delay(Duration::from_millis(100))
            .primary_retry_after(Duration::from_secs(60))
            .build()
            .expect("valid");
        let again = s.to_builder().build().expect("rebuilt");
        assert_eq!(again.backup_relays(), s.backup_relays());
        assert_eq!(again.source_address(), Some(IpAddr::from([127, 0, 0, 2])));
        assert_eq!(again.connect_attempt_delay(), Duration::from_millis(100));
        assert_eq!(again.primary_retry_after(), Duration::from_secs(60));
        let defaults = base().build().expect("valid");
        assert_eq!(defaults.connect_attempt_delay(), DEFAULT_ATTEMPT_DELAY);
        assert!(defaults.backup_relays().is_empty() && defaults.source_address().is_none());
    }
}
