//! Tests of the SMTP test server, with raw TCP/TLS clients and relaymail's
//! own protocol core as the client.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::*;
use crate::proto::auth::{self, Credential, Mechanism, SaslClient};
use crate::proto::session::{Envelope, Event, Session, SessionConfig, StartTlsPolicy, Transaction};

/// Upper bound for anything that is expected to happen.
const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is checked.
const SHORT: Duration = Duration::from_millis(300);

const PASSWORD: &str = "Secr3t-pa55w0rd";
const TOKEN: &str = "ya29.bearer-token-value";

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Upgrading,
}

/// A raw SMTP client.
struct Client {
    stream: Stream,
    buf: Vec<u8>,
}

fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_handshake(tcp: TcpStream, ca_pem: &str, name: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(WAIT, connector(ca_pem).connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
}

impl Client {
    async fn connect(server: &TestServer) -> Client {
        Client::connect_to(server.addr()).await
    }

    async fn connect_to(addr: std::net::SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Client {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
        }
    }

    /// Connects and reads a 220 greeting.
    async fn greeted(server: &TestServer) -> Client {
        let mut client = Client::connect(server).await;
        let greeting = client.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        client
    }

    /// Implicit TLS: connects, handshakes, reads the greeting.
    async fn greeted_tls(server: &TestServer) -> Client {
        let tcp = TcpStream::connect(server.addr()).await.unwrap();
        let tls = tls_handshake(tcp, server.ca_pem(), "localhost").await.unwrap();
        let mut client = Client {
            stream: Stream::Tls(Box::new(tls)),
            buf: Vec::new(),
        };
        let greeting = client.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        client
    }

    async fn write(&mut self, bytes: &[u8]) {
        match &mut self.stream {
            Stream::Plain(s) => s.write_all(bytes).await.unwrap(),
            Stream::Tls(s) => {
                s.write_all(bytes).await.unwrap();
                s.flush().await.unwrap();
            }
            Stream::Upgrading => unreachable!(),
        }
    }

    /// One read into the buffer within `limit`: `None` on timeout,
    /// `Some(0)` at EOF (a reset counts as EOF).
    async fn read_within(&mut self, limit: Duration) -> Option<usize> {
        let mut chunk = [0u8; 8192];
        let read = async {
            match &mut self.stream {
                Stream::Plain(s) => s.read(&mut chunk).await,
                Stream::Tls(s) => s.read(&mut chunk).await,
                Stream::Upgrading => unreachable!(),
            }
        };
        let n = tokio::time::timeout(limit, read).await.ok()?.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        Some(n)
    }

    async fn read_more(&mut self) -> usize {
        self.read_within(WAIT)
            .await
            .expect("timed out waiting for the server")
    }

    /// The next complete reply, lines joined with "\n".
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            while let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..at].to_vec()).unwrap();
                self.buf.drain(..at + 2);
                let last = line.len() < 4 || line.as_bytes()[3] == b' ';
                lines.push(line);
                if last {
                    return lines.join("\n");
                }
            }
            if self.read_more().await == 0 {
                panic!("EOF while waiting for a reply; got {lines:?}");
            }
        }
    }

    /// Sends one command line and returns its reply.
    async fn cmd(&mut self, line: &str) -> String {
        self.write(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    async fn ehlo(&mut self) -> String {
        let reply = self.cmd("EHLO client.example").await;
        assert!(reply.starts_with("250"), "{reply}");
        reply
    }

    /// STARTTLS and the handshake.
    async fn starttls(&mut self, ca_pem: &str) {
        let reply = self.cmd("STARTTLS").await;
        assert_eq!(reply, "220 2.0.0 Ready to start TLS");
        self.upgrade(ca_pem).await;
    }

    async fn upgrade(&mut self, ca_pem: &str) {
        assert!(self.buf.is_empty(), "bytes after the 220: {:?}", self.buf);
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            panic!("already TLS");
        };
        let tls = tls_handshake(tcp, ca_pem, "localhost").await.unwrap();
        self.stream = Stream::Tls(Box::new(tls));
    }

    async fn expect_eof(&mut self) {
        loop {
            match self.read_within(WAIT).await {
                Some(0) => return,
                Some(_) => {}
                None => panic!("the server did not close the connection"),
            }
        }
    }

    async fn expect_silence(&mut self) {
        assert_eq!(self.read_within(SHORT).await, None, "unexpected: {:?}", self.buf);
        assert!(self.buf.is_empty());
    }

    /// A whole transaction with DATA, one command per write.
    async fn send_message(&mut self, from: &str, to: &str, body: &str) -> String {
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).await, "250 2.1.0 Ok");
        assert_eq!(self.cmd(&format!("RCPT TO:<{to}>")).await, "250 2.1.5 Ok");
        assert!(self.cmd("DATA").await.starts_with("354 "));
        self.cmd(&format!("{body}\r\n.")).await
    }
}

fn password(username: &str, secret: &str) -> Credential {
    Credential::Password {
        username: username.to_owned(),
        password: SecretString::from(secret),
    }
}

fn token(username: &str, secret: &str) -> Credential {
    Credential::OAuth2 {
        username: username.to_owned(),
        token: SecretString::from(secret),
    }
}

/// Runs an AUTH exchange with relaymail's SASL client; returns the final
/// reply and the client (for `finish` and `server_error`).
async fn sasl_exchange(
    client: &mut Client,
    credential: &Credential,
    mechanism: Mechanism,
    initial: bool,
) -> (String, SaslClient) {
    let mut sasl = SaslClient::new(mechanism, credential, "cNonce-4711").unwrap();
    let mut line = format!("AUTH {}", mechanism.name());
    if initial {
        if let Some(raw) = sasl.initial_response() {
            line.push(' ');
            line.push_str(std::str::from_utf8(&auth::encode_initial_response(&raw)).unwrap());
        }
    }
    let mut reply = client.cmd(&line).await;
    while let Some(text) = reply.strip_prefix("334 ") {
        let challenge = auth::decode_challenge(text).unwrap();
        let response = sasl.respond(&challenge).unwrap();
        let encoded = auth::encode_continuation(&response);
        reply = client.cmd(std::str::from_utf8(&encoded).unwrap()).await;
    }
    (reply, sasl)
}

fn auth_config() -> ServerConfig {
    ServerConfig::new()
        .auth_mechanisms(&[
            "SCRAM-SHA-256",
            "CRAM-MD5",
            "PLAIN",
            "LOGIN",
            "XOAUTH2",
            "OAUTHBEARER",
            "GSSAPI",
        ])
        .user("alice", PASSWORD)
        .user("bob@example.com", TOKEN)
}

/// No record line holds a secret, in clear or base64.
fn assert_no_secrets(server: &TestServer) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let forbidden = [
        PASSWORD.to_owned(),
        TOKEN.to_owned(),
        b64.encode(PASSWORD),
        b64.encode(format!("\0alice\0{PASSWORD}")),
        b64.encode(format!("user=bob@example.com\x01auth=Bearer {TOKEN}\x01\x01")),
        b64.encode(format!("n,a=bob@example.com,\x01auth=Bearer {TOKEN}\x01\x01")),
    ];
    for session in server.sessions() {
        for command in &session.commands {
            for secret in &forbidden {
                assert!(!command.line.contains(secret.as_str()), "{:?}", command.line);
            }
            if command.line.to_ascii_uppercase().starts_with("AUTH") {
                assert!(command.line.split(' ').count() <= 2, "{:?}", command.line);
            }
        }
    }
}

