//! Quick start: a `Mailer` sending notification email through an SMTP server
//! started in this process on 127.0.0.1 — STARTTLS with a generated
//! certificate, AUTH required — then what the server received and the
//! mailer's counters.
//!
//! Run: `cargo run --example quickstart` (no setup, nothing leaves the machine).
//!
//! To send through your own relay instead, build `SmtpSettings` with its host,
//! port, TLS mode and credentials; everything else stays the same.

use std::time::Duration;

use relaymail::testing::{ServerConfig, TestServer};
use relaymail::{Email, Mailer, SmtpSettings, TlsMode};

const NOTIFICATIONS: [(&str, &str, &str); 8] = [
    (
        "ana@example.net",
        "Reset your password",
        "Follow this link to choose a new password:\nhttps://app.example.com/reset/8f3a",
    ),
    (
        "ops@example.net",
        "Disk almost full",
        "/var on db-2 is at 97%.\n.\nThe line above is a lone dot: it arrives intact.",
    ),
    (
        "billing@example.net",
        "Invoice INV-2041",
        "Your invoice for November is ready.",
    ),
    (
        "li@example.net",
        "Ana shared a folder with you",
        "Open it: https://app.example.com/s/q7",
    ),
    (
        "ops@example.net",
        "Backup finished",
        "Nightly backup: 41 GiB in 12 min.",
    ),
    (
        "sam@example.net",
        "New sign-in",
        "A new sign-in to your account from Firefox on Linux.",
    ),
    (
        "ops@example.net",
        "Certificate expires in 14 days",
        "mail.example.com: renew before Dec 7.",
    ),
    (
        "ana@example.net",
        "Password changed",
        "Your password was changed. Not you? Reply to this email.",
    ),
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An SMTP server on 127.0.0.1: STARTTLS required before AUTH, AUTH
    // required before mail, PIPELINING and CHUNKING offered.
    let server = TestServer::start(
        ServerConfig::new()
            .starttls(true)
            .auth_mechanisms(&["SCRAM-SHA-256", "PLAIN", "LOGIN"])
            .user("app@example.com", "correct horse battery staple")
            .auth_after_tls_only(true)
            .require_auth(true),
    )
    .await?;
    println!("SMTP server listening on {}", server.addr());

    let settings = SmtpSettings::builder()
        .host("127.0.0.1")
        .port(u32::from(server.port()))
        .tls(TlsMode::StartTls)
        .add_root_certificates_pem(server.ca_pem()) // trust the server's generated CA
        .webpki_roots(false)
        .sender("noreply@example.com")
        .sender_name("Example App")
        .credentials("app@example.com", "correct horse battery staple")
        .max_deliveries_per_connection(3) // then QUIT and reconnect
        .build()?;
    println!("settings: {settings:?}\n");

    // Two connections at most, three messages each before reconnecting.
    let mailer = Mailer::builder(settings).max_connections(2).build()?;

    // Every notification from its own task, all at once.
    let mut tasks = Vec::new();
    for (to, subject, body) in NOTIFICATIONS {
        let mailer = mailer.clone();
        tasks.push(tokio::spawn(async move {
            // From, Date and Message-ID come from the settings and the clock.
            let email = Email::new().to(to).subject(subject).text(body);
            (subject, mailer.send_email(email).await)
        }));
    }
    for task in tasks {
        let (subject, result) = task.await?;
        match result {
            Ok(receipt) => println!("sent  {subject:32} -> {}", receipt.reply()),
            Err(e) => println!("FAILED {subject:31} -> {e}"),
        }
    }

    let stats = mailer.shutdown(Duration::from_secs(5)).await;

    println!("\nThe server received:");
    for m in server.messages() {
        let subject = String::from_utf8_lossy(&m.data)
            .lines()
            .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
            .unwrap_or_default();
        println!(
            "  connection {} | {} -> {} | tls: {} | auth: {} | {subject}",
            m.session,
            m.mail_from,
            m.rcpt_to.join(", "),
            m.tls,
            m.auth_user.as_deref().unwrap_or("-"),
        );
    }
    println!("\nMailer stats:");
    println!(
        "  delivered {} / offered {}, failed {}, retried {}",
        stats.delivered, stats.offered, stats.failed, stats.retried
    );
    println!(
        "  connections opened {} (at most {} at once on the server)",
        stats.connections_opened,
        server.peak_connections()
    );
    for (deliveries, connections) in &stats.deliveries_per_connection {
        println!("  {connections} connection(s) carried {deliveries} message(s)");
    }
    if stats.delivered != NOTIFICATIONS.len() as u64 {
        return Err("not every notification was delivered".into());
    }
    Ok(())
}
