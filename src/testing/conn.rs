//! The connection of one session: plain or TLS stream, input buffer with
//! line framing, and buffered replies.
//!
//! Replies are queued and written when the server needs more input (so the
//! replies to a pipelined group leave together, RFC 2920 §3.1), before a
//! delay or stall, and before the connection closes.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Longest accepted line, CRLF included.
pub(super) const MAX_LINE: usize = 64 * 1024;

/// Bytes asked for per read.
const READ_CHUNK: usize = 16 * 1024;

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the TLS handshake runs, or after it failed.
    Gone,
}

/// What [`Conn::read_line`] found.
pub(super) enum Line {
    /// A line with its LF (and CR, if any), and the 0-based index of the read
    /// that completed it.
    Complete(Vec<u8>, usize),
    /// The peer closed (a partial line is dropped).
    Eof,
    /// The line exceeds [`MAX_LINE`].
    TooLong,
}

pub(super) struct Conn {
    stream: Stream,
    /// Input; bytes before `start` are consumed.
    input: Vec<u8>,
    start: usize,
    /// Bytes after `start` already searched for LF.
    scanned: usize,
    /// Reads completed.
    reads: usize,
    /// Replies not written yet.
    output: Vec<u8>,
}

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Conn {
        Conn {
            stream: Stream::Plain(stream),
            input: Vec::new(),
            start: 0,
            scanned: 0,
            reads: 0,
            output: Vec::new(),
        }
    }

    pub(super) fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Queues bytes for the next write.
    pub(super) fn queue(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    /// Writes the queued bytes.
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let result = match &mut self.stream {
            Stream::Plain(s) => write_all_flush(s, &self.output).await,
            Stream::Tls(s) => write_all_flush(s.as_mut(), &self.output).await,
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        };
        self.output.clear();
        result
    }

    fn pending(&self) -> &[u8] {
        &self.input[self.start..]
    }

    /// Flushes the replies, then reads once more input. `false` at EOF.
    async fn fill(&mut self) -> io::Result<bool> {
        self.flush().await?;
        if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        let old = self.input.len();
        self.input.resize(old + READ_CHUNK, 0);
        let result = match &mut self.stream {
            Stream::Plain(s) => s.read(&mut self.input[old..]).await,
            Stream::Tls(s) => s.read(&mut self.input[old..]).await,
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        };
        let n = *result.as_ref().unwrap_or(&0);
        self.input.truncate(old + n);
        result?;
        if n == 0 {
            return Ok(false);
        }
        self.reads += 1;
        Ok(true)
    }

    /// The next line, LF included. Reads only when no complete line is
    /// buffered, so every buffered LF came with the latest read.
    pub(super) async fn read_line(&mut self) -> io::Result<Line> {
        loop {
            let pending = self.pending();
            if let Some(at) = pending[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + at + 1;
                if end > MAX_LINE {
                    return Ok(Line::TooLong);
                }
                let line = pending[..end].to_vec();
                self.start += end;
                self.scanned = 0;
                return Ok(Line::Complete(line, self.reads.saturating_sub(1)));
            }
            self.scanned = pending.len();
            if self.scanned >= MAX_LINE {
                return Ok(Line::TooLong);
            }
            if !self.fill().await? {
                return Ok(Line::Eof);
            }
        }
    }

    /// Consumes exactly `n` bytes, appending them to `keep` when given.
    /// `false` when the peer closed first.
    pub(super) async fn read_exact(
        &mut self,
        mut n: u64,
        mut keep: Option<&mut Vec<u8>>,
    ) -> io::Result<bool> {
        loop {
            let pending = self.pending();
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(pending.len());
            if let Some(keep) = keep.as_deref_mut() {
                keep.extend_from_slice(&pending[..take]);
            }
            self.start += take;
            self.scanned = 0;
            n -= take as u64;
            if n == 0 {
                return Ok(true);
            }
            if !self.fill().await? {
                return Ok(false);
            }
        }
    }

    /// Throws the buffered input away; returns how many bytes that was.
    pub(super) fn discard_input(&mut self) -> usize {
        let discarded = self.pending().len();
        self.input.clear();
        self.start = 0;
        self.scanned = 0;
        discarded
    }

    /// Flushes, then runs the server side of the TLS handshake on the plain
    /// stream. The caller discards buffered plain-text input first. When the
    /// handshake fails, the plain stream is kept (its alert already sent),
    /// so that the session can close it lingering: closing with the
    /// client's next bytes unread would reset the connection, which can
    /// destroy the alert before the client reads it.
    pub(super) async fn start_tls(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        self.flush().await?;
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(io::Error::other("TLS is already active"));
        };
        match acceptor.accept(tcp).into_fallible().await {
            Ok(tls) => {
                self.stream = Stream::Tls(Box::new(tls));
                Ok(())
            }
            Err((e, tcp)) => {
                self.stream = Stream::Plain(tcp);
                Err(e)
            }
        }
    }

    /// The subject of the client certificate presented in the TLS
    /// handshake, if any.
    pub(super) fn client_certificate(&self) -> Option<String> {
        let Stream::Tls(tls) = &self.stream else {
            return None;
        };
        let leaf = tls.get_ref().1.peer_certificates()?.first()?;
        Some(match webpki::EndEntityCert::try_from(leaf) {
            Ok(cert) => crate::transport::tls::distinguished_name(cert.subject()),
            Err(_) => "(unreadable certificate)".to_owned(),
        })
    }

    /// Flushes, then reads and ignores everything until the peer closes.
    pub(super) async fn stall(&mut self) -> io::Result<()> {
        self.flush().await?;
        loop {
            self.discard_input();
            if !self.fill().await? {
                return Ok(());
            }
        }
    }

    /// Flushes and closes (sending close_notify on TLS).
    pub(super) async fn close(&mut self) {
        self.shutdown().await;
        self.stream = Stream::Gone;
    }

    /// Flushes, half-closes, then reads and drops input until the peer
    /// closes (for at most `limit`): closing with unread input would send a
    /// reset, which can destroy the last reply before the client reads it.
    pub(super) async fn close_lingering(&mut self, limit: Duration) {
        self.shutdown().await;
        let drain = async {
            loop {
                self.discard_input();
                if !matches!(self.fill().await, Ok(true)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(limit, drain).await;
        self.stream = Stream::Gone;
    }

    async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = match &mut self.stream {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Gone => Ok(()),
        };
    }
}

async fn write_all_flush<W: AsyncWriteExt + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}
