//! An in-process proxy for tests (feature `test-server`): SOCKS5 (RFC 1928,
//! with RFC 1929 user name and password when configured) and HTTP `CONNECT`
//! on the same `127.0.0.1` port, told apart by the client's first byte.
//!
//! It only ever connects to loopback: every target is resolved (IP
//! literals as they are, names by the system resolver — use `localhost` or
//! an address) and refused unless **every** address is in 127.0.0.0/8 or is
//! `::1` (SOCKS5 reply 2, "not allowed by ruleset"; HTTP `403 Forbidden`).
//! Names under `.invalid` are never looked up (SOCKS5 reply 4, HTTP `502`).
//!
//! Every handshake is recorded as a [`ProxyRequest`] — the target as the
//! client asked for it (by name or by address), the user name and whether
//! it was accepted, whether a tunnel was opened — so a test can assert that
//! the relay's **name** reached the proxy. Passwords are never recorded.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use relaymail::testing::{ProxyConfig, TestProxy};
//!
//! let proxy = TestProxy::start(ProxyConfig::new().user("app", "proxy-pw")).await?;
//! // Point the client at relaymail::settings::Proxy::socks5("127.0.0.1", proxy.port()) ...
//! let asked = proxy.wait_for_requests(1, Duration::from_secs(5)).await.expect("a request");
//! assert_eq!(asked[0].target.as_ref().map(|(host, _)| host.as_str()), Some("localhost"));
//! # Ok(()) }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::WaitTimeout;
use crate::settings::ProxyKind;

/// The most bytes of an HTTP request header the proxy reads.
const MAX_HEAD: usize = 8 * 1024;

/// How a [`TestProxy`] behaves. `Debug` never shows the password.
#[derive(Clone, Debug, Default)]
pub struct ProxyConfig {
    user: Option<ProxyUser>,
    http_answer: Option<String>,
    socks_reply: Option<u8>,
    stall: bool,
}

#[derive(Clone, Debug)]
struct ProxyUser {
    name: String,
    password: SecretString,
}

impl ProxyConfig {
    /// No authentication, every loopback target tunnelled.
    pub fn new() -> ProxyConfig {
        ProxyConfig::default()
    }

    /// Require this user name and password: SOCKS5 offers only RFC 1929
    /// (method 2) and refuses a wrong pair (status 1); HTTP answers `407`
    /// without `Proxy-Authorization: Basic` for this pair.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.user = Some(ProxyUser {
            name: name.to_owned(),
            password: SecretString::from(password),
        });
        self
    }

    /// Answer every HTTP `CONNECT` (after authentication) with this status
    /// line's code and reason, e.g. `"502 Bad Gateway"`, instead of
    /// connecting. A `2xx` answer opens no tunnel either: the connection
    /// then just stays open.
    pub fn http_answer(mut self, status: &str) -> Self {
        self.http_answer = Some(status.to_owned());
        self
    }

    /// Answer every SOCKS5 request (after authentication) with this reply
    /// code (1–8, RFC 1928 §6) instead of connecting.
    pub fn socks_reply(mut self, code: u8) -> Self {
        self.socks_reply = Some(code);
        self
    }

    /// Accept connections but never answer: a proxy that hangs. The
    /// connection stays open until the client closes it.
    pub fn stall(mut self, on: bool) -> Self {
        self.stall = on;
        self
    }
}

/// How a client authenticated to the [`TestProxy`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyAuth {
    /// It gave no credentials.
    None,
    /// Its user name and password were accepted.
    Accepted {
        /// The user name.
        user: String,
    },
    /// Its user name and password were refused.
    Refused {
        /// The user name it gave.
        user: String,
    },
}

/// One handshake the [`TestProxy`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyRequest {
    /// The protocol the client spoke.
    pub kind: ProxyKind,
    /// The target as the client asked for it: a host name or an IP address
    /// (as text, IPv6 without brackets), and the port. `None` when the
    /// handshake ended before the client named one (refused credentials).
    pub target: Option<(String, u16)>,
    /// The target was asked for by name (SOCKS5 address type 3, or a name
    /// in the `CONNECT` line), for the proxy to resolve.
    pub by_name: bool,
    /// The credentials the client gave.
    pub auth: ProxyAuth,
    /// A tunnel to the target was opened.
    pub tunnelled: bool,
    /// Why not, when it was not (e.g. `"not loopback"`).
    pub refused: Option<String>,
}

