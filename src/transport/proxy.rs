//! The TCP stream to the relay: directly ([`connect::tcp`]), or through the
//! settings' [`Proxy`] — SOCKS5 (tokio-socks) or HTTP CONNECT (below) —
//! after which the stream is a plain `TcpStream` to the relay again, and
//! greeting, implicit TLS or STARTTLS run over it unchanged. The relay's
//! host **name** is what the proxy is asked for (it resolves it); TLS then
//! verifies the relay's certificate for that name, never the proxy's.
//!
//! Every failure here is at [`Stage::Proxy`](crate::Stage::Proxy) and names
//! what to check:
//!
//! | failure | kind | hint |
//! |---|---|---|
//! | the proxy does not resolve, refuses or does not answer the connection | io, timeout | the proxy's host and port |
//! | the proxy wants credentials, or refuses them (SOCKS5 method or RFC 1929 failure, HTTP 407) | auth | the proxy user name and password |
//! | the proxy may not connect to the relay (SOCKS5 "not allowed by ruleset", HTTP 403) | rejected | the relay's host:port, ask the proxy's administrator |
//! | the proxy cannot reach the relay (SOCKS5 unreachable, refused, TTL; HTTP 502/503/504) | io | the relay's host:port, which the proxy could not reach |
//! | the reply is not SOCKS5 / HTTP, or the HTTP header is over 8 KiB | protocol | whether the proxy is of the configured kind |
//! | no tunnel within the connect timeout | timeout | the proxy's host and port |

use tokio::net::TcpStream;

use super::{connect, Trace};
use crate::error::Error;
#[cfg(not(feature = "proxy"))]
use crate::settings::Proxy;
use crate::settings::SmtpSettings;

/// Opens the TCP stream to the relay `host`:`port`, through the settings'
/// proxy when there is one, all within `limit` (the connect timeout, or
/// less when a message's deadline is nearer).
pub(super) async fn tcp(
    settings: &SmtpSettings,
    host: &str,
    port: u16,
    dial: connect::Dial<'_>,
    trace: &mut Trace,
) -> Result<TcpStream, Error> {
    match settings.proxy() {
        None => connect::tcp(host, port, dial, trace).await,
        Some(proxy) => tunnel(proxy, host, port, dial, trace).await,
    }
}

#[cfg(not(feature = "proxy"))]
async fn tunnel(
    proxy: &Proxy,
    _host: &str,
    _port: u16,
    _dial: connect::Dial<'_>,
    _trace: &mut Trace,
) -> Result<TcpStream, Error> {
    // Unreachable in practice: `build()` refuses a proxy without the
    // feature. Never a direct connection instead.
    Err(Error::config(format!(
        "the settings name a {} proxy, but relaymail was built without its `proxy` feature",
        proxy.kind().label()
    )))
}

#[cfg(feature = "proxy")]
use imp::tunnel;

#[cfg(feature = "proxy")]
mod imp {
    use base64::Engine;
    use secrecy::ExposeSecret;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tokio::time::Instant;
    use zeroize::Zeroizing;

    use super::super::{connect, Trace};
    use crate::error::{Error, Kind, Stage};
    use crate::proto::reply::Escaped;
    use crate::settings::{Proxy, ProxyKind};

    /// The most header bytes read from an HTTP proxy's answer to CONNECT.
    pub(super) const MAX_HEAD: usize = 8 * 1024;