#[tokio::test]
async fn greeting_ehlo_and_helo() {
    let server = TestServer::start(ServerConfig::new()).await.unwrap();
    assert_eq!(server.addr().ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_eq!(server.port(), server.addr().port());
    assert!(server.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));

    let mut client = Client::connect(&server).await;
    assert_eq!(client.reply().await, "220 relaymail-test ESMTP");
    assert_eq!(
        client.cmd("EHLO client.example").await,
        "250-relaymail-test\n250-PIPELINING\n250-8BITMIME\n250 ENHANCEDSTATUSCODES"
    );
    assert_eq!(client.cmd("HELO other.example").await, "250 relaymail-test");
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 Ok");
    assert_eq!(client.cmd("RSET").await, "250 2.0.0 Ok");
    assert_eq!(
        client.cmd("VRFY alice").await,
        "502 5.5.2 Error: command not recognized"
    );
    assert_eq!(
        client.cmd("STARTTLS").await,
        "502 5.5.1 Error: command not implemented"
    );
    assert_eq!(
        client.cmd("BDAT 3 LAST").await,
        "502 5.5.2 Error: command not recognized"
    );
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye");
    client.expect_eof().await;

    let sessions = server.wait_for_closed_sessions(1, WAIT).await.unwrap();
    let session = &sessions[0];
    assert_eq!(session.id, 0);
    assert_eq!(session.helo.as_deref(), Some("other.example"));
    assert!(session.quit && session.closed && !session.tls);
    let lines: Vec<&str> = session.commands.iter().map(|c| c.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "EHLO client.example",
            "HELO other.example",
            "NOOP",
            "RSET",
            "VRFY alice",
            "STARTTLS",
            "BDAT 3 LAST",
            "QUIT"
        ]
    );
}

#[tokio::test]
async fn ehlo_lists_configured_extensions() {
    let server = TestServer::start(
        ServerConfig::new()
            .greeting("220-relaymail-test first line\r\n220 ready")
            .pipelining(false)
            .eightbitmime(false)
            .size_limit(Some(1000))
            .starttls(true)
            .auth_mechanisms(&["plain", "LOGIN"])
            .chunking(true)
            .smtputf8(true)
            .dsn(true)
            .ehlo_line("XFOO bar"),
    )
    .await
    .unwrap();
    let mut client = Client::connect(&server).await;
    assert_eq!(client.reply().await, "220-relaymail-test first line\n220 ready");
    assert_eq!(
        client.ehlo().await,
        "250-relaymail-test\n250-SIZE 1000\n250-ENHANCEDSTATUSCODES\n250-STARTTLS\n250-AUTH PLAIN LOGIN\n\
         250-CHUNKING\n250-SMTPUTF8\n250-DSN\n250 XFOO bar"
    );

    let server = TestServer::start(ServerConfig::new().ehlo(false)).await.unwrap();
    let mut client = Client::greeted(&server).await;
    assert_eq!(
        client.cmd("EHLO client.example").await,
        "502 5.5.2 Error: command not recognized"
    );
    assert_eq!(client.cmd("HELO client.example").await, "250 relaymail-test");
    assert_eq!(
        client.cmd("EHLO").await,
        "502 5.5.2 Error: command not recognized"
    );
    assert_eq!(client.cmd("HELO").await, "501 5.5.4 Syntax: HELO hostname");
}

#[tokio::test]
async fn pipelined_commands_share_a_batch_and_are_answered_in_order() {
    let server = TestServer::start(
        ServerConfig::new().reject_recipient("nobody@example.net", "550 5.1.1 User unknown"),
    )
    .await
    .unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    client
        .write(
            b"MAIL FROM:<alerts@example.com> BODY=8BITMIME\r\nRCPT TO:<ops@example.net>\r\n\
              RCPT TO:<NOBODY@example.net>\r\nRCPT TO:<dev@example.net>\r\nDATA\r\n",
        )
        .await;
    assert_eq!(client.reply().await, "250 2.1.0 Ok");
    assert_eq!(client.reply().await, "250 2.1.5 Ok");
    assert_eq!(client.reply().await, "550 5.1.1 User unknown");
    assert_eq!(client.reply().await, "250 2.1.5 Ok");
    assert_eq!(client.reply().await, "354 End data with <CR><LF>.<CR><LF>");
    let done = client.cmd("Subject: hi\r\n\r\nbody\r\n.").await;
    let queue_id = done.strip_prefix("250 2.0.0 Ok: queued as ").unwrap().to_owned();

    let messages = server.wait_for_messages(1, WAIT).await.unwrap();
    let message = &messages[0];
    assert_eq!(message.queue_id, queue_id);
    assert_eq!(message.session, 0);
    assert_eq!(message.mail_from, "alerts@example.com");
    assert_eq!(message.mail_params, ["BODY=8BITMIME"]);
    assert_eq!(message.rcpt_to, ["ops@example.net", "dev@example.net"]);
    assert_eq!(message.rcpt_params, [Vec::<String>::new(), Vec::new()]);
    assert_eq!(message.data, b"Subject: hi\r\n\r\nbody\r\n");
    assert!(!message.via_bdat && !message.tls && !message.bare_line_endings);
    assert_eq!(message.auth_user, None);

    let session = &server.sessions()[0];
    assert_eq!(session.messages, 1);
    let commands = &session.commands;
    assert_eq!(commands.len(), 6);
    assert_eq!(commands[0].line, "EHLO client.example");
    assert_eq!(commands[5].line, "DATA");
    let batch = commands[1].batch;
    assert!(batch > commands[0].batch);
    assert!(
        commands[1..].iter().all(|c| c.batch == batch && !c.tls),
        "{commands:?}"
    );
}

#[tokio::test]
async fn data_is_unstuffed_and_bare_line_endings_are_detected() {
    let server = TestServer::start(ServerConfig::new()).await.unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;

    let reply = client
        .send_message(
            "a@example.com",
            "b@example.com",
            "Subject: dots\r\n\r\n..leading dot\r\n..\r\nmid . dot\r\n...",
        )
        .await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");

    // A smuggling attempt: "\n.\r\n" does not end the message, so the MAIL
    // line inside is content, not a command.
    assert_eq!(client.cmd("MAIL FROM:<a@example.com>").await, "250 2.1.0 Ok");
    assert_eq!(client.cmd("RCPT TO:<b@example.com>").await, "250 2.1.5 Ok");
    assert!(client.cmd("DATA").await.starts_with("354"));
    client
        .write(b"a\r\n\n.\r\nMAIL FROM:<evil@example.com>\r\nbare\rcr\r\n.\r\n")
        .await;
    assert!(client.reply().await.starts_with("250 2.0.0 Ok: queued as "));

    let messages = server.wait_for_messages(2, WAIT).await.unwrap();
    assert_eq!(
        messages[0].data,
        b"Subject: dots\r\n\r\n.leading dot\r\n.\r\nmid . dot\r\n..\r\n"
    );
    assert!(!messages[0].bare_line_endings);
    assert_eq!(
        messages[1].data,
        b"a\r\n\n.\r\nMAIL FROM:<evil@example.com>\r\nbare\rcr\r\n"
    );
    assert!(messages[1].bare_line_endings);
    assert_ne!(messages[0].queue_id, messages[1].queue_id);
    let lines: Vec<String> = server.sessions()[0]
        .commands
        .iter()
        .map(|c| c.line.clone())
        .collect();
    assert!(!lines.iter().any(|l| l.contains("evil")), "{lines:?}");

    // An empty message and one with just a bare CR.
    let reply = client.send_message("a@example.com", "b@example.com", "").await;
    assert!(reply.starts_with("250 "), "{reply}");
    assert_eq!(client.cmd("MAIL FROM:<>").await, "250 2.1.0 Ok");
    assert_eq!(client.cmd("RCPT TO:<b@example.com>").await, "250 2.1.5 Ok");
    assert!(client.cmd("DATA").await.starts_with("354"));
    assert!(client.cmd("x\ry\r\n.").await.starts_with("250 "));
    let messages = server.wait_for_messages(4, WAIT).await.unwrap();
    assert_eq!(messages[2].data, b"\r\n");
    assert_eq!(messages[3].mail_from, "");
    assert!(messages[3].bare_line_endings);
}