/// A running in-process SOCKS5 and HTTP CONNECT proxy on `127.0.0.1`; see
/// the [module docs](self). Dropping it stops it and closes every tunnel.
pub struct TestProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

struct Shared {
    config: ProxyConfig,
    requests: Mutex<Vec<ProxyRequest>>,
    progress: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<ProxyRequest>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, request: ProxyRequest) {
        let n = {
            let mut list = self.lock();
            list.push(request);
            list.len()
        };
        self.progress.send_replace(n);
    }
}

impl TestProxy {
    /// Binds `127.0.0.1:0` and starts accepting connections. Must be called
    /// within a Tokio runtime.
    pub async fn start(config: ProxyConfig) -> std::io::Result<TestProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            requests: Mutex::new(Vec::new()),
            progress: watch::channel(0).0,
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(TestProxy {
            addr,
            shared,
            accept_task,
        })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A snapshot of the handshakes seen, in the order they ended.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.shared.lock().clone()
    }

    /// Waits until at least `n` handshakes ended and returns them all
    /// ([`TestProxy::requests`]). Never sleeps: it wakes on each one.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] when fewer than `n` ended within `timeout`.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ProxyRequest>, WaitTimeout> {
        let mut progress = self.shared.progress.subscribe();
        let reached = tokio::time::timeout(timeout, progress.wait_for(|seen| *seen >= n))
            .await
            .is_ok_and(|seen| seen.is_ok());
        if reached {
            Ok(self.requests())
        } else {
            Err(WaitTimeout)
        }
    }
}

impl std::fmt::Debug for TestProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestProxy")
            .field("addr", &self.addr)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        // Its JoinSet goes with the accept task: every tunnel is aborted.
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while sessions.try_join_next().is_some() {}
        let Ok((stream, _)) = accepted else {
            tokio::task::yield_now().await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        sessions.spawn(serve(Arc::clone(&shared), stream));
    }
}

/// One client: the handshake, then bytes both ways until either side closes.
async fn serve(shared: Arc<Shared>, mut client: TcpStream) {
    if shared.config.stall {
        // Hold the connection, answer nothing, until the client goes.
        let mut sink = [0u8; 512];
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
        return;
    }
    let mut first = [0u8; 1];
    if client.read_exact(&mut first).await.is_err() {
        return;
    }
    let tunnel = if first[0] == 5 {
        socks5(&shared, &mut client).await
    } else {
        http(&shared, &mut client, first[0]).await
    };
    if let Some((mut upstream, early)) = tunnel {
        if upstream.write_all(&early).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    }
}

/// Where a target leads: a loopback connection, or why not.
enum Reach {
    Connected(TcpStream),
    NotLoopback,
    NoAddress,
    Refused,
}

/// Resolves the target and connects to it only if every address it has is
/// loopback.
async fn reach(host: &str, port: u16) -> Reach {
    let bare = host.trim_end_matches('.').to_ascii_lowercase();
    if bare == "invalid" || bare.ends_with(".invalid") {
        return Reach::NoAddress;
    }
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => addrs.collect(),
            Err(_) => return Reach::NoAddress,
        },
    };
    if addrs.is_empty() {
        return Reach::NoAddress;
    }
    if !addrs.iter().all(|a| is_loopback(a.ip())) {
        return Reach::NotLoopback;
    }
    for addr in addrs {
        if let Ok(stream) = TcpStream::connect(addr).await {
            let _ = stream.set_nodelay(true);
            return Reach::Connected(stream);
        }
    }
    Reach::Refused
}

/// 127.0.0.0/8, `::1`, or 127.0.0.0/8 mapped into IPv6.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

impl Reach {
    fn why(&self) -> &'static str {
        match self {
            Reach::Connected(_) => "",
            Reach::NotLoopback => "not loopback",
            Reach::NoAddress => "no address",
            Reach::Refused => "connection refused",
        }
    }
}