    /// Connects to the proxy and has it open the tunnel to `host`:`port`.
    /// The whole of it is timed as [`Stage::Proxy`]: the proxy's own name
    /// resolution and TCP connection are not the relay's.
    pub(in crate::transport) async fn tunnel(
        proxy: &Proxy,
        host: &str,
        port: u16,
        dial: connect::Dial<'_>,
        trace: &mut Trace,
    ) -> Result<TcpStream, Error> {
        let limit = dial.limit;
        let deadline = Instant::now() + limit;
        trace.enter(Some(Stage::Proxy));
        let mut quiet = Trace::default();
        // Happy Eyeballs and the source address apply to the connection
        // to the proxy.
        let tcp = connect::tcp(&proxy.host, proxy.port, dial, &mut quiet)
            .await
            .map_err(|e| unreachable(e, proxy))?;
        let target = Target { host, port };
        let handshake = async {
            match proxy.kind {
                ProxyKind::Socks5 => socks5(tcp, proxy, &target).await,
                ProxyKind::HttpConnect => http_connect(tcp, proxy, &target).await,
            }
        };
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                Kind::Timeout,
                Some(Stage::Proxy),
                format!(
                    "the {} proxy {} did not open the tunnel to {} within {limit:?}",
                    proxy.kind.label(),
                    proxy.address(),
                    target.address()
                ),
            )
            .with_hint(format!(
                "the proxy accepted the connection but did not finish its handshake in time: check that {} is a {} proxy, and the proxy host and port",
                proxy.address(),
                proxy.kind.label()
            ))),
        }
    }

    /// The relay, as the proxy is asked for it.
    struct Target<'a> {
        host: &'a str,
        port: u16,
    }

    impl Target<'_> {
        fn address(&self) -> String {
            crate::settings::host_port(self.host, self.port)
        }
    }

    /// The proxy itself could not be reached: the error of the connection
    /// to it, in the proxy stage, with a hint about the proxy (never the relay).
    fn unreachable(e: Error, proxy: &Proxy) -> Error {
        let hint = match e.stage() {
            Some(Stage::Resolve) => format!(
                "check the proxy host name {:?}, and that this machine can resolve it (DNS)",
                proxy.host
            ),
            _ if e.is_timeout() => format!(
                "no connection to the {} proxy at {}: a firewall may be dropping the traffic, or the proxy is down; check the proxy host and port",
                proxy.kind.label(),
                proxy.address()
            ),
            _ => format!(
                "nothing accepts connections at the proxy address {}: check the proxy host and port, and that the {} proxy is running",
                proxy.address(),
                proxy.kind.label()
            ),
        };
        e.at_stage(Stage::Proxy).with_hint(hint)
    }

    fn error(kind: Kind, message: String) -> Error {
        Error::new(kind, Some(Stage::Proxy), message)
    }

    fn wrong_credentials(message: String) -> Error {
        error(Kind::Auth, message).with_hint("check the proxy user name and password")
    }

    fn credentials_needed(message: String) -> Error {
        error(Kind::Auth, message)
            .with_hint("the proxy requires a user name and password: set the proxy's credentials")
    }

    fn not_allowed(proxy: &Proxy, target: &Target<'_>, message: String) -> Error {
        error(Kind::Rejected, message).with_hint(format!(
            "the proxy {} refuses to connect to the relay {}: check the relay host and port, or ask the proxy's administrator to allow it (many HTTP proxies allow CONNECT to port 443 only)",
            proxy.address(),
            target.address()
        ))
    }

    fn unreachable_target(proxy: &Proxy, target: &Target<'_>, message: String) -> Error {
        error(Kind::Io, message).with_hint(format!(
            "the proxy {} could not reach the relay {}: check the relay host and port, and that the relay is reachable from the proxy's network",
            proxy.address(),
            target.address()
        ))
    }

    fn malformed(proxy: &Proxy, message: String) -> Error {
        Error::protocol(Some(Stage::Proxy), message).with_hint(format!(
            "check that {} is a {} proxy (an HTTP proxy is http://, a SOCKS5 proxy socks5://)",
            proxy.address(),
            proxy.kind.label()
        ))
    }

    fn io(proxy: &Proxy, e: std::io::Error) -> Error {
        let closed = matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
        );
        let e = if closed {
            error(
                Kind::Closed,
                format!(
                    "the {} proxy {} closed the connection during its handshake",
                    proxy.kind.label(),
                    proxy.address()
                ),
            )
            .with_source(e)
        } else {
            error(
                Kind::Io,
                format!(
                    "the connection to the {} proxy {} failed",
                    proxy.kind.label(),
                    proxy.address()
                ),
            )
            .with_source(e)
        };
        e.with_hint(format!(
            "check that {} is a {} proxy, and the proxy's credentials and logs",
            proxy.address(),
            proxy.kind.label()
        ))
    }

    /// RFC 1928 CONNECT to the relay's name (address type 3, resolved by
    /// the proxy; an IP address is sent as one), with RFC 1929 user name and
    /// password when the proxy has credentials. tokio-socks reads exactly
    /// the reply's bytes, never the relay's greeting behind them.
    async fn socks5(tcp: TcpStream, proxy: &Proxy, target: &Target<'_>) -> Result<TcpStream, Error> {
        use tokio_socks::tcp::Socks5Stream;
        use tokio_socks::Error as S;
        let to = (target.host, target.port);
        let result = match &proxy.credentials {
            None => Socks5Stream::connect_with_socket(tcp, to).await,
            Some((user, password)) => {
                Socks5Stream::connect_with_password_and_socket(tcp, to, user, password.expose_secret()).await
            }
        };
        let e = match result {
            Ok(stream) => return Ok(stream.into_inner()),
            Err(e) => e,
        };
        let at = proxy.address();
        let relay = target.address();
        let could_not_reach = |why: &str| {
            unreachable_target(
                proxy,
                target,
                format!("the SOCKS5 proxy {at} could not reach {relay}: {why}"),
            )
        };
        Err(match e {
            S::Io(e) => io(proxy, e),
            S::PasswordAuthFailure(_) => wrong_credentials(format!("the SOCKS5 proxy {at} refused the user name and password"),
            ),
            S::AuthorizationRequired => credentials_needed(format!(
                "the SOCKS5 proxy {at} asks for a user name and password, and none is set"
            )),
            S::NoAcceptableAuthMethods if proxy.credentials.is_none() => credentials_needed(format!(
                "the SOCKS5 proxy {at} accepts no connection without authentication"
            )),
            S::NoAcceptableAuthMethods => error(
                Kind::Auth,
                format!("the SOCKS5 proxy {at} accepts no user name and password authentication (RFC 1929)"),
            )
            .with_hint("the proxy wants another authentication method: ask its administrator, or use another proxy"),
            S::ConnectionNotAllowedByRuleset => not_allowed(
                proxy,
                target,
                format!("the SOCKS5 proxy {at} does not allow a connection to {relay}"),
            ),
            S::NetworkUnreachable => could_not_reach("network unreachable"),
            S::HostUnreachable => could_not_reach("host unreachable (or its name does not resolve)"),
            S::ConnectionRefused => could_not_reach("connection refused"),
            S::TtlExpired => could_not_reach("TTL expired"),
            S::GeneralSocksServerFailure => could_not_reach("general SOCKS server failure"),
            S::CommandNotSupported | S::AddressTypeNotSupported => error(
                Kind::Rejected,
                format!("the SOCKS5 proxy {at} does not support a CONNECT to a host name ({e})"),
            )
            .with_hint("the proxy needs to resolve the relay's name (as socks5h does): use a proxy that does, or an HTTP proxy"),
            S::InvalidTargetAddress(why) | S::InvalidAuthValues(why) => {
                Error::config(format!("cannot ask the SOCKS5 proxy for {relay}: {why}")).at_stage(Stage::Proxy)
            }
            other => malformed(
                proxy,
                format!("the SOCKS5 proxy {at} sent a malformed reply ({other})"),
            ),
        })
    }

    /// `CONNECT host:port HTTP/1.1` with the relay's name, and Basic
    /// credentials when the proxy has some; then the proxy's answer is read
    /// up to the end of its header and not one byte more: the relay's
    /// greeting may follow in the same packet.
    async fn http_connect(
        mut tcp: TcpStream,
        proxy: &Proxy,
        target: &Target<'_>,
    ) -> Result<TcpStream, Error> {
        let authority = target.address();
        let b64 = base64::engine::general_purpose::STANDARD;
        let credentials_len = proxy.credentials.as_ref().map_or(0, |(user, password)| {
            user.len() + 1 + password.expose_secret().len()
        });
        // Sized once: the request (and the password in it) is never
        // reallocated, which would leave a copy behind. Wiped when dropped.
        let mut request = Zeroizing::new(String::with_capacity(
            2 * authority.len() + 64 + credentials_len.div_ceil(3) * 4 + 32,
        ));
        request.push_str("CONNECT ");
        request.push_str(&authority);
        request.push_str(" HTTP/1.1\r\nHost: ");
        request.push_str(&authority);
        request.push_str("\r\n");
        if let Some((user, password)) = &proxy.credentials {
            let mut plain = Zeroizing::new(Vec::with_capacity(credentials_len));
            plain.extend_from_slice(user.as_bytes());
            plain.push(b':');
            plain.extend_from_slice(password.expose_secret().as_bytes());
            request.push_str("Proxy-Authorization: Basic ");
            b64.encode_string(&*plain, &mut request);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| io(proxy, e))?;
        drop(request);
        let head = read_head(&mut tcp).await.map_err(|e| match e {
            HeadError::Io(e) => io(proxy, e),
            HeadError::NotHttp => malformed(
                proxy,
                format!(
                    "the proxy {} did not answer CONNECT with an HTTP status line",
                    proxy.address()
                ),
            ),
            HeadError::TooLong => malformed(
                proxy,
                format!(
                    "the HTTP proxy {}'s answer to CONNECT has a header over {MAX_HEAD} bytes",
                    proxy.address()
                ),
            ),
        })?;
        let Some((code, reason)) = status(&head) else {
            return Err(malformed(
                proxy,
                format!(
                    "the proxy {} did not answer CONNECT with an HTTP status line",
                    proxy.address()
                ),
            ));
        };
        let at = proxy.address();
        let relay = target.address();
        let answer = format!("{code} {}", Escaped(reason));
        Err(match code {
            200..=299 => return Ok(tcp),
            407 if proxy.credentials.is_none() => {
                credentials_needed(format!("the HTTP proxy {at} requires authentication ({answer})"))
            }
            407 => wrong_credentials(format!(
                "the HTTP proxy {at} refused the user name and password ({answer})"
            )),
            403 | 405 => not_allowed(
                proxy,
                target,
                format!("the HTTP proxy {at} refused to CONNECT to {relay} ({answer})"),
            ),
            502..=504 => unreachable_target(
                proxy,
                target,
                format!("the HTTP proxy {at} could not reach {relay} ({answer})"),
            ),
            400..=499 => not_allowed(
                proxy,
                target,
                format!("the HTTP proxy {at} refused to CONNECT to {relay} ({answer})"),
            ),
            500..=599 => unreachable_target(
                proxy,
                target,
                format!("the HTTP proxy {at} failed to CONNECT to {relay} ({answer})"),
            ),
            _ => malformed(
                proxy,
                format!("the HTTP proxy {at} answered CONNECT with {answer}, not a success"),
            ),
        })
    }

    pub(super) enum HeadError {
        Io(std::io::Error),
        TooLong,
        /// The first line is not an HTTP status line.
        NotHttp,
    }

    /// The proxy's answer up to and including the empty line that ends its
    /// header (CRLF CRLF; bare LF is tolerated), consumed from the socket
    /// and nothing after it: the bytes are peeked first, and only those of
    /// the header are read.
    pub(super) async fn read_head(tcp: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
        let mut head = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            let n = tcp.peek(&mut buf).await.map_err(HeadError::Io)?;
            if n == 0 {
                return Err(HeadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let before = head.len();
            head.extend_from_slice(&buf[..n]);
            // An end that straddles two reads: look back two bytes.
            let end = head_end(&head, before.saturating_sub(2));
            let take = match end {
                Some(end) => {
                    head.truncate(end);
                    end.saturating_sub(before)
                }
                None => n,
            };
            if head.len() > MAX_HEAD {
                return Err(HeadError::TooLong);
            }
            // Not an HTTP proxy (an SMTP or SOCKS server): said at once,
            // not after the timeout waiting for an empty line.
            if head.contains(&b'\n') && status(&head).is_none() {
                return Err(HeadError::NotHttp);
            }
            // The peeked bytes are still in the socket: read (consume)
            // exactly those of the header.
            tokio::io::AsyncReadExt::read_exact(tcp, &mut buf[..take])
                .await
                .map_err(HeadError::Io)?;
            if end.is_some() {
                return Ok(head);
            }
        }
    }

    /// The end of the header (just past its empty line) in `bytes`, looking
    /// for line ends from `from` on.
    pub(super) fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
        (from..bytes.len()).find_map(|i| {
            if bytes[i] != b'\n' {
                return None;
            }
            match bytes.get(i + 1..) {
                Some([b'\n', ..]) => Some(i + 2),
                Some([b'\r', b'\n', ..]) => Some(i + 3),
                _ => None,
            }
        })
    }

    /// The status code and reason phrase of `HTTP/1.x SSS reason`.
    pub(super) fn status(head: &[u8]) -> Option<(u16, &str)> {
        let line = head.split(|&b| b == b'\n').next()?;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let rest = line.strip_prefix(b"HTTP/1.")?;
        let (&minor, rest) = rest.split_first()?;
        if !minor.is_ascii_digit() {
            return None;
        }
        let rest = rest.strip_prefix(b" ")?;
        let digits = rest.get(..3)?;
        if !digits.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
            return None;
        }
        let code = digits.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        let reason = rest.get(4..).unwrap_or_default();
        // At most 100 bytes of the reason, cut at a character boundary.
        let reason = std::str::from_utf8(reason)
            .ok()
            .map(|r| {
                let mut end = r.len().min(100);
                while !r.is_char_boundary(end) {
                    end -= 1;
                }
                &r[..end]
            })
            .unwrap_or("");
        Some((code, reason))
    }
}

