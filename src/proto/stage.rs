//! [`Stage`]: where in a session something happened.

use std::fmt;

/// The step of an SMTP session in which something failed.
///
/// The session names the SMTP steps (and [`Tls`](Stage::Tls) while the shell
/// runs a STARTTLS handshake); [`Resolve`](Stage::Resolve),
/// [`Connect`](Stage::Connect), [`Proxy`](Stage::Proxy) and
/// [`Queue`](Stage::Queue) come from the layers above. Also
/// `relaymail::Stage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// Resolving the server's host name.
    Resolve,
    /// Opening the TCP connection.
    Connect,
    /// Reaching the relay through the configured proxy (SOCKS5 or HTTP
    /// CONNECT): resolving and connecting to the proxy, authenticating to
    /// it, and its connection to the relay. With a proxy this stage stands
    /// where [`Resolve`](Stage::Resolve) and [`Connect`](Stage::Connect)
    /// would: the relay's name is resolved by the proxy.
    Proxy,
    /// Waiting for the server's 220 greeting.
    Greeting,
    /// EHLO (or HELO).
    Ehlo,
    /// The STARTTLS command.
    StartTls,
    /// The TLS handshake (implicit TLS or after STARTTLS).
    Tls,
    /// SMTP AUTH.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// The DATA or BDAT command and the transfer of the message.
    Data,
    /// Waiting for the server's verdict after the end of the message.
    EndOfData,
    /// RSET.
    Rset,
    /// NOOP.
    Noop,
    /// QUIT.
    Quit,
    /// Waiting in the mailer's queue (or out a retry back-off) for a
    /// connection: the message was not on the wire when its send timeout
    /// ran out.
    Queue,
}

impl Stage {
    /// Lower-case name used in messages, e.g. `"rcpt"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Resolve => "resolve",
            Stage::Connect => "connect",
            Stage::Proxy => "proxy",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "ehlo",
            Stage::StartTls => "starttls",
            Stage::Tls => "tls",
            Stage::Auth => "auth",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::EndOfData => "end of data",
            Stage::Rset => "rset",
            Stage::Noop => "noop",
            Stage::Quit => "quit",
            Stage::Queue => "queue",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
