//! The exact text of the errors users meet most, pinned: each says what
//! went wrong once, names the stage, and gives the fix where there is one.
//! (The wording is not a stable API, but a change to it should be a choice.)

use relaymail::testing::{Fault, ServerConfig};
use relaymail::{Connection, SmtpSettings, TlsMode};

use crate::support::*;

async fn send_error(config: ServerConfig, tls: TlsMode, to: &str) -> String {
    let srv = server(config).await;
    let s = settings(&srv, tls).build().expect("settings");
    let mut conn = Connection::open(&s).await.expect("connects");
    conn.send(envelope(&[to]), MESSAGE.to_vec())
        .await
        .expect_err("fails")
        .to_string()
}

async fn open_error(
    config: ServerConfig,
    b: impl FnOnce(relaymail::SmtpSettingsBuilder) -> relaymail::SmtpSettingsBuilder,
) -> String {
    let srv = server(config).await;
    let s = b(settings(&srv, TlsMode::None)).build().expect("settings");
    Connection::open(&s).await.expect_err("fails").to_string()
}

// The OS's own words for a refused connection are part of one message.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_commonest_errors_read_as_pinned() {
    let mut seen = Vec::new();
    // 1. A recipient address with angle brackets: it never becomes an
    // Address, so it never reaches an envelope.
    let e = relaymail::Error::from(
        "<ops@example.net>"
            .parse::<relaymail::Address>()
            .expect_err("refused"),
    );
    seen.push(e.to_string());
    // 2. The relay refuses a recipient.
    seen.push(
        send_error(
            ServerConfig::new().reject_recipient("nobody@example.net", "550 5.1.1 User unknown"),
            TlsMode::None,
            "nobody@example.net",
        )
        .await,
    );
    // 3. Wrong password.
    seen.push(
        open_error(
            ServerConfig::new()
                .auth_mechanisms(&["PLAIN"])
                .user("app", "right"),
            |b| {
                b.credentials("app", "wrong")
                    .dangerous(|d| d.allow_plaintext_auth(true))
            },
        )
        .await,
    );
    // 4. Credentials without TLS.
    seen.push(
        open_error(
            ServerConfig::new()
                .auth_mechanisms(&["PLAIN"])
                .user("app", "right"),
            |b| b.credentials("app", "right"),
        )
        .await,
    );
    // 5. STARTTLS required, not offered.
    seen.push(open_error(ServerConfig::new().starttls(false), |b| b.tls(TlsMode::StartTls)).await);
    // 6. Nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let s = SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(dead))
        .tls(TlsMode::None)
        .sender("a@example.com")
        .build()
        .expect("settings");
    seen.push(Connection::open(&s).await.expect_err("refused").to_string());
    // 7. Settings without a host.
    seen.push(
        SmtpSettings::builder()
            .sender("a@example.com")
            .build()
            .expect_err("no host")
            .to_string(),
    );
    // 8. A message over the server's SIZE.
    seen.push(
        send_error(
            ServerConfig::new().size_limit(Some(10)),
            TlsMode::None,
            "ops@example.net",
        )
        .await,
    );
    // 9. AUTH configured, not offered.
    seen.push(
        open_error(ServerConfig::new().auth_mechanisms(&[]), |b| {
            b.credentials("app", "right")
                .dangerous(|d| d.allow_plaintext_auth(true))
        })
        .await,
    );
    // 10. The service closes (421).
    seen.push(
        send_error(
            ServerConfig::new().fault(Fault::on_command("MAIL").reply("421 4.3.2 Service shutting down")),
            TlsMode::None,
            "ops@example.net",
        )
        .await,
    );
    let dead = dead.to_string();
    let seen: Vec<String> = seen.iter().map(|s| s.replace(&dead, "PORT")).collect();
    let pinned = [
        "invalid address \"<ops@example.net>\": it contains an angle bracket",
        "rcpt: every recipient was refused (server replied: 550 5.1.1 User unknown)",
        "auth: the server rejected PLAIN authentication (server replied: 535 5.7.8 Authentication credentials invalid); hint: check the user name and password",
        "auth: refusing to send credentials over a connection without TLS; hint: use STARTTLS (required) or implicit TLS, or allow plain-text AUTH explicitly if the network is trusted",
        "starttls: STARTTLS is required but the server does not offer it; hint: check the port (465 usually expects implicit TLS, 587 STARTTLS) or the server's TLS setup",
        "connect: cannot connect to 127.0.0.1:PORT: Connection refused (os error 111); hint: nothing is listening on port PORT: check the port (usually 587 for STARTTLS, 465 for implicit TLS, 25 for none) and that the relay is running",
        "invalid SMTP settings: host: the server host is required",
        "mail: the message is 78 bytes but the server accepts at most 10 (SIZE); hint: shrink the message, or send large attachments as links",
        "auth: credentials are configured but the server does not offer AUTH; hint: many servers offer AUTH only after STARTTLS: use STARTTLS or implicit TLS",
        "mail: the server is closing the connection (server replied: 421 4.3.2 Service shutting down)",
    ];
    for (got, want) in seen.iter().zip(pinned) {
        assert_eq!(got, want);
    }
    assert_eq!(seen.len(), pinned.len());
}