#[cfg(all(test, feature = "proxy"))]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::imp::{head_end, read_head, status, MAX_HEAD};

    #[test]
    fn status_lines() {
        assert_eq!(
            status(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some((200, "Connection established"))
        );
        assert_eq!(status(b"HTTP/1.0 407\r\n\r\n"), Some((407, "")));
        assert_eq!(
            status(b"HTTP/1.1 502 Bad Gateway\n\n"),
            Some((502, "Bad Gateway"))
        );
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"\x05\x00",
            b"",
        ] {
            assert_eq!(status(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!("HTTP/1.1 403 {}\r\n\r\n", "é".repeat(200));
        let (_, reason) = status(long.as_bytes()).expect("status");
        assert!(reason.len() <= 100 && reason.starts_with('é'));
    }

    #[test]
    fn header_ends() {
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\n220 x", 0), Some(19));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\n\n220", 0), Some(17));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nVia: x\r\n", 0), None);
        assert_eq!(head_end(b"a\r\n\r\n", 2), Some(5));
    }

    /// A proxy that answers with its header and the relay's greeting
    /// together, in two writes split anywhere (also inside the header's
    /// end, and inside the greeting): the greeting stays on the stream.
    #[tokio::test]
    async fn never_reads_past_the_header() {
        const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nVia: test\r\n\r\n220 relay ESMTP\r\n";
        for split in [1, 5, 26, 27, 28, 29, 30, 40, ANSWER.len()] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.expect("accept");
                let (a, b) = ANSWER.split_at(split);
                s.write_all(a).await.expect("write");
                // The second piece once the client is reading the first.
                let _ = ready_rx.await;
                s.write_all(b).await.expect("write");
                s
            });
            let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            // The first piece has arrived (this test's runtime runs one task
            // at a time: the reader below takes it alone, then waits).
            let mut scratch = [0u8; 64];
            while client.peek(&mut scratch).await.expect("peek") < split {
                tokio::task::yield_now().await;
            }
            let read = tokio::spawn(async move {
                let head = read_head(&mut client).await.map_err(|_| "head").expect("head");
                (head, client)
            });
            let _ = ready_tx.send(());
            let (head, mut client) = read.await.expect("join");
            assert_eq!(head, b"HTTP/1.1 200 OK\r\nVia: test\r\n\r\n", "split {split}");
            let mut rest = [0u8; 17];
            tokio::time::timeout(std::time::Duration::from_secs(5), client.read_exact(&mut rest))
                .await
                .unwrap_or_else(|_| panic!("split {split}: the greeting was read with the header"))
                .expect("greeting");
            assert_eq!(&rest, b"220 relay ESMTP\r\n", "split {split}");
            drop(server.await.expect("server"));
        }
    }

    #[tokio::test]
    async fn an_endless_header_is_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let line = b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
            for _ in 0..(2 * MAX_HEAD / line.len()) {
                if s.write_all(line).await.is_err() {
                    break;
                }
            }
            s
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let r = read_head(&mut client).await;
        assert!(matches!(r, Err(super::imp::HeadError::TooLong)));
        drop(server.await.expect("server"));
    }
}
