//! The HTTP client of the token endpoint: one HTTP/1.1 `POST` per request
//! over tokio (and rustls with ring for `https://`), implementing the
//! `oauth2` crate's `AsyncHttpClient`.
//!
//! Small on purpose: a token request is one short exchange, so there is
//! no connection pool, no redirects, no proxy, no compression. What a
//! hostile or broken endpoint can do is bounded: the whole exchange
//! (connect, TLS, request, response) has one deadline, and the response
//! may be at most [`MAX_RESPONSE`] bytes.

use std::sync::Arc;
use std::time::Duration;

use ::oauth2::{HttpRequest, HttpResponse};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use crate::future::BoxFuture;

/// The longest response read (head and body): a token response is a few
/// kilobytes at most.
pub(super) const MAX_RESPONSE: usize = 64 * 1024;

/// Why a request to the token endpoint failed. Its text never holds a
/// token, a secret or the response body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The whole exchange took longer than the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// The URL cannot be requested (checked before: a bug if seen).
    #[error("{0}")]
    Url(&'static str),
    /// The answer is over [`MAX_RESPONSE`] bytes.
    #[error("the answer is larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    /// The answer is not an HTTP/1.x response.
    #[error("the answer is not an HTTP response ({0})")]
    Malformed(&'static str),
}

impl HttpError {
    /// Whether trying again later may help.
    pub(super) fn is_transient(&self) -> bool {
        matches!(self, HttpError::Timeout(_) | HttpError::Io(_))
    }
}

/// Sends token requests: `https://` with this TLS configuration, or
/// `http://` (loopback only: checked when the provider is made).
#[derive(Clone)]
pub(super) struct HttpClient {
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) timeout: Duration,
}

impl<'c> ::oauth2::AsyncHttpClient<'c> for HttpClient {
    type Error = HttpError;
    type Future = BoxFuture<'c, Result<HttpResponse, HttpError>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let timeout = self.timeout;
            tokio::time::timeout(timeout, self.send(request))
                .await
                .unwrap_or(Err(HttpError::Timeout(timeout)))
        })
    }
}

impl HttpClient {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        // The body holds the refresh token (and the client secret): wiped.
        let body = Zeroizing::new(body);
        let uri = &parts.uri;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::Url("only http and https URLs can be requested")),
        };
        let host = uri.host().ok_or(HttpError::Url("the URL has no host"))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let authority = match uri.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let target = uri.path_and_query().map_or("/", |p| p.as_str());

        let mut head = format!("{} {target} HTTP/1.1\r\nHost: {authority}\r\n", parts.method);
        for (name, value) in &parts.headers {
            // Values come from the oauth2 crate; one that is not text (never
            // seen) is left out rather than sent mangled.
            if let Ok(value) = value.to_str() {
                head.push_str(name.as_str());
                head.push_str(": ");
                head.push_str(value);
                head.push_str("\r\n");
            }
        }
        head.push_str(concat!(
            "User-Agent: relaymail/",
            env!("CARGO_PKG_VERSION"),
            "\r\n"
        ));
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        // A Basic authorization header carries the client secret: wiped too.
        let head = Zeroizing::new(head);
        let mut message = Zeroizing::new(Vec::with_capacity(head.len() + body.len()));
        message.extend_from_slice(head.as_bytes());
        message.extend_from_slice(&body);

        let tcp = TcpStream::connect((bare_host, port))
            .await
            .map_err(HttpError::Io)?;
        let _ = tcp.set_nodelay(true);
        if https {
            let name = ServerName::try_from(bare_host.to_owned())
                .map_err(|_| HttpError::Url("the host is not a valid DNS name or IP address"))?;
            let tls = TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(HttpError::Io)?;
            exchange(tls, &message).await
        } else {
            exchange(tcp, &message).await
        }
    }
}

/// Writes the request, then reads the response until it is complete (or
/// the server closes), at most [`MAX_RESPONSE`] bytes.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<HttpResponse, HttpError> {
    stream.write_all(request).await.map_err(HttpError::Io)?;
    stream.flush().await.map_err(HttpError::Io)?;
    // Sized once for the largest answer: never reallocated, so no copy of
    // the token in it is left behind. Wiped when dropped.
    let mut received = Zeroizing::new(Vec::with_capacity(MAX_RESPONSE));
    let mut buf = Zeroizing::new([0u8; 4096]);
    loop {
        let n = stream.read(&mut buf[..]).await.map_err(HttpError::Io)?;
        if received.len() + n > MAX_RESPONSE {
            return Err(HttpError::TooLarge);
        }
        received.extend_from_slice(&buf[..n]);
        match parse_response(&received, n == 0)? {
            Some(response) => {
                let _ = stream.shutdown().await;
                return Ok(response);
            }
            None if n == 0 => return Err(HttpError::Malformed("the connection closed early")),
            None => continue,
        }
    }
}