/// RFC 1928 (and 1929) after the version byte. Returns the tunnel on success.
async fn socks5(shared: &Shared, client: &mut TcpStream) -> Option<(TcpStream, Vec<u8>)> {
    let mut record = ProxyRequest {
        kind: ProxyKind::Socks5,
        target: None,
        by_name: false,
        auth: ProxyAuth::None,
        tunnelled: false,
        refused: None,
    };
    let count = client.read_u8().await.ok()?;
    let mut methods = vec![0u8; usize::from(count)];
    client.read_exact(&mut methods).await.ok()?;
    let wanted = if shared.config.user.is_some() { 2 } else { 0 };
    if !methods.contains(&wanted) {
        let _ = client.write_all(&[5, 0xff]).await;
        record.refused = Some("no acceptable authentication method".into());
        shared.record(record);
        return None;
    }
    client.write_all(&[5, wanted]).await.ok()?;
    if let Some(expected) = &shared.config.user {
        // RFC 1929: VER=1, ULEN, UNAME, PLEN, PASSWD.
        let version = client.read_u8().await.ok()?;
        let user_len = client.read_u8().await.ok()?;
        let mut user = vec![0u8; usize::from(user_len)];
        client.read_exact(&mut user).await.ok()?;
        let password_len = client.read_u8().await.ok()?;
        let mut password = zeroize::Zeroizing::new(vec![0u8; usize::from(password_len)]);
        client.read_exact(&mut password).await.ok()?;
        let user = String::from_utf8_lossy(&user).into_owned();
        let ok = version == 1
            && user == expected.name
            && password.as_slice() == expected.password.expose_secret().as_bytes();
        if !ok {
            let _ = client.write_all(&[1, 1]).await;
            record.auth = ProxyAuth::Refused { user };
            record.refused = Some("wrong user name or password".into());
            shared.record(record);
            return None;
        }
        client.write_all(&[1, 0]).await.ok()?;
        record.auth = ProxyAuth::Accepted { user };
    }
    // The request: VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT.
    let mut head = [0u8; 4];
    client.read_exact(&mut head).await.ok()?;
    let host = match head[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await.ok()?;
            Ipv4Addr::from(ip).to_string()
        }
        4 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await.ok()?;
            std::net::Ipv6Addr::from(ip).to_string()
        }
        3 => {
            let len = client.read_u8().await.ok()?;
            let mut name = vec![0u8; usize::from(len)];
            client.read_exact(&mut name).await.ok()?;
            record.by_name = true;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => {
            let _ = client.write_all(&socks_reply(8)).await;
            record.refused = Some("address type not supported".into());
            shared.record(record);
            return None;
        }
    };
    let port = client.read_u16().await.ok()?;
    record.target = Some((host.clone(), port));
    let code = if head[0] != 5 || head[1] != 1 {
        record.refused = Some("command not supported".into());
        7
    } else if let Some(code) = shared.config.socks_reply {
        record.refused = Some(format!("configured reply {code}"));
        code
    } else {
        match reach(&host, port).await {
            Reach::Connected(upstream) => {
                let mut reply = socks_reply(0);
                if let Ok(SocketAddr::V4(local)) = upstream.local_addr() {
                    reply[4..8].copy_from_slice(&local.ip().octets());
                    reply[8..10].copy_from_slice(&local.port().to_be_bytes());
                }
                client.write_all(&reply).await.ok()?;
                record.tunnelled = true;
                shared.record(record);
                return Some((upstream, Vec::new()));
            }
            other => {
                record.refused = Some(other.why().into());
                match other {
                    Reach::NotLoopback => 2,
                    Reach::NoAddress => 4,
                    _ => 5,
                }
            }
        }
    };
    let _ = client.write_all(&socks_reply(code)).await;
    shared.record(record);
    None
}

