//! Name resolution and TCP connection (Happy Eyeballs, RFC 8305), and the
//! default EHLO name.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::error::{Error, Kind, Stage};
use crate::future::BoxFuture;
use crate::proto::command::check_helo_name;

use super::Trace;

/// Resolves a host name and port to socket addresses, in the order the
/// resolver prefers them. The default is the system resolver
/// (`getaddrinfo`); [`Connector::with_resolver`](super::Connector::with_resolver)
/// installs another one (a custom DNS client, or a test that needs
/// addresses it controls).
#[derive(Clone)]
pub struct Resolver(Arc<ResolveFn>);

type ResolveFn = dyn Fn(&str, u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> + Send + Sync;

impl Resolver {
    /// A resolver from a function returning the addresses of `(host, port)`.
    pub fn new<F>(f: F) -> Resolver
    where
        F: Fn(&str, u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> + Send + Sync + 'static,
    {
        Resolver(Arc::new(f))
    }

    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        (self.0)(host, port).await
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver(..)")
    }
}

/// How [`tcp`] opens its connection.
#[derive(Clone, Debug)]
pub(crate) struct Dial<'a> {
    /// The whole connect phase: resolving and every attempt.
    pub(crate) limit: Duration,
    /// Happy Eyeballs: between the starts of two attempts.
    pub(crate) attempt_delay: Duration,
    /// The local address to bind to.
    pub(crate) source: Option<IpAddr>,
    pub(crate) resolver: Option<&'a Resolver>,
}

/// Why one address did not give the connection.
#[derive(Debug)]
enum Failure {
    Bind(io::Error),
    Connect(io::Error),
    TimedOut(Duration),
    /// Another address connected first, or the phase ran out, before this
    /// one answered.
    Abandoned,
    NotTried,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Bind(e) => write!(f, "cannot bind the source address: {e}"),
            Failure::Connect(e) => e.fmt(f),
            Failure::TimedOut(after) => write!(f, "no answer within {} ms", after.as_millis()),
            Failure::Abandoned => f.write_str("still trying when the time ran out"),
            Failure::NotTried => f.write_str("not tried"),
        }
    }
}

/// RFC 8305 §4: the addresses in the resolver's order within each family,
/// the families interleaved, starting with the family of the first one.
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut unique: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
    for a in addrs {
        if !unique.contains(&a) {
            unique.push(a);
        }
    }
    let first_v6 = unique.first().is_some_and(SocketAddr::is_ipv6);
    let (mut first, mut second): (VecDeque<_>, VecDeque<_>) =
        unique.into_iter().partition(|a| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(first.len() + second.len());
    while !first.is_empty() || !second.is_empty() {
        out.extend(first.pop_front());
        out.extend(second.pop_front());
    }
    out
}

/// One attempt: bind (when a source address is set), connect.
async fn attempt(addr: SocketAddr, source: Option<IpAddr>, timeout: Duration) -> Result<TcpStream, Failure> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(Failure::Connect)?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).map_err(Failure::Bind)?;
    }
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(Failure::Connect(e)),
        Err(_) => Err(Failure::TimedOut(timeout)),
    }
}

/// Each attempt's own timeout: an equal share of what is left of the phase
/// among the addresses not yet started, but at least 2 s (or what is left),
/// as Go's dialer does.
fn attempt_timeout(left: Duration, addresses_left: usize) -> Duration {
    let share = left / u32::try_from(addresses_left.max(1)).unwrap_or(u32::MAX);
    share.max(left.min(Duration::from_secs(2)))
}

type Attempt = Pin<Box<dyn Future<Output = Result<TcpStream, Failure>> + Send>>;

