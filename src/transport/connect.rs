//! Name resolution, TCP connection and the default EHLO name.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::{Error, Kind, Stage};
use crate::proto::command::check_helo_name;

use super::Trace;

/// Resolves `host` and connects to each address in turn, all within
/// `limit`. Sets `TCP_NODELAY`: SMTP sends small commands and waits for
/// replies, and Nagle's algorithm with delayed ACKs would add ~40 ms to
/// many of them.
pub(crate) async fn tcp(
    host: &str,
    port: u16,
    limit: Duration,
    trace: &mut Trace,
) -> Result<TcpStream, Error> {
    let deadline = Instant::now() + limit;
    trace.enter(Some(Stage::Resolve));
    // RFC 6761 §6.4: names under .invalid never resolve; say so at once
    // instead of asking a DNS server.
    let bare = host.trim_end_matches('.');
    if bare.eq_ignore_ascii_case("invalid") || bare.to_ascii_lowercase().ends_with(".invalid") {
        return Err(Error::new(
            Kind::Io,
            Some(Stage::Resolve),
            format!("cannot resolve {host:?}: names under .invalid never resolve (RFC 6761)"),
        )
        .with_hint("check the host name for typos"));
    }
    let lookup = tokio::net::lookup_host((host, port));
    let addrs: Vec<_> = match tokio::time::timeout_at(deadline, lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            return Err(
                Error::new(Kind::Io, Some(Stage::Resolve), format!("cannot resolve {host:?}"))
                    .with_source(e)
                    .with_hint("check the host name for typos, and that this machine can resolve it (DNS)"),
            )
        }
        Err(_) => {
            return Err(Error::new(
                Kind::Timeout,
                Some(Stage::Resolve),
                format!("resolving {host:?} timed out"),
            )
            .with_hint("the DNS server did not answer in time"))
        }
    };
    if addrs.is_empty() {
        return Err(
            Error::new(Kind::Io, Some(Stage::Resolve), format!("{host:?} has no address"))
                .with_hint("check the host name"),
        );
    }
    let mut last_error = None;
    trace.enter(Some(Stage::Connect));
    for addr in &addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true).map_err(|e| {
                    Error::new(Kind::Io, Some(Stage::Connect), "cannot set TCP_NODELAY").with_source(e)
                })?;
                return Ok(stream);
            }
            Ok(Err(e)) => last_error = Some(e),
            Err(_) => {
                return Err(Error::new(
                    Kind::Timeout,
                    Some(Stage::Connect),
                    format!("no connection to {host}:{port} within {limit:?}"),
                )
                .with_hint(
                    "a firewall may be dropping the traffic, or the host is down; check host and port",
                ))
            }
        }
    }
    let tried = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    // The addresses tried, unless the host was that one address.
    let message = if tried == format!("{host}:{port}") {
        format!("cannot connect to {tried}")
    } else {
        format!("cannot connect to {host}:{port} (tried {tried})")
    };
    let mut e = Error::new(Kind::Io, Some(Stage::Connect), message);
    if let Some(io) = last_error {
        if io.kind() == std::io::ErrorKind::ConnectionRefused {
            e = e.with_hint(format!(
                "nothing is listening on port {port}: check the port (usually 587 for STARTTLS, 465 for implicit TLS, 25 for none) and that the relay is running"
            ));
        }
        e = e.with_source(io);
    }
    Err(e)
}

/// The EHLO name used when none is configured: the machine's fully
/// qualified domain name when it has one (a host name with a dot that is a
/// valid domain), else the local address of the connection as an address
/// literal, `[192.0.2.1]` or `[IPv6:2001:db8::1]`. Never empty, always valid.
pub fn default_helo_name(local: IpAddr) -> String {
    if let Some(fqdn) = machine_fqdn() {
        return fqdn.to_owned();
    }
    address_literal(local)
}

pub(crate) fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{v6}]"),
        },
    }
}

fn machine_fqdn() -> Option<&'static str> {
    static FQDN: OnceLock<Option<String>> = OnceLock::new();
    FQDN.get_or_init(|| {
        // gethostname(2) on unix, GetComputerNameExW on Windows.
        let name = hostname::get().ok()?.into_string().ok()?;
        let name = name.trim().trim_end_matches('.');
        is_fqdn(name).then(|| name.to_owned())
    })
    .as_deref()
}

fn is_fqdn(name: &str) -> bool {
    name.contains('.')
        && check_helo_name(name).is_ok()
        && !name.ends_with(".localdomain")
        && !name.ends_with(".local")
        && name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(address_literal("192.0.2.1".parse().expect("ip")), "[192.0.2.1]");
        assert_eq!(
            address_literal("2001:db8::1".parse().expect("ip")),
            "[IPv6:2001:db8::1]"
        );
        assert_eq!(
            address_literal("::ffff:192.0.2.7".parse().expect("ip")),
            "[192.0.2.7]"
        );
    }

    #[test]
    fn fqdn_detection() {
        assert!(is_fqdn("mail.example.com"));
        assert!(!is_fqdn("a1b2c3d4"));
        assert!(!is_fqdn("host.localdomain"));
        assert!(!is_fqdn("10.0.0.1"));
        assert!(!is_fqdn("bad_name.example"));
    }

    #[test]
    fn default_is_always_a_valid_helo_name() {
        for ip in ["127.0.0.1", "::1", "192.0.2.9"] {
            let name = default_helo_name(ip.parse().expect("ip"));
            assert!(check_helo_name(&name).is_ok(), "{name}");
        }
    }
}