/// A reply with this code and the bound address 0.0.0.0:0.
fn socks_reply(code: u8) -> [u8; 10] {
    [5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// An HTTP `CONNECT` request whose first byte was already read. Returns the
/// tunnel and any bytes the client sent after its header.
async fn http(shared: &Shared, client: &mut TcpStream, first: u8) -> Option<(TcpStream, Vec<u8>)> {
    let mut record = ProxyRequest {
        kind: ProxyKind::HttpConnect,
        target: None,
        by_name: false,
        auth: ProxyAuth::None,
        tunnelled: false,
        refused: None,
    };
    let mut data = vec![first];
    let end = loop {
        if let Some(end) = find(&data, b"\r\n\r\n") {
            break end + 4;
        }
        if data.len() > MAX_HEAD {
            let _ = answer(client, "431 Request Header Fields Too Large").await;
            return None;
        }
        let mut buf = [0u8; 1024];
        let n = client.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let early = data.split_off(end);
    let head = String::from_utf8_lossy(&data).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, authority) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let target = split_authority(authority);
    if let Some((host, port)) = &target {
        record.by_name = host.parse::<IpAddr>().is_err();
        record.target = Some((host.clone(), *port));
    }
    if let Some(expected) = &shared.config.user {
        let given = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("proxy-authorization"))
            .and_then(|(_, value)| {
                let (scheme, token) = value.trim().split_once(' ')?;
                if !scheme.eq_ignore_ascii_case("basic") {
                    return None;
                }
                base64::engine::general_purpose::STANDARD
                    .decode(token.trim())
                    .ok()
            })
            .map(zeroize::Zeroizing::new);
        let pair = given.as_ref().and_then(|g| {
            let text = std::str::from_utf8(g).ok()?;
            text.split_once(':')
        });
        match pair {
            Some((user, password))
                if user == expected.name && password == expected.password.expose_secret() =>
            {
                record.auth = ProxyAuth::Accepted {
                    user: user.to_owned(),
                };
            }
            other => {
                if let Some((user, _)) = other {
                    record.auth = ProxyAuth::Refused {
                        user: user.to_owned(),
                    };
                }
                record.refused = Some("proxy authentication required".into());
                shared.record(record);
                let _ = client
                    .write_all(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"relaymail-test\"\r\nContent-Length: 0\r\n\r\n",
                    )
                    .await;
                return None;
            }
        }
    }
    let status = if method != "CONNECT" {
        record.refused = Some("not CONNECT".into());
        "405 Method Not Allowed".to_owned()
    } else if let Some(status) = &shared.config.http_answer {
        record.refused = Some(format!("configured answer {status}"));
        status.clone()
    } else {
        match target {
            None => {
                record.refused = Some("no host:port".into());
                "400 Bad Request".to_owned()
            }
            Some((host, port)) => match reach(&host, port).await {
                Reach::Connected(upstream) => {
                    client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .ok()?;
                    record.tunnelled = true;
                    shared.record(record);
                    return Some((upstream, early));
                }
                Reach::NotLoopback => {
                    record.refused = Some(Reach::NotLoopback.why().into());
                    "403 Forbidden".to_owned()
                }
                other => {
                    record.refused = Some(other.why().into());
                    "502 Bad Gateway".to_owned()
                }
            },
        }
    };
    shared.record(record);
    let _ = answer(client, &status).await;
    None
}

async fn answer(client: &mut TcpStream, status: &str) -> std::io::Result<()> {
    client
        .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
        .await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `host:port` or `[v6]:port`.
fn split_authority(authority: &str) -> Option<(String, u16)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']')?;
            (host, rest.strip_prefix(':')?)
        }
        None => authority.rsplit_once(':')?,
    };
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        for ok in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ok.parse().expect("ip")), "{ok}");
        }
        for bad in [
            "192.0.2.1",
            "10.0.0.1",
            "::",
            "0.0.0.0",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ] {
            assert!(!is_loopback(bad.parse().expect("ip")), "{bad}");
        }
    }

    #[test]
    fn authorities() {
        assert_eq!(split_authority("localhost:25"), Some(("localhost".into(), 25)));
        assert_eq!(split_authority("[::1]:465"), Some(("::1".into(), 465)));
        assert_eq!(split_authority("localhost"), None);
        assert_eq!(split_authority(":25"), None);
        assert_eq!(split_authority("[::1]"), None);
        assert_eq!(split_authority("host:99999"), None);
    }

    #[tokio::test]
    async fn refuses_what_is_not_loopback_without_connecting() {
        assert!(matches!(reach("192.0.2.1", 25).await, Reach::NotLoopback));
        assert!(matches!(reach("2001:db8::1", 25).await, Reach::NotLoopback));
        assert!(matches!(
            reach("relay.example.invalid", 25).await,
            Reach::NoAddress
        ));
    }
}