#[tokio::test]
async fn transaction_sequence_errors() {
    let server = TestServer::start(ServerConfig::new()).await.unwrap();
    let mut client = Client::greeted(&server).await;
    assert_eq!(
        client.cmd("MAIL FROM:<a@example.com>").await,
        "503 5.5.1 Error: send HELO/EHLO first"
    );
    client.ehlo().await;
    assert_eq!(
        client.cmd("RCPT TO:<b@example.com>").await,
        "503 5.5.1 Error: need MAIL command"
    );
    assert_eq!(client.cmd("DATA").await, "503 5.5.1 Error: need RCPT command");
    assert_eq!(
        client.cmd("MAIL FROM:a@example.com").await,
        "501 5.5.4 Syntax: MAIL FROM:<address>"
    );
    assert_eq!(
        client.cmd("MAIL TO:<a@example.com>").await,
        "501 5.5.4 Syntax: MAIL FROM:<address>"
    );
    assert_eq!(
        client.cmd("mail from: <\"odd>quote\"@example.com> SIZE=5").await,
        "555 5.5.4 Unsupported option: SIZE=5"
    );
    assert_eq!(
        client.cmd("mail from: <\"odd>quote\"@example.com>").await,
        "250 2.1.0 Ok"
    );
    assert_eq!(
        client.cmd("MAIL FROM:<a@example.com>").await,
        "503 5.5.1 Error: nested MAIL command"
    );
    assert_eq!(client.cmd("DATA").await, "554 5.5.1 Error: no valid recipients");
    assert_eq!(
        client.cmd("RCPT TO:<>").await,
        "501 5.1.3 Bad recipient address syntax"
    );
    assert_eq!(
        client.cmd("RCPT TO:<b@example.com> NOTIFY=NEVER").await,
        "555 5.5.4 Unsupported option: NOTIFY=NEVER"
    );
    assert_eq!(
        client.cmd("RCPT TO:<jörg@example.com>").await,
        "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
    );
    assert_eq!(client.cmd("rcpt to:<b@example.com>").await, "250 2.1.5 Ok");
    assert_eq!(client.cmd("DATA now").await, "501 5.5.4 Syntax: DATA");
    assert_eq!(client.cmd("RSET").await, "250 2.0.0 Ok");
    assert_eq!(client.cmd("DATA").await, "503 5.5.1 Error: need RCPT command");
    assert_eq!(client.cmd("").await, "500 5.5.2 Error: bad syntax");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn extension_parameters_are_checked_and_recorded() {
    let server = TestServer::start(
        ServerConfig::new()
            .smtputf8(true)
            .dsn(true)
            .reject_sender("blocked@example.com", "553 5.7.1 Sender address rejected"),
    )
    .await
    .unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    assert_eq!(
        client.cmd("MAIL FROM:<Blocked@Example.com>").await,
        "553 5.7.1 Sender address rejected"
    );
    assert_eq!(
        client.cmd("MAIL FROM:<a@example.com> BODY=BINARYMIME").await,
        "555 5.5.4 Unsupported option: BODY=BINARYMIME"
    );
    assert_eq!(
        client
            .cmd("MAIL FROM:<jörg@example.com> SMTPUTF8 BODY=8BITMIME RET=HDRS ENVID=x1")
            .await,
        "250 2.1.0 Ok"
    );
    assert_eq!(
        client
            .cmd("RCPT TO:<ünï@example.com> NOTIFY=FAILURE,DELAY ORCPT=rfc822;u@example.com")
            .await,
        "250 2.1.5 Ok"
    );
    assert!(client.cmd("DATA").await.starts_with("354"));
    assert!(client.cmd("Subject: ü\r\n\r\nü\r\n.").await.starts_with("250 "));
    let messages = server.wait_for_messages(1, WAIT).await.unwrap();
    assert_eq!(messages[0].mail_from, "jörg@example.com");
    assert_eq!(
        messages[0].mail_params,
        ["SMTPUTF8", "BODY=8BITMIME", "RET=HDRS", "ENVID=x1"]
    );
    assert_eq!(messages[0].rcpt_to, ["ünï@example.com"]);
    assert_eq!(
        messages[0].rcpt_params,
        [vec!["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;u@example.com"]]
    );
    assert_eq!(messages[0].data, "Subject: ü\r\n\r\nü\r\n".as_bytes());
}

#[tokio::test]
async fn bdat_chunks_are_concatenated() {
    let server = TestServer::start(ServerConfig::new().chunking(true))
        .await
        .unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    client
        .write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 7\r\na\r\n.\r\nbBDAT 6 LAST\r\n world")
        .await;
    assert_eq!(client.reply().await, "250 2.1.0 Ok");
    assert_eq!(client.reply().await, "250 2.1.5 Ok");
    assert_eq!(client.reply().await, "250 2.0.0 Ok: 7 octets received");
    let reply = client.reply().await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");

    // Without recipients the chunk is read and dropped, not run as commands.
    assert_eq!(client.cmd("MAIL FROM:<a@example.com>").await, "250 2.1.0 Ok");
    client.write(b"BDAT 6 LAST\r\nQUIT\r\n").await;
    assert_eq!(client.reply().await, "554 5.5.1 Error: no valid recipients");
    client.write(b"BDAT 4\r\nRSET").await;
    assert_eq!(client.reply().await, "554 5.5.1 Error: no valid recipients");
    assert_eq!(client.cmd("RSET").await, "250 2.0.0 Ok");
    client.write(b"BDAT 4 LAST\r\nNOOP").await;
    assert_eq!(client.reply().await, "503 5.5.1 Error: need MAIL command");
    // BDAT 0 LAST ends a message; DATA after BDAT is refused.
    client
        .write(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 3\r\nabcDATA\r\nBDAT 0 LAST\r\n",
        )
        .await;
    assert_eq!(client.reply().await, "250 2.1.0 Ok");
    assert_eq!(client.reply().await, "250 2.1.5 Ok");
    assert_eq!(client.reply().await, "250 2.0.0 Ok: 3 octets received");
    assert_eq!(client.reply().await, "503 5.5.1 Error: DATA after BDAT");
    assert!(client.reply().await.starts_with("250 2.0.0 Ok: queued as "));

    let messages = server.wait_for_messages(2, WAIT).await.unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].data, b"a\r\n.\r\nb world");
    assert!(messages[0].via_bdat && !messages[0].bare_line_endings);
    assert_eq!(messages[1].data, b"abc");
    let lines: Vec<String> = server.sessions()[0]
        .commands
        .iter()
        .map(|c| c.line.clone())
        .collect();
    assert!(!lines.iter().any(|l| l == "QUIT" || l == "NOOP"), "{lines:?}");

    // A BDAT line that cannot be framed closes the connection.
    assert_eq!(
        client.cmd("BDAT lots").await,
        "501 5.5.4 Syntax: BDAT size [LAST]"
    );
    client.expect_eof().await;
}