/// The response in `bytes`, once it is complete: `None` while more is to
/// come. `eof`: the server closed the connection (a body without a length
/// ends there).
pub(super) fn parse_response(bytes: &[u8], eof: bool) -> Result<Option<HttpResponse>, HttpError> {
    let Some(head_len) = head_end(bytes) else {
        if bytes.len() > 5 && !bytes.starts_with(b"HTTP/") {
            return Err(HttpError::Malformed("no HTTP status line"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&bytes[..head_len])
        .map_err(|_| HttpError::Malformed("the header is not text"))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status = status_code(lines.next().unwrap_or_default())?;
    let mut builder = ::oauth2::http::Response::builder().status(status);
    let mut length = None;
    let mut chunked = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(HttpError::Malformed("a header line without ':'"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| HttpError::Malformed("Content-Length is not a number"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::Malformed("two different Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                return Err(HttpError::Malformed("a transfer coding other than chunked"));
            }
        }
        // Headers are data for the oauth2 crate (it checks Content-Type);
        // one http refuses is left out.
        if let (Ok(name), Ok(value)) = (
            ::oauth2::http::HeaderName::from_bytes(name.trim().as_bytes()),
            ::oauth2::http::HeaderValue::from_str(value),
        ) {
            builder = builder.header(name, value);
        }
    }
    let rest = &bytes[head_len..];
    let body = if chunked {
        match dechunk(rest)? {
            Some(body) => body,
            None if eof => return Err(HttpError::Malformed("the chunked body ends early")),
            None => return Ok(None),
        }
    } else if let Some(length) = length {
        match rest.get(..length) {
            Some(body) => body.to_vec(),
            None if eof => {
                return Err(HttpError::Malformed(
                    "the body is shorter than its Content-Length",
                ))
            }
            None => return Ok(None),
        }
    } else if eof || status == 204 || status == 304 {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    builder
        .body(body)
        .map(Some)
        .map_err(|_| HttpError::Malformed("an invalid status"))
}

/// The length of the head: up to and including its empty line.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        match &bytes[i + 1..] {
            [b'\n', ..] => Some(i + 2),
            [b'\r', b'\n', ..] => Some(i + 3),
            _ => None,
        }
    })
}

/// The code of `HTTP/1.x NNN reason`.
fn status_code(line: &str) -> Result<u16, HttpError> {
    let bad = HttpError::Malformed("no HTTP status line");
    let rest = line
        .strip_prefix("HTTP/1.")
        .ok_or(HttpError::Malformed("no HTTP status line"))?;
    let mut parts = rest.splitn(3, ' ');
    let minor = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if minor.len() != 1 || !minor.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    code.parse::<u16>()
        .ok()
        .filter(|c| (100..=599).contains(c))
        .ok_or(bad)
}

/// A chunked body, decoded: `None` while incomplete. Trailers are skipped.
fn dechunk(mut bytes: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = bytes.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&bytes[..line_end])
            .map_err(|_| HttpError::Malformed("a chunk size is not text"))?;
        let size = line.trim_end_matches('\r');
        let size = size.split(';').next().unwrap_or_default().trim();
        if size.is_empty() || size.len() > 8 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HttpError::Malformed("a chunk size is not a hexadecimal number"));
        }
        let size =
            usize::from_str_radix(size, 16).map_err(|_| HttpError::Malformed("a chunk size is too big"))?;
        if size > MAX_RESPONSE {
            return Err(HttpError::TooLarge);
        }
        bytes = &bytes[line_end + 1..];
        if size == 0 {
            // Trailers, then an empty line; a server may also just close.
            return Ok(Some(body));
        }
        let Some(chunk) = bytes.get(..size) else {
            return Ok(None);
        };
        body.extend_from_slice(chunk);
        bytes = &bytes[size..];
        bytes = match bytes {
            [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..] => rest,
            [] | [b'\r'] => return Ok(None),
            _ => return Err(HttpError::Malformed("a chunk does not end with CRLF")),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn complete(bytes: &[u8]) -> HttpResponse {
        parse_response(bytes, false).expect("valid").expect("complete")
    }

    #[test]
    fn responses_with_a_length_chunked_or_until_close() {
        let r = complete(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}extra",
        );
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), b"{}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let chunked = b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: y\r\n\r\n";
        let r = complete(chunked);
        assert_eq!(
            (r.status().as_u16(), r.body().as_slice()),
            (400, &b"{\"a\":1}"[..])
        );
        // Each prefix is incomplete, never an error.
        // Complete once the last chunk (size 0) is read: trailers are not
        // waited for.
        let last_chunk = chunked.windows(5).position(|w| w == b"\r\n0\r\n").expect("last") + 4;
        for cut in 0..last_chunk {
            assert!(
                parse_response(&chunked[..cut], false)
                    .expect("no error")
                    .is_none(),
                "{cut}"
            );
        }
        assert!(parse_response(b"HTTP/1.0 200 OK\n\n{\"x\"", false)
            .expect("ok")
            .is_none());
        let r = parse_response(b"HTTP/1.0 200 OK\n\n{\"x\"", true)
            .expect("ok")
            .expect("eof ends it");
        assert_eq!(r.body(), b"{\"x\"");
    }

    #[test]
    fn malformed_responses_are_errors() {
        for (bytes, eof) in [
            (&b"SSH-2.0-OpenSSH\r\n"[..], false),
            (b"HTTP/1.1 99 x\r\n\r\n", false),
            (b"HTTP/1.1 2000 x\r\n\r\n", false),
            (b"HTTP/2 200\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFF\r\n",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true),
            (b"HTTP/1.1 200 OK\r\n\xff\xfe: x\r\n\r\n", false),
        ] {
            assert!(
                parse_response(bytes, eof).is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(
            head in "HTTP/1\\.[01] [0-9]{3} [ -~]{0,8}\r\n([A-Za-z-]{1,12}: [ -~]{0,12}\r\n){0,4}\r\n",
            body in prop::collection::vec(any::<u8>(), 0..64),
            raw in prop::collection::vec(any::<u8>(), 0..96),
            eof in any::<bool>(),
        ) {
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&body);
            let _ = parse_response(&bytes, eof);
            let _ = parse_response(&raw, eof);
            let _ = dechunk(&raw);
        }
    }
}