/// Resolves `host` and connects with Happy Eyeballs (RFC 8305): the
/// addresses of both families interleaved, a new attempt started every
/// `attempt_delay` (at once when the previous one fails), the first
/// connection to succeed wins and the others are dropped. All within
/// `limit`. Sets `TCP_NODELAY`: SMTP sends small commands and waits for
/// replies, and Nagle's algorithm with delayed ACKs would add ~40 ms to
/// many of them.
pub(crate) async fn tcp(
    host: &str,
    port: u16,
    dial: Dial<'_>,
    trace: &mut Trace,
) -> Result<TcpStream, Error> {
    let limit = dial.limit;
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
    let lookup = async {
        match dial.resolver {
            Some(r) => r.resolve(host, port).await,
            None => tokio::net::lookup_host((host, port)).await.map(Iterator::collect),
        }
    };
    let addrs: Vec<SocketAddr> = match tokio::time::timeout_at(deadline, lookup).await {
        Ok(Ok(addrs)) => addrs,
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
    let mut addrs = interleave(addrs);
    if let Some(source) = dial.source {
        let all = addrs.len();
        addrs.retain(|a| a.is_ipv4() == source.is_ipv4());
        if addrs.is_empty() {
            let (ours, theirs) = if source.is_ipv4() {
                ("IPv4", "IPv6")
            } else {
                ("IPv6", "IPv4")
            };
            return Err(Error::new(
                Kind::Config,
                Some(Stage::Connect),
                format!(
                    "{host} has only {theirs} addresses ({all}), and the source address {source} is {ours}"
                ),
            )
            .with_hint("choose a source address of the other family, or none"));
        }
    }
    trace.enter(Some(Stage::Connect));
    let mut outcomes: Vec<Failure> = addrs.iter().map(|_| Failure::NotTried).collect();
    let mut running: Vec<(usize, Attempt)> = Vec::new();
    let mut next = 0;
    let mut next_start = Instant::now();
    let timed_out = loop {
        let now = Instant::now();
        if now >= deadline {
            break true;
        }
        if next < addrs.len() && (running.is_empty() || now >= next_start) {
            let timeout = attempt_timeout(deadline - now, addrs.len() - next);
            running.push((next, Box::pin(attempt(addrs[next], dial.source, timeout))));
            next += 1;
            next_start = now + dial.attempt_delay;
            continue;
        }
        if running.is_empty() {
            break false;
        }
        let wake = if next < addrs.len() {
            next_start.min(deadline)
        } else {
            deadline
        };
        let first_done = std::future::poll_fn(|cx| {
            for (k, (_, fut)) in running.iter_mut().enumerate() {
                if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                    return Poll::Ready((k, result));
                }
            }
            Poll::Pending
        });
        let Ok((k, result)) = tokio::time::timeout_at(wake, first_done).await else {
            // Time to start the next attempt, or the phase is over.
            continue;
        };
        let (index, _) = running.swap_remove(k);
        match result {
            Ok(stream) => {
                // The others are dropped with `running`: cancelled.
                stream.set_nodelay(true).map_err(|e| {
                    Error::new(Kind::Io, Some(Stage::Connect), "cannot set TCP_NODELAY").with_source(e)
                })?;
                return Ok(stream);
            }
            Err(failure) => {
                outcomes[index] = failure;
                // RFC 8305 §5: the next attempt starts at once.
                next_start = Instant::now();
            }
        }
    };
    for (index, _) in running {
        outcomes[index] = Failure::Abandoned;
    }
    Err(connect_error(
        host,
        port,
        limit,
        &addrs,
        outcomes,
        timed_out,
        dial.source,
    ))
}

/// The error when no address gave a connection: every address with what
/// happened to it.
fn connect_error(
    host: &str,
    port: u16,
    limit: Duration,
    addrs: &[SocketAddr],
    outcomes: Vec<Failure>,
    timed_out: bool,
    source: Option<IpAddr>,
) -> Error {
    // The outcome of each address, unless the host was that one address
    // (the error's source then says what happened).
    let single = addrs.len() == 1 && addrs[0].to_string() == format!("{host}:{port}");
    let tried = if single {
        String::new()
    } else {
        let each: Vec<String> = addrs
            .iter()
            .zip(&outcomes)
            .map(|(a, o)| format!("{a}: {o}"))
            .collect();
        format!(" (tried {})", each.join("; "))
    };
    let mut e = if timed_out {
        Error::new(
            Kind::Timeout,
            Some(Stage::Connect),
            format!("no connection to {host}:{port} within {limit:?}{tried}"),
        )
        .with_hint("a firewall may be dropping the traffic, or the host is down; check host and port")
    } else {
        Error::new(
            Kind::Io,
            Some(Stage::Connect),
            format!("cannot connect to {host}:{port}{tried}"),
        )
    };
    let mut last = None;
    for o in outcomes {
        match o {
            Failure::Bind(io) => {
                let source = source.map(|s| s.to_string()).unwrap_or_default();
                return e
                    .with_hint(format!(
                        "cannot connect from the source address {source}: check that it is an address of this machine"
                    ))
                    .with_source(io);
            }
            Failure::Connect(io) => last = Some(io),
            _ => {}
        }
    }
    if let Some(io) = last {
        if !timed_out && io.kind() == io::ErrorKind::ConnectionRefused {
            e = e.with_hint(format!(
                "nothing is listening on port {port}: check the port (usually 587 for STARTTLS, 465 for implicit TLS, 25 for none) and that the relay is running"
            ));
        }
        e = e.with_source(io);
    }
    e
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
    fn families_are_interleaved_starting_with_the_first() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("address");
        let got = interleave(vec![
            a("[2001:db8::1]:25"),
            a("[2001:db8::2]:25"),
            a("[2001:db8::3]:25"),
            a("192.0.2.1:25"),
            a("[2001:db8::1]:25"),
            a("192.0.2.2:25"),
        ]);
        let want = [
            "[2001:db8::1]:25",
            "192.0.2.1:25",
            "[2001:db8::2]:25",
            "192.0.2.2:25",
            "[2001:db8::3]:25",
        ];
        assert_eq!(got, want.map(a).to_vec());
        let v4_first = interleave(vec![
            a("192.0.2.1:25"),
            a("[2001:db8::1]:25"),
            a("[2001:db8::2]:25"),
        ]);
        assert_eq!(
            v4_first,
            ["192.0.2.1:25", "[2001:db8::1]:25", "[2001:db8::2]:25"]
                .map(a)
                .to_vec()
        );
    }

    #[test]
    fn each_attempt_gets_a_share_of_the_time_left() {
        let s = Duration::from_secs;
        assert_eq!(attempt_timeout(s(30), 2), s(15));
        assert_eq!(attempt_timeout(s(10), 10), s(2), "at least 2 s");
        assert_eq!(
            attempt_timeout(Duration::from_millis(500), 3),
            Duration::from_millis(500)
        );
        assert_eq!(attempt_timeout(s(10), 0), s(10));
    }

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