#[tokio::test]
async fn size_limit_refuses_big_messages() {
    let server = TestServer::start(ServerConfig::new().size_limit(Some(100)).chunking(true))
        .await
        .unwrap();
    let mut client = Client::greeted(&server).await;
    assert!(client.ehlo().await.contains("\n250-SIZE 100\n"));
    assert_eq!(
        client.cmd("MAIL FROM:<a@example.com> SIZE=101").await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    assert_eq!(
        client.cmd("MAIL FROM:<a@example.com> SIZE=1x").await,
        "501 5.5.4 Bad SIZE parameter"
    );
    assert_eq!(
        client.cmd("MAIL FROM:<a@example.com> SIZE=100").await,
        "250 2.1.0 Ok"
    );
    assert_eq!(client.cmd("RCPT TO:<b@example.com>").await, "250 2.1.5 Ok");
    assert!(client.cmd("DATA").await.starts_with("354"));
    let big = "x".repeat(150);
    assert_eq!(
        client.cmd(&format!("{big}\r\n.")).await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    client
        .write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 60\r\n")
        .await;
    client.write(&[b'y'; 60]).await;
    client.write(b"BDAT 60 LAST\r\n").await;
    client.write(&[b'z'; 60]).await;
    assert_eq!(client.reply().await, "250 2.1.0 Ok");
    assert_eq!(client.reply().await, "250 2.1.5 Ok");
    assert_eq!(client.reply().await, "250 2.0.0 Ok: 60 octets received");
    assert_eq!(
        client.reply().await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    // The session goes on; a message within the limit is accepted.
    let reply = client
        .send_message("a@example.com", "b@example.com", "small")
        .await;
    assert!(reply.starts_with("250 "), "{reply}");
    let messages = server.wait_for_messages(1, WAIT).await.unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].data, b"small\r\n");
}

#[tokio::test]
async fn starttls_upgrades_and_auth_appears_after_tls() {
    let server = TestServer::start(
        ServerConfig::new()
            .starttls(true)
            .auth_mechanisms(&["PLAIN"])
            .user("alice", PASSWORD)
            .auth_after_tls_only(true),
    )
    .await
    .unwrap();
    let mut client = Client::greeted(&server).await;
    let ehlo = client.ehlo().await;
    assert!(
        ehlo.ends_with("\n250 STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert_eq!(
        client.cmd("AUTH PLAIN").await,
        "503 5.5.1 Error: authentication not enabled"
    );
    assert_eq!(client.cmd("STARTTLS now").await, "501 5.5.4 Syntax: STARTTLS");
    client.starttls(server.ca_pem()).await;
    // State was reset: EHLO again.
    assert_eq!(
        client.cmd("MAIL FROM:<a@example.com>").await,
        "503 5.5.1 Error: send HELO/EHLO first"
    );
    let ehlo = client.cmd("EHLO client.example").await;
    assert!(
        ehlo.ends_with("\n250 AUTH PLAIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert_eq!(
        client.cmd("STARTTLS").await,
        "503 5.5.1 Error: TLS already active"
    );
    let (reply, _) = sasl_exchange(&mut client, &password("alice", PASSWORD), Mechanism::Plain, true).await;
    assert_eq!(reply, "235 2.7.0 Authentication successful");
    let reply = client
        .send_message("alice@example.com", "b@example.com", "secure")
        .await;
    assert!(reply.starts_with("250 "), "{reply}");
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye");
    client.expect_eof().await;

    let messages = server.wait_for_messages(1, WAIT).await.unwrap();
    assert!(messages[0].tls);
    assert_eq!(messages[0].auth_user.as_deref(), Some("alice"));
    let sessions = server.wait_for_closed_sessions(1, WAIT).await.unwrap();
    let session = &sessions[0];
    assert!(session.tls && session.quit);
    assert_eq!(session.auth_user.as_deref(), Some("alice"));
    assert_eq!(session.auth_mechanism.as_deref(), Some("PLAIN"));
    assert_eq!(session.discarded_after_starttls, 0);
    let starttls = session
        .commands
        .iter()
        .position(|c| c.line == "STARTTLS")
        .unwrap();
    assert!(session.commands[..=starttls].iter().all(|c| !c.tls));
    assert!(session.commands[starttls + 1..].iter().all(|c| c.tls));
    assert_no_secrets(&server);
}

#[tokio::test]
async fn starttls_discards_pipelined_plain_text() {
    let server = TestServer::start(ServerConfig::new().starttls(true))
        .await
        .unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    client
        .write(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
        .await;
    assert_eq!(client.reply().await, "220 2.0.0 Ready to start TLS");
    client.upgrade(server.ca_pem()).await;
    // The injected MAIL was not taken.
    assert_eq!(
        client.cmd("RCPT TO:<b@example.com>").await,
        "503 5.5.1 Error: need MAIL command"
    );
    let session = &server.sessions()[0];
    assert_eq!(session.discarded_after_starttls, 34);
    assert!(!session.commands.iter().any(|c| c.line.contains("injected")));
}

#[tokio::test]
async fn implicit_tls_session() {
    let server = TestServer::start(ServerConfig::new().implicit_tls(true).starttls(true))
        .await
        .unwrap();
    let mut client = Client::greeted_tls(&server).await;
    let ehlo = client.ehlo().await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let reply = client
        .send_message("a@example.com", "b@example.com", "over tls")
        .await;
    assert!(reply.starts_with("250 "), "{reply}");
    let messages = server.wait_for_messages(1, WAIT).await.unwrap();
    assert!(messages[0].tls);
    let session = &server.sessions()[0];
    assert!(session.tls && session.commands.iter().all(|c| c.tls));
}

#[tokio::test]
async fn certificates_follow_the_configuration() {
    // Names: the leaf is valid for the configured name only.
    let server = TestServer::start(
        ServerConfig::new()
            .implicit_tls(true)
            .cert_names(&["mail.test", "::1"]),
    )
    .await
    .unwrap();
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    assert!(tls_handshake(tcp, server.ca_pem(), "mail.test").await.is_ok());
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    assert!(tls_handshake(tcp, server.ca_pem(), "localhost").await.is_err());

    // The default names include the IP address.
    let server = TestServer::start(ServerConfig::new().implicit_tls(true))
        .await
        .unwrap();
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    assert!(tls_handshake(tcp, server.ca_pem(), "127.0.0.1").await.is_ok());

    // Untrusted: the CA does not vouch for the leaf.
    let server = TestServer::start(ServerConfig::new().implicit_tls(true).untrusted_cert(true))
        .await
        .unwrap();
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let error = tls_handshake(tcp, server.ca_pem(), "localhost")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
    let sessions = server.wait_for_closed_sessions(1, WAIT).await.unwrap();
    assert!(sessions[0].commands.is_empty());

    // A name rcgen cannot use is an error at start.
    let error = TestServer::start(ServerConfig::new().cert_names(&["\u{fc}nicode.example"]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

/// Success and failure of one mechanism, with relaymail's SASL client.
async fn check_mechanism(mechanism: Mechanism, good: Credential, bad: Credential, initial: bool) {
    let server = TestServer::start(auth_config()).await.unwrap();
    let mut client = Client::greeted(&server).await;
    assert!(client
        .ehlo()
        .await
        .ends_with("\n250 AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN XOAUTH2 OAUTHBEARER GSSAPI"));
    let (reply, sasl) = sasl_exchange(&mut client, &good, mechanism, initial).await;
    assert_eq!(reply, "235 2.7.0 Authentication successful", "{mechanism}");
    assert_eq!(sasl.finish(), Ok(()), "{mechanism}");
    assert_eq!(
        client.cmd("AUTH PLAIN").await,
        "503 5.5.1 Error: already authenticated"
    );
    let reply = client
        .send_message("a@example.com", "b@example.com", "authenticated")
        .await;
    assert!(reply.starts_with("250 "), "{reply}");

    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    let (reply, sasl) = sasl_exchange(&mut client, &bad, mechanism, initial).await;
    assert_eq!(
        reply, "535 5.7.8 Authentication credentials invalid",
        "{mechanism}"
    );
    if mechanism == Mechanism::XOAuth2 {
        assert!(sasl.server_error().unwrap().contains("\"status\":\"401\""));
    }
    if mechanism == Mechanism::OAuthBearer {
        assert!(sasl.bearer_error().unwrap().is_invalid_token());
    }
    if mechanism.takes_token() {
        // The answer to the error challenge is recorded as sent: `\x01`
        // (base64 `AQ==`) for OAUTHBEARER, an empty line for XOAUTH2.
        let lines: Vec<String> = server.sessions()[1]
            .commands
            .iter()
            .map(|c| c.line.clone())
            .collect();
        let answer = if mechanism == Mechanism::OAuthBearer {
            "AQ=="
        } else {
            ""
        };
        let auth = lines.iter().position(|l| l.starts_with("AUTH ")).unwrap();
        let expected_answer_at = if initial { auth + 1 } else { auth + 2 };
        assert_eq!(lines[expected_answer_at], answer, "{lines:?}");
    }
    // The session goes on unauthenticated.
    let reply = client
        .send_message("a@example.com", "b@example.com", "anonymous")
        .await;
    assert!(reply.starts_with("250 "), "{reply}");

    let messages = server.wait_for_messages(2, WAIT).await.unwrap();
    assert_eq!(messages[0].auth_user.as_deref(), Some(good.username()));
    assert_eq!(messages[1].auth_user, None);
    let sessions = server.sessions();
    assert_eq!(sessions[0].auth_user.as_deref(), Some(good.username()));
    assert_eq!(sessions[0].auth_mechanism.as_deref(), Some(mechanism.name()));
    assert_eq!(sessions[1].auth_user, None);
    let auth_line = format!("AUTH {}", mechanism.name());
    assert!(sessions[0].commands.iter().any(|c| c.line == auth_line));
    assert!(sessions[0].commands.iter().any(|c| c.line == "[auth data]") || initial);
    assert_no_secrets(&server);
}

#[tokio::test]
async fn auth_plain() {
    let good = password("alice", PASSWORD);
    let bad = password("alice", "wrong");
    check_mechanism(Mechanism::Plain, good.clone(), bad.clone(), true).await;
    check_mechanism(Mechanism::Plain, good, bad, false).await;
    // Unknown user.
    check_mechanism(
        Mechanism::Plain,
        password("alice", PASSWORD),
        password("mallory", PASSWORD),
        true,
    )
    .await;
}

#[tokio::test]
async fn auth_login() {
    check_mechanism(
        Mechanism::Login,
        password("alice", PASSWORD),
        password("alice", "wrong"),
        false,
    )
    .await;
}

#[tokio::test]
async fn auth_login_prompts_and_initial_response() {
    let server = TestServer::start(auth_config()).await.unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    assert_eq!(client.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(client.cmd("YWxpY2U=").await, "334 UGFzc3dvcmQ6");
    assert_eq!(client.cmd("*").await, "501 5.7.0 Authentication cancelled");
    // The user name as initial response skips the first prompt.
    assert_eq!(client.cmd("AUTH LOGIN YWxpY2U=").await, "334 UGFzc3dvcmQ6");
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(PASSWORD);
    assert_eq!(client.cmd(&encoded).await, "235 2.7.0 Authentication successful");
    assert_no_secrets(&server);
}

#[tokio::test]
async fn auth_cram_md5() {
    check_mechanism(
        Mechanism::CramMd5,
        password("alice", PASSWORD),
        password("alice", "wrong"),
        false,
    )
    .await;
    let server = TestServer::start(auth_config()).await.unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    let reply = client.cmd("AUTH CRAM-MD5").await;
    let challenge = auth::decode_challenge(reply.strip_prefix("334 ").unwrap()).unwrap();
    let challenge = String::from_utf8(challenge).unwrap();
    assert!(
        challenge.starts_with('<') && challenge.ends_with("@relaymail-test>"),
        "{challenge}"
    );
    let (random, counter) = challenge[1..].split_once('@').unwrap().0.split_once('.').unwrap();
    assert!(
        random.parse::<u64>().is_ok() && counter.parse::<u64>().is_ok(),
        "{challenge}"
    );
    assert_eq!(client.cmd("*").await, "501 5.7.0 Authentication cancelled");
    assert_eq!(
        client.cmd("AUTH CRAM-MD5 =").await,
        "501 5.5.2 CRAM-MD5 takes no initial response"
    );
}

#[tokio::test]
async fn auth_scram_sha_256() {
    let good = password("alice", PASSWORD);
    let bad = password("alice", "wrong");
    check_mechanism(Mechanism::ScramSha256, good.clone(), bad.clone(), true).await;
    check_mechanism(Mechanism::ScramSha256, good, bad, false).await;
    check_mechanism(
        Mechanism::ScramSha256,
        password("alice", PASSWORD),
        password("nobody", PASSWORD),
        true,
    )
    .await;
}

#[tokio::test]
async fn auth_xoauth2() {
    let good = token("bob@example.com", TOKEN);
    let bad = token("bob@example.com", "ya29.expired");
    check_mechanism(Mechanism::XOAuth2, good.clone(), bad.clone(), true).await;
    check_mechanism(Mechanism::XOAuth2, good, bad, false).await;
}

#[tokio::test]
async fn auth_oauthbearer() {
    let good = token("bob@example.com", TOKEN);
    let bad = token("bob@example.com", "ya29.expired");
    check_mechanism(Mechanism::OAuthBearer, good.clone(), bad.clone(), true).await;
    check_mechanism(Mechanism::OAuthBearer, good, bad, false).await;
}

#[tokio::test]
async fn bearer_tokens_can_expire_mid_run() {
    let tokens = BearerTokens::new();
    tokens.allow("bob@example.com", "tok-1");
    let server = TestServer::start(
        ServerConfig::new()
            .auth_mechanisms(&["OAUTHBEARER", "XOAUTH2"])
            .user("bob@example.com", "not-a-token-here")
            .bearer_tokens(&tokens),
    )
    .await
    .unwrap();
    for mechanism in [Mechanism::OAuthBearer, Mechanism::XOAuth2] {
        let mut client = Client::greeted(&server).await;
        client.ehlo().await;
        let (reply, _) =
            sasl_exchange(&mut client, &token("bob@example.com", "tok-1"), mechanism, true).await;
        assert!(reply.starts_with("235 "), "{mechanism}: {reply}");
        // The user's configured secret is not a token when the set decides.
        let mut client = Client::greeted(&server).await;
        client.ehlo().await;
        let (reply, _) = sasl_exchange(
            &mut client,
            &token("bob@example.com", "not-a-token-here"),
            mechanism,
            true,
        )
        .await;
        assert!(reply.starts_with("535 "), "{mechanism}: {reply}");
        // Another user with the same token is refused.
        let (reply, _) =
            sasl_exchange(&mut client, &token("eve@example.com", "tok-1"), mechanism, true).await;
        assert!(reply.starts_with("535 "), "{mechanism}: {reply}");
    }
    assert!(tokens.expire("tok-1"));
    tokens.allow("bob@example.com", "tok-2");
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    let (reply, sasl) = sasl_exchange(
        &mut client,
        &token("bob@example.com", "tok-1"),
        Mechanism::OAuthBearer,
        true,
    )
    .await;
    assert_eq!(reply, "535 5.7.8 Authentication credentials invalid");
    assert!(sasl.bearer_error().unwrap().is_invalid_token());
    // AUTH again on the same connection, with the renewed token.
    let (reply, _) = sasl_exchange(
        &mut client,
        &token("bob@example.com", "tok-2"),
        Mechanism::OAuthBearer,
        true,
    )
    .await;
    assert!(reply.starts_with("235 "), "{reply}");
    // A wrong answer to the error challenge is refused as malformed.
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    let mut sasl = SaslClient::new(Mechanism::OAuthBearer, &token("bob@example.com", "tok-1"), "").unwrap();
    let raw = sasl.initial_response().unwrap();
    let line = format!(
        "AUTH OAUTHBEARER {}",
        std::str::from_utf8(&auth::encode_initial_response(&raw)).unwrap()
    );
    assert!(client.cmd(&line).await.starts_with("334 "));
    assert_eq!(
        client.cmd("").await,
        "501 5.5.2 Malformed answer to the error challenge"
    );
    assert_eq!(format!("{tokens:?}"), "BearerTokens { accepted: 1 }");
}

#[tokio::test]
async fn auth_sequence_and_syntax_errors() {
    let server = TestServer::start(auth_config().require_auth(true)).await.unwrap();
    let mut client = Client::greeted(&server).await;
    assert_eq!(client.cmd("AUTH PLAIN").await, "503 5.5.1 Error: send EHLO first");
    client.ehlo().await;
    assert_eq!(
        client.cmd("MAIL FROM:<a@example.com>").await,
        "530 5.7.0 Authentication required"
    );
    assert_eq!(
        client.cmd("AUTH").await,
        "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
    );
    assert_eq!(
        client.cmd("AUTH GSSAPI").await,
        "504 5.5.4 Unrecognized authentication type"
    );
    assert_eq!(
        client.cmd("AUTH DIGEST-MD5").await,
        "504 5.5.4 Unrecognized authentication type"
    );
    assert_eq!(
        client.cmd("AUTH PLAIN !!!").await,
        "501 5.5.2 Cannot decode base64 data"
    );
    assert_eq!(client.cmd("AUTH PLAIN").await, "334 ");
    assert_eq!(
        client.cmd("not base64!").await,
        "501 5.5.2 Cannot decode base64 data"
    );
    assert_eq!(client.cmd("AUTH PLAIN").await, "334 ");
    assert_eq!(client.cmd("*").await, "501 5.7.0 Authentication cancelled");
    assert_eq!(
        client.cmd("AUTH PLAIN =").await,
        "535 5.7.8 Authentication credentials invalid"
    );
    let (reply, _) = sasl_exchange(&mut client, &password("alice", PASSWORD), Mechanism::Plain, true).await;
    assert_eq!(reply, "235 2.7.0 Authentication successful");
    assert_eq!(client.cmd("MAIL FROM:<a@example.com>").await, "250 2.1.0 Ok");
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye");

    // HELO does not enable AUTH.
    let mut client = Client::greeted(&server).await;
    assert_eq!(client.cmd("HELO client.example").await, "250 relaymail-test");
    assert_eq!(client.cmd("AUTH PLAIN").await, "503 5.5.1 Error: send EHLO first");

    // No mechanisms configured: AUTH is not offered.
    let server = TestServer::start(ServerConfig::new()).await.unwrap();
    let mut client = Client::greeted(&server).await;
    assert!(!client.ehlo().await.contains("AUTH"));
    assert_eq!(
        client.cmd("AUTH PLAIN").await,
        "503 5.5.1 Error: authentication not enabled"
    );
    assert_no_secrets(&server);
}

#[tokio::test]
async fn config_debug_hides_secrets() {
    let config = auth_config();
    let text = format!("{config:?}");
    assert!(text.contains("alice"));
    assert!(!text.contains(PASSWORD) && !text.contains(TOKEN), "{text}");
    let server = TestServer::start(config).await.unwrap();
    let text = format!("{server:?}");
    assert!(!text.contains(PASSWORD) && !text.contains(TOKEN), "{text}");
}

#[tokio::test]
async fn fault_reply_on_nth_command_across_sessions() {
    let server = TestServer::start(
        ServerConfig::new()
            .fault(Fault::on_command("rcpt").nth(2).reply("450 4.2.0 Mailbox busy"))
            .fault(Fault::on_command("NOOP").reply("250-first line\r\n250 second line")),
    )
    .await
    .unwrap();
    let mut first = Client::greeted(&server).await;
    first.ehlo().await;
    assert_eq!(first.cmd("MAIL FROM:<a@example.com>").await, "250 2.1.0 Ok");
    assert_eq!(first.cmd("RCPT TO:<b@example.com>").await, "250 2.1.5 Ok");
    let mut second = Client::greeted(&server).await;
    second.ehlo().await;
    assert_eq!(second.cmd("MAIL FROM:<a@example.com>").await, "250 2.1.0 Ok");
    assert_eq!(
        second.cmd("RCPT TO:<b@example.com>").await,
        "450 4.2.0 Mailbox busy"
    );
    assert_eq!(second.cmd("DATA").await, "554 5.5.1 Error: no valid recipients");
    assert_eq!(second.cmd("RCPT TO:<b@example.com>").await, "250 2.1.5 Ok");
    assert_eq!(first.cmd("NOOP").await, "250-first line\n250 second line");
    assert_eq!(first.cmd("NOOP").await, "250-first line\n250 second line");
}

#[tokio::test]
async fn fault_drop_connection() {
    let server = TestServer::start(ServerConfig::new().fault(Fault::on_command("MAIL").drop_connection()))
        .await
        .unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    client.write(b"MAIL FROM:<a@example.com>\r\n").await;
    client.expect_eof().await;
    assert!(client.buf.is_empty(), "{:?}", client.buf);
    let sessions = server.wait_for_closed_sessions(1, WAIT).await.unwrap();
    assert!(sessions[0].closed && !sessions[0].quit);
    assert_eq!(
        sessions[0].commands.last().unwrap().line,
        "MAIL FROM:<a@example.com>"
    );
    assert_eq!(server.connections_open(), 0);

    // On the greeting: closed before anything is said.
    let server = TestServer::start(ServerConfig::new().fault(Fault::on_greeting().drop_connection()))
        .await
        .unwrap();
    let mut client = Client::connect(&server).await;
    client.expect_eof().await;
    assert!(client.buf.is_empty());
}

#[tokio::test]
async fn fault_drop_keeps_earlier_pipelined_replies() {
    let server = TestServer::start(ServerConfig::new().fault(Fault::on_command("DATA").drop_connection()))
        .await
        .unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    client
        .write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        .await;
    assert_eq!(client.reply().await, "250 2.1.0 Ok");
    assert_eq!(client.reply().await, "250 2.1.5 Ok");
    client.expect_eof().await;
    assert!(client.buf.is_empty());
}

#[tokio::test]
async fn fault_stall_never_replies() {
    let server = TestServer::start(ServerConfig::new().fault(Fault::on_command("DATA").stall()))
        .await
        .unwrap();
    let mut events = server.subscribe();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    client
        .write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        .await;
    assert_eq!(client.reply().await, "250 2.1.0 Ok");
    assert_eq!(client.reply().await, "250 2.1.5 Ok");
    client.expect_silence().await;
    client.write(b"NOOP\r\n").await;
    client.expect_silence().await;
    assert_eq!(server.connections_open(), 1);
    assert!(!server.sessions()[0].closed);
    drop(client);
    let sessions = server.wait_for_closed_sessions(1, WAIT).await.unwrap();
    assert!(sessions[0].closed);
    // The stalled session still announced the DATA.
    let mut verbs = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let ServerEvent::Command { verb, .. } = event {
            verbs.push(verb);
        }
    }
    assert_eq!(verbs, ["EHLO", "MAIL", "RCPT", "DATA"]);

    // On the greeting.
    let server = TestServer::start(ServerConfig::new().fault(Fault::on_greeting().stall()))
        .await
        .unwrap();
    let mut client = Client::connect(&server).await;
    client.expect_silence().await;
}

#[tokio::test]
async fn fault_append_after_starttls_220() {
    let server = TestServer::start(
        ServerConfig::new()
            .starttls(true)
            .fault(Fault::on_command("STARTTLS").append(b"250 injected\r\n")),
    )
    .await
    .unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    client.write(b"STARTTLS\r\n").await;
    while !client.buf.ends_with(b"250 injected\r\n") {
        assert!(client.read_more().await > 0);
    }
    assert_eq!(client.buf, b"220 2.0.0 Ready to start TLS\r\n250 injected\r\n");
    client.buf.clear();
    // No handshake: the server goes on reading clear text.
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 Ok");
    assert!(!server.sessions()[0].tls);

    // append after other replies, and on the greeting.
    let server = TestServer::start(
        ServerConfig::new()
            .fault(Fault::on_greeting().append(b"220 extra\r\n"))
            .fault(Fault::on_command("NOOP").nth(1).append(b"250 extra\r\n")),
    )
    .await
    .unwrap();
    let mut client = Client::greeted(&server).await;
    assert_eq!(client.reply().await, "220 extra");
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 Ok");
    assert_eq!(client.reply().await, "250 extra");
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 Ok");
    client.expect_silence().await;
}

#[tokio::test]
async fn fault_end_of_data() {
    let server = TestServer::start(
        ServerConfig::new()
            .chunking(true)
            .fault(Fault::on_end_of_data().nth(1).reply("451 4.3.0 Try again later"))
            .fault(Fault::on_end_of_data().nth(2).reply("250 2.0.0 Custom ok"))
            .fault(Fault::on_end_of_data().nth(3).drop_connection()),
    )
    .await
    .unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    assert_eq!(
        client.send_message("a@example.com", "b@example.com", "one").await,
        "451 4.3.0 Try again later"
    );
    assert_eq!(
        client.send_message("a@example.com", "b@example.com", "two").await,
        "250 2.0.0 Custom ok"
    );
    client
        .write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 5 LAST\r\nthree")
        .await;
    assert_eq!(client.reply().await, "250 2.1.0 Ok");
    assert_eq!(client.reply().await, "250 2.1.5 Ok");
    client.expect_eof().await;

    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    let reply = client
        .send_message("a@example.com", "b@example.com", "four")
        .await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");

    let messages = server.wait_for_messages(2, WAIT).await.unwrap();
    let bodies: Vec<&[u8]> = messages.iter().map(|m| &m.data[..]).collect();
    assert_eq!(bodies, [&b"two\r\n"[..], &b"four\r\n"[..]]);
    assert_eq!(server.sessions()[0].messages, 1);
}

#[tokio::test]
async fn fault_on_greeting_reply_and_delay() {
    let server =
        TestServer::start(ServerConfig::new().fault(Fault::on_greeting().reply("554 5.3.2 No service here")))
            .await
            .unwrap();
    let mut client = Client::connect(&server).await;
    assert_eq!(client.reply().await, "554 5.3.2 No service here");
    assert_eq!(
        client.cmd("EHLO client.example").await,
        "503 5.5.1 Error: no service"
    );
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye");
    client.expect_eof().await;

    let delay = Duration::from_millis(150);
    let server = TestServer::start(
        ServerConfig::new()
            .fault(Fault::on_command("NOOP").delay(delay))
            .fault(
                Fault::on_command("RSET")
                    .delay(delay)
                    .reply("421 4.3.2 Shutting down"),
            ),
    )
    .await
    .unwrap();
    let mut client = Client::greeted(&server).await;
    let started = tokio::time::Instant::now();
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 Ok");
    assert!(started.elapsed() >= delay);
    let started = tokio::time::Instant::now();
    assert_eq!(client.cmd("RSET").await, "421 4.3.2 Shutting down");
    assert!(started.elapsed() >= delay);
}

#[tokio::test]
async fn fault_reply_on_bdat_discards_the_chunk() {
    let server = TestServer::start(
        ServerConfig::new().chunking(true).fault(
            Fault::on_command("BDAT")
                .nth(1)
                .reply("452 4.3.1 Insufficient storage"),
        ),
    )
    .await
    .unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    client
        .write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 6\r\nNOOP\r\nBDAT 2 LAST\r\nok")
        .await;
    assert_eq!(client.reply().await, "250 2.1.0 Ok");
    assert_eq!(client.reply().await, "250 2.1.5 Ok");
    assert_eq!(client.reply().await, "452 4.3.1 Insufficient storage");
    assert!(client.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    let messages = server.wait_for_messages(1, WAIT).await.unwrap();
    assert_eq!(messages[0].data, b"ok");
}

#[tokio::test]
async fn wait_for_messages_wakes_and_times_out() {
    let server = TestServer::start(ServerConfig::new()).await.unwrap();
    assert_eq!(server.wait_for_messages(0, SHORT).await.unwrap().len(), 0);
    let error = server
        .wait_for_messages(1, Duration::from_millis(20))
        .await
        .unwrap_err();
    assert_eq!(error, WaitTimeout);
    assert!(error.to_string().contains("timed out"));

    let addr = server.addr();
    let sender = tokio::spawn(async move {
        let mut client = Client::connect_to(addr).await;
        client.reply().await;
        client.ehlo().await;
        let reply = client
            .send_message("a@example.com", "b@example.com", "hello")
            .await;
        assert!(reply.starts_with("250 "), "{reply}");
        client.cmd("QUIT").await
    });
    let messages = server.wait_for_messages(1, WAIT).await.unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].data, b"hello\r\n");
    assert_eq!(sender.await.unwrap(), "221 2.0.0 Bye");
    assert_eq!(server.wait_for_messages(2, SHORT).await.unwrap_err(), WaitTimeout);
    assert_eq!(server.wait_for_closed_sessions(1, WAIT).await.unwrap().len(), 1);
    assert_eq!(
        server
            .wait_for_closed_sessions(2, Duration::from_millis(20))
            .await
            .unwrap_err(),
        WaitTimeout
    );
}

#[tokio::test]
async fn connection_counters_with_three_concurrent_clients() {
    let server = TestServer::start(ServerConfig::new()).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::greeted(&server).await);
    }
    assert_eq!(server.connections_open(), 3);
    assert_eq!(server.connections_total(), 3);
    assert_eq!(server.peak_connections(), 3);
    let ids: Vec<usize> = server.sessions().iter().map(|s| s.id).collect();
    assert_eq!(ids, [0, 1, 2]);
    drop(clients);
    server.wait_for_closed_sessions(3, WAIT).await.unwrap();
    assert_eq!(server.connections_open(), 0);
    let mut client = Client::greeted(&server).await;
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye");
    server.wait_for_closed_sessions(4, WAIT).await.unwrap();
    assert_eq!(server.connections_total(), 4);
    assert_eq!(server.peak_connections(), 3);
}

#[tokio::test]
async fn events_follow_the_session() {
    let server = TestServer::start(ServerConfig::new()).await.unwrap();
    let mut events = server.subscribe();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    let reply = client.send_message("a@example.com", "b@example.com", "x").await;
    let queue_id = reply.strip_prefix("250 2.0.0 Ok: queued as ").unwrap().to_owned();
    client.cmd("QUIT").await;
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, events.recv()).await.unwrap().unwrap();
        let closed = matches!(event, ServerEvent::Closed { .. });
        seen.push(event);
        if closed {
            break;
        }
    }
    let command = |verb: &str| ServerEvent::Command {
        session: 0,
        verb: verb.to_owned(),
    };
    assert_eq!(
        seen,
        [
            ServerEvent::Connected { session: 0 },
            command("EHLO"),
            command("MAIL"),
            command("RCPT"),
            command("DATA"),
            ServerEvent::MessageAccepted { session: 0, queue_id },
            command("QUIT"),
            ServerEvent::Closed { session: 0 },
        ]
    );
}

#[tokio::test]
async fn line_too_long_closes_the_connection() {
    let server = TestServer::start(ServerConfig::new()).await.unwrap();
    let mut client = Client::greeted(&server).await;
    // Exactly at the limit is fine.
    let mut line = vec![b'N'; super::conn::MAX_LINE - 2];
    line[..5].copy_from_slice(b"NOOP ");
    line.extend_from_slice(b"\r\n");
    client.write(&line).await;
    assert_eq!(client.reply().await, "250 2.0.0 Ok");
    client.write(&vec![b'a'; 70_000]).await;
    assert_eq!(client.reply().await, "500 5.5.2 Line too long");
    client.expect_eof().await;
    drop(client);

    // In DATA too.
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    assert_eq!(client.cmd("MAIL FROM:<a@example.com>").await, "250 2.1.0 Ok");
    assert_eq!(client.cmd("RCPT TO:<b@example.com>").await, "250 2.1.5 Ok");
    assert!(client.cmd("DATA").await.starts_with("354"));
    let mut body = vec![b'b'; 65_000];
    body.extend_from_slice(b"\r\nshort\r\n");
    body.extend_from_slice(&[b'c'; 70_000]);
    client.write(&body).await;
    assert_eq!(client.reply().await, "500 5.5.2 Line too long");
    client.expect_eof().await;
    drop(client);
    server.wait_for_closed_sessions(2, WAIT).await.unwrap();
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn garbage_input_never_kills_the_server() {
    let server = TestServer::start(auth_config().chunking(false).size_limit(Some(10)))
        .await
        .unwrap();
    let mut client = Client::greeted(&server).await;
    assert_eq!(
        client.cmd("\u{0}\u{7f}").await,
        "502 5.5.2 Error: command not recognized"
    );
    client.write(b"\xff\xfe MAIL\r\n").await;
    assert_eq!(
        client.reply().await,
        "500 5.5.2 Error: command is not valid UTF-8"
    );
    client.ehlo().await;
    for line in [
        "MAIL FROM:<",
        "MAIL FROM:<a@b",
        "MAIL FROM:<a@b>x",
        "MAIL FROM:<a@b> SIZE=99999999999999999999999",
        "MAIL FROM:<a@b> SIZE=",
        "MAIL",
        "MAIL FROM",
        "RCPT",
        "AUTH PLAIN a b",
        "AUTH SCRAM-SHA-256 AQE=",
        "BDAT 10 LAST",
    ] {
        let reply = client.cmd(line).await;
        assert!(reply.starts_with('5'), "{line}: {reply}");
    }
    // Pseudo-random bytes (xorshift), in lines.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut garbage = Vec::new();
    for _ in 0..4000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        garbage.push((state >> 24) as u8);
    }
    // No line may start a transaction or end the session by chance.
    for line in garbage.split_mut(|&b| b == b'\n') {
        if let Some(first) = line.first_mut() {
            *first = b'X';
        }
    }
    garbage.extend_from_slice(b"\r\nNOOP\r\n");
    client.write(&garbage).await;
    let mut replies = 0;
    loop {
        let reply = client.reply().await;
        replies += 1;
        if reply == "250 2.0.0 Ok" {
            break;
        }
        assert!(reply.starts_with('5'), "{reply}");
    }
    assert!(replies > 1);
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye");
    // The server still serves new connections.
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
}

#[tokio::test]
async fn client_closing_mid_session_is_recorded() {
    let server = TestServer::start(ServerConfig::new()).await.unwrap();
    let mut client = Client::greeted(&server).await;
    client.ehlo().await;
    assert_eq!(client.cmd("MAIL FROM:<a@example.com>").await, "250 2.1.0 Ok");
    assert_eq!(client.cmd("RCPT TO:<b@example.com>").await, "250 2.1.5 Ok");
    assert!(client.cmd("DATA").await.starts_with("354"));
    client.write(b"partial body\r\nno end").await;
    drop(client);
    let sessions = server.wait_for_closed_sessions(1, WAIT).await.unwrap();
    assert!(sessions[0].closed && !sessions[0].quit);
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn dropping_the_server_closes_connections() {
    let server = TestServer::start(ServerConfig::new().fault(Fault::on_command("NOOP").stall()))
        .await
        .unwrap();
    let addr = server.addr();
    let mut client = Client::greeted(&server).await;
    client.write(b"NOOP\r\n").await;
    client.expect_silence().await;
    drop(server);
    client.expect_eof().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

/// Drives relaymail's sans-IO client session over the socket until it has
/// an event.
async fn next_event(client: &mut Client, session: &mut Session) -> Event {
    loop {
        if session.wants_write() {
            let output = session.output().to_vec();
            client.write(&output).await;
            session.consume_output(output.len());
        }
        if let Some(event) = session.poll_event() {
            return event;
        }
        if client.buf.is_empty() && client.read_more().await == 0 {
            session.receive_eof().unwrap();
            continue;
        }
        let bytes = std::mem::take(&mut client.buf);
        session.receive(&bytes).unwrap();
    }
}

#[tokio::test]
async fn relaymail_session_round_trip() {
    let server = TestServer::start(
        ServerConfig::new()
            .starttls(true)
            .chunking(true)
            .size_limit(Some(1 << 20))
            .auth_mechanisms(&["PLAIN", "SCRAM-SHA-256"])
            .user("alice", PASSWORD)
            .auth_after_tls_only(true)
            .require_auth(true),
    )
    .await
    .unwrap();
    let mut config = SessionConfig::new("client.example");
    config.starttls = StartTlsPolicy::Required;
    let mut session = Session::new(config).unwrap();
    let mut client = Client::connect(&server).await;

    assert!(matches!(
        next_event(&mut client, &mut session).await,
        Event::StartTls
    ));
    client.upgrade(server.ca_pem()).await;
    session.tls_established().unwrap();
    assert!(matches!(
        next_event(&mut client, &mut session).await,
        Event::Ready
    ));

    let sasl = SaslClient::new(
        Mechanism::ScramSha256,
        &password("alice", PASSWORD),
        "rOprNGfwEbeRWgbNEkqO",
    )
    .unwrap();
    session.authenticate(sasl).unwrap();
    match next_event(&mut client, &mut session).await {
        Event::Authenticated(Ok(Mechanism::ScramSha256)) => {}
        other => panic!("{other:?}"),
    }

    for n in 0..2 {
        let envelope = Envelope::new(
            Some("alice@example.com".parse().expect("address")),
            vec![
                "ops@example.net".parse().expect("address"),
                "dev@example.net".parse().expect("address"),
            ],
        )
        .expect("envelope");
        let body = format!("Subject: {n}\r\n\r\n.dot\nbare lf\r\n");
        session
            .send(Transaction::new(envelope, body.into_bytes()))
            .unwrap();
    }
    for _ in 0..2 {
        match next_event(&mut client, &mut session).await {
            Event::Transaction(outcome) => assert!(outcome.result.is_ok(), "{outcome:?}"),
            other => panic!("{other:?}"),
        }
    }
    session.quit().unwrap();
    assert!(matches!(
        next_event(&mut client, &mut session).await,
        Event::Closed
    ));

    let messages = server.wait_for_messages(2, WAIT).await.unwrap();
    for (n, message) in messages.iter().enumerate() {
        assert!(message.via_bdat && message.tls && !message.bare_line_endings);
        assert_eq!(message.auth_user.as_deref(), Some("alice"));
        assert_eq!(message.rcpt_to, ["ops@example.net", "dev@example.net"]);
        assert!(
            message.mail_params.iter().any(|p| p.starts_with("SIZE=")),
            "{:?}",
            message.mail_params
        );
        // The client normalised the bare LF.
        assert_eq!(
            message.data,
            format!("Subject: {n}\r\n\r\n.dot\r\nbare lf\r\n").into_bytes()
        );
    }
    let sessions = server.wait_for_closed_sessions(1, WAIT).await.unwrap();
    let record = &sessions[0];
    assert!(record.quit && record.tls);
    assert_eq!(record.auth_mechanism.as_deref(), Some("SCRAM-SHA-256"));
    // With PIPELINING the first transaction's MAIL, RCPTs and BDAT left in
    // one write.
    let mail = record
        .commands
        .iter()
        .position(|c| c.line.starts_with("MAIL"))
        .unwrap();
    let batch = record.commands[mail].batch;
    assert!(
        record.commands[mail..mail + 4].iter().all(|c| c.batch == batch),
        "{:?}",
        record.commands
    );
    assert!(record.commands[mail + 3].line.starts_with("BDAT"));
    assert_no_secrets(&server);
}

#[tokio::test]
async fn a_stopped_server_frees_its_port_and_another_starts_on_it() {
    let first = TestServer::start(ServerConfig::new()).await.unwrap();
    let port = first.port();
    let mut open = Client::greeted(&first).await;
    open.ehlo().await;
    let stopping = first.stop();
    tokio::time::timeout(WAIT, stopping).await.expect("stop returns");
    // The connection it had is closed, and nothing listens on the port.
    open.expect_eof().await;
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "still listening"
    );

    let second = TestServer::start(ServerConfig::new().port(port).greeting("220 back again"))
        .await
        .unwrap();
    assert_eq!(second.port(), port);
    assert_eq!(second.addr(), std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let mut client = Client::connect_to(second.addr()).await;
    assert_eq!(client.reply().await, "220 back again");
    client.ehlo().await;
    assert!(client
        .send_message("a@example.com", "b@example.com", "Subject: x\r\n\r\nhi")
        .await
        .starts_with("250 "));
    assert_eq!(second.wait_for_messages(1, WAIT).await.unwrap().len(), 1);

    // While the second listens there, a third cannot take its port.
    let busy = TestServer::start(ServerConfig::new().port(port))
        .await
        .unwrap_err();
    assert_eq!(busy.kind(), std::io::ErrorKind::AddrInUse);
}
